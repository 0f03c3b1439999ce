# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpuvirt.fleet.vgpu on the fleet, over SSH, against a host whose /sys/class/mdev_bus and /sys/bus/mdev are the
FUSE emulation: apply, rerun unchanged, a changed count touches only the difference, the same UUIDs after a
re-apply and after a reboot (the boot-time service re-creates them), and refused declarations write nothing.

Needs root (the fleet). Brings up fleet-vgpu.yml (fleet 'vgputest', ports 23200+) with its own inventory and tears
it down in the fixture's finaliser.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from fleethost import FleetHost, fleet_up  # noqa: E402 pylint: disable=import-error,wrong-import-position
from vgpu_backend_tests import SIX  # noqa: E402 pylint: disable=import-error,wrong-import-position

HERE = Path(__file__).resolve().parent
FLEET = 'vgputest'
HOST = 'vt-a40'
A40 = '0000:18:00.0'

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='the fleet needs root')


class Host(FleetHost):
    def devices(self, gpu: int = 0) -> list[tuple[str, int]]:
        """(uuid, type id) per vGPU instance of one GPU, as NVML sees them."""
        return sorted((v['uuid'], v['type_id']) for v in self.state()['gpus'][gpu]['vgpu_instances'])

    def sysfs_devices(self) -> list[str]:
        return sorted(self.sh('ls /sys/bus/mdev/devices').split())

    def writes(self) -> int:
        return sum(self.state().get('sysfs_writes', {}).values())


@pytest.fixture(scope='module', name='host')
def host_fixture(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('vgpu')
    with fleet_up(FLEET, HERE / 'fleet-vgpu.yml', workdir) as inventory:
        host = Host(FLEET, HOST, workdir, inventory, HERE / 'vgpu.yml')
        host.sh('systemctl is-system-running --wait >/dev/null || true')
        yield host


def test_the_host_has_the_emulated_mdev_trees(host):
    assert host.sh('ls /sys/class/mdev_bus').split() == [A40, '0000:2a:00.0']
    assert host.sh('cat /sys/class/mdev_bus/%s/mdev_supported_types/nvidia-562/name' % A40).strip() == 'NVIDIA A40-8Q'


def test_role_creates_the_devices_and_persists_them(host):
    proc = host.play(gpu_vgpu=SIX)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    devices = host.devices()
    assert len(devices) == 6 and {pair[1] for pair in devices} == {562}
    assert host.sysfs_devices() == [pair[0] for pair in devices]
    assert sorted(host.sh('ls /etc/mdevctl.d/%s' % A40).split()) == [pair[0] for pair in devices]
    assert '"start": "auto"' in host.sh('cat /etc/mdevctl.d/%s/%s' % (A40, devices[0][0]))
    assert host.sh('systemctl is-enabled gpuvirt-vgpu.service').strip() == 'enabled'


def test_uuids_are_the_same_after_a_reboot(host):
    before = host.devices()
    host.reboot()
    assert host.sh('systemctl is-active gpuvirt-vgpu.service').strip() == 'active'
    assert host.devices() == before
    assert host.sysfs_devices() == [pair[0] for pair in before]
    assert host.changed(host.play(gpu_vgpu=SIX)) == 0


# The tests both backends share, run here against this file's host after the ones above (pytest collects a module's
# tests in the order their names enter it; they need the devices the tests above created).
from vgpu_backend_tests import (  # noqa: E402,F401 pylint: disable=wrong-import-position,unused-import,import-error
    test_rerun_changes_nothing_and_writes_nothing, test_changed_count_creates_and_removes_only_the_difference,
    test_refused_declarations_write_nothing)


def test_the_gpu_operator_default_label_applies_through_the_role_and_a_rerun_is_unchanged(host):
    """The operator-style vgpu-device-manager `default` label (an entry per model by device-filter) on this A40 + T4
    host: each GPU gets its model's default type, replacing what it held; the entries for other models are skipped."""
    config = yaml.safe_load((HERE.parent.parent / 'unit' / 'fixtures' / 'nvidia' / 'vgpu-device-manager-config.yaml').read_text())
    proc = host.play(vgpu_device_manager_config=config, vgpu_device_manager_label='default')
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert [pair[1] for pair in host.devices(0)] == [565, 565]  # A40-24Q
    assert [pair[1] for pair in host.devices(1)] == [233, 233]  # T4-8Q
    devices, writes = host.devices(0) + host.devices(1), host.writes()
    again = host.play(vgpu_device_manager_config=config, vgpu_device_manager_label='default')
    assert again.returncode == 0 and host.changed(again) == 0, again.stdout[-4000:]
    assert host.devices(0) + host.devices(1) == devices and host.writes() == writes


def test_the_health_gate_checks_what_the_role_applied(host):
    """The declaration gate of site.yml and rollout.yml runs the role's own verify entry point: where vgpu_declaration
    overrides gpu_vgpu, the role applies the override and the gate checks the override (gpu_vgpu, six devices, would
    plan four creations here); the gate fails, naming the steps, once the role's declaration differs from the GPUs."""
    two = [dict(SIX[0], count=2)]
    proc = host.play(gpu_vgpu=SIX, vgpu_declaration=two)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert [pair[1] for pair in host.devices(0)] == [562, 562]  # A40-8Q
    gates = host.play(HERE / 'gates.yml', gpu_vgpu=SIX, vgpu_declaration=two)
    assert gates.returncode == 0 and '"declaration": "passed"' in gates.stdout, gates.stdout[-4000:]
    gates = host.play(HERE / 'gates.yml', gpu_vgpu=two, vgpu_declaration=SIX)
    assert gates.returncode != 0 and 'the vGPU devices differ from the declaration: 4 step(s) planned' in gates.stdout, gates.stdout[-4000:]
