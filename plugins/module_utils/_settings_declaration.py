# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""The `gpu_settings` declaration's format and shape checks (not yet against any GPU). Pure.

An entry selects GPUs with `devices` (the selector shared with gpu_mig and gpu_vgpu, `_selector`) and declares any of
SETTING_KEYS; a setting left out is left alone. Values:

- `persistence`: true or false (host-wide: the nvidia-persistenced service);
- `power_limit`: watts (a number, or a string such as '450 W'), a percentage of the GPU's default limit ('80%'), or
  'default';
- `ecc`: true or false (pending until a GPU reset or a reboot);
- `compute_mode`: one of COMPUTE_MODES;
- `gpu_locked_clocks`, `memory_locked_clocks`: {min, max} in MHz (or one number: min = max), or 'default' (unlocked);
- `applications_clocks`: {memory, graphics} in MHz, or 'default'. It excludes the locked clocks in one entry.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.gpuvirt.fleet.plugins.module_utils._inputs import quote
from ansible_collections.gpuvirt.fleet.plugins.module_utils._selector import (
    Invalid, Labelled, Selector, attempt, is_int, parse_selector, reject_unknown)

SETTING_KEYS = ('persistence', 'power_limit', 'ecc', 'compute_mode', 'gpu_locked_clocks', 'memory_locked_clocks', 'applications_clocks')
ENTRY_KEYS = ('name', 'devices') + SETTING_KEYS
COMPUTE_MODES = ('default', 'exclusive_process', 'prohibited')
DEFAULT = 'default'
MAX_CLOCK_MHZ = 100000
MAX_POWER_W = 100000

_WATTS_RE = re.compile(r'^\s*(?P<value>\d+(?:\.\d+)?)\s*[wW]\s*$')
_PERCENT_RE = re.compile(r'^\s*(?P<value>\d+(?:\.\d+)?)\s*%\s*$')


@dataclass
class Entry(Labelled):
    number: int
    name: str | None
    selector: Selector | None
    settings: dict[str, Any] = field(default_factory=dict)  # the declared settings, parsed (see parse_value)
    valid: bool = True


def parse_power(value: Any) -> tuple[str, float]:
    """('watts', W), ('percent', P) or ('default', 0)."""
    if value == DEFAULT:
        return DEFAULT, 0.0
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        watts = float(value)
    elif isinstance(value, str) and _PERCENT_RE.match(value):
        percent = float(_PERCENT_RE.match(value).group('value'))
        if not 0 < percent <= 1000:
            raise Invalid('power_limit %s: a percentage of the default limit must be above 0%%' % quote(value))
        return 'percent', percent
    elif isinstance(value, str) and _WATTS_RE.match(value):
        watts = float(_WATTS_RE.match(value).group('value'))
    else:
        raise Invalid("power_limit must be watts (450 or '450 W'), a percentage of the default limit ('80%%') or 'default', got %s" % quote(value))
    if not 0 < watts <= MAX_POWER_W:
        raise Invalid('power_limit %s W must be above 0 W' % quote(value))
    return 'watts', watts


def _mhz(value: Any, what: str) -> int:
    if not is_int(value) or not 0 < value <= MAX_CLOCK_MHZ:
        raise Invalid('%s must be a clock in MHz (a positive integer), got %s' % (what, quote(value)))
    return value


def parse_range(value: Any, key: str) -> tuple[int, int] | None:
    """{min, max} or one number -> (min, max); 'default' -> None (unlocked)."""
    if value == DEFAULT:
        return None
    if is_int(value):
        return _mhz(value, key), value
    if not isinstance(value, Mapping) or 'min' not in value or 'max' not in value:
        raise Invalid("%s must be {min: MHz, max: MHz}, one clock in MHz, or 'default', got %s" % (key, quote(value)))
    reject_unknown(value, ('min', 'max'), key + ': ')
    low, high = _mhz(value['min'], key + '.min'), _mhz(value['max'], key + '.max')
    if low > high:
        raise Invalid('%s: min %d MHz is above max %d MHz' % (key, low, high))
    return low, high


def parse_application_clocks(value: Any) -> tuple[int, int] | None:
    """{memory, graphics} -> (memory, graphics); 'default' -> None (the GPU's default application clocks)."""
    if value == DEFAULT:
        return None
    if not isinstance(value, Mapping) or 'memory' not in value or 'graphics' not in value:
        raise Invalid("applications_clocks must be {memory: MHz, graphics: MHz} or 'default', got %s" % quote(value))
    reject_unknown(value, ('memory', 'graphics'), 'applications_clocks: ')
    return _mhz(value['memory'], 'applications_clocks.memory'), _mhz(value['graphics'], 'applications_clocks.graphics')


def _flag(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise Invalid('%s must be true or false, got %s' % (key, quote(value)))
    return value


def _compute_mode(value: Any) -> str:
    if value not in COMPUTE_MODES:
        raise Invalid('compute_mode must be one of %s, got %s' % (', '.join(COMPUTE_MODES), quote(value)))
    return value


PARSERS = {
    'persistence': lambda v: _flag(v, 'persistence'),
    'power_limit': parse_power,
    'ecc': lambda v: _flag(v, 'ecc'),
    'compute_mode': _compute_mode,
    'gpu_locked_clocks': lambda v: parse_range(v, 'gpu_locked_clocks'),
    'memory_locked_clocks': lambda v: parse_range(v, 'memory_locked_clocks'),
    'applications_clocks': parse_application_clocks,
}


def parse_entry(number: int, raw: Any) -> tuple[Entry, list[str]]:
    """Check one entry's shape; returns it and its problems."""
    if not isinstance(raw, Mapping):
        return Entry(number, None, None, valid=False), ['must be a mapping with devices and settings, got %s' % quote(raw)]
    problems: list[str] = []
    name = raw.get('name')
    if name is not None and not (isinstance(name, str) and name):
        problems.append('name must be a non-empty string, got %s' % quote(name))
        name = None
    attempt(problems, reject_unknown, raw, ENTRY_KEYS)
    selector = None
    if 'devices' not in raw:
        problems.append("devices is required: 'all', a list of GPU indexes or a selector mapping")
    else:
        selector = attempt(problems, parse_selector, raw['devices'])
    settings = {}
    for key in SETTING_KEYS:
        if raw.get(key) is not None:
            before = len(problems)
            value = attempt(problems, PARSERS[key], raw[key])
            if len(problems) == before:
                settings[key] = value
    if not any(raw.get(key) is not None for key in SETTING_KEYS):
        problems.append('declares no setting (any of %s)' % ', '.join(SETTING_KEYS))
    locked = [key for key in ('gpu_locked_clocks', 'memory_locked_clocks') if raw.get(key) not in (None, DEFAULT)]
    if locked and raw.get('applications_clocks') not in (None, DEFAULT):
        problems.append('%s and applications_clocks exclude each other: locked clocks override application clocks' % ' and '.join(locked))
    return Entry(number, name, selector, settings, not problems), problems
