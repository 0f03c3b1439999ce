# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_sysfs: every procfs and sysfs read under a root of the caller's (the vGPU writes: test_vgpu_sriov, the sim tests)."""
from __future__ import annotations

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _sysfs

PF = '0000:18:00.0'


def test_every_sysfs_and_procfs_read_takes_the_root(tmp_path):
    proc, sys_root = tmp_path / 'proc', tmp_path / 'sys'
    assert _sysfs.read_driver_version_file(str(proc)) is None
    (proc / 'driver' / 'nvidia').mkdir(parents=True)
    (proc / 'driver' / 'nvidia' / 'version').write_text('NVRM version: NVIDIA UNIX Open Kernel Module  580.95.05\n')
    assert 'Open Kernel Module' in _sysfs.read_driver_version_file(str(proc))
    assert _sysfs.read_sriov(PF, str(sys_root)) == {'total_vfs': None, 'num_vfs': None}
    device = sys_root / 'bus' / 'pci' / 'devices' / PF
    device.mkdir(parents=True)
    (device / 'sriov_totalvfs').write_text('32\n')
    (device / 'sriov_numvfs').write_text('0\n')
    assert _sysfs.read_sriov(PF, str(sys_root)) == {'total_vfs': 32, 'num_vfs': 0}


def test_loaded_modules_are_read_under_the_given_proc_root(tmp_path):
    (tmp_path / 'modules').write_text('nvidia_uvm 1937408 0 - Live 0x0\nnvidia 104022016 2 nvidia_uvm, Live 0x0\n\n')
    assert _sysfs.read_loaded_modules(str(tmp_path)) == {'nvidia_uvm', 'nvidia'}
    assert _sysfs.read_loaded_modules(str(tmp_path / 'absent')) is None
