#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: vgpu_devices
short_description: Declare NVIDIA vGPU devices (mdev or SR-IOV) per GPU, with stable UUIDs, changed minimally and safely
version_added: 0.3.0
description:
  - Brings the host's vGPU devices to a declared set in four steps. Observe reads every GPU through NVML and its
    mediated-device parent through sysfs. Plan validates the whole declaration against the types, capacity and
    rules each GPU reports. Apply writes to sysfs. Verify reads the devices back.
  - A declaration the GPUs cannot hold is refused before any write. That covers an unknown type, a count above
    capacity, and two time-sliced types on a GPU that allows one. The message names the host, GPU, entry and reason.
  - UUIDs are stable. Unless O(config[].uuids) lists them, device N of a type on a GPU gets a UUID derived from the
    host name, the GPU's UUID, the type and N, so re-applying never renames a device a VM is bound to.
  - The plan is minimal. Devices that match stay; only the difference is removed and created. A device of the
    declared type with another UUID (made by another tool) fills a slot instead of being replaced.
  - A device attached to a VM is never removed unless its entry sets O(config[].allow_disruption). The kernel
    refuses (EBUSY) while a VM holds it anyway. A refused write, or a verify mismatch, rolls back what this run did.
    The result then names the device, the errno, and what to do.
  - Persistence uses mdevctl definitions C(<mdevctl_dir>/<parent>/<uuid>) with C(start=auto), kept equal to the
    declared devices of each declared GPU. The P(gpuvirt.fleet.vgpu#role) role also re-applies at boot.
  - Also accepts a vgpu-device-manager v1 configuration and a label (O(vgpu_device_manager_config)) with the meaning
    C(nvidia-vgpu-dm apply) gives it, such as the GPU operator's C(default) label. It reports the devices at the
    end in that format too (RV(vgpu_device_manager)). The formats differ where a selector matches no GPU; see
    C(docs/nvidia-formats.md).
  - The backend is detected per GPU. Where the GPU's VFs carry C(<VF>/nvidia/creatable_vgpu_types) (the SR-IOV vendor
    interface of vGPU 17+ on Ada, Hopper and newer), a vGPU is created by writing its type id to the VF's
    C(nvidia/current_vgpu_type) and removed by writing V(0). Else the mdev parent under C(/sys/class/mdev_bus) is used.
    MIG-backed vGPU types are refused.
  - On the SR-IOV interface a device is identified by its VF, not a UUID, so O(config[].uuids) is refused there. Kept
    devices stay on their VFs and each new one takes the lowest free VF, so re-applying maps the same slots onto the
    same VFs. The VFs must be enabled first (C(sriov-manage -e)); the P(gpuvirt.fleet.vgpu#role) role does that.
    No mdevctl definitions are written for VFs; the role's boot-time re-apply re-creates them.
author:
  - gpuvirt.fleet maintainers (@gpuvirt)
extends_documentation_fragment:
  - gpuvirt.fleet.attributes
  - gpuvirt.fleet.observe
attributes:
  check_mode:
    support: full
    details:
      - Returns the ordered steps in RV(steps) and writes nothing.
  diff_mode:
    support: full
    details:
      - Before and after per declared GPU (each device's UUID and type), from the plan.
options:
  config:
    description:
      - The declaration (inventory variable C(gpu_vgpu) of the P(gpuvirt.fleet.vgpu#role) role), a list of entries.
      - GPUs no entry selects are left alone. Several entries may select one GPU, each with another type, where the
        GPU allows several time-sliced types (heterogeneous mode). Two entries of one type on one GPU are refused.
      - A null O(config) is refused like a missing one (V([]) declares nothing). Counts above 64, relative or
        unnormalised paths, and a O(sysfs_root) that does not exist are refused before anything is read.
      - A selector that matches no GPU is an error (a guard against typos), unlike an entry of O(vgpu_device_manager_config).
      - Mutually exclusive with O(vgpu_device_manager_config); one of them is required.
    type: list
    elements: dict
    suboptions:
      name:
        description: A name for the entry, used in messages; without it entries are numbered from 1.
        type: str
      devices:
        description:
          - Which GPUs the entry declares, as in P(gpuvirt.fleet.mig_layout#module). V(all), a list of NVML indexes,
            or a mapping of C(indexes), C(uuids), C(model) and C(device_id).
        type: raw
        default: all
      type:
        description: The vGPU type by its short name (V(A40-8Q)), its full name (V(NVIDIA A40-8Q)) or its mdev type id (V(nvidia-562)).
        type: str
        required: true
      count:
        description: How many devices of this type on each selected GPU; V(0) removes them. Defaults to the length of O(config[].uuids).
        type: int
      uuids:
        description: Explicit UUIDs, one per device (then O(config[].count) must match). Best with a single selected GPU.
        type: list
        elements: str
      allow_disruption:
        description: Allow removing devices that a VM uses. The kernel still refuses while the VM holds the device.
        type: bool
        default: false
  vgpu_device_manager_config:
    description:
      - A vgpu-device-manager v1 configuration (C(version), C(vgpu-configs)), used as the declaration with O(vgpu_device_manager_label).
        Messages name its entries C(<label>[N]), and C(<label>[N] <type>) for one type of an entry (N from 0).
      - An entry selects the GPUs that both its C(device-filter) and its C(devices) select. C(device-filter) is absent,
        one PCI id such as V(0x223510DE) (device id then vendor id), or a list of them; V(0x25B610DE:0x14A910DE) adds
        the subsystem ids. C(devices) is V(all) or a list of GPU indexes. An entry that selects no GPU of the host is
        skipped, so a label with an entry per model, such as the GPU operator's C(default), applies on every model it names.
      - An entry's C(vgpu-devices) (type to count, each above 0) are the whole vGPU configuration of each GPU it selects;
        V({}) removes every vGPU device there. Where several entries select one GPU, the last one holds, as
        vgpu-device-manager applies each in turn. Each of them must be applicable there.
      - A type the GPU lacks, or a count above its capacity, is refused before any write, naming the entry and the GPU.
    type: dict
  vgpu_device_manager_label:
    description: The label in O(vgpu_device_manager_config) to apply.
    type: str
  hostname:
    description:
      - The host name the default UUIDs derive from. Keep it stable (the role passes C(inventory_hostname)).
      - Defaults to the host's name.
    type: str
  mdevctl_dir:
    description: Where mdevctl definitions are written; an empty string writes none.
    type: path
    default: /etc/mdevctl.d
  sysfs_root:
    description: Where sysfs is mounted (another path where a container sees the host's sysfs elsewhere).
    type: path
    default: /sys
'''

EXAMPLES = r'''
---
- name: Six A40-8Q vGPUs on every A40
  gpuvirt.fleet.vgpu_devices:
    config:
      - devices: {model: NVIDIA A40}
        type: A40-8Q
        count: 6

- name: Two T4-8Q vGPUs with fixed UUIDs on GPU 1
  gpuvirt.fleet.vgpu_devices:
    config:
      - devices: [1]
        type: NVIDIA T4-8Q
        uuids: [5a0c3d2e-9a4b-4a7e-8b1e-1c2d3e4f5a6b, 5a0c3d2e-9a4b-4a7e-8b1e-1c2d3e4f5a6c]

- name: Apply a vgpu-device-manager configuration
  gpuvirt.fleet.vgpu_devices:
    vgpu_device_manager_config: "{{ lookup('ansible.builtin.file', 'vgpu-config.yaml') | from_yaml }}"
    vgpu_device_manager_label: A40-8Q

- name: Apply the GPU operator's default label, whose entries select GPU models by device-filter
  gpuvirt.fleet.vgpu_devices:
    vgpu_device_manager_config:
      version: v1
      vgpu-configs:
        default:
          - {device-filter: "0x1EB810DE", devices: all, vgpu-devices: {T4-8Q: 2}}
          - {device-filter: "0x223510DE", devices: all, vgpu-devices: {A40-24Q: 2}}
          - {device-filter: ["0x233010DE", "0x233110DE"], devices: all, vgpu-devices: {H100-40C: 2}}
    vgpu_device_manager_label: default
'''

RETURN = r'''
observed:
  description:
    - With O(observe), what M(gpuvirt.fleet.host_state) would report for those files and units, C(in_place) (nothing
      differs) and C(differences) (one line per file or unit that differs), observed before any change of this call.
    - With O(observe.running), also C(running), the names of those candidate units that run.
  returned: with O(observe)
  type: dict
  sample: {in_place: false, differences: ["unit gpuvirt-vgpu.service: disabled, not enabled"]}
steps:
  description: The ordered plan (removals first), one sysfs write each.
  returned: always
  type: list
  elements: dict
  sample: [{action: create, gpu: 0, parent: "0000:18:00.0", device: 0b6c1d1a-6f2e-4a8b-9c59-2d1c7a8e9f00, type: NVIDIA A40-8Q, type_id: nvidia-562}]
applied:
  description: The steps that ran.
  returned: always
  type: list
  elements: dict
devices:
  description:
    - Every vGPU device on the host at the end (uuid, type, gpu, gpu_uuid, parent, in_use, backend); input of the vgpu_hostdev filter.
    - On the SR-IOV interface also C(vf), the VF's bus id, and C(uuid) is the UUID NVML gives the vGPU where it gives one, else null.
  returned: success
  type: list
  elements: dict
persisted:
  description: The mdevctl definition files written or removed.
  returned: always
  type: list
  elements: str
declaration:
  description: The devices at the end in this module's input form (explicit UUIDs).
  returned: success
  type: list
  elements: dict
vgpu_device_manager:
  description:
    - The devices at the end as a vgpu-device-manager v1 configuration whose label is O(vgpu_device_manager_label)
      (default V(current)). It has one entry per distinct set of counts, naming every GPU. On a host of several
      models each entry names its models by C(device-filter), as C(nvidia-mig-parted export) writes.
    - Applied to the same host as O(vgpu_device_manager_config), it plans no step.
  returned: success
  type: dict
  version_added: 0.3.0
  sample:
    version: v1
    vgpu-configs:
      current:
        - {device-filter: "0x223510DE", devices: all, vgpu-devices: {A40-24Q: 2}}
        - {device-filter: "0x1EB810DE", devices: all, vgpu-devices: {T4-8Q: 2}}
errors:
  description: Every problem with the declaration, when it was refused (nothing was written).
  returned: when the plan is refused
  type: list
  elements: str
failure:
  description: The step that failed (with its errno) or the verify mismatch.
  returned: when a step or verify failed
  type: dict
rollback:
  description: The undo steps, their errors, and whether every GPU holds its previous devices again (C(restored)).
  returned: when a step or verify failed
  type: dict
'''

import socket

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _host_state, _results, _vgpu_apply

ENTRY_SPEC = {
    'name': {'type': 'str'},
    'devices': {'type': 'raw', 'default': 'all'},
    'type': {'type': 'str', 'required': True},
    'count': {'type': 'int'},
    'uuids': {'type': 'list', 'elements': 'str'},
    'allow_disruption': {'type': 'bool', 'default': False},
}

ARGUMENT_SPEC = {
    'config': {'type': 'list', 'elements': 'dict', 'options': ENTRY_SPEC},
    'vgpu_device_manager_config': {'type': 'dict'},
    'vgpu_device_manager_label': {'type': 'str'},
    'hostname': {'type': 'str'},
    'mdevctl_dir': {'type': 'path', 'default': '/etc/mdevctl.d'},
    'sysfs_root': {'type': 'path', 'default': '/sys'},
    'observe': _host_state.OBSERVE_OPTION,
}


def _declaration(config):
    """The entries as the planner reads them: keys Ansible filled with null are left out."""
    return [{key: value for key, value in entry.items() if value is not None} for entry in config]


def _diff(result):
    def by_gpu(states):
        return {'GPU %s' % state['gpu']: state['devices'] for state in states}
    return {'before': by_gpu(result.get('before') or []), 'after': by_gpu(result.get('after') or [])}


def main():
    module = _results.checked(
        AnsibleModule,
        argument_spec=ARGUMENT_SPEC,
        mutually_exclusive=[('config', 'vgpu_device_manager_config')],
        required_one_of=[('config', 'vgpu_device_manager_config')],
        required_by={'vgpu_device_manager_config': 'vgpu_device_manager_label'},
        supports_check_mode=True,
    )
    params = module.params
    observed = _host_state.observe_option(module)  # before any change: what the boot-time service has on the host
    manager = None
    if params['vgpu_device_manager_config'] is not None:
        manager = {'config': params['vgpu_device_manager_config'], 'label': params['vgpu_device_manager_label']}
    result = _vgpu_apply.apply_declaration(
        params['hostname'] or socket.gethostname(), _declaration(params['config']) if params['config'] is not None else None,
        check_mode=module.check_mode, vgpu_device_manager=manager, sysfs_root=params['sysfs_root'],
        mdevctl_dir=params['mdevctl_dir'] or None)
    if observed is not None:
        result['observed'] = observed
    _results.finish(module, result, _diff)


if __name__ == '__main__':
    main()
