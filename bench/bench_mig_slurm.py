#!/usr/bin/env python
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The time a MIG change takes on one fleet host with and without Slurm around it, side by side in one run.

One H100 host running Debian's Slurm 22.05 (slurmctld, slurmd, munge; sim/slurm). Each round changes GPU 0 between
two layouts (3g.40gb + 1g.10gb, and two 3g.40gb) with the same playbook twice: once with `slurm_manage: false` (the
gpuvirt.fleet.slurm entry points skip) and once with `slurm_manage: true` (drain, change, sync: gres.conf,
slurm.conf Gres, slurmctld and slurmd restart, resume, verify). No job runs, so the drain waits for nothing: the
figure is Slurm's own overhead. Prints each pair, the medians and the ratio. Figures only, no pass/fail.
    .venv/bin/python bench/bench_mig_slurm.py [--rounds 3]
Needs root (the fleet). Fleet 'benchslurm', ports 24300-24319 (slurmctld 24310, slurmd 24311).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'sim', 'slurm'))
import slurm_fleet  # noqa: E402 pylint: disable=import-error,wrong-import-position

FLEET = 'benchslurm'
HOST = 'bsl-h100'
FLEET_TOOL = os.path.join(REPO, 'sim', 'fleet')
BIN = os.path.dirname(sys.executable)
PLAYBOOK = os.path.join(REPO, 'tests', 'integration', 'slurm', 'slurm.yml')
LAYOUTS = [
    [{'name': 'mixed', 'devices': [0], 'enabled': True, 'instances': [{'profile': '3g.40gb', 'start': 0}, {'profile': '1g.10gb', 'start': 4}]}],
    [{'name': 'halves', 'devices': [0], 'enabled': True, 'instances': [{'profile': '3g.40gb', 'start': 0}, {'profile': '3g.40gb', 'start': 4}]}],
]


def _play(inventory: str, workdir: str, **variables) -> float:
    varfile = os.path.join(workdir, 'vars.json')
    with open(varfile, 'w', encoding='utf-8') as handle:
        json.dump(dict(variables, slurm_poll_interval=1), handle)
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'), ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, '.build'),
               ANSIBLE_NOCOLOR='1', PATH='%s:%s' % (BIN, os.environ['PATH']))
    start = time.perf_counter()
    proc = subprocess.run([os.path.join(BIN, 'ansible-playbook'), '-i', inventory, '-e', '@' + varfile, PLAYBOOK],
                          capture_output=True, text=True, env=env, cwd=REPO, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-2000:])
        raise SystemExit('the playbook failed')
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    parser.add_argument('--rounds', type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        spec = {'fleet': FLEET, 'base_port': 24300, 'defaults': {'driver': {'version': '580.159.04', 'flavour': 'open'}},
                'hosts': [{'name': HOST, 'gpus': {'h100-80gb-hbm3': 2}}]}
        fleet_file, inventory = os.path.join(workdir, 'fleet.yml'), os.path.join(workdir, 'hosts.yml')
        with open(fleet_file, 'w', encoding='utf-8') as handle:
            json.dump(spec, handle)
        subprocess.run([FLEET_TOOL, 'down', '--fleet', FLEET, '--purge'], capture_output=True, check=False)
        try:
            subprocess.run([FLEET_TOOL, 'up', fleet_file, '--inventory', inventory], capture_output=True, check=True)
            start = time.perf_counter()
            slurm_fleet.install(FLEET, HOST, ctld_port=24310, slurmd_port=24311)
            print('Slurm install (cached .debs): %.1f s' % (time.perf_counter() - start))
            _play(inventory, workdir, slurm_manage=True, slurm_test_drain=False, slurm_test_change=False)  # configure the node
            plain, slurm = [], []
            layout = 0
            for n in range(args.rounds):
                layout ^= 1
                plain.append(_play(inventory, workdir, slurm_manage=False, gpu_mig=LAYOUTS[layout]))
                layout ^= 1
                slurm.append(_play(inventory, workdir, slurm_manage=True, gpu_mig=LAYOUTS[layout]))
                print('round %d: MIG change %.2f s, with Slurm drain/sync/resume %.2f s' % (n + 1, plain[-1], slurm[-1]))
            a, b = statistics.median(plain), statistics.median(slurm)
            print('median over %d rounds: without Slurm %.2f s, with Slurm %.2f s, ratio %.2fx (+%.2f s)' % (args.rounds, a, b, b / a, b - a))
        finally:
            subprocess.run([FLEET_TOOL, 'down', '--fleet', FLEET, '--purge'], capture_output=True, check=False)


if __name__ == '__main__':
    main()
