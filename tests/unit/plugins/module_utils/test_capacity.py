# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The capacity planner: demands in, gpu_mig / gpu_vgpu out, checked by the MIG and vGPU planners themselves.

GPU facts come from the simulator's model files (mig_support.model_gpu, plus the vGPU types of A40 and T4).
The property tests draw random fleets and demands and check every plan with the MIG planner (and the simulator's
MIG rules) and the vGPU planner: no emitted declaration is refused, and every demanded instance appears once.
"""
from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _capacity, _capacity_model, _mig, _vgpu

from mig_support import MIG_MODELS, apply_on_sim, load_model, model_gpu  # pylint: disable=import-error

VGPU_MODELS = ('a40', 't4')
ALL_MODELS = MIG_MODELS + VGPU_MODELS + ('v100-sxm2-32gb',)


def gpu(key: str, index: int = 0, **kwargs) -> dict:
    """Facts of one simulated GPU; vGPU models report their types as gpu_facts does in host vGPU mode."""
    facts = model_gpu(key, index, current=kwargs.pop('current', False), **kwargs)
    model = load_model(key)
    facts['memory']['total_mib'] = model['memory_total_bytes'] >> 20
    if model.get('vgpu') and not model.get('mig'):
        facts['vgpu'].update(virtualization_mode='host_vgpu', host_mode='non_sriov')
        facts['vgpu']['supported_types'] = [{'id': t['id'], 'name': t['name'], 'framebuffer_mib': t['framebuffer_bytes'] >> 20,
                                             'max_instances': t['max_instances']} for t in model['vgpu']['types']]
    return facts


def view(facts: dict) -> _vgpu.GpuView:
    """The GPU as the vGPU module observes it: every supported type available at full capacity, no devices."""
    types = [_vgpu.VgpuType('nvidia-%d' % t['id'], t['name'], t['max_instances'], t['max_instances'])
             for t in facts['vgpu']['supported_types']]
    return _vgpu.GpuView(index=facts['index'], uuid=facts['uuid'], name=facts['name'], bus_id=facts['pci']['bus_id'],
                         parent='0000:%02x:00.0' % (0x18 + facts['index']), types=types, pci=facts['pci'])


def tenants(count: int = 4, memory: float = 15, isolation: str = 'mig', tenant: str = 'x', **extra) -> list[dict]:
    return [dict({'tenant': tenant, 'memory_gb': memory, 'count': count, 'isolation': isolation}, **extra)]


def check_plan(fleet: dict, demands: list[dict], result: dict) -> None:
    """The invariants every plan keeps: the planners accept it, and every demanded instance appears once."""
    keys = {}
    for host, gpus in fleet.items():
        declarations = result['hosts'][host]
        plan = _mig.plan_host(host, gpus, declarations['gpu_mig'])  # raises MigPlanError on any problem
        after = apply_on_sim(gpus, plan.steps, {g['index']: keys.setdefault((host, g['index']), g['uuid'].split('-', 1)[1].rsplit('-', 1)[0])
                                                for g in gpus})
        assert _mig.verify(plan.desired, after) == []
        vgpu_gpus = [view(g) for g in gpus if g['vgpu']['supported_types']]
        _vgpu.plan_host(host, vgpu_gpus, declarations['gpu_vgpu'])  # raises VgpuPlanError on any problem
        # what the declarations create equals what the assignments say
        declared = Counter()
        for entry in declarations['gpu_mig']:
            index = next(g['index'] for g in gpus if g['uuid'] == entry['devices']['uuids'][0])
            for item in entry['instances']:
                declared[(index, item['profile'])] += item['count']
        for entry in declarations['gpu_vgpu']:
            index = next(g['index'] for g in gpus if g['uuid'] == entry['devices']['uuids'][0])
            declared[(index, entry['type'])] += entry['count']
        assigned = Counter((a['gpu'], a.get('profile') or a.get('type')) for a in result['assignments'] if a['host'] == host)
        assert declared == assigned
    seen = Counter((a['demand'], a['instance']) for a in result['assignments'])
    wanted = Counter((number, i) for number, d in enumerate(demands, 1) for i in range(d.get('count', 1)))
    assert seen == wanted
    for item in result['assignments']:
        demand = demands[item['demand'] - 1]
        assert item['memory_gb'] >= demand['memory_gb']
        assert demand.get('isolation', 'any') in ('any', item['isolation'])
    assert result['lower_bound'] <= result['gpus_used'] <= result['gpus_total']
    assert len(result['unused']) == result['gpus_total']


# ---------------------------------------------------------------------------------------------------------
# Behaviour


def test_a100_80gb_four_tenants_of_15_gb_get_four_1g_20gb():
    fleet = {'h1': [gpu('a100-sxm4-80gb')]}
    result = _capacity.plan(fleet, tenants())
    assert result['hosts']['h1']['gpu_mig'] == [{'name': 'capacity plan: GPU 0 (x)', 'devices': {'uuids': ['GPU-a100-sxm4-80gb-0000']},
                                                 'enabled': True, 'instances': [{'profile': '1g.20gb', 'count': 4}]}]
    assert result['hosts']['h1']['gpu_vgpu'] == []
    assert (result['gpus_used'], result['lower_bound']) == (1, 1)
    assert [a['profile'] for a in result['assignments']] == ['1g.20gb'] * 4
    assert result['unused'] == [{'host': 'h1', 'gpu': 0, 'uuid': 'GPU-a100-sxm4-80gb-0000', 'model': 'NVIDIA A100-SXM4-80GB', 'mode': 'mig',
                                 'instances': 4, 'free_memory_slices': 0, 'free_memory_gb': 0.0, 'free_compute_slices': 3}]
    assert result['report'] == ['GPUs used: 1 of 1 (lower bound 1); 0 GB left free',
                                'h1 GPU 0 NVIDIA A100-SXM4-80GB: mig x:1g.20gb x:1g.20gb x:1g.20gb x:1g.20gb; free 0 GB, 0 memory / 3 compute slices']
    check_plan(fleet, tenants(), result)


def test_the_smallest_profile_that_holds_the_demand_is_chosen():
    fleet = {'h1': [gpu('a100-sxm4-80gb')]}
    demands = tenants(count=1, memory=10) + tenants(count=1, memory=30, tenant='y') + tenants(count=1, memory=5, tenant='z', compute_slices=2)
    result = _capacity.plan(fleet, demands)
    assert sorted(a['profile'] for a in result['assignments']) == ['1g.10gb', '2g.20gb', '3g.40gb']
    unused = result['unused'][0]
    assert (unused['free_memory_slices'], unused['free_compute_slices'], unused['free_memory_gb']) == (1, 1, 10.0)


def test_compute_share_asks_for_compute_slices():
    fleet = {'h1': [gpu('h100-80gb-hbm3')]}
    result = _capacity.plan(fleet, tenants(count=2, memory=10, compute_share=0.4))
    assert [a['profile'] for a in result['assignments']] == ['3g.40gb', '3g.40gb']


def test_media_extension_profiles_are_not_spent_on_plain_demands():
    result = _capacity.plan({'h1': [gpu('a100-sxm4-80gb')]}, tenants(count=7, memory=10))
    assert result['hosts']['h1']['gpu_mig'][0]['instances'] == [{'profile': '1g.10gb', 'count': 7}]


def test_headroom_leaves_memory_unallocated_and_can_make_a_demand_infeasible():
    fleet = {'h1': [gpu('a100-sxm4-80gb')]}
    with pytest.raises(_capacity.CapacityError) as info:
        _capacity.plan(fleet, tenants(), headroom_gb=10)
    assert "tenant 'x'" in str(info.value) and '1 of 4 instance(s)' in str(info.value)
    assert 'needs 1 more NVIDIA A100-SXM4-80GB-class GPU(s) (3 per GPU) / 15 GB more memory' in str(info.value)
    result = _capacity.plan(fleet, tenants(count=3), headroom_percent=10)  # 8 GB -> one 10 GB slice kept free
    assert result['unused'][0]['free_memory_slices'] == 2
    two = {'h1': [gpu('a100-sxm4-80gb'), gpu('a100-sxm4-80gb', 1)]}
    result = _capacity.plan(two, tenants(), headroom_gb=10)
    assert result['gpus_used'] == 2 and result['lower_bound'] == 2
    assert all(u['free_memory_slices'] >= 1 for u in result['unused'])


def test_vgpu_headroom_limits_the_count():
    fleet = {'h1': [gpu('a40')]}
    assert _capacity.plan(fleet, tenants(count=6, memory=8, isolation='vgpu'))['hosts']['h1']['gpu_vgpu'][0]['count'] == 6
    with pytest.raises(_capacity.CapacityError, match='1 of 6 instance'):
        _capacity.plan(fleet, tenants(count=6, memory=8, isolation='vgpu'), headroom_gb=4)


def test_model_constraints_choose_the_gpus():
    fleet = {'h1': [gpu('a100-sxm4-80gb'), gpu('h100-80gb-hbm3', 1)]}
    result = _capacity.plan(fleet, tenants(count=2, memory=20, models=['H100 80GB HBM3']))
    assert {a['model'] for a in result['assignments']} == {'NVIDIA H100 80GB HBM3'}
    result = _capacity.plan(fleet, tenants(count=2, memory=20, models=['NVIDIA A100-SXM4-80GB']))
    assert {a['gpu'] for a in result['assignments']} == {0}
    with pytest.raises(_capacity.CapacityError, match="tenant 'x'.*no GPU in the fleet can hold one"):
        _capacity.plan(fleet, tenants(count=1, memory=10, models=['NVIDIA A30']))


def test_isolation_picks_mig_or_vgpu_gpus():
    fleet = {'h1': [gpu('a100-sxm4-80gb')], 'h2': [gpu('a40')]}
    result = _capacity.plan(fleet, tenants(count=3, memory=8, isolation='vgpu') + tenants(count=2, memory=8, tenant='m', isolation='any'))
    vgpu = [a for a in result['assignments'] if a['tenant'] == 'x']
    assert {(a['host'], a['isolation'], a['type']) for a in vgpu} == {('h2', 'vgpu', 'A40-8Q')}
    # 'any' fills the open A40 before a MIG GPU is opened
    assert result['hosts']['h2']['gpu_vgpu'] == [{'name': 'capacity plan: GPU 0 (x, m)', 'devices': {'uuids': ['GPU-a40-0000']},
                                                  'type': 'A40-8Q', 'count': 5}]
    assert result['hosts']['h1'] == {'gpu_mig': [], 'gpu_vgpu': []} and result['gpus_used'] == 1
    check_plan(fleet, tenants(count=3, memory=8, isolation='vgpu') + tenants(count=2, memory=8, tenant='m', isolation='any'), result)
    with pytest.raises(_capacity.CapacityError, match="tenant 'v'.*no GPU in the fleet can hold one"):
        _capacity.plan({'h1': [gpu('a100-sxm4-80gb')]}, tenants(count=1, memory=8, isolation='vgpu', tenant='v'))


def test_one_vgpu_type_per_gpu_and_the_series_constraint():
    fleet = {'h1': [gpu('a40')]}
    demands = tenants(count=2, memory=4, isolation='vgpu') + tenants(count=1, memory=12, isolation='vgpu', tenant='big')
    result = _capacity.plan(fleet, demands)
    assert result['hosts']['h1']['gpu_vgpu'] == [{'name': 'capacity plan: GPU 0 (big, x)', 'devices': {'uuids': ['GPU-a40-0000']},
                                                  'type': 'A40-12Q', 'count': 3}]
    assert result['unused'][0]['free_vgpus'] == 1
    assert result['report'][1] == 'h1 GPU 0 NVIDIA A40: vgpu x:A40-12Q x:A40-12Q big:A40-12Q; free 12 GB, 1 more A40-12Q'
    result = _capacity.plan({'h1': [gpu('t4')]}, tenants(count=2, memory=8, isolation='vgpu', vgpu_series=['C']))
    assert result['hosts']['h1']['gpu_vgpu'][0]['type'] == 'T4-8C'


def test_vgpu_compute_share_caps_the_vgpus_on_a_gpu():
    fleet = {'h1': [gpu('a40'), gpu('a40', 1)]}
    result = _capacity.plan(fleet, tenants(count=4, memory=1, isolation='vgpu', compute_share=0.5))
    assert sorted(e['count'] for e in result['hosts']['h1']['gpu_vgpu']) == [2, 2]


def test_infeasible_demands_are_all_named_with_their_shortfall():
    fleet = {'h1': [gpu('a100-sxm4-80gb')], 'h2': [gpu('a30')]}
    demands = tenants(count=4, memory=40, tenant='big') + tenants(count=1, memory=200, tenant='huge')
    with pytest.raises(_capacity.CapacityError) as info:
        _capacity.plan(fleet, demands)
    errors = info.value.errors
    assert len(errors) == 2
    assert errors[0].startswith("tenant 'big' (demand 1): 2 of 4 instance(s) of 40 GB")
    assert 'needs 1 more NVIDIA A100-SXM4-80GB-class GPU(s) (2 per GPU) / 80 GB more memory' in errors[0]
    assert errors[1].startswith("tenant 'huge' (demand 2): 1 of 1") and 'no GPU in the fleet can hold one' in errors[1]


@pytest.mark.parametrize('demands, needle', [
    ({'tenant': 'x'}, 'must be a list'),
    ([{'memory_gb': 10}], 'tenant must name the tenant'),
    ([{'tenant': 'x', 'memory_gb': -1}], "tenant 'x'): memory_gb must be a positive number"),
    ([{'tenant': 'x', 'memory_gb': 1, 'isolation': 'sriov'}], 'isolation must be one of mig, vgpu, any'),
    ([{'tenant': 'x', 'memory_gb': 1, 'count': 'two'}], 'count must be a non-negative integer'),
    ([{'tenant': 'x', 'memory_gb': 1, 'colour': 'red'}], 'unknown key(s) colour'),
    ([{'tenant': 'x', 'memory_gb': 1, 'models': 'A100'}], 'models must be a non-empty list'),
    ([{'tenant': 'x', 'memory_gb': 1, 'isolation': 'vgpu', 'compute_slices': 2}], 'compute_slices applies to MIG only'),
    ([{'tenant': 'x', 'memory_gb': 1, 'compute_share': 2}], 'compute_share must be a number in (0, 1]'),
])
def test_malformed_demands(demands, needle):
    with pytest.raises(_capacity.CapacityError) as info:
        _capacity.plan({'h1': [gpu('a30')]}, demands)
    assert needle in str(info.value)


def test_fleet_shapes_accepted_and_lost_gpus_skipped():
    a30 = gpu('a30')
    lost = dict(gpu('a30', 1), status='lost')
    for shape in ([a30, lost], {'gpus': [a30, lost]}, {'ansible_facts': {'gpus': [a30, lost]}}):
        result = _capacity.plan({'h1': shape, 'empty': []}, tenants(count=1, memory=6))
        assert result['gpus_total'] == 1 and result['hosts']['empty'] == {'gpu_mig': [], 'gpu_vgpu': []}
    with pytest.raises(_capacity.CapacityError, match='must map each host'):
        _capacity.plan({'h1': 'nope'}, tenants())


def test_existing_layouts_do_not_change_the_plan_and_are_kept():
    demands = tenants()
    first = _capacity.plan({'h1': [gpu('a100-sxm4-80gb')]}, demands)
    applied = gpu('a100-sxm4-80gb', current=True, instances=tuple(('1g.20gb', s) for s in (0, 2, 4, 6)))
    again = _capacity.plan({'h1': [applied]}, demands)
    assert again['hosts'] == first['hosts']
    assert _mig.plan_host('h1', [applied], again['hosts']['h1']['gpu_mig']).steps == []


def test_an_instance_in_use_that_would_go_fails_the_check():
    busy = gpu('a100-sxm4-80gb', current=True, instances=(('7g.80gb', 0),), processes=((4242, 0, 0),))
    with pytest.raises(_capacity.CapacityError, match='4242'):
        _capacity.plan({'h1': [busy]}, tenants())
    assert _capacity.plan({'h1': [busy]}, tenants(), check=False)['gpus_used'] == 1


def test_lower_bound_counts_memory_instances_and_compute():
    fleet = {'h1': [gpu('a100-sxm4-80gb', i) for i in range(8)]}
    result = _capacity.plan(fleet, tenants(count=10, memory=35))  # 3g.40gb, 2 per GPU
    assert (result['gpus_used'], result['lower_bound']) == (5, 5)
    result = _capacity.plan(fleet, tenants(count=15, memory=5))  # 1g.10gb, 7 per GPU by compute slices
    assert (result['gpus_used'], result['lower_bound']) == (3, 3)
    assert result['free_memory_gb'] == 8 * 80 - 15 * 10


def test_fleet_packing_fills_open_gpus_before_opening_new_ones():
    fleet = {'h%d' % h: [gpu('h100-80gb-hbm3', i) for i in range(2)] for h in range(3)}
    demands = tenants(count=3, memory=40, tenant='a') + tenants(count=5, memory=10, tenant='b') + tenants(count=1, memory=20, tenant='c')
    result = _capacity.plan(fleet, demands)
    assert result['gpus_used'] == 3 and result['lower_bound'] == 3
    check_plan(fleet, demands, result)


# ---------------------------------------------------------------------------------------------------------
# Exact for one GPU: nothing cheaper is placeable, and nothing placeable is refused


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(MIG_MODELS),
       needs=st.lists(st.tuples(st.sampled_from([3, 5, 6, 10, 12, 15, 18, 20, 24, 30, 40, 60]), st.integers(0, 3)), min_size=1, max_size=3))
def test_one_gpu_search_is_exact(key, needs):
    model = _capacity.build_model(gpu(key), 0, 0)
    wants = tuple((float(memory), slices, 0.0, None) for memory, slices in needs)
    found = _capacity.solve_mig(model, wants)
    candidates = [_capacity_model.mig_candidates(model, w) for w in wants]
    best = None
    for combo in itertools.product(*candidates):
        names = [o.name for o in combo]
        counts = Counter(names)
        declaration = [{'devices': [0], 'enabled': True, 'instances': [{'profile': n, 'count': c} for n, c in counts.items()]}]
        if not _mig.validate('h', [gpu(key, current=True)], declaration):
            cost = (sum(o.memory_slices for o in combo), sum(o.slices for o in combo), sum(o.ofas for o in combo))
            best = cost if best is None else min(best, cost)
    if best is None:
        assert found is None
    else:
        assert found is not None
        assert (sum(o.memory_slices for o in found), sum(o.slices for o in found), sum(o.ofas for o in found)) == best


# ---------------------------------------------------------------------------------------------------------
# Random fleets and demands: every plan is accepted by the planners, and no demand is dropped

MEMORY = st.sampled_from([1, 2, 4, 5, 6, 8, 10, 12, 15, 16, 20, 24, 30, 35, 40, 48, 70, 80, 141])


@st.composite
def fleets(draw):
    hosts = {}
    for h in range(draw(st.integers(1, 3))):
        keys = draw(st.lists(st.sampled_from(ALL_MODELS), min_size=1, max_size=4))
        hosts['h%d' % h] = [gpu(key, i) for i, key in enumerate(keys)]
    return hosts


@st.composite
def demand_sets(draw):
    demands = []
    for number in range(draw(st.integers(1, 4))):
        isolation = draw(st.sampled_from(['mig', 'vgpu', 'any']))
        demand = {'tenant': 't%d' % number, 'memory_gb': draw(MEMORY), 'count': draw(st.integers(0, 6)), 'isolation': isolation}
        if isolation != 'vgpu' and draw(st.booleans()):
            demand['compute_slices'] = draw(st.integers(1, 3))
        if draw(st.integers(0, 4)) == 0:
            demand['compute_share'] = draw(st.sampled_from([0.1, 0.25, 0.5]))
        if draw(st.integers(0, 3)) == 0:
            demand['models'] = [load_model(k)['name'] for k in draw(st.lists(st.sampled_from(ALL_MODELS), min_size=1, max_size=3))]
        demands.append(demand)
    return demands


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleet=fleets(), demands=demand_sets(), headroom=st.sampled_from([0, 0, 5, 10]))
def test_every_plan_is_accepted_and_drops_nothing(fleet, demands, headroom):
    try:
        result = _capacity.plan(fleet, demands, headroom_gb=headroom)
    except _capacity.CapacityError as exc:
        event('infeasible')
        # infeasible: every line names a tenant, its missing count and the memory short
        assert exc.errors and all(line.startswith("tenant '") and 'could not be placed' in line for line in exc.errors)
        short = sum(int(line.split('): ')[1].split(' of ')[0]) for line in exc.errors)
        assert 0 < short <= sum(d['count'] for d in demands)
        return
    event('feasible')
    check_plan(fleet, demands, result)
    total = sum(d['count'] for d in demands)
    assert len(result['assignments']) == total
    assert result['lower_bound'] >= (1 if total else 0)
    assert result['gpus_used'] >= math.ceil(total / 32.0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleet=fleets(), demands=demand_sets(), headroom=st.sampled_from([0, 10]))
def test_one_demand_is_refused_only_when_the_fleet_cannot_hold_it(fleet, demands, headroom):
    demand = demands[0]
    slots = _capacity.build_slots(fleet, headroom_gb=headroom)
    parsed = _capacity.parse_demands([demand])[0]
    room = sum(_capacity._per_gpu(slot.model, parsed) for slot in slots)  # pylint: disable=protected-access
    try:
        _capacity.plan(fleet, [demand], headroom_gb=headroom)
    except _capacity.CapacityError:
        assert room < demand['count']
    else:
        assert room >= demand['count']
