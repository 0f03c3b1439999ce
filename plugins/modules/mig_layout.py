#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: mig_layout
short_description: Declare NVIDIA MIG mode and GPU/compute instances per GPU, changed minimally and safely
version_added: 0.3.0
description:
  - Brings the host's MIG-capable GPUs to a declared layout in four steps. Observe reads every GPU through NVML.
    Plan validates the whole declaration against the profiles and placements each GPU reports and places the
    instances with an exact solver. Apply runs the planned steps. Verify reads the GPUs back.
  - An invalid or infeasible declaration (an unknown profile, too many instances, or a layout that is legal by
    counts but cannot be placed) is refused before any change; the message names the host, GPU, entry and reason.
  - The plan is minimal. Instances that already match (profile, placement, compute instances) are kept with their
    ids; only the others are destroyed and created, each GPU instance at an explicit placement. MIG mode is set only
    where it differs, and only GPUs whose current mode changes are reset (C(nvidia-smi -r)).
  - Where a reset is not possible (O(reset=never), or the GPU refuses the reset, as in pass-through VMs and some
    clouds), the GPU is listed in RV(reboot_required) and its instance steps in RV(deferred); they run at the next
    boot, for example from the boot-time service of the P(gpuvirt.fleet.mig#role) role.
  - GPUs with running processes, and instances in use, are not touched unless the entry sets O(config[].allow_disruption).
    The processes are not killed. With O(config[].allow_disruption=true) NVML still refuses to destroy an instance
    a process uses, and the change is rolled back; stop the GPU clients first (the role does).
  - A GPU that must be reset is first checked for holders, as C(fuser) finds them (every process with its
    C(/dev/nvidia<minor>) open, such as exporters, C(nvidia-persistenced), DCGM, the fabric manager, CUDA processes) and the
    compute processes NVML reports. If any holds it, the change is refused before anything is touched, naming each
    process (pid, command, systemd unit); in check mode they are returned in RV(holders). Processes are never
    stopped or killed by this module; the P(gpuvirt.fleet.mig#role) role stops the GPU services it knows first.
    Where C(nvidia_drm) is loaded it holds every GPU, so no reset is tried, the mode change stays pending and the GPU is
    listed in RV(reboot_required) with that reason.
  - A failing step, or a verify mismatch, rolls back every GPU a step touched to its previous layout, including
    its MIG mode and every instance at its placement. The result then says which step failed, why, and whether the
    rollback restored every GPU (RV(rollback)).
  - Also accepts a mig-parted v1 configuration and a label (O(mig_parted_config), O(mig_parted_label)) with mig-parted's
    meaning, and reports the current state in both formats (RV(declaration), RV(mig_parted)); O(export=true) only
    reports it. The two formats differ where a selector matches no GPU; see O(mig_parted_config) and
    C(docs/nvidia-formats.md).
author:
  - gpuvirt.fleet maintainers (@gpuvirt)
extends_documentation_fragment:
  - gpuvirt.fleet.attributes
  - gpuvirt.fleet.observe
attributes:
  check_mode:
    support: full
    details:
      - Returns the ordered steps in RV(steps) and changes nothing.
  diff_mode:
    support: full
    details:
      - Before and after per selected GPU (MIG mode and each instance with its placement), from the plan.
options:
  config:
    description:
      - The declaration (inventory variable C(gpu_mig) of the P(gpuvirt.fleet.mig#role) role), a list of entries.
      - Each entry selects GPUs with O(config[].devices) and declares their MIG mode and instances. A GPU may be
        selected by one entry only. A selector that matches no GPU is an error (a guard against typos), unlike an
        entry of O(mig_parted_config). GPUs no entry selects are left alone.
      - Mutually exclusive with O(mig_parted_config). One of them is required unless O(export=true).
    type: list
    elements: dict
    suboptions:
      name:
        description:
          - A name for the entry, used in messages ("entry 'inference'"); without it entries are numbered from 1.
        type: str
      devices:
        description:
          - Which GPUs the entry declares.
          - V(all), a list of NVML indexes such as V([0, 1]), or a mapping whose keys must all match. The mapping
            keys are C(indexes) (a list of indexes), C(uuids) (a UUID or a list), C(model) (the name NVML reports,
            such as V(NVIDIA H100 80GB HBM3), or a list) and C(device_id) (a PCI device id such as V(0x2330), or
            mig-parted's device-filter form V(0x233010DE), or a list).
        type: raw
        required: true
      enabled:
        description:
          - The MIG mode wanted. V(false) destroys every instance of the GPU and disables MIG.
        type: bool
        default: true
      allow_disruption:
        description:
          - Allow steps that affect running processes, namely destroying an instance a process uses and changing
            MIG mode or resetting a GPU that has processes.
          - Without it such a GPU is refused and the message names the PIDs. With it the steps are attempted;
            NVML refuses to destroy an instance that is still in use, and the change is rolled back.
        type: bool
        default: false
      instances:
        description:
          - The GPU instances wanted, replacing whatever the GPU holds (instances that match are kept).
          - Omitted, the entry sets MIG mode only and leaves existing instances alone; V([]) wants none.
          - Mutually exclusive with O(config[].mig_devices).
        type: list
        elements: dict
        suboptions:
          profile:
            description:
              - A GPU-instance profile by the name the selected GPU reports, such as V(3g.40gb), V(1g.10gb+me)
                or V(1g.20gb). C(gpu_facts) lists each GPU's profiles in C(mig.profiles).
            type: str
            required: true
          start:
            description:
              - The placement start in memory slices (C(mig.profiles[].placements) in the facts). Without it
                the solver chooses, keeping existing instances where it can.
            type: int
          count:
            description:
              - How many instances of this profile; must be 1 when O(config[].instances[].start) is given.
            type: int
            default: 1
          compute_instances:
            description:
              - The compute instances inside each of these GPU instances, by size, such as V([1c, 2c]); V(1c.3g.40gb)
                and the GPU instance's own name (one compute instance spanning it) are accepted too.
              - Omitted, one compute instance spans the GPU instance; V([]) creates none.
            type: list
            elements: str
      mig_devices:
        description:
          - "Instead of O(config[].instances), mig-parted's counts of (GPU instance, compute instance) pairs, such as
            V({\"1g.10gb\": 2, \"1c.3g.40gb\": 3}). A GPU whose counts already match is left alone wherever its instances
            sit; otherwise smaller compute instances are packed into as few GPU instances as fit, as mig-parted does."
        type: dict
  mig_parted_config:
    description:
      - A mig-parted v1 configuration (C(version), C(mig-configs)), as loaded from its YAML file, used as the declaration
        with the meaning C(nvidia-mig-parted apply) gives it. Messages name its entries C(<label>[N]) (N from 0).
      - An entry selects the GPUs that both its C(device-filter) (absent, one PCI id such as V(0x233010DE), device id
        then vendor id, or a list of them; V(0x25B610DE:0x14A910DE) adds the subsystem ids) and its C(devices)
        (V(all) or a list of GPU indexes) select. An entry that selects no GPU of the host is skipped, so a label with
        an entry per model, such as C(all-balanced), applies on every model it names.
      - A GPU that is not MIG-capable is skipped by an entry with C(devices=all) or C(mig-enabled=false); an entry
        that names it by index with C(mig-enabled=true) is refused, as mig-parted refuses it.
      - Where several entries select one GPU, the last one holds, as mig-parted applies each in turn. Each of them must
        be applicable there, and they must agree on C(mig-enabled).
      - C(mig-enabled) sets the mode; C(mig-devices), required when it is true (V({}) for no instances), gives counts
        as O(config[].mig_devices). A profile the GPU lacks, or counts that do not fit, are refused before any change,
        naming the entry and the GPU.
      - Requires O(mig_parted_label).
    type: dict
  mig_parted_label:
    description:
      - The label of O(mig_parted_config) to apply.
      - Also the label of the configuration returned in RV(mig_parted) (default V(current)).
    type: str
  reset:
    description:
      - Whether a GPU whose MIG mode changes may be reset with C(nvidia-smi -r).
      - V(auto) resets it; where the reset turns out to be impossible the GPU waits for a reboot (RV(reboot_required)).
      - V(never) leaves every mode change pending until the next reboot.
    type: str
    choices: [auto, never]
    default: auto
  export:
    description:
      - Change nothing; return the current state as RV(declaration) and RV(mig_parted).
    type: bool
    default: false
requirements:
  - nvidia-ml-py (imported as C(pynvml)) on the managed host
  - C(nvidia-smi) on the managed host's C(PATH), to reset GPUs whose MIG mode changes
notes:
  - MIG instances do not survive a reboot; MIG mode does on most GPUs. The P(gpuvirt.fleet.mig#role) role
    installs a boot-time service that re-applies the declaration through the same code as this module.
  - A GPU held open by an NVML client (C(nvidia-persistenced), C(nvidia-dcgm), an exporter, C(kubelet) or C(slurmd))
    cannot be reset; the role stops the declared clients around a change.
seealso:
  - module: gpuvirt.fleet.gpu_facts
  - name: NVIDIA MIG user guide
    description: Profiles, placements and the rules behind them.
    link: https://docs.nvidia.com/datacenter/tesla/mig-user-guide/
  - name: NVIDIA mig-parted
    description: The configuration format O(mig_parted_config) accepts.
    link: https://github.com/NVIDIA/mig-parted
'''

EXAMPLES = r'''
---
- name: Two 3g instances on every H100, the second split into three 1-slice compute instances
  gpuvirt.fleet.mig_layout:
    config:
      - name: inference
        devices: {model: NVIDIA H100 80GB HBM3}
        instances:
          - profile: 3g.40gb
            start: 0
          - profile: 3g.40gb
            start: 4
            compute_instances: [1c, 1c, 1c]

- name: Seven 1g instances on GPUs 0-3, MIG off on GPUs 4-7
  gpuvirt.fleet.mig_layout:
    config:
      - devices: [0, 1, 2, 3]
        instances:
          - profile: 1g.10gb
            count: 7
      - devices: [4, 5, 6, 7]
        enabled: false

- name: Show the plan without changing anything
  gpuvirt.fleet.mig_layout:
    config: "{{ gpu_mig }}"
  check_mode: true
  diff: true
  register: mig_plan

- name: Apply a label of a mig-parted configuration file, leaving mode changes for the next reboot
  # all-balanced holds one entry per GPU model (device-filter); entries for models this host lacks are skipped
  gpuvirt.fleet.mig_layout:
    mig_parted_config: "{{ lookup('ansible.builtin.file', 'config.yaml') | from_yaml }}"
    mig_parted_label: all-balanced
    reset: never

- name: Export the current layout in this module's format and in mig-parted's
  gpuvirt.fleet.mig_layout:
    export: true
    mig_parted_label: current
  register: mig_state
'''

RETURN = r'''
steps:
  description:
    - The ordered steps of the plan; in check mode, what would run.
    - Each has C(action), C(gpu) (NVML index) and C(uuid). The C(action) is one of V(destroy_compute_instance),
      V(destroy_gpu_instance), V(set_mig_mode), V(reset_gpu), V(create_gpu_instance) and V(create_compute_instance).
      The other keys describe the instance (C(gpu_instance_id), C(compute_instance_id), C(profile), C(profile_id),
      C(start), C(size), C(slices), C(gpu_instance_start)), the mode (C(enabled)) or the processes affected (C(pids)).
  returned: always
  type: list
  elements: dict
  sample:
    - {action: destroy_compute_instance, gpu: 0, uuid: GPU-2bbc3af3-7a90-4193-7574-41743730389f, gpu_instance_id: 13,
       compute_instance_id: 0, profile: 1c.1g.10gb, slices: 1, pids: []}
    - {action: destroy_gpu_instance, gpu: 0, uuid: GPU-2bbc3af3-7a90-4193-7574-41743730389f, gpu_instance_id: 13,
       profile: 1g.10gb, profile_id: 19, start: 6, size: 1, pids: []}
    - {action: create_gpu_instance, gpu: 0, uuid: GPU-2bbc3af3-7a90-4193-7574-41743730389f, profile: 1g.10gb+me,
       profile_id: 20, start: 6, size: 1}
applied:
  description:
    - The steps that ran, in order, each with the ids it created (C(gpu_instance_id), C(compute_instance_id)).
    - Empty in check mode.
  returned: always
  type: list
  elements: dict
reboot_required:
  description: GPUs whose MIG mode change waits for a reboot, with C(gpu), C(uuid) and C(reason).
  returned: always
  type: list
  elements: dict
  sample: [{gpu: 1, uuid: GPU-5b6e5f65-8f3f-4bd3-1d4e-2c3f2f0c1e11, reason: "Resetting GPU 00000000:2A:00.0 is not supported."}]
disruptive:
  description: Whether the plan changes a MIG mode or resets a GPU (what makes its holders stop first).
  returned: always
  type: bool
  version_added: 0.4.0
holders:
  description:
    - The processes that hold a GPU the plan must reset (C(pid), C(comm), C(command), C(unit) (the systemd unit, or
      null) and C(gpus), the indexes they hold). Not empty means the change was refused (check mode only reports it).
  returned: always
  type: list
  elements: dict
  sample: [{pid: 812, comm: nvidia-persistenc, command: /usr/bin/nvidia-persistenced --verbose, unit: nvidia-persistenced.service, gpus: [0, 1]}]
  version_added: 0.4.0
deferred:
  description: Per GPU in RV(reboot_required), the instance steps that run once MIG mode is current (C(gpu), C(uuid), C(reason), C(steps)).
  returned: always
  type: list
  elements: dict
declaration:
  description:
    - The MIG state at the end (in check mode, the current state) as a declaration for O(config), with every
      placement. Applying it changes nothing.
  returned: success
  type: list
  elements: dict
  sample: [{devices: all, enabled: true, instances: [{profile: 3g.40gb, start: 0}, {profile: 3g.40gb, start: 4, compute_instances: [1c, 1c, 1c]}]}]
mig_parted:
  description:
    - The same state as a mig-parted v1 configuration with one label (O(mig_parted_label), default V(current)), in the
      shape C(nvidia-mig-parted export) writes. It has one entry per distinct state, and every GPU NVML reads (one that
      is not MIG-capable with C(mig-enabled=false)). On a host of several models each entry names its models by
      C(device-filter) and uses C(devices=all) where it holds every GPU of them.
    - Applied to the same host as O(mig_parted_config), it plans no step. mig-parted cannot say where instances sit.
  returned: success
  type: dict
  sample:
    version: v1
    mig-configs:
      current:
        - {device-filter: "0x233010DE", devices: all, mig-enabled: true, mig-devices: {3g.40gb: 1, 1c.3g.40gb: 3}}
        - {device-filter: "0x223510DE", devices: all, mig-enabled: false}
errors:
  description: Every problem of a refused declaration, one line each, naming host, GPU and entry. Nothing was changed.
  returned: when the declaration is refused
  type: list
  elements: str
  sample: ["host gpu1: GPU 0 (GPU-2bbc3af3-7a90-4193-7574-41743730389f): entry 'inference': instances[1]: 3g.40gb cannot start at 2 (starts: 0, 4)"]
observed:
  description:
    - With O(observe), what M(gpuvirt.fleet.host_state) would report for those files and units, C(in_place) (nothing
      differs) and C(differences) (one line per file or unit that differs), observed before any change of this call.
    - With O(observe.running), also C(running), the names of those candidate units that run.
  returned: with O(observe)
  type: dict
  sample: {in_place: false, differences: ["unit gpuvirt-mig.service: disabled, not enabled"]}
failure:
  description: The step that failed (C(step), C(step_number) counting from 1, C(error)); C(step) is null when the verify failed.
  returned: when a step or the verify fails
  type: dict
rollback:
  description:
    - What the rollback after a failure did. C(steps) lists the steps it ran and C(errors) those that failed.
    - C(restored) says whether every touched GPU has its previous layout again; C(mismatches) describes, per GPU,
      what it holds now and what it held before.
  returned: when a step or the verify fails
  type: dict
  sample: {steps: [], errors: [], restored: true, mismatches: []}
'''

import socket

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _host_state, _mig_apply, _results

INSTANCE_SPEC = {
    'profile': {'type': 'str', 'required': True},
    'start': {'type': 'int'},
    'count': {'type': 'int', 'default': 1},
    'compute_instances': {'type': 'list', 'elements': 'str'},
}
ENTRY_SPEC = {
    'name': {'type': 'str'},
    'devices': {'type': 'raw', 'required': True},
    'enabled': {'type': 'bool', 'default': True},
    'allow_disruption': {'type': 'bool', 'default': False},
    'instances': {'type': 'list', 'elements': 'dict', 'options': INSTANCE_SPEC},
    'mig_devices': {'type': 'dict'},
}
ARGUMENT_SPEC = {
    'config': {'type': 'list', 'elements': 'dict', 'options': ENTRY_SPEC},
    'mig_parted_config': {'type': 'dict'},
    'mig_parted_label': {'type': 'str'},
    'reset': {'type': 'str', 'default': 'auto', 'choices': list(_mig_apply.RESET_CHOICES)},
    'export': {'type': 'bool', 'default': False},
    'observe': _host_state.OBSERVE_OPTION,
}


def _declaration(config):
    """The entries as the planner reads them: keys Ansible filled with null are left out, as if never written."""
    entries = []
    for entry in config:
        entry = {key: value for key, value in entry.items() if value is not None}
        if entry.get('instances') is not None:
            entry['instances'] = [{key: value for key, value in item.items() if value is not None} for item in entry['instances']]
        entries.append(entry)
    return entries


def _diff(result):
    def by_gpu(states):
        return {'GPU %s' % state['devices'][0]: state for state in states}
    return {'before': by_gpu(result.get('before') or []), 'after': by_gpu(result.get('after') or [])}


def main():
    module = _results.checked(
        AnsibleModule,
        argument_spec=ARGUMENT_SPEC,
        mutually_exclusive=[('config', 'mig_parted_config')],
        required_by={'mig_parted_config': 'mig_parted_label'},
        required_if=[('export', False, ('config', 'mig_parted_config'), True)],
        supports_check_mode=True,
    )
    params = module.params
    observed = _host_state.observe_option(module)  # before any change: what the boot-time service has on the host
    if params['export']:
        if params['config'] is not None or params['mig_parted_config'] is not None:
            module.fail_json(msg='export reports the current state and takes no declaration: leave out config and mig_parted_config')
        result = _mig_apply.export_state(params['mig_parted_label'])
    else:
        mig_parted = None
        if params['mig_parted_config'] is not None:
            mig_parted = {'config': params['mig_parted_config'], 'label': params['mig_parted_label']}
        result = _mig_apply.apply_declaration(
            socket.gethostname(), _declaration(params['config']) if params['config'] is not None else None,
            run_command=lambda argv: module.run_command(argv, environ_update={'LC_ALL': 'C'}),
            reset=params['reset'], check_mode=module.check_mode, mig_parted=mig_parted, label=params['mig_parted_label'],
            smi_path=module.get_bin_path('nvidia-smi'))
    if observed is not None:
        result['observed'] = observed
    _results.finish(module, result, None if params['export'] else _diff)


if __name__ == '__main__':
    main()
