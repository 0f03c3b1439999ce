# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""The pure capacity planner: tenants' demands and the fleet's GPU facts in, per-host `gpu_mig` / `gpu_vgpu` out.

Demands (inventory variable `gpu_demands`), a list of::

    - tenant: inference          # required (or `name`); errors and the assignments name it
      memory_gb: 15              # memory per instance, in the GB of MIG profile names (1g.20gb holds 20) and vGPU
                                 # framebuffers (A40-8Q holds 8)
      count: 4                   # instances (default 1)
      isolation: mig             # mig | vgpu | any (default any)
      compute_slices: 1          # optional, MIG: the GPU instance has at least this many compute slices
      compute_share: 0.25        # optional, 0 < share <= 1 of a GPU: MIG compute slices >= share x the GPU's slices;
                                 # vGPU (time-sliced, equal share): at most 1 / share vGPUs on that GPU
      models: [NVIDIA A100-SXM4-80GB]   # optional: only GPUs of these models (full name, or without "NVIDIA ")
      vgpu_series: [Q, C]        # optional: vGPU type series allowed (the letters after the size), default any

The fleet is a mapping host -> GPUs, where GPUs are `ansible_facts.gpus` of gpuvirt.fleet.gpu_facts (a list), or a
mapping holding them (`ansible_facts`, or hostvars with `ansible_facts`).

Planning, per GPU exact and over the fleet by a packing:

- one GPU holds either MIG instances or vGPUs of one type (time-sliced vGPUs on a GPU share one type, as
  gpuvirt.fleet.vgpu_devices requires); a GPU whose MIG mode is on is never used for vGPUs;
- for one GPU and a set of instances, the MIG profiles are chosen by an exact search (least memory slices, then
  compute slices, then media engines), each candidate layout checked by the MIG planner itself
  (`_mig.validate`, its placement solver); the vGPU type is the smallest framebuffer that holds the largest instance;
- over the fleet, instances are packed first-fit-decreasing (demands fewer GPUs can hold first, then by memory,
  largest first); a new GPU is opened only when no open GPU takes the instance, of the model that holds the most
  instances of that demand (the largest model on a tie). `lower_bound` is a bound no plan can beat (memory,
  instance-count and compute-slice relaxations), reported beside `gpus_used`.
- headroom (headroom_gb, headroom_percent of each GPU's memory; the larger wins) is memory left unallocated on
  every GPU: MIG in whole memory slices, vGPU in framebuffer.

GPUs the plan does not use get no declaration (the modules leave them alone). Every GPU the plan uses gets its
whole layout declared, so planning the same demands over the same fleet gives the same declarations again,
whatever the GPUs hold now (the MIG planner keeps matching instances).

`plan(fleet, demands, headroom_gb=0, headroom_percent=0)` returns a dict (see `plan`); anything infeasible raises
`CapacityError` (a ValueError) listing every demand that could not be met, how many instances and how much more.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _mig, _vgpu
from ansible_collections.gpuvirt.fleet.plugins.module_utils._capacity_model import (
    EPSILON, CapacityError, Demand, Model, build_model, is_number, mig_candidates, num, parse_demands, serving_modes, solve_mig, solve_vgpu)

MAX_PER_GPU = 64  # the most instances of one demand the shortfall message counts per GPU


# ---------------------------------------------------------------------------------------------------------
# The fleet


@dataclass
class Slot:
    """One GPU of the fleet and what the plan puts on it."""

    host: str
    gpu: Mapping[str, Any]
    model: Model
    mode: str | None = None
    items: list[tuple[Demand, int]] = field(default_factory=list)  # (demand, instance number from 0)

    @property
    def index(self) -> int:
        return self.gpu['index']

    def needs(self, extra: Demand | None = None) -> tuple[tuple, ...]:
        result = tuple(d.need for d, _n in self.items)
        return result + (extra.need,) if extra is not None else result

    def fits(self, mode: str, demand: Demand) -> bool:
        needs = self.needs(demand)
        if mode == 'mig':
            return solve_mig(self.model, needs) is not None
        return solve_vgpu(self.model, needs) is not None


def _gpus_of(value: Any) -> list:
    if isinstance(value, list):
        return value
    if isinstance(value, Mapping):
        if isinstance(value.get('gpus'), list):
            return value['gpus']
        if isinstance(value.get('ansible_facts'), Mapping):
            return _gpus_of(value['ansible_facts'])
    raise CapacityError(['the fleet must map each host to its GPU facts (ansible_facts.gpus of gpuvirt.fleet.gpu_facts), '
                         'got %s' % type(value).__name__])


def build_slots(fleet: Any, headroom_gb: float = 0, headroom_percent: float = 0) -> list[Slot]:
    if not isinstance(fleet, Mapping):
        raise CapacityError(['the fleet must be a mapping of host -> GPU facts, got %s' % type(fleet).__name__])
    if not is_number(headroom_gb) or headroom_gb < 0 or not is_number(headroom_percent) or not 0 <= headroom_percent < 100:
        raise CapacityError(['headroom_gb must be >= 0 and headroom_percent in [0, 100), got %r and %r' % (headroom_gb, headroom_percent)])
    models: dict[tuple, Model] = {}
    seen: dict[str, Model] = {}
    slots = []
    for host in sorted(fleet, key=str):
        for gpu in sorted(_gpus_of(fleet[host]), key=lambda g: g['index']):
            if gpu.get('status') == 'lost':
                continue
            # GPUs reporting the same offer share one model (and its caches); reading the offer once per kind is cheap
            mig, vgpu = gpu.get('mig') or {}, gpu.get('vgpu') or {}
            raw = repr((gpu.get('name'), mig.get('capable'), mig.get('current'), mig.get('profiles'), vgpu.get('supported_types')))
            model = seen.get(raw)
            if model is None:
                model = build_model(gpu, headroom_gb, headroom_percent)
                model = seen[raw] = models.setdefault(model.key, model)
            slots.append(Slot(str(host), gpu, model))
    return slots


def _holds_one(model: Model, demand: Demand) -> bool:
    return any(solve_mig(model, (demand.need,)) is not None if mode == 'mig' else solve_vgpu(model, (demand.need,)) is not None
               for mode in serving_modes(model, demand))


def _order(demands: Sequence[Demand], slots: Sequence[Slot]) -> list[tuple[Demand, int]]:
    """First-fit-decreasing order, most constrained first: demands fewer GPUs of the fleet can hold go first (so that
    flexible demands do not take the only GPUs a constrained one fits), then the largest instances."""
    per_model: dict[tuple, int] = {}
    for slot in slots:
        per_model[slot.model.key] = per_model.get(slot.model.key, 0) + 1
    models = {slot.model.key: slot.model for slot in slots}
    eligible = {d.number: sum(n for key, n in per_model.items() if _holds_one(models[key], d)) for d in demands}
    items = [(d, n) for d in demands for n in range(d.count)]
    return sorted(items, key=lambda item: (eligible[item[0].number], -item[0].memory_gb, -item[0].compute_slices,
                                           -item[0].compute_share, item[0].number, item[1]))


class _Packer:
    def __init__(self, slots: Sequence[Slot]):
        self.open: list[Slot] = []
        self.cursor: dict[int, int] = {}
        groups: dict[tuple, list[Slot]] = {}
        for slot in slots:
            groups.setdefault(slot.model.key, []).append(slot)
        # unused GPUs by model, the largest model first (it wins ties); each model's GPUs in fleet order
        self.unused = sorted(groups.values(), key=lambda g: (-g[0].model.capacity_gb, str(g[0].model.name)))
        self.taken = [0] * len(self.unused)

    def place(self, demand: Demand, number: int) -> Slot | None:
        i = self.cursor.get(demand.number, 0)
        while i < len(self.open):
            slot = self.open[i]
            if slot.mode in serving_modes(slot.model, demand) and slot.fits(slot.mode, demand):
                self.cursor[demand.number] = i
                slot.items.append((demand, number))
                return slot
            i += 1
        self.cursor[demand.number] = i
        # a new GPU: of the model that holds the most instances of this demand, the largest model on a tie
        best = None
        for g, group in enumerate(self.unused):
            if self.taken[g] >= len(group):
                continue
            model = group[0].model
            for mode in serving_modes(model, demand):
                room = _room(model, mode, demand)
                if room and (best is None or room > best[0]):
                    best = (room, g, mode)
        if best is None:
            return None
        _room_count, g, mode = best
        slot = self.unused[g][self.taken[g]]
        self.taken[g] += 1
        slot.mode = mode
        slot.items.append((demand, number))
        self.open.append(slot)
        return slot


def _room(model: Model, mode: str, demand: Demand) -> int:
    """How many instances of the demand one empty GPU of the model holds in the mode (0: not one)."""
    key = (mode, demand.need)
    if key not in model.room_cache:
        low, high = 0, MAX_PER_GPU
        while low < high:  # more instances never fit better, so the counts that fit are a prefix
            mid = (low + high + 1) // 2
            fits = (solve_mig(model, (demand.need,) * mid) if mode == 'mig' else solve_vgpu(model, (demand.need,) * mid)) is not None
            low, high = (mid, high) if fits else (low, mid - 1)
        model.room_cache[key] = low
    return model.room_cache[key]


def _per_gpu(model: Model, demand: Demand) -> int:
    """How many instances of the demand one empty GPU of the model holds in any mode it allows (0: not one)."""
    return max((_room(model, mode, demand) for mode in serving_modes(model, demand)), default=0)


def _shortfall(demand: Demand, missing: int, models: Sequence[Model]) -> str:
    head = "tenant '%s' (demand %d): %d of %d instance(s) of %s could not be placed: " % (
        demand.tenant, demand.number, missing, demand.count, demand.describe())
    options = sorted(((_per_gpu(m, demand), m.name) for m in models), key=lambda o: (-o[0], o[1]))
    memory = '%s GB more memory' % num(missing * demand.memory_gb)
    if not options or options[0][0] == 0:
        kinds = ', '.join(sorted({m.name for m in models})) or 'none'
        return head + 'no GPU in the fleet can hold one (models here: %s); needs %s on a GPU that can' % (kinds, memory)
    per_gpu, name = options[0]
    more = int(math.ceil(missing / float(per_gpu)))
    return head + 'needs %d more %s-class GPU(s) (%d per GPU) / %s' % (more, name, per_gpu, memory)


def lower_bound(demands: Sequence[Demand], models: Sequence[Model]) -> int:
    """No plan uses fewer GPUs: each instance takes at least a fraction of any GPU it can use (of its usable memory,
    of the instances a GPU can hold, of its compute slices); the sums of the smallest fractions bound the count."""
    totals = [0.0, 0.0, 0.0]
    for demand in demands:
        if not demand.count:
            continue
        least = [math.inf, math.inf, math.inf]
        for model in models:
            modes = serving_modes(model, demand)
            if 'mig' in modes:
                options = mig_candidates(model, demand.need)
                if options:
                    least[0] = min(least[0], min(o.memory_slices for o in options) / float(model.usable_slices))
                    least[1] = min(least[1], 1.0 / model.compute_slices)
                    least[2] = min(least[2], min(o.slices for o in options) / float(model.compute_slices))
            if 'vgpu' in modes:
                options = [o for o in model.vgpu if o.gb + EPSILON >= demand.memory_gb and o.gb <= model.usable_vgpu_gb + EPSILON
                           and (demand.vgpu_series is None or o.series in demand.vgpu_series)]
                if options:
                    least[0] = min(least[0], min(o.gb for o in options) / model.usable_vgpu_gb)
                    least[1] = min(least[1], max(1.0 / max(o.max_instances for o in options), demand.compute_share))
                    least[2] = 0.0  # time-sliced: no compute slices
        if math.inf in least:
            continue  # no GPU can hold it: the shortfall says so
        for k in range(3):
            totals[k] += least[k] * demand.count
    return max(int(math.ceil(total - 1e-6)) for total in totals)


# ---------------------------------------------------------------------------------------------------------
# Declarations and the report


def _selector(gpu: Mapping[str, Any]) -> Any:
    return {'uuids': [gpu['uuid']]} if gpu.get('uuid') else [gpu['index']]


def _tenants(slot: Slot) -> str:
    seen: list[str] = []
    for demand, _n in slot.items:
        if demand.tenant not in seen:
            seen.append(demand.tenant)
    return ', '.join(seen)


def _declare(slot: Slot, host_out: dict, assignments: list, unused: list) -> None:
    label = 'capacity plan: GPU %d (%s)' % (slot.index, _tenants(slot))
    base = {'host': slot.host, 'gpu': slot.index, 'uuid': slot.gpu.get('uuid'), 'model': slot.model.name}
    if slot.mode == 'mig':
        options = solve_mig(slot.model, slot.needs())
        if options is None:  # every item was placed after a successful solve: cannot happen
            raise CapacityError(['GPU %d of host %s: its MIG layout could not be solved again' % (slot.index, slot.host)])
        counts: dict[str, int] = {}
        for (demand, number), option in zip(slot.items, options):
            counts[option.name] = counts.get(option.name, 0) + 1
            assignments.append(dict(base, tenant=demand.tenant, demand=demand.number, instance=number, isolation='mig',
                                    profile=option.name, memory_gb=option.gb))
        order = sorted(counts, key=lambda n: next((-o.memory_slices, -o.slices, o.name) for o in options if o.name == n))
        host_out['gpu_mig'].append({'name': label, 'devices': _selector(slot.gpu), 'enabled': True,
                                    'instances': [{'profile': n, 'count': counts[n]} for n in order]})
        used_slices = sum(o.memory_slices for o in options)
        per_slice = slot.model.mig_gb / slot.model.memory_slices
        unused.append(dict(base, mode='mig', instances=len(options), free_memory_slices=slot.model.memory_slices - used_slices,
                           free_memory_gb=round((slot.model.memory_slices - used_slices) * per_slice, 2),
                           free_compute_slices=slot.model.compute_slices - sum(o.slices for o in options)))
    else:
        option = solve_vgpu(slot.model, slot.needs())
        if option is None:
            raise CapacityError(['GPU %d of host %s: its vGPU type could not be chosen again' % (slot.index, slot.host)])
        for demand, number in slot.items:
            assignments.append(dict(base, tenant=demand.tenant, demand=demand.number, instance=number, isolation='vgpu',
                                    type=option.short, memory_gb=option.gb))
        host_out['gpu_vgpu'].append({'name': label, 'devices': _selector(slot.gpu), 'type': option.short, 'count': len(slot.items)})
        unused.append(dict(base, mode='vgpu', instances=len(slot.items), type=option.short,
                           free_vgpus=option.max_instances - len(slot.items),
                           free_memory_gb=round(slot.model.vgpu_gb - option.gb * len(slot.items), 2)))


def _idle(slot: Slot) -> dict:
    model = slot.model
    report = {'host': slot.host, 'gpu': slot.index, 'uuid': slot.gpu.get('uuid'), 'model': model.name, 'mode': None, 'instances': 0,
              'free_memory_gb': model.capacity_gb}
    if model.mig:
        report.update(free_memory_slices=model.memory_slices, free_compute_slices=model.compute_slices)
    return report


def check_host(host: str, gpus: Sequence[Mapping[str, Any]], declarations: Mapping[str, Any]) -> list[str]:
    """What the MIG and vGPU planners say about the declarations on the host's GPUs as they are now."""
    problems = list(_mig.validate(host, gpus, declarations.get('gpu_mig') or []))
    if declarations.get('gpu_vgpu'):
        try:
            _vgpu.plan_host(host, _vgpu.views_from_facts(gpus), declarations['gpu_vgpu'])
        except _vgpu.VgpuPlanError as exc:
            problems.extend(exc.errors)
    return problems


def plan(fleet: Any, demands: Any, headroom_gb: float = 0, headroom_percent: float = 0, check: bool = True) -> dict:
    """Plan the demands over the fleet.

    Returns {'hosts': {host: {'gpu_mig': [...], 'gpu_vgpu': [...]}} (every host of the fleet), 'assignments': one per
    instance (tenant, demand, instance, host, gpu, uuid, model, isolation, profile or type, memory_gb), 'unused': one per
    GPU (mode, instances, free_memory_gb, and free_memory_slices / free_compute_slices or type / free_vgpus),
    'gpus_used', 'gpus_total', 'lower_bound', 'free_memory_gb' (fleet total), 'report' (lines for a reader)}. With `check`, the declarations are run
    through the MIG and vGPU planners against the GPUs as they are now, and their problems (a GPU instance in use
    that would go, say) raise CapacityError too.
    """
    parsed = parse_demands(demands)
    slots = build_slots(fleet, headroom_gb, headroom_percent)
    packer = _Packer(slots)
    missing: dict[int, int] = {}
    for demand, number in _order(parsed, slots):
        if packer.place(demand, number) is None:
            missing[demand.number] = missing.get(demand.number, 0) + 1
    models = list({id(s.model): s.model for s in slots}.values())
    if missing:
        raise CapacityError([_shortfall(d, missing[d.number], models) for d in parsed if d.number in missing])
    hosts: dict[str, dict] = {str(host): {'gpu_mig': [], 'gpu_vgpu': []} for host in sorted(fleet, key=str)}
    assignments: list[dict] = []
    unused: list[dict] = []
    for slot in slots:
        if slot.items:
            _declare(slot, hosts[slot.host], assignments, unused)
        else:
            unused.append(_idle(slot))
    if check:
        problems = []
        for host in sorted(hosts):
            if hosts[host]['gpu_mig'] or hosts[host]['gpu_vgpu']:
                problems.extend(check_host(host, _gpus_of(fleet[host]), hosts[host]))
        if problems:
            raise CapacityError(problems)
    assignments.sort(key=lambda a: (a['demand'], a['instance']))
    result = {
        'hosts': hosts,
        'assignments': assignments,
        'unused': unused,
        'gpus_used': sum(1 for s in slots if s.items),
        'gpus_total': len(slots),
        'lower_bound': lower_bound(parsed, models),
        'free_memory_gb': round(sum(u['free_memory_gb'] for u in unused), 2),
    }
    result['report'] = report_lines(result)
    return result


def report_lines(result: Mapping[str, Any]) -> list[str]:
    """The plan for a reader: the GPUs used against the lower bound, then each GPU's layout and what is left free."""
    lines = ['GPUs used: %d of %d (lower bound %d); %s GB left free' % (
        result['gpus_used'], result['gpus_total'], result['lower_bound'], num(result['free_memory_gb']))]
    layouts: dict[tuple, list[str]] = {}
    for item in result['assignments']:
        layouts.setdefault((item['host'], item['gpu']), []).append('%s:%s' % (item['tenant'], item.get('profile') or item.get('type')))
    for gpu in result['unused']:
        head = '%s GPU %d %s: ' % (gpu['host'], gpu['gpu'], gpu['model'])
        if gpu['mode'] is None:
            lines.append(head + 'unused, %s GB free' % num(gpu['free_memory_gb']))
            continue
        free = '%s GB' % num(gpu['free_memory_gb'])
        if gpu['mode'] == 'mig':
            free += ', %d memory / %d compute slices' % (gpu['free_memory_slices'], gpu['free_compute_slices'])
        else:
            free += ', %d more %s' % (gpu['free_vgpus'], gpu['type'])
        lines.append(head + '%s %s; free %s' % (gpu['mode'], ' '.join(layouts.get((gpu['host'], gpu['gpu']), [])), free))
    return lines
