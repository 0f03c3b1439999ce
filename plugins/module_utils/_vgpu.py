# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""The pure vGPU planner: a `gpu_vgpu` declaration and what each GPU reports in, the minimal ordered steps out.

Nothing here touches the host. The caller observes each GPU as a `GpuView` (its vGPU types with their capacity, and
the vGPU devices it holds), and `plan_host` validates the whole declaration before returning any step:

- an entry selects GPUs (the same selector as gpu_mig: `all`, a list of indexes, or a mapping of indexes, uuids,
  model, device_id) and declares a vGPU type (short name `A40-8Q` or the full `NVIDIA A40-8Q`), a count, optional
  explicit UUIDs and `allow_disruption`;
- default UUIDs are stable: uuid5 of (host, GPU uuid or bus id, type, slot), so re-applying never renames a device;
- a type the GPU does not support, a count above the type's capacity, or two types on a GPU that allows one
  time-sliced type only (A40, T4 without heterogeneous mode) is refused, naming host, GPU, entry and why;
- devices that already match stay; only the difference is removed and created (removals first, since capacity
  frees up); a device in use (a VM attached) is never removed unless its entry allows disruption;
- on a GPU with the SR-IOV vendor interface (`backend == 'sriov'`) a device is a VF holding a vGPU type: its identity
  is the VF's bus id, kept devices stay on their VFs and each new device takes the lowest free VF, so re-applying
  maps the same slots onto the same VFs; explicit UUIDs do not apply there.

A selector that matches no GPU is an error (a typo guard). A vgpu-device-manager v1 label is read with that tool's
meaning instead (`_vgpu_manager`): an entry that selects no GPU is skipped, and the last of several entries on a GPU
holds; docs/nvidia-formats.md says how the two formats differ. `views_from_facts` is the planner's view of GPUs from
gpu_facts alone, for the fleet report and the capacity planner.
"""

from __future__ import annotations

import re
import uuid as uuidlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _facts
from ansible_collections.gpuvirt.fleet.plugins.module_utils import _inputs
from ansible_collections.gpuvirt.fleet.plugins.module_utils._inputs import MAX_VGPUS_PER_GPU, bounded, quote, safe
from ansible_collections.gpuvirt.fleet.plugins.module_utils._selector import (
    Invalid, Labelled, PlanError, Selector, attempt, parse_entries, parse_selector, reject_unknown, select, where)

ENTRY_KEYS = ('name', 'devices', 'type', 'count', 'uuids', 'allow_disruption')
# A fixed namespace, so the same host, GPU, type and slot give the same UUID on every controller and every run.
UUID_NAMESPACE = uuidlib.UUID('6b1c1f0e-4a57-5c8e-9d3f-677075766972')
_UUID_RE = re.compile(r'^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$')


class VgpuPlanError(PlanError):
    """Every problem found in a vGPU declaration (or a vgpu-device-manager config), reported together."""

    kind = 'vGPU'


# ---------------------------------------------------------------------------------------------------------
# What a GPU offers and holds


@dataclass(frozen=True)
class VgpuType:
    """A vGPU type as one GPU reports it: `type_id` is the sysfs directory (nvidia-562), `name` the full name."""

    type_id: str
    name: str
    max_instances: int
    available: int  # instances that can be created now (available_instances)

    @property
    def short(self) -> str:
        return short_name(self.name)


@dataclass(frozen=True)
class Device:
    uuid: str
    type_name: str
    in_use: bool = False  # a VM holds it (the kernel answers EBUSY to remove)
    vf: str | None = None  # SR-IOV: the VF's sysfs address holding it (then also the identity in `uuid`)
    vgpu_uuid: str | None = None  # SR-IOV: the UUID NVML gives the vGPU, where it gives one


@dataclass
class GpuView:
    """One GPU as the planner sees it. `parent` is its mdev parent (sysfs PCI address), `homogeneous` whether all
    time-sliced vGPUs on it must share one type."""

    index: int
    uuid: str | None
    name: str
    bus_id: str | None
    parent: str | None
    types: list[VgpuType] = field(default_factory=list)
    devices: list[Device] = field(default_factory=list)
    homogeneous: bool = True
    pci: Mapping[str, Any] = field(default_factory=dict)
    mig_enabled: bool = False
    backend: str = 'mdev'  # 'mdev' or 'sriov' (the vendor interface: <VF>/nvidia/current_vgpu_type)
    vfs: list[str] = field(default_factory=list)  # SR-IOV: every enabled VF, in VF order (virtfn0, virtfn1, ...)

    def as_facts(self) -> dict:
        """The shape Selector matches against."""
        return {'index': self.index, 'uuid': self.uuid, 'name': self.name, 'pci': dict(self.pci)}

    def find_type(self, wanted: str) -> VgpuType | None:
        key = short_name(wanted).lower()
        for vtype in self.types:
            if vtype.short.lower() == key or vtype.type_id.lower() == wanted.lower():
                return vtype
        return None


def short_name(name: str) -> str:
    """'NVIDIA A40-8Q' or 'GRID A40-8Q' -> 'A40-8Q'."""
    text = name.strip()
    for prefix in ('NVIDIA ', 'GRID '):
        if text.upper().startswith(prefix):
            return text[len(prefix):].strip()
    return text


def stable_uuid(host: str, gpu: GpuView, type_name: str, slot: int) -> str:
    """The default UUID of a device: the same host, GPU, type and slot always give the same UUID."""
    key = '%s/%s/%s/%d' % (host, gpu.uuid or gpu.bus_id or gpu.index, short_name(type_name), slot)
    return str(uuidlib.uuid5(UUID_NAMESPACE, key))


def _text(value: Any) -> str:
    return '' if value is None else str(value)


def views_from_facts(gpus: Sequence[Mapping[str, Any]]) -> list[GpuView]:
    """GPUs as the planner sees them, from gpu_facts alone (the fleet report's drift, the capacity planner's check).

    Each GPU's supported types carry their capacity and type id as the mdev type directory names it (nvidia-<id>); a
    type is available as far as its capacity allows where NVML lists it creatable now (or the GPU holds no vGPU), else
    not at all. The vGPUs NVML lists as active are its devices (facts do not say which VF holds one); the mdev parent
    is the GPU's sysfs PCI address. A GPU that holds two types takes several (heterogeneous mode); else one. Lost GPUs
    are left out."""
    views = []
    for gpu in sorted(gpus, key=lambda g: g['index']):
        if gpu.get('status') == 'lost':
            continue
        vgpu = gpu.get('vgpu') or {}
        active = vgpu.get('active') or []
        held = [short_name(_text(a.get('type'))) for a in active]
        creatable = {short_name(_text(t)) for t in vgpu.get('creatable_types') or []}
        types = []
        for vtype in vgpu.get('supported_types') or []:
            name = _text(vtype.get('name'))
            maximum = int(vtype.get('max_instances') or 0)
            available = max(maximum - held.count(short_name(name)), 0) if short_name(name) in creatable or not held else 0
            types.append(VgpuType('nvidia-%s' % vtype.get('id'), name, maximum, available))
        devices = [Device(_text(a.get('uuid') or 'instance-%s' % a.get('instance')).lower(), _text(a.get('type')), in_use=bool(a.get('vm_id')))
                   for a in active]
        pci = gpu.get('pci') or {}
        views.append(GpuView(index=gpu['index'], uuid=gpu.get('uuid'), name=gpu.get('name') or 'GPU %d' % gpu['index'],
                             bus_id=pci.get('bus_id'), parent=_facts.sysfs_pci_address(pci['bus_id']) if pci.get('bus_id') else None,
                             types=types, devices=devices, homogeneous=len(set(held)) <= 1, pci=dict(pci),
                             mig_enabled=bool((gpu.get('mig') or {}).get('current'))))
    return views

# ---------------------------------------------------------------------------------------------------------
# The declaration


@dataclass(frozen=True)
class Entry(Labelled):
    number: int
    name: str | None
    selector: Selector | None
    type_name: str
    count: int
    uuids: tuple[str, ...] | None
    allow_disruption: bool
    valid: bool = True


def _uuids(raw: Any, count: int | None) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(u, str) for u in raw):
        raise Invalid('uuids must be a list of UUID strings')
    bad = [u for u in raw if not _UUID_RE.match(u.lower())]
    if bad:
        raise Invalid('uuids: %s is not a UUID such as 0b6c1d1a-6f2e-4a8b-9c59-2d1c7a8e9f00' % ', '.join(safe(u) for u in bad[:4]))
    if len({u.lower() for u in raw}) != len(raw):
        raise Invalid('uuids lists a UUID twice')
    if count is not None and len(raw) != count:
        raise Invalid('uuids lists %d UUID(s) but count is %d' % (len(raw), count))
    return tuple(u.lower() for u in raw)


def _entry(number: int, raw: Any) -> tuple[Entry, list[str]]:
    if not isinstance(raw, Mapping):
        return Entry(number, None, None, '', 0, None, False, valid=False), ['must be a mapping, got %s %s' % (type(raw).__name__, quote(raw))]
    problems: list[str] = []
    name = raw.get('name') if isinstance(raw.get('name'), str) else None
    attempt(problems, reject_unknown, raw, ENTRY_KEYS)
    selector = attempt(problems, parse_selector, raw.get('devices', 'all'))
    type_name = raw.get('type')
    if not isinstance(type_name, str) or not type_name.strip() or not type_name.isprintable() or len(type_name) > 64:
        problems.append("type must name a vGPU type such as 'A40-8Q' or 'NVIDIA A40-8Q', got %s" % quote(type_name))
        type_name = ''
    count = raw.get('count')
    if count is None and isinstance(raw.get('uuids'), list):
        count = len(raw['uuids'])
    if bounded(count, 'count', MAX_VGPUS_PER_GPU):
        problems.extend(bounded(count, 'count', MAX_VGPUS_PER_GPU))
        count = 0
    uuids = attempt(problems, _uuids, raw['uuids'], count) if raw.get('uuids') is not None else None
    allow = raw.get('allow_disruption', False)
    if not isinstance(allow, bool):
        problems.append('allow_disruption must be true or false, got %s' % quote(allow))
        allow = False
    return Entry(number, name, selector, type_name.strip(), count, uuids, allow, valid=not problems), problems


def parse_declaration(host: str, declaration: Any, errors: list[str]) -> list[Entry]:
    """Shape checks of the whole declaration; problems go to `errors`."""
    entries = parse_entries(host, declaration, 'gpu_vgpu', _entry, errors)
    seen: dict[str, Entry] = {}
    for entry in entries:
        for value in entry.uuids or ():
            if value in seen:
                errors.append(where(host, entry=entry) + 'uuid %s is also declared by entry %s' % (value, seen[value].label))
            seen[value] = entry
    return entries


def input_problems(host: str, declaration: Any, nvidia_format: bool, sysfs_root: Any, mdevctl_dir: Any) -> list[str]:
    """The validation pass before any GPU is observed: the host name, the path options (absolute, normalised), and the
    declaration's shape (a null `config` is refused like a missing one; a vgpu-device-manager config is checked by its
    own parser)."""
    problems = _inputs.hostname(host) + _inputs.path(sysfs_root, 'sysfs_root') + _inputs.path(mdevctl_dir, 'mdevctl_dir', empty_ok=True)
    if not nvidia_format:
        problems += _inputs.declared(declaration, 'config', 'vgpu_device_manager_config with vgpu_device_manager_label')
    errors = [where(host) + p for p in problems]
    if not nvidia_format:
        parse_declaration(host, declaration, errors)
    return errors


# ---------------------------------------------------------------------------------------------------------
# Planning


@dataclass
class GpuPlan:
    gpu: GpuView
    keep: list[Device]
    remove: list[Device]
    create: list[tuple[str, VgpuType]]  # (uuid, type)
    entries: list[Entry]

    def steps(self) -> list[dict]:
        base = {'gpu': self.gpu.index, 'uuid': self.gpu.uuid, 'parent': self.gpu.parent}
        steps = [dict(base, action='remove', device=d.uuid, type=d.type_name, in_use=d.in_use) for d in self.remove]
        steps += [dict(base, action='create', device=u, type=t.name, type_id=t.type_id) for u, t in self.create]
        if self.gpu.backend == 'sriov':
            for step in steps:
                step.update(backend='sriov', vf=step['device'])
        return steps

    def before(self) -> dict:
        return _describe(self.gpu, [(d.uuid, d.type_name) for d in self.gpu.devices])

    def after(self) -> dict:
        return _describe(self.gpu, [(d.uuid, d.type_name) for d in self.keep] + [(u, t.name) for u, t in self.create])


def _describe(gpu: GpuView, devices: Sequence[tuple[str, str]]) -> dict:
    return {'gpu': gpu.index, 'uuid': gpu.uuid, 'parent': gpu.parent,
            'devices': [{'uuid': u, 'type': short_name(t)} for u, t in sorted(devices, key=lambda d: (short_name(d[1]), d[0]))]}


@dataclass
class HostPlan:
    gpus: list[GpuPlan]

    @property
    def steps(self) -> list[dict]:
        return [s for g in self.gpus for s in g.steps()]

    @property
    def changed(self) -> bool:
        return bool(self.steps)

    def desired(self) -> list[dict]:
        """Per planned GPU, the devices (uuid, type) it must hold after apply: what verify compares."""
        return [g.after() for g in self.gpus]

    def as_dict(self) -> dict:
        return {'steps': self.steps, 'changed': self.changed, 'before': [g.before() for g in self.gpus],
                'after': [g.after() for g in self.gpus]}


def _want_uuids(host: str, gpu: GpuView, entry: Entry, vtype: VgpuType) -> list[str]:
    if entry.uuids is not None:
        return list(entry.uuids)
    return [stable_uuid(host, gpu, vtype.name, slot) for slot in range(entry.count)]


def type_problems(gpu: GpuView, type_name: str, count: int) -> list[str]:
    """Why `count` devices of the type cannot be on the GPU whatever else it holds: a type it does not support, or more
    than the type's capacity."""
    vtype = gpu.find_type(type_name)
    if vtype is None:
        return ['vGPU type %s is not supported by %s (supported: %s)' % (safe(type_name), gpu.name, ', '.join(t.short for t in gpu.types))]
    if count > vtype.max_instances:
        return ['%d x %s exceed its capacity: at most %d per GPU' % (count, vtype.short, vtype.max_instances)]
    return []


def _plan_gpu(host: str, gpu: GpuView, entries: Sequence[Entry], errors: list[str]) -> GpuPlan | None:
    problems: list[str] = []
    wanted: list[tuple[Entry, VgpuType, list[str]]] = []
    if gpu.mig_enabled:
        errors.append(where(host, gpu) + 'MIG is enabled: MIG-backed vGPU types are not managed here; disable MIG or leave this GPU out')
        return None
    if not gpu.types:
        errors.append(where(host, gpu) + '%s reports no vGPU types (is it in host vGPU mode with the vGPU manager driver?)' % gpu.name)
        return None
    for entry in entries:
        refused = type_problems(gpu, entry.type_name, entry.count)
        errors.extend(where(host, gpu, entry) + p for p in refused)
        vtype = gpu.find_type(entry.type_name)
        if vtype is not None and not refused:
            wanted.append((entry, vtype, _want_uuids(host, gpu, entry, vtype)))
    if len(wanted) != len(entries):
        return None
    declared = {w[1].short for w in wanted if w[2]}
    if gpu.homogeneous and len(declared) > 1:
        errors.append(where(host, gpu) + '%s allows one time-sliced vGPU type per GPU, but entries %s declare %s' % (
            gpu.name, ', '.join(w[0].label for w in wanted), ', '.join(sorted(declared))))
        return None
    if gpu.backend == 'sriov':
        explicit = [w[0].label for w in wanted if w[0].uuids is not None]
        if explicit:
            errors.append(where(host, gpu) + 'entry %s: uses the SR-IOV vGPU interface, where a vGPU is identified by its VF, '
                          'not a UUID: drop uuids and declare a count' % ', '.join(explicit))
            return None
    keep, remove, create = _match(gpu, wanted)
    if gpu.backend == 'sriov':
        create, problem = assign_vfs(gpu, keep, create)
        problems += [problem] if problem else []
    allow = any(e.allow_disruption for e in entries)
    for device in remove:
        if device.in_use and not allow:
            problems.append('device %s (%s) is in use by a VM and would be removed: stop the VM, or set allow_disruption on the entry' % (
                device.uuid, short_name(device.type_name)))
    problems += _capacity_problems(gpu, keep, remove, create)
    labels = ', '.join(e.label for e in entries)
    errors.extend(where(host, gpu) + 'entry %s: %s' % (labels, p) for p in problems)
    return None if problems else GpuPlan(gpu, keep, remove, create, list(entries))


def _match(gpu: GpuView, wanted: Sequence[tuple[Entry, VgpuType, list[str]]]) -> tuple[list[Device], list[Device], list[tuple[str, VgpuType]]]:
    """Which devices stay, which go, which are created. A device stays when its UUID is wanted with its type; a
    device of a wanted type with a foreign UUID (say, created by another tool) fills a default-UUID slot, so no
    device a VM may be bound to is renamed."""
    existing = {d.uuid.lower(): d for d in gpu.devices}
    keep: list[Device] = []
    create: list[tuple[str, VgpuType]] = []
    claimed: set[str] = set()
    for entry, vtype, want in wanted:
        unfilled = []
        for value in want:
            device = existing.get(value)
            if device is not None and short_name(device.type_name).lower() == vtype.short.lower():
                keep.append(device)
                claimed.add(value)
            else:
                unfilled.append(value)
        if entry.uuids is None and unfilled:
            foreign = sorted((d for u, d in existing.items() if u not in claimed and u not in want
                              and short_name(d.type_name).lower() == vtype.short.lower()), key=lambda d: (not d.in_use, d.uuid))
            adopted = foreign[:len(unfilled)]
            keep.extend(adopted)
            claimed.update(d.uuid.lower() for d in adopted)
            unfilled = unfilled[:len(unfilled) - len(adopted)]
        create.extend((value, vtype) for value in unfilled)
    remove = [d for u, d in sorted(existing.items()) if u not in claimed]
    return keep, remove, create


def assign_vfs(gpu: GpuView, keep: Sequence[Device], create: Sequence[tuple[str, VgpuType]]) -> tuple[list[tuple[str, VgpuType]], str | None]:
    """SR-IOV: each new device takes the lowest free VF (free now, or freed by a removal), in slot order; kept devices
    stay where they are (the VFs of removed devices are free, since removals run first). Returns the creations keyed
    by VF, and a problem when the GPU has too few VFs enabled."""
    held = {d.vf or d.uuid for d in keep}
    order = {vf: number for number, vf in enumerate(gpu.vfs)}
    free = sorted((vf for vf in gpu.vfs if vf not in held), key=order.__getitem__)
    types = [pair[1] for pair in create]
    if len(create) > len(free):
        return [], '%d new vGPU(s) need as many free VFs, but %d of the %d enabled VF(s) are free: enable more VFs (sriov-manage -e)' % (
            len(create), len(free), len(gpu.vfs))
    return list(zip(free, types)), None


def _capacity_problems(gpu: GpuView, keep: Sequence[Device], remove: Sequence[Device], create: Sequence[tuple[str, VgpuType]]) -> list[str]:
    problems = []
    kept_types = {short_name(d.type_name) for d in keep}
    for vtype in {pair[1].type_id: pair[1] for pair in create}.values():
        adding = sum(1 for pair in create if pair[1].type_id == vtype.type_id)
        if gpu.homogeneous and kept_types - {vtype.short}:
            problems.append('%s allows one time-sliced vGPU type per GPU and keeps %s: cannot add %s' % (
                gpu.name, ', '.join(sorted(kept_types)), vtype.short))
            continue
        freed = sum(1 for d in remove if short_name(d.type_name) == vtype.short)
        # With every other type gone the type's full capacity is free; else what the GPU says is available now.
        if gpu.homogeneous and not kept_types - {vtype.short} and not any(short_name(d.type_name) != vtype.short for d in keep):
            room = vtype.max_instances - sum(1 for d in keep if short_name(d.type_name) == vtype.short)
        else:
            room = vtype.available + freed
        if adding > room:
            problems.append('%d more %s do not fit: room for %d (at most %d per GPU, %d kept)' % (
                adding, vtype.short, max(room, 0), vtype.max_instances, len(keep)))
    return problems


def _overlap_problems(host: str, gpu: GpuView, entries: Sequence[Entry], errors: list[str]) -> bool:
    """A GPU and vGPU type is declared by one entry: two entries of one type on one GPU (devices [0] twice, or all
    and [0]) would derive the same UUIDs and add up their counts. Entries of different types may share a GPU that
    allows several (heterogeneous mode)."""
    by_type: dict[str, list[Entry]] = {}
    for entry in entries:
        by_type.setdefault(short_name(entry.type_name).lower(), []).append(entry)
    found = False
    for group in by_type.values():
        if len(group) > 1:
            found = True
            errors.append(where(host, gpu) + 'selected by entries %s, which all declare vGPU type %s: a GPU and type may be '
                          'declared by one entry only' % (', '.join(e.label for e in group), safe(group[0].type_name)))
    return found


def _host_unique(plans: Sequence[GpuPlan], gpus: Sequence[GpuView]) -> list[str]:
    """UUIDs and VFs are unique across the host: what the planned GPUs will hold, and what the others hold."""
    planned = {p.gpu.index for p in plans}
    owners: dict[str, list[int]] = {}
    for gpu_plan in plans:
        for device in gpu_plan.after()['devices']:
            owners.setdefault(device['uuid'], []).append(gpu_plan.gpu.index)
    for gpu in gpus:
        if gpu.index not in planned:
            for device in gpu.devices:
                owners.setdefault(device.uuid.lower(), []).append(gpu.index)
    return ['device %s would be on GPUs %s: a UUID (or VF) names one device on a host' % (quote(name), ', '.join(map(str, sorted(on))))
            for name, on in sorted(owners.items()) if len(on) > 1]


def plan_host(host: str, gpus: Sequence[GpuView], declaration: Any) -> HostPlan:
    """Validate the whole declaration against the GPUs, then the minimal steps. Raises VgpuPlanError."""
    errors: list[str] = []
    entries = parse_declaration(host, declaration, errors)
    chosen = select(host, entries, [g.as_facts() for g in gpus], errors)
    plans = []
    for gpu in gpus:
        valid = [entry for entry in chosen.get(gpu.index, ()) if entry.valid]
        if valid and not _overlap_problems(host, gpu, valid, errors):
            plan = _plan_gpu(host, gpu, valid, errors)
            if plan is not None:
                plans.append(plan)
    for entry in entries:
        selected = [g for g in gpus if entry in chosen.get(g.index, ())]
        if entry.uuids and len(selected) > 1:
            errors.append(where(host, entry=entry) + 'explicit uuids name one device each, but the entry selects GPUs %s: '
                          'select one GPU' % ', '.join(str(g.index) for g in selected))
    errors.extend(where(host) + p for p in _host_unique(plans, gpus))
    if errors:
        raise VgpuPlanError(host, errors)
    return HostPlan(plans)


def verify(desired: Sequence[Mapping[str, Any]], gpus: Sequence[GpuView]) -> list[str]:
    """Mismatches between the planned devices and what the GPUs hold now."""
    by_index = {g.index: g for g in gpus}
    problems = []
    for want in desired:
        gpu = by_index.get(want['gpu'])
        have = {(d.uuid.lower(), short_name(d.type_name)) for d in (gpu.devices if gpu else [])}
        need = {(d['uuid'], d['type']) for d in want['devices']}
        if have != need:
            missing = sorted(pair[0] for pair in need - have)
            extra = sorted(pair[0] for pair in have - need)
            problems.append('GPU %s: missing %s; unexpected %s' % (want['gpu'], ', '.join(missing) or 'none', ', '.join(extra) or 'none'))
    return problems


def export_declaration(gpus: Sequence[GpuView]) -> list[dict]:
    """The current devices in gpu_vgpu form (explicit UUIDs, one entry per GPU and type)."""
    entries = []
    for gpu in gpus:
        by_type: dict[str, list[str]] = {}
        for device in gpu.devices:
            by_type.setdefault(short_name(device.type_name), []).append(device.uuid)
        for type_name, uuids in sorted(by_type.items()):
            entry = {'devices': [gpu.index], 'type': type_name, 'count': len(uuids), 'uuids': sorted(uuids)}
            if gpu.backend == 'sriov':
                del entry['uuids']  # a VF, not a UUID, identifies an SR-IOV vGPU
            entries.append(entry)
    return entries


_VF_RE = re.compile(r'^([0-9a-f]{4,8}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$')


def libvirt_hostdev(devices: Any, indent: int = 0) -> str:
    """libvirt <hostdev> XML for each device: a UUID (mdev, vfio-pci), a mapping with 'vf' (an SR-IOV vGPU: the VF as a
    PCI hostdev) or 'uuid' (as vgpu_devices returns them), or a list of these. Raises ValueError on anything else."""
    items = devices if isinstance(devices, list) else [devices]
    pad = ' ' * indent
    out = []
    for item in items:
        vf = item.get('vf') if isinstance(item, Mapping) else None
        if vf is not None:
            match = _VF_RE.match(str(vf).lower())
            if not match:
                raise ValueError('expected a VF PCI address such as 0000:41:00.4, got %r' % (vf,))
            domain, bus, slot, function = match.groups()
            address = "<address domain='0x%04x' bus='0x%s' slot='0x%s' function='0x%s'/>" % (int(domain, 16), bus, slot, function)
            out.append("%s<hostdev mode='subsystem' type='pci' managed='no'>\n%s  <source>\n%s    %s\n%s  </source>\n%s</hostdev>"
                       % (pad, pad, pad, address, pad, pad))
            continue
        value = item.get('uuid') if isinstance(item, Mapping) else item
        if not isinstance(value, str) or not _UUID_RE.match(value.lower()):
            raise ValueError('expected a vGPU device UUID (or a mapping with uuid or vf), got %r' % (item,))
        out.append("%s<hostdev mode='subsystem' type='mdev' model='vfio-pci'>\n%s  <source>\n%s    <address uuid='%s'/>\n%s  </source>\n%s</hostdev>"
                   % (pad, pad, pad, value.lower(), pad, pad))
    return '\n'.join(out)
