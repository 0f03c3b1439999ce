# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The SR-IOV vendor vGPU interface: VF assignment in the pure planner, the sysfs seam, observe's view, the apply seam."""
from __future__ import annotations

import errno
import os
import xml.etree.ElementTree as ET

import pytest

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _sysfs, _vgpu, _vgpu_apply
from ansible_collections.gpuvirt.fleet.plugins.module_utils._vgpu import Device, GpuView, VgpuType

HOST = 'node-1'
PF = '0000:41:00.0'
VFS = ['0000:41:00.%d' % n for n in range(4, 8)] + ['0000:41:01.%d' % n for n in range(8)]  # 12 VFs, VF order
H100_TYPES = [(1, 'NVIDIA H100-10C', 8), (2, 'NVIDIA H100-20C', 4), (3, 'NVIDIA H100-40C', 2), (4, 'NVIDIA H100-80C', 1)]
U1 = 'aaaaaaaa-0000-4000-8000-000000000001'


def h100(held=(), in_use=(), vfs=VFS) -> GpuView:
    """An H100 in SR-IOV vGPU mode; `held` maps VF index -> short type name."""
    held = dict(held)
    devices = [Device(vfs[n], 'NVIDIA ' + t, in_use=n in in_use, vf=vfs[n]) for n, t in sorted(held.items())]
    kinds = set(held.values())
    types = []
    for type_id, name, maximum in H100_TYPES:
        same = sum(1 for t in held.values() if t == _vgpu.short_name(name))
        available = 0 if kinds - {_vgpu.short_name(name)} else min(maximum - same, len(vfs) - len(held))
        types.append(VgpuType(str(type_id), name, maximum, available))
    return GpuView(index=0, uuid='GPU-h100', name='NVIDIA H100 80GB HBM3', bus_id='00000000:41:00.0', parent=PF, types=types,
                   devices=devices, pci={'device_id': '0x2330'}, backend='sriov', vfs=list(vfs))


def plan(gpu, declaration):
    return _vgpu.plan_host(HOST, [gpu], declaration)


def moves(result):
    return [(s['action'], s['vf']) for s in result.steps]


def test_new_devices_take_the_lowest_vfs_in_slot_order():
    result = plan(h100(), [{'type': 'H100-20C', 'count': 3}])
    assert [(s['action'], s['vf'], s['type_id'], s['backend']) for s in result.steps] == [
        ('create', VFS[0], '2', 'sriov'), ('create', VFS[1], '2', 'sriov'), ('create', VFS[2], '2', 'sriov')]
    assert [d['uuid'] for d in result.as_dict()['after'][0]['devices']] == VFS[:3]


def test_reapply_is_stable_and_growth_fills_the_lowest_free_vf():
    assert not plan(h100({0: 'H100-20C', 1: 'H100-20C'}), [{'type': 'H100-20C', 'count': 2}]).changed
    # VF 1 was freed by hand: the third slot goes to VF 1, the kept ones stay on VFs 0 and 2
    assert moves(plan(h100({0: 'H100-20C', 2: 'H100-20C'}), [{'type': 'H100-20C', 'count': 3}])) == [('create', VFS[1])]


def test_shrinking_removes_the_highest_vfs_and_keeps_the_ones_in_use():
    three = {0: 'H100-20C', 1: 'H100-20C', 2: 'H100-20C'}
    assert moves(plan(h100(three), [{'type': 'H100-20C', 'count': 2}])) == [('remove', VFS[2])]
    assert moves(plan(h100(three, in_use={2}), [{'type': 'H100-20C', 'count': 2}])) == [('remove', VFS[1])]


def test_type_change_reuses_the_freed_vfs():
    result = plan(h100({0: 'H100-40C', 1: 'H100-40C'}), [{'type': 'H100-20C', 'count': 4}])
    assert moves(result) == [('remove', VFS[0]), ('remove', VFS[1]), ('create', VFS[0]), ('create', VFS[1]), ('create', VFS[2]),
                             ('create', VFS[3])]


@pytest.mark.parametrize('gpu, declaration, needle', [
    (h100(), [{'type': 'H100-20C', 'count': 5}], '5 x H100-20C exceed its capacity: at most 4'),
    (h100(), [{'type': 'H100-10C', 'count': 1}, {'type': 'H100-20C', 'count': 1}], 'allows one time-sliced vGPU type per GPU'),
    (h100(), [{'type': 'L40S-8Q', 'count': 1}], 'vGPU type L40S-8Q is not supported'),
    (h100(), [{'type': 'H100-20C', 'uuids': [U1]}], 'identified by its VF, not a UUID: drop uuids'),
    (h100(vfs=VFS[:2]), [{'type': 'H100-20C', 'count': 3}], '3 new vGPU(s) need as many free VFs, but 2 of the 2 enabled VF(s) are free'),
    (h100({0: 'H100-20C'}, in_use={0}), [{'type': 'H100-40C', 'count': 1}], 'device %s (H100-20C) is in use by a VM' % VFS[0]),
])
def test_refused_before_any_write(gpu, declaration, needle):
    with pytest.raises(_vgpu.VgpuPlanError) as info:
        plan(gpu, declaration)
    assert needle in str(info.value)


def test_verify_and_export_use_vfs():
    gpu = h100({0: 'H100-20C', 1: 'H100-20C'})
    result = plan(gpu, [{'type': 'H100-20C', 'count': 2}])
    assert not _vgpu.verify(result.desired(), [gpu])
    assert _vgpu.export_declaration([gpu]) == [{'devices': [0], 'type': 'H100-20C', 'count': 2}]
    assert not plan(gpu, _vgpu.export_declaration([gpu])).steps


def test_libvirt_hostdev_for_a_vf():
    text = _vgpu.libvirt_hostdev([{'vf': '0000:41:01.3', 'uuid': None}, {'uuid': U1}])
    root = ET.fromstring('<devices>%s</devices>' % text)
    assert [(h.get('type'), h.get('managed')) for h in root] == [('pci', 'no'), ('mdev', None)]
    address = root[0].find('source/address')
    assert (address.get('domain'), address.get('bus'), address.get('slot'), address.get('function')) == ('0x0000', '0x41', '0x01', '0x3')
    with pytest.raises(ValueError, match='VF PCI address'):
        _vgpu.libvirt_hostdev([{'vf': "x'/>"}])


# ---- the sysfs seam, on a tree laid out as the kernel lays it out
def make_tree(root, current=None, creatable='ID    : vGPU Name\n2     : NVIDIA H100-20C\n3     : NVIDIA H100-40C\n'):
    current = current or {}
    pf = os.path.join(root, 'bus/pci/devices', PF)
    os.makedirs(pf)
    for number, vf in enumerate(VFS[:3]):
        base = os.path.join(root, 'bus/pci/devices', vf)
        os.makedirs(os.path.join(base, 'nvidia'))
        os.symlink('../' + vf, os.path.join(pf, 'virtfn%d' % number))
        os.symlink('../' + PF, os.path.join(base, 'physfn'))
        with open(os.path.join(base, 'nvidia/creatable_vgpu_types'), 'w', encoding='utf-8') as handle:
            handle.write('' if number in current else creatable)
        with open(os.path.join(base, 'nvidia/current_vgpu_type'), 'w', encoding='utf-8') as handle:
            handle.write('%d\n' % current.get(number, 0))
    return str(root)


def test_sysfs_seam_reads_vfs_in_vf_order_and_their_state(tmp_path):
    root = make_tree(tmp_path, current={1: 2})
    assert _sysfs.list_vfs(PF, root) == VFS[:3]
    assert _sysfs.is_sriov_vgpu(VFS[0], root) and not _sysfs.is_sriov_vgpu(PF, root)
    assert _sysfs.read_vf_vgpu(VFS[0], root) == {'vf': VFS[0], 'creatable': [(2, 'NVIDIA H100-20C'), (3, 'NVIDIA H100-40C')], 'current': 0}
    assert _sysfs.read_vf_vgpu(VFS[1], root)['current'] == 2
    _sysfs.set_vf_vgpu_type(VFS[0], 3, root)
    assert _sysfs.read_vf_vgpu(VFS[0], root)['current'] == 3
    with pytest.raises(_sysfs.SysfsWriteError) as info:
        _sysfs.set_vf_vgpu_type('0000:99:00.1', 3, root)
    assert info.value.errno == errno.ENOENT


def test_sriov_parts_from_vfs_and_nvml():
    states = [{'vf': VFS[0], 'creatable': [(2, 'NVIDIA H100-20C')], 'current': 0},
              {'vf': VFS[1], 'creatable': [], 'current': 2},
              {'vf': VFS[2], 'creatable': [(2, 'NVIDIA H100-20C')], 'current': 0}]
    nvml = {'vgpu': {'supported_types': [{'id': t, 'name': n, 'max_instances': m} for t, n, m in H100_TYPES],
                     'active': [{'type': 'NVIDIA H100-20C', 'uuid': U1, 'vm_id': None}]}}
    types, devices = _vgpu_apply.sriov_parts(states, nvml)
    by_short = {t.short: t for t in types}
    assert (by_short['H100-20C'].type_id, by_short['H100-20C'].max_instances, by_short['H100-20C'].available) == ('2', 4, 2)
    assert by_short['H100-40C'].available == 0
    assert devices == [Device(VFS[1], 'NVIDIA H100-20C', vf=VFS[1], vgpu_uuid=U1)]
    # without NVML's catalogue the VFs' lists name the types, and the VF count bounds them
    types = _vgpu_apply.sriov_parts(states, {})[0]
    assert [(t.type_id, t.max_instances, t.available) for t in types] == [('2', 3, 2)]


@pytest.mark.parametrize('action, code, needle', [
    ('create', errno.EINVAL, 'cannot create it on this VF'),
    ('create', errno.ENOSPC, 'no capacity left for this type'),
    ('remove', errno.EBUSY, 'in use (a VM holds the VF)'),
    ('remove', errno.ENOENT, 'sriov-manage -e'),
])
def test_errno_in_words_names_the_vf(action, code, needle):
    step = {'action': action, 'backend': 'sriov', 'vf': VFS[2], 'device': VFS[2], 'type': 'NVIDIA H100-20C', 'type_id': '2', 'parent': PF}
    text = _vgpu_apply.explain(step, _sysfs.SysfsWriteError('x', code, os.strerror(code)))
    assert VFS[2] in text and needle in text and errno.errorcode[code] in text


def test_run_writes_the_type_id_then_zero(tmp_path):
    root = make_tree(tmp_path)
    step = {'action': 'create', 'backend': 'sriov', 'vf': VFS[0], 'device': VFS[0], 'type': 'NVIDIA H100-20C', 'type_id': '2', 'parent': PF}
    _vgpu_apply._run(step, root)  # pylint: disable=protected-access
    assert _sysfs.read_vf_vgpu(VFS[0], root)['current'] == 2
    _vgpu_apply._run(dict(step, action='remove'), root)  # pylint: disable=protected-access
    assert _sysfs.read_vf_vgpu(VFS[0], root)['current'] == 0
