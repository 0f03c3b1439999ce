#!/usr/bin/env python
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Time gpu_facts on this host: the whole module process, and discovery alone, per backend.

Prints one row per backend: median and min of N runs. No pass/fail: figures only.
Run from the repository root with .build on PYTHONPATH (the Makefile does this).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = os.path.join(REPO, 'plugins', 'modules', 'gpu_facts.py')


class _Module:
    """The two AnsibleModule methods discovery uses, for timing discovery without a module process."""

    @staticmethod
    def get_bin_path(name):
        return shutil.which(name)

    @staticmethod
    def run_command(args, environ_update=None):
        env = dict(os.environ, **(environ_update or {}))
        proc = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
        return proc.returncode, proc.stdout, proc.stderr


def time_module(backend: str, repeat: int, python: str) -> tuple[list[float], dict]:
    args = json.dumps({'ANSIBLE_MODULE_ARGS': {'backend': backend}})
    times, result = [], {}
    for _run in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run([python, MODULE], input=args, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise SystemExit('gpu_facts failed with backend %s: %s %s' % (backend, proc.stdout, proc.stderr))
        result = json.loads(proc.stdout)
    return times, result


def time_discovery(backend: str, repeat: int) -> list[float]:
    from ansible_collections.gpuvirt.fleet.plugins.module_utils._discovery import discover  # pylint: disable=import-outside-toplevel
    times = []
    for _run in range(repeat):
        start = time.perf_counter()
        discover(_Module(), backend)
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--backend', action='append', choices=['nvml', 'nvidia-smi'])
    parser.add_argument('--repeat', type=int, default=10)
    parser.add_argument('--label', default=os.uname().nodename)
    parser.add_argument('--json', help='also write the figures and the last facts to this file')
    opts = parser.parse_args()
    rows, report = [], {'label': opts.label, 'rows': []}
    for backend in opts.backend or ['nvml', 'nvidia-smi']:
        module_times, result = time_module(backend, opts.repeat, sys.executable)
        discovery_times = time_discovery(backend, opts.repeat)
        host = result['ansible_facts']['gpu_host']
        row = {
            'label': opts.label, 'backend': backend, 'gpus': host['gpu_count'], 'repeat': opts.repeat,
            'module_median_ms': statistics.median(module_times) * 1000, 'module_min_ms': min(module_times) * 1000,
            'discovery_median_ms': statistics.median(discovery_times) * 1000, 'discovery_min_ms': min(discovery_times) * 1000,
        }
        rows.append(row)
        report['rows'].append(dict(row, facts=result['ansible_facts']))
    print('%-22s %-11s %5s %7s %18s %15s %21s %18s' % ('host', 'backend', 'gpus', 'runs', 'module median ms', 'module min ms',
                                                       'discovery median ms', 'discovery min ms'))
    for r in rows:
        print('%-22s %-11s %5d %7d %18.1f %15.1f %21.1f %18.1f' % (
            r['label'][:22], r['backend'], r['gpus'], r['repeat'], r['module_median_ms'], r['module_min_ms'],
            r['discovery_median_ms'], r['discovery_min_ms']))
    if len(rows) == 2 and rows[0]['discovery_median_ms']:
        print('discovery ratio %s/%s: %.1fx' % (rows[1]['backend'], rows[0]['backend'],
                                                rows[1]['discovery_median_ms'] / rows[0]['discovery_median_ms']))
    if opts.json:
        with open(opts.json, 'w', encoding='utf-8') as handle:
            json.dump(report, handle, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
