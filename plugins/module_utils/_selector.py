# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""What the MIG and vGPU declarations share: the device selector, and how their problems are reported.

An entry of `gpu_mig` or `gpu_vgpu` selects GPUs with `devices`: `all`, a list of GPU indexes, or a mapping of
`indexes`, `uuids`, `model` and `device_id` (each key's list is "any of"; a mapping matches a GPU when every key
given matches). `device_id` takes "0x2330" or mig-parted's "0x233010DE" (device and vendor). A selector that names
an index or uuid the host lacks, or matches no GPU, is a problem (a typo guard): `selection_problems`.

A value that is wrong raises `Invalid` with the reason only; the caller adds where (host, GPU, entry) with `where`.
Every problem of a host is collected and raised together as one `PlanError` (a ValueError) whose `errors` list holds
the lines. Pure: nothing here imports pynvml, reads a file or runs a command.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable

from ansible_collections.gpuvirt.fleet.plugins.module_utils._inputs import quote, safe

SELECTOR_KEYS = ('indexes', 'uuids', 'model', 'device_id')

_DEVICE_ID_RE = re.compile(r'^(?:0x)?(?P<device>[0-9a-f]{4})(?P<vendor>[0-9a-f]{4})?$')


class Invalid(Exception):
    """A reason a value is wrong; the caller adds where (host, GPU, entry)."""


class PlanError(ValueError):
    """Every problem found in a declaration (or an imported config), reported together; `kind` names the planner."""

    kind = 'GPU'

    def __init__(self, host: str | None, errors: Sequence[str]):
        self.host = host
        self.errors = list(errors)
        head = '%s plan for host %s' % (self.kind, host) if host is not None else '%s configuration' % self.kind
        super().__init__('%s: %d error(s):\n- %s' % (head, len(self.errors), '\n- '.join(self.errors)))

    def refuse(self, result: dict, host: str) -> dict:
        """`result` (an apply result) failed with this refusal, made before anything on `host` was touched."""
        result.update(failed=True, msg='host %s: %s; nothing was changed' % (host, self), errors=self.errors)
        return result


class Labelled:
    """A declaration entry: messages name it by `name` when it has one, else by its `number` (from 1)."""

    number: int
    name: str | None

    @property
    def label(self) -> str:
        return quote(self.name) if self.name else str(self.number)


def where(host: str | None, gpu: Any = None, entry: Any = None) -> str:
    """'host h: GPU 0 (GPU-...): entry 'x': ' for messages; `gpu` is a facts mapping or a view with index and uuid,
    `entry` anything with a `label`."""
    parts = ['host %s' % safe(host)]
    if gpu is not None:
        index, uuid = (gpu.get('index'), gpu.get('uuid')) if isinstance(gpu, Mapping) else (gpu.index, gpu.uuid)
        parts.append('GPU %s (%s)' % (safe(index), safe(uuid or 'no uuid')))
    if entry is not None:
        parts.append('entry %s' % entry.label)
    return ': '.join(parts) + ': '


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def attempt(problems: list[str], func: Callable[..., Any], *args: Any) -> Any:
    """Run one check; its Invalid reason joins `problems` and None is returned instead."""
    try:
        return func(*args)
    except Invalid as exc:
        problems.append(str(exc))
        return None


def reject_unknown(raw: Mapping[str, Any], known: Sequence[str], prefix: str = '') -> None:
    """Raise Invalid naming the keys of `raw` that are not `known`."""
    unknown = sorted(safe(k) for k in raw if k not in known)
    if unknown:
        raise Invalid(prefix + 'unknown key(s) %s (known: %s)' % (', '.join(unknown), ', '.join(known)))


def parse_entries(host: str, declaration: Any, variable: str, parse_entry: Callable[[int, Any], tuple[Any, list[str]]],
                  errors: list[str]) -> list:
    """Shape checks of a declaration (a list of entries, numbered from 1); problems go to `errors`, each entry is returned
    as `parse_entry(number, raw)` gives it, with its problems."""
    if declaration is None:
        return []
    if not isinstance(declaration, list):
        errors.append(where(host) + '%s must be a list of entries, got %s' % (variable, type(declaration).__name__))
        return []
    entries = []
    for number, raw in enumerate(declaration, 1):
        entry, problems = parse_entry(number, raw)
        errors.extend(where(host, entry=entry) + p for p in problems)
        entries.append(entry)
    return entries


# ---------------------------------------------------------------------------------------------------------
# The device selector


@dataclass(frozen=True)
class Selector:
    every: bool = False
    indexes: tuple[int, ...] | None = None
    uuids: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    device_ids: tuple[tuple[str, str | None], ...] | None = None

    def matches(self, gpu: Mapping[str, Any]) -> bool:
        pci = gpu.get('pci') or {}
        device = (pci.get('device_id') or '').lower().replace('0x', '')
        vendor = (pci.get('vendor_id') or '').lower().replace('0x', '')
        checks = [
            self.indexes is None or gpu.get('index') in self.indexes,
            self.uuids is None or gpu.get('uuid') in self.uuids,
            self.models is None or gpu.get('name') in self.models,
            self.device_ids is None or any(d == device and v in (None, vendor) for d, v in self.device_ids),
        ]
        return all(checks)


def _str_list(value: Any, what: str) -> tuple[str, ...]:
    """A string or a non-empty list of strings (selectors accept both)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v for v in items):
        raise Invalid('%s must be a string or a non-empty list of strings' % what)
    return tuple(items)


def normalize_device_id(text: str) -> tuple[str, str | None]:
    """'0x2330' -> ('2330', None); mig-parted's '0x233010DE' -> ('2330', '10de')."""
    match = _DEVICE_ID_RE.match(text.strip().lower())
    if not match:
        raise Invalid("device_id %s is not a PCI device id such as '0x2330' or '0x233010DE'" % quote(text))
    return match.group('device'), match.group('vendor')


def _index_list(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not value or not all(is_int(v) and v >= 0 for v in value):
        raise Invalid('devices must list GPU indexes as non-negative integers, got %s' % quote(value))
    return tuple(value)


def parse_selector(value: Any) -> Selector:
    """`devices` of an entry -> its Selector; raises Invalid."""
    if value == 'all':
        return Selector(every=True)
    if isinstance(value, list):
        return Selector(indexes=_index_list(value))
    if not isinstance(value, Mapping) or not value:
        raise Invalid("devices must be 'all', a list of GPU indexes, or a mapping of %s" % ', '.join(SELECTOR_KEYS))
    reject_unknown(value, SELECTOR_KEYS, 'devices: ')
    return Selector(
        indexes=_index_list(value['indexes']) if 'indexes' in value else None,
        uuids=_str_list(value['uuids'], 'devices.uuids') if 'uuids' in value else None,
        models=_str_list(value['model'], 'devices.model') if 'model' in value else None,
        device_ids=tuple(normalize_device_id(d) for d in _str_list(value['device_id'], 'devices.device_id')) if 'device_id' in value else None,
    )


def selection_problems(selector: Selector, gpus: Sequence[Mapping[str, Any]]) -> list[str]:
    """Indexes and UUIDs that name no GPU here, or a selector that matches nothing."""
    indexes = [g.get('index') for g in gpus]
    uuids = [g.get('uuid') for g in gpus]
    problems = ['devices: GPU index %d is not on this host (it has %s)' % (i, indexes or 'no GPUs')
                for i in selector.indexes or () if i not in indexes]
    problems += ['devices: no GPU with uuid %s on this host' % safe(u) for u in selector.uuids or () if u not in uuids]
    if not problems and not any(selector.matches(g) for g in gpus):
        problems.append('devices selector matches no GPU on this host (models here: %s)' % (
            ', '.join(sorted({safe(g.get('name')) for g in gpus})) or 'none'))
    return problems


def select(host: str, entries: Sequence[Any], gpus: Sequence[Mapping[str, Any]], errors: list[str]) -> dict[int, list]:
    """GPU index -> the entries whose selector matches it (entries with a `selector`, None where it was invalid); the
    selection problems of each entry go to `errors`."""
    chosen: dict[int, list] = {}
    for entry in entries:
        if entry.selector is None:
            continue
        errors.extend(where(host, entry=entry) + p for p in selection_problems(entry.selector, gpus))
        for gpu in gpus:
            if entry.selector.matches(gpu):
                chosen.setdefault(gpu['index'], []).append(entry)
    return chosen
