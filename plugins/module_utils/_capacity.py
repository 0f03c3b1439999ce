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
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _mig, _vgpu

DEMAND_KEYS = ('tenant', 'name', 'memory_gb', 'count', 'isolation', 'compute_slices', 'compute_share', 'models', 'vgpu_series')
ISOLATIONS = ('mig', 'vgpu', 'any')
# vGPU series tried first for a demand that names none: Q (workstation, runs CUDA), C (compute), A (apps), B (desktops).
SERIES_PREFERENCE = ('Q', 'C', 'A', 'B')
EPSILON = 1e-9
MAX_PER_GPU = 64  # the most instances of one demand the shortfall message counts per GPU

_GB_RE = re.compile(r'\.(\d+(?:\.\d+)?)gb', re.IGNORECASE)
_SERIES_RE = re.compile(r'-(\d+)([A-Za-z]+)\d*$')


class CapacityError(ValueError):
    """The demands cannot be met (or are malformed): every problem, reported together."""

    def __init__(self, errors: Sequence[str]):
        self.errors = list(errors)
        super().__init__('capacity plan: %d problem(s):\n- %s' % (len(self.errors), '\n- '.join(self.errors)))


# ---------------------------------------------------------------------------------------------------------
# Demands


@dataclass(frozen=True)
class Demand:
    number: int
    tenant: str
    memory_gb: float
    count: int
    isolation: str
    compute_slices: int
    compute_share: float
    models: tuple[str, ...] | None
    vgpu_series: tuple[str, ...] | None

    @property
    def need(self) -> tuple:
        """What one instance asks of a GPU (instances of different tenants with equal needs are interchangeable)."""
        return (self.memory_gb, self.compute_slices, self.compute_share, self.vgpu_series)

    def describe(self) -> str:
        parts = ['%s GB' % _num(self.memory_gb), 'isolation %s' % self.isolation]
        if self.compute_slices:
            parts.append('%d compute slices' % self.compute_slices)
        if self.compute_share:
            parts.append('compute share %s' % _num(self.compute_share))
        if self.models:
            parts.append('models %s' % ', '.join(self.models))
        return ', '.join(parts)


def _num(value: float) -> str:
    return ('%.2f' % value).rstrip('0').rstrip('.')


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _model_key(name: str) -> str:
    text = name.strip().lower()
    return text[len('nvidia '):] if text.startswith('nvidia ') else text


def _demand(number: int, raw: Any) -> tuple[Demand | None, list[str]]:
    if not isinstance(raw, Mapping):
        return None, ['demand %d: must be a mapping with tenant and memory_gb, got %s' % (number, type(raw).__name__)]
    tenant = raw.get('tenant', raw.get('name'))
    where = "demand %d (tenant '%s'): " % (number, tenant) if isinstance(tenant, str) and tenant else 'demand %d: ' % number
    problems = []
    unknown = sorted(str(k) for k in raw if k not in DEMAND_KEYS)
    if unknown:
        problems.append('unknown key(s) %s (known: %s)' % (', '.join(unknown), ', '.join(DEMAND_KEYS)))
    if not isinstance(tenant, str) or not tenant.strip():
        problems.append('tenant must name the tenant, got %r' % (tenant,))
    memory = raw.get('memory_gb')
    if not _is_number(memory) or memory <= 0:
        problems.append('memory_gb must be a positive number, got %r' % (memory,))
    count = raw.get('count', 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        problems.append('count must be a non-negative integer, got %r' % (count,))
    isolation = raw.get('isolation', 'any')
    if isolation not in ISOLATIONS:
        problems.append('isolation must be one of %s, got %r' % (', '.join(ISOLATIONS), isolation))
    slices = raw.get('compute_slices', 0) or 0
    if not isinstance(slices, int) or isinstance(slices, bool) or slices < 0:
        problems.append('compute_slices must be a non-negative integer, got %r' % (slices,))
    elif slices and isolation == 'vgpu':
        problems.append('compute_slices applies to MIG only; give a vGPU demand compute_share instead')
    share = raw.get('compute_share', 0) or 0
    if not _is_number(share) or not 0 <= share <= 1:
        problems.append('compute_share must be a number in (0, 1], got %r' % (share,))
    models = raw.get('models')
    if models is not None and (isinstance(models, str) or not isinstance(models, Sequence) or not models
                               or not all(isinstance(m, str) and m.strip() for m in models)):
        problems.append('models must be a non-empty list of GPU model names, got %r' % (models,))
    series = raw.get('vgpu_series')
    if series is not None and (isinstance(series, str) or not isinstance(series, Sequence) or not series
                               or not all(isinstance(s, str) and s.strip() for s in series)):
        problems.append('vgpu_series must be a non-empty list of vGPU series letters such as Q or C, got %r' % (series,))
    if problems:
        return None, [where + p for p in problems]
    return Demand(number, tenant.strip(), float(memory), count, isolation, slices, float(share),
                  tuple(sorted({_model_key(m) for m in models})) if models is not None else None,
                  tuple(sorted({s.strip().upper() for s in series})) if series is not None else None), []


def parse_demands(raw: Any) -> list[Demand]:
    """Shape checks of every demand; raises CapacityError listing all problems."""
    if not isinstance(raw, list):
        raise CapacityError(['gpu_demands must be a list of demands, got %s' % type(raw).__name__])
    demands, errors = [], []
    for number, item in enumerate(raw, 1):
        demand, problems = _demand(number, item)
        errors.extend(problems)
        if demand is not None:
            demands.append(demand)
    if errors:
        raise CapacityError(errors)
    return demands


# ---------------------------------------------------------------------------------------------------------
# What a GPU model offers, from one GPU's facts


@dataclass(frozen=True)
class MigOption:
    name: str
    slices: int  # compute slices
    memory_slices: int
    gb: float  # memory it grants, as its name says
    instances: int
    ofas: int


@dataclass(frozen=True)
class VgpuOption:
    short: str
    gb: float
    max_instances: int
    series: str


@dataclass
class Model:
    """The capacity of every GPU sharing a model signature (name, profiles, vGPU types, MIG mode on or off)."""

    key: tuple
    name: str
    mig: tuple[MigOption, ...]
    memory_slices: int
    compute_slices: int
    mig_gb: float
    usable_slices: int
    vgpu: tuple[VgpuOption, ...]
    vgpu_gb: float
    usable_vgpu_gb: float
    template: dict  # facts of an empty GPU of this model with MIG on, what candidate layouts are validated against
    mig_cache: dict = field(default_factory=dict)
    vgpu_cache: dict = field(default_factory=dict)
    valid_cache: dict = field(default_factory=dict)
    modes_cache: dict = field(default_factory=dict)
    room_cache: dict = field(default_factory=dict)

    @property
    def capacity_gb(self) -> float:
        return max(self.mig_gb, self.vgpu_gb)

    def can(self, mode: str) -> bool:
        return bool(self.mig) if mode == 'mig' else bool(self.vgpu)


def _profile_gb(raw: Mapping[str, Any]) -> float:
    match = _GB_RE.search(raw.get('name') or '')
    if match:
        return float(match.group(1))
    return round(float(raw.get('memory_mib') or 0) / 1024, 2)


def _mig_options(gpu: Mapping[str, Any]) -> tuple[MigOption, ...]:
    mig = gpu.get('mig') or {}
    if not mig.get('capable'):
        return ()
    options = []
    for raw in mig.get('profiles') or []:
        placements = raw.get('placements') or []
        if not placements or not raw.get('slices') or not raw.get('instances'):
            continue
        size = raw.get('memory_slices') or max(int(p['size']) for p in placements)
        options.append(MigOption(raw['name'], int(raw['slices']), int(size), _profile_gb(raw), int(raw['instances']), int(raw.get('ofas') or 0)))
    # A profile that offers nothing another does not offer with fewer media engines (1g.10gb+me beside 1g.10gb) is
    # left out: it only spends the GPU's one optical-flow engine.
    kept = [o for o in options if not any(p is not o and (p.slices, p.memory_slices, p.gb) == (o.slices, o.memory_slices, o.gb)
                                          and (p.ofas, p.name) < (o.ofas, o.name) for p in options)]
    return tuple(sorted(kept, key=lambda o: (o.memory_slices, o.slices, o.ofas, o.name)))


def _vgpu_options(gpu: Mapping[str, Any]) -> tuple[VgpuOption, ...]:
    if (gpu.get('mig') or {}).get('current'):
        return ()  # time-sliced vGPU types are not offered while MIG is on
    options = []
    for raw in (gpu.get('vgpu') or {}).get('supported_types') or []:
        name, fb_mib, maximum = raw.get('name'), raw.get('framebuffer_mib'), raw.get('max_instances')
        if not name or not fb_mib or not maximum:
            continue
        short = _vgpu.short_name(name)
        match = _SERIES_RE.search(short)
        options.append(VgpuOption(short, round(float(fb_mib) / 1024, 3), int(maximum), match.group(2).upper() if match else ''))
    return tuple(sorted(options, key=_vgpu_preference))


def _vgpu_preference(option: VgpuOption) -> tuple:
    rank = SERIES_PREFERENCE.index(option.series) if option.series in SERIES_PREFERENCE else len(SERIES_PREFERENCE)
    return (option.gb, rank, option.series, option.short)


def _headroom(capacity_gb: float, headroom_gb: float, headroom_percent: float) -> float:
    return max(headroom_gb, capacity_gb * headroom_percent / 100.0)


def _template(gpu: Mapping[str, Any]) -> dict:
    mig = dict(gpu.get('mig') or {}, current=True, pending=True, gpu_instances=[])
    return {'index': 0, 'uuid': 'GPU-capacity-template', 'name': gpu.get('name'), 'status': 'ok',
            'pci': dict(gpu.get('pci') or {}), 'mig': mig, 'processes': []}


def build_model(gpu: Mapping[str, Any], headroom_gb: float, headroom_percent: float) -> Model:
    mig = _mig_options(gpu)
    vgpu = _vgpu_options(gpu)
    memory_slices = max((o.memory_slices for o in mig), default=0)
    compute_slices = max((o.slices for o in mig), default=0)
    full = [o for o in mig if o.memory_slices == memory_slices]
    mig_gb = max((o.gb for o in full), default=0.0)
    usable_slices = 0
    if memory_slices:
        per_slice = mig_gb / memory_slices
        usable_slices = memory_slices - int(math.ceil(_headroom(mig_gb, headroom_gb, headroom_percent) / per_slice - EPSILON))
    vgpu_gb = max((o.gb * o.max_instances for o in vgpu), default=0.0)
    usable_vgpu_gb = vgpu_gb - _headroom(vgpu_gb, headroom_gb, headroom_percent)
    key = (gpu.get('name'), mig, vgpu)
    return Model(key, gpu.get('name') or 'unknown GPU', mig, memory_slices, compute_slices, mig_gb, max(usable_slices, 0), vgpu,
                 vgpu_gb, usable_vgpu_gb, _template(gpu))


def _allowed(model: Model, demand: Demand) -> bool:
    return demand.models is None or _model_key(model.name) in demand.models


def _modes(model: Model, demand: Demand) -> tuple[str, ...]:
    """The modes (mig, vgpu) a GPU of the model may serve the demand in, MIG first."""
    key = (demand.isolation, demand.models)
    if key not in model.modes_cache:
        wanted = ('mig', 'vgpu') if demand.isolation == 'any' else (demand.isolation,)
        model.modes_cache[key] = tuple(m for m in wanted if model.can(m)) if _allowed(model, demand) else ()
    return model.modes_cache[key]


# ---------------------------------------------------------------------------------------------------------
# One GPU, exactly


def _mig_candidates(model: Model, need: tuple) -> tuple[MigOption, ...]:
    memory, slices, share, _series = need
    least = max(slices, int(math.ceil(share * model.compute_slices - EPSILON)) if share else 0)
    return tuple(o for o in model.mig if o.gb + EPSILON >= memory and o.slices >= least and o.memory_slices <= model.usable_slices)


def _mig_valid(model: Model, names: tuple[str, ...]) -> bool:
    """Whether the MIG planner accepts these profiles on an empty GPU of the model (its budgets and placement search)."""
    key = tuple(sorted(names))
    if key not in model.valid_cache:
        counts: dict[str, int] = {}
        for name in key:
            counts[name] = counts.get(name, 0) + 1
        declaration = [{'devices': [0], 'enabled': True, 'instances': [{'profile': n, 'count': c} for n, c in counts.items()]}]
        model.valid_cache[key] = not _mig.validate('capacity', [model.template], declaration)
    return model.valid_cache[key]


def solve_mig(model: Model, needs: tuple[tuple, ...]) -> tuple[MigOption, ...] | None:
    """The cheapest MIG profiles (one per need, in the order given) that fit one GPU of the model, or None.

    Cheapest: fewest memory slices, then compute slices, then media engines. Exact: a depth-first search over
    every choice, identical needs taking non-decreasing choices, branches that cannot beat the best cut off;
    a complete choice counts only if the MIG planner can place it.
    """
    key = tuple(sorted(needs))
    if key in model.mig_cache:
        found = model.mig_cache[key]
        return None if found is None else _reorder(key, found, needs)
    result = _search_mig(model, key)
    model.mig_cache[key] = result
    return None if result is None else _reorder(key, result, needs)


def _reorder(key: tuple, found: tuple, needs: tuple) -> tuple:
    pool: dict[tuple, list] = {}
    for need, option in zip(key, found):
        pool.setdefault(need, []).append(option)
    return tuple(pool[need].pop() for need in needs)


def _search_mig(model: Model, key: tuple) -> tuple[MigOption, ...] | None:
    if not key or len(key) > model.compute_slices:
        return () if not key else None
    candidates = [_mig_candidates(model, need) for need in key]
    if any(not c for c in candidates):
        return None
    count = len(key)
    rest = [(0, 0, 0)] * (count + 1)
    for k in range(count - 1, -1, -1):
        rest[k] = (rest[k + 1][0] + min(o.memory_slices for o in candidates[k]), rest[k + 1][1] + min(o.slices for o in candidates[k]),
                   rest[k + 1][2] + min(o.ofas for o in candidates[k]))
    choice: list[int] = [0] * count
    best: list[Any] = [None, None]

    def visit(k: int, memory: int, compute: int, ofas: int) -> None:
        bound = (memory + rest[k][0], compute + rest[k][1], ofas + rest[k][2])
        if best[0] is not None and bound >= best[0]:
            return
        if memory + rest[k][0] > model.usable_slices or compute + rest[k][1] > model.compute_slices:
            return
        if k == count:
            names = tuple(candidates[i][choice[i]].name for i in range(count))
            if _mig_valid(model, names):
                best[0], best[1] = (memory, compute, ofas), list(choice)
            return
        first = choice[k - 1] if k > 0 and key[k] == key[k - 1] else 0
        for j in range(first, len(candidates[k])):
            option = candidates[k][j]
            choice[k] = j
            visit(k + 1, memory + option.memory_slices, compute + option.slices, ofas + option.ofas)

    visit(0, 0, 0, 0)
    if best[1] is None:
        return None
    return tuple(candidates[i][best[1][i]] for i in range(count))


def solve_vgpu(model: Model, needs: tuple[tuple, ...]) -> VgpuOption | None:
    """The vGPU type (one per GPU) that holds every need on one GPU of the model, smallest framebuffer first, or None."""
    key = tuple(sorted(needs))
    if key not in model.vgpu_cache:
        model.vgpu_cache[key] = _search_vgpu(model, key)
    return model.vgpu_cache[key]


def _search_vgpu(model: Model, key: tuple) -> VgpuOption | None:
    if not key:
        return None
    count = len(key)
    memory = max(need[0] for need in key)
    share = max(need[2] for need in key)
    if share and count > int(math.floor(1 / share + EPSILON)):
        return None
    series = None
    for need in key:
        if need[3] is not None:
            series = set(need[3]) if series is None else series & set(need[3])
    for option in model.vgpu:
        if option.gb + EPSILON < memory or count > option.max_instances or count * option.gb > model.usable_vgpu_gb + EPSILON:
            continue
        if series is not None and option.series not in series:
            continue
        return option
    return None


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
    if not _is_number(headroom_gb) or headroom_gb < 0 or not _is_number(headroom_percent) or not 0 <= headroom_percent < 100:
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
               for mode in _modes(model, demand))


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
            if slot.mode in _modes(slot.model, demand) and slot.fits(slot.mode, demand):
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
            for mode in _modes(model, demand):
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
    return max((_room(model, mode, demand) for mode in _modes(model, demand)), default=0)


def _shortfall(demand: Demand, missing: int, models: Sequence[Model]) -> str:
    head = "tenant '%s' (demand %d): %d of %d instance(s) of %s could not be placed: " % (
        demand.tenant, demand.number, missing, demand.count, demand.describe())
    options = sorted(((_per_gpu(m, demand), m.name) for m in models), key=lambda o: (-o[0], o[1]))
    memory = '%s GB more memory' % _num(missing * demand.memory_gb)
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
            modes = _modes(model, demand)
            if 'mig' in modes:
                options = _mig_candidates(model, demand.need)
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


def views_from_facts(gpus: Sequence[Mapping[str, Any]]) -> list[_vgpu.GpuView]:
    """GPUs as the vGPU planner sees them, from facts alone: the supported types with their full capacity, the
    active vGPUs as devices (facts do not say which VF or mdev parent holds them)."""
    views = []
    for gpu in sorted(gpus, key=lambda g: g['index']):
        if gpu.get('status') == 'lost':
            continue
        vgpu = gpu.get('vgpu') or {}
        types = [_vgpu.VgpuType(str(t.get('id')), t['name'], int(t.get('max_instances') or 0), int(t.get('max_instances') or 0))
                 for t in vgpu.get('supported_types') or [] if t.get('name')]
        devices = [_vgpu.Device(str(a.get('uuid')).lower(), a.get('type') or '', in_use=bool(a.get('vm_id'))) for a in vgpu.get('active') or []]
        views.append(_vgpu.GpuView(index=gpu['index'], uuid=gpu.get('uuid'), name=gpu.get('name') or 'GPU %d' % gpu['index'],
                                   bus_id=(gpu.get('pci') or {}).get('bus_id'), parent=(gpu.get('pci') or {}).get('bus_id'),
                                   types=types, devices=devices, pci=dict(gpu.get('pci') or {}),
                                   mig_enabled=bool((gpu.get('mig') or {}).get('current'))))
    return views


def check_host(host: str, gpus: Sequence[Mapping[str, Any]], declarations: Mapping[str, Any]) -> list[str]:
    """What the MIG and vGPU planners say about the declarations on the host's GPUs as they are now."""
    problems = list(_mig.validate(host, gpus, declarations.get('gpu_mig') or []))
    if declarations.get('gpu_vgpu'):
        try:
            _vgpu.plan_host(host, views_from_facts(gpus), declarations['gpu_vgpu'])
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
        result['gpus_used'], result['gpus_total'], result['lower_bound'], _num(result['free_memory_gb']))]
    layouts: dict[tuple, list[str]] = {}
    for item in result['assignments']:
        layouts.setdefault((item['host'], item['gpu']), []).append('%s:%s' % (item['tenant'], item.get('profile') or item.get('type')))
    for gpu in result['unused']:
        head = '%s GPU %d %s: ' % (gpu['host'], gpu['gpu'], gpu['model'])
        if gpu['mode'] is None:
            lines.append(head + 'unused, %s GB free' % _num(gpu['free_memory_gb']))
            continue
        free = '%s GB' % _num(gpu['free_memory_gb'])
        if gpu['mode'] == 'mig':
            free += ', %d memory / %d compute slices' % (gpu['free_memory_slices'], gpu['free_compute_slices'])
        else:
            free += ', %d more %s' % (gpu['free_vgpus'], gpu['type'])
        lines.append(head + '%s %s; free %s' % (gpu['mode'], ' '.join(layouts.get((gpu['host'], gpu['gpu']), [])), free))
    return lines
