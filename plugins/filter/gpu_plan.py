# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
name: gpu_plan
short_description: Plan tenants' GPU demands into per-host MIG layouts and vGPU devices
version_added: 0.3.0
description:
  - Turns demands stated as tenants, memory and instance counts into the C(gpu_mig) and C(gpu_vgpu) declarations of each
    host, in the format of M(gpuvirt.fleet.mig_layout) and M(gpuvirt.fleet.vgpu_devices), from the GPU facts of
    M(gpuvirt.fleet.gpu_facts).
  - A GPU holds either MIG instances or vGPUs of one type. For one GPU the MIG profiles are chosen by an exact search
    (fewest memory slices, then compute slices), each candidate checked by the MIG planner's own placement solver; the
    vGPU type is the smallest framebuffer that holds the largest instance. Over the fleet instances are packed
    first-fit-decreasing, and a lower bound on the GPUs any plan needs is returned beside the GPUs used.
  - GPUs the plan does not use get no declaration. Every GPU it uses gets its whole layout.
  - Demands that cannot be met fail the filter, naming each tenant, how many instances are missing and how many more
    GPUs (of the best-suited model in the fleet) or how much more memory they need.
author:
  - gpuvirt.fleet maintainers (@gpuvirt)
options:
  _input:
    description:
      - The fleet, a mapping of host name to that host's GPUs; the GPUs are C(ansible_facts.gpus) after
        M(gpuvirt.fleet.gpu_facts) ran, or a mapping holding them (the host's C(ansible_facts), or its hostvars).
    type: dict
    required: true
  demands:
    description:
      - The demands, one per tenant and size.
      - C(tenant) (required), C(memory_gb) (required; GB as MIG profile names count them, 1g.20gb holds 20, and as vGPU
        framebuffers, A40-8Q holds 8), C(count) (default 1), C(isolation) (V(mig), V(vgpu) or V(any), default V(any)),
        C(compute_slices) (MIG compute slices at least), C(compute_share) (a fraction of a GPU; for vGPU, at most 1/share
        vGPUs share that GPU), C(models) (GPU model names allowed) and C(vgpu_series) (vGPU series letters allowed, such as
        V(Q) or V(C); else Q, C, A, B in that order of preference).
    type: list
    elements: dict
    required: true
  headroom_gb:
    description: Memory left unallocated on every GPU, in GB (MIG rounds it up to whole memory slices).
    type: float
    default: 0
  headroom_percent:
    description: Memory left unallocated on every GPU, in percent of its memory; the larger of the two headrooms applies.
    type: float
    default: 0
  check:
    description:
      - Also run each host's declarations through the MIG and vGPU planners against its GPUs as they are now, and fail on
        their problems (a GPU instance in use that the new layout would remove, for instance).
    type: bool
    default: true
'''

EXAMPLES = r'''
---
- name: Plan four 15 GB MIG tenants on the fleet
  ansible.builtin.set_fact:
    capacity_plan: >-
      {{ dict(groups['gpu_hosts'] | zip(groups['gpu_hosts'] | map('extract', hostvars, 'ansible_facts')))
         | gpuvirt.fleet.gpu_plan([{'tenant': 'inference', 'memory_gb': 15, 'count': 4, 'isolation': 'mig'}], headroom_percent=5) }}

- name: Show what the first host gets
  ansible.builtin.debug:
    msg: "{{ capacity_plan.hosts[groups['gpu_hosts'][0]] }}"
'''

RETURN = r'''
_value:
  description: The plan.
  type: dict
  contains:
    hosts:
      description: Per host (every host of the fleet) its C(gpu_mig) and C(gpu_vgpu) declarations (empty lists where it gets none).
      type: dict
      sample: {"gpu1": {"gpu_mig": [{"name": "capacity plan: GPU 0 (inference)", "devices": {"uuids": ["GPU-5e3f..."]},
               "enabled": true, "instances": [{"profile": "1g.20gb", "count": 4}]}], "gpu_vgpu": []}}
    assignments:
      description:
        - One per demanded instance, C(tenant), C(demand) (its number, from 1), C(instance) (from 0), C(host), C(gpu), C(uuid),
          C(model), C(isolation), C(profile) (MIG) or C(type) (vGPU), and C(memory_gb) granted.
      type: list
      elements: dict
    unused:
      description:
        - One per GPU, C(host), C(gpu), C(uuid), C(model), C(mode) (V(mig), V(vgpu), or null for a GPU the plan leaves alone),
          C(instances), C(free_memory_gb), and for MIG C(free_memory_slices) and C(free_compute_slices), for vGPU C(type) and
          C(free_vgpus).
      type: list
      elements: dict
    gpus_used:
      description: GPUs the plan puts instances on.
      type: int
    gpus_total:
      description: GPUs in the fleet (lost GPUs left out).
      type: int
    lower_bound:
      description: No plan can meet the demands on fewer GPUs than this.
      type: int
    free_memory_gb:
      description: Memory the plan leaves unallocated over the fleet, in GB.
      type: float
    report:
      description: The plan for a reader, one line for the GPUs used against the lower bound, then one per GPU.
      type: list
      elements: str
      sample: ["GPUs used: 1 of 2 (lower bound 1); 80 GB left free",
               "gpu1 GPU 0 NVIDIA A100-SXM4-80GB: mig inference:1g.20gb inference:1g.20gb ...; free 0 GB, 0 memory / 3 compute slices",
               "gpu1 GPU 1 NVIDIA A100-SXM4-80GB: unused, 80 GB free"]
'''

from ansible.errors import AnsibleFilterError

# Imported when the filter runs, not when this file loads: ansible-core looks a collection filter up by loading the
# collection's filter files in turn, in every task's worker process, so a heavy import here would be paid by every
# task that uses any gpuvirt.fleet filter (docs/scaling.md).


def gpu_plan(fleet, demands, headroom_gb=0, headroom_percent=0, check=True):
    """The capacity plan of `demands` over `fleet` (host -> GPU facts); AnsibleFilterError when infeasible."""
    from ansible_collections.gpuvirt.fleet.plugins.module_utils._capacity import CapacityError, plan  # pylint: disable=import-outside-toplevel
    try:
        return plan(fleet, demands, headroom_gb=headroom_gb, headroom_percent=headroom_percent, check=check)
    except CapacityError as exc:
        raise AnsibleFilterError('gpu_plan: %s' % exc) from exc
    except (KeyError, TypeError) as exc:
        raise AnsibleFilterError('gpu_plan: malformed GPU facts: %r' % (exc,)) from exc


class FilterModule:
    def filters(self):
        return {'gpu_plan': gpu_plan}
