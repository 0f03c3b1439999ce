#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: gpu_settings
short_description: Declare NVIDIA GPU settings (persistence, power limit, ECC, compute mode, clocks) per GPU
version_added: 0.6.0
description:
  - Brings the selected GPUs to declared settings in four steps. Observe reads every GPU through NVML. Plan checks the
    whole declaration against what each GPU supports and reports (power limit constraints, supported clocks, ECC and
    compute mode support) and lists the steps. Apply runs them. Verify reads the GPUs back and plans again; nothing
    may be left to do.
  - A value outside a GPU's constraints, a setting a GPU does not support, or a malformed entry is refused before any
    change; the message names the host, GPU, entry and reason, and for a power limit both bounds.
  - "Persistence is host-wide: O(config[].persistence=true) enables and starts the C(nvidia-persistenced) service (which
    turns persistence mode on for every GPU), V(false) stops and disables it. Where no C(nvidia-persistenced) runs but a
    GPU has persistence mode on by itself (set with C(nvidia-smi -pm 1)), V(false) turns it off on that GPU
    (C(nvmlDeviceSetPersistenceMode), step V(set_persistence_mode)); V(true) without the service installed is refused."
  - An ECC change is pending until the GPU is reset. With O(reset=auto) the GPU is reset with C(nvidia-smi -r) through
    the same holder-aware path as M(gpuvirt.fleet.mig_layout) (refused, naming the processes, while anything holds the
    GPU; nothing is killed); where a reset is not possible (O(reset=never), a loaded C(nvidia_drm), a GPU that refuses
    the reset) the GPU is listed in RV(reboot_required). A reset also puts the power limit and clocks back to their
    defaults, so they are set after it.
  - Power limits and clocks are lost at a reboot or driver reload; the P(gpuvirt.fleet.gpu_settings#role) role installs
    a boot-time service that re-applies the declaration through the same code as this module.
  - NVML cannot read locked clocks back. The module records the clocks it locked, with the boot they were locked in,
    in O(state_file); a record of an earlier boot is void (a reboot unlocks them). Clocks locked or unlocked by another
    tool since are not seen.
  - A failing step, or a verify mismatch, rolls every touched GPU (and C(nvidia-persistenced)) back to the settings
    observed before, each step tried again on failure; the result says which step failed and whether the rollback
    restored everything (RV(rollback)).
author:
  - gpuvirt.fleet maintainers (@gpuvirt)
extends_documentation_fragment:
  - gpuvirt.fleet.attributes
  - gpuvirt.fleet.observe
attributes:
  check_mode:
    support: full
    details:
      - Returns the ordered steps in RV(steps) and changes nothing; only read-only NVML calls are made.
  diff_mode:
    support: full
    details:
      - Before and after per selected GPU, each declared setting.
options:
  config:
    description:
      - The declaration (inventory variable C(gpu_settings) of the P(gpuvirt.fleet.gpu_settings#role) role), a list of
        entries. A GPU may be selected by one entry only; a selector that matches no GPU is an error. Settings an entry
        leaves out, and GPUs no entry selects, are left alone.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: A name for the entry, used in messages; without it entries are numbered from 1.
        type: str
      devices:
        description:
          - Which GPUs the entry declares, as in M(gpuvirt.fleet.mig_layout) and M(gpuvirt.fleet.vgpu_devices)
          - V(all), a list of NVML indexes, or a mapping of C(indexes), C(uuids), C(model) and C(device_id) that must all match.
        type: raw
        required: true
      persistence:
        description:
          - Persistence mode through the C(nvidia-persistenced) service (host-wide; entries must agree).
        type: bool
      power_limit:
        description:
          - The power management limit, in watts (V(450), V(450 W)), as a percentage of the GPU's default limit
            (V(80%)), or V(default).
          - It must lie within the GPU's constraints (C(nvmlDeviceGetPowerManagementLimitConstraints), reported by
            M(gpuvirt.fleet.gpu_facts) in C(settings.power_limit)).
        type: raw
      ecc:
        description:
          - The ECC mode wanted. A change is pending until a GPU reset (see O(reset)) or a reboot.
        type: bool
      compute_mode:
        description: The compute mode.
        type: str
        choices: [default, exclusive_process, prohibited]
      gpu_locked_clocks:
        description:
          - Lock the graphics clock to a range, C({min, max}) in MHz (or one number), within the GPU's supported
            graphics clocks; V(default) unlocks it.
        type: raw
      memory_locked_clocks:
        description:
          - Lock the memory clock to a range, C({min, max}) in MHz (or one number), within the GPU's supported memory
            clocks; V(default) unlocks it.
        type: raw
      applications_clocks:
        description:
          - The application clocks, C({memory, graphics}) in MHz, a pair the GPU supports (C(settings.supported_clocks)
            in the facts); V(default) restores the default ones. Excludes the locked clocks in one entry.
        type: raw
  reset:
    description:
      - Whether a GPU whose ECC mode changes may be reset with C(nvidia-smi -r); V(never) leaves the change pending
        until the next reboot (RV(reboot_required)).
    type: str
    choices: [auto, never]
    default: auto
  state_file:
    description: Where the clocks locked since this boot are recorded (NVML cannot read them back).
    type: path
    default: /var/lib/gpuvirt/gpu-settings.json
requirements:
  - nvidia-ml-py (imported as C(pynvml)) on the managed host
  - C(nvidia-smi) on the managed host's C(PATH), to reset GPUs whose ECC mode changes
  - root (every NVML setter needs it; NVML answers C(Insufficient Permissions) otherwise)
notes:
  - Hosts without systemd can use every setting except O(config[].persistence).
seealso:
  - module: gpuvirt.fleet.gpu_facts
  - module: gpuvirt.fleet.mig_layout
  - name: NVML device commands
    description: The setters this module calls and their constraints.
    link: https://docs.nvidia.com/deploy/nvml-api/group__nvmlDeviceCommands.html
'''

EXAMPLES = r'''
---
- name: Rack power budget, exclusive compute, ECC on, persistence on
  gpuvirt.fleet.gpu_settings:
    config:
      - name: budget
        devices: all
        persistence: true
        power_limit: 80%
        ecc: true
        compute_mode: exclusive_process

- name: Reproducible benchmarks on the H200s
  gpuvirt.fleet.gpu_settings:
    config:
      - devices: {model: NVIDIA H200}
        gpu_locked_clocks: {min: 1500, max: 1500}
        memory_locked_clocks: 3201

- name: Show what would change, setting by setting
  gpuvirt.fleet.gpu_settings:
    config: "{{ gpu_settings }}"
  check_mode: true
  diff: true
  register: settings_plan
'''

RETURN = r'''
observed:
  description:
    - With O(observe), what M(gpuvirt.fleet.host_state) would report for those files and units, C(in_place) (nothing
      differs) and C(differences) (one line per file or unit that differs), observed before any change of this call.
    - With O(observe.running), also C(running), the names of those candidate units that run.
  returned: with O(observe)
  type: dict
  sample: {in_place: false, differences: ["unit gpuvirt-gpu-settings.service: disabled, not enabled"]}
steps:
  description:
    - The ordered steps of the plan; in check mode, what would run. Each has C(action), C(gpu) (NVML index; null for
      V(set_persistence)), C(uuid), the value to set (C(value), or C(enabled)) and the value it replaces (C(was)).
    - The actions are V(set_ecc_mode), V(reset_gpu), V(set_persistence), V(set_persistence_mode), V(set_compute_mode), V(set_power_limit)
      (C(value) in milliwatts), V(set_applications_clocks) (C(value) [memory, graphics] MHz), V(set_gpu_locked_clocks)
      and V(set_memory_locked_clocks) (C(value) [min, max] MHz, null to unlock).
  returned: always
  type: list
  elements: dict
  sample:
    - {action: set_power_limit, gpu: 0, uuid: GPU-c4749b76-95b4-dd74-8e7c-c0a715d7160c, value: 560000, was: 700000}
applied:
  description: The steps that ran, in order (empty in check mode).
  returned: always
  type: list
  elements: dict
reboot_required:
  description: GPUs whose ECC change waits for a reboot, with C(gpu), C(uuid) and C(reason).
  returned: always
  type: list
  elements: dict
disruptive:
  description: Whether the plan resets a GPU (what makes its holders stop first).
  returned: always
  type: bool
holders:
  description:
    - The processes that hold a GPU the plan must reset (C(pid), C(comm), C(command), C(unit), C(gpus)). Not empty
      means the change was refused (check mode only reports it).
  returned: always
  type: list
  elements: dict
errors:
  description: Every problem of a refused declaration, one line each, naming host, GPU and entry. Nothing was changed.
  returned: when the declaration is refused
  type: list
  elements: str
  sample: ["host gpu1: GPU 0 (GPU-2bbc3af3-7a90-4193-7574-41743730389f): entry 'budget': power_limit 800 W is outside the GPU's
           power limit constraints: minimum 200 W, maximum 700 W (nvmlDeviceGetPowerManagementLimitConstraints)"]
failure:
  description: The step that failed (C(step), C(step_number) counting from 1, C(error)); C(step) is null when the verify failed.
  returned: when a step or the verify fails
  type: dict
rollback:
  description:
    - What the rollback after a failure did. C(steps) lists the steps it ran and C(errors) those that failed;
      C(restored) says whether every touched GPU holds its previous settings again, C(mismatches) what differs.
  returned: when a step or the verify fails
  type: dict
  sample: {steps: [], errors: [], restored: true, mismatches: []}
'''

import socket

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _host_state, _results, _settings_apply

ENTRY_SPEC = {
    'name': {'type': 'str'},
    'devices': {'type': 'raw', 'required': True},
    'persistence': {'type': 'bool'},
    'power_limit': {'type': 'raw'},
    'ecc': {'type': 'bool'},
    'compute_mode': {'type': 'str', 'choices': ['default', 'exclusive_process', 'prohibited']},
    'gpu_locked_clocks': {'type': 'raw'},
    'memory_locked_clocks': {'type': 'raw'},
    'applications_clocks': {'type': 'raw'},
}
ARGUMENT_SPEC = {
    'config': {'type': 'list', 'elements': 'dict', 'options': ENTRY_SPEC, 'required': True},
    'reset': {'type': 'str', 'default': 'auto', 'choices': list(_settings_apply.RESET_CHOICES)},
    'state_file': {'type': 'path', 'default': _settings_apply.DEFAULT_STATE_FILE},
    'observe': _host_state.OBSERVE_OPTION,
}


def _diff(result):
    def by_gpu(states):
        return {'GPU %s' % state['devices'][0]: {k: v for k, v in state.items() if k != 'devices'} for state in states}
    return {'before': by_gpu(result.get('before') or []), 'after': by_gpu(result.get('after') or [])}


def main():
    module = _results.checked(AnsibleModule, argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = module.params
    observed = _host_state.observe_option(module)  # before any change: what the boot-time service has on the host
    declaration = [{key: value for key, value in entry.items() if value is not None} for entry in params['config']]
    result = _settings_apply.apply_settings(
        socket.gethostname(), declaration,
        run_command=lambda argv: module.run_command(argv, environ_update={'LC_ALL': 'C'}),
        reset=params['reset'], check_mode=module.check_mode, smi_path=module.get_bin_path('nvidia-smi'), state_file=params['state_file'])
    if observed is not None:
        result['observed'] = observed
    _results.finish(module, result, _diff)


if __name__ == '__main__':
    main()
