# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A rollback that meets a second fault (issue 15), in this process against the simulated NVML.

The scenario is the fault scenario of tests/integration/mig/test_mig_layout_sim.py (every kind of step, on two GPUs,
one of them through a reset). Faults are the simulator's host-wide nth-call faults on every mutating NVML call
(`gpusimctl fault set --call '*' --nth ...`), so "the step at position k fails, and so does the rollback's j-th call"
is one fault:
- a transient fault: the failed step, then one failed rollback call, for every step and every call of the rollback:
  the rollback tries that call again and the host ends in its previous layout;
- a permanent fault, from step k on (every later mutating call, or every later call of that step's function): the
  result says exactly what each GPU holds, and where a repair was possible, no GPU is left with a GPU instance that
  has no compute instance.
The retry sleeps are injected (`sleep`), so these tests do not wait.
"""
# pylint: disable=redefined-outer-name  # pytest fixtures are parameters by design
from __future__ import annotations

import os
import shutil

import pytest

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _mig_apply, _nvml
from test_mig_apply_sim import SMI, host_fixture  # noqa: F401  pylint: disable=import-error,unused-import

PREVIOUS = [{'devices': [0], 'instances': [{'profile': '3g.40gb', 'start': 0, 'compute_instances': ['1c', '1c', '1c']},
                                           {'profile': '2g.20gb', 'start': 4}, {'profile': '1g.10gb', 'start': 6}]},
            {'devices': [1], 'enabled': False}]
DECLARED = [{'devices': [0], 'instances': [{'profile': '3g.40gb', 'start': 0, 'compute_instances': ['1c', '2c']},
                                           {'profile': '1g.10gb', 'start': 4}, {'profile': '1g.10gb', 'start': 5},
                                           {'profile': '1g.10gb', 'start': 6}]},
            {'devices': [1], 'instances': [{'profile': '4g.40gb'}, {'profile': '3g.40gb'}]}]
NVML_CALL = {
    'destroy_compute_instance': 'nvmlComputeInstanceDestroy',
    'destroy_gpu_instance': 'nvmlGpuInstanceDestroy',
    'set_mig_mode': 'nvmlDeviceSetMigMode',
    'create_gpu_instance': 'nvmlDeviceCreateGpuInstanceWithPlacement',
    'create_compute_instance': 'nvmlGpuInstanceCreateComputeInstanceWithPlacement',
}
_CACHE: dict = {}


def _previous(host, tmp_path) -> dict:
    """The host in PREVIOUS (applied once per worker, then copied), with the plan to DECLARED and, per plan
    position, the number of mutating NVML calls up to it and the number the clean rollback of a fault there makes."""
    if not _CACHE:
        assert not host.apply(PREVIOUS)['failed']
        steps = host.apply(DECLARED, check_mode=True)['steps']
        saved = str(tmp_path / 'previous.json')
        shutil.copy(os.path.join(host.root, 'state.json'), saved)
        _CACHE.update(state=saved, layouts=host.layouts(), steps=steps)
    else:
        shutil.copy(_CACHE['state'], os.path.join(host.root, 'state.json'))
    return _CACHE


def _nvml_calls_before(steps: list[dict], position: int) -> int:
    return sum(1 for s in steps[:position] if s['action'] != 'reset_gpu')


def _fail(host, tmp_path, steps: list[dict], position: int, nth: str, declared=None, transient_reset: bool = False) -> dict:
    """Apply `declared` (default DECLARED) with `nth` ('*' calls counted from now) failing; a reset step fails
    through a fake nvidia-smi: every reset it is asked for, or with `transient_reset` only the reset of that step
    (the others reach the simulator's nvidia-smi)."""
    kwargs = {'sleep': lambda _s: None}
    if steps[position]['action'] == 'reset_gpu':
        fake, calls = tmp_path / 'nvidia-smi', tmp_path / 'nvidia-smi.calls'
        if calls.exists():
            calls.unlink()
        refuse = 'echo "GPU $3 is currently in use by another process."\nexit 255\n'
        if transient_reset:
            resets = sum(1 for s in steps[:position + 1] if s['action'] == 'reset_gpu')
            refuse = 'echo >> %s\nif [ "$(wc -l < %s)" -eq %d ]; then\n%sfi\nexec %s "$@"\n' % (calls, calls, resets, refuse, SMI)
        fake.write_text('#!/bin/sh\n' + refuse)
        fake.chmod(0o755)
        kwargs['smi_path'] = str(fake)
    if nth:
        host.ctl('fault', 'set', '--call', '*', '--error', 'NVML_ERROR_UNKNOWN', '--nth', nth)
    return host.apply(DECLARED if declared is None else declared, **kwargs)


def _observed(host) -> list[dict]:
    with _nvml.NvmlSession():
        return _mig_apply.observe()


def _rollback_calls(host, tmp_path, steps: list[dict], position: int, declared=None, transient_reset: bool = False) -> int:
    """How many mutating NVML calls the rollback of a fault at `position` makes when nothing else fails."""
    first = _nvml_calls_before(steps, position) + (0 if steps[position]['action'] == 'reset_gpu' else 1)
    counts = sum(host.state().get('nvml_mutations', {}).values())
    result = _fail(host, tmp_path, steps, position, str(first) if steps[position]['action'] != 'reset_gpu' else '', declared, transient_reset)
    assert result['rollback']['restored'] is True and result['failure']['step_number'] == position + 1, result['msg']
    return sum(host.state().get('nvml_mutations', {}).values()) - counts - first


def _assert_exact(result: dict, gpus: list[dict], previous: list[tuple]) -> None:
    """The result says what each GPU holds: restored exactly when every layout is the previous one, and otherwise a
    mismatch naming each GPU's actual layout and every GPU instance without compute instances."""
    rollback = result['rollback']
    now = [_mig_apply.layout(gpu) for gpu in gpus]
    assert rollback['restored'] is (now == previous), (rollback, now, previous)
    for gpu in gpus:
        if now[gpu['index']] != previous[gpu['index']]:
            assert 'GPU %s (%s) is now %s;' % (gpu['index'], gpu['uuid'], _mig_apply.describe_layout(gpu)) in result['msg']
    empty = ['GPU %s (%s): GPU instance %s at %s has no compute instance' % (gpu['index'], gpu['uuid'], gi['profile'], gi['placement']['start'])
             for gpu in gpus for gi in gpu['mig']['gpu_instances'] if gpu['mig']['current'] and not gi['compute_instances']]
    assert rollback['unusable'] == empty
    assert ('ROLLBACK INCOMPLETE' in result['msg']) is not rollback['restored']


@pytest.mark.parametrize('position', range(15))
def test_a_transient_fault_at_any_rollback_call_is_retried_and_the_previous_layout_comes_back(host, tmp_path, position):
    """The step at `position` fails, and then one rollback call, for every call of that rollback (one at a time)."""
    cache = _previous(host, tmp_path)
    steps, previous = cache['steps'], cache['layouts']
    assert len(steps) == 15 and previous == host.layouts()
    calls = _rollback_calls(host, tmp_path, steps, position)
    assert (calls >= 1) is (position > 0)  # the first step failing leaves nothing to undo
    step_call = _nvml_calls_before(steps, position) + (0 if steps[position]['action'] == 'reset_gpu' else 1)
    for j in range(1, calls + 1):
        _previous(host, tmp_path)
        nth = '%d,%d' % (step_call, step_call + j) if steps[position]['action'] != 'reset_gpu' else str(step_call + j)
        result = _fail(host, tmp_path, steps, position, nth)
        assert result['failure']['step_number'] == position + 1, (j, result['msg'])
        assert host.layouts() == previous, (j, result['msg'])
        rollback = result['rollback']
        assert rollback['restored'] is True and rollback['errors'] == [] and 'rolled back' in result['msg'], (j, result['msg'])
        assert [s.get('tries', 1) for s in rollback['steps']].count(2) == 1, (j, rollback['steps'])


@pytest.mark.parametrize('position', range(15))
def test_a_permanent_fault_from_any_step_on_is_reported_exactly(host, tmp_path, position):
    """Every mutating NVML call fails from the step at `position` on: nothing can be repaired, and the result says so."""
    cache = _previous(host, tmp_path)
    steps = cache['steps']
    first = _nvml_calls_before(steps, position) + 1
    result = _fail(host, tmp_path, steps, position, '%d+' % first)
    gpus = _observed(host)
    _assert_exact(result, gpus, cache['layouts'])
    assert result['failure']['step_number'] == position + 1 and result['rollback']['repairs'] == []


@pytest.mark.parametrize('position', range(15))
def test_a_permanent_fault_of_one_function_leaves_every_gpu_usable(host, tmp_path, position):
    """Every call of the failed step's NVML function fails from that step on: the rollback restores what it can, and
    repairs the rest: no GPU instance is left without a compute instance, and the result says what each GPU holds."""
    cache = _previous(host, tmp_path)
    steps = cache['steps']
    action = steps[position]['action']
    if action != 'reset_gpu':  # the fake nvidia-smi refuses every reset
        nth = sum(1 for s in steps[:position + 1] if s['action'] == action)
        host.ctl('fault', 'set', '--call', NVML_CALL[action], '--error', 'NVML_ERROR_UNKNOWN', '--nth', '%d+' % nth)
    result = _fail(host, tmp_path, steps, position, '')
    gpus = _observed(host)
    _assert_exact(result, gpus, cache['layouts'])
    assert result['rollback']['unusable'] == [], result['msg']
    if action == 'destroy_compute_instance':  # nothing to undo but what it could not destroy
        assert result['rollback']['restored'] is True


def test_retries_are_bounded_and_wait_a_short_backoff(host, tmp_path):
    cache = _previous(host, tmp_path)
    slept = []
    host.ctl('fault', 'set', '--call', '*', '--error', 'NVML_ERROR_UNKNOWN', '--nth', '5+')
    result = host.apply(DECLARED, sleep=slept.append)
    assert result['rollback']['errors'] and all('(3 tries)' in e for e in result['rollback']['errors'][:4]), result['rollback']['errors']
    assert slept[:2] == [0.05, 0.2] and sum(slept) <= 2.0
    assert host.layouts() != cache['layouts'] and 'ROLLBACK INCOMPLETE' in result['msg']
