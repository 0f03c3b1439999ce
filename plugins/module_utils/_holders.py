# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""Who holds the GPUs a MIG change must reset, and what to say about it. Pure: the facts come from the seams.

A GPU reset (`nvidia-smi -r`, which makes a MIG mode change current) fails while any process has the GPU open: an
NVML client (an exporter, nvidia-persistenced, DCGM, the fabric manager), a CUDA process, or the nvidia_drm kernel
module, which holds every GPU. The holders are found the way fuser and lsof find them, from the processes' open
files (`_sysfs.read_device_holders`: /dev/nvidia<minor>), plus the compute processes NVML reports on the GPU, and a
loaded nvidia_drm (`_sysfs.read_loaded_modules`). Processes are never stopped or killed here: the caller (the mig
role) stops the services it knows before the change, and a holder still there is named in a refusal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

DRM_MODULE = 'nvidia_drm'
DRM_REASON = ('the nvidia_drm kernel module is loaded and holds every GPU, so no GPU can be reset; the MIG mode change '
              'stays pending until the next reboot (or unload nvidia_drm and apply again)')


def drm_loaded(modules: Iterable[str] | None, live: bool = False) -> bool:
    """Whether nvidia_drm is loaded: among the loaded kernel modules (/proc/modules; None: unreadable) or `live` (its
    /sys/module entry says so)."""
    return live or (modules is not None and DRM_MODULE in modules)


def holders_of(gpu: Mapping[str, Any], holders: Sequence[Mapping[str, Any]], exclude: Iterable[int] = ()) -> list[dict]:
    """The holders of one GPU: processes with its device node open (by minor number) and NVML's compute processes on
    it, each once, without the pids in `exclude` (this process)."""
    skip = set(exclude)
    minor = gpu.get('minor_number')
    found = [dict(h) for h in holders if h['pid'] not in skip and minor is not None and minor in h.get('minors', ())]
    seen = {h['pid'] for h in found}
    for proc in gpu.get('processes') or []:
        pid = proc.get('pid')
        if pid is None or pid in skip or pid in seen:
            continue
        seen.add(pid)
        name = proc.get('name') or 'a compute process'
        found.append({'pid': pid, 'comm': name, 'command': name, 'unit': None, 'minors': [minor] if minor is not None else []})
    return sorted(found, key=lambda h: h['pid'])


def describe(holder: Mapping[str, Any]) -> str:
    """'pid 812 (/usr/bin/nvidia-persistenced --verbose; unit nvidia-persistenced.service)'."""
    unit = holder.get('unit')
    return 'pid %d (%s%s)' % (holder['pid'], holder.get('command') or holder.get('comm') or '?', '; unit %s' % unit if unit else '')


def blocking(gpus: Sequence[Mapping[str, Any]], needs_reset: Iterable[int], holders: Sequence[Mapping[str, Any]],
             exclude: Iterable[int] = ()) -> list[dict]:
    """The holders of the GPUs (by index) in `needs_reset`: [{pid, comm, command, unit, gpus: [index, ...]}]."""
    wanted = set(needs_reset)
    merged: dict[int, dict] = {}
    for gpu in gpus:
        if gpu['index'] not in wanted:
            continue
        for holder in holders_of(gpu, holders, exclude):
            entry = merged.setdefault(holder['pid'], dict({k: holder[k] for k in ('pid', 'comm', 'command', 'unit')}, gpus=[]))
            entry['gpus'].append(gpu['index'])
    return [merged[pid] for pid in sorted(merged)]


def refusal(host: str, found: Sequence[Mapping[str, Any]]) -> str:
    """Why the change was refused: each GPU that must be reset and who holds it."""
    per_gpu: dict[int, list[str]] = {}
    for holder in found:
        for index in holder['gpus']:
            per_gpu.setdefault(index, []).append(describe(holder))
    held = '; '.join('GPU %d is held by %s' % (index, ', '.join(names)) for index, names in sorted(per_gpu.items()))
    return ('host %s: the MIG mode change needs a GPU reset, but %s; nothing was changed. Stop them and apply again '
            '(the gpuvirt.fleet.mig role stops the GPU services it knows, and those listed in mig_clients; it never '
            'kills a process)' % (host, held))
