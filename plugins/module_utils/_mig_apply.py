# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""Apply a `gpu_mig` declaration on this host: observe, plan, apply, verify, and roll back on failure.

The one implementation behind the `gpuvirt.fleet.mig_layout` module and the mig role's boot-time service, so it
imports nothing from Ansible: besides the standard library (and pynvml) it needs only the pure planners (_mig and
the modules it imports, _mig_parted) and the seams (_nvml, _nvml_mig, _smi), which the role copies with the rest of
module_utils to `<dir>/ansible_collections/gpuvirt/fleet/plugins/module_utils/`, `<dir>` on `sys.path` (the
`ansible_collections` package here is this collection's namespace, not Ansible).

1. observe: every GPU's facts, read through NVML (`_nvml.read_gpu`, what gpu_facts returns);
2. plan: `_mig.plan_host` validates the whole declaration and returns the minimal ordered steps; an invalid or
   infeasible declaration is refused here, before any change (and in check mode the plan is the answer);
3. apply: each step through its seam, in order: NVML for MIG mode and instances, `nvidia-smi -r` for resets
   (with this process's NVML session closed, as a GPU held open by an NVML client cannot be reset). A reset the
   tool says is impossible here is no failure: the GPU joins `reboot_required` and its remaining steps wait
   for the reboot (`deferred`);
4. verify: observe again and `_mig.verify` against the plan.

A failed step, or a verify mismatch, rolls back every GPU a step touched to the layout it had before (MIG mode,
each GPU instance at its placement, each compute instance at its placement): what this run created is destroyed,
what it destroyed is recreated (`restore_steps`, planned from a fresh observation, so a half-done step is
covered too). A rollback step that fails is tried again (three tries, a short backoff: `_retry`), the steps that do
not depend on it still run, and the rest is planned again from a fresh observation while that makes progress; a GPU
that still cannot be restored is left usable (a GPU instance left without compute instances gets one, or is
destroyed). The GPUs are then compared with their previous layout, and the result says which step failed, why, and
whether the rollback restored every GPU, or exactly what each GPU holds now: never a silent third state.
"""

from __future__ import annotations

import os
import shutil
import traceback
from collections.abc import Mapping, Sequence
from typing import Any, Callable

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _holders, _mig, _mig_declaration, _mig_parted, _nvml, _retry, _smi, _sysfs

RESET_CHOICES = ('auto', 'never')
DEFAULT_LABEL = 'current'
RunCommand = Callable[[list], tuple]


class StepFailed(Exception):
    """A step could not be run: `reason` says why, in words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def run_step(run: Callable[[Mapping[str, Any]], dict | None], step: Mapping[str, Any],
             nvml_reason: Callable[[Mapping[str, Any], Exception], str]) -> dict:
    """run(step), every failure but an impossible reset turned into StepFailed (an NVML error in nvml_reason's words),
    so that any surprise in a step is rolled back too. Shared by the MIG and the GPU settings paths."""
    try:
        return run(step) or {}
    except _nvml.NvmlCallError as exc:
        raise StepFailed(nvml_reason(step, exc)) from exc
    except _nvml.DriverUnavailable as exc:
        raise StepFailed('NVML could not be started again after the reset: %s' % exc) from exc
    except _smi.SmiResetImpossible:
        raise
    except _smi.SmiError as exc:
        raise StepFailed(str(exc)) from exc
    except StepFailed:
        raise
    except Exception as exc:  # pylint: disable=broad-exception-caught  # any surprise in a step is rolled back too
        raise StepFailed('unexpected error: %r' % (exc,)) from exc


# ---------------------------------------------------------------------------------------------------------
# Pure helpers: layouts, the rollback plan, messages


def _instances(gpu: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    mig = gpu.get('mig') or {}
    return list(mig.get('gpu_instances') or []) if mig.get('current') else []


def _gi_key(gi: Mapping[str, Any]) -> tuple:
    place = gi.get('placement') or {}
    return (gi.get('profile_id'), place.get('start'), place.get('size'))


def _ci_key(ci: Mapping[str, Any]) -> tuple:
    return (ci.get('slices'), (ci.get('placement') or {}).get('start'))


def layout(gpu: Mapping[str, Any]) -> tuple:
    """What a rollback must restore: MIG mode, and each GPU instance's placement with its compute instances'."""
    mig = gpu.get('mig') or {}
    return (bool(mig.get('current')), bool(mig.get('pending')),
            tuple(sorted((_gi_key(g), tuple(sorted((_ci_key(c) for c in g.get('compute_instances') or []), key=repr)))
                         for g in _instances(gpu))))


def describe_layout(gpu: Mapping[str, Any]) -> str:
    """'MIG enabled (pending enabled): 3g.40gb at 4 [1c at 0, 2c at 1], 1g.10gb at 0 [1c at 0]'."""
    mig = gpu.get('mig') or {}
    mode = 'MIG %s (pending %s)' % ('enabled' if mig.get('current') else 'disabled', 'enabled' if mig.get('pending') else 'disabled')
    parts = []
    for gi in sorted(_instances(gpu), key=lambda g: (g.get('placement') or {}).get('start') or 0):
        cis = ', '.join('%sc at %s' % _ci_key(c) for c in sorted(gi.get('compute_instances') or [], key=_ci_key))
        parts.append('%s at %s [%s]' % (gi.get('profile'), (gi.get('placement') or {}).get('start'), cis))
    return mode + (': ' + ', '.join(parts) if parts else ': no GPU instances')


def _base(gpu: Mapping[str, Any]) -> dict:
    return {'gpu': gpu['index'], 'uuid': gpu.get('uuid')}


def _ci_name(slices: int, gi: Mapping[str, Any]) -> str:
    return '%dc.%s' % (slices, gi.get('profile'))


def _create_gi_steps(gpu: Mapping[str, Any], gi: Mapping[str, Any]) -> list[dict]:
    place = gi['placement']
    steps = [dict(_base(gpu), action='create_gpu_instance', profile=gi.get('profile'), profile_id=gi['profile_id'],
                  start=place['start'], size=place['size'])]
    for ci in sorted(gi.get('compute_instances') or [], key=_ci_key):
        steps.append(_create_ci_step(gpu, gi, ci, None))
    return steps


def _create_ci_step(gpu: Mapping[str, Any], gi: Mapping[str, Any], ci: Mapping[str, Any], gi_id: int | None) -> dict:
    slices = ci['slices']
    return dict(_base(gpu), action='create_compute_instance', gpu_instance_id=gi_id, gpu_instance_start=gi['placement']['start'],
                gpu_instance_profile=gi.get('profile'), profile=_ci_name(slices, gi), profile_id=_mig.CI_PROFILE_IDS.get(slices, slices),
                slices=slices, start=ci['placement']['start'])


def _mode_restore_steps(before: Mapping[str, Any], now: Mapping[str, Any]) -> tuple[list[dict], bool]:
    """set_mig_mode / reset_gpu steps that give the GPU its previous (current, pending) mode; (steps, reset)."""
    was, mode = before.get('mig') or {}, now.get('mig') or {}
    current, pending = bool(was.get('current')), bool(was.get('pending'))
    steps = []
    if bool(mode.get('current')) != current:
        if bool(mode.get('pending')) != current:
            steps.append(dict(_base(before), action='set_mig_mode', enabled=current, pids=[]))
        steps.append(dict(_base(before), action='reset_gpu', bus_id=(before.get('pci') or {}).get('bus_id'), pids=[]))
        if pending != current:
            steps.append(dict(_base(before), action='set_mig_mode', enabled=pending, pids=[]))
        return steps, True
    if bool(mode.get('pending')) != pending:
        steps.append(dict(_base(before), action='set_mig_mode', enabled=pending, pids=[]))
    return steps, False


def restore_steps(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[dict]:
    """Steps (in the planner's format) that bring one GPU from `now` back to exactly `before`.

    Instances both have in common (same profile and placement, same compute instances at the same places) are left
    alone; every other instance `now` has is destroyed (compute instances first), MIG mode is set back (with a reset
    where the current mode changed, after which every previous instance is recreated), and every instance `before`
    had is recreated at its placement with its compute instances at theirs.
    """
    old = {_gi_key(g): g for g in _instances(before)}
    destroys, creates = [], []
    for gi in _instances(now):
        kept = old.get(_gi_key(gi))
        keep = {_ci_key(c) for c in (kept or {}).get('compute_instances') or []}
        for ci in gi.get('compute_instances') or []:
            if kept is None or _ci_key(ci) not in keep:
                destroys.append(dict(_base(now), action='destroy_compute_instance', gpu_instance_id=gi['id'], compute_instance_id=ci['id'],
                                     profile=_ci_name(ci.get('slices') or 0, gi), slices=ci.get('slices'), pids=[]))
        if kept is None:
            place = gi.get('placement') or {}
            destroys.append(dict(_base(now), action='destroy_gpu_instance', gpu_instance_id=gi['id'], profile=gi.get('profile'),
                                 profile_id=gi.get('profile_id'), start=place.get('start'), size=place.get('size'), pids=[]))
    mode_steps, reset = _mode_restore_steps(before, now)
    current = {_gi_key(g): g for g in ([] if reset else _instances(now))}
    for key, gi in sorted(old.items(), key=lambda item: repr(item[0])):
        if key not in current:
            creates.extend(_create_gi_steps(before, gi))
            continue
        have = {_ci_key(c) for c in current[key].get('compute_instances') or []}
        creates.extend(_create_ci_step(before, gi, ci, current[key]['id'])
                       for ci in sorted(gi.get('compute_instances') or [], key=_ci_key) if _ci_key(ci) not in have)
    # GPU instances before compute instances, as the planner orders them
    creates.sort(key=lambda s: s['action'] != 'create_gpu_instance')
    return destroys + mode_steps + creates


def step_text(step: Mapping[str, Any]) -> str:
    """A step in words, for messages."""
    action = step['action']
    if action == 'destroy_compute_instance':
        return 'destroy compute instance %s (%s) of GPU instance %s' % (step['compute_instance_id'], step.get('profile'), step['gpu_instance_id'])
    if action == 'destroy_gpu_instance':
        return 'destroy GPU instance %s (%s at %s)' % (step['gpu_instance_id'], step.get('profile'), step.get('start'))
    if action == 'set_mig_mode':
        return 'set MIG mode %s' % ('enabled' if step['enabled'] else 'disabled')
    if action == 'reset_gpu':
        return 'reset the GPU (nvidia-smi -r)'
    if action == 'create_gpu_instance':
        return 'create GPU instance %s at %s' % (step.get('profile'), step['start'])
    if action == 'create_compute_instance':
        return 'create compute instance %s at %s in the %s at %s' % (step.get('profile'), step['start'], step.get('gpu_instance_profile'),
                                                                     step.get('gpu_instance_start'))
    return action


def _where(host: str, step: Mapping[str, Any], entries: Mapping[int, str]) -> str:
    where = 'host %s: GPU %s (%s)' % (host, step['gpu'], step.get('uuid') or 'no uuid')
    if step['gpu'] in entries:
        where += ': entry %s' % entries[step['gpu']]
    return where


# ---------------------------------------------------------------------------------------------------------
# The seams, driven step by step


def observe() -> list[dict]:
    """Every GPU's facts through NVML (the caller holds an NVML session)."""
    system = _nvml.read_system()
    return [_nvml.read_gpu(index) for index in range(system['count'])]


class _Executor:
    """Runs one step through its seam and returns what it created; failures become StepFailed."""

    def __init__(self, nvml: _nvml.NvmlSession, smi: _smi.SmiRunner | None):
        self.nvml = nvml
        self.smi = smi
        self.created_at: dict[tuple[int, int], int] = {}  # (GPU, start) -> id of a GPU instance created here

    def run(self, step: Mapping[str, Any]) -> dict:
        return run_step(self._run, step, self._nvml_reason)

    @staticmethod
    def _nvml_reason(step: Mapping[str, Any], exc: _nvml.NvmlCallError) -> str:
        reason = str(exc)
        if exc.code == _nvml.ERROR_IN_USE:
            pids = step.get('pids') or []
            reason += ' (%s)' % ('process(es) %s still use it: stop them first' % ', '.join(map(str, pids)) if pids
                                 else 'a process or client uses it')
        return reason

    def _run(self, step: Mapping[str, Any]) -> dict:
        action, gpu = step['action'], step['gpu']
        if action == 'destroy_compute_instance':
            _nvml.destroy_compute_instance(gpu, step['gpu_instance_id'], step['compute_instance_id'])
        elif action == 'destroy_gpu_instance':
            _nvml.destroy_gpu_instance(gpu, step['gpu_instance_id'])
        elif action == 'set_mig_mode':
            return {'activation_status': _nvml.set_mig_mode(gpu, step['enabled'])}
        elif action == 'reset_gpu':
            return self._reset(step)
        elif action == 'create_gpu_instance':
            gi_id = _nvml.create_gpu_instance(gpu, step['profile_id'], step['start'], step['size'])
            self.created_at[(gpu, step['start'])] = gi_id
            return {'gpu_instance_id': gi_id}
        elif action == 'create_compute_instance':
            gi_id = step.get('gpu_instance_id')
            if gi_id is None:
                gi_id = self.created_at.get((gpu, step['gpu_instance_start']))
            if gi_id is None:
                gi_id = _nvml.gpu_instance_id_at(gpu, step['gpu_instance_start'])
            if gi_id is None:
                raise StepFailed('no GPU instance starts at %s' % step['gpu_instance_start'])
            return {'gpu_instance_id': gi_id, 'compute_instance_id': _nvml.create_compute_instance(gpu, gi_id, step['profile_id'], step['start'])}
        else:
            raise StepFailed('unknown step %r' % action)
        return {}

    def _reset(self, step: Mapping[str, Any]) -> dict:
        current, pending = _nvml.read_mig_mode(step['gpu'])
        if current == pending:
            return {'skipped': 'the MIG mode took effect without a reset'}  # e.g. Hopper on bare metal
        if self.smi is None:
            raise _smi.SmiResetImpossible('nvidia-smi is not installed, so the GPU cannot be reset')
        with self.nvml.suspended():  # an open NVML client holds the GPU
            output = self.smi.reset(step.get('bus_id') or str(step['gpu']))
        return {'output': output.strip()}


# ---------------------------------------------------------------------------------------------------------
# One run


def _export(gpus: Sequence[Mapping[str, Any]], label: str, result: dict) -> None:
    """The current state in both formats; a state that cannot be exported gives null and a warning."""
    try:
        result['declaration'] = _mig.export_declaration(gpus)
        result['mig_parted'] = _mig_parted.export_mig_parted(gpus, label)
    except _mig.MigPlanError as exc:
        result['declaration'] = result['mig_parted'] = None
        result.setdefault('warnings', []).append('the current MIG state cannot be exported: %s' % exc)


def _new_result() -> dict:
    return {'changed': False, 'failed': False, 'msg': '', 'steps': [], 'applied': [], 'reboot_required': [], 'deferred': [],
            'disruptive': False, 'holders': [],
            'before': [], 'after': [], 'declaration': None, 'mig_parted': None}


class _Run:
    """observe, plan, apply, verify (and roll back) for one host."""

    def __init__(self, hostname: str, nvml: _nvml.NvmlSession, smi: _smi.SmiRunner | None, reset: str, label: str,
                 retrier: _retry.Retrier | None = None, proc_root: str = _sysfs.PROCFS, sys_root: str = _sysfs.SYSFS):
        self.hostname = hostname
        self.nvml = nvml
        self.executor = _Executor(nvml, smi)
        self.retrier = retrier or _retry.Retrier()
        self.reset = reset
        self.proc_root = proc_root
        self.drm = reset == 'auto' and _holders.drm_loaded(_sysfs.read_loaded_modules(proc_root), _sysfs.module_live(_holders.DRM_MODULE, sys_root))
        self.label = label
        self.result = _new_result()

    def plan(self, declaration: Any, gpus: Sequence[Mapping[str, Any]],
             parted: Sequence[_mig_parted.PartedEntry] | None = None) -> _mig.HostPlan | None:
        """Plan the declaration, or the parsed mig-parted label `parted` with mig-parted's meaning."""
        reset_possible = {gpu['index']: self.reset == 'auto' and not self.drm for gpu in gpus}
        try:
            if parted is not None:
                plan = _mig_parted.plan_mig_parted(self.hostname, gpus, parted, reset_possible)
            else:
                plan = _mig.plan_host(self.hostname, gpus, declaration, reset_possible)
        except _mig.MigPlanError as exc:
            self.result.update(failed=True, msg='%s; nothing was changed' % exc, errors=exc.errors)
            return None
        self.result.update({key: value for key, value in plan.as_dict().items() if key != 'desired'})
        if self.drm and self.reset == 'auto':
            for entry in self.result['reboot_required']:
                entry['reason'] = _holders.DRM_REASON
        return plan

    def holders(self, plan: _mig.HostPlan, gpus: Sequence[Mapping[str, Any]]) -> str | None:
        """Who holds the GPUs the plan resets (in the result's `holders`); the refusal when any does."""
        resets = {step['gpu'] for step in plan.steps if step['action'] == 'reset_gpu'}
        self.result['disruptive'] = any(step['action'] in ('set_mig_mode', 'reset_gpu') for step in plan.steps)
        found = _holders.blocking(gpus, resets, _sysfs.read_device_holders(self.proc_root) if resets else [], [os.getpid()])
        self.result['holders'] = found
        return _holders.refusal(self.hostname, found) if found else None

    def apply(self, plan: _mig.HostPlan, before: Sequence[Mapping[str, Any]]) -> None:
        entries = {want['gpu']: want['entry'] for want in plan.desired}
        desired = [dict(want) for want in plan.desired]
        failure = self._run_steps(plan.steps, entries, desired)
        self.result['changed'] = bool(self.result['applied'])
        after = observe()
        if failure is None:
            mismatches = _mig.verify(desired, after)
            if mismatches:
                failure = 'host %s: verify after apply found: %s' % (self.hostname, '; '.join(mismatches))
                self.result['failure'] = {'step': None, 'error': failure}
        if failure is not None:
            touched = {step['gpu'] for step in self.result['applied']}
            if self.result['failure'].get('step'):
                touched.add(self.result['failure']['step']['gpu'])  # a failed step may have done part of its work
            after = self._roll_back(before, after, touched, failure)
        _export(after, self.label, self.result)

    def _run_steps(self, steps: Sequence[dict], entries: Mapping[int, str], desired: list[dict]) -> str | None:
        """Run the steps in order; a GPU whose reset is impossible waits for a reboot. The failure message, or None."""
        waiting: dict[int, dict] = {}
        for number, step in enumerate(steps, 1):
            if step['gpu'] in waiting:
                waiting[step['gpu']]['steps'].append(step)
                continue
            try:
                self.result['applied'].append(dict(step, **self.executor.run(step)))
            except _smi.SmiResetImpossible as exc:
                waiting[step['gpu']] = self._wait_for_reboot(step, str(exc), desired)
            except StepFailed as exc:
                message = '%s: step %d of %d (%s) failed: %s' % (_where(self.hostname, step, entries), number, len(steps), step_text(step), exc.reason)
                self.result['failure'] = {'step': step, 'step_number': number, 'error': exc.reason}
                return message
        self.result['deferred'].extend(waiting.values())
        return None

    def _wait_for_reboot(self, step: Mapping[str, Any], reason: str, desired: list[dict]) -> dict:
        self.result['reboot_required'].append({'gpu': step['gpu'], 'uuid': step.get('uuid'), 'reason': reason})
        for want in desired:
            if want['gpu'] == step['gpu']:
                want['reboot_required'] = True  # verify then checks the pending mode only
        return {'gpu': step['gpu'], 'uuid': step.get('uuid'), 'reason': 'runs after the reboot that makes MIG mode current', 'steps': []}

    def _roll_back(self, before: Sequence[Mapping[str, Any]], now: Sequence[Mapping[str, Any]], touched: set[int], failure: str) -> list[dict]:
        """Restore the touched GPUs' previous layouts, compare, and report; returns the GPUs observed at the end."""
        was = {gpu['index']: gpu for gpu in before}
        rollback: dict[str, Any] = {'steps': [], 'errors': [], 'skipped': [], 'repairs': [], 'restored': False, 'mismatches': [], 'unusable': []}
        for gpu in now:
            if gpu['index'] in touched:
                _Restorer(self.executor, self.retrier, rollback).restore(was[gpu['index']], gpu)
        final = observe()
        for gpu in final:
            if gpu['index'] in touched and layout(gpu) != layout(was[gpu['index']]):
                rollback['mismatches'].append('GPU %s (%s) is now %s; before: %s' % (
                    gpu['index'], gpu.get('uuid'), describe_layout(gpu), describe_layout(was[gpu['index']])))
            if gpu['index'] in touched:
                rollback['unusable'].extend('GPU %s (%s): GPU instance %s at %s has no compute instance' % (
                    gpu['index'], gpu.get('uuid'), gi.get('profile'), (gi.get('placement') or {}).get('start')) for gi in _empty(gpu))
        rollback['restored'] = not rollback['mismatches']
        if rollback['restored']:
            outcome = 'rolled back: GPU(s) %s are in their previous layout again' % ', '.join(map(str, sorted(touched)))
        else:
            outcome = 'ROLLBACK INCOMPLETE: %s' % '; '.join(rollback['errors'] + rollback['mismatches'] + rollback['unusable'])
        self.result.update(failed=True, msg='%s; %s' % (failure, outcome), rollback=rollback)
        return final


def _empty(gpu: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The GPU instances without a compute instance: nothing can run on them."""
    return [gi for gi in _instances(gpu) if not gi.get('compute_instances')]


class _Restorer:
    """Brings one GPU back to its previous layout: each step tried again on failure (`_retry`), the steps that do not
    depend on a failed one still run, and the plan made again from a fresh observation while a pass makes progress.
    What cannot be restored is at least left usable: a GPU instance left without compute instances gets one that
    spans it, or is destroyed (`repairs`)."""

    PASSES = 3

    def __init__(self, executor: _Executor, retrier: _retry.Retrier, rollback: dict):
        self.executor = executor
        self.retrier = retrier
        self.rollback = rollback

    def restore(self, before: Mapping[str, Any], now: Mapping[str, Any]) -> None:
        for _pass in range(self.PASSES):
            steps = restore_steps(before, now)
            if not steps:
                return
            progress = self._pass(steps)
            now = _nvml.read_gpu(before['index'])
            if not progress:
                break
        self._make_usable(before, now)

    def _try(self, step: Mapping[str, Any], into: list) -> bool:
        """Run one step with retries; True if it ran (recorded in `into`), False if it failed (recorded in errors)."""
        try:
            done, tries = self.retrier.run(lambda: self.executor.run(step), (StepFailed, _smi.SmiError))
        except _retry.GaveUp as exc:
            self.rollback['errors'].append('GPU %s: %s failed%s: %s' % (
                step['gpu'], step_text(step), ' (%d tries)' % exc.tries if exc.tries > 1 else '', exc.error))
            return False
        except _smi.SmiResetImpossible as exc:  # no retry: the GPU needs a reboot
            self.rollback['errors'].append('GPU %s: %s failed: %s' % (step['gpu'], step_text(step), exc))
            return False
        into.append(dict(step, tries=tries, **done) if tries > 1 else dict(step, **done))
        return True

    def _pass(self, steps: Sequence[dict]) -> bool:
        """Run the steps, skipping those that depend on a failed one; True if any step ran."""
        progress, failed_starts, failed_gis = False, set(), set()
        for step in steps:
            action = step['action']
            blocked = ((action == 'create_compute_instance' and step.get('gpu_instance_id') is None and step['gpu_instance_start'] in failed_starts)
                       or (action == 'destroy_gpu_instance' and step['gpu_instance_id'] in failed_gis))
            if blocked:
                self.rollback['skipped'].append('GPU %s: %s (a step it needs failed)' % (step['gpu'], step_text(step)))
                continue
            if self._try(step, self.rollback['steps']):
                progress = True
                continue
            if action == 'create_gpu_instance':
                failed_starts.add(step['start'])
            elif action == 'destroy_compute_instance':
                failed_gis.add(step['gpu_instance_id'])
            elif action in ('set_mig_mode', 'reset_gpu'):
                self.rollback['skipped'].extend('GPU %s: %s (after a failed mode change)' % (s['gpu'], step_text(s))
                                                for s in steps[steps.index(step) + 1:])
                break  # the steps after a mode change assume it
        return progress

    def _make_usable(self, before: Mapping[str, Any], now: Mapping[str, Any]) -> None:
        """Give every GPU instance without compute instances one that spans it, else destroy it (for one that was not
        there before, the other way round)."""
        had = {_gi_key(gi): gi for gi in _instances(before)}
        slices = {p.get('name'): p.get('slices') for p in (now.get('mig') or {}).get('profiles') or []}
        for gi in _empty(now):
            if _gi_key(gi) in had and not had[_gi_key(gi)].get('compute_instances'):
                continue  # it was so before
            place = gi.get('placement') or {}
            full = {'slices': slices.get(gi.get('profile')) or 1, 'placement': {'start': 0}}
            fill = _create_ci_step(now, gi, full, gi['id'])
            drop = dict(_base(now), action='destroy_gpu_instance', gpu_instance_id=gi['id'], profile=gi.get('profile'),
                        profile_id=gi.get('profile_id'), start=place.get('start'), size=place.get('size'), pids=[])
            for step in ([fill, drop] if _gi_key(gi) in had else [drop, fill]):
                if self._try(step, self.rollback['repairs']):
                    break


def _parse_mig_parted(mig_parted: Any) -> tuple[Any, str]:
    if isinstance(mig_parted, Mapping):
        return mig_parted.get('config'), mig_parted.get('label')
    config, label = mig_parted
    return config, label


def _start(result: dict) -> _nvml.NvmlSession | None:
    return _nvml.open_or_report(result, _nvml.NvmlSession().open)


def apply_declaration(hostname: str, declaration: Any, *, run_command: RunCommand, reset: str = 'auto', check_mode: bool = False,
                      mig_parted: Any = None, label: str | None = None, smi_path: str | None = None,
                      sleep: Callable[[float], Any] | None = None, proc_root: str = _sysfs.PROCFS,
                      sys_root: str = _sysfs.SYSFS) -> dict:
    """Bring this host's GPUs to `declaration` (gpu_mig; or `mig_parted`: a mig-parted v1 config and a label, as
    {'config': .., 'label': ..} or a pair, planned with mig-parted's meaning: _mig_parted.plan_mig_parted).
    `run_command(argv) -> (rc, out, err)` runs nvidia-smi (`smi_path`, default from PATH) for resets;
    `reset='never'` leaves mode changes pending until a reboot; `sleep` waits between the tries of a failed rollback
    step (default time.sleep). `proc_root` and `sys_root` are where the processes and kernel modules are read (the
    GPUs' holders).

    Returns a dict: changed, failed, msg, steps (the ordered plan), applied (the steps run, with the ids they
    created), reboot_required, deferred, before/after (per selected GPU, for diff), declaration and mig_parted (the
    state at the end, in both formats), and on failure `errors` (a refused plan: nothing was changed) or `failure`
    and `rollback` (steps, errors, restored, mismatches; skipped: steps not tried as one they need failed; repairs:
    the steps that left a GPU usable where its layout could not be restored; unusable: what still is not).
    """
    result = _new_result()
    if reset not in RESET_CHOICES:
        result.update(failed=True, msg='reset must be one of %s, got %r' % (', '.join(RESET_CHOICES), reset))
        return result
    problems = _mig_declaration.input_problems(hostname, declaration, mig_parted is not None)
    if problems:
        return _mig.MigPlanError(hostname, problems).refuse(result, hostname)
    parted = None
    if mig_parted is not None:
        config, parted_label = _parse_mig_parted(mig_parted)
        label = label or parted_label
        try:
            parted = _mig_parted.parse_mig_parted(config, parted_label)
        except _mig.MigPlanError as exc:
            return exc.refuse(result, hostname)
    nvml = _start(result)
    if nvml is None:
        return result
    path = smi_path or shutil.which('nvidia-smi')
    run = _Run(hostname, nvml, _smi.SmiRunner(run_command, path) if path else None, reset, label or DEFAULT_LABEL, _retry.Retrier(sleep), proc_root, sys_root)
    with nvml:
        try:
            before = observe()
            plan = run.plan(declaration, before, parted)
            refusal = run.holders(plan, before) if plan is not None and plan.changed else None
            if refusal is not None and not check_mode:
                run.result.update(failed=True, changed=False, msg=refusal)
                _export(before, run.label, run.result)
            elif plan is not None and plan.changed and not check_mode:
                run.apply(plan, before)
            else:
                run.result['changed'] = plan is not None and plan.changed
                _export(before, run.label, run.result)
        except Exception:  # pylint: disable=broad-exception-caught  # reported, never a silent half-applied host
            applied = run.result['applied']
            run.result.update(failed=True, exception=traceback.format_exc(), msg='host %s: unexpected error while %s the MIG layout%s' % (
                hostname, 'applying' if applied else 'reading or planning',
                '; %d step(s) had run (see applied) and the GPUs were not verified' % len(applied) if applied else '; nothing was changed'))
    return run.result


def export_state(label: str | None = None) -> dict:
    """The current MIG state as `declaration` (gpu_mig) and `mig_parted` (a v1 config with one label); changes nothing."""
    result = _new_result()
    nvml = _start(result)
    if nvml is None:
        return result
    with nvml:
        _export(observe(), label or DEFAULT_LABEL, result)
    return result
