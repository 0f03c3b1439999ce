# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""mig-parted v1 configs, read and written with mig-parted's meaning.

`parse_mig_parted(config, label)` checks a label and `plan_mig_parted(host, gpus, entries)` plans it with
mig-parted's meaning (an entry that selects no GPU here is skipped; see resolve_mig_parted), where the native format
(`gpu_mig`) refuses a selector that matches nothing (a typo guard). `export_mig_parted(gpus, label)` writes the current
state in the shape `nvidia-mig-parted export` writes. The device-filter and the config shape are shared with the
vgpu-device-manager format (`_nvidia_formats`); docs/nvidia-formats.md says how the formats differ.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _mig
from ansible_collections.gpuvirt.fleet.plugins.module_utils._mig_declaration import check_mig_devices, parse_entry
from ansible_collections.gpuvirt.fleet.plugins.module_utils._mig_model import PlacedGI, gpu_offer
from ansible_collections.gpuvirt.fleet.plugins.module_utils._mig_solver import layout_for
from ansible_collections.gpuvirt.fleet.plugins.module_utils._nvidia_formats import (
    NvidiaSelector, check_entry, nvidia_export_entries, nvidia_selector, parse_label)
from ansible_collections.gpuvirt.fleet.plugins.module_utils._selector import Invalid, Labelled, where

MIG_PARTED_ENTRY_KEYS = ('device-filter', 'devices', 'mig-enabled', 'mig-devices')


def _mig_devices(layout: Sequence[PlacedGI]) -> dict[str, int]:
    """mig-parted counts (GPU instance, compute instance) pairs: '3g.40gb' (whole GI) or '1c.3g.40gb'."""
    counts: dict[str, int] = {}
    for placed in layout:
        for ci in placed.cis:
            key = placed.profile.name if ci.slices == placed.profile.slices else '%dc.%s' % (ci.slices, placed.profile.name)
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def export_mig_parted(gpus: Sequence[Mapping[str, Any]], label: str) -> dict:
    """The current state as a mig-parted v1 config with one label, in the shape `nvidia-mig-parted export` writes:
    every GPU NVML can read (a GPU that is not MIG-capable as mig-enabled: false), GPUs of one state in one entry,
    with device-filters on a host of several models.

    The format cannot say where instances sit, nor hold a GPU instance without compute instances.
    """
    usable = [g for g in sorted(gpus, key=lambda g: g['index']) if g.get('status') != 'lost']
    states = []
    for gpu in usable:
        current = bool((gpu.get('mig') or {}).get('capable') and gpu['mig'].get('current'))
        state: dict[str, Any] = {'mig-enabled': current}
        if current:
            state['mig-devices'] = _mig_devices(_mig.current_layout(gpu))
        states.append(state)
    return {'version': 'v1', 'mig-configs': {label: nvidia_export_entries(usable, states)}}


@dataclass(frozen=True)
class PartedEntry(Labelled):
    """One entry of a mig-parted label, checked for shape: which GPUs it selects and the state it gives them."""

    number: int  # its position in the label, from 0
    name: str  # '<label>[N]', how errors and plans name it
    selector: NvidiaSelector
    enabled: bool
    mig_devices: dict | None  # the counts to hold (None when mig-enabled is false)

    def native(self, indexes: Sequence[int]) -> dict:
        """The entry as a gpu_mig entry declaring the given GPUs."""
        entry: dict[str, Any] = {'name': self.name, 'devices': list(indexes), 'enabled': self.enabled}
        if self.enabled:
            entry['mig_devices'] = dict(self.mig_devices or {})
        return entry


def _parted_entry(label: str, number: int, raw: Any) -> PartedEntry:
    raw = check_entry(raw, MIG_PARTED_ENTRY_KEYS, ('devices', 'mig-enabled'))
    enabled = raw['mig-enabled']
    if not isinstance(enabled, bool):
        raise Invalid('mig-enabled must be true or false, got %r' % (enabled,))
    selector = nvidia_selector(raw)
    counts = raw.get('mig-devices')
    if enabled and counts is None:
        raise Invalid('mig-devices is required when mig-enabled is true, as in mig-parted (mig-devices: {} for no instances)')
    if counts is not None:
        check_mig_devices({'mig_devices': counts}, True)  # the same checks as the declaration's own key
        if not enabled and counts:
            raise Invalid('mig-devices must be empty when mig-enabled is false, as in mig-parted, got %r' % (dict(counts),))
        if counts and not any(counts.values()):
            raise Invalid('every count in mig-devices is 0, which mig-parted refuses (mig-devices: {} for no instances)')
    return PartedEntry(number, '%s[%d]' % (label, number), selector, enabled,
                       {k: v for k, v in counts.items() if v} if enabled and counts is not None else None)


def parse_mig_parted(config: Any, label: str) -> list[PartedEntry]:
    """A mig-parted v1 config's label, checked for shape -> its entries (named '<label>[N]', N from 0).

    Which GPUs each entry declares depends on the host: `plan_mig_parted` decides it from the GPUs' facts.
    Raises MigPlanError naming the label and entry of every problem.
    """
    return parse_label(config, label, 'mig-configs', 'mig-parted', _mig.MigPlanError, _parted_entry)


def _parted_skips(host: str, entry: PartedEntry, gpu: Mapping[str, Any], errors: list[str]) -> bool:
    """mig-parted's rule for a GPU that is not MIG-capable (cmd/nvidia-mig-parted/apply/mode.go, config.go): an entry
    with devices: all, or with mig-enabled: false, skips it; one naming its index with mig-enabled: true is an error."""
    if gpu.get('status') == 'lost' or (gpu.get('mig') or {}).get('capable'):
        return False  # a lost GPU goes to the planner, which refuses it
    if entry.enabled and entry.selector.indexes is not None:
        errors.append(where(host, gpu, entry) + '%s is not MIG-capable: mig-parted refuses to enable MIG on a GPU named '
                      'by its index (devices: all skips such GPUs)' % (gpu.get('name') or 'this GPU'))
    return True


def _overridden_problems(host: str, gpu: Mapping[str, Any], entry: PartedEntry, last: PartedEntry) -> list[str]:
    """mig-parted applies an entry that a later one overrides on this GPU too, and stops if it cannot: so must it fit."""
    if not entry.enabled or entry.mig_devices == last.mig_devices:
        return []
    parsed, problems = parse_entry(entry.number, entry.native([gpu['index']]))
    if not problems:
        problems = _mig.gpu_problems(gpu, parsed) or layout_for(gpu, parsed, gpu_offer(gpu), [])[1]
    return [where(host, gpu, entry) + "mig-parted applies it before entry '%s' on this GPU, and it cannot be applied: %s" % (
        last.name, problem) for problem in problems]


def resolve_mig_parted(host: str, entries: Sequence[PartedEntry], gpus: Sequence[Mapping[str, Any]], errors: list[str]) -> list[dict]:
    """Which entry declares each GPU, as mig-parted decides it -> a gpu_mig declaration naming the GPUs by index.

    An entry whose device-filter and devices select no GPU here is skipped; a GPU that is not MIG-capable is skipped
    by devices: all and by mig-enabled: false. Where several entries select one GPU, mig-parted applies each in
    turn, so the last one holds at the end: every one of them must be applicable (else mig-parted stops half-way),
    and entries that disagree on mig-enabled are refused (mig-parted fails on them after changing the mode).
    """
    governed: dict[int, PartedEntry] = {}
    for gpu in sorted(gpus, key=lambda g: g['index']):
        applying = [e for e in entries if e.selector.selects(gpu) and not _parted_skips(host, e, gpu, errors)]
        if not applying:
            continue
        last = applying[-1]
        if len({e.enabled for e in applying}) > 1:
            errors.append(where(host, gpu) + 'entries %s select this GPU with different mig-enabled values; mig-parted sets '
                          'the mode of each in turn and then fails to apply the other' % ', '.join(e.label for e in applying))
            continue
        for earlier in applying[:-1]:
            errors.extend(_overridden_problems(host, gpu, earlier, last))
        governed[gpu['index']] = last
    declaration = []
    for entry in entries:
        indexes = sorted(index for index, owner in governed.items() if owner is entry)
        if indexes:
            declaration.append(entry.native(indexes))
    return declaration


def plan_mig_parted(host: str, gpus: Sequence[Mapping[str, Any]], entries: Sequence[PartedEntry],
                    reset_possible: Mapping[Any, bool] | None = None) -> _mig.HostPlan:
    """Plan a parsed mig-parted label (parse_mig_parted) on this host with mig-parted's meaning (resolve_mig_parted).

    mig-devices keep mig-parted's meaning too: a GPU whose counts of (GPU instance, compute instance) pairs already
    match is left alone, wherever its instances sit; otherwise smaller compute instances ('1c.3g.40gb': 3) are packed
    into as few GPU instances as fit, as mig-parted does, and that layout is planned minimally. Raises MigPlanError
    with every problem of the host before any step exists.
    """
    errors: list[str] = []
    declaration = resolve_mig_parted(host, entries, gpus, errors)
    try:
        plan = _mig.plan_host(host, gpus, declaration, reset_possible)
    except _mig.MigPlanError as exc:
        errors.extend(exc.errors)
        plan = None
    if errors or plan is None:
        raise _mig.MigPlanError(host, errors)
    return plan
