# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The wide rollback sweep of issue 15 (opt-in: marker `sweep`, `make sweep`; not in `make test`).

Nine MIG changes of different kinds, in this process against the simulated NVML. For each, at every step k of the
forward apply (each mutating NVML call; a GPU reset through an nvidia-smi that refuses once), the step fails, and
then, for every mutating NVML call j of that rollback (one at a time), the j-th rollback call fails once too: the
rollback must try it again and end in exactly the previous layout, saying `restored`. The helpers are those of
test_mig_rollback_sim.py (the single-scenario sweep in `make test`).
"""
from __future__ import annotations

import os
import shutil

import pytest

from test_mig_apply_sim import host_fixture  # noqa: F401  pylint: disable=import-error,unused-import
from test_mig_rollback_sim import _fail, _nvml_calls_before, _rollback_calls  # pylint: disable=import-error

pytestmark = pytest.mark.sweep


def _gi(profile: str, start: int | None = None, cis: list[str] | None = None) -> dict:
    entry = {'profile': profile}
    if start is not None:
        entry['start'] = start
    if cis is not None:
        entry['compute_instances'] = cis
    return entry


def _on(devices, *instances) -> dict:
    return {'devices': devices, 'instances': list(instances)}


# name: (GPUs of the host, previous declaration, declared change)
SCENARIOS = {
    'h100-off-to-7x1g': (['h100-80gb-hbm3'], [{'devices': [0], 'enabled': False}],
                         [_on([0], {'profile': '1g.10gb', 'count': 7})]),
    'h100-3g2g1g-to-4g2g1g': (['h100-80gb-hbm3'], [_on([0], _gi('3g.40gb', 0), _gi('2g.20gb', 4), _gi('1g.10gb', 6))],
                              [_on([0], _gi('4g.40gb', 0), _gi('2g.20gb', 4), _gi('1g.10gb', 6))]),
    'h100-compute-instances-in-7g': (['h100-80gb-hbm3'], [_on([0], _gi('7g.80gb', 0, ['1c'] * 7))],
                                     [_on([0], _gi('7g.80gb', 0, ['4c', '2c', '1c']))]),
    'h100-mixed-to-mig-off': (['h100-80gb-hbm3'], [_on([0], _gi('3g.40gb', 4, ['1c', '2c']), _gi('2g.20gb', 0), _gi('1g.10gb', 2))],
                              [{'devices': [0], 'enabled': False}]),
    'h100x2-both-change': (['h100-80gb-hbm3:2'], [_on([0], {'profile': '1g.10gb', 'count': 7}), _on([1], _gi('3g.40gb', 0), _gi('3g.40gb', 4))],
                           [_on([0], _gi('3g.40gb', 0), _gi('3g.40gb', 4)),
                            _on([1], _gi('2g.20gb', 0), _gi('2g.20gb', 2), _gi('1g.10gb', 4), _gi('1g.10gb', 5), _gi('1g.10gb', 6))]),
    'a100-3g3g-to-4g2g1g': (['a100-sxm4-40gb'], [_on([0], _gi('3g.20gb', 0), _gi('3g.20gb', 4))],
                            [_on([0], _gi('4g.20gb', 0), _gi('2g.10gb', 4), _gi('1g.5gb', 6))]),
    'a30-4g-to-2g1g1g': (['a30'], [_on([0], _gi('4g.24gb', 0))], [_on([0], _gi('2g.12gb', 0), _gi('1g.6gb', 2), _gi('1g.6gb', 3))]),
    'h100-mig-parted-counts': (['h100-80gb-hbm3'], [{'devices': [0], 'mig_devices': {'1g.10gb': 7}}],
                               [{'devices': [0], 'mig_devices': {'1c.3g.40gb': 3, '2g.20gb': 1, '1g.10gb': 1}}]),
    'a100-80gb-x2-off-to-on': (['a100-sxm4-80gb:2'], [{'devices': 'all', 'enabled': False}],
                               [_on('all', _gi('3g.40gb'), _gi('2g.20gb'), {'profile': '1g.10gb', 'count': 2})]),
}


def sweep(host, tmp_path, gpus: list[str], previous: list[dict], declared: list[dict]) -> tuple[int, int, list[str]]:
    """Every forward step k failing, with every rollback call j failing once: (forward positions, rollback
    positions checked, what went wrong where)."""
    host.ctl('init', '--hostname', 'node1', *[arg for gpu in gpus for arg in ('--gpu', gpu)])
    assert not host.apply(previous)['failed']
    before = host.layouts()
    steps = host.apply(declared, check_mode=True)['steps']
    assert steps, 'the change changes nothing'
    saved = str(tmp_path / 'previous.json')
    shutil.copy(os.path.join(host.root, 'state.json'), saved)
    checked, failures = 0, []
    for position, step in enumerate(steps):
        shutil.copy(saved, os.path.join(host.root, 'state.json'))
        try:
            calls = _rollback_calls(host, tmp_path, steps, position, declared, transient_reset=True)
        except AssertionError as exc:
            failures.append('step %d (%s) alone: %s' % (position + 1, step['action'], exc))
            continue
        step_call = _nvml_calls_before(steps, position) + (0 if step['action'] == 'reset_gpu' else 1)
        for j in range(1, calls + 1):
            shutil.copy(saved, os.path.join(host.root, 'state.json'))
            nth = '%d,%d' % (step_call, step_call + j) if step['action'] != 'reset_gpu' else str(step_call + j)
            result = _fail(host, tmp_path, steps, position, nth, declared, transient_reset=True)
            checked += 1
            rollback = result.get('rollback') or {}
            retried = [s.get('tries', 1) for s in rollback.get('steps', [])].count(2)
            if (result.get('failure', {}).get('step_number') != position + 1 or host.layouts() != before or rollback.get('restored') is not True
                    or rollback.get('errors') or retried != 1):
                failures.append('step %d (%s), rollback call %d: restored=%s retried=%d: %s' % (
                    position + 1, step['action'], j, rollback.get('restored'), retried, result['msg']))
    return len(steps), checked, failures


@pytest.mark.parametrize('name', sorted(SCENARIOS))
def test_a_transient_fault_at_every_rollback_call_of_every_step_ends_in_the_previous_layout(host, tmp_path, record_property, name):
    forward, rollback, failures = sweep(host, tmp_path, *SCENARIOS[name])
    record_property('sweep', {'scenario': 'mig ' + name, 'forward': forward, 'rollback': rollback, 'failures': len(failures)})
    assert not failures, '\n'.join(failures)
