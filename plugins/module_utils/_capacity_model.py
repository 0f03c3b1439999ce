# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""The capacity planner's parts for one GPU: tenants' demands, what a GPU model offers, and what one GPU can hold.

`parse_demands` checks the `gpu_demands` inventory variable (`_capacity` describes it). `build_model` reads what a
GPU model offers from one GPU's facts: its MIG profiles (memory and compute slices, the GB their names grant, media
engines) and its vGPU types (framebuffer, instances, series), less the headroom. `solve_mig` and `solve_vgpu` decide
exactly what one GPU of a model holds: the cheapest MIG profiles, each candidate layout checked by the MIG planner
itself (`_mig.validate`, its placement solver), or the smallest vGPU type that holds the largest instance. The fleet
(`_capacity`) packs GPUs with these.
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
        parts = ['%s GB' % num(self.memory_gb), 'isolation %s' % self.isolation]
        if self.compute_slices:
            parts.append('%d compute slices' % self.compute_slices)
        if self.compute_share:
            parts.append('compute share %s' % num(self.compute_share))
        if self.models:
            parts.append('models %s' % ', '.join(self.models))
        return ', '.join(parts)


def num(value: float) -> str:
    return ('%.2f' % value).rstrip('0').rstrip('.')


def is_number(value: Any) -> bool:
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
    if not is_number(memory) or memory <= 0:
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
    if not is_number(share) or not 0 <= share <= 1:
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


def serving_modes(model: Model, demand: Demand) -> tuple[str, ...]:
    """The modes (mig, vgpu) a GPU of the model may serve the demand in, MIG first."""
    key = (demand.isolation, demand.models)
    if key not in model.modes_cache:
        wanted = ('mig', 'vgpu') if demand.isolation == 'any' else (demand.isolation,)
        model.modes_cache[key] = tuple(m for m in wanted if model.can(m)) if _allowed(model, demand) else ()
    return model.modes_cache[key]


# ---------------------------------------------------------------------------------------------------------
# One GPU, exactly


def mig_candidates(model: Model, need: tuple) -> tuple[MigOption, ...]:
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
    candidates = [mig_candidates(model, need) for need in key]
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
