# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpuvirt.fleet.vgpu on the fleet, over SSH, against a host whose A40 uses the SR-IOV vendor vGPU interface
(vGPU 17+): /sys/bus/pci/devices is the FUSE emulation and sriov-manage is where NVIDIA's vGPU manager installs it.
The role enables the VFs, puts one vGPU on each VF (current_vgpu_type), reruns unchanged, changes only the difference
for a changed count, and after a reboot (the VFs and their vGPUs are gone) the boot-time service enables the VFs and
re-creates the same devices on the same VFs. On this interface a vGPU is its VF: the VF's PCI address is what a VM
is given and what stays stable (NVML's vGPU UUID is the driver's, new at each creation). Refused declarations write
nothing.

Needs root (the fleet). Brings up fleet-vgpu-sriov.yml (fleet 'vgpusriov', ports 23250+) with its own inventory and
tears it down in the fixture's finaliser.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from fleethost import FleetHost, fleet_up  # noqa: E402 pylint: disable=import-error,wrong-import-position
from vgpu_backend_tests import SIX  # noqa: E402 pylint: disable=import-error,wrong-import-position

HERE = Path(__file__).resolve().parent
FLEET = 'vgpusriov'
HOST = 'vs-a40'
A40 = '0000:18:00.0'
T4 = '0000:2a:00.0'

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='the fleet needs root')


class Host(FleetHost):
    def devices(self) -> list[tuple[int, int]]:
        """(VF number, type id) per vGPU instance of the A40, as NVML sees them."""
        return sorted((v['vf'], v['type_id']) for v in self.state()['gpus'][0]['vgpu_instances'])

    def vf_types(self) -> dict[str, int]:
        """current_vgpu_type of every VF of the A40 that has a vGPU, read from sysfs."""
        out = self.sh('for vf in /sys/bus/pci/devices/%s/virtfn*; do t=$(cat $vf/nvidia/current_vgpu_type); '
                      '[ "$t" = 0 ] || echo "$(basename $(readlink -f $vf)) $t"; done' % A40)
        return {line.split()[0]: int(line.split()[1]) for line in out.splitlines() if line.strip()}

    def writes(self) -> int:
        return sum(self.state().get('sysfs_writes', {}).get(k, 0) for k in ('current_vgpu_type',))


@pytest.fixture(scope='module', name='host')
def host_fixture(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('vgpu-sriov')
    with fleet_up(FLEET, HERE / 'fleet-vgpu-sriov.yml', workdir) as inventory:
        host = Host(FLEET, HOST, workdir, inventory, HERE / 'vgpu.yml')
        host.sh('systemctl is-system-running --wait >/dev/null || true')
        yield host


def test_the_a40_is_an_sriov_pf_and_the_t4_an_mdev_parent(host):
    assert host.sh('cat /sys/bus/pci/devices/%s/sriov_totalvfs' % A40).strip() == '32'
    assert host.sh('cat /sys/bus/pci/devices/%s/sriov_numvfs' % A40).strip() == '0'
    assert host.sh('ls /sys/class/mdev_bus').split() == [T4]
    assert host.sh('test -x /usr/lib/nvidia/sriov-manage && echo yes').strip() == 'yes'


def test_role_enables_the_vfs_and_puts_one_vgpu_on_each(host):
    proc = host.play(gpu_vgpu=SIX)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert host.sh('cat /sys/bus/pci/devices/%s/sriov_numvfs' % A40).strip() == '32'
    devices = host.devices()
    assert devices == [(vf, 562) for vf in range(6)], 'one vGPU per VF, on the first six VFs'
    assert sorted(host.vf_types().values()) == [562] * 6
    assert host.sh('systemctl is-enabled gpuvirt-vgpu.service').strip() == 'enabled'


def test_the_same_vfs_after_a_reboot(host):
    before = host.devices()
    host.reboot()
    assert host.sh('systemctl is-active gpuvirt-vgpu.service').strip() == 'active'
    assert host.sh('cat /sys/bus/pci/devices/%s/sriov_numvfs' % A40).strip() == '32'
    assert host.devices() == before
    assert host.changed(host.play(gpu_vgpu=SIX)) == 0


# The tests both backends share, run here against this file's host after the ones above (pytest collects a module's
# tests in the order their names enter it; they need the devices the tests above created).
from vgpu_backend_tests import (  # noqa: E402,F401 pylint: disable=wrong-import-position,unused-import,import-error
    test_rerun_changes_nothing_and_writes_nothing, test_changed_count_creates_and_removes_only_the_difference,
    test_refused_declarations_write_nothing)
