# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""NVIDIA's own formats: what mig-parted (`_mig_parted`) and vgpu-device-manager (`_vgpu_manager`) configs share.

Both tools walk the entries of a label in order and, for each GPU, apply every entry whose device-filter and
devices select it (api/spec/v1/helpers.go, cmd/*/assert/assert.go: WalkSelected...ForEachGPU). An entry that
selects no GPU is therefore simply never applied. A device-filter is one string or a list of strings, each a
32-bit number in Go's strconv.ParseUint(text, 0, 32) syntax (so '0x233010DE' and '0x233010de' alike): the PCI
device id in the high 16 bits and the vendor id in the low 16 bits, optionally ':' and the subsystem device and
vendor ids in the same form (pkg/types/device.go). '0x2330' is device 0x0000 of vendor 0x2330 there.

`parse_label` checks a v1 config and parses the entries of one label; `nvidia_selector` reads an entry's
device-filter and devices; `nvidia_export_entries` groups GPUs into entries the way the tools' exports do.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable

from ansible_collections.gpuvirt.fleet.plugins.module_utils._selector import Invalid, is_int, reject_unknown


def _pci_int(text: Any) -> int | None:
    try:
        return int(str(text), 16) if text is not None else None
    except ValueError:
        return None


def _go_uint32(text: str) -> int:
    """A number as Go's strconv.ParseUint(text, 0, 32) reads it: 0x/0o/0b prefixes, a leading 0 for octal, else decimal."""
    if not re.match(r'^[0-9A-Za-z_]+$', text):
        raise ValueError(text)
    value = int(text.replace('_', ''), 8) if re.match(r'^0[0-7_]+$', text) else int(text, 0)
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(text)
    return value


@dataclass(frozen=True)
class DeviceFilter:
    """One value of a device-filter: PCI device and vendor ids, and the subsystem ids when it names them."""

    text: str
    device: int
    vendor: int
    subsystem: tuple[int, int] | None = None  # (subsystem device, subsystem vendor)

    def matches(self, gpu: Mapping[str, Any]) -> bool:
        pci = gpu.get('pci') or {}
        if (_pci_int(pci.get('device_id')), _pci_int(pci.get('vendor_id'))) != (self.device, self.vendor):
            return False
        return self.subsystem is None or (_pci_int(pci.get('subsystem_id')), _pci_int(pci.get('subsystem_vendor_id'))) == self.subsystem


def _one_filter(text: str) -> DeviceFilter:
    parts = text.split(':')
    try:
        if len(parts) > 2:
            raise ValueError(text)
        primary = _go_uint32(parts[0])
        subsystem = _go_uint32(parts[1]) if len(parts) == 2 else None
    except ValueError as exc:
        raise Invalid("device-filter %r is not a PCI id such as '0x233010DE' (device and vendor id) or '0x25B610DE:0x14A910DE' "
                      '(with the subsystem ids)' % text) from exc
    if primary >> 16 == 0:
        raise Invalid("device-filter %r is device 0x0000 of vendor 0x%04X as NVIDIA's tools read it, which selects no GPU: "
                      "write the device id followed by the vendor id, such as '0x%04X10DE'" % (text, primary, primary))
    return DeviceFilter(text, primary >> 16, primary & 0xFFFF,
                        (subsystem >> 16, subsystem & 0xFFFF) if subsystem is not None else None)


def parse_device_filter(value: Any) -> tuple[DeviceFilter, ...]:
    """A device-filter (absent, '', one id or a list of ids) -> its filters; () selects every GPU, as in NVIDIA's tools."""
    if value is None or value == '':
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise Invalid("device-filter must be a PCI id such as '0x233010DE' or a list of them, got %r" % (value,))
    return tuple(_one_filter(item.strip()) for item in items)


def _nvidia_indexes(value: Any) -> tuple[int, ...] | None:
    """devices: 'all' (None) or a list of GPU indexes; an index the host lacks selects nothing, as in NVIDIA's tools."""
    if value == 'all':
        return None
    if not isinstance(value, list) or not all(is_int(v) and v >= 0 for v in value):
        raise Invalid("devices must be 'all' or a list of GPU indexes, got %r" % (value,))
    return tuple(value)


@dataclass(frozen=True)
class NvidiaSelector:
    """The GPUs one entry of a mig-parted or vgpu-device-manager label selects: its device-filter and its devices."""

    filters: tuple[DeviceFilter, ...]
    indexes: tuple[int, ...] | None  # None: devices: all

    def selects(self, gpu: Mapping[str, Any]) -> bool:
        if self.filters and not any(f.matches(gpu) for f in self.filters):
            return False
        return self.indexes is None or gpu.get('index') in self.indexes


def nvidia_selector(raw: Mapping[str, Any]) -> NvidiaSelector:
    return NvidiaSelector(parse_device_filter(raw.get('device-filter')), _nvidia_indexes(raw.get('devices')))


def _filter_text(gpu: Mapping[str, Any]) -> str | None:
    """A GPU's device-filter as NVIDIA's exports write it: '0x233010DE'."""
    pci = gpu.get('pci') or {}
    device, vendor = _pci_int(pci.get('device_id')), _pci_int(pci.get('vendor_id'))
    return '0x%04X%04X' % (device, vendor) if device is not None and vendor is not None else None


def nvidia_export_entries(gpus: Sequence[Mapping[str, Any]], bodies: Sequence[dict]) -> list[dict]:
    """Entries in the shape `nvidia-mig-parted export` writes, one per distinct body (the GPU's state, such as
    {'mig-enabled': .., 'mig-devices': ..}), in the order of the GPUs: each names its GPUs' device-filter (a string
    for one model, a list for several; none when the host has one model or the label one entry) and `devices: all`
    where it holds every GPU of those models, else their indexes."""
    texts = [_filter_text(gpu) for gpu in gpus]
    filtered = None not in texts
    groups: list[tuple[dict, list[int], list[str]]] = []
    for gpu, text, body in zip(gpus, texts, bodies):
        for group_body, indexes, filters in groups:
            if group_body == body:
                indexes.append(gpu['index'])
                if text not in filters:
                    filters.append(text)
                break
        else:
            groups.append((body, [gpu['index']], [text]))
    by_filter: dict[Any, list[int]] = {}
    for gpu, text in zip(gpus, texts):
        by_filter.setdefault(text, []).append(gpu['index'])
    entries = []
    for body, indexes, filters in groups:
        entry: dict[str, Any] = {}
        if filtered and len(by_filter) > 1 and len(groups) > 1:
            entry['device-filter'] = filters[0] if len(filters) == 1 else sorted(filters)
        models = sorted(i for text in filters for i in by_filter[text]) if 'device-filter' in entry else sorted(g['index'] for g in gpus)
        entry['devices'] = 'all' if sorted(indexes) == models else sorted(indexes)
        entry.update(body)
        entries.append(entry)
    return entries


def parse_label(config: Any, label: Any, configs_key: str, tool: str, error: type, parse_entry: Callable[[str, int, Any], Any]) -> list:
    """The label's entries of a v1 config of mig-parted ('mig-configs') or vgpu-device-manager ('vgpu-configs'), each
    as `parse_entry(label, number, raw)` gives it (numbered from 0). Raises `error` (a PlanError) with every problem."""
    where = '%s config: ' % tool
    if not isinstance(config, Mapping) or config.get('version') != 'v1':
        raise error(None, [where + "version must be 'v1', got %r" % (config.get('version') if isinstance(config, Mapping) else config,)])
    unknown = sorted(str(k) for k in config if k not in ('version', configs_key))
    if unknown:
        raise error(None, [where + 'unknown key(s) %s (known: version, %s)' % (', '.join(unknown), configs_key)])
    configs = config.get(configs_key)
    if not isinstance(configs, Mapping) or label not in configs:
        raise error(None, [where + 'no label %r in %s (labels: %s)' % (
            label, configs_key, ', '.join(sorted(map(str, configs))) if isinstance(configs, Mapping) and configs else 'none')])
    if not isinstance(configs[label], list) or not configs[label]:
        raise error(None, [where + 'label %r must be a non-empty list of entries, got %r' % (label, configs[label])])
    entries, errors = [], []
    for number, raw in enumerate(configs[label]):
        try:
            entries.append(parse_entry(label, number, raw))
        except Invalid as exc:
            errors.append('%s config: label %r: entry %d: %s' % (tool, label, number, exc))
    if errors:
        raise error(None, errors)
    return entries


def check_entry(raw: Any, known: Sequence[str], required: Sequence[str], note: str = '') -> Mapping[str, Any]:
    """An entry of a label: a mapping of `known` keys holding every `required` one; raises Invalid (`note` ends the
    message of a missing key)."""
    if not isinstance(raw, Mapping):
        raise Invalid('must be a mapping with %s, got %r' % (' and '.join(required), raw))
    reject_unknown(raw, known)
    missing = [key for key in required if key not in raw]
    if missing:
        raise Invalid('%s %s required%s' % (' and '.join(missing), 'is' if len(missing) == 1 else 'are', note))
    return raw
