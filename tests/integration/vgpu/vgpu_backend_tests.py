# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the vGPU role promises on either backend (mdev, SR-IOV vendor interface), as tests that both fleet test
files import and run against their own host: a rerun writes nothing, a changed count writes only the difference, a
refused declaration writes nothing. The host fixture gives `devices()` (the identity that must stay stable on that
backend) and `writes()` (the emulated sysfs's count of writes).
"""
from __future__ import annotations

import pytest

SIX = [{'name': 'desktops', 'devices': {'model': 'NVIDIA A40'}, 'type': 'A40-8Q', 'count': 6}]


def test_rerun_changes_nothing_and_writes_nothing(host):
    before, writes = host.devices(), host.writes()
    proc = host.play(gpu_vgpu=SIX)
    assert proc.returncode == 0 and host.changed(proc) == 0, proc.stdout[-4000:]
    assert host.devices() == before and host.writes() == writes


def test_changed_count_creates_and_removes_only_the_difference(host):
    six, writes = host.devices(), host.writes()
    proc = host.play(gpu_vgpu=[dict(SIX[0], count=4)])
    assert proc.returncode == 0, proc.stdout[-4000:]
    four = host.devices()
    assert set(four) < set(six) and len(four) == 4 and host.writes() == writes + 2
    proc = host.play(gpu_vgpu=SIX)
    assert proc.returncode == 0 and host.devices() == six and host.writes() == writes + 4


@pytest.mark.parametrize('declaration, needle', [
    ([dict(SIX[0], count=7)], 'exceed its capacity'),
    ([dict(SIX[0], type='A40-7Z')], 'vGPU type A40-7Z is not supported'),
    ([SIX[0], {'name': 'mixed', 'devices': [0], 'type': 'A40-4Q', 'count': 1}], 'allows one time-sliced vGPU type per GPU'),
])
def test_refused_declarations_write_nothing(host, declaration, needle):
    before, writes = host.devices(), host.writes()
    proc = host.play(gpu_vgpu=declaration)
    assert proc.returncode != 0 and needle in proc.stdout, proc.stdout[-4000:]
    assert host.devices() == before and host.writes() == writes
