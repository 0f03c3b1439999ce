# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
name: gpu_summary
short_description: One readable line describing a host's GPUs
version_added: 0.1.0
description:
  - Turns the facts set by M(gpuvirt.fleet.gpu_facts) into one line an operator reads at a glance
    (GPU models and counts, driver and kernel-module flavour, CUDA, MIG and vGPU state, lost GPUs).
author:
  - gpuvirt.fleet maintainers (@gpuvirt)
options:
  _input:
    description: The host's C(ansible_facts), holding C(gpu_host) and C(gpus).
    type: dict
    required: true
  layout:
    description: Also return one line per GPU with its MIG layout (profile@start and compute instances) or vGPU devices.
    type: bool
    default: false
'''

EXAMPLES = r'''
---
- name: Print the GPU summary of each host
  ansible.builtin.debug:
    msg: "{{ ansible_facts | gpuvirt.fleet.gpu_summary }}"

- name: Print the summary and each GPU's layout
  ansible.builtin.debug:
    msg: "{{ ansible_facts | gpuvirt.fleet.gpu_summary(layout=true) }}"
'''

RETURN = r'''
_value:
  description: The summary line, or with O(layout=true) a list of the summary line and one line per GPU.
  type: raw
  sample: 8x NVIDIA H100 80GB HBM3 | driver 580.159.04 (open modules) | CUDA 13.0 | MIG on 0/8 (0 GPU instances) | via nvml
'''

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

# Imported when the filter runs, not when this file loads: ansible-core looks a collection filter up by loading the
# collection's filter files in turn, in every task's worker process, so a heavy import here would be paid by every
# task that uses any gpuvirt.fleet filter (docs/scaling.md).


def gpu_summary(facts, layout=False):
    """The host's summary line; with layout=True, followed by one line per GPU (its MIG or vGPU layout)."""
    if not isinstance(facts, Mapping) or 'gpu_host' not in facts or 'gpus' not in facts:
        raise AnsibleFilterError('gpu_summary expects a host\'s ansible_facts after gpuvirt.fleet.gpu_facts ran (keys gpu_host and gpus)')
    from ansible_collections.gpuvirt.fleet.plugins.module_utils._facts import layout_lines, summary_line  # pylint: disable=import-outside-toplevel
    try:
        line = summary_line(facts['gpu_host'], facts['gpus'])
        return [line] + ['  ' + text for text in layout_lines(facts['gpus'])] if layout else line
    except (KeyError, TypeError) as exc:
        raise AnsibleFilterError('gpu_summary: malformed GPU facts: %s' % exc) from exc


class FilterModule:
    def filters(self):
        return {'gpu_summary': gpu_summary}
