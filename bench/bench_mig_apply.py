#!/usr/bin/env python
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""mig_layout on a simulated 8-GPU H100 host: wall time of the whole module process per kind of change.

The module runs as Ansible runs it on a host (JSON arguments in, JSON result out), with the stand-in pynvml on the
Python path and the stand-in nvidia-smi on PATH. Each scenario starts from the same saved state and is repeated
(BENCH_REPEAT, default 5); the figures are the median and the fastest run, with the NVML mutations and GPU resets
one run made. Figures only, no pass/fail. The simulator writes its state file (with fsync) on every mutation, so
the times are the simulator's, not a real driver's: they compare scenarios, not hosts.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIM = os.path.join(REPO, 'sim')
MODULE = os.path.join(REPO, 'plugins', 'modules', 'mig_layout.py')

SEVEN_1G = [{'devices': 'all', 'instances': [{'profile': '1g.10gb', 'count': 7}]}]
ONE_CHANGED = [{'devices': [0], 'instances': [{'profile': '1g.10gb', 'count': 6}, {'profile': '1g.10gb+me'}]},
               {'devices': [1, 2, 3, 4, 5, 6, 7], 'instances': [{'profile': '1g.10gb', 'count': 7}]}]
TWO_REGROUPED = [{'devices': [0, 1], 'instances': [{'profile': '3g.40gb'}, {'profile': '1g.10gb', 'count': 4}]},
                 {'devices': [2, 3, 4, 5, 6, 7], 'instances': [{'profile': '1g.10gb', 'count': 7}]}]
ONE_DISABLED = [{'devices': [0], 'enabled': False}, {'devices': [1, 2, 3, 4, 5, 6, 7], 'instances': [{'profile': '1g.10gb', 'count': 7}]}]

# (name, starting state, arguments, check mode)
SCENARIOS = [
    ('MIG off -> 7x 1g.10gb on all 8 GPUs (8 mode changes, 8 resets)', 'off', {'config': SEVEN_1G}, False),
    ('rerun of the same layout (no change)', 'seven', {'config': SEVEN_1G}, False),
    ('1 instance on 1 GPU changed (1g.10gb -> 1g.10gb+me)', 'seven', {'config': ONE_CHANGED}, False),
    ('2 GPUs regrouped (4x 1g -> 1x 3g.40gb each)', 'seven', {'config': TWO_REGROUPED}, False),
    ('MIG disabled on 1 GPU (7 instances destroyed, 1 reset)', 'seven', {'config': ONE_DISABLED}, False),
    ('check mode of the 2-GPU regroup (plan only)', 'seven', {'config': TWO_REGROUPED}, True),
    ('export (current state in both formats)', 'seven', {'export': True}, False),
]


class Host:
    def __init__(self, root: str):
        self.root = root
        self.env = dict(os.environ, GPUSIM_ROOT=root, PATH=os.path.join(SIM, 'bin') + os.pathsep + os.environ['PATH'],
                        PYTHONPATH=os.pathsep.join([os.path.join(SIM, 'lib'), _collections_path()]))

    def ctl(self, *args: str) -> None:
        subprocess.run([sys.executable, os.path.join(SIM, 'bin', 'gpusimctl'), '--root', self.root] + list(args),
                       env=self.env, check=True, stdout=subprocess.DEVNULL)

    def module(self, args: dict, check_mode: bool = False) -> tuple[float, dict]:
        payload = json.dumps({'ANSIBLE_MODULE_ARGS': dict(args, _ansible_check_mode=check_mode)})
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, MODULE], input=payload, capture_output=True, text=True, env=self.env, check=False)
        elapsed = time.perf_counter() - start
        result = json.loads(proc.stdout)
        if result.get('failed'):
            raise SystemExit('mig_layout failed: %s' % result.get('msg'))
        return elapsed, result

    def counters(self) -> tuple[int, int]:
        with open(os.path.join(self.root, 'state.json'), encoding='utf-8') as handle:
            state = json.load(handle)
        return sum(state.get('nvml_mutations', {}).values()), sum(g.get('resets', 0) for g in state['gpus'])


def _collections_path() -> str:
    link = os.path.join(REPO, '.build', 'ansible_collections', 'gpuvirt', 'fleet')
    if not os.path.exists(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink('../../..', link)
    return os.path.join(REPO, '.build')


def main() -> int:
    repeat = int(os.environ.get('BENCH_REPEAT', '5'))
    with tempfile.TemporaryDirectory() as work:
        host = Host(os.path.join(work, 'host'))
        host.ctl('init', '--hostname', 'bench', '--gpu', 'h100-80gb-hbm3:8')
        saved = {'off': os.path.join(work, 'off.json'), 'seven': os.path.join(work, 'seven.json')}
        shutil.copy(os.path.join(host.root, 'state.json'), saved['off'])
        host.module({'config': SEVEN_1G})
        shutil.copy(os.path.join(host.root, 'state.json'), saved['seven'])
        print('mig_layout on a simulated host with 8x H100 80GB HBM3 (%d runs each; wall time of the module process):' % repeat)
        print('%-66s %9s %9s %6s %9s %7s' % ('scenario', 'median s', 'min s', 'steps', 'NVML muts', 'resets'))
        for name, start, args, check_mode in SCENARIOS:
            times = []
            for _run in range(repeat):
                shutil.copy(saved[start], os.path.join(host.root, 'state.json'))
                before = host.counters()
                elapsed, result = host.module(args, check_mode)
                times.append(elapsed)
                after = host.counters()
            figures = (statistics.median(times), min(times), len(result.get('steps') or []), after[0] - before[0], after[1] - before[1])
            print('%-66s %9.3f %9.3f %6d %9d %7d' % ((name,) + figures))
    return 0


if __name__ == '__main__':
    sys.exit(main())
