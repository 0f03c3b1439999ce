# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plans: minimal, ordered, safe, deterministic, and executable under the simulator's MIG rules."""
from __future__ import annotations

import copy
import json
import random

import pytest

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _mig

from mig_support import MIG_MODELS, apply_on_sim, gi_id, load_model, model_gpu  # pylint: disable=import-error

H100 = 'h100-80gb-hbm3'
SEVEN_1G = tuple(('1g.10gb', start) for start in range(7))


def _plan(gpus, declaration, **kwargs) -> _mig.HostPlan:
    return _mig.plan_host('node1', gpus, declaration, **kwargs)


def _actions(plan) -> list[tuple]:
    return [(s['action'], s['gpu']) for s in plan.steps]


def _ids_touched(plan) -> set[int]:
    return {s['gpu_instance_id'] for s in plan.steps if s.get('gpu_instance_id') is not None}


def test_changing_one_of_seven_1g_instances_destroys_one_and_creates_one():
    gpu = model_gpu(H100, instances=SEVEN_1G)
    plan = _plan([gpu], [{'devices': 'all', 'instances': [{'profile': '1g.10gb', 'count': 6}, {'profile': '1g.10gb+me'}]}])
    assert [s['action'] for s in plan.steps] == [
        'destroy_compute_instance', 'destroy_gpu_instance', 'create_gpu_instance', 'create_compute_instance']
    destroyed = plan.steps[1]
    assert plan.steps[2]['start'] == destroyed['start'] and plan.steps[2]['profile'] == '1g.10gb+me'
    kept = {g['id'] for g in gpu['mig']['gpu_instances']} - {destroyed['gpu_instance_id']}
    assert len(kept) == 6 and not kept & _ids_touched(plan)


def test_among_equally_small_plans_the_instance_a_process_uses_is_kept():
    declaration = [{'devices': 'all', 'instances': [{'profile': '1g.10gb', 'count': 6}, {'profile': '1g.10gb+me'}]}]
    idle = _plan([model_gpu(H100, instances=SEVEN_1G)], declaration)
    assert idle.steps[1]['start'] == 6  # the tie-break's choice when nothing runs
    busy = model_gpu(H100, instances=SEVEN_1G, processes=((4242, gi_id(load_model(H100), 6, 1), 0),))
    plan = _plan([busy], declaration)
    assert len(plan.steps) == 4 and plan.steps[1]['action'] == 'destroy_gpu_instance'
    assert plan.steps[1]['start'] != 6 and plan.steps[1]['pids'] == []


def test_a_matching_gpu_needs_no_step_with_or_without_declared_starts():
    gpu = model_gpu(H100, instances=(('4g.40gb', 0), ('1g.20gb', 4), ('1g.10gb', 6)))
    for instances in ([{'profile': '1g.10gb'}, {'profile': '4g.40gb'}, {'profile': '1g.20gb'}],
                      [{'profile': '1g.10gb', 'start': 6}, {'profile': '4g.40gb', 'start': 0}, {'profile': '1g.20gb', 'start': 4}]):
        plan = _plan([gpu], [{'devices': 'all', 'instances': instances}])
        assert plan.steps == [] and not plan.changed and not plan.reboot_required
        assert plan.before == plan.after


def test_a_declared_start_moves_an_instance_that_sits_elsewhere():
    gpu = model_gpu(H100, instances=(('3g.40gb', 0),))
    plan = _plan([gpu], [{'devices': 'all', 'instances': [{'profile': '3g.40gb', 'start': 4}]}])
    assert [(s['action'], s.get('start')) for s in plan.steps if 'gpu_instance' in s['action']] == [
        ('destroy_gpu_instance', 0), ('create_gpu_instance', 4)]


def test_new_compute_instances_in_a_kept_gpu_instance_leave_the_gpu_instance_alone():
    gpu = model_gpu(H100, instances=(('3g.40gb', 0), ('3g.40gb', 4)))
    plan = _plan([gpu], [{'devices': 'all', 'instances': [{'profile': '3g.40gb'}, {'profile': '3g.40gb', 'compute_instances': ['1c'] * 3}]}])
    actions = [s['action'] for s in plan.steps]
    assert actions == ['destroy_compute_instance'] + ['create_compute_instance'] * 3
    assert {s['gpu_instance_id'] for s in plan.steps} == {plan.steps[0]['gpu_instance_id']}
    assert all(s['gpu_instance_id'] is not None for s in plan.steps)


def test_mode_change_resets_only_the_gpu_whose_mode_changes():
    gpus = [model_gpu(H100, 0, current=False), model_gpu(H100, 1, instances=(('7g.80gb', 0),))]
    plan = _plan(gpus, [{'devices': 'all', 'instances': [{'profile': '7g.80gb'}]}])
    assert _actions(plan) == [('set_mig_mode', 0), ('reset_gpu', 0), ('create_gpu_instance', 0), ('create_compute_instance', 0)]
    assert plan.steps[1]['bus_id'] == gpus[0]['pci']['bus_id'] and plan.steps[0]['enabled'] is True


def test_a_mode_already_pending_needs_the_reset_only():
    gpu = model_gpu(H100, current=False, pending=True)
    plan = _plan([gpu], [{'devices': 'all', 'enabled': True}])
    assert _actions(plan) == [('reset_gpu', 0)]


def test_a_pending_change_the_declaration_does_not_want_is_cancelled_without_reset():
    gpu = model_gpu(H100, current=True, pending=False, instances=(('7g.80gb', 0),))
    plan = _plan([gpu], [{'devices': 'all', 'instances': [{'profile': '7g.80gb'}]}])
    assert _actions(plan) == [('set_mig_mode', 0)] and plan.steps[0]['enabled'] is True


def test_without_a_possible_reset_the_gpu_waits_for_a_reboot_and_instance_steps_are_deferred():
    gpus = [model_gpu(H100, 0, current=False), model_gpu(H100, 1, current=False)]
    plan = _plan(gpus, [{'devices': 'all', 'instances': [{'profile': '3g.40gb', 'count': 2}]}],
                 reset_possible={0: False, 'GPU-h100-80gb-hbm3-0001': True})
    assert _actions(plan)[:1] == [('set_mig_mode', 0)] and ('reset_gpu', 0) not in _actions(plan)
    assert all(s['gpu'] == 1 for s in plan.steps[1:]) and ('reset_gpu', 1) in _actions(plan)
    assert plan.reboot_required == [{'gpu': 0, 'uuid': gpus[0]['uuid'], 'reason': 'MIG mode change needs a GPU reset, which is not possible here'}]
    assert [s['action'] for s in plan.deferred[0]['steps']] == ['create_gpu_instance'] * 2 + ['create_compute_instance'] * 2
    after = apply_on_sim(gpus, plan.steps, {0: H100, 1: H100})
    assert after[0]['mig']['pending'] and not after[0]['mig']['current']
    assert not _mig.verify(plan.desired, after)


def test_disabling_mig_destroys_instances_before_the_mode_changes():
    gpu = model_gpu(H100, instances=(('3g.40gb', 0, [1, 1, 1]), ('2g.20gb', 4)))
    plan = _plan([gpu], [{'devices': [0], 'enabled': False}])
    assert [s['action'] for s in plan.steps] == ['destroy_compute_instance'] * 4 + ['destroy_gpu_instance'] * 2 + ['set_mig_mode', 'reset_gpu']
    after = apply_on_sim([gpu], plan.steps, {0: H100})
    assert not _mig.verify(plan.desired, after) and not after[0]['mig']['current']


def test_gpus_no_entry_selects_get_no_step():
    gpus = [model_gpu(H100, 0, current=False), model_gpu(H100, 1, instances=(('7g.80gb', 0),))]
    plan = _plan(gpus, [{'devices': [0], 'instances': []}])
    assert {s['gpu'] for s in plan.steps} == {0} and [g.index for g in plan.gpus] == [0]


def test_an_entry_without_instances_changes_the_mode_only():
    gpu = model_gpu(H100, instances=(('3g.40gb', 0), ('1g.10gb', 5)))
    plan = _plan([gpu], [{'devices': 'all', 'enabled': True}])
    assert plan.steps == [] and plan.after == plan.before
    assert _plan([gpu], [{'devices': 'all', 'instances': []}]).steps[-1]['action'] == 'destroy_gpu_instance'


def test_processes_block_destroying_their_instance_unless_disruption_is_allowed():
    model = load_model(H100)
    gpu = model_gpu(H100, instances=(('3g.40gb', 0), ('3g.40gb', 4)), processes=((4242, gi_id(model, 0, 4), 0), (4343, gi_id(model, 0, 4), 0)))
    declaration = [{'name': 'train', 'devices': 'all', 'instances': [{'profile': '3g.40gb', 'start': 4}, {'profile': '2g.20gb', 'start': 0}]}]
    with pytest.raises(_mig.MigPlanError) as info:
        _plan([gpu], declaration)
    assert len(info.value.errors) == 2  # the compute instance and its GPU instance
    assert all("GPU 0 (GPU-h100-80gb-hbm3-0000): entry 'train':" in e and '4242, 4343' in e and 'allow_disruption' in e for e in info.value.errors)
    declaration[0]['allow_disruption'] = True
    plan = _plan([gpu], declaration)
    assert plan.steps[0]['pids'] == [4242, 4343] and plan.steps[1]['pids'] == [4242, 4343]
    assert not _mig.verify(plan.desired, apply_on_sim([gpu], plan.steps, {0: H100}))


def test_processes_block_a_mode_change_unless_disruption_is_allowed():
    gpu = model_gpu(H100, current=False, processes=((777, None, None),))
    with pytest.raises(_mig.MigPlanError, match=r'changing the MIG mode would disrupt process\(es\) 777') as info:
        _plan([gpu], [{'devices': 'all'}])
    assert any('resetting the GPU would disrupt process(es) 777' in e for e in info.value.errors)
    plan = _plan([gpu], [{'devices': 'all', 'allow_disruption': True}])
    assert [s['pids'] for s in plan.steps] == [[777], [777]]


def test_plans_are_deterministic_whatever_the_order_of_the_facts():
    gpus = [model_gpu(H100, 0, instances=(('1g.10gb', 2), ('2g.20gb', 4), ('1g.20gb', 6))), model_gpu('a100-sxm4-40gb', 1, current=False)]
    declaration = [{'devices': [0], 'instances': [{'profile': '1g.10gb', 'count': 3}, {'profile': '3g.40gb'}]},
                   {'devices': [1], 'instances': [{'profile': '2g.10gb', 'count': 2}, {'profile': '1g.5gb', 'count': 3}]}]
    first = json.dumps(_plan(gpus, declaration).as_dict(), sort_keys=True)
    shuffler = random.Random(7)
    for _round in range(10):
        shuffled = copy.deepcopy(gpus)
        shuffler.shuffle(shuffled)
        for gpu in shuffled:
            shuffler.shuffle(gpu['mig']['gpu_instances'])
        assert json.dumps(_plan(shuffled, declaration).as_dict(), sort_keys=True) == first


def _random_layout(rng: random.Random, gpu: dict) -> list[dict]:
    """A random placeable declaration: add random profiles while the planner accepts them."""
    instances: list[dict] = []
    profiles = [p['name'] for p in gpu['mig']['profiles']]
    for _try in range(12):
        item = {'profile': rng.choice(profiles)}
        if rng.random() < 0.3:
            item['compute_instances'] = ['1c'] * int(item['profile'].split('g')[0])
        candidate = instances + [item]
        if not _mig.validate('h', [gpu], [{'devices': 'all', 'instances': candidate}]):
            instances = candidate
    return instances


@pytest.mark.parametrize('key', MIG_MODELS)
def test_random_transitions_apply_on_the_simulator_verify_and_replan_to_nothing(key):
    rng = random.Random(key)
    gpu = model_gpu(key)
    for _round in range(25):
        target = [{'devices': 'all', 'instances': _random_layout(rng, gpu)}]
        plan = _plan([gpu], target)
        after = apply_on_sim([gpu], plan.steps, {0: key})
        assert _mig.verify(plan.desired, after) == []
        replan = _plan(after, target)
        assert replan.steps == [] and replan.before == plan.after
        destroyed = sum(1 for s in plan.steps if s['action'] == 'destroy_gpu_instance')
        assert destroyed <= len(gpu['mig']['gpu_instances'])
        gpu = after[0]


def test_verify_reports_missing_and_unexpected_instances_and_modes():
    gpu = model_gpu(H100)
    plan = _plan([gpu], [{'devices': 'all', 'instances': [{'profile': '3g.40gb', 'start': 4, 'compute_instances': ['1c', '2c']}]}])
    wrong = model_gpu(H100, instances=(('3g.40gb', 0, [2, 1]),))
    assert _mig.verify(plan.desired, [wrong]) == [
        'GPU 0 (GPU-h100-80gb-hbm3-0000): missing GPU instance 3g.40gb at 4 with compute instances [2c, 1c]',
        'GPU 0 (GPU-h100-80gb-hbm3-0000): unexpected GPU instance 3g.40gb at 0 with compute instances [2c, 1c]']
    assert _mig.verify(plan.desired, [model_gpu(H100, current=False)]) == [
        'GPU 0 (GPU-h100-80gb-hbm3-0000): pending MIG mode is False, wanted True',
        'GPU 0 (GPU-h100-80gb-hbm3-0000): current MIG mode is False, wanted True']
    assert _mig.verify(plan.desired, []) == ['GPU 0 (GPU-h100-80gb-hbm3-0000): not found after apply']


def test_before_and_after_are_declarations_and_after_plans_to_nothing_once_applied():
    gpu = model_gpu(H100, instances=(('7g.80gb', 0),))
    plan = _plan([gpu], [{'devices': 'all', 'instances': [{'profile': '2g.20gb', 'count': 3, 'compute_instances': ['1c', '1c']}]}])
    assert plan.before == [{'devices': [0], 'enabled': True, 'instances': [{'profile': '7g.80gb', 'start': 0}]}]
    assert plan.after == [{'devices': [0], 'enabled': True, 'instances': [
        {'profile': '2g.20gb', 'start': s, 'compute_instances': ['1c', '1c']} for s in (0, 2, 4)]}]
    after = apply_on_sim([gpu], plan.steps, {0: H100})
    assert _plan(after, plan.after).steps == []


def test_steps_carry_the_ids_nvml_needs():
    gpu = model_gpu(H100, instances=(('4g.40gb', 0),))
    plan = _plan([gpu], [{'devices': 'all', 'instances': [{'profile': '3g.40gb', 'start': 4, 'compute_instances': ['2c', '1c']},
                                                          {'profile': '4g.40gb'}]}])
    assert plan.steps == [
        {'gpu': 0, 'uuid': gpu['uuid'], 'action': 'create_gpu_instance', 'profile': '3g.40gb', 'profile_id': 9, 'start': 4, 'size': 4},
        {'gpu': 0, 'uuid': gpu['uuid'], 'action': 'create_compute_instance', 'gpu_instance_id': None, 'gpu_instance_start': 4,
         'gpu_instance_profile': '3g.40gb', 'profile': '2c.3g.40gb', 'profile_id': 1, 'slices': 2, 'start': 0},
        {'gpu': 0, 'uuid': gpu['uuid'], 'action': 'create_compute_instance', 'gpu_instance_id': None, 'gpu_instance_start': 4,
         'gpu_instance_profile': '3g.40gb', 'profile': '1c.3g.40gb', 'profile_id': 0, 'slices': 1, 'start': 2}]
