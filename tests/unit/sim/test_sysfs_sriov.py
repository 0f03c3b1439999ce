"""The FUSE emulation of the SR-IOV vendor vGPU interface (--sriov): VFs, creatable types, current_vgpu_type."""
# pylint: disable=redefined-outer-name  # pytest fixtures are parameters by design
from __future__ import annotations

import errno
import os

import pytest

pytest.importorskip('mfusepy')

from gpusim_sysfs.serve import served  # noqa: E402 pylint: disable=import-error,wrong-import-position
from sysfs_support import errno_of, state, write  # noqa: E402 pylint: disable=import-error,wrong-import-position

if not os.path.exists('/dev/fuse'):
    pytest.skip('no /dev/fuse', allow_module_level=True)

A40, T4 = '0000:18:00.0', '0000:2a:00.0'
VF0, VF1, VF4 = '0000:18:00.4', '0000:18:00.5', '0000:18:01.0'
A40_8Q, A40_4Q, A40_48Q = 562, 560, 566


@pytest.fixture
def sysfs(simhost, tmp_path):
    """A vGPU host (A40, T4) with the SR-IOV vendor interface on the A40, mounted at <tmp>/sys."""
    simhost.init('a40', 't4', extra=('--vgpu-host',))
    mnt = tmp_path / 'sys'
    mnt.mkdir()
    with served(mnt, simhost.root, sriov=True):
        yield mnt
    assert not os.path.ismount(mnt)


def _dev(mnt, address):
    return mnt / 'bus' / 'pci' / 'devices' / address


def _creatable(mnt, vf):
    return [int(line.split(':')[0]) for line in (_dev(mnt, vf) / 'nvidia' / 'creatable_vgpu_types').read_text().splitlines()[1:]]


def test_the_a40_leaves_mdev_and_enables_vfs(sysfs, simhost):
    assert os.listdir(sysfs / 'class' / 'mdev_bus') == [T4]
    assert (_dev(sysfs, A40) / 'sriov_totalvfs').read_text() == '32\n'
    assert (_dev(sysfs, A40) / 'sriov_numvfs').read_text() == '0\n'
    assert not _dev(sysfs, VF0).exists()
    write(_dev(sysfs, A40) / 'sriov_numvfs', '32')
    assert os.readlink(_dev(sysfs, A40) / 'virtfn0') == '../' + VF0
    assert os.readlink(_dev(sysfs, A40) / 'virtfn4') == '../' + VF4
    assert os.readlink(_dev(sysfs, VF4) / 'physfn') == '../' + A40
    assert len([n for n in os.listdir(_dev(sysfs, A40)) if n.startswith('virtfn')]) == 32
    assert errno_of(_dev(sysfs, A40) / 'sriov_numvfs', '8') == errno.EBUSY
    assert errno_of(_dev(sysfs, A40) / 'sriov_numvfs', '33') == errno.ERANGE
    write(_dev(sysfs, A40) / 'sriov_numvfs', '32')  # the same count again: accepted
    assert state(simhost)['sysfs_writes'] == {'sriov_numvfs': 4}


def test_create_shrinks_the_siblings_and_agrees_with_nvml(sysfs, simhost):
    write(_dev(sysfs, A40) / 'sriov_numvfs', '32')
    assert A40_4Q in _creatable(sysfs, VF1) and A40_8Q in _creatable(sysfs, VF1)
    write(_dev(sysfs, VF0) / 'nvidia' / 'current_vgpu_type', '%d\n' % A40_8Q)
    assert (_dev(sysfs, VF0) / 'nvidia' / 'current_vgpu_type').read_text() == '%d\n' % A40_8Q
    assert not _creatable(sysfs, VF0)  # the VF holds a vGPU
    assert _creatable(sysfs, VF1) == [A40_8Q]  # time-sliced A40: one type at a time
    gpu = state(simhost)['gpus'][0]
    assert [(v['type_id'], v['vf']) for v in gpu['vgpu_instances']] == [(A40_8Q, 0)]


def test_vendor_errnos(sysfs, simhost):
    write(_dev(sysfs, A40) / 'sriov_numvfs', '4')
    current = _dev(sysfs, VF0) / 'nvidia' / 'current_vgpu_type'
    assert errno_of(current, 'x') == errno.EINVAL
    assert errno_of(current, '9999') == errno.EINVAL
    write(current, str(A40_48Q))
    assert errno_of(current, str(A40_48Q)) == errno.EBUSY  # the VF holds one: write 0 first
    assert errno_of(_dev(sysfs, VF1) / 'nvidia' / 'current_vgpu_type', str(A40_48Q)) == errno.ENOSPC  # one 48Q per GPU
    assert errno_of(_dev(sysfs, VF1) / 'nvidia' / 'current_vgpu_type', str(A40_4Q)) == errno.ENOSPC  # another type
    assert errno_of(_dev(sysfs, A40) / 'sriov_numvfs', '0') == errno.EBUSY
    write(current, '0')
    assert current.read_text() == '0\n' and not state(simhost)['gpus'][0]['vgpu_instances']
    assert state(simhost)['sysfs_writes']['current_vgpu_type'] == 7


def test_removing_in_use_is_ebusy_and_reboot_disables_the_vfs(sysfs, simhost):
    write(_dev(sysfs, A40) / 'sriov_numvfs', '4')
    write(_dev(sysfs, VF1) / 'nvidia' / 'current_vgpu_type', str(A40_8Q))
    from gpusim import store  # pylint: disable=import-outside-toplevel
    with store.transaction(str(simhost.root)) as state:  # a VM attaches to the VF
        state['gpus'][0]['vgpu_instances'][0]['vm_id'] = 'vm-7'
    assert errno_of(_dev(sysfs, VF1) / 'nvidia' / 'current_vgpu_type', '0') == errno.EBUSY
    simhost.ok('reboot')
    assert (_dev(sysfs, A40) / 'sriov_numvfs').read_text() == '0\n' and not _dev(sysfs, VF1).exists()
