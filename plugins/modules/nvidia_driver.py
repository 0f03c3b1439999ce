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
  - Check mode returns the plan without changing anything; diff mode shows the driver packages before and after.
  - Debian and Ubuntu (apt) are applied. On the RHEL family (dnf) the module returns the planned dnf module
    stream, packages and versionlock in check mode and refuses to apply them.
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
    description: Run C(apt-get update) first (after the whitelist check).
    type: bool
    default: false
requirements:
  - apt, dpkg and apt-mark (Debian, Ubuntu); systemctl for O(clients); modprobe for O(reload)
notes:
  - The pin is C(/etc/apt/preferences.d/gpuvirt-nvidia-driver.pref) (priority 1001 for the driver version, so a
    downgrade is possible and C(apt-get upgrade) does not move the driver), and every installed driver package is held.
  - The loaded version comes from C(/proc/driver/nvidia/version), the installed one from dpkg.
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
      V(hold), V(load_modules), V(start_clients)) and its arguments. On the RHEL family, V(dnf) steps with C(argv).
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
rolled_back:
  description: A failed install was undone (the previous packages, pin and holds are back).
  returned: failure
  type: bool
commands:
  description: The commands run, with their exit status.
  returned: always
  type: list
  elements: dict
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _driver, _facts, _packages, _sysfs
from ansible_collections.gpuvirt.fleet.plugins.module_utils._driver_policy import POLICY

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
}


class DriverManager:
    """observe -> plan -> apply -> verify, through the _packages seam."""

    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.apt = _packages.Apt(module)
        self.result = {'changed': False, 'plan': [], 'commands': self.apt.log}
        self.outcome = {'reload_failed': None, 'unloaded': False, 'clients_not_started': []}

    def fail(self, msg, **extra):
        self.result.update(extra)
        self.module.fail_json(msg=msg, **self.result)

    # ---- observe --------------------------------------------------------------------------
    def gpus(self) -> list:
        if self.params['gpus'] is not None:
            return _driver.normalize_gpus(self.params['gpus'])
        from ansible_collections.gpuvirt.fleet.plugins.module_utils import _discovery  # only when asked to discover
        try:
            _host, found = _discovery.discover(self.module)
        except _discovery.DiscoveryError as exc:
            self.module.warn('GPU discovery failed (%s); the policy check sees no GPUs' % exc)
            return []
        return _driver.normalize_gpus(found)

    def observe(self, names: list) -> dict:
        installed = self.apt.installed()
        if names:
            names = sorted(set(names) | {n for n, i in installed.items() if i['installed'] and _driver.carries_driver_version(n)})
        return {
            'installed': installed,
            'held': self.apt.held(),
            'preferences': self.apt.read_file(_driver.PREFERENCES_FILE),
            'available': self.apt.available(names),
            'loaded': _facts.kernel_module(_sysfs.read_driver_version_file()),
            'active_clients': self.apt.active_units(self.params['clients']),
        }

    # ---- decide ---------------------------------------------------------------------------
    def desired(self) -> dict:
        p = self.params
        policy = _driver.merge_policy(POLICY, p['policy'])
        gpus = self.gpus()
        _driver.normalize_whitelist(p['whitelist'])  # a malformed whitelist is refused before anything else
        flavor = _driver.choose_flavor(gpus, p['flavor'], policy)
        if p['branch'] is not None:
            branch = str(p['branch']).strip()
            _driver.resolve_version(p['whitelist'], branch=branch)  # refuse a branch that is not whitelisted
            probe = self.package_names('%s.0' % branch, flavor, gpus)
            self.update_cache()
            driver_pkg = [x['name'] for x in probe if x['version'] == 'driver'][0]
            offered = {_driver.upstream(v) for v in self.apt.available([driver_pkg])[driver_pkg]}
            version = _driver.resolve_version(p['whitelist'], branch=branch, available=offered)
        else:
            version = _driver.resolve_version(p['whitelist'], version=p['version'])
            self.update_cache()
        _driver.check_supports(version, gpus, policy)
        return {'version': version, 'flavor': flavor, 'packages': self.package_names(version, flavor, gpus),
                'reload': p['reload'], 'clients': p['clients'], 'gpus': gpus}

    def package_names(self, version, flavor, gpus) -> list:
        p = self.params
        return _driver.package_names(version, flavor, source=p['source'], nvswitch=p['nvswitch'], server=p['canonical_server'],
                                     kernel_modules=p['kernel_modules'], kernel_flavour=p['kernel_flavour'],
                                     nvlink5=any(g['architecture'] == 'blackwell' for g in gpus))

    def update_cache(self):
        if self.params['update_cache'] and not self.module.check_mode:
            self.apt.update_cache()

    # ---- apply ----------------------------------------------------------------------------
    def apply(self, steps: list) -> dict:
        """Run the steps; returns (and keeps in self.outcome) what happened to the modules and clients."""
        outcome = self.outcome
        for step in steps:
            action = step['action']
            if action == 'stop_clients':
                self.apt.stop_units(step['units'])
            elif action == 'unload_modules':
                outcome['reload_failed'] = self.apt.unload_modules(step['modules'])
                outcome['unloaded'] = outcome['reload_failed'] is None
            elif action == 'unhold':
                self.apt.unhold(step['packages'])
            elif action == 'pin':
                self.apt.write_file(step['path'], step['content'])
            elif action == 'unpin':
                self.apt.remove_file(step['path'])
            elif action == 'install':
                self.apt.install(dict(step['packages'], **{n: None for n in step.get('repair', []) if n not in step['packages']}),
                                 step['remove'])
            elif action == 'hold':
                installed = self.apt.installed()
                self.apt.hold(sorted(set(n for n in step['packages'] if n in installed)
                                     | {n for n, i in installed.items() if i['installed']}))
            elif action == 'load_modules':
                if outcome['reload_failed'] is None:
                    outcome['reload_failed'] = self.apt.load_modules(step['modules'])
            elif action == 'start_clients':
                outcome['clients_not_started'] = self.apt.start_units(step['units'])
        return outcome

    def rollback(self, before: dict, error: Exception, steps: list) -> None:
        after = self.apt.installed()
        undo = _driver.rollback_plan(before['installed'], before['held'], before['preferences'], after)
        try:
            self.apply(undo)
        except _packages.PackageError as exc:
            self.fail('install failed (%s) and so did the rollback (%s); driver packages now: %s'
                      % (error, exc, self.apt.installed()), rolled_back=False,
                      output=getattr(exc, 'output', '')[-4000:])
        finally:
            if self.outcome['unloaded']:
                self.apt.load_modules(list(_driver.MODULES_LOAD))
            stopped = [s['units'] for s in steps if s['action'] == 'stop_clients']
            if stopped:
                self.apt.start_units(stopped[0])
        restored = {n: i['version'] for n, i in sorted(self.apt.installed().items()) if i['installed']}
        self.fail('install failed: %s. Rolled back: the previous driver packages are installed again (%s)'
                  % (error, ', '.join('%s=%s' % kv for kv in restored.items()) or 'none'),
                  rolled_back=True, packages=restored, output=getattr(error, 'output', '')[-4000:])

    def run(self):
        if self.module.get_bin_path('apt-get') is None:
            if self.module.get_bin_path('dnf') is None:
                self.fail('neither apt-get nor dnf found: this module supports Debian, Ubuntu and (planning only) the RHEL family')
            self.plan_dnf()
            return
        try:
            desired = self.desired()
            current = self.observe([x['name'] for x in desired['packages']])
            planned = _driver.plan(current, desired)
        except _driver.DriverError as exc:
            self.fail('refused, nothing changed: %s' % exc)
        except _packages.PackageError as exc:
            self.fail(str(exc), output=exc.output[-4000:])
        self.result.update(version=planned['version'], flavor=planned['flavor'], plan=planned['steps'], changed=planned['changed'],
                           packages=planned['after'], installed_version=_driver.installed_driver_version(current['installed']),
                           loaded=current['loaded'], reboot_required=planned['reboot_required'], reboot_reason=planned['reason'])
        if self.module._diff:
            self.result['diff'] = {'before': {'packages': planned['before']}, 'after': {'packages': planned['after']}}
        if self.module.check_mode or not planned['changed']:
            self.module.exit_json(**self.result)
        try:
            outcome = self.apply(planned['steps'])
        except _packages.PackageError as exc:
            self.rollback(current, exc, planned['steps'])
        self.verify(current, desired, planned, outcome)
        self.module.exit_json(**self.result)

    def verify(self, before: dict, desired: dict, planned: dict, outcome: dict) -> None:
        observed = self.observe([])
        problems = _driver.verify(observed, desired, planned)
        packages = {n: i['version'] for n, i in sorted(observed['installed'].items()) if i['installed']}
        loaded = observed['loaded']
        reason = None
        if not loaded['loaded']:
            reason = 'no NVIDIA kernel module is loaded'
        elif loaded['version'] != desired['version'] or loaded['flavor'] not in (desired['flavor'], 'unknown'):
            reason = 'loaded kernel module %s (%s) differs from the installed driver %s (%s)' % (
                loaded['version'], loaded['flavor'], desired['version'], desired['flavor'])
        if reason and outcome['reload_failed']:
            reason += '; the modules could not be reloaded: %s' % outcome['reload_failed']
        if outcome['clients_not_started']:
            self.module.warn('GPU clients that did not start again: %s' % ', '.join(outcome['clients_not_started']))
        self.result.update(packages=packages, installed_version=_driver.installed_driver_version(observed['installed']),
                           loaded=loaded, reboot_required=reason is not None, reboot_reason=reason)
        if self.module._diff:
            self.result['diff']['after'] = {'packages': packages}
        if problems:
            self.fail('the driver packages differ from the plan after the install: %s' % '; '.join(problems))

    def plan_dnf(self):
        p = self.params
        try:
            version = _driver.resolve_version(p['whitelist'], version=p['version']) if p['version'] is not None else None
            if version is None:
                self.fail('on the RHEL family give an exact version (branch resolution needs the apt repository view)')
            gpus = self.gpus()
            policy = _driver.merge_policy(POLICY, p['policy'])
            flavor = _driver.choose_flavor(gpus, p['flavor'], policy)
            _driver.check_supports(version, gpus, policy)
            steps = _driver.dnf_plan(version, flavor, p['nvswitch'])
        except _driver.DriverError as exc:
            self.fail('refused, nothing changed: %s' % exc)
        self.result.update(version=version, flavor=flavor, plan=steps, changed=True)
        if not self.module.check_mode:
            self.fail('the RHEL family is planned (see plan) but not applied by this version of the module; run it in check mode')
        self.module.exit_json(**self.result)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True,
                           mutually_exclusive=[('version', 'branch')], required_one_of=[('version', 'branch')])
    DriverManager(module).run()


if __name__ == '__main__':
    main()
