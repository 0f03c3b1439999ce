#!/usr/bin/env python
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/site.yml over real SSH on fresh fleets of 4, 16 and 32 simulated hosts: the first run and the idempotent
rerun. Each host has one A30 with a MIG declaration (two 2g.12gb) and the exporter on its own loopback port.

Prints wall time, wall time per host, tasks per host (ok and changed from the recap, averaged over the GPU hosts) and
the changed count of the rerun (0 expected). Figures only, no pass/fail.
    .venv/bin/python bench/bench_site.py [--hosts 4,16,32] [--no-exporter]
Needs root (the fleet) and .build/exporter-wheels (make demo). Fleet 'benchsite', ports 23800-23899.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLEET = 'benchsite'
FLEET_TOOL = os.path.join(REPO, 'sim', 'fleet')
BIN = os.path.dirname(sys.executable)
RECAP = re.compile(r'^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)\s+skipped=(\d+)')
MIG = [{'name': 'bench', 'devices': 'all', 'enabled': True, 'instances': [{'profile': '2g.12gb'}, {'profile': '2g.12gb'}]}]


def _fleet_file(path: str, count: int, exporter: bool) -> None:
    hosts = [{'name': 'bs-%02d' % n, 'gpus': {'a30': 1}, 'vars': {'exporter_port': 23850 + n, 'gpu_mig': MIG}} for n in range(1, count + 1)]
    spec = {'fleet': FLEET, 'base_port': 23800, 'defaults': {'driver': {'version': '580.159.04', 'flavour': 'open'}, 'groups': ['gpu_hosts']},
            'vars': {'gpuvirt_exporter': exporter, 'exporter_listen_address': '127.0.0.1', 'exporter_system_nvml': True},
            'hosts': hosts}
    with open(path, 'w', encoding='utf-8') as handle:
        json.dump(spec, handle)  # JSON is YAML


def _run(inventory: str, workdir: str) -> tuple[float, dict[str, tuple[int, int]], str]:
    extra = {'exporter_wheel_dir': os.path.join(REPO, '.build', 'exporter-wheels'),
             'monitoring_prometheus_config': os.path.join(workdir, 'monitoring', 'prometheus.yml'),
             'monitoring_dashboard_dir': os.path.join(workdir, 'monitoring', 'grafana')}
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'), ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, '.build'),
               ANSIBLE_NOCOLOR='1', PATH='%s:%s' % (BIN, os.environ['PATH']))
    start = time.perf_counter()
    proc = subprocess.run([os.path.join(BIN, 'ansible-playbook'), '-i', inventory, '-e', json.dumps(extra),
                           os.path.join(REPO, 'playbooks', 'site.yml')], capture_output=True, text=True, env=env, cwd=REPO, check=False)
    wall = time.perf_counter() - start
    recap = {}
    for line in proc.stdout.splitlines():
        match = RECAP.match(line)
        if match:
            recap[match.group(1)] = (int(match.group(2)), int(match.group(3)))
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-2000:])
        raise SystemExit('site.yml failed')
    return wall, recap, proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    parser.add_argument('--hosts', default='4,16,32')
    parser.add_argument('--no-exporter', action='store_true')
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix='bench-site-') as workdir:
        fleet_file, inventory = os.path.join(workdir, 'fleet.yml'), os.path.join(workdir, 'hosts.yml')
        for count in [int(c) for c in args.hosts.split(',')]:
            _fleet_file(fleet_file, count, not args.no_exporter)
            subprocess.run([FLEET_TOOL, 'down', '--fleet', FLEET, '--purge'], check=False, capture_output=True)
            try:
                start = time.perf_counter()
                subprocess.run([FLEET_TOOL, 'up', fleet_file, '--inventory', inventory], check=True, capture_output=True)
                print('sim/fleet up %d hosts: %.1f s' % (count, time.perf_counter() - start), flush=True)
                for label in ('first run', 'rerun'):
                    wall, recap, _output = _run(inventory, workdir)
                    gpu_hosts = {h: v for h, v in recap.items() if h != 'localhost'}
                    ok = sum(v[0] for v in gpu_hosts.values()) / len(gpu_hosts)
                    changed = sum(v[1] for v in gpu_hosts.values())
                    rows.append((count, label, wall, wall / count, ok, changed / len(gpu_hosts), changed))
                    print('%d hosts, %s: %.1f s' % (count, label, wall), flush=True)
            finally:
                subprocess.run([FLEET_TOOL, 'down', '--fleet', FLEET, '--purge'], check=False, capture_output=True)
    print('%6s %10s %9s %15s %15s %20s %14s' % ('hosts', 'run', 'wall s', 'wall s / host', 'tasks ok/host', 'changed tasks/host', 'changed total'))
    for count, label, wall, per_host, ok, changed_per_host, changed in rows:
        print('%6d %10s %9.1f %15.2f %15.1f %20.1f %14d' % (count, label, wall, per_host, ok, changed_per_host, changed))
    return 0


if __name__ == '__main__':
    sys.exit(main())
