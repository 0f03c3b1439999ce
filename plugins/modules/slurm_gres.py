#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: slurm_gres
short_description: Write a Slurm node's gres.conf from its GPUs and MIG devices, and compute its Gres
version_added: 0.4.0
description:
  - Observes the host's GPUs through NVML (as M(gpuvirt.fleet.gpu_facts) does) and writes the node's GPU lines of
    C(gres.conf) for Slurm without NVML AutoDetect (Debian's Slurm 22.05 has no C(gpu_nvml) plugin).
  - A whole GPU gives C(NodeName=<node> AutoDetect=off Name=gpu Type=<type> File=/dev/nvidia<minor>). A GPU in MIG
    mode is not also a whole GPU; each of its compute instances gives
    C(Type=<MIG profile> MultipleFiles=/dev/nvidia<minor>,/dev/nvidia-caps/nvidia-cap<GI>,/dev/nvidia-caps/nvidia-cap<CI>),
    the cap minors read from the C(DeviceFileMinor) of the driver's
    C(/proc/driver/nvidia/capabilities/gpu<minor>/mig/gi<gi>[/ci<ci>]/access) files.
  - The type of a whole GPU is O(gpu_types[name]) where set, else the NVML name in lower case with every run of
    other characters than letters, digits, C(.) and C(-) turned into C(_) (C(NVIDIA H100 80GB HBM3) gives
    C(nvidia_h100_80gb_hbm3), the name Slurm's own NVML AutoDetect uses). A MIG device's type is its profile name
    (C(3g.40gb)); a compute instance smaller than its GPU instance is C(<slices>c.<profile>).
  - The module owns only the lines of O(node_name) with C(Name=gpu), which it writes as one block between marker
    comments where the first of them was. Every other line (other nodes, other GRES names, global options,
    comments) is kept byte for byte. A C(Name=gpu) line without C(NodeName=), or with a host range that includes
    O(node_name), is an error naming the line, before anything is written.
  - Creates missing C(/dev/nvidia-caps/nvidia-cap<M>) nodes with C(nvidia-modprobe -f <cap file>); slurmd exits
    when a file of gres.conf does not exist.
  - Returns RV(gres), the value for the node's C(Gres=) in slurm.conf (see M(gpuvirt.fleet.slurm_conf_node)).
author:
  - gpuvirt.fleet maintainers (@gpuvirt)
extends_documentation_fragment:
  - gpuvirt.fleet.attributes
attributes:
  check_mode:
    support: full
    details:
      - Computes RV(gres) and RV(devices) and reports whether the file would change; writes nothing, makes no node.
  diff_mode:
    support: full
    details:
      - The file before and after.
options:
  node_name:
    description: The node's name in Slurm (C(NodeName=)).
    type: str
    required: true
  path:
    description: The gres.conf to write.
    type: path
    default: /etc/slurm/gres.conf
  gpu_types:
    description: Slurm type of whole GPUs per NVML GPU name (such as C(NVIDIA H100 80GB HBM3)); unnamed GPUs follow the rule above.
    type: dict
    default: {}
  create_device_files:
    description: Create missing MIG capability device nodes with C(nvidia-modprobe -f).
    type: bool
    default: true
  backup:
    description: Keep a backup of the file before changing it.
    type: bool
    default: false
requirements:
  - nvidia-ml-py (pynvml) on the host
  - nvidia-modprobe where MIG devices exist and O(create_device_files=true)
'''

EXAMPLES = r'''
- name: Write this node's GPU lines of gres.conf
  gpuvirt.fleet.slurm_gres:
    node_name: "{{ inventory_hostname_short }}"
    gpu_types:
      NVIDIA H100 80GB HBM3: h100
  register: gres

- name: Show the Gres for slurm.conf
  ansible.builtin.debug:
    msg: "{{ gres.gres }}"
'''

RETURN = r'''
gres:
  description: The node's Gres for slurm.conf, C(gpu:<type>:<count>) per type in gres.conf order (empty for no GPU).
  returned: success
  type: str
  sample: gpu:3g.40gb:1,gpu:1g.10gb:1,gpu:nvidia_h100_80gb_hbm3:1
devices:
  description: The GRES in gres.conf order (the GRES index Slurm gives them), with C(gpu) (index), C(minor), C(type),
    C(files), C(gpu_instance) and C(compute_instance) (null for a whole GPU).
  returned: success
  type: list
  elements: dict
lines:
  description: The managed block of gres.conf.
  returned: success
  type: list
  elements: str
device_files_created:
  description: MIG capability device nodes made by nvidia-modprobe.
  returned: success
  type: list
  elements: str
backup_file:
  description: The backup of the previous file.
  returned: changed and O(backup=true)
  type: str
commands:
  description: Commands run, each C(cmd) and C(rc).
  returned: always
  type: list
  elements: dict
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _commands, _results, _slurm, _slurm_apply, _slurm_host
from ansible_collections.gpuvirt.fleet.plugins.module_utils._discovery import DiscoveryError, discover


def main():
    module = _results.checked(AnsibleModule, argument_spec={
        'node_name': {'type': 'str', 'required': True},
        'path': {'type': 'path', 'default': '/etc/slurm/gres.conf'},
        'gpu_types': {'type': 'dict', 'default': {}},
        'create_device_files': {'type': 'bool', 'default': True},
        'backup': {'type': 'bool', 'default': False},
    }, supports_check_mode=True)
    params = module.params
    runner = _commands.Runner(module.run_command)
    result = {'changed': False, 'failed': False, 'commands': runner.log, 'device_files_created': []}
    errors = _slurm.validate_types(params['gpu_types'])
    if not _slurm.NODE_RE.match(params['node_name']):
        errors.append('node_name %r: expected a Slurm node name' % params['node_name'])
    if errors:
        module.fail_json(msg='; '.join(errors), **result)
    node, path = params['node_name'], params['path']
    try:
        _host, gpus = discover(module, 'nvml')
        minors, warnings = _slurm_host.gpu_minors(gpus)
        devs, more = _slurm.devices(gpus, minors, _slurm_host.cap_minors(), params['gpu_types'])
        warnings += more
        lines = _slurm.gres_lines(node, devs)
        before = _slurm_apply.read_text(path)
        after = _slurm.merge_gres_conf(before or '', node, lines)
    except (DiscoveryError, _slurm.SlurmError) as exc:
        module.fail_json(msg=str(exc), **result)
    result.update(gres=_slurm.gres_string(devs), devices=devs, lines=lines, warnings=warnings)
    missing = _slurm_host.missing_cap_nodes(devs)
    if missing and not params['create_device_files']:
        result['warnings'].append('device nodes missing (slurmd will not start): %s' % ', '.join(missing))
    elif missing:
        result['changed'] = True
        if not module.check_mode:
            try:
                result['device_files_created'] = _slurm_host.make_cap_nodes(runner, module.get_bin_path('nvidia-modprobe', required=True), devs)
            except _commands.CommandError as exc:
                module.fail_json(msg=str(exc), **result)
    made = result['changed']
    _slurm_apply.write_file(module, path, before, after, params['backup'], result)
    result['changed'] = result['changed'] or made
    _results.finish(module, result, _slurm_apply.file_diff(path))


if __name__ == '__main__':
    main()
