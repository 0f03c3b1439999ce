#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: slurm_node
short_description: Drain, resume and check one Slurm node through scontrol
version_added: 0.4.0
description:
  - Runs where C(scontrol) has operator rights (the controller or the node itself).
  - V(show) returns the node's state and its running jobs.
  - V(drain) drains the node with O(reason) (unless it is drained already; RV(drained_before) says so, and such a
    node should never be resumed by the caller; a drain with the same O(reason), left by an earlier run, or one
    Slurm set for an INVAL registration, does not count), then waits up to O(timeout) seconds until no job runs on it. On
    timeout it fails naming the node, the timeout and the job ids still running (the node stays drained; the caller
    decides whether to resume it).
  - V(resume) waits up to O(timeout) until slurmd has registered with a valid configuration (Slurm refuses a resume
    while the node is INVAL), resumes it if it is drained (unless O(keep_drained)), then waits as V(wait) does.
  - V(wait) waits up to O(timeout) until the node takes jobs (not DOWN, DRAIN, INVAL, NOT_RESPONDING; DRAIN allowed
    with O(keep_drained)) and, with O(expected_gres), reports that Gres; else it fails naming the state and reason.
author:
  - gpuvirt.fleet maintainers (@gpuvirt)
extends_documentation_fragment:
  - gpuvirt.fleet.attributes
attributes:
  check_mode:
    support: full
    details:
      - Drain and resume report whether they would change the node, and wait for nothing.
  diff_mode:
    support: none
options:
  name:
    description: The node.
    type: str
    required: true
  action:
    description: What to do.
    type: str
    choices: [show, drain, resume, wait]
    default: show
  reason:
    description: The drain reason.
    type: str
    default: gpuvirt.fleet GPU reconfiguration
  timeout:
    description: Seconds to wait (jobs to end for V(drain), a usable state for V(resume) and V(wait)).
    type: int
    default: 300
  poll_interval:
    description: Seconds between two polls.
    type: float
    default: 2
  expected_gres:
    description: The Gres the node must report (compared per type and count; order and socket bindings ignored).
    type: str
  keep_drained:
    description: The node was drained by somebody else; do not resume it, and accept DRAIN as usable.
    type: bool
    default: false
  scontrol:
    description: The scontrol command.
    type: str
    default: scontrol
  squeue:
    description: The squeue command.
    type: str
    default: squeue
'''

EXAMPLES = r'''
- name: Drain and wait for the jobs to leave
  gpuvirt.fleet.slurm_node:
    name: gpu01
    action: drain
    timeout: 3600
  register: drained

- name: Resume, unless somebody else had drained it
  gpuvirt.fleet.slurm_node:
    name: gpu01
    action: resume
    keep_drained: "{{ drained.drained_before }}"
    expected_gres: gpu:3g.40gb:2
'''

RETURN = r'''
node:
  description: The node as scontrol shows it last, C(name), C(state), C(base_state), C(flags), C(reason), C(gres).
  returned: always
  type: dict
  sample: {"name": "gpu01", "state": "IDLE+DRAIN", "base_state": "IDLE", "flags": ["DRAIN"], "reason": "mig", "gres": "gpu:1g.10gb:2"}
drained_before:
  description: Whether the node was drained before this task (by somebody else).
  returned: action is drain
  type: bool
jobs:
  description: Ids of the jobs running on the node.
  returned: action is show or drain
  type: list
  elements: str
commands:
  description: Commands run, each C(cmd) and C(rc).
  returned: always
  type: list
  elements: dict
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _commands, _results, _slurm, _slurm_apply


def main():
    module = _results.checked(AnsibleModule, argument_spec={
        'name': {'type': 'str', 'required': True},
        'action': {'type': 'str', 'default': 'show', 'choices': ['show', 'drain', 'resume', 'wait']},
        'reason': {'type': 'str', 'default': 'gpuvirt.fleet GPU reconfiguration'},
        'timeout': {'type': 'int', 'default': 300},
        'poll_interval': {'type': 'float', 'default': 2},
        'expected_gres': {'type': 'str'},
        'keep_drained': {'type': 'bool', 'default': False},
        'scontrol': {'type': 'str', 'default': 'scontrol'},
        'squeue': {'type': 'str', 'default': 'squeue'},
    }, supports_check_mode=True)
    params = module.params
    if not _slurm.NODE_RE.match(params['name']):
        module.fail_json(msg='name %r: expected a Slurm node name' % params['name'])
    if not params['reason'].isprintable() or not 0 <= params['timeout'] <= 86400 or not 0 < params['poll_interval'] <= 600:
        module.fail_json(msg='reason must be printable, timeout 0..86400 s, poll_interval 0..600 s')
    runner = _commands.Runner(module.run_command)
    try:
        result = _slurm_apply.node_action(module, runner, params)
    except _commands.CommandError as exc:
        module.fail_json(msg=str(exc), commands=runner.log)
    _results.finish(module, result)


if __name__ == '__main__':
    main()
