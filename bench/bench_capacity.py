#!/usr/bin/env python
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The capacity planner's figures: planning time over a 10,000-GPU fleet, and GPUs used against the lower bound.

The fleet: 1,250 hosts of 8 GPUs each, every host of one model, the models drawn (seeded) from the simulator's model
files (A100 40/80 GB, H100, H200, A30 with MIG; A40 and T4 with vGPU types; V100, which offers neither). The demands
mix MIG, vGPU and either, with model and vGPU-series constraints, sized to fill most of the fleet.

1. the plan without the final check (the packing and the exact per-GPU searches), and with it (every host's
   declarations run through the MIG and vGPU planners), wall time of each, best of REPEATS;
2. GPUs used, the lower bound and their ratio; instances placed, and the memory left free.
3. the same demands at a tenth of the scale on the same fleet (a fleet mostly left unused).

Figures only, no pass/fail. Run from the repository root: PYTHONPATH=.build .venv/bin/python bench/bench_capacity.py
"""
from __future__ import annotations

import glob
import json
import os
import random
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.join(REPO, '.build') not in sys.path:
    sys.path.insert(0, os.path.join(REPO, '.build'))

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _capacity, _facts  # noqa: E402  pylint: disable=wrong-import-position

MODELS_DIR = os.path.join(REPO, 'sim', 'lib', 'gpusim', 'models')
SEED = 20261125
HOSTS = 1250
GPUS_PER_HOST = 8
REPEATS = 3
HEADROOM_GB = 2  # rounds up to one memory slice on every MIG GPU, 2 GB of framebuffer on a vGPU GPU
DEMANDS = [
    {'tenant': 'inference', 'memory_gb': 15, 'count': 5000, 'isolation': 'mig'},
    {'tenant': 'training', 'memory_gb': 40, 'count': 1800, 'isolation': 'mig'},
    {'tenant': 'batch-small', 'memory_gb': 8, 'count': 6000, 'isolation': 'any'},
    {'tenant': 'notebooks', 'memory_gb': 5, 'count': 4000, 'isolation': 'any', 'compute_share': 0.1},
    {'tenant': 'desktops', 'memory_gb': 8, 'count': 3000, 'isolation': 'vgpu'},
    {'tenant': 'cuda-vms', 'memory_gb': 4, 'count': 1500, 'isolation': 'vgpu', 'vgpu_series': ['C']},
    {'tenant': 'large-models', 'memory_gb': 70, 'count': 700, 'isolation': 'any'},
    {'tenant': 'a30-pool', 'memory_gb': 12, 'count': 1200, 'isolation': 'mig', 'models': ['NVIDIA A30']},
    {'tenant': 'h100-jobs', 'memory_gb': 20, 'count': 1500, 'isolation': 'mig', 'compute_slices': 2, 'models': ['NVIDIA H100 80GB HBM3']},
]


def _models() -> dict:
    models = {}
    for path in sorted(glob.glob(os.path.join(MODELS_DIR, '*.json'))):
        with open(path, encoding='utf-8') as handle:
            models[os.path.basename(path)[:-5]] = json.load(handle)
    return models


def _gpu(key: str, model: dict, host: int, index: int) -> dict:
    """Facts of one GPU as gpu_facts reports it: MIG profiles with placements, or vGPU types in host vGPU mode."""
    gpu = _facts.new_gpu(index)
    gpu.update(uuid='GPU-%s-%05d-%d' % (key, host, index), name=model['name'])
    gpu['memory']['total_mib'] = model['memory_total_bytes'] >> 20
    if model.get('mig'):
        gpu['mig'].update(capable=True, current=False, pending=False)
        for raw in model['mig']['gpu_instance_profiles']:
            size = raw['placements']['size']
            placements = [{'start': start, 'size': size} for start in raw['placements']['starts']]
            gpu['mig']['profiles'].append(_facts.mig_profile(raw['id'], raw['name'], raw['sliceCount'], raw['instanceCount'],
                                                             raw['memorySizeMB'], placements, ofas=raw['ofaCount']))
    elif model.get('vgpu'):
        gpu['vgpu'].update(virtualization_mode='host_vgpu', host_mode='non_sriov')
        gpu['vgpu']['supported_types'] = [{'id': t['id'], 'name': t['name'], 'framebuffer_mib': t['framebuffer_bytes'] >> 20,
                                           'max_instances': t['max_instances']} for t in model['vgpu']['types']]
    return gpu


def _fleet(models: dict) -> tuple[dict, dict]:
    rng = random.Random(SEED)
    keys = sorted(models)
    fleet, counts = {}, {}
    for host in range(HOSTS):
        key = rng.choice(keys)
        counts[models[key]['name']] = counts.get(models[key]['name'], 0) + GPUS_PER_HOST
        fleet['gpu-%05d' % host] = [_gpu(key, models[key], host, index) for index in range(GPUS_PER_HOST)]
    return fleet, counts


def _timed(fleet: dict, demands: list, check: bool) -> tuple[float, dict]:
    best, result = None, None
    for _repeat in range(REPEATS):
        started = time.perf_counter()
        result = _capacity.plan(fleet, demands, headroom_gb=HEADROOM_GB, check=check)
        elapsed = time.perf_counter() - started
        best = elapsed if best is None else min(best, elapsed)
    return best, result


def _report(label: str, fleet: dict, demands: list) -> None:
    instances = sum(d['count'] for d in demands)
    fast, result = _timed(fleet, demands, check=False)
    checked, _same = _timed(fleet, demands, check=True)
    used, bound = result['gpus_used'], result['lower_bound']
    print('%s: %d demands, %d instances over %d GPUs (headroom %d GB)' % (label, len(demands), instances, result['gpus_total'], HEADROOM_GB))
    print('  plan: %.2f s without the final check, %.2f s with it (best of %d); %.1f us per instance'
          % (fast, checked, REPEATS, fast / instances * 1e6))
    print('  GPUs used %d, lower bound %d, ratio %.3f; %d assignments; %.0f GB left free'
          % (used, bound, used / float(bound) if bound else 0.0, len(result['assignments']), result['free_memory_gb']))
    modes: dict = {}
    for item in result['unused']:
        modes[item['mode']] = modes.get(item['mode'], 0) + 1
    print('  GPUs by mode: %s' % ', '.join('%s %d' % (mode or 'unused', count) for mode, count in sorted(modes.items(), key=lambda m: str(m[0]))))


def main() -> None:
    models = _models()
    fleet, counts = _fleet(models)
    print('fleet: %d hosts x %d GPUs: %s' % (HOSTS, GPUS_PER_HOST, ', '.join('%s %d' % item for item in sorted(counts.items()))))
    _report('full demand', fleet, DEMANDS)
    _report('a tenth of it', fleet, [dict(d, count=d['count'] // 10) for d in DEMANDS])


if __name__ == '__main__':
    main()
