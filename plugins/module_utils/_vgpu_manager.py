# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""vgpu-device-manager v1 configs, read and written with that tool's meaning.

nvidia-vgpu-dm walks the entries of a label in order and applies every entry whose device-filter and devices select
a GPU (cmd/nvidia-vgpu-dm/assert/assert.go, apply/config.go): an entry's vgpu-devices become the GPU's whole vGPU
configuration (pkg/vgpu/config.go SetVGPUConfig: every vGPU device of the GPU is deleted, then the listed ones are
created), unless the GPU already holds exactly those counts. So an entry that selects no GPU is never applied, and
where several entries select one GPU each is applied in turn and the last one holds at the end; a type the GPU does
not support, or a count above its capacity, stops it with an error.

`parse_vgpu_device_manager(config, label)` checks a label, `plan_vgpu_device_manager(host, gpus, entries)` plans it
with that meaning through the vGPU planner (`_vgpu`), and `export_vgpu_device_manager(gpus, label)` writes the current
devices in that format. The device-filter and the config shape are shared with mig-parted (`_nvidia_formats`);
docs/nvidia-formats.md says how the formats differ from the native `gpu_vgpu`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ansible_collections.gpuvirt.fleet.plugins.module_utils._nvidia_formats import (
    NvidiaSelector, check_entry, nvidia_export_entries, nvidia_selector, parse_label)
from ansible_collections.gpuvirt.fleet.plugins.module_utils._selector import Invalid, Labelled, is_int, where
from ansible_collections.gpuvirt.fleet.plugins.module_utils._vgpu import GpuView, HostPlan, VgpuPlanError, plan_host, short_name, type_problems

VGPU_MANAGER_ENTRY_KEYS = ('device-filter', 'devices', 'vgpu-devices')


@dataclass(frozen=True)
class ManagerEntry(Labelled):
    """One entry of a vgpu-device-manager label, checked for shape."""

    number: int  # its position in the label, from 0
    name: str  # '<label>[N]'
    selector: NvidiaSelector
    devices: dict  # vGPU type (as written) -> count; {} removes every vGPU device of the GPUs it selects

    def native(self, gpu: GpuView) -> list[dict]:
        """The entry as gpu_vgpu entries for one GPU: one per type, or a count of 0 that empties the GPU."""
        if self.devices:
            return [{'name': '%s %s' % (self.name, type_name), 'devices': [gpu.index], 'type': type_name, 'count': count}
                    for type_name, count in self.devices.items()]
        if gpu.devices:  # every device not declared is removed, so one type with count 0 declares none
            return [{'name': self.name, 'devices': [gpu.index], 'type': short_name(gpu.devices[0].type_name), 'count': 0}]
        return []


def _manager_entry(label: str, number: int, raw: Any) -> ManagerEntry:
    raw = check_entry(raw, VGPU_MANAGER_ENTRY_KEYS, ('devices', 'vgpu-devices'), ', as in vgpu-device-manager')
    selector = nvidia_selector(raw)
    counts = raw['vgpu-devices'] if raw['vgpu-devices'] is not None else {}
    if not isinstance(counts, Mapping) or not all(isinstance(k, str) and k.strip() for k in counts):
        raise Invalid('vgpu-devices must map vGPU type names to counts, such as {A40-8Q: 6}, got %r' % (counts,))
    bad = {k: v for k, v in counts.items() if not is_int(v) or v <= 0}
    if bad:
        raise Invalid('vgpu-devices must map vGPU type names to counts above 0 (vgpu-device-manager refuses others; '
                      'vgpu-devices: {} removes every device), got %r' % (bad,))
    shorts = [short_name(str(k)).lower() for k in counts]
    twice = sorted({str(k) for k in counts if shorts.count(short_name(str(k)).lower()) > 1})
    if twice:
        raise Invalid('vgpu-devices names one vGPU type more than once: %s' % ', '.join(twice))
    return ManagerEntry(number, '%s[%d]' % (label, number), selector, {str(k).strip(): v for k, v in counts.items()})


def parse_vgpu_device_manager(config: Any, label: Any) -> list[ManagerEntry]:
    """A vgpu-device-manager v1 config's label, checked for shape -> its entries (named '<label>[N]', N from 0).

    Which GPUs each entry declares depends on the host: `plan_vgpu_device_manager` decides it from the GPUs.
    Raises VgpuPlanError naming the label and entry of every problem.
    """
    return parse_label(config, label, 'vgpu-configs', 'vgpu-device-manager', VgpuPlanError, _manager_entry)


def _applicable(gpu: GpuView, entry: ManagerEntry) -> list[str]:
    """Why vgpu-device-manager could not apply this entry to the GPU (it checks each type, then creates the devices)."""
    if gpu.mig_enabled or not gpu.types:
        return []  # the entry that holds at the end is refused for the same reason
    problems = [problem for type_name, count in entry.devices.items() for problem in type_problems(gpu, type_name, count)]
    if not problems and gpu.homogeneous and len(entry.devices) > 1:
        problems.append('%s allows one time-sliced vGPU type per GPU, but it declares %s' % (gpu.name, ', '.join(sorted(entry.devices))))
    return problems


def resolve_vgpu_device_manager(host: str, entries: Sequence[ManagerEntry], gpus: Sequence[GpuView], errors: list[str]) -> list[dict]:
    """Which entry declares each GPU, as nvidia-vgpu-dm decides it -> a gpu_vgpu declaration naming GPUs by index.

    An entry that selects no GPU here is skipped; where several select one GPU the last holds, and each earlier one
    must be applicable (else vgpu-device-manager stops half-way). A GPU whose entry lists no device and that holds
    none is left alone, as vgpu-device-manager finds it already configured.
    """
    declaration: list[dict] = []
    governed: dict[int, ManagerEntry] = {}
    for gpu in sorted(gpus, key=lambda g: g.index):
        applying = [e for e in entries if e.selector.selects(gpu.as_facts())]
        if not applying:
            continue
        last = applying[-1]
        for earlier in applying[:-1]:
            if earlier.devices != last.devices:
                errors.extend(where(host, gpu, earlier) + 'vgpu-device-manager applies it before entry %s on this GPU, and it '
                              'cannot be applied: %s' % (last.label, problem) for problem in _applicable(gpu, earlier))
        governed[gpu.index] = last
    for entry in entries:
        for gpu in sorted(gpus, key=lambda g: g.index):
            if governed.get(gpu.index) is entry:
                declaration.extend(entry.native(gpu))
    return _merged(declaration)


def _merged(declaration: list[dict]) -> list[dict]:
    """Entries of one name, type and count on several GPUs become one entry listing those GPUs."""
    merged: dict[tuple, dict] = {}
    for item in declaration:
        key = (item['name'], item['type'], item['count'])
        if key in merged:
            merged[key]['devices'] = merged[key]['devices'] + item['devices']
        else:
            merged[key] = dict(item)
    return list(merged.values())


def plan_vgpu_device_manager(host: str, gpus: Sequence[GpuView], entries: Sequence[ManagerEntry]) -> HostPlan:
    """Plan a parsed vgpu-device-manager label (parse_vgpu_device_manager) with its meaning (resolve_vgpu_device_manager).
    Raises VgpuPlanError with every problem of the host before any step exists."""
    errors: list[str] = []
    declaration = resolve_vgpu_device_manager(host, entries, gpus, errors)
    try:
        plan = plan_host(host, gpus, declaration)
    except VgpuPlanError as exc:
        errors.extend(exc.errors)
        plan = None
    if errors or plan is None:
        raise VgpuPlanError(host, errors)
    return plan


def export_vgpu_device_manager(gpus: Sequence[GpuView], label: str) -> dict:
    """The devices every GPU holds as a vgpu-device-manager v1 config with one label: GPUs of one state in one entry,
    with device-filters on a host of several models (the shape of nvidia-mig-parted's export). Applying it plans no
    step on this host; GPUs without vGPU devices get vgpu-devices: {}."""
    ordered = sorted(gpus, key=lambda g: g.index)
    bodies = []
    for gpu in ordered:
        counts: dict[str, int] = {}
        for device in gpu.devices:
            counts[short_name(device.type_name)] = counts.get(short_name(device.type_name), 0) + 1
        bodies.append({'vgpu-devices': dict(sorted(counts.items()))})
    return {'version': 'v1', 'vgpu-configs': {label: nvidia_export_entries([g.as_facts() for g in ordered], bodies)}}
