"""The FUSE emulation of the SR-IOV vendor vGPU interface (--sriov): VFs, creatable types, current_vgpu_type."""
# pylint: disable=redefined-outer-name  # pytest fixtures are parameters by design
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time

import pytest

SIM_LIB = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))), "sim", "lib")

pytest.importorskip('mfusepy')
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
    env = dict(os.environ, PYTHONPATH=str(SIM_LIB))
    proc = subprocess.Popen([sys.executable, '-m', 'gpusim_sysfs', str(mnt), '--root', str(simhost.root), '--sriov'], env=env)
    deadline = time.time() + 10
    while not os.path.ismount(mnt):
        assert proc.poll() is None and time.time() < deadline, 'the FUSE server did not mount'
        time.sleep(0.05)
    yield mnt
    subprocess.run(['fusermount3', '-u', str(mnt)], check=False)
    proc.wait(timeout=10)
    assert not os.path.ismount(mnt)


def _write(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _errno_of(path, text):
    with pytest.raises(OSError) as info:
        _write(path, text)
    return info.value.errno


def _state(simhost):
    with open(simhost.root / 'state.json', encoding='utf-8') as handle:
        return json.load(handle)


def _dev(mnt, address):
    return mnt / 'bus' / 'pci' / 'devices' / address


def _creatable(mnt, vf):
    return [int(line.split(':')[0]) for line in (_dev(mnt, vf) / 'nvidia' / 'creatable_vgpu_types').read_text().splitlines()[1:]]


def test_the_a40_leaves_mdev_and_enables_vfs(sysfs, simhost):
    assert os.listdir(sysfs / 'class' / 'mdev_bus') == [T4]
    assert (_dev(sysfs, A40) / 'sriov_totalvfs').read_text() == '32\n'
    assert (_dev(sysfs, A40) / 'sriov_numvfs').read_text() == '0\n'
    assert not _dev(sysfs, VF0).exists()
    _write(_dev(sysfs, A40) / 'sriov_numvfs', '32')
    assert os.readlink(_dev(sysfs, A40) / 'virtfn0') == '../' + VF0
    assert os.readlink(_dev(sysfs, A40) / 'virtfn4') == '../' + VF4
    assert os.readlink(_dev(sysfs, VF4) / 'physfn') == '../' + A40
    assert len([n for n in os.listdir(_dev(sysfs, A40)) if n.startswith('virtfn')]) == 32
    assert _errno_of(_dev(sysfs, A40) / 'sriov_numvfs', '8') == errno.EBUSY
    assert _errno_of(_dev(sysfs, A40) / 'sriov_numvfs', '33') == errno.ERANGE
    _write(_dev(sysfs, A40) / 'sriov_numvfs', '32')  # the same count again: accepted
    assert _state(simhost)['sysfs_writes'] == {'sriov_numvfs': 4}


def test_create_shrinks_the_siblings_and_agrees_with_nvml(sysfs, simhost):
    _write(_dev(sysfs, A40) / 'sriov_numvfs', '32')
    assert A40_4Q in _creatable(sysfs, VF1) and A40_8Q in _creatable(sysfs, VF1)
    _write(_dev(sysfs, VF0) / 'nvidia' / 'current_vgpu_type', '%d\n' % A40_8Q)
    assert (_dev(sysfs, VF0) / 'nvidia' / 'current_vgpu_type').read_text() == '%d\n' % A40_8Q
    assert not _creatable(sysfs, VF0)  # the VF holds a vGPU
    assert _creatable(sysfs, VF1) == [A40_8Q]  # time-sliced A40: one type at a time
    gpu = _state(simhost)['gpus'][0]
    assert [(v['type_id'], v['vf']) for v in gpu['vgpu_instances']] == [(A40_8Q, 0)]


def test_vendor_errnos(sysfs, simhost):
    _write(_dev(sysfs, A40) / 'sriov_numvfs', '4')
    current = _dev(sysfs, VF0) / 'nvidia' / 'current_vgpu_type'
    assert _errno_of(current, 'x') == errno.EINVAL
    assert _errno_of(current, '9999') == errno.EINVAL
    _write(current, str(A40_48Q))
    assert _errno_of(current, str(A40_48Q)) == errno.EBUSY  # the VF holds one: write 0 first
    assert _errno_of(_dev(sysfs, VF1) / 'nvidia' / 'current_vgpu_type', str(A40_48Q)) == errno.ENOSPC  # one 48Q per GPU
    assert _errno_of(_dev(sysfs, VF1) / 'nvidia' / 'current_vgpu_type', str(A40_4Q)) == errno.ENOSPC  # another type
    assert _errno_of(_dev(sysfs, A40) / 'sriov_numvfs', '0') == errno.EBUSY
    _write(current, '0')
    assert current.read_text() == '0\n' and not _state(simhost)['gpus'][0]['vgpu_instances']
    assert _state(simhost)['sysfs_writes']['current_vgpu_type'] == 7


def test_removing_in_use_is_ebusy_and_reboot_disables_the_vfs(sysfs, simhost):
    _write(_dev(sysfs, A40) / 'sriov_numvfs', '4')
    _write(_dev(sysfs, VF1) / 'nvidia' / 'current_vgpu_type', str(A40_8Q))
    from gpusim import store  # pylint: disable=import-outside-toplevel
    with store.transaction(str(simhost.root)) as state:  # a VM attaches to the VF
        state['gpus'][0]['vgpu_instances'][0]['vm_id'] = 'vm-7'
    assert _errno_of(_dev(sysfs, VF1) / 'nvidia' / 'current_vgpu_type', '0') == errno.EBUSY
    simhost.ok('reboot')
    assert (_dev(sysfs, A40) / 'sriov_numvfs').read_text() == '0\n' and not _dev(sysfs, VF1).exists()
