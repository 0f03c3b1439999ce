# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""The MIG declaration (inventory variable `gpu_mig`), checked for shape, and which entry declares each GPU.

Declaration (inventory variable `gpu_mig`), a list of entries::

    - name: inference            # optional; errors say "entry 'inference'" (else "entry N", counting from 1)
      devices: all               # all | [0, 1] | {indexes: [..], uuids: [..], model: .., device_id: ..}
      enabled: true              # MIG mode wanted (default true)
      allow_disruption: false    # may GPU/compute instances in use, or GPUs with processes, be changed
      instances:                 # omitted: MIG mode only, existing instances are left alone; []: no instances
        - profile: 3g.40gb       # a GPU-instance profile name the selected GPU reports
          start: 4               # optional placement start (memory slices)
          count: 1               # optional, default 1; 1 when start is given
          compute_instances: [1c, 2c]   # optional; "1c", "1c.3g.40gb" or "3g.40gb" (the whole GI);
                                        # default one CI spanning the GI; [] none
      mig_devices: {"1g.10gb": 2, "1c.3g.40gb": 3}   # instead of instances: mig-parted's counts of
                                        # (GPU instance, compute instance) pairs, met when the counts match

A selector mapping matches a GPU when every key given matches (each key's list is "any of"); `device_id`

`devices` is the selector both planners share (`_selector`). GPUs no entry selects get no steps; a GPU two entries
select is an error. What the entries ask of each GPU is checked against its facts by the planner (`_mig`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ansible_collections.gpuvirt.fleet.plugins.module_utils._inputs import MAX_MIG_INSTANCES, bounded, declared, hostname, quote
from ansible_collections.gpuvirt.fleet.plugins.module_utils._selector import (
    Invalid, Labelled, Selector, attempt, is_int, parse_entries, parse_selector, reject_unknown, select, where)

ENTRY_KEYS = ('name', 'devices', 'enabled', 'allow_disruption', 'instances', 'mig_devices')
INSTANCE_KEYS = ('profile', 'start', 'count', 'compute_instances')
# A key of mig_devices: a GPU-instance profile ('1g.10gb', its whole GI as one CI) or a CI in it ('1c.3g.40gb').
MIG_DEVICES_KEY_RE = re.compile(r'^(?:(?P<ci>\d+)c\.)?(?P<gi>\d+g\..+)$')


@dataclass(frozen=True)
class InstanceSpec:
    source: str  # where it was declared, for messages: 'instances[2]' or "mig_devices['1c.3g.40gb']"
    profile: str
    start: int | None
    count: int
    cis: tuple[str, ...] | None


@dataclass(frozen=True)
class Entry(Labelled):
    number: int
    name: str | None
    selector: Selector | None
    enabled: bool
    allow_disruption: bool
    instances: tuple[InstanceSpec, ...] | None
    mig_devices: tuple[tuple[str, int], ...] | None = None  # mig-parted counts, instead of instances
    valid: bool = True  # False: shape problems were reported; its selector is still checked, nothing is planned


def _bool(raw: Mapping[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise Invalid('%s must be true or false, got %s' % (key, quote(value)))
    return value


def _instance(number: int, raw: Any) -> InstanceSpec:
    prefix = 'instances[%d]: ' % number
    if not isinstance(raw, Mapping):
        raise Invalid(prefix + 'must be a mapping with a profile, got %s' % quote(raw))
    reject_unknown(raw, INSTANCE_KEYS, prefix)
    profile, start, count, cis = raw.get('profile'), raw.get('start'), raw.get('count', 1), raw.get('compute_instances')
    if not isinstance(profile, str) or not profile:
        raise Invalid(prefix + 'profile must be a profile name such as 3g.40gb, got %s' % quote(profile))
    if start is not None and bounded(start, 'start', MAX_MIG_INSTANCES):
        raise Invalid(prefix + bounded(start, 'start', MAX_MIG_INSTANCES)[0])
    if bounded(count, 'count', MAX_MIG_INSTANCES, 1):
        raise Invalid(prefix + bounded(count, 'count', MAX_MIG_INSTANCES, 1)[0])
    if start is not None and count != 1:
        raise Invalid(prefix + 'count must be 1 when start is given (one placement holds one instance), got %d' % count)
    if cis is not None and (not isinstance(cis, list) or not all(isinstance(c, str) for c in cis)):
        raise Invalid(prefix + 'compute_instances must be a list such as [1c, 2c], got %s' % quote(cis))
    if cis is not None and len(cis) > MAX_MIG_INSTANCES:
        raise Invalid(prefix + 'compute_instances lists %d compute instances: a GPU instance holds at most %d' % (len(cis), MAX_MIG_INSTANCES))
    profile = profile[4:] if profile.startswith('MIG ') else profile
    return InstanceSpec('instances[%d]' % number, profile, start, count, tuple(cis) if cis is not None else None)


def _selector_of(raw: Mapping[str, Any]) -> Selector:
    if 'devices' not in raw:
        raise Invalid('devices is required (all, a list of indexes, or a mapping)')
    return parse_selector(raw['devices'])


def parse_entry(number: int, raw: Any) -> tuple[Entry, list[str]]:
    """Check one entry's shape (not yet against any GPU); returns it and its problems."""
    if not isinstance(raw, Mapping):
        return Entry(number, None, None, True, False, None, None, False), ['must be a mapping with devices, got %s' % quote(raw)]
    problems: list[str] = []
    name = raw.get('name')
    if name is not None and not (isinstance(name, str) and name):
        problems.append('name must be a non-empty string, got %s' % quote(name))
        name = None
    attempt(problems, reject_unknown, raw, ENTRY_KEYS)
    selector = attempt(problems, _selector_of, raw)
    enabled = attempt(problems, _bool, raw, 'enabled', True)
    disrupt = attempt(problems, _bool, raw, 'allow_disruption', False)
    instances = attempt(problems, _instances, raw.get('instances'), enabled is not False)
    counts = attempt(problems, check_mig_devices, raw, enabled is not False)
    return Entry(number, name, selector, enabled is not False, bool(disrupt), instances, counts, not problems), problems


def _instances(raw: Any, enabled: bool) -> tuple[InstanceSpec, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise Invalid('instances must be a list, got %s' % quote(raw))
    if len(raw) > MAX_MIG_INSTANCES:
        raise Invalid('instances lists %d GPU instances: a GPU holds at most %d' % (len(raw), MAX_MIG_INSTANCES))
    if raw and not enabled:
        raise Invalid('instances need MIG mode: enabled is false but %d instance(s) are declared' % len(raw))
    return tuple(_instance(n, item) for n, item in enumerate(raw))


def check_mig_devices(raw: Mapping[str, Any], enabled: bool) -> tuple[tuple[str, int], ...] | None:
    """mig-parted's counts of (GPU instance, compute instance) pairs, checked for shape only."""
    counts = raw.get('mig_devices')
    if counts is None:
        return None
    if 'instances' in raw:
        raise Invalid('declare instances or mig_devices, not both')
    if not isinstance(counts, Mapping):
        raise Invalid('mig_devices must be a mapping of profile to count such as {"1g.10gb": 2}, got %s' % quote(counts))
    for key, count in counts.items():
        if not isinstance(key, str) or not MIG_DEVICES_KEY_RE.match(key) or not is_int(count) or count < 0:
            raise Invalid('mig_devices: %s: %s is not a MIG profile with a count such as "1g.10gb": 2' % (quote(key), quote(count)))
        if count > MAX_MIG_INSTANCES:
            raise Invalid('mig_devices: %s: %s' % (quote(key), bounded(count, 'count', MAX_MIG_INSTANCES)[0]))
    if any(counts.values()) and not enabled:
        raise Invalid('mig_devices need MIG mode: enabled is false')
    return tuple(sorted((key, count) for key, count in counts.items() if count))


def parse_declaration(host: str, declaration: Any, errors: list[str]) -> list[Entry]:
    """Shape checks of the whole declaration; problems go to `errors`. Every entry is returned (see Entry.valid)."""
    return parse_entries(host, declaration, 'gpu_mig', parse_entry, errors)


def input_problems(host: str, declaration: Any, nvidia_format: bool) -> list[str]:
    """The validation pass before any GPU is observed: the host name, and the declaration's shape (a null `config`
    is refused like a missing one). A mig-parted config is checked by its own parser."""
    errors = [where(host) + p for p in hostname(host)]
    if not nvidia_format:
        errors += [where(host) + p for p in declared(declaration, 'config', 'mig_parted_config with mig_parted_label')]
        parse_declaration(host, declaration, errors)
    return errors


def resolve(host: str, entries: Sequence[Entry], gpus: Sequence[Mapping[str, Any]], errors: list[str]) -> dict[int, Entry]:
    """GPU index -> the one entry that selects it."""
    chosen = select(host, entries, gpus, errors)
    by_gpu = {g['index']: g for g in gpus}
    result = {}
    for index in sorted(chosen):
        picked = chosen[index]
        if len(picked) > 1:
            errors.append(where(host, by_gpu[index]) + 'selected by entries %s: a GPU may be declared by one entry only' % (
                ', '.join(e.label for e in picked)))
        else:
            result[index] = picked[0]
    return result
