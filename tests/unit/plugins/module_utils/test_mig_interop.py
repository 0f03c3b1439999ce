# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""mig-parted v1 configs in and out, and the current state exported in the planner's own format."""
from __future__ import annotations

import random

import pytest

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _mig, _mig_parted, _nvidia_formats

from mig_support import MIG_MODELS, apply_on_sim, model_gpu  # pylint: disable=import-error

# The DGX-A100 example config of mig-parted's README (the format is the fact being supported).
README_CONFIG = {
    'version': 'v1',
    'mig-configs': {
        'all-disabled': [{'devices': 'all', 'mig-enabled': False}],
        'all-enabled': [{'devices': 'all', 'mig-enabled': True, 'mig-devices': {}}],
        'all-1g.5gb': [{'devices': 'all', 'mig-enabled': True, 'mig-devices': {'1g.5gb': 7}}],
        'all-balanced': [{'devices': 'all', 'mig-enabled': True, 'mig-devices': {'1g.5gb': 2, '2g.10gb': 1, '3g.20gb': 1}}],
        'custom-config': [
            {'devices': [0, 1, 2, 3], 'mig-enabled': False},
            {'devices': [4], 'mig-enabled': True, 'mig-devices': {'1g.5gb': 7}},
            {'devices': [5], 'mig-enabled': True, 'mig-devices': {'2g.10gb': 3}},
            {'devices': [6], 'mig-enabled': True, 'mig-devices': {'3g.20gb': 2}},
            {'devices': [7], 'mig-enabled': True, 'mig-devices': {'1g.5gb': 2, '2g.10gb': 1, '3g.20gb': 1}},
        ],
    },
}
A100 = 'a100-sxm4-40gb'


def _dgx(current: bool = False) -> list[dict]:
    return [model_gpu(A100, i, current=current) for i in range(8)]


@pytest.mark.parametrize('label', sorted(README_CONFIG['mig-configs']))
def test_readme_configs_apply_on_a_dgx_and_export_back_to_the_same_devices(label):
    gpus = _dgx()
    plan = _mig_parted.plan_mig_parted('dgx', gpus, _mig_parted.parse_mig_parted(README_CONFIG, label))
    after = apply_on_sim(gpus, plan.steps, {i: A100 for i in range(8)})
    assert not _mig.verify(plan.desired, after)
    wanted = {}
    for entry in README_CONFIG['mig-configs'][label]:
        for index in (range(8) if entry['devices'] == 'all' else entry['devices']):
            wanted[index] = (entry['mig-enabled'], entry.get('mig-devices', {}) if entry['mig-enabled'] else None)
    exported = _mig_parted.export_mig_parted(after, 'current')['mig-configs']['current']
    got = {}
    for entry in exported:
        for index in (range(8) if entry['devices'] == 'all' else entry['devices']):
            got[index] = (entry['mig-enabled'], entry.get('mig-devices'))
    assert got == wanted


def test_parse_reads_selectors_filters_and_counts():
    config = {'version': 'v1', 'mig-configs': {'mixed': [
        {'devices': 'all', 'device-filter': '0x20B010DE', 'mig-enabled': True, 'mig-devices': {'1c.3g.20gb': 4, '2g.10gb': 1}},
        {'devices': [2, 3], 'device-filter': ['0x233010de', '0X233510DE'], 'mig-enabled': False},
        {'devices': [5], 'mig-enabled': True, 'mig-devices': {}},
    ]}}
    first, second, third = _mig_parted.parse_mig_parted(config, 'mixed')
    assert (first.name, first.selector, first.enabled, first.mig_devices) == (
        'mixed[0]', _nvidia_formats.NvidiaSelector((_nvidia_formats.DeviceFilter('0x20B010DE', 0x20B0, 0x10DE),), None), True, {'1c.3g.20gb': 4, '2g.10gb': 1})
    assert [(f.device, f.vendor) for f in second.selector.filters] == [(0x2330, 0x10DE), (0x2335, 0x10DE)]
    assert (second.selector.indexes, second.enabled, second.mig_devices) == ((2, 3), False, None)
    assert (third.selector, third.mig_devices) == (_nvidia_formats.NvidiaSelector((), (5,)), {})
    assert third.native([5]) == {'name': 'mixed[2]', 'devices': [5], 'enabled': True, 'mig_devices': {}}


def test_split_counts_are_packed_into_as_few_gpu_instances_as_fit():
    plan = _mig.plan_host('h', [model_gpu(A100, 0)], [{'devices': 'all', 'mig_devices': {'1c.3g.20gb': 4}}])
    assert plan.after[0]['instances'] == [
        {'profile': '3g.20gb', 'start': 0, 'compute_instances': ['1c', '1c', '1c']},
        {'profile': '3g.20gb', 'start': 4, 'compute_instances': ['1c']}]


def test_mig_devices_errors_name_the_gpu_and_the_count():
    with pytest.raises(_mig.MigPlanError) as info:
        _mig.plan_host('h', [model_gpu(A100, 0)], [{'devices': 'all', 'mig_devices': {'3c.4g.20gb': 1, '1g.6gb': 1}}])
    assert info.value.errors == [
        "host h: GPU 0 (GPU-a100-sxm4-40gb-0000): entry 1: mig_devices['1g.6gb']: profile 1g.6gb is not offered by this GPU "
        "(it offers: 1g.5gb, 1g.5gb+me, 1g.10gb, 2g.10gb, 3g.20gb, 4g.20gb, 7g.40gb)"]
    with pytest.raises(_mig.MigPlanError, match=r"mig_devices\['3c.4g.20gb'\]: 4g.20gb offers compute instances of 1c, 2c, 4c"):
        _mig.plan_host('h', [model_gpu(A100, 0)], [{'devices': 'all', 'mig_devices': {'3c.4g.20gb': 1}}])
    with pytest.raises(_mig.MigPlanError, match='declare instances or mig_devices, not both'):
        _mig.plan_host('h', [model_gpu(A100, 0)], [{'devices': 'all', 'mig_devices': {}, 'instances': []}])


def test_a_device_filter_selects_only_that_model_on_a_mixed_host():
    gpus = [model_gpu(A100, 0, current=False), model_gpu('h100-80gb-hbm3', 1, current=False)]
    entry = {'devices': 'all', 'device-filter': '0x20B010DE', 'mig-enabled': True, 'mig-devices': {}}
    config = {'version': 'v1', 'mig-configs': {'a100s': [entry]}}
    plan = _mig_parted.plan_mig_parted('h', gpus, _mig_parted.parse_mig_parted(config, 'a100s'))
    assert {s['gpu'] for s in plan.steps} == {0}


def _random_state(rng: random.Random, key: str, index: int) -> dict:
    """A GPU holding a random layout, made by planning and applying it (so it is a reachable state)."""
    gpu = model_gpu(key, index)
    instances: list[dict] = []
    for _try in range(10):
        profile = rng.choice(gpu['mig']['profiles'])
        item: dict = {'profile': profile['name']}
        if rng.random() < 0.4 and profile['slices'] > 1:
            item['compute_instances'] = [rng.choice(['1c', '%dc' % profile['slices']])] * rng.randint(1, 2)
        if not _mig.validate('h', [gpu], [{'devices': 'all', 'instances': instances + [item]}]):
            instances.append(item)
    plan = _mig.plan_host('h', [gpu], [{'devices': 'all', 'instances': instances}])
    return apply_on_sim([gpu], plan.steps, {index: key})[0]


@pytest.mark.parametrize('key', MIG_MODELS)
def test_mig_parted_round_trip_plans_no_step(key):
    rng = random.Random('mig-parted-' + key)
    for _round in range(20):
        gpus = [_random_state(rng, key, i) for i in range(3)]
        exported = _mig_parted.export_mig_parted(gpus, 'now')
        assert _mig_parted.plan_mig_parted('h', gpus, _mig_parted.parse_mig_parted(exported, 'now')).steps == [], exported


@pytest.mark.parametrize('key', MIG_MODELS)
def test_own_format_round_trip_plans_no_step_even_for_gpu_instances_without_compute_instances(key):
    rng = random.Random('own-' + key)
    for _round in range(20):
        gpus = [_random_state(rng, key, i) for i in range(2)] + [model_gpu(key, 2, current=False)]
        assert _mig.plan_host('h', gpus, _mig.export_declaration(gpus)).steps == []
    bare = model_gpu(key, 0, instances=((model_gpu(key)['mig']['profiles'][0]['name'], 0, []),))
    exported = _mig.export_declaration([bare])
    assert exported[0]['instances'][0]['compute_instances'] == []
    assert _mig.plan_host('h', [bare], exported).steps == []


def test_exports_group_identical_gpus_and_name_all_only_when_every_gpu_matches():
    same = [model_gpu(A100, i, instances=(('3g.20gb', 0), ('3g.20gb', 4))) for i in range(2)]
    assert _mig_parted.export_mig_parted(same, 'x') == {'version': 'v1', 'mig-configs': {'x': [
        {'devices': 'all', 'mig-enabled': True, 'mig-devices': {'3g.20gb': 2}}]}}
    mixed = same + [model_gpu(A100, 2, current=False), model_gpu('t4', 3)]
    # as nvidia-mig-parted export writes it: every GPU, a device-filter per model on a host of several models
    assert _mig_parted.export_mig_parted(mixed, 'x')['mig-configs']['x'] == [
        {'device-filter': '0x20B010DE', 'devices': [0, 1], 'mig-enabled': True, 'mig-devices': {'3g.20gb': 2}},
        {'device-filter': ['0x1EB810DE', '0x20B010DE'], 'devices': [2, 3], 'mig-enabled': False}]
    assert _mig_parted.export_mig_parted(same + [model_gpu(A100, 2, current=False)], 'x')['mig-configs']['x'] == [
        {'devices': [0, 1], 'mig-enabled': True, 'mig-devices': {'3g.20gb': 2}},
        {'devices': [2], 'mig-enabled': False}]
    assert _mig.export_declaration(mixed) == [
        {'devices': [0, 1], 'enabled': True, 'instances': [{'profile': '3g.20gb', 'start': 0}, {'profile': '3g.20gb', 'start': 4}]},
        {'devices': [2], 'enabled': False}]


def test_split_compute_instances_export_as_mig_parted_names():
    gpu = model_gpu(A100, 0, instances=(('7g.40gb', 0, [4, 3]),))
    assert _mig_parted.export_mig_parted([gpu], 'x')['mig-configs']['x'][0]['mig-devices'] == {'3c.7g.40gb': 1, '4c.7g.40gb': 1}


def test_export_refuses_facts_without_placements():
    gpu = model_gpu(A100, 0, instances=(('7g.40gb', 0),))
    gpu['mig']['gpu_instances'][0].update(profile=None, profile_id=None, placement=None)  # what the nvidia-smi backend reports
    with pytest.raises(_mig.MigPlanError, match='lack the profile or placement of GPU instance'):
        _mig.export_declaration([gpu])


@pytest.mark.parametrize('config, label, reason', [
    ({'version': 'v2', 'mig-configs': {}}, 'a', "version must be 'v1', got 'v2'"),
    ({'version': 'v1', 'mig-configs': {'b': []}}, 'a', "no label 'a' in mig-configs (labels: b)"),
    ({'version': 'v1', 'mig-configs': {'a': {'devices': 'all'}}}, 'a', "label 'a' must be a non-empty list"),
    ({'version': 'v1', 'mig-configs': {'a': []}}, 'a', "label 'a' must be a non-empty list"),
    ({'version': 'v1', 'mig-configs': {'a': []}, 'extra': 1}, 'a', 'unknown key(s) extra'),
    ({'version': 'v1', 'mig-configs': {'a': [{'devices': 'all', 'mig-enabled': True, 'gpus': 1}]}}, 'a', 'entry 0: unknown key(s) gpus'),
    ({'version': 'v1', 'mig-configs': {'a': [{'devices': 'all'}]}}, 'a', 'entry 0: mig-enabled is required'),
    ({'version': 'v1', 'mig-configs': {'a': [{'mig-enabled': False}]}}, 'a', 'entry 0: devices is required'),
    ({'version': 'v1', 'mig-configs': {'a': [{'devices': 'all', 'mig-enabled': 'yes'}]}}, 'a', 'mig-enabled must be true or false'),
    ({'version': 'v1', 'mig-configs': {'a': [{'devices': 'all', 'mig-enabled': True}]}}, 'a', 'mig-devices is required when mig-enabled'),
    ({'version': 'v1', 'mig-configs': {'a': [{'devices': 'all', 'mig-enabled': True, 'mig-devices': {'1g.5gb': 0}}]}}, 'a',
     'every count in mig-devices is 0'),
    ({'version': 'v1', 'mig-configs': {'a': [{'devices': 'some', 'mig-enabled': True}]}}, 'a', "devices must be 'all'"),
    ({'version': 'v1', 'mig-configs': {'a': [{'devices': 'all', 'mig-enabled': True, 'mig-devices': {}, 'device-filter': 'xyz'}]}}, 'a',
     "device-filter 'xyz' is not a PCI id"),
    ({'version': 'v1', 'mig-configs': {'a': [{'devices': 'all', 'mig-enabled': True, 'mig-devices': {'big': 1}}]}}, 'a', "'big': 1 is not a MIG profile"),
    ({'version': 'v1', 'mig-configs': {'a': [{'devices': 'all', 'mig-enabled': True, 'mig-devices': {'1g.5gb': -1}}]}}, 'a', 'is not a MIG profile'),
    ({'version': 'v1', 'mig-configs': {'a': [{'devices': 'all', 'mig-enabled': False, 'mig-devices': {'1g.5gb': 1}}]}}, 'a',
     'mig-devices must be empty when mig-enabled is false'),
])
def test_mig_parted_config_errors_name_the_label_and_entry(config, label, reason):
    with pytest.raises(_mig.MigPlanError) as info:
        _mig_parted.parse_mig_parted(config, label)
    assert reason in str(info.value) and str(info.value).startswith('MIG configuration: ')
    assert "mig-parted config: " in info.value.errors[0]


def test_mig_parted_counts_are_met_however_compute_instances_are_grouped():
    """'1c.3g.20gb: 3' holds for 3g [1c] + 3g [1c, 1c] as it does for 3g [1c, 1c, 1c]: mig-parted counts pairs only."""
    gpu = model_gpu(A100, 0, instances=(('3g.20gb', 0, [1]), ('3g.20gb', 4, [1, 1])))
    assert _mig_parted.export_mig_parted([gpu], 'x')['mig-configs']['x'][0]['mig-devices'] == {'1c.3g.20gb': 3}
    plan = _mig_parted.plan_mig_parted('h', [gpu], _mig_parted.parse_mig_parted(_mig_parted.export_mig_parted([gpu], 'x'), 'x'))
    assert plan.steps == [] and not _mig.verify(plan.desired, [gpu])
    one_more = _mig.plan_host('h', [gpu], [{'devices': 'all', 'mig_devices': {'1c.3g.20gb': 4}}])
    assert [s['action'] for s in one_more.steps] == ['create_compute_instance']
