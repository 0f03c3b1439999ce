#!/usr/bin/env python
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpu_facts on simulated hosts with 1 and 8 GPUs, NVML path and nvidia-smi fallback side by side.

The simulated host is set up exactly as a real one would be seen by the module: the stand-in pynvml on the
Python path, the stand-in nvidia-smi on PATH. Figures only, no pass/fail. The real-H100 figures come from
bench/real_gpu_capture.sh on the device and are printed from the capture kept in the tests' fixtures.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIM = os.path.join(REPO, 'sim')
REAL = os.path.join(REPO, 'tests', 'unit', 'fixtures', 'real-h100', 'bench.txt')


def main() -> int:
    repeat = os.environ.get('BENCH_REPEAT', '10')
    lines = []
    for count in (1, 8):
        with tempfile.TemporaryDirectory() as root:
            env = dict(os.environ, GPUSIM_ROOT=root, PATH=os.path.join(SIM, 'bin') + os.pathsep + os.environ['PATH'],
                       PYTHONPATH=os.pathsep.join([os.path.join(SIM, 'lib'), os.path.join(REPO, '.build')]))
            subprocess.run([sys.executable, os.path.join(SIM, 'bin', 'gpusimctl'), 'init', '--hostname', 'bench',
                            '--gpu', 'h100-80gb-hbm3:%d' % count], env=env, check=True, stdout=subprocess.DEVNULL)
            out = subprocess.run([sys.executable, os.path.join(REPO, 'bench', 'bench_gpu_facts.py'), '--repeat', repeat,
                                  '--label', 'sim-h100x%d' % count], env=env, check=True, capture_output=True, text=True).stdout
            rows = out.splitlines()
            if not lines:
                lines.append(rows[0])
            lines.extend(rows[1:])
    print('gpu_facts on simulated hosts (%s runs each; module = whole module process, discovery = NVML/nvidia-smi work):' % repeat)
    print('\n'.join(lines))
    if os.path.exists(REAL):
        print('\nRecorded on the real H100 by bench/real_gpu_capture.sh (tests/unit/fixtures/real-h100/bench.txt):')
        with open(REAL, encoding='utf-8') as handle:
            print(handle.read().rstrip())
    return 0


if __name__ == '__main__':
    sys.exit(main())
