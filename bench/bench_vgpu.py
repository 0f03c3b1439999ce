#!/usr/bin/env python
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vgpu_devices apply time for 16 vGPUs on one host (16 x A40-3Q, the A40's full capacity of that type): the first
run (16 sysfs creates, mdevctl definitions written) and a rerun (nothing to do), for both backends side by side: mdev
(create under mdev_supported_types) and the SR-IOV vendor interface (current_vgpu_type on 16 of the 32 VFs). Figures
only.

The module runs as Ansible runs it on a host (a subprocess, JSON in and out) against a simulated A40 whose mdev
sysfs trees are the FUSE emulation, mounted in a temporary directory. Each figure is the median of --repeat runs,
each on a fresh host (the first run) or on the applied one (the rerun); wall time includes Python's start-up.
--fleet: the same through the role over SSH (ansible-playbook, gpuvirt.fleet.vgpu) on the test fleet of
tests/integration/vgpu (fleets 'vgputest' and 'vgpusriov', brought up and torn down here; needs root); one first run
and one rerun per backend.
Needs /dev/fuse and mfusepy. Usage: python bench/bench_vgpu.py [--repeat N] [--fleet]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'tests', 'integration'))
from fleethost import FleetHost, fleet_up  # noqa: E402  pylint: disable=wrong-import-position,import-error
from simhost import SIM_LIB, SimHost  # noqa: E402  pylint: disable=wrong-import-position,import-error

sys.path.append(SIM_LIB)
from gpusim_sysfs.serve import served  # noqa: E402  pylint: disable=wrong-import-position,import-error

DECLARATION = [{'name': 'bench', 'devices': [0], 'type': 'A40-3Q', 'count': 16}]


class _Mounted:
    """A fresh simulated A40 host with its vGPU sysfs trees mounted (SR-IOV: with all 32 VFs enabled); unmounted on exit."""

    def __init__(self, sriov: bool = False):
        self.sriov = sriov
        self.tmp = tempfile.mkdtemp(prefix='bench-vgpu-')
        self.host = SimHost(os.path.join(self.tmp, 'gpusim'))
        self.sysfs = os.path.join(self.tmp, 'sys')
        self.served = served(self.sysfs, self.host.root, sriov=sriov)

    def __enter__(self):
        self.host.ctl('init', '--hostname', 'bench-a40', '--gpu', 'a40', '--vgpu-host')
        os.mkdir(self.sysfs)
        self.served.__enter__()
        if self.sriov:
            with open(os.path.join(self.sysfs, 'bus', 'pci', 'devices', '0000:18:00.0', 'sriov_numvfs'), 'w', encoding='ascii') as handle:
                handle.write('32\n')
        return self

    def __exit__(self, *exc):
        self.served.__exit__(*exc)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def apply(self) -> tuple[float, dict]:
        args = {'config': DECLARATION, 'hostname': 'bench-a40', 'sysfs_root': self.sysfs, 'mdevctl_dir': os.path.join(self.tmp, 'mdevctl.d')}
        start = time.perf_counter()
        result = self.host.module('vgpu_devices', args)
        return time.perf_counter() - start, result


def _fleet_figures() -> int:
    for fleet, fleetfile, what in (('vgputest', 'fleet-vgpu.yml', 'mdev'), ('vgpusriov', 'fleet-vgpu-sriov.yml', 'SR-IOV')):
        figures = _fleet_run(fleet, fleetfile)
        if figures is None:
            return 1
        print('gpuvirt.fleet.vgpu over SSH, 16 x A40-3Q on one fleet host, %s (ansible-playbook wall time):' % what)
        print('  first run: %.1f s; rerun (no change): %.1f s' % tuple(figures))
    return 0


def _fleet_run(fleet: str, fleetfile: str) -> list[float] | None:
    here = Path(REPO, 'tests', 'integration', 'vgpu')
    with tempfile.TemporaryDirectory(prefix='bench-vgpu-fleet-') as tmp, fleet_up(fleet, here / fleetfile, Path(tmp)) as inventory:
        host = FleetHost(fleet, '', Path(tmp), inventory, here / 'vgpu.yml')
        figures = []
        for _attempt in range(2):
            start = time.perf_counter()
            proc = host.play(gpu_vgpu=DECLARATION)
            figures.append(time.perf_counter() - start)
            if proc.returncode != 0:
                print(proc.stdout[-3000:], file=sys.stderr)
                return None
        return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    parser.add_argument('--repeat', type=int, default=5)
    parser.add_argument('--fleet', action='store_true', help='time the role over SSH on the test fleet instead')
    args = parser.parse_args()
    if args.fleet:
        return _fleet_figures()
    for sriov in (False, True):
        if _local_figures(args.repeat, sriov):
            return 1
    return 0


def _local_figures(repeat: int, sriov: bool) -> int:
    first, rerun = [], []
    for _attempt in range(repeat):
        with _Mounted(sriov) as host:
            seconds, result = host.apply()
            if result.get('failed') or len(result['applied']) != 16:
                print('first run failed: %s' % result.get('msg'), file=sys.stderr)
                return 1
            first.append(seconds)
            seconds, result = host.apply()
            if result.get('failed') or result['changed']:
                print('rerun was not a no-op: %s' % result, file=sys.stderr)
                return 1
            rerun.append(seconds)
    print('vgpu_devices, 16 x A40-3Q on one simulated A40 (FUSE sysfs), %s, median of %d:' % (
        'SR-IOV vendor interface (16 VFs)' if sriov else 'mdev', repeat))
    print('  first run (16 creates%s): %.0f ms (min %.0f, max %.0f)' % (
        '' if sriov else ' + mdevctl definitions', statistics.median(first) * 1000, min(first) * 1000, max(first) * 1000))
    print('  rerun (no change): %.0f ms (min %.0f, max %.0f)' % (
        statistics.median(rerun) * 1000, min(rerun) * 1000, max(rerun) * 1000))
    return 0


if __name__ == '__main__':
    sys.exit(main())
