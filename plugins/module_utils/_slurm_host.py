# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""The Slurm modules' seam: what the NVIDIA driver's /proc tree says about device minors, `nvidia-modprobe -f` for
the MIG capability device nodes, and the scontrol/squeue commands. Every command goes through _commands.Runner; the
GPUs themselves are observed through _discovery (NVML), as gpu_facts observes them.
"""

from __future__ import annotations

import os
import time

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _commands, _slurm, _sysfs

ENV = {'LC_ALL': 'C'}
CAPS = '/proc/driver/nvidia/capabilities'
GPUS = '/proc/driver/nvidia/gpus'
CAP_DEVICES = '/dev/nvidia-caps'


def gpu_minors(gpus: list[dict], proc_gpus: str = GPUS) -> tuple[dict, list[str]]:
    """GPU index -> minor number: NVML's (gpu_facts' minor_number), else 'Device Minor:' of
    <proc_gpus>/<pci bus id>/information, else the index (with a warning: the minor equals the index on hosts whose
    GPUs probe in PCI order)."""
    minors, warnings = {}, []
    for gpu in gpus:
        bus = (gpu.get('pci') or {}).get('bus_id')
        minor = gpu.get('minor_number')
        if minor is None and bus:
            domain, _sep, rest = bus.lower().partition(':')
            for name in ('%04x:%s' % (int(domain, 16), rest) if domain else bus.lower(), bus.lower()):
                minor = _slurm.parse_device_minor(_sysfs.read_text(os.path.join(proc_gpus, name, 'information')))
                if minor is not None:
                    break
        if minor is None:
            warnings.append('GPU %d: no Device Minor in %s/<bus id>/information; using its index %d as minor'
                            % (gpu['index'], proc_gpus, gpu['index']))
            minor = gpu['index']
        minors[gpu['index']] = minor
    return minors, warnings


def cap_minors(caps_root: str = CAPS) -> dict:
    """cap_path -> DeviceFileMinor of every GI and CI capability file the driver lists now."""
    return _sysfs.read_mig_capabilities(caps_root)


def missing_cap_nodes(devs: list[dict]) -> list[str]:
    """The /dev/nvidia-caps files the devices name that do not exist as character devices."""
    missing = []
    for dev in devs:
        for path in dev['files'][1:]:
            try:
                ok = os.path.exists(path) and os.stat(path).st_mode & 0o170000 == 0o020000
            except OSError:
                ok = False
            if not ok and path not in missing:
                missing.append(path)
    return missing


def make_cap_nodes(runner: _commands.Runner, nvidia_modprobe: str, devs: list[dict], caps_root: str = CAPS) -> list[str]:
    """Run `nvidia-modprobe -f <cap file>` for each GI/CI capability whose /dev node is missing; returns the
    device nodes made. A failure raises _commands.CommandError."""
    wanted = set(missing_cap_nodes(devs))
    made = []
    for dev in devs:
        if dev['gpu_instance'] is None:
            continue
        for ci, node in ((None, dev['files'][1]), (dev['compute_instance'], dev['files'][2])):
            if node in wanted and node not in made:
                runner.run([nvidia_modprobe, '-f', os.path.join(caps_root, _slurm.cap_path(dev['minor'], dev['gpu_instance'], ci))], ENV)
                made.append(node)
    still = missing_cap_nodes(devs)
    if still:
        raise _commands.CommandError('nvidia-modprobe ran but these device nodes are still missing: %s' % ', '.join(still))
    return made


class Scontrol:
    """scontrol and squeue for one node."""

    def __init__(self, runner: _commands.Runner, scontrol: str, squeue: str, node: str):
        self.runner, self.scontrol, self.squeue, self.node = runner, scontrol, squeue, node

    def show(self) -> dict:
        rc, out, err = self.runner.run([self.scontrol, 'show', 'node', '-o', self.node], ENV, check=False)
        node = _slurm.parse_show_node(out) if rc == 0 else None
        if node is None:
            raise _commands.CommandError('scontrol show node %s: %s' % (self.node, (err or out).strip() or 'no such node'))
        return node

    def jobs(self) -> list[str]:
        return _slurm.parse_jobs(self.runner.run([self.squeue, '-h', '-w', self.node, '-o', '%i'], ENV)[1])

    def update(self, *words: str) -> tuple[int, str]:
        rc, out, err = self.runner.run([self.scontrol, 'update', 'nodename=%s' % self.node] + list(words), ENV, check=False)
        return rc, (err or out).strip()

    def wait(self, predicate, timeout: float, poll: float):
        """Poll show() until predicate(node) holds or `timeout` seconds pass; returns (held, last node)."""
        deadline = time.monotonic() + timeout
        while True:
            node = self.show()
            if predicate(node):
                return True, node
            if time.monotonic() >= deadline:
                return False, node
            time.sleep(poll)
