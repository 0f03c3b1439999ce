# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""Apply a `gpu_settings` declaration on this host: observe, plan, apply, verify, and roll back on failure.

The one implementation behind the `gpuvirt.fleet.gpu_settings` module and the gpu_settings role's boot-time service,
so it imports nothing from Ansible (the role copies module_utils beside its runner, as the mig role does).

1. observe: every GPU through NVML (`_nvml.read_gpu`, what gpu_facts returns), the locked clocks this collection set
   since the last boot (the state file: NVML cannot read locked clocks back; a record of another boot is void, as a
   reboot unlocks them), and, where persistence is declared, the nvidia-persistenced service (systemctl);
2. plan: `_settings.plan_host`; a declaration the GPUs cannot hold is refused here, before any change;
3. apply: each step through its seam: NVML setters, `nvidia-smi -r` for a reset (refused before anything changes
   while a process holds the GPU, as for MIG: `_holders`; impossible here: the GPU waits for a reboot), systemctl for
   nvidia-persistenced;
4. verify: observe again and plan again: nothing may be left to do.
A failed step or verify rolls every touched GPU (and the service) back to what was observed before, step by step with
retries, and the result says whether that restored it (`rollback.restored`) or what differs.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any, Callable

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _holders, _nvml, _retry, _settings, _smi, _sysfs
from ansible_collections.gpuvirt.fleet.plugins.module_utils._mig_apply import StepFailed, run_step
from ansible_collections.gpuvirt.fleet.plugins.module_utils._settings_declaration import parse_entry
from ansible_collections.gpuvirt.fleet.plugins.module_utils._selector import parse_entries

RESET_CHOICES = ('auto', 'never')
DEFAULT_STATE_FILE = '/var/lib/gpuvirt/gpu-settings.json'
PERSISTENCED = 'nvidia-persistenced.service'
_ENABLED_STATES = ('enabled', 'enabled-runtime', 'static', 'alias', 'indirect', 'generated')
RunCommand = Callable[[list], tuple]


def _nvml_reason(_step: Mapping[str, Any], exc: _nvml.NvmlCallError) -> str:
    if exc.code == _nvml.ERROR_NO_PERMISSION:
        return '%s (the setting needs root: run with become)' % exc
    return str(exc)


# ---------------------------------------------------------------------------------------------------------
# Observation: GPUs, the locked-clock record, the persistence service


def observe() -> list[dict]:
    return [_nvml.read_gpu(index) for index in range(_nvml.read_system()['count'])]


def boot_id(proc_root: str = _sysfs.PROCFS) -> str | None:
    text = _sysfs.read_text(os.path.join(proc_root, 'sys', 'kernel', 'random', 'boot_id'))
    return text.strip() if text else None


def read_record(path: str, boot: str | None) -> dict:
    """uuid -> {'gpu': [min, max], 'memory': [min, max]}: the clocks locked since this boot (another boot's: none)."""
    text = _sysfs.read_text(path)
    try:
        record = json.loads(text) if text else {}
    except ValueError:
        return {}
    if not isinstance(record, dict) or record.get('boot_id') != boot or not isinstance(record.get('gpus'), dict):
        return {}
    return record['gpus']


def write_record(path: str, boot: str | None, locked: Mapping[str, Any]) -> None:
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    temp = path + '.tmp'
    with open(temp, 'w', encoding='utf-8') as handle:
        json.dump({'boot_id': boot, 'gpus': {uuid: v for uuid, v in locked.items() if v}}, handle, indent=1, sort_keys=True)
    os.replace(temp, path)


class Service:
    """nvidia-persistenced through systemctl: {loaded, active, enabled, state} and start/stop."""

    def __init__(self, run_command: RunCommand):
        self.run_command = run_command

    def observe(self) -> dict:
        rc, out, _err = self.run_command(['systemctl', 'show', '-p', 'LoadState', '-p', 'ActiveState', '-p', 'UnitFileState', PERSISTENCED])
        props = dict(line.split('=', 1) for line in (out or '').splitlines() if '=' in line) if rc == 0 else {}
        return {'loaded': props.get('LoadState') == 'loaded', 'active': props.get('ActiveState') in ('active', 'activating', 'reloading'),
                'enabled': props.get('UnitFileState') in _ENABLED_STATES, 'state': props.get('UnitFileState')}

    def set(self, active: bool, enabled: bool) -> None:
        now = self.observe()
        commands = []
        if enabled != now['enabled'] and now['state'] in ('enabled', 'disabled'):
            commands.append(['systemctl', 'enable' if enabled else 'disable', PERSISTENCED])
        if active != now['active']:
            commands.append(['systemctl', 'start' if active else 'stop', PERSISTENCED])
        for argv in commands:
            rc, out, err = self.run_command(argv)
            if rc != 0:
                raise StepFailed('%s failed (rc=%d): %s' % (' '.join(argv), rc, ((err or out or '').strip().splitlines() or ['no output'])[-1]))


# ---------------------------------------------------------------------------------------------------------
# Steps


class _Executor:
    def __init__(self, nvml: _nvml.NvmlSession, smi: _smi.SmiRunner | None, service: Service, locked: dict):
        self.nvml = nvml
        self.smi = smi
        self.service = service
        self.locked = locked  # the record, kept up to date as clocks are locked and unlocked

    def run(self, step: Mapping[str, Any]) -> dict:
        return run_step(self._run, step, _nvml_reason)

    def _run(self, step: Mapping[str, Any]) -> dict | None:
        action, gpu, value = step['action'], step['gpu'], step.get('value')
        if action == 'set_ecc_mode':
            _nvml.set_ecc_mode(gpu, step['enabled'])
        elif action == 'reset_gpu':
            return self._reset(step)
        elif action == 'set_persistence':
            self.service.set(step['enabled'], step['enabled'])
        elif action == 'set_persistence_mode':
            _nvml.set_persistence_mode(gpu, step['enabled'])
        elif action == 'set_compute_mode':
            _nvml.set_compute_mode(gpu, value)
        elif action == 'set_power_limit':
            _nvml.set_power_limit(gpu, value)
        elif action == 'set_applications_clocks':
            _nvml.set_applications_clocks(gpu, value[0], value[1])
        elif action in ('set_gpu_locked_clocks', 'set_memory_locked_clocks'):
            which = 'gpu' if action == 'set_gpu_locked_clocks' else 'memory'
            _nvml.set_locked_clocks(gpu, which, *(value or (None, None)))
            entry = self.locked.setdefault(step['uuid'], {})
            if value:
                entry[which] = list(value)
            else:
                entry.pop(which, None)
        else:
            raise StepFailed('unknown step %r' % action)
        return None

    def _reset(self, step: Mapping[str, Any]) -> dict:
        current, pending = _nvml.read_ecc_mode(step['gpu'])
        if current == pending:
            return {'skipped': 'the ECC mode took effect without a reset'}
        if self.smi is None:
            raise _smi.SmiResetImpossible('nvidia-smi is not installed, so the GPU cannot be reset')
        with self.nvml.suspended():  # an open NVML client holds the GPU
            output = self.smi.reset(step.get('bus_id') or str(step['gpu']))
        self.locked.pop(step['uuid'], None)  # a reset unlocks the clocks
        return {'output': output.strip()}


# ---------------------------------------------------------------------------------------------------------
# One run


def _new_result() -> dict:
    return {'changed': False, 'failed': False, 'msg': '', 'steps': [], 'applied': [], 'reboot_required': [], 'disruptive': False,
            'holders': [], 'before': [], 'after': []}


def _refusal(host: str, found: Sequence[Mapping[str, Any]]) -> str:
    held = '; '.join('GPU %s is held by %s' % (index, ', '.join(_holders.describe(h) for h in found if index in h['gpus']))
                     for index in sorted({i for h in found for i in h['gpus']}))
    return ('host %s: the ECC mode change needs a GPU reset, but %s; nothing was changed. Stop them and apply again (the '
            'gpuvirt.fleet.gpu_settings role stops the GPU services it knows; it never kills a process)' % (host, held))


def _persistence_declared(declaration: Any) -> bool:
    return isinstance(declaration, list) and any(isinstance(e, Mapping) and e.get('persistence') is not None for e in declaration)


class _Run:
    def __init__(self, hostname: str, nvml: _nvml.NvmlSession, executor: _Executor, reset: str, options: dict):
        self.hostname = hostname
        self.nvml = nvml
        self.executor = executor
        self.reset = reset
        self.options = options
        self.drm = reset == 'auto' and _holders.drm_loaded(_sysfs.read_loaded_modules(options['proc_root']),
                                                           _sysfs.module_live(_holders.DRM_MODULE, options['sys_root']))
        self.retrier = _retry.Retrier(options.get('sleep'))
        self.result = _new_result()
        self.impossible: set[int] = set()

    def reset_possible(self, gpus: Sequence[Mapping[str, Any]]) -> dict:
        return {g['index']: self.reset == 'auto' and not self.drm and g['index'] not in self.impossible for g in gpus}

    def plan(self, declaration: Any, gpus: list[dict], service: dict | None) -> _settings.HostPlan:
        return _settings.plan_host(self.hostname, gpus, declaration, self.executor.locked, self.reset_possible(gpus), service)

    def holders(self, plan: _settings.HostPlan, gpus: Sequence[Mapping[str, Any]]) -> str | None:
        resets = plan.resets
        found = _holders.blocking(gpus, resets, _sysfs.read_device_holders(self.options['proc_root']) if resets else [], [os.getpid()])
        self.result['holders'] = found
        return _refusal(self.hostname, found) if found else None

    def service(self, declaration: Any) -> dict | None:
        return self.executor.service.observe() if _persistence_declared(declaration) else None

    def apply(self, declaration: Any, plan: _settings.HostPlan, before: list[dict], service: dict | None) -> None:
        locked_before = json.loads(json.dumps(self.executor.locked))
        failure = self._run_steps(plan.steps)
        self.result['changed'] = bool(self.result['applied'])
        if failure is None:
            failure = self._verify(declaration, plan)
        if failure is not None:
            touched = {s['gpu'] for s in self.result['applied'] if s['gpu'] is not None}
            step = (self.result.get('failure') or {}).get('step') or {}
            if step.get('gpu') is not None:
                touched.add(step['gpu'])
            self._roll_back(before, locked_before, service, touched, failure)

    def _run_steps(self, steps: Sequence[dict]) -> str | None:
        for number, step in enumerate(steps, 1):
            try:
                self.result['applied'].append(dict(step, **self.executor.run(step)))
            except _smi.SmiResetImpossible as exc:
                self.impossible.add(step['gpu'])
                self.result['reboot_required'].append({'gpu': step['gpu'], 'uuid': step.get('uuid'), 'reason': str(exc)})
            except StepFailed as exc:
                where = 'host %s: %s' % (self.hostname, 'GPU %s (%s)' % (step['gpu'], step.get('uuid')) if step['gpu'] is not None else 'persistence')
                self.result['failure'] = {'step': step, 'step_number': number, 'error': exc.reason}
                return '%s: step %d of %d (%s) failed: %s' % (where, number, len(steps), _settings.step_text(step), exc.reason)
        return None

    def _settled(self, declaration: Any) -> tuple[list[dict], dict | None]:
        """Observe again; after a persistence change, wait (up to 10 s) until the daemon has set every GPU."""
        deadline = time.monotonic() + 10
        while True:
            gpus, service = observe(), self.service(declaration)
            plan = self.plan(declaration, gpus, service)
            if not any(s['action'] == 'set_persistence' for s in plan.steps) or time.monotonic() > deadline:
                return gpus, service
            time.sleep(0.2)

    def _verify(self, declaration: Any, plan: _settings.HostPlan) -> str | None:
        try:
            gpus, service = self._settled(declaration) if plan.persistence is not None else (observe(), self.service(declaration))
            left = self.plan(declaration, gpus, service).steps
        except _settings.SettingsPlanError as exc:
            left, problem = [], str(exc)
        else:
            problem = None
        if not left and problem is None:
            return None
        found = problem or '; '.join('%s: %s still needed' % ('GPU %s' % s['gpu'] if s['gpu'] is not None else 'host', _settings.step_text(s))
                                     for s in left)
        self.result['failure'] = {'step': None, 'error': found}
        return 'host %s: verify after apply found: %s' % (self.hostname, found)

    def _roll_back(self, before: list[dict], locked_before: dict, service: dict | None, touched: set[int], failure: str) -> None:
        rollback: dict[str, Any] = {'steps': [], 'errors': [], 'restored': False, 'mismatches': []}
        now = observe()
        wanted = _settings.restore_wanted(before, sorted(touched), locked_before)
        steps = _settings.plan_wanted(self.hostname, now, wanted, self.executor.locked, self.reset_possible(now)).steps
        was = {g['index']: g for g in before}
        for index in sorted(touched):
            ecc = was[index].get('ecc') or {}
            if ecc.get('pending') is not None and ecc.get('pending') != ecc.get('current'):
                steps.append({'action': 'set_ecc_mode', 'gpu': index, 'uuid': was[index].get('uuid'), 'enabled': ecc['pending'], 'was': None})
        if service is not None and any(s['action'] == 'set_persistence' for s in self.result['applied']):
            steps.insert(0, {'action': 'restore_persistence', 'gpu': None, 'uuid': None, 'service': service})
        steps += [dict(s, enabled=s['was'], was=s['enabled']) for s in self.result['applied'] if s['action'] == 'set_persistence_mode']
        for step in steps:
            try:
                if step['action'] == 'restore_persistence':
                    self.retrier.run(lambda s=step: self.executor.service.set(s['service']['active'], s['service']['enabled']), (StepFailed,))
                else:
                    self.retrier.run(lambda s=step: self.executor.run(s), (StepFailed, _smi.SmiError))
                rollback['steps'].append(step)
            except (_retry.GaveUp, _smi.SmiResetImpossible) as exc:
                rollback['errors'].append('%s: %s failed: %s' % ('GPU %s' % step['gpu'] if step['gpu'] is not None else 'host',
                                                                 step['action'], getattr(exc, 'error', exc)))
        final = observe()
        for gpu in final:
            if gpu['index'] in touched:
                then, got = _settings.current(was[gpu['index']], locked_before), _settings.current(gpu, self.executor.locked)
                then.pop('persistence')
                got.pop('persistence')
                if then != got:
                    rollback['mismatches'].append('GPU %s (%s) holds %s; before: %s' % (gpu['index'], gpu.get('uuid'), got, then))
        if service is not None and any(s['action'] == 'set_persistence' for s in self.result['applied']):
            back = self.executor.service.observe()
            if (back['active'], back['enabled']) != (service['active'], service['enabled']):
                rollback['mismatches'].append('nvidia-persistenced is %s; before: %s' % (back, service))
        rollback['restored'] = not rollback['mismatches'] and not rollback['errors']
        outcome = ('rolled back: the touched GPU(s) %s hold their previous settings again' % ', '.join(map(str, sorted(touched))) if rollback['restored']
                   else 'ROLLBACK INCOMPLETE: %s' % '; '.join(rollback['errors'] + rollback['mismatches']))
        self.result.update(failed=True, msg='%s; %s' % (failure, outcome), rollback=rollback)


def _input_problems(hostname: str, declaration: Any) -> list[str]:
    errors: list[str] = []
    parse_entries(hostname, declaration, 'gpu_settings', parse_entry, errors)
    return errors


def apply_settings(hostname: str, declaration: Any, *, run_command: RunCommand, reset: str = 'auto', check_mode: bool = False,
                   smi_path: str | None = None, state_file: str = DEFAULT_STATE_FILE, proc_root: str = _sysfs.PROCFS,
                   sys_root: str = _sysfs.SYSFS, sleep: Callable[[float], Any] | None = None) -> dict:
    """Bring this host's GPUs to `declaration` (gpu_settings). `run_command(argv) -> (rc, out, err)` runs nvidia-smi
    (`smi_path`, default from PATH) for resets and systemctl for nvidia-persistenced; `reset='never'` leaves ECC
    changes pending until a reboot; `state_file` records the clocks locked since this boot.

    Returns a dict: changed, failed, msg, steps (the ordered plan), applied, reboot_required, disruptive (a reset is
    planned), holders, before/after (per selected GPU, for diff); a refused declaration adds `errors` (nothing was
    changed), a failed step or verify `failure` and `rollback` (steps, errors, restored, mismatches)."""
    result = _new_result()
    if reset not in RESET_CHOICES:
        result.update(failed=True, msg='reset must be one of %s, got %r' % (', '.join(RESET_CHOICES), reset))
        return result
    problems = _input_problems(hostname, declaration)
    if problems:
        return _settings.SettingsPlanError(hostname, problems).refuse(result, hostname)
    nvml = _nvml.open_or_report(result, _nvml.NvmlSession().open)
    if nvml is None:
        return result
    path = smi_path or shutil.which('nvidia-smi')
    boot = boot_id(proc_root)
    executor = _Executor(nvml, _smi.SmiRunner(run_command, path) if path else None, Service(run_command), read_record(state_file, boot))
    run = _Run(hostname, nvml, executor, reset, {'proc_root': proc_root, 'sys_root': sys_root, 'sleep': sleep})
    with nvml:
        try:
            before, service = observe(), run.service(declaration)
            try:
                plan = run.plan(declaration, before, service)
            except _settings.SettingsPlanError as exc:
                return exc.refuse(run.result, hostname)
            run.result.update(plan.as_dict())
            if run.drm:
                for entry in run.result['reboot_required']:
                    entry['reason'] = ('the nvidia_drm kernel module is loaded and holds every GPU, so no GPU can be reset; the ECC change stays '
                                       'pending until the next reboot')
            refusal = run.holders(plan, before) if plan.resets else None
            if refusal is not None and not check_mode:
                run.result.update(failed=True, changed=False, msg=refusal)
            elif plan.changed and not check_mode:
                run.apply(declaration, plan, before, service)
                write_record(state_file, boot, executor.locked)
            else:
                run.result['changed'] = plan.changed
        except Exception:  # pylint: disable=broad-exception-caught  # reported, never a silent half-applied host
            applied = run.result['applied']
            run.result.update(failed=True, exception=traceback.format_exc(), msg='host %s: unexpected error while %s the GPU settings%s' % (
                hostname, 'applying' if applied else 'reading or planning',
                '; %d step(s) had run (see applied) and the GPUs were not verified' % len(applied) if applied else '; nothing was changed'))
    return run.result
