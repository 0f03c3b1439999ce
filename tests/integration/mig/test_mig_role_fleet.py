# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpuvirt.fleet.mig on the fleet, over SSH: apply, rerun unchanged, GPU clients stopped only for a change,
and the boot-time service re-applying the layout after a reboot (MIG instances do not survive one).

Needs root (the fleet). Brings up fleet-mig.yml (fleet 'migtest', ports 23100+) with its own inventory and
tears it down in the fixture's finaliser.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fleethost import FleetHost, fleet_up  # noqa: E402 pylint: disable=import-error,wrong-import-position

HERE = Path(__file__).resolve().parent
FLEET = 'migtest'
HOST = 'mt-h100'
CLIENT_UNIT = '''[Unit]
Description=A GPU client stand-in (holds nothing, only shows when it was stopped and started)
[Service]
ExecStart=/bin/sleep infinity
[Install]
WantedBy=multi-user.target
'''
HALVES = [{'name': 'halves', 'devices': [0], 'enabled': True,
           'instances': [{'profile': '3g.40gb', 'start': 0}, {'profile': '3g.40gb', 'start': 4}]},
          {'name': 'sevenths', 'devices': [1], 'enabled': True, 'instances': [{'profile': '1g.10gb', 'count': 7}]}]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='the fleet needs root')


class Host(FleetHost):
    def layout(self) -> list[list[tuple[str, int, list[int]]]]:
        """Each GPU's GPU instances as (profile, start, compute-instance slices), read with gpu_facts on the host."""
        return [sorted((gi['profile'], gi['placement']['start'], [ci['slices'] for ci in gi['compute_instances']])
                       for gi in gpu['mig']['gpu_instances']) for gpu in self.facts()['gpus']]

    def instance_ids(self, gpu: int) -> dict[int, tuple[int, int, int]]:
        """GPU instance id -> (creation uid, NVML profile id, start) of one GPU, from the host's GPU state."""
        return {gi['id']: (gi['uid'], gi['profile_id'], gi['start']) for gi in self.state()['gpus'][gpu]['gpu_instances']}

    def resets(self) -> list[int]:
        return [gpu.get('resets', 0) for gpu in self.state()['gpus']]

    def client_started_at(self) -> str:
        return self.sh('systemctl show -p ActiveEnterTimestampMonotonic --value gpu-client.service').strip()


@pytest.fixture(scope='module', name='host')
def host_fixture(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('mig')
    with fleet_up(FLEET, HERE / 'fleet-mig.yml', workdir) as inventory:
        host = Host(FLEET, HOST, workdir, inventory, HERE / 'mig.yml')
        host.sh("cat > /etc/systemd/system/gpu-client.service <<'EOF'\n%sEOF\nsystemctl daemon-reload && systemctl enable --now gpu-client.service"
                % CLIENT_UNIT)
        yield host


EXPECTED = [[('3g.40gb', 0, [3]), ('3g.40gb', 4, [3])], [('1g.10gb', start, [1]) for start in range(7)]]


def test_role_applies_the_layout_and_restarts_the_declared_clients(host):
    started = host.client_started_at()
    proc = host.play(gpu_mig=HALVES, mig_clients=['gpu-client', 'not-installed-client'])
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert host.layout() == EXPECTED
    assert host.client_started_at() != started, 'the client was not stopped and started around the change'
    assert host.sh('systemctl is-active gpu-client.service').strip() == 'active'
    assert host.sh('systemctl is-enabled gpuvirt-mig.service').strip() == 'enabled'


def test_rerun_changes_nothing_and_leaves_the_clients_running(host):
    started = host.client_started_at()
    proc = host.play(gpu_mig=HALVES, mig_clients=['gpu-client', 'not-installed-client'])
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert host.changed(proc) == 0, proc.stdout[-4000:]
    assert host.client_started_at() == started


def test_boot_service_restores_the_layout_after_a_reboot(host):
    host.reboot()
    assert host.sh('systemctl is-active gpuvirt-mig.service').strip() == 'active'
    assert host.layout() == EXPECTED
    assert '"failed": false' in host.sh('journalctl -u gpuvirt-mig.service -b --no-pager -o cat')


def test_an_infeasible_declaration_fails_before_touching_the_gpus(host):
    started = host.client_started_at()
    bad = [{'name': 'too-big', 'devices': [0], 'enabled': True,
            'instances': [{'profile': '4g.40gb'}, {'profile': '3g.40gb', 'start': 0}]}]
    proc = host.play(gpu_mig=bad, mig_clients=['gpu-client'])
    assert proc.returncode != 0
    assert 'too-big' in proc.stdout and 'GPU 0' in proc.stdout, proc.stdout[-4000:]
    assert host.layout() == EXPECTED
    assert host.client_started_at() == started


def test_changing_one_of_seven_instances_recreates_only_that_one(host):
    before = host.instance_ids(1)
    assert len(before) == 7
    keep = {gi_id: where for gi_id, where in before.items() if where[2] != 6}
    sevenths = [{'profile': '1g.10gb', 'start': s} for s in range(6)] + [{'profile': '1g.10gb+me', 'start': 6}]
    changed = [HALVES[0], dict(HALVES[1], instances=sevenths)]
    proc = host.play(gpu_mig=changed)
    assert proc.returncode == 0, proc.stdout[-6000:]
    after = host.instance_ids(1)
    assert {gi_id: after.get(gi_id) for gi_id in keep} == keep, 'the six unchanged instances must keep their ids'
    # 20 is the profile id of 1g.10gb+me on an H100 (real capture); a new creation uid proves it was created now.
    assert [(where[1], where[2]) for gi_id, where in after.items() if gi_id not in keep] == [(20, 6)]
    assert all(where[0] > max(uid for uid, _p, _s in before.values()) for gi_id, where in after.items() if gi_id not in keep)
    assert host.changed(host.play(gpu_mig=changed)) == 0


def test_a_mode_change_on_one_gpu_resets_no_other_gpu(host):
    before = host.resets()
    current = host.instance_ids(1)
    proc = host.play(gpu_mig=[{'name': 'off', 'devices': [0], 'enabled': False}])
    assert proc.returncode == 0, proc.stdout[-6000:]
    after = host.resets()
    assert after[0] == before[0] + 1 and after[1] == before[1]
    assert host.instance_ids(1) == current
    assert host.layout()[0] == []


def test_a_mig_parted_config_and_label_drive_the_role_and_its_boot_service(host):
    config = {'version': 'v1', 'mig-configs': {'all-3g': [{'devices': [0], 'mig-enabled': True, 'mig-devices': {'3g.40gb': 2}},
                                                          {'devices': [1], 'mig-enabled': False}]}}
    proc = host.play(mig_parted_config=config, mig_parted_label='all-3g')
    assert proc.returncode == 0, proc.stdout[-6000:]
    expected = [[('3g.40gb', 0, [3]), ('3g.40gb', 4, [3])], []]
    assert host.layout() == expected
    host.reboot()
    assert host.layout() == expected
