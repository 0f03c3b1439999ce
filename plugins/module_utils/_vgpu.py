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
meaning instead (`parse_vgpu_device_manager`, then `plan_vgpu_device_manager`): an entry that selects no GPU is
skipped, and the last of several entries on a GPU holds. `export_vgpu_device_manager` writes the current devices
in that format; docs/nvidia-formats.md says how the two formats differ.
"""

from __future__ import annotations

import re
import uuid as uuidlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _mig

ENTRY_KEYS = ('name', 'devices', 'type', 'count', 'uuids', 'allow_disruption')
VGPU_MANAGER_ENTRY_KEYS = ('device-filter', 'devices', 'vgpu-devices')
# A fixed namespace, so the same host, GPU, type and slot give the same UUID on every controller and every run.
UUID_NAMESPACE = uuidlib.UUID('6b1c1f0e-4a57-5c8e-9d3f-677075766972')
_UUID_RE = re.compile(r'^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$')


class VgpuPlanError(_mig.PlanError):
    """Every problem found in a vGPU declaration (or a vgpu-device-manager config), reported together."""

    kind = 'vGPU'


class _Invalid(Exception):
    """A reason a value is wrong; the caller adds where (host, GPU, entry)."""


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
        """The shape _mig.Selector matches against."""
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


# ---------------------------------------------------------------------------------------------------------
# The declaration


@dataclass(frozen=True)
class Entry:
    number: int
    name: str | None
    selector: _mig.Selector | None
    type_name: str
    count: int
    uuids: tuple[str, ...] | None
    allow_disruption: bool
    valid: bool = True

    @property
    def label(self) -> str:
        return "'%s'" % self.name if self.name else str(self.number)


def _where(host: str, gpu: GpuView | None = None, entry: Entry | None = None) -> str:
    parts = ['host %s' % host]
    if gpu is not None:
        parts.append('GPU %s (%s)' % (gpu.index, gpu.uuid or 'no uuid'))
    if entry is not None:
        parts.append('entry %s' % entry.label)
    return ': '.join(parts) + ': '


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _uuids(raw: Any, count: int | None) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(u, str) for u in raw):
        raise _Invalid('uuids must be a list of UUID strings')
    bad = [u for u in raw if not _UUID_RE.match(u.lower())]
    if bad:
        raise _Invalid('uuids: %s is not a UUID such as 0b6c1d1a-6f2e-4a8b-9c59-2d1c7a8e9f00' % ', '.join(bad))
    if len({u.lower() for u in raw}) != len(raw):
        raise _Invalid('uuids lists a UUID twice')
    if count is not None and len(raw) != count:
        raise _Invalid('uuids lists %d UUID(s) but count is %d' % (len(raw), count))
    return tuple(u.lower() for u in raw)


def _entry(number: int, raw: Any) -> tuple[Entry, list[str]]:
    if not isinstance(raw, Mapping):
        return Entry(number, None, None, '', 0, None, False, valid=False), ['must be a mapping, got %s' % type(raw).__name__]
    problems = []
    name = raw.get('name') if isinstance(raw.get('name'), str) else None
    unknown = sorted(str(k) for k in raw if k not in ENTRY_KEYS)
    if unknown:
        problems.append('unknown key(s) %s (known: %s)' % (', '.join(unknown), ', '.join(ENTRY_KEYS)))
    selector = None
    try:
        selector = _mig.parse_selector(raw.get('devices', 'all'))
    except _mig._Invalid as exc:  # pylint: disable=protected-access  # the shared selector's own error type
        problems.append(str(exc))
    type_name = raw.get('type')
    if not isinstance(type_name, str) or not type_name.strip():
        problems.append("type must name a vGPU type such as 'A40-8Q' or 'NVIDIA A40-8Q', got %r" % (type_name,))
        type_name = ''
    count = raw.get('count')
    if count is None and isinstance(raw.get('uuids'), list):
        count = len(raw['uuids'])
    if not _is_int(count) or count < 0:
        problems.append('count must be a non-negative integer, got %r' % (count,))
        count = 0
    uuids = None
    if raw.get('uuids') is not None:
        try:
            uuids = _uuids(raw['uuids'], count)
        except _Invalid as exc:
            problems.append(str(exc))
    allow = raw.get('allow_disruption', False)
    if not isinstance(allow, bool):
        problems.append('allow_disruption must be true or false, got %r' % (allow,))
        allow = False
    return Entry(number, name, selector, type_name.strip(), count, uuids, allow, valid=not problems), problems


def parse_declaration(host: str, declaration: Any, errors: list[str]) -> list[Entry]:
    """Shape checks of the whole declaration; problems go to `errors`."""
    if declaration is None:
        return []
    if not isinstance(declaration, list):
        errors.append(_where(host) + 'gpu_vgpu must be a list of entries, got %s' % type(declaration).__name__)
        return []
    entries = []
    for number, raw in enumerate(declaration, 1):
        entry, problems = _entry(number, raw)
        errors.extend(_where(host, entry=entry) + p for p in problems)
        entries.append(entry)
    seen: dict[str, Entry] = {}
    for entry in entries:
        for value in entry.uuids or ():
            if value in seen:
                errors.append(_where(host, entry=entry) + 'uuid %s is also declared by entry %s' % (value, seen[value].label))
            seen[value] = entry
    return entries


# ---------------------------------------------------------------------------------------------------------
# vgpu-device-manager v1
#
# nvidia-vgpu-dm walks the entries of a label in order and applies every entry whose device-filter and devices select
# a GPU (cmd/nvidia-vgpu-dm/assert/assert.go, apply/config.go): an entry's vgpu-devices become the GPU's whole vGPU
# configuration (pkg/vgpu/config.go SetVGPUConfig: every vGPU device of the GPU is deleted, then the listed ones are
# created), unless the GPU already holds exactly those counts. So an entry that selects no GPU is never applied, and
# where several entries select one GPU each is applied in turn and the last one holds at the end; a type the GPU does
# not support, or a count above its capacity, stops it with an error.


@dataclass(frozen=True)
class ManagerEntry:
    """One entry of a vgpu-device-manager label, checked for shape."""

    number: int  # its position in the label, from 0
    name: str  # '<label>[N]'
    selector: _mig.NvidiaSelector
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
    if not isinstance(raw, Mapping):
        raise _Invalid('must be a mapping with devices and vgpu-devices, got %r' % (raw,))
    unknown = sorted(str(k) for k in raw if k not in VGPU_MANAGER_ENTRY_KEYS)
    if unknown:
        raise _Invalid('unknown key(s) %s (known: %s)' % (', '.join(unknown), ', '.join(VGPU_MANAGER_ENTRY_KEYS)))
    missing = [key for key in ('devices', 'vgpu-devices') if key not in raw]
    if missing:
        raise _Invalid('%s %s required, as in vgpu-device-manager' % (' and '.join(missing), 'is' if len(missing) == 1 else 'are'))
    try:
        selector = _mig.nvidia_selector(raw)
    except _mig._Invalid as exc:  # pylint: disable=protected-access  # the shared selector's own error type
        raise _Invalid(str(exc)) from exc
    counts = raw['vgpu-devices'] if raw['vgpu-devices'] is not None else {}
    if not isinstance(counts, Mapping) or not all(isinstance(k, str) and k.strip() for k in counts):
        raise _Invalid('vgpu-devices must map vGPU type names to counts, such as {A40-8Q: 6}, got %r' % (counts,))
    bad = {k: v for k, v in counts.items() if not _is_int(v) or v <= 0}
    if bad:
        raise _Invalid('vgpu-devices must map vGPU type names to counts above 0 (vgpu-device-manager refuses others; '
                       'vgpu-devices: {} removes every device), got %r' % (bad,))
    shorts = [short_name(str(k)).lower() for k in counts]
    twice = sorted({str(k) for k in counts if shorts.count(short_name(str(k)).lower()) > 1})
    if twice:
        raise _Invalid('vgpu-devices names one vGPU type more than once: %s' % ', '.join(twice))
    return ManagerEntry(number, '%s[%d]' % (label, number), selector, {str(k).strip(): v for k, v in counts.items()})


def parse_vgpu_device_manager(config: Any, label: Any) -> list[ManagerEntry]:
    """A vgpu-device-manager v1 config's label, checked for shape -> its entries (named '<label>[N]', N from 0).

    Which GPUs each entry declares depends on the host: `plan_vgpu_device_manager` decides it from the GPUs.
    Raises VgpuPlanError naming the label and entry of every problem.
    """
    items = _mig._nvidia_config(config, label, 'vgpu-configs', 'vgpu-device-manager', VgpuPlanError)  # pylint: disable=protected-access
    entries, errors = [], []
    for number, raw in enumerate(items):
        try:
            entries.append(_manager_entry(label, number, raw))
        except _Invalid as exc:
            errors.append('vgpu-device-manager config: label %r: entry %d: %s' % (label, number, exc))
    if errors:
        raise VgpuPlanError(None, errors)
    return entries


def _applicable(gpu: GpuView, entry: ManagerEntry) -> list[str]:
    """Why vgpu-device-manager could not apply this entry to the GPU (it checks each type, then creates the devices)."""
    if gpu.mig_enabled or not gpu.types:
        return []  # the entry that holds at the end is refused for the same reason
    problems = []
    for type_name, count in entry.devices.items():
        vtype = gpu.find_type(type_name)
        if vtype is None:
            problems.append('vGPU type %s is not supported by %s (supported: %s)' % (type_name, gpu.name, ', '.join(t.short for t in gpu.types)))
        elif count > vtype.max_instances:
            problems.append('%d x %s exceed its capacity: at most %d per GPU' % (count, vtype.short, vtype.max_instances))
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
                errors.extend(_where(host, gpu) + "entry '%s': vgpu-device-manager applies it before entry '%s' on this GPU, and it "
                              'cannot be applied: %s' % (earlier.name, last.name, problem) for problem in _applicable(gpu, earlier))
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
    return {'version': 'v1', 'vgpu-configs': {label: _mig.nvidia_export_entries([g.as_facts() for g in ordered], bodies)}}


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


def _plan_gpu(host: str, gpu: GpuView, entries: Sequence[Entry], errors: list[str]) -> GpuPlan | None:
    problems: list[str] = []
    wanted: list[tuple[Entry, VgpuType, list[str]]] = []
    if gpu.mig_enabled:
        errors.append(_where(host, gpu) + 'MIG is enabled: MIG-backed vGPU types are not managed here; disable MIG or leave this GPU out')
        return None
    if not gpu.types:
        errors.append(_where(host, gpu) + '%s reports no vGPU types (is it in host vGPU mode with the vGPU manager driver?)' % gpu.name)
        return None
    for entry in entries:
        vtype = gpu.find_type(entry.type_name)
        if vtype is None:
            errors.append(_where(host, gpu, entry) + 'vGPU type %s is not supported by %s (supported: %s)' % (
                entry.type_name, gpu.name, ', '.join(t.short for t in gpu.types)))
            continue
        if entry.count > vtype.max_instances:
            errors.append(_where(host, gpu, entry) + '%d x %s exceed its capacity: at most %d per GPU' % (entry.count, vtype.short, vtype.max_instances))
            continue
        wanted.append((entry, vtype, _want_uuids(host, gpu, entry, vtype)))
    if len(wanted) != len(entries):
        return None
    declared = {w[1].short for w in wanted if w[2]}
    if gpu.homogeneous and len(declared) > 1:
        errors.append(_where(host, gpu) + '%s allows one time-sliced vGPU type per GPU, but entries %s declare %s' % (
            gpu.name, ', '.join(w[0].label for w in wanted), ', '.join(sorted(declared))))
        return None
    if gpu.backend == 'sriov':
        explicit = [w[0].label for w in wanted if w[0].uuids is not None]
        if explicit:
            errors.append(_where(host, gpu) + 'entry %s: uses the SR-IOV vGPU interface, where a vGPU is identified by its VF, '
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
    errors.extend(_where(host, gpu) + 'entry %s: %s' % (labels, p) for p in problems)
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


def plan_host(host: str, gpus: Sequence[GpuView], declaration: Any) -> HostPlan:
    """Validate the whole declaration against the GPUs, then the minimal steps. Raises VgpuPlanError."""
    errors: list[str] = []
    entries = parse_declaration(host, declaration, errors)
    facts = [g.as_facts() for g in gpus]
    by_gpu: dict[int, list[Entry]] = {}
    for entry in entries:
        if entry.selector is None:
            continue
        problems = _mig._selection_problems(entry.selector, facts)  # pylint: disable=protected-access  # the shared selector
        errors.extend(_where(host, entry=entry) + p for p in problems)
        for gpu in gpus:
            if entry.valid and entry.selector.matches(gpu.as_facts()):
                by_gpu.setdefault(gpu.index, []).append(entry)
    plans = []
    for gpu in gpus:
        if gpu.index in by_gpu:
            plan = _plan_gpu(host, gpu, by_gpu[gpu.index], errors)
            if plan is not None:
                plans.append(plan)
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
