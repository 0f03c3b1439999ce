# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vgpu_devices, unchanged, against a simulated host whose A40 uses the SR-IOV vendor vGPU interface: real module
runs, the NVML stand-in, and the emulated sysfs (gpusim_sysfs --sriov) mounted with FUSE as the module's sysfs_root.

The VFs are enabled by writing sriov_numvfs, as sriov-manage -e does.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from simhost import SIM_LIB, SimHost  # noqa: E402 pylint: disable=import-error,wrong-import-position

if SIM_LIB not in sys.path:
    sys.path.append(SIM_LIB)  # after site-packages: its pynvml stand-in must not shadow the real one here
from gpusim_sysfs.serve import served  # noqa: E402 pylint: disable=import-error,wrong-import-position

if not os.path.exists('/dev/fuse'):
    pytest.skip('no /dev/fuse', allow_module_level=True)
pytest.importorskip('mfusepy')

A40 = '0000:18:00.0'
VFS = ['0000:18:00.%d' % n for n in range(4, 8)] + ['0000:18:01.%d' % n for n in range(8)]
HOSTNAME = 'vgpu-sriov-node'
FOUR_8Q = [{'name': 'desktops', 'devices': {'model': 'NVIDIA A40'}, 'type': 'A40-8Q', 'count': 4}]


class SriovHost(SimHost):
    def __init__(self, root: str, sysfs: Path, mdevctl: Path):
        super().__init__(root)
        self.sysfs = sysfs
        self.mdevctl = mdevctl

    def apply(self, config=None, check_mode=False, diff=False) -> dict:
        args = {'hostname': HOSTNAME, 'sysfs_root': str(self.sysfs), 'mdevctl_dir': str(self.mdevctl), 'config': config}
        return self.module('vgpu_devices', args, check_mode=check_mode, diff=diff)

    def enable_vfs(self, count: int = 12) -> None:
        fd = os.open(self.sysfs / 'bus' / 'pci' / 'devices' / A40 / 'sriov_numvfs', os.O_WRONLY)
        try:
            os.write(fd, b'%d\n' % count)
        finally:
            os.close(fd)

    def vfs(self) -> list[tuple[str, int]]:
        """(VF, type id) of the A40's vGPUs, as the simulator's state (NVML) records them."""
        return sorted((VFS[v['vf']], v['type_id']) for v in self.state()['gpus'][0]['vgpu_instances'])

    def writes(self) -> int:
        return sum(self.state().get('sysfs_writes', {}).get(k, 0) for k in ('current_vgpu_type',))


@pytest.fixture(name='host')
def host_fixture(tmp_path):
    host = SriovHost(str(tmp_path / 'gpusim'), tmp_path / 'sys', tmp_path / 'mdevctl.d')
    host.ctl('init', '--hostname', HOSTNAME, '--gpu', 'a40', '--gpu', 't4', '--vgpu-host')
    host.sysfs.mkdir()
    with served(host.sysfs, host.root, sriov=True):
        yield host


def test_apply_rerun_shrink_grow_on_the_lowest_vfs(host):
    host.enable_vfs()
    first = host.apply(FOUR_8Q)
    assert first['changed'] and not first.get('failed'), first
    assert host.vfs() == [(vf, 562) for vf in VFS[:4]]
    assert sorted(d['vf'] for d in first['devices'] if d['gpu'] == 0) == VFS[:4]
    assert all(d['backend'] == 'sriov' for d in first['devices'] if d['gpu'] == 0)
    assert not host.mdevctl.exists()  # no mdevctl for VFs
    writes = host.writes()
    again = host.apply(FOUR_8Q)
    assert not again['changed'] and host.writes() == writes
    fewer = host.apply([dict(FOUR_8Q[0], count=2)])
    assert [(s['action'], s['vf']) for s in fewer['steps']] == [('remove', VFS[2]), ('remove', VFS[3])]
    more = host.apply([dict(FOUR_8Q[0], count=3)])
    assert [(s['action'], s['vf']) for s in more['steps']] == [('create', VFS[2])]
    assert host.vfs() == [(vf, 562) for vf in VFS[:3]]


def test_reboot_then_reapply_gives_the_same_vfs(host):
    host.enable_vfs()
    host.apply(FOUR_8Q)
    before = host.vfs()
    host.ctl('reboot')
    host.enable_vfs()  # the boot-time unit's sriov-manage -e
    assert host.vfs() == []
    assert host.apply(FOUR_8Q)['changed']
    assert host.vfs() == before


@pytest.mark.parametrize('config, needle', [
    ([{'devices': [0], 'type': 'A40-8Q', 'count': 7}], 'exceed its capacity: at most 6'),
    ([{'devices': [0], 'type': 'A40-9Z', 'count': 1}], 'vGPU type A40-9Z is not supported by NVIDIA A40'),
    ([{'devices': [0], 'type': 'A40-8Q', 'count': 1}, {'devices': [0], 'type': 'A40-4Q', 'count': 1}],
     'allows one time-sliced vGPU type per GPU'),
    ([{'devices': [0], 'type': 'A40-1Q', 'count': 13}], '13 new vGPU(s) need as many free VFs, but 12 of the 12'),
    ([{'devices': [0], 'type': 'A40-8Q', 'uuids': ['0b6c1d1a-6f2e-4a8b-9c59-2d1c7a8e9f00']}], 'identified by its VF, not a UUID'),
])
def test_refused_plans_write_nothing(host, config, needle):
    host.enable_vfs()
    result = host.apply(config)
    assert result.get('failed') and needle in result['msg'] and 'nothing was changed' in result['msg'], result
    assert host.writes() == 0 and host.vfs() == []


def test_in_use_vf_is_ebusy_with_a_clear_message_and_rolled_back(host):
    host.enable_vfs()
    host.apply(FOUR_8Q)
    before = host.vfs()
    from gpusim import store  # pylint: disable=import-outside-toplevel,import-error
    with store.transaction(host.root) as state:  # a VM attaches to the VF of slot 3 (the 4th VF)
        next(v for v in state['gpus'][0]['vgpu_instances'] if v['vf'] == 3)['vm_id'] = 'vm-1'
    # NVML does not name an active vGPU's VF, so the kernel's EBUSY is what stops the removal; the run rolls back
    shrink = host.apply([dict(FOUR_8Q[0], count=3)])
    assert shrink.get('failed') and 'EBUSY' in shrink['msg'] and VFS[3] in shrink['msg'] and 'shut the VM down' in shrink['msg']
    assert shrink['rollback']['restored'] and host.vfs() == before
    changed = host.apply([{'devices': [0], 'type': 'A40-4Q', 'count': 1}])
    assert changed.get('failed') and changed['rollback']['restored'] and host.vfs() == before


def test_check_mode_writes_nothing(host):
    host.enable_vfs()
    result = host.apply(FOUR_8Q, check_mode=True, diff=True)
    assert result['changed'] and len(result['steps']) == 4 and host.writes() == 0
    assert [s['vf'] for s in result['steps']] == VFS[:4]
