# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pure vGPU planner: validation, stable UUIDs, minimal plans, in-use safety, vgpu-device-manager interop."""
from __future__ import annotations

import pytest

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _vgpu, _vgpu_manager
from ansible_collections.gpuvirt.fleet.plugins.module_utils._vgpu import Device, GpuView, VgpuType

HOST = 'node-1'
A40_TYPES = [('nvidia-557', 'NVIDIA A40-1Q', 32), ('nvidia-560', 'NVIDIA A40-4Q', 12), ('nvidia-562', 'NVIDIA A40-8Q', 6),
             ('nvidia-566', 'NVIDIA A40-48Q', 1)]
U1, U2, U3 = ('aaaaaaaa-0000-4000-8000-00000000000%d' % i for i in (1, 2, 3))


def a40(index=0, devices=(), homogeneous=True, mig=False) -> GpuView:
    """An A40 whose available_instances follow its devices, as the driver reports them."""
    held = {_vgpu.short_name(d.type_name) for d in devices}
    types = []
    for type_id, name, maximum in A40_TYPES:
        same = sum(1 for d in devices if _vgpu.short_name(d.type_name) == _vgpu.short_name(name))
        available = 0 if homogeneous and held - {_vgpu.short_name(name)} else maximum - same
        types.append(VgpuType(type_id, name, maximum, available))
    return GpuView(index=index, uuid='GPU-%d' % index, name='NVIDIA A40', bus_id='00000000:%02X:00.0' % (0x18 + index),
                   parent='0000:%02x:00.0' % (0x18 + index), types=types, devices=list(devices), homogeneous=homogeneous,
                   pci={'device_id': '0x2235', 'vendor_id': '0x10de'}, mig_enabled=mig)


def plan(gpus, declaration):
    return _vgpu.plan_host(HOST, gpus, declaration)


def actions(result):
    return [(s['action'], s['device']) for s in result.steps]


def stable(gpu, type_name, slot):
    return _vgpu.stable_uuid(HOST, gpu, type_name, slot)


# ---- validation: every problem names host, GPU, entry and why, and nothing is planned
@pytest.mark.parametrize('declaration, gpus, needles', [
    ([{'type': 'A40-8Q', 'count': 7}], [a40()], ['host node-1: GPU 0 (GPU-0): entry 1: 7 x A40-8Q exceed its capacity: at most 6']),
    ([{'name': 'x', 'type': 'T4-8Q', 'count': 1}], [a40()], ["entry 'x': vGPU type T4-8Q is not supported by NVIDIA A40"]),
    ([{'type': 'A40-8Q', 'count': 1}, {'type': 'A40-4Q', 'count': 1}], [a40()], ['allows one time-sliced vGPU type per GPU']),
    ([{'type': 'A40-8Q', 'count': -1}], [a40()], ['count must be a non-negative integer']),
    ([{'type': 'A40-8Q', 'count': 2, 'uuids': [U1]}], [a40()], ['uuids lists 1 UUID(s) but count is 2']),
    ([{'type': 'A40-8Q', 'uuids': ['nope']}], [a40()], ['uuids: nope is not a UUID']),
    ([{'type': 'A40-8Q', 'uuids': [U1]}, {'devices': [1], 'type': 'A40-8Q', 'uuids': [U1]}], [a40(), a40(1)],
     ['uuid %s is also declared by entry 1' % U1]),
    ([{'devices': [3], 'type': 'A40-8Q', 'count': 1}], [a40()], ['GPU index 3 is not on this host']),
    ([{'type': 'A40-8Q', 'count': 1, 'bogus': 1}], [a40()], ['unknown key(s) bogus']),
    ([{'type': 'A40-8Q', 'count': 1}], [a40(mig=True)], ['MIG is enabled']),
    ('A40-8Q', [a40()], ['gpu_vgpu must be a list of entries']),
    ([{'type': 'A40-4Q', 'count': 1}], [a40(devices=[Device(U1, 'NVIDIA A40-8Q', in_use=True)])],
     ['device %s (A40-8Q) is in use by a VM and would be removed' % U1]),
])
def test_refused(declaration, gpus, needles):
    with pytest.raises(_vgpu.VgpuPlanError) as info:
        plan(gpus, declaration)
    for needle in needles:
        assert needle in str(info.value)


def test_every_problem_is_reported_together():
    with pytest.raises(_vgpu.VgpuPlanError) as info:
        plan([a40(), a40(1)], [{'devices': [0], 'type': 'A40-8Q', 'count': 9}, {'devices': [1], 'type': 'A40-3X', 'count': 1}])
    assert len(info.value.errors) == 2


# ---- stable UUIDs and minimal plans
def test_default_uuids_are_stable_and_distinct():
    gpu = a40()
    first = plan([gpu], [{'type': 'A40-8Q', 'count': 3}])
    again = plan([a40()], [{'type': 'NVIDIA A40-8Q', 'count': 3}])
    assert actions(first) == actions(again) == [('create', stable(gpu, 'A40-8Q', n)) for n in range(3)]
    assert stable(gpu, 'A40-8Q', 0) != stable(a40(1), 'A40-8Q', 0) != _vgpu.stable_uuid('other', gpu, 'A40-8Q', 0)


@pytest.mark.parametrize('have, count, expected', [
    (3, 3, []),
    (3, 5, [('create', 3), ('create', 4)]),
    (5, 3, [('remove', 3), ('remove', 4)]),
    (2, 0, [('remove', 0), ('remove', 1)]),
])
def test_minimal_change(have, count, expected):
    gpu = a40()
    devices = [Device(stable(gpu, 'A40-8Q', n), 'NVIDIA A40-8Q') for n in range(have)]
    result = plan([a40(devices=devices)], [{'type': 'A40-8Q', 'count': count}])
    assert actions(result) == [(a, stable(gpu, 'A40-8Q', n)) for a, n in expected]
    assert result.changed == bool(expected)


def test_type_change_removes_first_and_uses_full_capacity():
    gpu = a40()
    devices = [Device(stable(gpu, 'A40-8Q', n), 'NVIDIA A40-8Q') for n in range(6)]
    result = plan([a40(devices=devices)], [{'type': 'A40-4Q', 'count': 12}])
    kinds = [s['action'] for s in result.steps]
    assert kinds == ['remove'] * 6 + ['create'] * 12


def test_foreign_devices_of_the_type_fill_slots_in_use_first():
    result = plan([a40(devices=[Device(U1, 'NVIDIA A40-8Q'), Device(U2, 'NVIDIA A40-8Q', in_use=True), Device(U3, 'NVIDIA A40-8Q')])],
                  [{'type': 'A40-8Q', 'count': 2}])
    assert actions(result) == [('remove', U3)]


def test_explicit_uuids_replace_foreign_devices():
    result = plan([a40(devices=[Device(U1, 'NVIDIA A40-8Q')])], [{'type': 'A40-8Q', 'uuids': [U2]}])
    assert actions(result) == [('remove', U1), ('create', U2)]


def test_in_use_removal_allowed_with_allow_disruption():
    result = plan([a40(devices=[Device(U1, 'NVIDIA A40-8Q', in_use=True)])], [{'type': 'A40-8Q', 'count': 0, 'allow_disruption': True}])
    assert actions(result) == [('remove', U1)] and result.steps[0]['in_use']


def test_heterogeneous_gpu_takes_two_types():
    result = plan([a40(homogeneous=False)], [{'type': 'A40-8Q', 'count': 1}, {'type': 'A40-4Q', 'count': 1}])
    assert len(result.steps) == 2


def test_unselected_gpus_are_left_alone():
    other = a40(1, devices=[Device(U1, 'NVIDIA A40-1Q')])
    result = plan([a40(), other], [{'devices': [0], 'type': 'A40-8Q', 'count': 1}])
    assert [g.gpu.index for g in result.gpus] == [0]


def test_before_after_and_verify():
    gpu = a40()
    result = plan([gpu], [{'type': 'A40-8Q', 'count': 1}])
    want = stable(gpu, 'A40-8Q', 0)
    assert result.as_dict()['before'] == [{'gpu': 0, 'uuid': 'GPU-0', 'parent': '0000:18:00.0', 'devices': []}]
    assert result.desired()[0]['devices'] == [{'uuid': want, 'type': 'A40-8Q'}]
    assert _vgpu.verify(result.desired(), [a40(devices=[Device(want, 'NVIDIA A40-8Q')])]) == []
    assert 'missing %s' % want in _vgpu.verify(result.desired(), [a40()])[0]


def test_export_round_trips():
    devices = [Device(U1, 'NVIDIA A40-8Q'), Device(U2, 'NVIDIA A40-8Q')]
    exported = _vgpu.export_declaration([a40(devices=devices)])
    assert exported == [{'devices': [0], 'type': 'A40-8Q', 'count': 2, 'uuids': [U1, U2]}]
    assert plan([a40(devices=devices)], exported).steps == []


# ---- vgpu-device-manager interop
CONFIG = {'version': 'v1', 'vgpu-configs': {
    'A40-8Q': [{'devices': 'all', 'vgpu-devices': {'A40-8Q': 6}}],
    'mixed': [{'devices': [0], 'vgpu-devices': {'A40-8Q': 2}}, {'devices': [1], 'vgpu-devices': {'A40-1Q': 4}}],
}}


def test_vgpu_device_manager_label_declares_each_gpu_its_entry_gives():
    entries = _vgpu_manager.parse_vgpu_device_manager(CONFIG, 'mixed')
    assert [(e.name, e.selector.indexes, e.devices) for e in entries] == [('mixed[0]', (0,), {'A40-8Q': 2}), ('mixed[1]', (1,), {'A40-1Q': 4})]
    errors: list = []
    assert _vgpu_manager.resolve_vgpu_device_manager(HOST, entries, [a40(), a40(1)], errors) == [
        {'name': 'mixed[0] A40-8Q', 'devices': [0], 'type': 'A40-8Q', 'count': 2},
        {'name': 'mixed[1] A40-1Q', 'devices': [1], 'type': 'A40-1Q', 'count': 4}] and errors == []
    assert len(_vgpu_manager.plan_vgpu_device_manager(HOST, [a40(), a40(1)], _vgpu_manager.parse_vgpu_device_manager(CONFIG, 'A40-8Q')).steps) == 12


@pytest.mark.parametrize('config, label, needle', [
    ({'version': 'v2'}, 'x', "version must be 'v1'"),
    (CONFIG, 'nope', "no label 'nope' in vgpu-configs (labels: A40-8Q, mixed)"),
    ({'version': 'v1', 'vgpu-configs': {'x': []}}, 'x', "label 'x' must be a non-empty list"),
    ({'version': 'v1', 'vgpu-configs': {'x': [{'devices': 'all', 'vgpu-devices': {'A40-8Q': 'six'}}]}}, 'x',
     'entry 0: vgpu-devices must map vGPU type names to counts above 0'),
    ({'version': 'v1', 'vgpu-configs': {'x': [{'devices': 'all', 'vgpu-devices': {'A40-8Q': 0}}]}}, 'x', 'counts above 0'),
    ({'version': 'v1', 'vgpu-configs': {'x': [{'devices': 'all', 'vgpu-devices': ['A40-8Q']}]}}, 'x', 'must map vGPU type names to counts'),
    ({'version': 'v1', 'vgpu-configs': {'x': [{'devices': 'all', 'vgpu-devices': {}, 'oops': 1}]}}, 'x', 'entry 0: unknown key(s) oops'),
    ({'version': 'v1', 'vgpu-configs': {'x': [{'vgpu-devices': {'A40-8Q': 1}}]}}, 'x', 'entry 0: devices is required'),
    ({'version': 'v1', 'vgpu-configs': {'x': [{'devices': 'all'}]}}, 'x', 'entry 0: vgpu-devices is required'),
    ({'version': 'v1', 'vgpu-configs': {'x': [{'devices': 'some', 'vgpu-devices': {}}]}}, 'x', "devices must be 'all' or a list"),
    ({'version': 'v1', 'vgpu-configs': {'x': [{'devices': 'all', 'device-filter': 'A40', 'vgpu-devices': {}}]}}, 'x',
     "device-filter 'A40' is not a PCI id"),
    ({'version': 'v1', 'vgpu-configs': {'x': [{'devices': 'all', 'vgpu-devices': {'A40-8Q': 1, 'NVIDIA A40-8Q': 1}}]}}, 'x',
     'names one vGPU type more than once'),
])
def test_vgpu_device_manager_errors(config, label, needle):
    with pytest.raises(_vgpu.VgpuPlanError) as info:
        _vgpu_manager.parse_vgpu_device_manager(config, label)
    assert needle in str(info.value)


def test_short_names():
    assert _vgpu.short_name('NVIDIA A40-8Q') == _vgpu.short_name('GRID A40-8Q') == _vgpu.short_name('A40-8Q') == 'A40-8Q'
    assert a40().find_type('nvidia-562').short == 'A40-8Q'


# ---- libvirt hostdev XML
def test_libvirt_hostdev_xml_parses_and_names_each_uuid():
    import xml.etree.ElementTree as ET  # pylint: disable=import-outside-toplevel
    text = _vgpu.libvirt_hostdev([{'uuid': U1.upper()}, U2], indent=2)
    root = ET.fromstring('<devices>%s</devices>' % text)
    assert [(h.get('mode'), h.get('type'), h.get('model')) for h in root] == [('subsystem', 'mdev', 'vfio-pci')] * 2
    assert [h.find('source/address').get('uuid') for h in root] == [U1, U2]
    assert text.startswith("  <hostdev mode='subsystem' type='mdev' model='vfio-pci'>")


def test_libvirt_hostdev_refuses_non_uuids():
    with pytest.raises(ValueError, match='expected a vGPU device UUID'):
        _vgpu.libvirt_hostdev(["x'/><evil"])
