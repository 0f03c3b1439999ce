# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""The pure GPU settings planner: validate a `gpu_settings` declaration against a host's GPU facts, plan the steps.

Input is what `gpuvirt.fleet.gpu_facts` returns in `ansible_facts.gpus` (`persistence_mode`, `ecc`, `settings`), the
locked clocks this collection set since the last boot (NVML cannot read them back: `locked`, {uuid: {'gpu': [min,
max], 'memory': [min, max]}}), and the nvidia-persistenced service's state (`service`: {loaded, active, enabled}).
Nothing here imports pynvml, reads a file or runs a command.

`plan_host(host, gpus, declaration, ...)` returns a `HostPlan`; its `steps` run in this order: `set_ecc_mode` (each GPU
whose pending ECC mode differs), `reset_gpu` (each GPU whose current ECC mode differs, where a reset is possible; else
the GPU is in `reboot_required`), `set_persistence` (host-wide), then per GPU `set_compute_mode`, `set_power_limit`,
`set_applications_clocks`, `set_gpu_locked_clocks`, `set_memory_locked_clocks`. A GPU that is reset loses its power
limit and clocks, so they are planned from their defaults there. Every step has `action`, `gpu` (NVML index, null for
`set_persistence`) and `uuid`, the value to set and the value it replaces (`was`).

A declaration the GPUs cannot hold (a value outside the GPU's constraints, a setting the GPU does not support, a
selector that matches nothing, two entries for one GPU) raises `SettingsPlanError` listing every problem, before any
step exists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.gpuvirt.fleet.plugins.module_utils._settings_declaration import DEFAULT, Entry, parse_entry
from ansible_collections.gpuvirt.fleet.plugins.module_utils._selector import PlanError, parse_entries, select, where

VOLATILE = ('power_limit_mw', 'applications_clocks', 'gpu_locked_clocks', 'memory_locked_clocks')
GPU_ACTIONS = ('set_compute_mode', 'set_power_limit', 'set_applications_clocks', 'set_gpu_locked_clocks', 'set_memory_locked_clocks')
_KEY_OF = {'set_compute_mode': 'compute_mode', 'set_power_limit': 'power_limit_mw', 'set_applications_clocks': 'applications_clocks',
           'set_gpu_locked_clocks': 'gpu_locked_clocks', 'set_memory_locked_clocks': 'memory_locked_clocks'}


class SettingsPlanError(PlanError):
    kind = 'GPU settings'


def watts(milliwatts: int | None) -> str:
    return '?' if milliwatts is None else ('%g W' % (milliwatts / 1000.0))


def _pair(clocks: Mapping[str, Any] | None) -> tuple | None:
    clocks = clocks or {}
    if clocks.get('memory_mhz') is None or clocks.get('graphics_mhz') is None:
        return None
    return int(clocks['memory_mhz']), int(clocks['graphics_mhz'])


def _range(value: Any) -> tuple | None:
    return tuple(value) if value else None


def current(gpu: Mapping[str, Any], locked: Mapping[str, Any] | None = None) -> dict:
    """What the GPU holds now, in the planner's terms."""
    settings = gpu.get('settings') or {}
    ecc = gpu.get('ecc') or {}
    mine = (locked or {}).get(gpu.get('uuid')) or {}
    return {
        'persistence': gpu.get('persistence_mode'),
        'ecc': ecc.get('current'),
        'ecc_pending': ecc.get('pending'),
        'compute_mode': settings.get('compute_mode'),
        'power_limit_mw': (settings.get('power_limit') or {}).get('limit_mw'),
        'applications_clocks': _pair(settings.get('applications_clocks')),
        'gpu_locked_clocks': _range(mine.get('gpu')),
        'memory_locked_clocks': _range(mine.get('memory')),
    }


def defaults(gpu: Mapping[str, Any]) -> dict:
    """What a reboot or a GPU reset leaves of the volatile settings: the defaults."""
    settings = gpu.get('settings') or {}
    return {'power_limit_mw': (settings.get('power_limit') or {}).get('default_mw'),
            'applications_clocks': _pair(settings.get('default_applications_clocks')),
            'gpu_locked_clocks': None, 'memory_locked_clocks': None}


# ---------------------------------------------------------------------------------------------------------
# Resolving an entry on one GPU: concrete values, checked against what the GPU supports


def _clock_list(values: Sequence[int]) -> str:
    values = sorted(values, reverse=True)
    steps = {values[i] - values[i + 1] for i in range(len(values) - 1)}
    if len(values) > 4 and len(steps) == 1:
        return '%d..%d MHz in %d MHz steps' % (values[-1], values[0], steps.pop())  # low..high, as the locked-clock ranges
    return ', '.join('%d' % v for v in values) + ' MHz'


def _power(gpu: Mapping[str, Any], value: tuple[str, float], problems: list[str]) -> int | None:
    power = (gpu.get('settings') or {}).get('power_limit') or {}
    low, high, default = power.get('min_mw'), power.get('max_mw'), power.get('default_mw')
    if low is None or high is None or default is None:
        problems.append('power_limit: this GPU does not support power management (NVML reports no power limit constraints)')
        return None
    kind, number = value
    if kind == DEFAULT:
        return int(default)
    wanted = int(round(number * 1000)) if kind == 'watts' else int(round(default * number / 100.0))
    said = '%g W' % number if kind == 'watts' else '%g%% (%s of the %s default)' % (number, watts(wanted), watts(default))
    if not low <= wanted <= high:
        problems.append('power_limit %s is outside the GPU\'s power limit constraints: minimum %s, maximum %s '
                        '(nvmlDeviceGetPowerManagementLimitConstraints)' % (said, watts(low), watts(high)))
        return None
    return wanted


def _supported_clocks(gpu: Mapping[str, Any], key: str, problems: list[str]) -> list[dict] | None:
    table = (gpu.get('settings') or {}).get('supported_clocks') or []
    if not table:
        problems.append('%s: this GPU does not support clock control (NVML lists no supported clocks)' % key)
        return None
    return table


def _locked(gpu: Mapping[str, Any], key: str, value: tuple | None, problems: list[str]) -> tuple | None:
    if value is None:
        return None
    table = _supported_clocks(gpu, key, problems)
    if table is None:
        return None
    supported = [t['memory_mhz'] for t in table] if key == 'memory_locked_clocks' else [g for t in table for g in t['graphics_mhz']]
    if not supported:
        problems.append('%s: NVML lists no supported clocks for it' % key)
        return None
    low, high = min(supported), max(supported)
    if value[0] < low or value[1] > high:
        problems.append('%s %d..%d MHz is outside the supported %s clocks: %d..%d MHz' % (
            key, value[0], value[1], 'memory' if key == 'memory_locked_clocks' else 'graphics', low, high))
        return None
    return value


def _application(gpu: Mapping[str, Any], value: tuple | None, problems: list[str]) -> tuple | None:
    table = _supported_clocks(gpu, 'applications_clocks', problems)
    if table is None:
        return None
    if value is None:
        pair = _pair((gpu.get('settings') or {}).get('default_applications_clocks'))
        if pair is None:
            problems.append('applications_clocks: NVML reports no default application clocks for this GPU')
        return pair
    memory, graphics = value
    by_memory = {t['memory_mhz']: t['graphics_mhz'] for t in table}
    if memory not in by_memory:
        problems.append('applications_clocks: memory %d MHz is not a supported memory clock (supported: %s)' % (memory, _clock_list(list(by_memory))))
        return None
    if graphics not in by_memory[memory]:
        problems.append('applications_clocks: graphics %d MHz is not supported with memory %d MHz (supported: %s)' % (
            graphics, memory, _clock_list(by_memory[memory])))
        return None
    return value


def resolve(gpu: Mapping[str, Any], entry: Entry) -> tuple[dict, list[str]]:
    """The entry's settings on this GPU as concrete values (`wanted`), and what this GPU cannot hold."""
    problems: list[str] = []
    if gpu.get('status') == 'lost':
        return {}, ['the GPU is lost (%s); it cannot be planned' % (gpu.get('error') or 'no answer')]
    declared, wanted = entry.settings, {'entry': entry.label}
    if 'persistence' in declared:
        wanted['persistence'] = declared['persistence']
    if 'ecc' in declared:
        if (gpu.get('ecc') or {}).get('current') is None:
            problems.append('ecc: this GPU does not report an ECC mode (NVML: not supported)')
        wanted['ecc'] = declared['ecc']
    if 'compute_mode' in declared:
        if (gpu.get('settings') or {}).get('compute_mode') is None:
            problems.append('compute_mode: this GPU does not report a compute mode (NVML: not supported)')
        wanted['compute_mode'] = declared['compute_mode']
    if 'power_limit' in declared:
        wanted['power_limit_mw'] = _power(gpu, declared['power_limit'], problems)
    for key in ('gpu_locked_clocks', 'memory_locked_clocks'):
        if key in declared:
            wanted[key] = _locked(gpu, key, declared[key], problems)
    if 'applications_clocks' in declared:
        wanted['applications_clocks'] = _application(gpu, declared['applications_clocks'], problems)
    return wanted, problems


# ---------------------------------------------------------------------------------------------------------
# Plans


@dataclass
class HostPlan:
    host: str
    steps: list[dict] = field(default_factory=list)
    reboot_required: list[dict] = field(default_factory=list)
    before: list[dict] = field(default_factory=list)
    after: list[dict] = field(default_factory=list)
    wanted: dict = field(default_factory=dict)  # GPU index -> wanted (resolve)
    persistence: bool | None = None

    @property
    def changed(self) -> bool:
        return bool(self.steps)

    @property
    def resets(self) -> list[int]:
        return [s['gpu'] for s in self.steps if s['action'] == 'reset_gpu']

    def as_dict(self) -> dict:
        return {'changed': self.changed, 'steps': self.steps, 'reboot_required': self.reboot_required,
                'disruptive': bool(self.resets), 'before': self.before, 'after': self.after}


def _base(gpu: Mapping[str, Any]) -> dict:
    return {'gpu': gpu['index'], 'uuid': gpu.get('uuid')}


def shown(key: str, value: Any) -> Any:
    """A setting's value as the diff and the messages show it."""
    if key == 'power_limit_mw':
        return watts(value)
    if key == 'applications_clocks':
        return 'memory %d MHz, graphics %d MHz' % value if value else '?'
    if key in ('gpu_locked_clocks', 'memory_locked_clocks'):
        return '%d..%d MHz' % value if value else 'unlocked'
    return value


def _state(index: int, values: Mapping[str, Any], keys: Sequence[str], ecc_note: str = '') -> dict:
    state: dict[str, Any] = {'devices': [index]}
    for key in keys:
        if key == 'ecc':
            state['ecc'] = '%s (pending %s%s)' % ('enabled' if values.get('ecc') else 'disabled',
                                                  'enabled' if values.get('ecc_pending') else 'disabled', ecc_note)
        else:
            state[key.replace('_mw', '')] = shown(key, values.get(key))
    return state


def plan_wanted(host: str, gpus: Sequence[Mapping[str, Any]], wanted: Mapping[int, dict], locked: Mapping[str, Any] | None = None,
                reset_possible: Mapping[Any, bool] | None = None, service: Mapping[str, Any] | None = None) -> HostPlan:
    """The ordered steps that give each GPU (by index) its `wanted` values (resolve's format: only the keys to set)."""
    plan = HostPlan(host, wanted=dict(wanted))
    by_index = {g['index']: g for g in gpus}
    ecc_steps, resets, gpu_steps = [], [], []
    for index in sorted(wanted):
        gpu, want = by_index[index], wanted[index]
        now = current(gpu, locked)
        after = dict(now)
        reset = False
        if 'ecc' in want:
            if now['ecc_pending'] != want['ecc']:
                ecc_steps.append(dict(_base(gpu), action='set_ecc_mode', enabled=want['ecc'], was=now['ecc_pending']))
            after['ecc_pending'] = want['ecc']
            if now['ecc'] != want['ecc']:
                if _resettable(gpu, reset_possible):
                    resets.append(dict(_base(gpu), action='reset_gpu', bus_id=(gpu.get('pci') or {}).get('bus_id'), was=None))
                    reset, after['ecc'] = True, want['ecc']
                else:
                    plan.reboot_required.append(dict(_base(gpu), reason='the ECC mode change needs a GPU reset, which is not possible here'))
        base = dict(now, **defaults(gpu)) if reset else now
        for action in GPU_ACTIONS:
            key = _KEY_OF[action]
            if key in want and want[key] != base[key]:
                gpu_steps.append(dict(_base(gpu), action=action, value=want[key], was=base[key]))
            after[key] = want[key] if key in want else base[key]
        keys = [k for k in ('persistence', 'ecc', 'compute_mode') + VOLATILE if k in want or (k == 'ecc' and 'ecc' in want)]
        plan.before.append(_state(index, now, keys))
        plan.after.append(_state(index, after, keys, ' until a reboot' if any(r['gpu'] == index for r in plan.reboot_required) else ''))
    plan.steps = ecc_steps + resets + _persistence_steps(plan, gpus, wanted, service) + gpu_steps
    return plan


def _resettable(gpu: Mapping[str, Any], reset_possible: Mapping[Any, bool] | None) -> bool:
    for key in (gpu.get('index'), str(gpu.get('index')), gpu.get('uuid')):
        if reset_possible and key in reset_possible:
            return bool(reset_possible[key])
    return True


def _persistence_steps(plan: HostPlan, gpus: Sequence[Mapping[str, Any]], wanted: Mapping[int, dict],
                       service: Mapping[str, Any] | None) -> list[dict]:
    values = {w['persistence'] for w in wanted.values() if 'persistence' in w}
    if not values:
        return []
    enabled = values.pop()
    plan.persistence = enabled
    selected = [g for g in gpus if g['index'] in wanted and 'persistence' in wanted[g['index']]]
    # without the service's state (the fleet report has facts only) the GPUs' persistence mode alone is compared
    differs = any(bool(g.get('persistence_mode')) != enabled for g in selected) or (
        service is not None and (bool(service.get('active')) != enabled or bool(service.get('enabled')) != enabled))
    if not differs:
        return []
    if service is not None and not enabled and not service.get('active'):
        # Persistence mode set on the GPUs themselves (nvidia-smi -pm 1, nvmlDeviceSetPersistenceMode) while no
        # nvidia-persistenced runs that stopping would turn it off: turned off GPU by GPU, and the service (where it
        # is installed) disabled too
        steps = [dict(_base(g), action='set_persistence_mode', enabled=False, was=True) for g in selected if g.get('persistence_mode')]
        if service.get('enabled'):
            steps.insert(0, {'action': 'set_persistence', 'gpu': None, 'uuid': None, 'enabled': False, 'was': {'active': False, 'enabled': True}})
        return steps
    service = service or {}
    return [{'action': 'set_persistence', 'gpu': None, 'uuid': None, 'enabled': enabled,
             'was': {'active': bool(service.get('active')), 'enabled': bool(service.get('enabled'))}}]


def _host_problems(host: str, entries: Sequence[Entry], service: Mapping[str, Any] | None) -> list[str]:
    values = {e.settings['persistence'] for e in entries if 'persistence' in e.settings}
    if len(values) > 1:
        return [where(host) + 'persistence is host-wide (the nvidia-persistenced service), but the entries declare both true and false']
    if values == {True} and service is not None and not service.get('loaded'):
        return [where(host) + 'persistence: true needs the nvidia-persistenced service, which is not installed on this host']
    return []


def plan_host(host: str, gpus: Sequence[Mapping[str, Any]], declaration: Any, locked: Mapping[str, Any] | None = None,
              reset_possible: Mapping[Any, bool] | None = None, service: Mapping[str, Any] | None = None) -> HostPlan:
    """Validate `declaration` (gpu_settings) against the GPUs and plan it; raises SettingsPlanError with every problem."""
    errors: list[str] = []
    gpus = sorted(gpus, key=lambda g: g['index'])
    entries = parse_entries(host, declaration, 'gpu_settings', parse_entry, errors)
    chosen = select(host, entries, gpus, errors)
    errors.extend(_host_problems(host, [e for e in entries if e.valid], service))
    wanted = {}
    for gpu in gpus:
        matched = chosen.get(gpu['index'], [])
        if len(matched) > 1:
            errors.append(where(host, gpu) + 'selected by entries %s: a GPU may be selected by one entry only' % ', '.join(e.label for e in matched))
            continue
        if not matched or not matched[0].valid:
            continue
        want, problems = resolve(gpu, matched[0])
        errors.extend(where(host, gpu, matched[0]) + p for p in problems)
        wanted[gpu['index']] = want
    if errors:
        raise SettingsPlanError(host, errors)
    return plan_wanted(host, gpus, wanted, locked, reset_possible, service)


def step_text(step: Mapping[str, Any]) -> str:
    """A step in words, for messages."""
    action = step['action']
    if action == 'set_ecc_mode':
        return 'set the pending ECC mode to %s' % ('enabled' if step['enabled'] else 'disabled')
    if action == 'reset_gpu':
        return 'reset the GPU (nvidia-smi -r) to make the ECC mode current'
    if action == 'set_persistence':
        return '%s nvidia-persistenced (persistence mode %s)' % ('enable and start' if step['enabled'] else 'stop and disable',
                                                                 'on' if step['enabled'] else 'off')
    if action == 'set_persistence_mode':
        return 'turn persistence mode %s on the GPU itself (no nvidia-persistenced runs)' % ('on' if step['enabled'] else 'off')
    key = _KEY_OF.get(action)
    return 'set %s to %s (was %s)' % (key.replace('_mw', ''), shown(key, step.get('value')), shown(key, step.get('was')))


def restore_wanted(before: Sequence[Mapping[str, Any]], touched: Sequence[int], locked: Mapping[str, Any] | None) -> dict:
    """What a rollback gives each touched GPU: every setting as observed before (ECC: its current mode; a pending
    change it had is set again after the reset, by the caller)."""
    wanted = {}
    for gpu in before:
        if gpu['index'] not in touched:
            continue
        now = current(gpu, locked)
        want = {key: now[key] for key in ('compute_mode',) + VOLATILE if now[key] is not None or key.endswith('locked_clocks')}
        if now['ecc'] is not None:
            want['ecc'] = now['ecc']
        wanted[gpu['index']] = want
    return wanted
