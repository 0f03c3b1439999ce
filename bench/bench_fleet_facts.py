#!/usr/bin/env python
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/facts.yml over real SSH on 1, 4, 16 and 32 simulated hosts, with forks 5 and 16.

Prints wall time, time per host and controller CPU seconds (ansible-playbook and its ssh children, from
getrusage; the modules run inside the hosts and are not counted). Figures only, no pass/fail.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLEET_FILE = os.path.join(REPO, 'sim', 'fleets', 'scale-32.yml')
INVENTORY = os.path.join(REPO, '.build', 'fleet', 'scale-32.yml')


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _hosts() -> list[str]:
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), 'ansible-inventory'), '-i', INVENTORY, '--list'],
                         capture_output=True, text=True, check=True).stdout
    import json  # pylint: disable=import-outside-toplevel
    return sorted(json.loads(out)['_meta']['hostvars'])


def main() -> int:
    fleet = os.path.join(REPO, 'sim', 'fleet')
    start = time.perf_counter()
    subprocess.run([fleet, 'up', FLEET_FILE, '--inventory', INVENTORY], check=True, stdout=subprocess.DEVNULL)
    print('sim/fleet up scale-32: %.1f s' % (time.perf_counter() - start))
    hosts = _hosts()
    playbook = os.path.join(os.path.dirname(sys.executable), 'ansible-playbook')
    rows = []
    try:
        for count in (1, 4, 16, 32):
            for forks in (5, 16):
                cpu0, wall0 = _children_cpu(), time.perf_counter()
                proc = subprocess.run([playbook, '-i', INVENTORY, '--forks', str(forks), '--limit', ','.join(hosts[:count]),
                                       os.path.join(REPO, 'playbooks', 'facts.yml')], capture_output=True, text=True, check=False)
                wall, cpu = time.perf_counter() - wall0, _children_cpu() - cpu0
                if proc.returncode != 0:
                    print(proc.stdout[-3000:], proc.stderr[-2000:])
                    raise SystemExit('facts.yml failed on %d hosts' % count)
                rows.append((count, forks, wall, wall / count, cpu))
    finally:
        subprocess.run([fleet, 'down', '--fleet', 'scale-32'], check=False, stdout=subprocess.DEVNULL)
    print('%6s %6s %10s %16s %22s' % ('hosts', 'forks', 'wall s', 'wall s per host', 'controller CPU s'))
    for count, forks, wall, per_host, cpu in rows:
        print('%6d %6d %10.2f %16.3f %22.2f' % (count, forks, wall, per_host, cpu))
    return 0


if __name__ == '__main__':
    sys.exit(main())
