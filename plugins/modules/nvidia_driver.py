#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: nvidia_driver
short_description: Install a whitelisted NVIDIA driver version, pinned, with a rollback on failure
version_added: 0.3.0
description:
  - Installs the NVIDIA data-center driver at an exact I(version), or the newest whitelisted version of a I(branch),
    from the configured package repositories, and keeps it there (apt preferences pin plus C(apt-mark hold)).
  - A version or branch that is not in I(whitelist) is refused before any change. So is a whitelisted version that
    cannot drive the GPUs of the host (a branch floor or ceiling of the driver policy) and a kernel-module flavour
    they cannot use.
  - I(flavor=auto) picks the kernel modules from the GPUs present, Blackwell and Grace Hopper need the open
    modules, Maxwell, Pascal and Volta the proprietary ones, and a mix of those gets the proprietary ones,
    Turing to Hopper get the open ones.
  - On NVSwitch hosts (I(nvswitch=true)) the fabric manager and NSCQ packages are installed at exactly the driver
    version.
  - Order of a change, stop the running I(clients), unload the kernel modules (I(reload=true)), pin, install
    all packages in one transaction, hold them, load the new modules, start the clients again. Where the modules
    cannot be reloaded (in use, or not permitted) the result says C(reboot_required=true); the module never reboots.
  - A failed install puts the previous packages, pin and holds back and fails, saying so.
  - A loaded driver that no installed package carries (a runfile install, a read-only driver mount as cloud VMs
    provide it) is reported with where it came from (RV(source)) and left alone unless O(adopt=true). When it is the
    declared, whitelisted driver, the host complies but is not package-managed, the task is ok and unchanged
    (RV(package_managed=false)); any other loaded driver is refused, naming it.
  - Check mode returns the plan without changing anything; diff mode shows the driver packages before and after.
  - Debian and Ubuntu use apt. On the RHEL family (told by C(/etc/os-release), as Ansible's C(pkg_mgr) fact does) the
    module uses dnf and rpm with NVIDIA's package names for those systems, C(nvidia-open) (open modules) or
    C(cuda-drivers) (proprietary), plus C(nvidia-fabric-manager) and C(libnvidia-nscq-<branch>) on NVSwitch hosts.
    Where the repository carries NVIDIA's module metadata (RHEL 8/9) the stream C(nvidia-driver:<branch>-open) or
    C(nvidia-driver:<branch>-dkms) is enabled first, see O(dnf_layout). In both layouts every driver package the
    repository offers at the driver version is locked at exactly that version with the versionlock plugin, before
    one C(dnf install) transaction names each package at its exact version (upgrades and downgrades alike), so
    C(dnf upgrade) moves none. dnf exits 0 when an install scriptlet fails; the module reads its output and treats
    a failed scriptlet of a driver package as a failed install (rolled back).
author:
  - gpuvirt.fleet maintainers (@gpuvirt)
extends_documentation_fragment:
  - gpuvirt.fleet.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
options:
  version:
    description:
      - The exact driver version to install, such as V(580.95.05). Must be whitelisted.
      - Exactly one of O(version) and O(branch) is required.
    type: str
  branch:
    description:
      - A driver branch such as V(580); installs the newest whitelisted version of it that the repository offers.
    type: str
  whitelist:
    description:
      - The driver versions this host may run. Each entry is a version (V(580.95.05)) or a mapping with C(branch)
        and C(versions) (the allowed versions of that branch).
    type: list
    elements: raw
    required: true
  flavor:
    description:
      - Kernel-module flavour. V(auto) chooses from the GPUs of the host and the driver policy.
    type: str
    choices: [auto, open, proprietary]
    default: auto
  gpus:
    description:
      - The GPUs to choose and check the driver for, as C(ansible_facts.gpus) from M(gpuvirt.fleet.gpu_facts) or a
        list of architecture names (V(hopper)).
      - Omitted, the module discovers them (NVML or nvidia-smi); a host without a loaded driver then needs this option
        or an explicit O(flavor).
    type: list
    elements: raw
  policy:
    description:
      - Overrides of the built-in driver policy, merged entry by entry, C(architectures) (per architecture name) and
        C(models) (per product-name fragment), each with C(flavors), C(recommended), C(min_version), C(max_branch).
    type: dict
    default: {}
  source:
    description:
      - Which repository's package names to use, V(cuda) (NVIDIA's CUDA repository, or a mirror of it) or
        V(canonical) (Ubuntu archive).
    type: str
    choices: [cuda, canonical]
    default: cuda
  canonical_server:
    description: With O(source=canonical), use the C(-server) (data-center) packages.
    type: bool
    default: true
  kernel_modules:
    description:
      - V(dkms) builds the modules on the host; V(precompiled) installs Canonical's signed
        C(linux-modules-nvidia-...) packages (O(source=canonical) only).
    type: str
    choices: [dkms, precompiled]
    default: dkms
  kernel_flavour:
    description: Kernel flavour of the precompiled module package (C(linux-modules-nvidia-<branch>-server-<flavour>)).
    type: str
    default: generic
  nvswitch:
    description: The host has NVSwitches (HGX/DGX); install fabric manager and NSCQ at the driver version.
    type: bool
    default: false
  reload:
    description:
      - Unload the kernel modules before and load them after an install. Where this fails, C(reboot_required) is true.
      - V(false) always leaves the new modules for the next boot.
    type: bool
    default: true
  clients:
    description:
      - systemd units that use the GPUs (C(nvidia-persistenced), C(nvidia-fabricmanager), C(nvidia-dcgm), exporters).
        The running ones are stopped before an install and started after it; not touched when nothing changes.
    type: list
    elements: str
    default: []
  update_cache:
    description: Run C(apt-get update) (on the RHEL family C(dnf makecache)) first (after the whitelist check).
    type: bool
    default: false
  adopt:
    description:
      - Take over a loaded driver that the package manager did not install (RV(source) V(runfile), V(mount) or
        V(unknown)), replacing it with the whitelisted packages. In check mode the result is the plan.
      - V(false) leaves such a driver alone, a success when it is the declared driver, a refusal otherwise.
      - The packages go in beside the runfile's files; a driver mount stays, and whatever loads the driver from it at
        boot must be turned off for the packages to take effect (the result warns).
    type: bool
    default: false
    version_added: 0.3.0
  dnf_layout:
    description:
      - On the RHEL family, how NVIDIA's repository keeps a driver branch. V(streams) enables the dnf module stream
        C(nvidia-driver:<branch>-open) or C(nvidia-driver:<branch>-dkms) (RHEL 8 and 9) and locks the exact version
        with versionlock; V(versionlock) locks the exact version only (repositories without modularity, RHEL 10,
        Fedora); V(auto) takes V(streams) where the repositories carry the C(nvidia-driver) module.
      - Ignored on Debian and Ubuntu.
    type: str
    choices: [auto, streams, versionlock]
    default: auto
    version_added: 0.6.0
requirements:
  - apt, dpkg and apt-mark (Debian, Ubuntu); systemctl for O(clients); modprobe for O(reload)
  - dnf, rpm and the dnf versionlock plugin (C(python3-dnf-plugin-versionlock)) on the RHEL family
notes:
  - On the RHEL family the lock entries are C(name-epoch:version-release.*) lines under a C(# gpuvirt.fleet (nvidia_driver))
    comment in the versionlock plugin's list (C(locklist) of C(/etc/dnf/plugins/versionlock.conf)); other entries stay.
    The installed packages come from C(rpm -qa), what the repositories offer from C(dnf repoquery) (every stream).
  - The pin is C(/etc/apt/preferences.d/gpuvirt-nvidia-driver.pref) (priority 1001 for the driver version, so a
    downgrade is possible and C(apt-get upgrade) does not move the driver), and every installed driver package is held.
  - The loaded version comes from C(/proc/driver/nvidia/version), the installed one from dpkg. Where the loaded one
    came from is told by dpkg, the runfile installer's files (C(/usr/bin/nvidia-installer),
    C(/usr/bin/nvidia-uninstall), C(/var/log/nvidia-installer.log)) and C(/proc/mounts) (a mount point naming nvidia
    or cuda, such as a read-only C(/usr/local/nvidia)).
seealso:
  - module: gpuvirt.fleet.gpu_facts
  - name: NVIDIA driver installation guide
    description: Package names, open kernel modules and version locking.
    link: https://docs.nvidia.com/datacenter/tesla/driver-installation-guide/
'''

EXAMPLES = r'''
---
- name: Install a whitelisted driver, open or proprietary modules chosen from the GPUs
  gpuvirt.fleet.nvidia_driver:
    version: 580.95.05
    whitelist:
      - 580.95.05
      - branch: '580'
        versions: [580.159.04]
    gpus: "{{ ansible_facts.gpus }}"
    clients: [nvidia-persistenced, nvidia-dcgm]
  register: driver

- name: The newest whitelisted 580 on an HGX host, fabric manager included
  gpuvirt.fleet.nvidia_driver:
    branch: '580'
    whitelist: "{{ driver_whitelist }}"
    nvswitch: true
    flavor: open

- name: Replace a runfile-installed driver with the whitelisted packages
  gpuvirt.fleet.nvidia_driver:
    version: 580.159.04
    whitelist: [580.159.04]
    flavor: open
    adopt: true

- name: Reboot where the modules could not be reloaded
  ansible.builtin.reboot:
  when: driver.reboot_required
'''

RETURN = r'''
version:
  description: The driver version the host is planned or brought to.
  returned: success
  type: str
  sample: 580.95.05
flavor:
  description: The kernel-module flavour chosen.
  returned: success
  type: str
  sample: open
packages:
  description: The driver packages (name to package version) after the run (in check mode, as planned).
  returned: success
  type: dict
  sample: {"nvidia-open-580": "580.95.05-1", "libnvidia-compute-580": "580.95.05-1"}
plan:
  description:
    - The ordered steps, each with C(action) (V(stop_clients), V(unload_modules), V(unhold), V(pin), V(install),
      V(hold), V(load_modules), V(start_clients)) and its arguments. On the RHEL family V(module_enable) (C(stream)),
      V(lock) (the versionlock list's C(content)) and V(install) (C(packages) name to epoch:version-release, C(remove)).
  returned: always
  type: list
  elements: dict
installed_version:
  description: The driver version the installed packages carry after the run (null when none).
  returned: success
  type: str
  sample: 580.95.05
loaded:
  description: The loaded kernel module after the run, from C(/proc/driver/nvidia/version).
  returned: success
  type: dict
  sample: {"loaded": true, "version": "580.95.05", "flavor": "open"}
reboot_required:
  description: The loaded kernel module is not the installed driver (or none is loaded); a reboot loads it.
  returned: success
  type: bool
reboot_reason:
  description: Why a reboot is required.
  returned: success
  type: str
  sample: loaded kernel module 580.95.05 (open) differs from the installed driver 580.159.04 (open)
layout:
  description: On the RHEL family, the repository layout used (V(streams) or V(versionlock)), see O(dnf_layout).
  returned: success on dnf hosts
  type: str
  sample: streams
  version_added: 0.6.0
stream:
  description: On the RHEL family with O(dnf_layout=streams), the module stream enabled (C(nvidia-driver:<stream>)).
  returned: success on dnf hosts
  type: str
  sample: 580-open
  version_added: 0.6.0
source:
  description:
    - Where the driver loaded at the start of the run came from, V(package) (dpkg holds driver packages),
      V(runfile) (the runfile installer's files), V(mount) (a driver mount), V(unknown) (loaded, and nothing tells
      where from) or V(none) (no driver loaded and no driver package). Debian and Ubuntu only.
  returned: success and refusals on apt hosts
  type: str
  sample: mount
package_managed:
  description:
    - The host's driver is installed by the package manager, after the run (in check mode, as found). V(false) with
      a success means the loaded driver is the declared one but no package carries it.
  returned: success (apt and dnf hosts) and refusals on apt hosts
  type: bool
  sample: false
msg:
  description: Why nothing changed, where the loaded driver complies but is not package-managed.
  returned: when package_managed is false on success
  type: str
rolled_back:
  description: A failed install was undone (the previous packages, pin and holds are back; on the RHEL family the packages, lock and
    module stream).
  returned: failure
  type: bool
commands:
  description: The commands run, with their exit status.
  returned: always
  type: list
  elements: dict
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _driver_apply, _results

ARGUMENT_SPEC = {
    'version': {'type': 'str'},
    'branch': {'type': 'str'},
    'whitelist': {'type': 'list', 'elements': 'raw', 'required': True},
    'flavor': {'type': 'str', 'default': 'auto', 'choices': ['auto', 'open', 'proprietary']},
    'gpus': {'type': 'list', 'elements': 'raw'},
    'policy': {'type': 'dict', 'default': {}},
    'source': {'type': 'str', 'default': 'cuda', 'choices': ['cuda', 'canonical']},
    'canonical_server': {'type': 'bool', 'default': True},
    'kernel_modules': {'type': 'str', 'default': 'dkms', 'choices': ['dkms', 'precompiled']},
    'kernel_flavour': {'type': 'str', 'default': 'generic'},
    'nvswitch': {'type': 'bool', 'default': False},
    'reload': {'type': 'bool', 'default': True},
    'clients': {'type': 'list', 'elements': 'str', 'default': []},
    'update_cache': {'type': 'bool', 'default': False},
    'adopt': {'type': 'bool', 'default': False},
    'dnf_layout': {'type': 'str', 'default': 'auto', 'choices': ['auto', 'streams', 'versionlock']},
}


def main():
    module = _results.checked(AnsibleModule, argument_spec=ARGUMENT_SPEC, supports_check_mode=True,
                              mutually_exclusive=[('version', 'branch')], required_one_of=[('version', 'branch')])
    _results.finish(module, _driver_apply.apply_driver(module), _driver_apply.diff)


if __name__ == '__main__':
    main()
