# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpuvirt.fleet.gpu_settings on the fleet, over SSH: apply and rerun unchanged, the boot-time service restoring what a
reboot loses (power limit, clocks), an ECC change pending until the reset (through the holder-aware path: the role
stops nvidia-persistenced, which holds the GPUs), out-of-range values refused before any change, and a failing step
rolled back.

What the GPUs hold is read behind the scenes from the simulator's state (gpusimctl show: power limit, clocks, ECC,
compute mode, persistence, counts of mutating NVML calls), never from the module's own report.
Needs root (the fleet). Brings up fleet-settings.yml (fleet 'settings', ports 24500+) and tears it down at the end.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fleethost import FleetHost, fleet_up  # noqa: E402 pylint: disable=import-error,wrong-import-position

HERE = Path(__file__).resolve().parent
FLEET = 'settings'
HOST = 'st-h200'
# H200 (real capture): power limit 200..700 W, default 700 W; memory clocks 3201 and 2201 MHz, graphics 345..1980 MHz.
DECLARED = [{'name': 'budget', 'devices': [0], 'persistence': True, 'power_limit': '80%', 'compute_mode': 'exclusive_process',
             'gpu_locked_clocks': {'min': 1500, 'max': 1500}, 'memory_locked_clocks': 3201},
            {'name': 'bench', 'devices': [1], 'persistence': True, 'power_limit': 450, 'applications_clocks': {'memory': 2201, 'graphics': 1500}}]
APPLIED = [(560000, 3, [1500, 1500], [3201, 3201], None, 1), (450000, 0, None, None, {'graphics': 1500, 'mem': 2201}, 1)]
DEFAULTS = [(None, 3, None, None, None, 1), (None, 0, None, None, None, 1)]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='the fleet needs root')


class Host(FleetHost):
    def settings(self) -> list[tuple]:
        """Per GPU: (power limit set in mW or None for the default, compute mode, locked GPU clocks, locked memory clocks,
        application clocks, persistence), from the simulator's state."""
        return [(g.get('power_limit_mw'), g.get('compute_mode', 0), (g.get('locked_clocks') or {}).get('gpu'),
                 (g.get('locked_clocks') or {}).get('memory'), g.get('applications_clocks'), g['persistence'])
                for g in self.state()['gpus']]

    def ecc(self) -> list[tuple]:
        return [(g['ecc']['current'], g['ecc']['pending']) for g in self.state()['gpus']]

    def mutations(self) -> int:
        return sum(self.state().get('nvml_mutations', {}).values())


@pytest.fixture(scope='module', name='host')
def host_fixture(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('settings')
    with fleet_up(FLEET, HERE / 'fleet-settings.yml', workdir) as inventory:
        yield Host(FLEET, HOST, workdir, inventory, HERE / 'settings.yml')


def test_role_applies_the_settings_and_a_rerun_changes_nothing(host):
    proc = host.play(gpu_settings=DECLARED)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert host.settings() == APPLIED
    assert host.sh('systemctl is-enabled gpuvirt-gpu-settings.service').strip() == 'enabled'
    assert host.sh('systemctl is-active nvidia-persistenced.service').strip() == 'active'
    mutations = host.mutations()
    again = host.play(gpu_settings=DECLARED)
    assert again.returncode == 0 and host.changed(again) == 0, again.stdout[-4000:]
    assert host.mutations() == mutations


def test_the_boot_service_restores_power_limit_and_clocks_after_a_reboot(host):
    host.reboot()
    assert host.sh('systemctl is-active gpuvirt-gpu-settings.service').strip() == 'active'
    journal = host.sh('journalctl -u gpuvirt-gpu-settings.service -b --no-pager -o cat')
    summary = json.loads([line for line in journal.splitlines() if line.startswith('{')][-1])
    assert summary['failed'] is False and 'set_power_limit' in summary['applied'], journal
    assert host.settings() == APPLIED
    assert host.changed(host.play(gpu_settings=DECLARED)) == 0


def test_out_of_range_values_are_refused_before_any_change(host):
    before, mutations = host.settings(), host.mutations()
    bad = [{'name': 'too-much', 'devices': [0], 'power_limit': 800},
           {'name': 'odd-clock', 'devices': [1], 'applications_clocks': {'memory': 3201, 'graphics': 1234}}]
    proc = host.play(gpu_settings=bad)
    assert proc.returncode != 0
    assert "entry 'too-much': power_limit 800 W is outside" in proc.stdout and 'minimum 200 W, maximum 700 W' in proc.stdout, proc.stdout[-4000:]
    assert "entry 'odd-clock': applications_clocks: graphics 1234 MHz is not supported with memory 3201 MHz" in proc.stdout
    assert host.settings() == before and host.mutations() == mutations


def test_an_ecc_change_is_pending_until_the_reset(host):
    assert host.ecc() == [(1, 1), (1, 1)]
    waiting = [dict(DECLARED[0], ecc=False), DECLARED[1]]
    proc = host.play(gpu_settings=waiting, gpu_settings_reset='never')
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert 'Reboot required for the ECC mode' in proc.stdout
    assert host.ecc() == [(1, 0), (1, 1)] and host.state()['gpus'][0].get('resets', 0) == 0
    # the reset: nvidia-persistenced holds the GPU, so the role stops it around the reset and starts it again
    started = host.sh('systemctl show -p ActiveEnterTimestampMonotonic --value nvidia-persistenced.service').strip()
    proc = host.play(gpu_settings=waiting)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert host.ecc() == [(0, 0), (1, 1)] and host.state()['gpus'][0]['resets'] == 1 and host.state()['gpus'][1].get('resets', 0) == 0
    assert host.sh('systemctl show -p ActiveEnterTimestampMonotonic --value nvidia-persistenced.service').strip() != started
    assert host.settings() == APPLIED  # the reset lost GPU 0's power limit and clocks: they were set again after it
    assert host.changed(host.play(gpu_settings=waiting)) == 0


def test_a_failing_step_is_rolled_back(host):
    before = host.settings()
    changed = [dict(DECLARED[0], power_limit=500, gpu_locked_clocks={'min': 1200, 'max': 1400}), DECLARED[1]]
    host.sh('gpusimctl fault set --gpu 0 --call nvmlDeviceSetGpuLockedClocks --error NVML_ERROR_UNKNOWN --nth 1')
    proc = host.play(gpu_settings=changed)
    host.sh('gpusimctl fault clear')
    assert proc.returncode != 0
    assert 'step 2 of 2' in proc.stdout and 'rolled back' in proc.stdout, proc.stdout[-4000:]
    assert host.settings() == before
