# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The mig role on a host whose GPUs are held, as on a real host: the exporter and nvidia-persistenced keep NVML
sessions open, so a GPU reset (a MIG mode change) is refused while they run. The role stops them only for a change
that resets, starts them again (also after a failure), and an unknown holder makes the change fail before any GPU is
touched, naming it; a loaded nvidia_drm leaves the mode change pending for a reboot.

Needs root (the fleet). Brings up fleet-holders.yml (fleet 'migholders', ports 23160+).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fleethost import FleetHost, fleet_up  # noqa: E402 pylint: disable=import-error,wrong-import-position

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
FLEET = 'migholders'
HOST = 'mh-h100'
SERVICES = ('gpuvirt-exporter', 'nvidia-persistenced')
HALVES = [{'name': 'halves', 'devices': [0], 'enabled': True,
           'instances': [{'profile': '3g.40gb', 'start': 0}, {'profile': '3g.40gb', 'start': 4}]}]
ONE_7G = [{'name': 'whole', 'devices': [0], 'enabled': True, 'instances': [{'profile': '7g.80gb'}]}]
OFF = [{'name': 'off', 'devices': [0], 'enabled': False}]
MYSTERY = "import pynvml, time; pynvml.nvmlInit(); time.sleep(3600)"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='the fleet needs root')


class Host(FleetHost):
    def main_pids(self) -> dict[str, int]:
        return {unit: int(self.sh('systemctl show -p MainPID --value %s.service' % unit).strip()) for unit in SERVICES}

    def active(self) -> dict[str, str]:
        return {unit: self.sh('systemctl is-active %s.service || true' % unit).strip() for unit in SERVICES}

    def holder_pids(self) -> set[int]:
        """The pids with a /dev/nvidia<N> open, as fuser finds them on a real host."""
        out = self.sh("for p in /proc/[0-9]*; do ls -l $p/fd 2>/dev/null | grep -q '/dev/nvidia[0-9]' && echo ${p#/proc/}; done; true")
        return {int(pid) for pid in out.split()}

    def counts(self) -> list[tuple]:
        return [(gpu.get('nvml_mutations'), gpu.get('resets', 0), gpu['mig']) for gpu in self.state()['gpus']]


@pytest.fixture(scope='module', name='host')
def host_fixture(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('holders')
    with fleet_up(FLEET, HERE / 'fleet-holders.yml', workdir) as inventory:
        host = Host(FLEET, HOST, workdir, inventory, HERE / 'holders.yml')
        host.wheels = str(REPO / '.build' / 'exporter-wheels')
        yield host


def _play(host, **variables):
    return host.play(exporter_wheel_dir=host.wheels, **variables)


def test_a_mode_change_stops_the_gpu_services_resets_and_starts_them_again(host):
    proc = _play(host)  # the exporter first, nothing declared
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    before = host.main_pids()
    assert set(before.values()) <= host.holder_pids(), 'the exporter and persistenced must hold the GPUs'
    resets = [c[1] for c in host.counts()]
    proc = _play(host, gpu_mig=HALVES)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert [c[1] for c in host.counts()] == [resets[0] + 1, resets[1]]
    assert host.active() == {unit: 'active' for unit in SERVICES}
    after = host.main_pids()
    assert all(after[unit] != before[unit] for unit in SERVICES), 'both services were stopped for the reset and started again'
    assert set(after.values()) <= host.holder_pids()


def test_a_change_without_a_reset_leaves_the_gpu_services_running(host):
    before = host.main_pids()
    proc = _play(host, gpu_mig=ONE_7G)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert host.changed(proc) > 0 and host.main_pids() == before


def test_an_unknown_holder_fails_the_change_before_any_gpu_is_touched_naming_it(host):
    host.sh('systemd-run --unit=mystery-cuda --property=Type=simple python3 -c "%s"' % MYSTERY)
    mystery = int(host.sh('systemctl show -p MainPID --value mystery-cuda.service').strip())
    for _attempt in range(50):
        if mystery in host.holder_pids():
            break
        host.sh('sleep 0.1')
    before, counts = host.main_pids(), host.counts()
    proc = _play(host, gpu_mig=OFF)
    assert proc.returncode != 0
    assert 'GPU 0 is held by pid %d (/usr/bin/python3 -c import pynvml' % mystery in proc.stdout, proc.stdout[-6000:]
    assert 'unit mystery-cuda.service' in proc.stdout and 'nothing was changed' in proc.stdout
    assert host.counts() == counts, 'no NVML mutation and no reset may have happened'
    # the services it stopped run again after the failure; the unknown process was not killed
    assert host.active() == {unit: 'active' for unit in SERVICES} and host.main_pids() != before
    assert host.sh('systemctl is-active mystery-cuda.service').strip() == 'active'
    host.sh('systemctl stop mystery-cuda.service')
    proc = _play(host, gpu_mig=OFF)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert host.counts()[0][2] == {'current': 0, 'pending': 0}


def test_a_loaded_nvidia_drm_leaves_the_mode_change_pending_and_a_reboot_completes_it(host):
    host.sh('gpusimctl nvidia-drm --loaded yes')
    assert host.sh('cat /sys/module/nvidia_drm/initstate').strip() == 'live'
    before = host.main_pids()
    proc = _play(host, gpu_mig=HALVES)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert 'Reboot required for MIG mode' in proc.stdout and 'nvidia_drm kernel module is loaded' in proc.stdout, proc.stdout[-4000:]
    gpu = host.state()['gpus'][0]
    assert gpu['mig'] == {'current': 0, 'pending': 1} and gpu['gpu_instances'] == []
    assert host.active() == {unit: 'active' for unit in SERVICES} and host.main_pids() != before
    host.reboot()  # nvidia_drm is not loaded at boot here: the pending mode is current, the boot service makes the layout
    gpu = host.state()['gpus'][0]
    assert gpu['mig'] == {'current': 1, 'pending': 1}
    assert sorted((gi['profile_id'], gi['start']) for gi in gpu['gpu_instances']) == [(9, 0), (9, 4)]
