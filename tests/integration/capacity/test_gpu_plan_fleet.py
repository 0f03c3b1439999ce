# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/plan.yml on the fleet, over SSH: an infeasible demand fails naming its shortfall before anything changes;
four 15 GB tenants on an A100-SXM4-80GB are planned, written as host_vars and applied (4x 1g.20gb); a rerun changes
nothing.

Needs root (the fleet). Brings up fleet-capacity.yml (fleet 'captest', ports 23500+) with its own inventory and tears
it down in the fixture's finaliser.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fleethost import REPO, FleetHost, fleet_up, recap  # noqa: E402 pylint: disable=import-error,wrong-import-position

HERE = Path(__file__).resolve().parent
FLEET = 'captest'
HOST = 'cap-a100'
FOUR_TENANTS = [{'tenant': 'inference', 'memory_gb': 15, 'count': 4, 'isolation': 'mig'}]
TOO_MANY = [{'tenant': 'inference', 'memory_gb': 15, 'count': 4, 'isolation': 'mig'},
            {'tenant': 'training', 'memory_gb': 40, 'count': 1, 'isolation': 'mig'}]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='the fleet needs root')


class Fleet(FleetHost):
    """The fleet's one host, driven through playbooks/plan.yml."""

    @property
    def output(self) -> Path:
        return self.workdir / 'host_vars'

    def plan(self, demands: list, **variables):
        # the boot-time service is the mig role's own business (tests/integration/mig): left out to keep this short
        return self.play(gpu_demands=demands, gpuvirt_plan_output_dir=str(self.output), mig_persist=False, **variables)

    def layout(self) -> list[tuple[bool, list[tuple[str, int, list[int]]]]]:
        """Each GPU's current MIG mode and GPU instances (profile, start, compute-instance slices), from gpu_facts on the host."""
        return [(bool(gpu['mig']['current']), sorted((gi['profile'], gi['placement']['start'], [ci['slices'] for ci in gi['compute_instances']])
                                                     for gi in gpu['mig']['gpu_instances'])) for gpu in self.facts()['gpus']]


@pytest.fixture(scope='module', name='fleet')
def fleet_fixture(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('capacity')
    with fleet_up(FLEET, HERE / 'fleet-capacity.yml', workdir) as inventory:
        yield Fleet(FLEET, HOST, workdir, inventory, REPO / 'playbooks' / 'plan.yml')


def test_an_infeasible_demand_fails_naming_the_shortfall_before_anything_changes(fleet):
    before = fleet.layout()
    proc = fleet.plan(TOO_MANY, gpuvirt_plan_apply=True)
    assert proc.returncode != 0
    # the larger instance is placed first; two of the 15 GB ones are left over
    assert "tenant 'inference' (demand 1): 2 of 4 instance(s) of 15 GB" in proc.stdout, proc.stdout[-4000:]
    assert 'needs 1 more NVIDIA A100-SXM4-80GB-class GPU(s) (4 per GPU) / 30 GB more memory' in proc.stdout
    assert not fleet.output.exists()
    assert fleet.layout() == before


def test_four_15_gb_tenants_are_planned_written_and_applied(fleet):
    proc = fleet.plan(FOUR_TENANTS, gpuvirt_plan_apply=True)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert 'GPUs used: 1 of 1 (lower bound 1)' in proc.stdout
    written = yaml.safe_load((fleet.output / (HOST + '.yml')).read_text(encoding='utf-8'))
    assert written['gpu_vgpu'] == []
    assert [entry['instances'] for entry in written['gpu_mig']] == [[{'profile': '1g.20gb', 'count': 4}]]
    assert fleet.layout() == [(True, [('1g.20gb', start, [1]) for start in (0, 2, 4, 6)])]


def test_a_rerun_changes_nothing(fleet):
    proc = fleet.plan(FOUR_TENANTS, gpuvirt_plan_apply=True)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert recap(proc, HOST) == 0, proc.stdout[-4000:]
    assert recap(proc, 'localhost') == 0, proc.stdout[-4000:]
    assert fleet.layout() == [(True, [('1g.20gb', start, [1]) for start in (0, 2, 4, 6)])]


def test_an_infeasible_demand_leaves_the_applied_layout_alone(fleet):
    written = (fleet.output / (HOST + '.yml')).read_text(encoding='utf-8')
    proc = fleet.plan(TOO_MANY, gpuvirt_plan_apply=True)
    assert proc.returncode != 0 and "tenant 'inference' (demand 1): 2 of 4" in proc.stdout
    assert (fleet.output / (HOST + '.yml')).read_text(encoding='utf-8') == written
    assert fleet.layout() == [(True, [('1g.20gb', start, [1]) for start in (0, 2, 4, 6)])]
