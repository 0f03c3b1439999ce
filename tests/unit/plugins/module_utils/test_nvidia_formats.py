# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""NVIDIA's formats with NVIDIA's semantics: mig-parted and vgpu-device-manager configs in the shape NVIDIA ships them
(tests/unit/fixtures/nvidia), planned on hosts holding every simulated model.

What is checked is the meaning the tools give a label (an entry whose device-filter selects no GPU is skipped, the
last of several entries on a GPU holds, a non-MIG-capable GPU is skipped by devices: all), that an entry selecting a
GPU it cannot be applied to is refused before any step, that exports plan no step when imported, and that the native
formats keep refusing a selector that matches nothing.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _mig, _mig_parted, _nvidia_formats, _selector, _vgpu, _vgpu_manager
from ansible_collections.gpuvirt.fleet.plugins.module_utils._vgpu import Device, GpuView, VgpuType

from mig_support import MIG_MODELS, apply_on_sim, load_model, model_gpu  # pylint: disable=import-error

FIXTURES = Path(__file__).resolve().parents[2] / 'fixtures' / 'nvidia'
MIG_PARTED = yaml.safe_load((FIXTURES / 'mig-parted-config.yaml').read_text(encoding='utf-8'))
VGPU_MANAGER = yaml.safe_load((FIXTURES / 'vgpu-device-manager-config.yaml').read_text(encoding='utf-8'))
MODELS_DIR = Path(__file__).resolve().parents[4] / 'sim' / 'lib' / 'gpusim' / 'models'
EVERY_MODEL = sorted(path.stem for path in MODELS_DIR.glob('*.json'))
NOT_MIG = tuple(key for key in EVERY_MODEL if key not in MIG_MODELS)
# all-balanced's counts per model, as the config gives them: what each GPU must hold afterwards
BALANCED = {
    'a100-sxm4-40gb': {'1g.5gb': 2, '2g.10gb': 1, '3g.20gb': 1},
    'a100-sxm4-80gb': {'1g.10gb': 2, '2g.20gb': 1, '3g.40gb': 1},
    'a30': {'1g.6gb': 2, '2g.12gb': 1},
    'h100-80gb-hbm3': {'1g.10gb': 2, '2g.20gb': 1, '3g.40gb': 1},
    'h200-141gb': {'1g.18gb': 2, '2g.35gb': 1, '3g.71gb': 1},
}
ONE_10GB = {'a100-sxm4-40gb': 4, 'a100-sxm4-80gb': 7, 'h100-80gb-hbm3': 7}


def test_the_fixtures_cover_every_simulated_model():
    assert set(MIG_MODELS) | set(NOT_MIG) == set(EVERY_MODEL) and len(EVERY_MODEL) == 8
    assert set(BALANCED) == set(MIG_MODELS)
    filters = {f for entry in MIG_PARTED['mig-configs']['all-balanced'] for f in _as_list(entry['device-filter'])}
    for key in MIG_MODELS:
        model = load_model(key)
        assert '0x%04X%04X' % (model['pci_device_id'], model['pci_vendor_id']) in filters, key
    vgpu_filters = {entry['device-filter'] for entry in VGPU_MANAGER['vgpu-configs']['default'] if isinstance(entry['device-filter'], str)}
    for key in ('a40', 't4'):
        model = load_model(key)
        assert model.get('vgpu') and '0x%04X%04X' % (model['pci_device_id'], model['pci_vendor_id']) in vgpu_filters, key


def _as_list(value):
    return value if isinstance(value, list) else [value]


def _host(*keys: str, current: bool = False) -> list[dict]:
    return [model_gpu(key, index, current=current) for index, key in enumerate(keys)]


def _counts(gpu: dict) -> dict:
    """mig-parted's view of a GPU: its (GPU instance, compute instance) pairs by name."""
    counts: dict = {}
    for gi in gpu['mig']['gpu_instances']:
        size = next(p['slices'] for p in gpu['mig']['profiles'] if p['name'] == gi['profile'])
        for ci in gi['compute_instances']:
            key = gi['profile'] if ci['slices'] == size else '%dc.%s' % (ci['slices'], gi['profile'])
            counts[key] = counts.get(key, 0) + 1
    return counts


def _plan(gpus, label, config=None):
    return _mig_parted.plan_mig_parted('h', gpus, _mig_parted.parse_mig_parted(config or MIG_PARTED, label))


def _apply(gpus, label, config=None):
    keys = {gpu['index']: next(k for k in EVERY_MODEL if load_model(k)['name'] == gpu['name']) for gpu in gpus}
    plan = _plan(gpus, label, config)
    after = apply_on_sim(gpus, plan.steps, keys)
    assert _mig.verify(plan.desired, after) == []
    return plan, after


# ---- device-filter as NVIDIA's tools read it


@pytest.mark.parametrize('text, device, vendor, subsystem', [
    ('0x233010DE', 0x2330, 0x10DE, None),
    ('0x233010de', 0x2330, 0x10DE, None),
    ('0X233010DE', 0x2330, 0x10DE, None),
    (str(0x233010DE), 0x2330, 0x10DE, None),  # Go's ParseUint(text, 0, 32) reads decimal too
    ('0x25B610DE:0x14A910DE', 0x25B6, 0x10DE, (0x14A9, 0x10DE)),
])
def test_a_device_filter_is_the_device_and_vendor_id(text, device, vendor, subsystem):
    (value,) = _nvidia_formats.parse_device_filter(text)
    assert (value.device, value.vendor, value.subsystem) == (device, vendor, subsystem)


@pytest.mark.parametrize('value, needle', [
    ('0x2330', "device-filter '0x2330' is device 0x0000 of vendor 0x2330 as NVIDIA's tools read it, which selects no GPU: "
               "write the device id followed by the vendor id, such as '0x233010DE'"),
    ('H100', "device-filter 'H100' is not a PCI id"),
    ('0x1:0x2:0x3', "device-filter '0x1:0x2:0x3' is not a PCI id"),
    ('0x1233010DE', 'is not a PCI id'),  # above 32 bits
    (0x233010DE, 'must be a PCI id such as'),
    ([['0x233010DE']], 'must be a PCI id such as'),
])
def test_a_device_filter_that_can_select_no_gpu_is_refused(value, needle):
    with pytest.raises(_selector.Invalid) as info:
        _nvidia_formats.parse_device_filter(value)
    assert needle in str(info.value)


def test_an_empty_device_filter_selects_every_gpu_and_a_subsystem_narrows_it():
    gpus = _host('h100-80gb-hbm3', 'a30')
    assert _nvidia_formats.parse_device_filter('') == _nvidia_formats.parse_device_filter([]) == _nvidia_formats.parse_device_filter(None) == ()
    assert [g['index'] for g in gpus if _nvidia_formats.NvidiaSelector((), None).selects(g)] == [0, 1]
    h100 = load_model('h100-80gb-hbm3')
    own = '0x233010DE:0x%04X%04X' % (h100['pci_subsystem_id'], h100['pci_subsystem_vendor_id'])
    assert [g['index'] for g in gpus if _nvidia_formats.NvidiaSelector(_nvidia_formats.parse_device_filter(own), None).selects(g)] == [0]
    other = _nvidia_formats.NvidiaSelector(_nvidia_formats.parse_device_filter('0x233010DE:0x000010DE'), None)
    assert not any(other.selects(g) for g in gpus)


# ---- mig-parted: multi-model labels apply on every model they name


@pytest.mark.parametrize('order', [EVERY_MODEL, tuple(reversed(EVERY_MODEL))])
def test_all_balanced_applies_on_every_model_it_names_and_skips_the_rest(order):
    gpus = _host(*order)
    plan, after = _apply(gpus, 'all-balanced')
    by_key = dict(zip(order, after))
    for key in MIG_MODELS:
        assert by_key[key]['mig']['current'] and _counts(by_key[key]) == BALANCED[key], key
    for key in NOT_MIG:
        assert by_key[key] == gpus[order.index(key)], key  # not touched: no entry names it
    assert sorted(plan.as_dict()['after'][i]['devices'][0] for i in range(len(plan.gpus))) == sorted(
        order.index(key) for key in MIG_MODELS)
    assert _plan(after, 'all-balanced').steps == []  # a rerun changes nothing


@pytest.mark.parametrize('key', MIG_MODELS)
def test_all_balanced_applies_on_a_host_of_one_model(key):
    """On each model alone every entry but its own selects nothing: skipped, not an error."""
    gpus = _host(key, key)
    plan, after = _apply(gpus, 'all-balanced')
    assert [g.entry for g in plan.gpus] == [plan.gpus[0].entry] * 2
    assert [_counts(g) for g in after] == [BALANCED[key]] * 2


def test_all_1g_10gb_gives_each_model_its_own_count():
    keys = ('a100-sxm4-40gb', 'a100-sxm4-80gb', 'h100-80gb-hbm3', 'a40')
    plan, after = _apply(_host(*keys), 'all-1g.10gb')
    assert [_counts(g) for g in after[:3]] == [{'1g.10gb': ONE_10GB[k]} for k in keys[:3]]
    assert [g.entry for g in plan.gpus] == ["'all-1g.10gb[0]'", "'all-1g.10gb[1]'", "'all-1g.10gb[1]'"]


@pytest.mark.parametrize('label', ['all-disabled', 'all-enabled'])
def test_devices_all_skips_the_gpus_that_are_not_mig_capable(label):
    gpus = _host(*EVERY_MODEL, current=True)
    plan, after = _apply(gpus, 'all-balanced' if label == 'all-disabled' else 'all-disabled')
    plan, after = _apply(after, label)
    assert sorted(g.index for g in plan.gpus) == [EVERY_MODEL.index(k) for k in sorted(MIG_MODELS, key=EVERY_MODEL.index)]
    assert all(g['mig']['current'] == (label == 'all-enabled') and not g['mig']['gpu_instances'] for g in after if g['mig']['capable'])


def test_an_entry_that_selects_no_gpu_is_skipped_where_gpu_mig_refuses_it():
    gpus = _host('h100-80gb-hbm3')
    config = {'version': 'v1', 'mig-configs': {'two': [
        {'device-filter': '0x20B010DE', 'devices': 'all', 'mig-enabled': True, 'mig-devices': {'1g.5gb': 7}},  # no A100 here
        {'devices': [4, 5], 'mig-enabled': False},  # no such GPU indexes here
        {'device-filter': ['0x233010DE'], 'devices': 'all', 'mig-enabled': True, 'mig-devices': {'7g.80gb': 1}}]}}
    plan, after = _apply(gpus, 'two', config)
    assert [g.entry for g in plan.gpus] == ["'two[2]'"] and _counts(after[0]) == {'7g.80gb': 1}
    # the native format keeps its typo guard: a selector that matches nothing is an error there
    assert _mig.validate('h', gpus, [{'devices': {'device_id': '0x20B010DE'}, 'instances': []}]) == [
        'host h: entry 1: devices selector matches no GPU on this host (models here: NVIDIA H100 80GB HBM3)']
    assert _mig.validate('h', gpus, [{'devices': [4], 'enabled': False}]) == [
        'host h: entry 1: devices: GPU index 4 is not on this host (it has [0])']


def test_the_last_of_several_entries_on_a_gpu_holds():
    gpus = _host('h100-80gb-hbm3', 'h100-80gb-hbm3')
    config = {'version': 'v1', 'mig-configs': {'layered': [
        {'devices': 'all', 'mig-enabled': True, 'mig-devices': {'7g.80gb': 1}},
        {'device-filter': '0x233010DE', 'devices': [1], 'mig-enabled': True, 'mig-devices': {'3g.40gb': 2}}]}}
    plan, after = _apply(gpus, 'layered', config)
    assert [(g.index, g.entry) for g in plan.gpus] == [(0, "'layered[0]'"), (1, "'layered[1]'")]
    assert [_counts(g) for g in after] == [{'7g.80gb': 1}, {'3g.40gb': 2}]
    assert _plan(after, 'layered', config).steps == []


# ---- mig-parted: refused before any step, naming the entry


def _refused(gpus, label, config=None) -> list[str]:
    with pytest.raises(_mig.MigPlanError) as info:
        _plan(gpus, label, config)
    return info.value.errors


def test_devices_all_with_a_profile_the_model_lacks_is_refused():
    errors = _refused(_host('a100-sxm4-40gb', 'h100-80gb-hbm3', 't4'), 'all-1g.5gb')
    assert errors == ["host h: GPU 1 (GPU-h100-80gb-hbm3-0001): entry 'all-1g.5gb[0]': mig_devices['1g.5gb']: profile 1g.5gb is not "
                      'offered by this GPU (it offers: 1g.10gb, 1g.10gb+me, 1g.20gb, 2g.20gb, 3g.40gb, 4g.40gb, 7g.80gb)']


def test_an_index_naming_a_gpu_that_is_not_mig_capable_is_refused_unless_it_disables_mig():
    gpus = _host('a100-sxm4-80gb', 'v100-sxm2-32gb', 'a40', 'h100-80gb-hbm3')
    # custom-config: [0, 1] off (the V100 skipped), [2] on (the A40: refused), [3, 7] on (GPU 7 is not here: ignored)
    assert _refused(gpus, 'custom-config') == [
        "host h: GPU 2 (GPU-a40-0002): entry 'custom-config[1]': NVIDIA A40 is not MIG-capable: mig-parted refuses to enable MIG "
        'on a GPU named by its index (devices: all skips such GPUs)']
    fine = _host('a100-sxm4-80gb', 'v100-sxm2-32gb', 'h100-80gb-hbm3', 'h100-80gb-hbm3')
    plan, after = _apply(fine, 'custom-config')
    assert [(g.index, g.entry) for g in plan.gpus] == [(0, "'custom-config[0]'"), (2, "'custom-config[1]'"), (3, "'custom-config[2]'")]
    assert [_counts(g) for g in after] == [{}, {}, {'1c.3g.40gb': 3, '2g.20gb': 1}, {'7g.80gb': 1}]
    config = {'version': 'v1', 'mig-configs': {'x': [{'devices': [1], 'mig-enabled': True, 'mig-devices': {}}]}}
    assert _refused(gpus, 'x', config) == [
        "host h: GPU 1 (GPU-v100-sxm2-32gb-0001): entry 'x[0]': Tesla V100-SXM2-32GB is not MIG-capable: mig-parted refuses to "
        'enable MIG on a GPU named by its index (devices: all skips such GPUs)']
    disable = {'version': 'v1', 'mig-configs': {'x': [{'devices': [1, 2], 'mig-enabled': False}]}}
    assert _plan(gpus, 'x', disable).gpus == []


def test_entries_that_disagree_on_mig_mode_for_one_gpu_are_refused():
    config = {'version': 'v1', 'mig-configs': {'x': [
        {'devices': 'all', 'mig-enabled': False},
        {'devices': [0], 'mig-enabled': True, 'mig-devices': {'7g.80gb': 1}}]}}
    assert _refused(_host('h100-80gb-hbm3', 'h100-80gb-hbm3'), 'x', config) == [
        "host h: GPU 0 (GPU-h100-80gb-hbm3-0000): entries 'x[0]', 'x[1]' select this GPU with different mig-enabled values; "
        'mig-parted sets the mode of each in turn and then fails to apply the other']


def test_an_overridden_entry_that_cannot_be_applied_is_refused():
    """mig-parted applies every entry that selects a GPU in turn: one that fails stops it half-way."""
    config = {'version': 'v1', 'mig-configs': {'x': [
        {'devices': 'all', 'mig-enabled': True, 'mig-devices': {'1g.5gb': 7}},
        {'device-filter': '0x233010DE', 'devices': 'all', 'mig-enabled': True, 'mig-devices': {'7g.80gb': 1}}]}}
    gpus = _host('a100-sxm4-40gb', 'h100-80gb-hbm3')
    assert _refused(gpus, 'x', config) == [
        "host h: GPU 1 (GPU-h100-80gb-hbm3-0001): entry 'x[0]': mig-parted applies it before entry 'x[1]' on this GPU, and it cannot "
        "be applied: mig_devices['1g.5gb']: profile 1g.5gb is not offered by this GPU (it offers: 1g.10gb, 1g.10gb+me, 1g.20gb, "
        '2g.20gb, 3g.40gb, 4g.40gb, 7g.80gb)']
    config['mig-configs']['x'][0]['device-filter'] = '0x20B010DE'
    assert _plan(gpus, 'x', config).steps  # filtered to its own model it applies


def test_every_problem_of_a_label_is_reported_together():
    config = {'version': 'v1', 'mig-configs': {'x': [
        {'devices': 'all', 'mig-enabled': True},
        {'devices': [0], 'device-filter': ['0x2330'], 'mig-enabled': False},
        {'devices': 'all', 'mig-enabled': True, 'mig-devices': {}, 'gpus': 2}]}}
    with pytest.raises(_mig.MigPlanError) as info:
        _mig_parted.parse_mig_parted(config, 'x')
    assert [e.split(': ', 3)[2] for e in info.value.errors] == ['entry 0', 'entry 1', 'entry 2']


# ---- mig-parted: exports round-trip


@pytest.mark.parametrize('label', ['all-balanced', 'all-1g.10gb', 'all-enabled', 'all-disabled'])
def test_export_of_a_multi_model_host_imports_with_no_step(label):
    gpus = _host(*EVERY_MODEL)
    _plan_, after = _apply(gpus, label)
    exported = _mig_parted.export_mig_parted(after, 'now')
    entries = exported['mig-configs']['now']
    assert all(not e['mig-enabled'] or 'mig-devices' in e for e in entries)
    assert _plan(after, 'now', json.loads(json.dumps(exported))).steps == []
    fresh = _host(*EVERY_MODEL)  # and it rebuilds the same counts on a fresh host of the same models
    _plan_, rebuilt = _apply(fresh, 'now', exported)
    assert [_counts(g) if g['mig']['capable'] else None for g in rebuilt] == [_counts(g) if g['mig']['capable'] else None for g in after]


def test_export_names_each_model_by_its_device_filter():
    _plan_, after = _apply(_host('h100-80gb-hbm3', 'a30', 'h100-80gb-hbm3', 't4'), 'all-balanced')
    assert _mig_parted.export_mig_parted(after, 'now')['mig-configs']['now'] == [
        {'device-filter': '0x233010DE', 'devices': 'all', 'mig-enabled': True, 'mig-devices': BALANCED['h100-80gb-hbm3']},
        {'device-filter': '0x20B710DE', 'devices': 'all', 'mig-enabled': True, 'mig-devices': BALANCED['a30']},
        {'device-filter': '0x1EB810DE', 'devices': 'all', 'mig-enabled': False}]


# ---- vgpu-device-manager: the operator's `default` label


def vgpu_view(key: str, index: int, devices=()) -> GpuView:
    """A vGPU-capable GPU as the planner sees it, from the simulator's model (time-sliced types, one type per GPU)."""
    model = load_model(key)
    held = {_vgpu.short_name(d.type_name) for d in devices}
    types = []
    for number, raw in enumerate(model['vgpu']['types']):
        short = _vgpu.short_name(raw['name'])
        same = sum(1 for d in devices if _vgpu.short_name(d.type_name) == short)
        available = 0 if held - {short} else raw['max_instances'] - same
        types.append(VgpuType('nvidia-%d' % (500 + number), raw['name'], raw['max_instances'], available))
    pci = {'device_id': '0x%04x' % model['pci_device_id'], 'vendor_id': '0x%04x' % model['pci_vendor_id'],
           'subsystem_id': '0x%04x' % model['pci_subsystem_id'], 'subsystem_vendor_id': '0x%04x' % model['pci_subsystem_vendor_id']}
    return GpuView(index=index, uuid='GPU-%s-%d' % (key, index), name=model['name'], bus_id='00000000:%02X:00.0' % (0x18 + index),
                   parent='0000:%02x:00.0' % (0x18 + index), types=types, devices=list(devices), pci=pci)


def _vgpu_apply(gpus: list[GpuView], plan) -> list[GpuView]:
    """The GPUs after the plan: each planned GPU holds what plan.desired() says."""
    wanted = {want['gpu']: want['devices'] for want in plan.desired()}
    after = []
    for gpu in gpus:
        if gpu.index in wanted:
            name = {t.short: t.name for t in gpu.types}
            devices = [Device(d['uuid'], name[d['type']]) for d in wanted[gpu.index]]
            gpu = vgpu_view(next(k for k in ('a40', 't4') if load_model(k)['name'] == gpu.name), gpu.index, devices)
        after.append(gpu)
    return after


def _vgpu_plan(gpus, label, config=None):
    return _vgpu_manager.plan_vgpu_device_manager('node', gpus, _vgpu_manager.parse_vgpu_device_manager(config or VGPU_MANAGER, label))


def _held(gpu: GpuView) -> dict:
    counts: dict = {}
    for device in gpu.devices:
        counts[_vgpu.short_name(device.type_name)] = counts.get(_vgpu.short_name(device.type_name), 0) + 1
    return counts


def test_the_operator_default_label_gives_each_model_its_default_type():
    gpus = [vgpu_view('a40', 0), vgpu_view('t4', 1), vgpu_view('a40', 2)]
    plan = _vgpu_plan(gpus, 'default')
    assert [(s['gpu'], s['action'], s['type']) for s in plan.steps] == [
        (0, 'create', 'NVIDIA A40-24Q'), (0, 'create', 'NVIDIA A40-24Q'), (1, 'create', 'GRID T4-8Q'), (1, 'create', 'GRID T4-8Q'),
        (2, 'create', 'NVIDIA A40-24Q'), (2, 'create', 'NVIDIA A40-24Q')]
    after = _vgpu_apply(gpus, plan)
    assert [_held(g) for g in after] == [{'A40-24Q': 2}, {'T4-8Q': 2}, {'A40-24Q': 2}]
    assert _vgpu_plan(after, 'default').steps == []  # a rerun changes nothing
    exported = _vgpu_manager.export_vgpu_device_manager(after, 'now')
    assert exported == {'version': 'v1', 'vgpu-configs': {'now': [
        {'device-filter': '0x223510DE', 'devices': 'all', 'vgpu-devices': {'A40-24Q': 2}},
        {'device-filter': '0x1EB810DE', 'devices': 'all', 'vgpu-devices': {'T4-8Q': 2}}]}}
    assert _vgpu_plan(after, 'now', exported).steps == []


def test_a_vgpu_entry_whose_filter_selects_no_gpu_is_skipped_where_gpu_vgpu_refuses_it():
    gpus = [vgpu_view('a40', 0)]
    config = {'version': 'v1', 'vgpu-configs': {'x': [
        {'device-filter': ['0x1EB810DE'], 'devices': 'all', 'vgpu-devices': {'T4-4Q': 4}},
        {'device-filter': ['0x26B510DE', '0x223510DE'], 'devices': 'all', 'vgpu-devices': {'A40-8Q': 1}}]}}
    assert [(s['gpu'], s['type']) for s in _vgpu_plan(gpus, 'x', config).steps] == [(0, 'NVIDIA A40-8Q')]
    with pytest.raises(_vgpu.VgpuPlanError, match=r'entry 1: devices selector matches no GPU on this host \(models here: NVIDIA A40\)'):
        _vgpu.plan_host('node', gpus, [{'devices': {'device_id': '0x1EB8'}, 'type': 'T4-4Q', 'count': 4}])


def test_the_last_vgpu_entry_on_a_gpu_replaces_its_whole_configuration():
    gpus = [vgpu_view('a40', 0, [Device('aaaaaaaa-0000-4000-8000-000000000001', 'NVIDIA A40-8Q')]), vgpu_view('a40', 1)]
    config = {'version': 'v1', 'vgpu-configs': {'x': [
        {'devices': 'all', 'vgpu-devices': {'A40-8Q': 2}},
        {'device-filter': '0x223510DE', 'devices': [0], 'vgpu-devices': {'A40-4Q': 3}}]}}
    after = _vgpu_apply(gpus, _vgpu_plan(gpus, 'x', config))
    assert [_held(g) for g in after] == [{'A40-4Q': 3}, {'A40-8Q': 2}]
    assert _vgpu_plan(after, 'x', config).steps == []


def test_empty_vgpu_devices_remove_every_device_and_leave_an_empty_gpu_alone():
    gpus = [vgpu_view('a40', 0, [Device('aaaaaaaa-0000-4000-8000-000000000001', 'NVIDIA A40-8Q')]), vgpu_view('t4', 1)]
    config = {'version': 'v1', 'vgpu-configs': {'none': [{'devices': 'all', 'vgpu-devices': {}}]}}
    plan = _vgpu_plan(gpus, 'none', config)
    assert [(s['gpu'], s['action']) for s in plan.steps] == [(0, 'remove')] and [g.gpu.index for g in plan.gpus] == [0]


def test_an_overridden_vgpu_entry_that_cannot_be_applied_is_refused():
    """vgpu-device-manager applies each entry selecting a GPU in turn and stops at a type the GPU lacks."""
    config = {'version': 'v1', 'vgpu-configs': {'x': [
        {'device-filter': '0x223510DE', 'devices': 'all', 'vgpu-devices': {'T4-8Q': 2}},
        {'device-filter': '0x223510DE', 'devices': 'all', 'vgpu-devices': {'A40-24Q': 2}}]}}
    with pytest.raises(_vgpu.VgpuPlanError) as info:
        _vgpu_plan([vgpu_view('a40', 0)], 'x', config)
    assert info.value.errors == [
        "host node: GPU 0 (GPU-a40-0): entry 'x[0]': vgpu-device-manager applies it before entry 'x[1]' on this GPU, and it cannot "
        'be applied: vGPU type T4-8Q is not supported by NVIDIA A40 (supported: %s)' % ', '.join(t.short for t in vgpu_view('a40', 0).types)]


def test_a_vgpu_entry_that_selects_a_gpu_it_cannot_serve_is_refused_naming_it():
    config = {'version': 'v1', 'vgpu-configs': {'x': [{'devices': 'all', 'vgpu-devices': {'A40-24Q': 3}}]}}
    with pytest.raises(_vgpu.VgpuPlanError) as info:
        _vgpu_plan([vgpu_view('a40', 0), vgpu_view('t4', 1)], 'x', config)
    assert info.value.errors == [
        "host node: GPU 0 (GPU-a40-0): entry 'x[0] A40-24Q': 3 x A40-24Q exceed its capacity: at most 2 per GPU",
        "host node: GPU 1 (GPU-t4-1): entry 'x[0] A40-24Q': vGPU type A40-24Q is not supported by Tesla T4 (supported: %s)"
        % ', '.join(t.short for t in vgpu_view('t4', 1).types)]
