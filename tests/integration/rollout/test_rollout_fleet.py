# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/rollout.yml on a 32-host fleet: a failing canary stops the rollout before any batch, a failing host in a
later batch under gpuvirt_rollout_max_fail_percentage lets it go on, and in both cases the JSON summary says which host
is in which state and why. The health gates check what the roles applied: rt-20 overrides the mig role's
mig_declaration, and its declaration gate passes on the override. The first rollout is driven by the deprecated
rollout_* names, which are read until 0.5.0 (with a deprecation warning).

Needs root (the fleet) and the exporter wheels of `make demo` (.build/exporter-wheels). Brings up fleet-rollout.yml
(fleet 'rollouttest', ports 23700-23799) once for the module and tears it down in the fixture's finaliser.
Faults are the simulator's: `gpusimctl lose` makes a GPU fall off the bus, so the burn-in command (`nvidia-smi -L`)
fails on that host, as it would on a real one.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fleethost import REPO, VENV_BIN, ansible_env, fleet_up  # noqa: E402 pylint: disable=import-error,wrong-import-position
from fleethost import fleet as _fleet  # noqa: E402 pylint: disable=import-error,wrong-import-position

HERE = Path(__file__).resolve().parent
FLEET = 'rollouttest'
WHEELS = REPO / '.build' / 'exporter-wheels'
HOSTS = ['rt-%02d' % n for n in range(1, 33)]

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason='the fleet needs root'),
              pytest.mark.skipif(not (WHEELS / '.stamp').exists(), reason='no exporter wheels: run make demo (or its wheel step) first')]


class Fleet:
    def __init__(self, workdir: Path, inventory: Path):
        self.workdir = workdir
        self.inventory = inventory

    def rollout(self, name: str, **variables) -> tuple[subprocess.CompletedProcess, dict, float]:
        summary = self.workdir / ('%s.json' % name)
        variables = dict({'exporter_wheel_dir': str(WHEELS), 'gpuvirt_rollout_summary_path': str(summary)}, **variables)
        varfile = self.workdir / ('%s-vars.json' % name)
        varfile.write_text(json.dumps(variables))
        env = ansible_env()
        started = time.monotonic()
        proc = subprocess.run([str(VENV_BIN / 'ansible-playbook'), '-i', str(self.inventory), '-e', '@%s' % varfile,
                               str(REPO / 'playbooks' / 'rollout.yml')], capture_output=True, text=True, timeout=900, cwd=REPO, env=env,
                              check=False)
        wall = time.monotonic() - started
        (self.workdir / ('%s.log' % name)).write_text(proc.stdout + proc.stderr)
        print('rollout %s: %.1f s' % (name, wall))
        assert summary.exists(), proc.stdout[-6000:] + proc.stderr[-2000:]
        return proc, json.loads(summary.read_text()), wall

    def sh(self, host: str, command: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = _fleet('exec', '--fleet', FLEET, host, '--', 'sh', '-c', command, check=False)
        assert not check or proc.returncode == 0, '%r failed: %s %s' % (command, proc.stdout, proc.stderr)
        return proc


def _untouched(fleet: Fleet, host: str) -> None:
    """Nothing of the rollout reached the host: MIG mode as the fleet made it, no exporter, no MIG boot service."""
    state = json.loads(fleet.sh(host, 'gpusimctl show').stdout)
    assert all(not gpu['mig']['current'] and not gpu['mig']['pending'] for gpu in state['gpus']), host
    assert fleet.sh(host, 'test -e /etc/systemd/system/gpuvirt-exporter.service', check=False).returncode != 0, host
    assert fleet.sh(host, 'ls /etc/systemd/system/ | grep -c gpuvirt', check=False).stdout.strip() in ('', '0'), host


@pytest.fixture(scope='module', name='fleet')
def fleet_fixture(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('rollout')
    with fleet_up(FLEET, HERE / 'fleet-rollout.yml', workdir) as inventory:
        yield Fleet(workdir, inventory)


def test_a_failing_canary_stops_the_rollout_before_the_first_batch(fleet):
    fleet.sh('rt-01', 'gpusimctl lose --gpu 0')
    # the deprecated names still drive the rollout (until 0.5.0), each with a warning naming its replacement
    proc, summary, _output = fleet.rollout('canary-fails', rollout_batch=16, rollout_max_fail_percentage=10)
    assert proc.returncode != 0, 'a stopped rollout must fail the CI job'
    assert summary['status'] == 'stopped'
    assert summary['settings']['canaries'] == ['rt-01']  # the default canary: the first target host
    assert (summary['settings']['batch'], summary['settings']['max_fail_percentage']) == (16, 10)
    assert 'rollout_batch is deprecated, use gpuvirt_rollout_batch' in proc.stdout
    assert summary['stop_reason'].startswith('canary failed: 1 of 1 host(s)'), summary['stop_reason']
    assert 'rt-01' in summary['stop_reason'] and 'GPU is lost' in summary['stop_reason']
    canary = summary['hosts']['rt-01']
    assert (canary['state'], canary['stage'], canary['phase'], canary['gate']) == ('canary failed', 'canary', 'gates', 'burn_in')
    assert 'exited' in canary['reason'] and 'GPU is lost' in canary['reason'], canary['reason']
    assert canary['gates']['declaration'].startswith('not checked')  # rt-01 declares nothing; the gates before burn-in ran
    assert {h: r['state'] for h, r in summary['hosts'].items() if h != 'rt-01'} == {h: 'not started' for h in HOSTS[1:]}
    assert summary['counts'] == {'done': 0, 'failed': 0, 'canary failed': 1, 'in progress': 0, 'not started': 31}
    # the summary is printed at the end too, although the canary play stopped the rollout
    assert 'rollout stopped: canary failed' in proc.stdout
    for host in ('rt-02', 'rt-03', 'rt-20'):  # the hosts that declare something: none of it was applied
        _untouched(fleet, host)


def test_a_failing_host_in_a_later_batch_under_the_limit_lets_the_rollout_go_on(fleet):
    _fleet('reboot', '--fleet', FLEET, 'rt-01')  # the lost GPU comes back
    fleet.sh('rt-25', 'gpusimctl lose --gpu 0')  # batch 2 of 16 + 15 hosts: 1 of 15 (6.7 %) fails, 10 % are allowed
    proc, summary, _output = fleet.rollout('batch-host-fails', gpuvirt_rollout_canaries=['rt-02'], gpuvirt_rollout_batch=16,
                                           gpuvirt_rollout_max_fail_percentage=10)
    assert 'DEPRECATION' not in proc.stdout
    assert proc.returncode != 0, 'a rollout with a failed host must fail the CI job'
    assert summary['status'] == 'completed with failures' and summary['stop_reason'] == ''
    failed = summary['hosts']['rt-25']
    assert (failed['state'], failed['stage'], failed['batch'], failed['gate']) == ('failed', 'batch', 2, 'burn_in')
    assert 'GPU is lost' in failed['reason']
    done = {h: r for h, r in summary['hosts'].items() if h != 'rt-25'}
    assert {h: r['state'] for h, r in done.items()} == {h: 'done' for h in HOSTS if h != 'rt-25'}
    assert summary['counts'] == {'done': 31, 'failed': 1, 'canary failed': 0, 'in progress': 0, 'not started': 0}
    assert done['rt-02']['stage'] == 'canary' and done['rt-02']['gates']['declaration'] == 'passed'
    assert {done[h]['batch'] for h in HOSTS[2:17] + ['rt-01']} == {1}
    assert done['rt-20']['gates']['declaration'] == 'passed'  # the override the mig role applied, not gpu_mig
    assert done['rt-03']['gates']['exporter'] == 'passed'
    assert done['rt-03']['gates']['xid'] in ('passed', 'not checked: the exporter cannot watch XID events here (NVML event sets unsupported)')
    assert done['rt-04']['gates'] == {'declaration': 'not checked: nothing declared',
                                      'exporter': 'not checked: no exporter on this host (gpuvirt_exporter: false)',
                                      'scheduler': 'not checked: Slurm is not managed on this host (slurm_manage: false)',
                                      'devices': 'not checked: no NVIDIA container toolkit (nvidia-ctk) on this host',
                                      'xid': 'not checked: no exporter on this host (gpuvirt_exporter: false)', 'burn_in': 'passed'}
    state = json.loads(fleet.sh('rt-02', 'gpusimctl show').stdout)
    assert state['gpus'][0]['mig']['current'] and len(state['gpus'][0]['gpu_instances']) == 2
    state = json.loads(fleet.sh('rt-20', 'gpusimctl show').stdout)  # mig_declaration, the role's override
    assert state['gpus'][0]['mig']['current'] and [gi['size'] for gi in state['gpus'][0]['gpu_instances']] == [4]
    assert fleet.sh('rt-03', 'systemctl is-active gpuvirt-exporter.service').stdout.strip() == 'active'
