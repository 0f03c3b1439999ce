# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers for the MIG planner tests: GPU facts built from the simulator's model data, and plans run on the simulator.

The facts are shaped by the same `_facts` functions gpu_facts uses, from the JSON model files in
sim/lib/gpusim/models (read at test time). `apply_on_sim` executes a plan's steps with the simulator's own MIG
rules (sim/lib/gpusim/mig.py), an implementation independent of the planner: a step the planner gets wrong
fails there as it would in NVML. test_mig_model_facts.py checks the helpers themselves against the real H100.
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _facts

REPO = Path(__file__).resolve().parents[4]
MODELS_DIR = REPO / 'sim' / 'lib' / 'gpusim' / 'models'
REAL_H100 = REPO / 'tests' / 'unit' / 'fixtures' / 'real-h100' / 'gpu_facts-nvml.json'
MIG_MODELS = ('a100-sxm4-40gb', 'a100-sxm4-80gb', 'h100-80gb-hbm3', 'h200-141gb', 'a30')

if str(REPO / 'sim' / 'lib') not in sys.path:
    sys.path.append(str(REPO / 'sim' / 'lib'))  # appended: the real pynvml (if any) stays first

from gpusim import mig as sim_mig  # noqa: E402  pylint: disable=wrong-import-position


def load_model(key: str) -> dict:
    return json.loads((MODELS_DIR / (key + '.json')).read_text(encoding='utf-8'))


def real_h100_gpus() -> list[dict]:
    return json.loads(REAL_H100.read_text(encoding='utf-8'))['ansible_facts']['gpus']


def _profile_facts(raw: dict) -> dict:
    placements = [{'start': start, 'size': raw['placements']['size']} for start in raw['placements']['starts']]
    return _facts.mig_profile(raw['id'], raw['name'], raw['sliceCount'], raw['instanceCount'], raw['memorySizeMB'], placements,
                              multiprocessors=raw['multiprocessorCount'], copy_engines=raw['copyEngineCount'],
                              decoders=raw['decoderCount'], encoders=raw['encoderCount'], jpegs=raw['jpegCount'], ofas=raw['ofaCount'])


def gi_id(model: dict, start: int, size: int) -> int:
    """The driver's GPU-instance id for a placement (the simulator uses the same formula)."""
    return model['mig']['memory_slices'] // size - 1 + start // size


def profile_by_name(model: dict, name: str) -> dict:
    for raw in model['mig']['gpu_instance_profiles']:
        if _facts.mig_profile_name(raw['name']) == name:
            return raw
    raise KeyError(name)


def _ci_facts(model: dict, gi_raw: dict, cis: list) -> list[dict]:
    """Compute instances from [slices | (slices, start)], unplaced ones first fit (what NVML does)."""
    ci_profiles = {c['sliceCount']: c for c in model['mig']['compute_instance_profiles'][str(gi_raw['sliceCount'])]}
    used: set[int] = set()
    result = []
    for ci_id, spec in enumerate(cis):
        slices, start = spec if isinstance(spec, tuple) else (spec, None)
        prof = ci_profiles[slices]
        if start is None:
            start = next(s for s in prof['placements']['starts'] if not used & set(range(s, s + slices)))
        used |= set(range(start, start + slices))
        result.append({'id': ci_id, 'profile_id': prof['id'], 'slices': slices, 'placement': {'start': start, 'size': slices}})
    return result


def gi_facts(model: dict, name: str, start: int, cis: list | None = None) -> dict:
    raw = profile_by_name(model, name)
    size = raw['placements']['size']
    return {'id': gi_id(model, start, size), 'profile_id': raw['id'], 'profile': name, 'placement': {'start': start, 'size': size},
            'compute_instances': _ci_facts(model, raw, [raw['sliceCount']] if cis is None else cis)}


def model_gpu(key: str, index: int = 0, current: bool = True, pending: bool | None = None, instances: tuple = (),
              processes: tuple = ()) -> dict:
    """GPU facts for a simulated model: instances are (profile, start) or (profile, start, [ci slices | (slices, start)])."""
    model = load_model(key)
    gpu = _facts.new_gpu(index)
    gpu.update(uuid='GPU-%s-%04d' % (key, index), name=model['name'])
    gpu['pci'].update(bus_id='00000000:%02X:00.0' % (0x18 + index), **_facts.pci_ids(
        model['pci_device_id'] << 16 | model['pci_vendor_id'], model['pci_subsystem_id'] << 16 | model['pci_subsystem_vendor_id']))
    mig = model.get('mig')
    if not mig:
        return gpu
    gpu['mig'].update(capable=True, current=current, pending=current if pending is None else pending)
    gpu['mig']['profiles'] = _facts.sort_profiles([_profile_facts(raw) for raw in mig['gpu_instance_profiles']])
    gpu['mig']['gpu_instances'] = sorted((gi_facts(model, *spec) for spec in instances), key=lambda g: g['id'])
    gpu['processes'] = [{'pid': pid, 'used_memory_mib': 100, 'gpu_instance_id': gi, 'compute_instance_id': ci} for pid, gi, ci in processes]
    return gpu


# ----------------------------------------------------------------------------------------------------------
# Running a plan on the simulator's MIG rules


def _to_sim(gpu: dict) -> dict:
    return {
        'mig': {'current': gpu['mig']['current'], 'pending': gpu['mig']['pending']},
        'processes': [{'pid': p['pid'], 'gi': p['gpu_instance_id'], 'ci': p['compute_instance_id']} for p in gpu['processes']],
        'gpu_instances': [{'id': g['id'], 'profile_id': g['profile_id'], 'start': g['placement']['start'], 'size': g['placement']['size'],
                           'compute_instances': [{'id': c['id'], 'profile_id': c['profile_id'], 'start': c['placement']['start'],
                                                  'size': c['placement']['size']} for c in g['compute_instances']]}
                          for g in gpu['mig']['gpu_instances']],
    }


def _from_sim(gpu: dict, state: dict, model: dict) -> dict:
    out = copy.deepcopy(gpu)
    out['mig']['current'], out['mig']['pending'] = bool(state['mig']['current']), bool(state['mig']['pending'])
    by_id = {raw['id']: raw for raw in model['mig']['gpu_instance_profiles']}
    out['mig']['gpu_instances'] = [
        {'id': g['id'], 'profile_id': g['profile_id'], 'profile': _facts.mig_profile_name(by_id[g['profile_id']]['name']),
         'placement': {'start': g['start'], 'size': g['size']},
         'compute_instances': [{'id': c['id'], 'profile_id': c['profile_id'], 'slices': c['size'],
                                'placement': {'start': c['start'], 'size': c['size']}} for c in g['compute_instances']]}
        for g in sorted(state['gpu_instances'], key=lambda g: g['id'])] if state['mig']['current'] else []
    out['processes'] = [{'pid': p['pid'], 'used_memory_mib': 100, 'gpu_instance_id': p['gi'], 'compute_instance_id': p['ci']}
                        for p in state['processes']]
    return out


def _find_gi(state: dict, step: dict) -> dict:
    if step.get('gpu_instance_id') is not None:
        return sim_mig.find_gi(state, step['gpu_instance_id'])
    return next(g for g in state['gpu_instances'] if g['start'] == step['gpu_instance_start'])


def _kill(state: dict, pids: list[int]) -> None:
    """allow_disruption: the operator stops the processes first."""
    state['processes'] = [p for p in state['processes'] if p['pid'] not in pids]


def _run_step(state: dict, model: dict, step: dict) -> None:
    action = step['action']
    _kill(state, step.get('pids') or [])
    if action == 'set_mig_mode':
        if not step['enabled'] and state['gpu_instances']:
            raise AssertionError('MIG mode disabled while GPU instances exist')
        state['mig']['pending'] = step['enabled']
    elif action == 'reset_gpu':
        state['mig']['current'] = state['mig']['pending']
        state['gpu_instances'] = []
    elif action == 'destroy_compute_instance':
        inst = sim_mig.find_gi(state, step['gpu_instance_id'])
        sim_mig.destroy_ci(state, inst, step['compute_instance_id'])
    elif action == 'destroy_gpu_instance':
        sim_mig.destroy_gi(state, step['gpu_instance_id'])
    elif action == 'create_gpu_instance':
        sim_mig.create_gi(state, model, step['profile_id'], step['start'])
    elif action == 'create_compute_instance':
        sim_mig.create_ci(state, model, _find_gi(state, step), step['profile_id'], step['start'])
    else:
        raise AssertionError('unknown action %s' % action)


def apply_on_sim(gpus: list[dict], steps: list[dict], keys: dict[int, str]) -> list[dict]:
    """The GPUs' facts after running `steps` with the simulator's MIG rules (keys: GPU index -> model key)."""
    result = []
    for gpu in gpus:
        model = load_model(keys[gpu['index']])
        state = _to_sim(gpu)
        for step in steps:
            if step['gpu'] == gpu['index']:
                if step['action'] not in ('set_mig_mode', 'reset_gpu') and not state['mig']['current']:
                    raise AssertionError('instance step while MIG mode is off: %s' % step)
                _run_step(state, model, step)
        result.append(_from_sim(gpu, state, model) if model.get('mig') else gpu)
    return result
