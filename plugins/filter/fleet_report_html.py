# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
name: fleet_report_html
short_description: One self-contained HTML page describing a fleet's GPUs, MIG layouts, vGPUs and drift
version_added: 0.3.0
description:
  - Turns the facts M(gpuvirt.fleet.gpu_facts) gathered on many hosts, with each host's declarations, into one HTML
    document with inline CSS and inline SVG only (no script, no external stylesheet, font or image).
  - A fleet summary comes first (hosts, GPUs by model, drivers, GPUs with MIG on, MIG GPU instances, vGPUs, hosts with
    drift, unreachable hosts), then per host its driver, GPUs (model, bus id, memory, architecture, MIG and
    virtualization mode), the MIG layout drawn as slices (a memory-slice row and a compute-slice row per GPU, each GPU
    instance a block coloured by its compute slices and labelled with its profile) and the vGPU devices.
  - Drift is judged by the same planners the roles use (MIG and vGPU plan and verify) and by the loaded driver version
    and kernel-module flavour; a host with drift lists its differences.
  - Every text taken from facts or inventory is HTML-escaped.
  - vGPU devices are those NVML lists as active; their parent is the GPU's PCI address (gpu_facts does not name the
    VF that holds an SR-IOV vGPU).
author:
  - gpuvirt.fleet maintainers (@gpuvirt)
options:
  _input:
    description:
      - One entry per host, a dict with C(host) (inventory name), C(reachable) (bool, default true), C(error) (why
        there are no facts), C(gpu_host) and C(gpus) (as set by M(gpuvirt.fleet.gpu_facts)), and the host's declarations
        C(gpu_mig), C(gpu_vgpu), C(driver_version), C(driver_branch) and C(driver_flavor) (each optional).
      - A host with C(reachable=false) is listed as unreachable; a reachable one without C(gpu_host) (gpu_facts failed)
        as a host without GPU facts, with C(error).
    type: list
    elements: dict
    required: true
  title:
    description: The page title.
    type: str
    default: GPU fleet report
  generated:
    description: When the report was made, shown under the title (any text; omitted when empty).
    type: str
'''

EXAMPLES = r'''
---
- name: Render the fleet report from hosts that ran gpuvirt.fleet.gpu_facts
  ansible.builtin.copy:
    dest: /tmp/fleet-report.html
    content: "{{ hosts | gpuvirt.fleet.fleet_report_html(title='Lab fleet', generated=now(utc=true).isoformat()) }}"
    mode: "0644"
  vars:
    hosts:
      - host: gpu1
        gpu_host: "{{ hostvars['gpu1'].ansible_facts.gpu_host }}"
        gpus: "{{ hostvars['gpu1'].ansible_facts.gpus }}"
        gpu_mig: "{{ hostvars['gpu1'].gpu_mig | default(omit) }}"
      - host: gpu2
        reachable: false
        error: host unreachable
'''

RETURN = r'''
_value:
  description: The HTML document.
  type: str
  sample: <!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>GPU fleet report</title>...
'''

from collections.abc import Mapping, Sequence

from ansible.errors import AnsibleFilterError

# Imported when the filter runs, not when this file loads: ansible-core looks a collection filter up by loading the
# collection's filter files in turn, in every task's worker process, so a heavy import here would be paid by every
# task that uses any gpuvirt.fleet filter (docs/scaling.md).


def fleet_report_html(hosts, title='GPU fleet report', generated=None):
    """The fleet report as one self-contained HTML document."""
    if isinstance(hosts, (str, bytes, Mapping)) or not isinstance(hosts, Sequence):
        raise AnsibleFilterError('fleet_report_html expects a list of host entries (dicts with host, gpu_host, gpus and declarations)')
    for number, entry in enumerate(hosts, 1):
        if not isinstance(entry, Mapping) or not entry.get('host'):
            raise AnsibleFilterError('fleet_report_html: entry %d has no host name (expected a dict with host, gpu_host, gpus)' % number)
    from ansible_collections.gpuvirt.fleet.plugins.module_utils._report_html import render_html  # pylint: disable=import-outside-toplevel
    try:
        return render_html(hosts, title=str(title), generated=generated)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise AnsibleFilterError('fleet_report_html: malformed GPU facts: %s' % exc) from exc


class FilterModule:
    def filters(self):
        return {'fleet_report_html': fleet_report_html}
