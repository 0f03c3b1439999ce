"""The FUSE emulation of the mdev sysfs trees: kernel semantics, and agreement with the simulator's NVML state."""
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

A40 = '0000:18:00.0'
T4 = '0000:2a:00.0'
A40_8Q, A40_4Q, A40_1Q = 'nvidia-562', 'nvidia-560', 'nvidia-557'
U1 = '11111111-2222-3333-4444-555555555555'
U2 = '11111111-2222-3333-4444-666666666666'


@pytest.fixture
def sysfs(simhost, tmp_path):
    """A vGPU host (A40, T4, H100) with its mdev trees mounted at <tmp>/sys."""
    simhost.init('a40', 't4', 'h100-80gb-hbm3', extra=('--vgpu-host',))
    mnt = tmp_path / 'sys'
    mnt.mkdir()
    with served(mnt, simhost.root):
        yield mnt
    assert not os.path.ismount(mnt)


def _types(mnt, parent):
    return mnt / 'class' / 'mdev_bus' / parent / 'mdev_supported_types'


def test_parents_are_the_vgpu_capable_gpus_only(sysfs):
    assert sorted(os.listdir(sysfs / 'class' / 'mdev_bus')) == [A40, T4]
    assert (_types(sysfs, A40) / A40_8Q / 'name').read_text() == 'NVIDIA A40-8Q\n'
    assert 'max_instance=6' in (_types(sysfs, A40) / A40_8Q / 'description').read_text()
    assert (_types(sysfs, A40) / A40_8Q / 'device_api').read_text() == 'vfio-pci\n'
    assert (_types(sysfs, A40) / A40_8Q / 'available_instances').read_text() == '6\n'
    assert os.listdir(sysfs / 'bus' / 'mdev' / 'devices') == []


def test_create_appears_in_sysfs_and_nvml_and_shrinks_capacity(sysfs, simhost):
    write(_types(sysfs, A40) / A40_8Q / 'create', U1 + '\n')
    device = sysfs / 'bus' / 'mdev' / 'devices' / U1
    assert device.is_dir()
    assert os.path.basename(os.readlink(device / 'mdev_type')) == A40_8Q
    assert os.listdir(_types(sysfs, A40) / A40_8Q / 'devices') == [U1]
    assert (_types(sysfs, A40) / A40_8Q / 'available_instances').read_text() == '5\n'
    # homogeneous: another type has no room while an 8Q exists
    assert (_types(sysfs, A40) / A40_4Q / 'available_instances').read_text() == '0\n'
    gpu = state(simhost)['gpus'][0]
    assert [(v['uuid'], v['type_id']) for v in gpu['vgpu_instances']] == [(U1, 562)]


def test_kernel_errnos_and_write_counts(sysfs, simhost):
    create = _types(sysfs, A40) / A40_8Q / 'create'
    assert errno_of(create, 'not-a-uuid') == errno.EINVAL
    write(create, U1)
    assert errno_of(create, U1) == errno.EEXIST
    assert errno_of(_types(sysfs, A40) / A40_4Q / 'create', U2) == errno.ENOSPC
    assert errno_of(sysfs / 'bus' / 'mdev' / 'devices' / U1 / 'remove', '2') == errno.EINVAL
    assert state(simhost)['sysfs_writes'] == {'create': 4, 'remove': 1}


def test_capacity_runs_out_at_the_types_maximum(sysfs):
    create = _types(sysfs, A40) / 'nvidia-566' / 'create'  # A40-48Q: one per GPU
    write(create, U1)
    assert errno_of(create, U2) == errno.ENOSPC


def test_remove_in_use_is_ebusy_and_free_remove_disappears(sysfs, simhost):
    write(_types(sysfs, T4) / 'nvidia-230' / 'create', U1)
    simhost.ok('vgpu', 'add', '--gpu', '1', '--type', '230', '--uuid', U2, '--vm-id', 'vm-7')
    assert errno_of(sysfs / 'bus' / 'mdev' / 'devices' / U2 / 'remove', '1') == errno.EBUSY
    write(sysfs / 'bus' / 'mdev' / 'devices' / U1 / 'remove', '1')
    assert sorted(os.listdir(sysfs / 'bus' / 'mdev' / 'devices')) == [U2]
    assert not (sysfs / 'bus' / 'mdev' / 'devices' / U1).exists()


def test_reboot_clears_the_devices(sysfs, simhost):
    write(_types(sysfs, A40) / A40_1Q / 'create', U1)
    simhost.ok('reboot')
    assert os.listdir(sysfs / 'bus' / 'mdev' / 'devices') == []
