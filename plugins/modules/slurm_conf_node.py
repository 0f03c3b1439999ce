#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: slurm_conf_node
short_description: Set the Gres of one node's NodeName line in slurm.conf
version_added: 0.4.0
description:
  - Sets C(Gres=) on the C(NodeName=<node_name>) line of slurm.conf (adds it, or removes it for an empty
    O(gres)); every other byte of the file stays as it was.
  - Run it where slurmctld reads slurm.conf (the controller). A missing line, a second line for the node, the node
    only in a host range (C(NodeName=gpu[01-04])), a line continued with a backslash, or a Gres without
    C(GresTypes=gpu) is an error naming the line, and nothing is written.
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
  node_name:
    description: The node (C(NodeName=) value).
    type: str
    required: true
  gres:
    description: The Gres, such as C(gpu:3g.40gb:2,gpu:h100:1) (RV(gpuvirt.fleet.slurm_gres#module:gres)).
    type: str
    required: true
  path:
    description: The slurm.conf to edit.
    type: path
    default: /etc/slurm/slurm.conf
  backup:
    description: Keep a backup of the file before changing it.
    type: bool
    default: false
'''

EXAMPLES = r'''
- name: Tell the controller what GPUs the node has
  gpuvirt.fleet.slurm_conf_node:
    node_name: gpu01
    gres: gpu:3g.40gb:2,gpu:h100:1
  delegate_to: slurmctl01
'''

RETURN = r'''
gres_before:
  description: The node's Gres in the file before (empty where it had none).
  returned: success
  type: str
backup_file:
  description: The backup of the previous file.
  returned: changed and O(backup=true)
  type: str
'''

import re

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _results, _slurm, _slurm_apply


def main():
    module = _results.checked(AnsibleModule, argument_spec={
        'node_name': {'type': 'str', 'required': True},
        'gres': {'type': 'str', 'required': True},
        'path': {'type': 'path', 'default': '/etc/slurm/slurm.conf'},
        'backup': {'type': 'bool', 'default': False},
    }, supports_check_mode=True)
    params = module.params
    result = {'changed': False, 'failed': False}
    if not _slurm.NODE_RE.match(params['node_name']):
        module.fail_json(msg='node_name %r: expected a Slurm node name' % params['node_name'])
    if params['gres'] and not re.match(r'^[A-Za-z0-9_.+:-]+(,[A-Za-z0-9_.+:-]+)*$', params['gres']):
        module.fail_json(msg='gres %r: expected name:type:count entries separated by commas' % params['gres'])
    before = _slurm_apply.read_text(params['path'])
    if before is None:
        module.fail_json(msg='%s does not exist' % params['path'])
    try:
        after = _slurm.set_node_gres(before, params['node_name'], params['gres'])
    except _slurm.SlurmError as exc:
        module.fail_json(msg='%s: %s' % (params['path'], exc))
    old = [line for line in before.splitlines() if line.lstrip().lower().startswith('nodename=%s ' % params['node_name'].lower())]
    match = re.search(r'(?i)(?:^|\s)Gres=(\S*)', old[0].split('#', 1)[0]) if old else None
    result['gres_before'] = match.group(1) if match else ''
    _slurm_apply.write_file(module, params['path'], before, after, params['backup'], result)
    _results.finish(module, result, _slurm_apply.file_diff(params['path']))


if __name__ == '__main__':
    main()
