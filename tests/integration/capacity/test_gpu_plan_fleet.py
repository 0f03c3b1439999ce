# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/plan.yml on the fleet, over SSH: an infeasible demand fails naming its shortfall before anything changes;
four 15 GB tenants on an A100-SXM4-80GB are planned, written as host_vars and applied (4x 1g.20gb); a rerun changes
nothing.

Needs root (the fleet). Brings up fleet-capacity.yml (fleet 'captest', ports 23500+) with its own inventory and tears
it down in the fixture's finaliser.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
FLEET_TOOL = REPO / 'sim' / 'fleet'
FLEET = 'captest'
HOST = 'cap-a100'
VENV_BIN = REPO / '.venv' / 'bin'
FOUR_TENANTS = [{'tenant': 'inference', 'memory_gb': 15, 'count': 4, 'isolation': 'mig'}]
TOO_MANY = [{'tenant': 'inference', 'memory_gb': 15, 'count': 4, 'isolation': 'mig'},
            {'tenant': 'training', 'memory_gb': 40, 'count': 1, 'isolation': 'mig'}]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='the fleet needs root')


def _fleet(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(FLEET_TOOL), *args], capture_output=True, text=True, timeout=600, cwd=REPO, check=False)
    if check and proc.returncode != 0:
        raise AssertionError('sim/fleet %s failed: %s %s' % (' '.join(args), proc.stdout, proc.stderr))
    return proc


def _env() -> dict:
    return dict(os.environ, ANSIBLE_CONFIG=str(REPO / 'ansible.cfg'), ANSIBLE_NOCOLOR='1', PATH='%s:%s' % (VENV_BIN, os.environ['PATH']))


class Fleet:
    def __init__(self, workdir: Path, inventory: Path):
        self.workdir = workdir
        self.inventory = inventory
        self.output = workdir / 'host_vars'

    def plan(self, demands: list, **variables) -> subprocess.CompletedProcess:
        varfile = self.workdir / 'vars.json'
        # the boot-time service is the mig role's own business (tests/integration/mig): left out to keep this short
        varfile.write_text(json.dumps(dict(variables, gpu_demands=demands, plan_output_dir=str(self.output), mig_persist=False)))
        return subprocess.run([str(VENV_BIN / 'ansible-playbook'), '-i', str(self.inventory), '-e', '@%s' % varfile,
                               str(REPO / 'playbooks' / 'plan.yml')],
                              capture_output=True, text=True, timeout=600, cwd=REPO, env=_env(), check=False)

    def layout(self) -> list[tuple[bool, list[tuple[str, int, list[int]]]]]:
        """Each GPU's current MIG mode and GPU instances (profile, start, compute-instance slices), from gpu_facts on the host."""
        proc = subprocess.run([str(VENV_BIN / 'ansible'), '-i', str(self.inventory), HOST, '-m', 'gpuvirt.fleet.gpu_facts', '-o'],
                              capture_output=True, text=True, timeout=120, cwd=REPO, env=_env(), check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        facts = json.loads(proc.stdout.split('=>', 1)[1])['ansible_facts']
        return [(bool(gpu['mig']['current']), sorted((gi['profile'], gi['placement']['start'], [ci['slices'] for ci in gi['compute_instances']])
                                                     for gi in gpu['mig']['gpu_instances'])) for gpu in facts['gpus']]


def _changed(proc: subprocess.CompletedProcess, host: str) -> int:
    for line in proc.stdout.splitlines():
        if line.startswith(host + ' ') and 'changed=' in line:
            return int(line.split('changed=')[1].split()[0])
    raise AssertionError('no recap for %s:\n%s\n%s' % (host, proc.stdout[-4000:], proc.stderr[-2000:]))


@pytest.fixture(scope='module', name='fleet')
def fleet_fixture(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('capacity')
    inventory = workdir / 'hosts.yml'
    _fleet('down', '--fleet', FLEET, '--purge', check=False)
    try:
        _fleet('up', str(HERE / 'fleet-capacity.yml'), '--inventory', str(inventory))
        yield Fleet(workdir, inventory)
    finally:
        _fleet('down', '--fleet', FLEET, '--purge', check=False)


def test_an_infeasible_demand_fails_naming_the_shortfall_before_anything_changes(fleet):
    before = fleet.layout()
    proc = fleet.plan(TOO_MANY, plan_apply=True)
    assert proc.returncode != 0
    # the larger instance is placed first; two of the 15 GB ones are left over
    assert "tenant 'inference' (demand 1): 2 of 4 instance(s) of 15 GB" in proc.stdout, proc.stdout[-4000:]
    assert 'needs 1 more NVIDIA A100-SXM4-80GB-class GPU(s) (4 per GPU) / 30 GB more memory' in proc.stdout
    assert not fleet.output.exists()
    assert fleet.layout() == before


def test_four_15_gb_tenants_are_planned_written_and_applied(fleet):
    proc = fleet.plan(FOUR_TENANTS, plan_apply=True)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert 'GPUs used: 1 of 1 (lower bound 1)' in proc.stdout
    written = yaml.safe_load((fleet.output / (HOST + '.yml')).read_text(encoding='utf-8'))
    assert written['gpu_vgpu'] == []
    assert [entry['instances'] for entry in written['gpu_mig']] == [[{'profile': '1g.20gb', 'count': 4}]]
    assert fleet.layout() == [(True, [('1g.20gb', start, [1]) for start in (0, 2, 4, 6)])]


def test_a_rerun_changes_nothing(fleet):
    proc = fleet.plan(FOUR_TENANTS, plan_apply=True)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert _changed(proc, HOST) == 0, proc.stdout[-4000:]
    assert _changed(proc, 'localhost') == 0, proc.stdout[-4000:]
    assert fleet.layout() == [(True, [('1g.20gb', start, [1]) for start in (0, 2, 4, 6)])]


def test_an_infeasible_demand_leaves_the_applied_layout_alone(fleet):
    written = (fleet.output / (HOST + '.yml')).read_text(encoding='utf-8')
    proc = fleet.plan(TOO_MANY, plan_apply=True)
    assert proc.returncode != 0 and "tenant 'inference' (demand 1): 2 of 4" in proc.stdout
    assert (fleet.output / (HOST + '.yml')).read_text(encoding='utf-8') == written
    assert fleet.layout() == [(True, [('1g.20gb', start, [1]) for start in (0, 2, 4, 6)])]
