# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""The pure fleet report's analysis: GPU facts and declarations of many hosts in, drift and a fleet summary out.

Input is a list of host entries, one per inventory host::

    {'host': 'gpu-h100-01',            # inventory name
     'reachable': True,                # false: the host did not answer (then `error` says why)
     'error': None,                    # why facts are missing (unreachable, gpu_facts failed)
     'gpu_host': {...}, 'gpus': [...], # what gpuvirt.fleet.gpu_facts returned (ansible_facts.gpu_host, .gpus)
     'gpu_mig': [...], 'gpu_vgpu': [...], 'gpu_settings': [...], 'driver_version': '580.159.04', 'driver_branch': '', 'driver_flavor': 'auto'}

The declarations are the host's inventory variables (absent, null or empty: nothing declared). Drift is what the
planners say: `_mig.plan_host` + `_mig.mismatches` and `_vgpu.plan_host` + `_vgpu.verify` against the observed facts,
with the vGPU planner's view of the facts from `_vgpu.views_from_facts` (so the report, the capacity planner and the
roles never disagree on what "matches" means), plus the loaded driver version and kernel-module flavour against
`driver_version` / `driver_branch` / `driver_flavor`, and `_settings.plan_host` for `gpu_settings` (locked clocks aside:
NVML cannot read them back). MIG drift is read from verify's structured mismatches, never
from its sentences. `analyse(hosts)` is the model `_report_html.render_html` draws. Nothing here reads a file, runs a
command or imports pynvml.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _driver, _mig, _settings, _vgpu

NO_FACTS = ('unreachable', 'failed')


def _text(value: Any) -> str:
    return '' if value is None else str(value)


def _declared(value: Any) -> bool:
    return value is not None and value != '' and value != [] and value != {}


# ---------------------------------------------------------------------------------------------------------
# Drift: what the declarations say against what the facts show, judged by the planners


def _mig_drift(host: str, gpus: Sequence[Mapping[str, Any]], declaration: Any) -> list[str]:
    try:
        plan = _mig.plan_host(host, gpus, declaration)
    except _mig.MigPlanError as exc:
        return ['MIG: the declaration cannot be met: ' + _strip_host(host, e) for e in exc.errors]
    problems = ['MIG: ' + p for p in condense(_mig.mismatches(plan.desired, gpus))]
    if problems and plan.steps:
        problems.append('MIG: %d planned step(s) would converge it (run the mig role)' % len(plan.steps))
    return problems


def condense(mismatches: Sequence[_mig.Mismatch]) -> list[str]:
    """Verify's mismatches as lines, the GPU instances of one GPU, kind, profile and compute instances grouped:
    'GPU 0 (..): missing GPU instance 7 x 1g.10gb [1c] at 0, 1, 2, 3, 4, 5, 6'; the others as verify words them."""
    groups: dict[tuple, list[int]] = {}
    out: list[Any] = []
    for mismatch in mismatches:
        instance = mismatch.wanted if mismatch.found is None else mismatch.found
        if mismatch.field != 'gpu_instance' or instance.start is None:
            out.append(_mig.render(mismatch))
            continue
        key = (mismatch.gpu, mismatch.uuid, 'missing' if mismatch.found is None else 'unexpected', instance.profile, instance.compute_instances)
        if key not in groups:
            groups[key] = []
            out.append(key)
        groups[key].append(instance.start)
    result = []
    for item in out:
        if isinstance(item, str):
            result.append(item)
            continue
        gpu, uuid, kind, profile, cis = item
        starts = sorted(groups[item])
        count = '%d x ' % len(starts) if len(starts) > 1 else ''
        result.append('GPU %s (%s): %s GPU instance %s%s [%s] at %s' % (
            gpu, uuid, kind, count, profile, ', '.join('%dc' % s for s in cis), ', '.join(str(s) for s in starts)))
    return result


def _vgpu_drift(host: str, gpus: Sequence[Mapping[str, Any]], declaration: Any) -> list[str]:
    views = _vgpu.views_from_facts(gpus)
    try:
        plan = _vgpu.plan_host(host, views, declaration)
    except _vgpu.VgpuPlanError as exc:
        return ['vGPU: the declaration cannot be met: ' + _strip_host(host, e) for e in exc.errors]
    problems = []
    missing: dict[tuple, int] = {}
    for step in plan.steps:
        if step['action'] == 'create':
            key = (step['gpu'], _vgpu.short_name(_text(step['type'])))
            missing[key] = missing.get(key, 0) + 1
        else:
            problems.append('vGPU: GPU %s: unexpected %s device %s' % (step['gpu'], _vgpu.short_name(_text(step['type'])), step['device']))
    problems[:0] = ['vGPU: GPU %s: %d x %s missing' % (gpu, count, name) for (gpu, name), count in sorted(missing.items())]
    if not problems:  # the plan is empty: verify says whether the devices really match
        problems = ['vGPU: ' + p for p in _vgpu.verify(plan.desired(), views)]
    return problems


def _settings_drift(host: str, gpus: Sequence[Mapping[str, Any]], declaration: Any) -> list[str]:
    """What gpu_settings would change, from the facts. Locked clocks are left out: NVML cannot read them back (the
    role's verify checks them against the module's record on the host)."""
    try:
        plan = _settings.plan_host(host, gpus, declaration)
    except _settings.SettingsPlanError as exc:
        return ['settings: the declaration cannot be met: ' + _strip_host(host, e) for e in exc.errors]
    return ['settings: %s: %s' % ('GPU %s' % step['gpu'] if step['gpu'] is not None else 'host', _settings.step_text(step))
            for step in plan.steps if step['action'] not in ('set_gpu_locked_clocks', 'set_memory_locked_clocks', 'reset_gpu')]


def _driver_drift(gpu_host: Mapping[str, Any], entry: Mapping[str, Any]) -> list[str]:
    problems = []
    loaded = gpu_host.get('driver_version')
    module = gpu_host.get('kernel_module') or {}
    version = _text(entry.get('driver_version')).strip()
    branch = _text(entry.get('driver_branch')).strip()
    if version and loaded != version:
        problems.append('driver: %s loaded, %s declared' % (loaded or 'none', version))
    elif version and module.get('version') and module.get('version') != version:
        problems.append('driver: kernel module %s loaded, %s declared (reload or reboot pending)' % (module.get('version'), version))
    if branch and not version and (not loaded or _driver.branch_of(loaded) != branch):
        problems.append('driver: %s loaded, branch %s declared' % (loaded or 'none', branch))
    flavor = _text(entry.get('driver_flavor')).strip()
    if flavor in _driver.FLAVORS and module.get('flavor') and module.get('flavor') != flavor:
        problems.append('driver: %s kernel modules loaded, %s declared' % (module.get('flavor'), flavor))
    return problems


def _strip_host(host: str, message: str) -> str:
    prefix = 'host %s: ' % host
    return message[len(prefix):] if message.startswith(prefix) else message


def host_drift(entry: Mapping[str, Any]) -> list[str]:
    """Differences between a reachable host's declarations and its facts; empty when it matches (or declares nothing)."""
    host = _text(entry.get('host'))
    gpus = list(entry.get('gpus') or [])
    problems = _driver_drift(entry.get('gpu_host') or {}, entry)
    if _declared(entry.get('gpu_mig')):
        problems += _mig_drift(host, gpus, entry.get('gpu_mig'))
    if _declared(entry.get('gpu_vgpu')):
        problems += _vgpu_drift(host, gpus, entry.get('gpu_vgpu'))
    if _declared(entry.get('gpu_settings')):
        problems += _settings_drift(host, gpus, entry.get('gpu_settings'))
    return problems


# ---------------------------------------------------------------------------------------------------------
# The model of the report: hosts with their drift, and the fleet summary


def analyse(hosts: Sequence[Mapping[str, Any]]) -> dict:
    """Per host: the entry plus `drift` (list) and `state`: ok, drift, unreachable (no answer) or failed (it answered but
    gave no GPU facts); and the fleet `summary`."""
    out = []
    for entry in sorted(hosts, key=lambda e: _text(e.get('host'))):
        item = dict(entry)
        item['drift'] = []
        if not entry.get('reachable', True):
            item['state'] = 'unreachable'
        elif entry.get('gpu_host') is None:
            item['state'] = 'failed'
        else:
            item['drift'] = host_drift(entry)
            item['state'] = 'drift' if item['drift'] else 'ok'
        out.append(item)
    return {'hosts': out, 'summary': summarise(out)}


def summarise(hosts: Sequence[Mapping[str, Any]]) -> dict:
    models: dict[str, int] = {}
    drivers: dict[str, int] = {}
    gpus = mig_gpus = gis = vgpus = lost = 0
    for entry in hosts:
        if entry.get('state') in NO_FACTS:
            continue
        version = (entry.get('gpu_host') or {}).get('driver_version') or 'none'
        drivers[version] = drivers.get(version, 0) + 1
        for gpu in entry.get('gpus') or []:
            gpus += 1
            name = gpu.get('name') or 'unknown'
            models[name] = models.get(name, 0) + 1
            lost += gpu.get('status') == 'lost'
            mig = gpu.get('mig') or {}
            mig_gpus += bool(mig.get('current'))
            gis += len(mig.get('gpu_instances') or [])
            vgpus += len((gpu.get('vgpu') or {}).get('active') or [])
    return {
        'hosts': len(hosts),
        'reachable': sum(1 for h in hosts if h.get('state') != 'unreachable'),
        'unreachable': [h.get('host') for h in hosts if h.get('state') == 'unreachable'],
        'failed': [h.get('host') for h in hosts if h.get('state') == 'failed'],
        'drift': [h.get('host') for h in hosts if h.get('state') == 'drift'],
        'gpus': gpus,
        'models': dict(sorted(models.items())),
        'drivers': dict(sorted(drivers.items())),
        'mig_gpus': mig_gpus,
        'mig_instances': gis,
        'vgpus': vgpus,
        'lost_gpus': lost,
    }
