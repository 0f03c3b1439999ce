#!/usr/bin/env python
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pure MIG planner's figures: speed of the exact solver, and how much it destroys compared with mig-parted.

1. Every multiset of H100 GPU-instance profiles within the per-profile limits is planned on an empty H100:
   how many are placeable, and the time per plan (placeable and refused apart).
2. One plan for a host with 8 H100s, each with its own existing layout and its own new one.
3. Seeded random edits of existing layouts (remove, add or replace one instance, one to three edits):
   GPU instances destroyed per edited instance by this planner, and by mig-parted's strategy (destroy every
   instance of a GPU whose profile counts differ), with their ratio.

Figures only, no pass/fail. Run from the repository root: PYTHONPATH=.build .venv/bin/python bench/bench_mig_plan.py
GPU facts are built from the simulator's H100 model data (sim/lib/gpusim/models), shaped by the module_utils.
"""
from __future__ import annotations

import itertools
import json
import os
import random
import statistics
import time
from collections import Counter

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _facts, _mig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_FILE = os.path.join(REPO, 'sim', 'lib', 'gpusim', 'models', 'h100-80gb-hbm3.json')
SEED = 20261124
SCENARIOS = 2000


def _model() -> dict:
    with open(MODEL_FILE, encoding='utf-8') as handle:
        return json.load(handle)


def _gpu(model: dict, index: int, layout: list[tuple[str, int]]) -> dict:
    """H100 facts with MIG on and GPU instances (profile, start), each holding one whole compute instance."""
    gpu = _facts.new_gpu(index)
    gpu.update(uuid='GPU-bench-%04d' % index, name=model['name'])
    gpu['mig'].update(capable=True, current=True, pending=True)
    by_name = {}
    for raw in model['mig']['gpu_instance_profiles']:
        size = raw['placements']['size']
        placements = [{'start': start, 'size': size} for start in raw['placements']['starts']]
        profile = _facts.mig_profile(raw['id'], raw['name'], raw['sliceCount'], raw['instanceCount'], raw['memorySizeMB'], placements,
                                     ofas=raw['ofaCount'])
        gpu['mig']['profiles'].append(profile)
        by_name[profile['name']] = raw
    for name, start in layout:
        raw = by_name[name]
        size = raw['placements']['size']
        gpu['mig']['gpu_instances'].append({
            'id': model['mig']['memory_slices'] // size - 1 + start // size, 'profile_id': raw['id'], 'profile': name,
            'placement': {'start': start, 'size': size},
            'compute_instances': [{'id': 0, 'profile_id': _mig.CI_PROFILE_IDS[raw['sliceCount']], 'slices': raw['sliceCount'],
                                   'placement': {'start': 0, 'size': raw['sliceCount']}}]})
    return gpu


def _declaration(names, devices='all') -> list[dict]:
    return [{'devices': devices, 'instances': [{'profile': name, 'count': n} for name, n in sorted(Counter(names).items())]}]


def _multisets(model: dict) -> list[tuple[str, ...]]:
    limits = [(_facts.mig_profile_name(raw['name']), raw['instanceCount']) for raw in model['mig']['gpu_instance_profiles']]
    return [tuple(name for (name, _limit), n in zip(limits, counts) for _i in range(n))
            for counts in itertools.product(*(range(limit + 1) for _name, limit in limits))]


def _timed_plan(gpus: list[dict], declaration: list[dict]) -> tuple[float, _mig.HostPlan | None]:
    begin = time.perf_counter()
    try:
        plan = _mig.plan_host('bench', gpus, declaration)
    except _mig.MigPlanError:
        plan = None
    return time.perf_counter() - begin, plan


def bench_all_layouts(model: dict) -> list[tuple[str, ...]]:
    empty = _gpu(model, 0, [])
    placeable, ok_times, refused_times = [], [], []
    for names in _multisets(model):
        if not names:
            continue
        seconds, plan = _timed_plan([empty], _declaration(names))
        (ok_times if plan else refused_times).append(seconds)
        if plan:
            placeable.append(names)
    total = len(ok_times) + len(refused_times)
    print('1. all H100 profile multisets within the instance limits: %d (empty layout not counted)' % total)
    print('   placeable: %d, planned in %.1f ms total, %.3f ms per plan (median %.3f ms, max %.3f ms)' % (
        len(ok_times), sum(ok_times) * 1e3, statistics.mean(ok_times) * 1e3, statistics.median(ok_times) * 1e3, max(ok_times) * 1e3))
    print('   refused:   %d, in %.1f ms total, %.3f ms per plan' % (len(refused_times), sum(refused_times) * 1e3,
                                                                    statistics.mean(refused_times) * 1e3))
    return placeable


def _layout_of(model: dict, names: tuple[str, ...]) -> list[tuple[str, int]]:
    plan = _mig.plan_host('bench', [_gpu(model, 0, [])], _declaration(names))
    return [(i['profile'], i['start']) for i in plan.after[0]['instances']]


def bench_eight_gpus(model: dict, placeable: list[tuple[str, ...]], rng: random.Random) -> None:
    gpus = [_gpu(model, i, _layout_of(model, rng.choice(placeable))) for i in range(8)]
    declaration = [_declaration(rng.choice(placeable), [i])[0] for i in range(8)]
    times = []
    plan = None
    for _run in range(50):
        seconds, plan = _timed_plan(gpus, declaration)
        times.append(seconds)
    print('2. host with 8 H100s (8 entries, random existing and wanted layouts): %.2f ms per plan (median of 50, min %.2f ms), %d steps' % (
        statistics.median(times) * 1e3, min(times) * 1e3, len(plan.steps) if plan else -1))


def _edit(rng: random.Random, names: list[str], profiles: list[str]) -> list[str]:
    """One edit: remove, add or replace one instance."""
    names = list(names)
    kind = rng.choice(('remove', 'add', 'replace')) if names else 'add'
    if kind in ('remove', 'replace'):
        names.pop(rng.randrange(len(names)))
    if kind in ('add', 'replace'):
        names.append(rng.choice(profiles))
    return names


def _scenario(model: dict, placeable: list[tuple[str, ...]], profiles: list[str], rng: random.Random):
    """(existing GPU, target names, edits) where the target is placeable and differs from the existing layout."""
    placeable_set = set(tuple(sorted(p)) for p in placeable)
    while True:
        start = rng.choice(placeable)
        edits = rng.randint(1, 3)
        target = list(start)
        for _edit_round in range(edits):
            target = _edit(rng, target, profiles)
        if tuple(sorted(target)) in placeable_set and Counter(target) != Counter(start):
            return _gpu(model, 0, _layout_of(model, start)), tuple(target), edits


def bench_destroyed_per_change(model: dict, placeable: list[tuple[str, ...]], rng: random.Random) -> None:
    profiles = sorted({name for names in placeable for name in names})
    ours = wipe = changes = 0
    seconds = 0.0
    for _round in range(SCENARIOS):
        gpu, target, edits = _scenario(model, placeable, profiles, rng)
        spent, plan = _timed_plan([gpu], _declaration(target))
        seconds += spent
        ours += sum(1 for s in plan.steps if s['action'] == 'destroy_gpu_instance')
        wipe += len(gpu['mig']['gpu_instances'])  # the counts differ, so mig-parted clears the whole GPU
        changes += edits
    print('3. %d seeded scenarios (seed %d), %d edited instances, %.3f ms per plan:' % (SCENARIOS, SEED, changes, seconds / SCENARIOS * 1e3))
    print('   GPU instances destroyed: this planner %d (%.2f per edited instance), mig-parted strategy %d (%.2f per edited instance)' % (
        ours, ours / changes, wipe, wipe / changes))
    print('   ratio mig-parted / this planner: %.2fx' % (wipe / ours if ours else float('inf')))


def main() -> None:
    model = _model()
    rng = random.Random(SEED)
    placeable = bench_all_layouts(model)
    bench_eight_gpus(model, placeable, rng)
    bench_destroyed_per_change(model, placeable, rng)


if __name__ == '__main__':
    main()
