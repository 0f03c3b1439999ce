# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""The pure MIG planner: validate a `gpu_mig` declaration against a host's GPU facts, plan the minimal steps.

Input is exactly what `gpuvirt.fleet.gpu_facts` returns in `ansible_facts.gpus`; nothing here imports pynvml,
reads a file or runs a command. Profiles, placements and instance limits come from the facts of each GPU
(never from a static table of names), so a driver that renames a profile is followed, not fought.

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
takes "0x2330" or mig-parted's "0x233010DE" (device and vendor). GPUs no entry selects get no steps.

`plan_host(host, gpus, declaration, reset_possible=None)` returns a `HostPlan`; `plan.steps` is a list of
dicts, in the order they must run. Every step has `action`, `gpu` (NVML index) and `uuid`; the others:

- `destroy_compute_instance`: `gpu_instance_id`, `compute_instance_id`, `profile` (e.g. "1c.3g.40gb"),
  `slices` (compute slices), `pids` (processes it stops; only non-empty with allow_disruption).
- `destroy_gpu_instance`: `gpu_instance_id`, `profile`, `profile_id`, `start`, `size`, `pids`.
- `set_mig_mode`: `enabled` (the mode to set), `current`, `pending` (the modes observed), `pids`.
- `reset_gpu`: `bus_id` (for `nvidia-smi -r -i`), `pids`. Only after a mode change, and only where
  `reset_possible` allows it; otherwise the GPU is listed in `reboot_required` and the instance
  steps that need the new mode are in `deferred` instead of `steps`.
- `create_gpu_instance`: `profile`, `profile_id` (the id nvidia-smi shows), `start`, `size`: create
  with this explicit placement (`nvmlDeviceCreateGpuInstanceWithPlacement`).
- `create_compute_instance`: `gpu_instance_id` (null when the GPU instance is created by this plan),
  `gpu_instance_start` (finds the GPU instance by its placement), `gpu_instance_profile`, `profile`
  (e.g. "2c.3g.40gb"), `profile_id` (NVML compute-instance profile id, NVML_COMPUTE_INSTANCE_PROFILE_<n>_SLICE),
  `slices`, `start` (planned placement in compute slices inside the GPU instance).

Order per GPU (GPUs in index order): compute-instance destroys, GPU-instance destroys, set_mig_mode,
reset_gpu, GPU-instance creates, compute-instance creates. Instances that already match are not touched
and keep their ids; the planner keeps as many existing GPU instances as any legal layout can (an exact
search), then prefers keeping the ones processes use, then compute instances, then the lowest starts.

Besides `steps`, a HostPlan gives `changed`, `reboot_required` (list of {gpu, uuid, reason}), `deferred`
(list of {gpu, uuid, reason, steps}), `before`/`after` (one declaration entry per selected GPU, `devices: [index]`,
for diff mode), `desired` (per selected GPU: {gpu, uuid, entry, enabled, reboot_required, instances: [{profile,
start, compute_instances: [slices]}] or null when instances are left alone}) and `as_dict()` with all of these.

Errors: every problem of a host is collected and raised together, before any step exists, as one
`MigPlanError` (a ValueError) whose `errors` list holds lines such as
"host gpu1: GPU 0 (GPU-3735...): entry 'inference': instances[2]: 3g.40gb cannot start at 2 (starts: 0, 4)".

Interop: `parse_mig_parted(config, label)` checks a mig-parted v1 label and `plan_mig_parted(host, gpus, entries)`
plans it with mig-parted's meaning (an entry that selects no GPU here is skipped; see resolve_mig_parted), where
the native format refuses a selector that matches nothing (a typo guard). `export_mig_parted(gpus, label)` and
`export_declaration(gpus)` write the current state in both formats. `parse_device_filter` and `NvidiaSelector` are
NVIDIA's device-filter and devices, shared with the vgpu-device-manager format (_vgpu).
`verify(plan.desired, gpus_after)` lists what the GPUs observed after apply do not match.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Tuple

# A plan's quality, compared as a tuple: (GPU instances kept, processes left running, compute instances kept).
Score = Tuple[int, int, int]  # typing.Tuple: managed hosts may run a Python older than 3.9
ZERO: Score = (0, 0, 0)

ENTRY_KEYS = ('name', 'devices', 'enabled', 'allow_disruption', 'instances', 'mig_devices')
INSTANCE_KEYS = ('profile', 'start', 'count', 'compute_instances')
SELECTOR_KEYS = ('indexes', 'uuids', 'model', 'device_id')

# Compute-instance placements (starts, in compute slices) inside a GPU instance of N compute slices, from
# NVIDIA's MIG user guide and the calibrated GPU models. The facts cannot carry them: NVML reports CI profiles
# only for a GPU instance that already exists. A 4-slice GI has no 3c profile; a 7-slice GI puts 3c at 0 or 4.
CI_PLACEMENTS: dict[int, dict[int, tuple[int, ...]]] = {
    1: {1: (0,)},
    2: {1: (0, 1), 2: (0,)},
    3: {1: (0, 1, 2), 2: (0,), 3: (0,)},
    4: {1: (0, 1, 2, 3), 2: (0, 2), 4: (0,)},
    7: {1: (0, 1, 2, 3, 4, 5, 6), 2: (0, 2, 4), 3: (0, 4), 4: (0,), 7: (0,)},
}
# NVML_COMPUTE_INSTANCE_PROFILE_<n>_SLICE: the id nvmlGpuInstanceCreateComputeInstance takes.
CI_PROFILE_IDS = {1: 0, 2: 1, 3: 2, 4: 3, 7: 4, 8: 5, 6: 6}

_CI_NAME_RE = re.compile(r'^(?P<slices>\d+)c(?:\.(?P<gi>.+))?$')
_MIG_PARTED_KEY_RE = re.compile(r'^(?:(?P<ci>\d+)c\.)?(?P<gi>\d+g\..+)$')
_DEVICE_ID_RE = re.compile(r'^(?:0x)?(?P<device>[0-9a-f]{4})(?P<vendor>[0-9a-f]{4})?$')


class PlanError(ValueError):
    """Every problem found in a declaration (or an imported config), reported together; `kind` names the planner."""

    kind = 'GPU'

    def __init__(self, host: str | None, errors: Sequence[str]):
        self.host = host
        self.errors = list(errors)
        head = '%s plan for host %s' % (self.kind, host) if host is not None else '%s configuration' % self.kind
        super().__init__('%s: %d error(s):\n- %s' % (head, len(self.errors), '\n- '.join(self.errors)))


class MigPlanError(PlanError):
    """Every problem found in a MIG declaration (or a mig-parted config), reported together."""

    kind = 'MIG'


class _Invalid(Exception):
    """A reason a value is wrong; the caller adds where (host, GPU, entry)."""


# ---------------------------------------------------------------------------------------------------------
# What a GPU offers and holds, read from its facts


@dataclass(frozen=True)
class Profile:
    """A GPU-instance profile as one GPU reports it."""

    profile_id: int
    name: str
    slices: int
    instances: int
    placements: tuple[tuple[int, int], ...]  # (start, size) in memory slices
    ofas: int | None

    @property
    def starts(self) -> tuple[int, ...]:
        return tuple(start for start, _size in self.placements)


@dataclass(frozen=True)
class Offer:
    """One GPU's MIG capacity: profiles by name, slice totals and the shared media engine (OFA) budget."""

    profiles: Mapping[str, Profile]
    compute_slices: int
    ofas: int | None


@dataclass(frozen=True)
class OldCI:
    ci_id: int
    slices: int | None
    start: int | None


@dataclass(frozen=True)
class OldGI:
    gi_id: int
    profile: Profile | None
    start: int | None
    size: int | None
    cis: tuple[OldCI, ...]


def gpu_offer(gpu: Mapping[str, Any]) -> Offer:
    profiles = {}
    for raw in (gpu.get('mig') or {}).get('profiles') or []:
        placements = tuple(sorted((int(p['start']), int(p['size'])) for p in raw.get('placements') or []))
        profiles[raw['name']] = Profile(int(raw['id']), raw['name'], int(raw['slices'] or 0), int(raw['instances'] or 0),
                                        placements, raw.get('ofas'))
    compute = max((p.slices for p in profiles.values()), default=0)
    # The largest profile holds every engine of the GPU, so its OFA count is the GPU's; the media-extension
    # (+me) profiles each want that engine, which is why at most one of them fits beside the others.
    full = max(profiles.values(), key=lambda p: (p.slices, len(p.placements) == 1), default=None)
    known = all(p.ofas is not None for p in profiles.values())
    return Offer(profiles, compute, full.ofas if full is not None and known else None)


def _existing(gpu: Mapping[str, Any], offer: Offer) -> list[OldGI]:
    by_id = {p.profile_id: p for p in offer.profiles.values()}
    result = []
    for raw in (gpu.get('mig') or {}).get('gpu_instances') or []:
        profile = offer.profiles.get(raw.get('profile') or '') or by_id.get(raw.get('profile_id'))
        place = raw.get('placement') or {}
        cis = tuple(OldCI(int(c['id']), c.get('slices'), (c.get('placement') or {}).get('start'))
                    for c in raw.get('compute_instances') or [])
        gi_id = int(raw['id']) if raw.get('id') is not None else -1
        result.append(OldGI(gi_id, profile, place.get('start'), place.get('size'), tuple(sorted(cis, key=lambda c: c.ci_id))))
    return sorted(result, key=lambda g: g.gi_id)


def _pids(gpu: Mapping[str, Any], gi_id: int | None = None, ci_id: int | None = None) -> list[int]:
    """PIDs on the GPU, on one of its GPU instances, or on one compute instance of it."""
    pids = []
    for proc in gpu.get('processes') or []:
        if gi_id is not None and proc.get('gpu_instance_id') != gi_id:
            continue
        if ci_id is not None and proc.get('compute_instance_id') != ci_id:
            continue
        pids.append(int(proc['pid']))
    return sorted(pids)


# ---------------------------------------------------------------------------------------------------------
# The exact placement search, used for GPU instances (memory slices) and compute instances (compute slices)


@dataclass(frozen=True)
class _Piece:
    """Something to place: `key` names its kind; pieces with equal keys and spots are interchangeable."""

    key: tuple
    spots: tuple[tuple[int, int], ...]  # candidate (start, size)


def _add(a: Score, b: Score) -> Score:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])


def _elementwise_max(scores: Sequence[Score]) -> Score:
    return (max((s[0] for s in scores), default=0), max((s[1] for s in scores), default=0), max((s[2] for s in scores), default=0))


def _mask(start: int, size: int) -> int:
    return ((1 << size) - 1) << start


def best_placement(pieces: Sequence[_Piece], gains: Sequence[Sequence[Score]]) -> tuple[list[tuple[int, int]], Score] | None:
    """Place every piece on one of its spots without overlap, maximising the summed gain; None if impossible.

    Exact: a depth-first search over every non-overlapping choice (a GPU has at most 8 memory slices, so
    this is small), with a bound that stops branches that cannot beat the best so far. Interchangeable
    pieces take their spots in increasing order only, which cuts seven 1g instances' 7! orders to one.
    Ties keep the first solution found, and spots are tried lowest start first: the result is deterministic.
    `gains[i][j]` is what placing piece i on its spot j earns (keeping an existing instance there).
    """
    order = sorted(range(len(pieces)), key=lambda i: (len(pieces[i].spots), repr(pieces[i].key), repr(pieces[i].spots), i))
    count = len(order)
    masks = [[_mask(start, size) for start, size in piece.spots] for piece in pieces]
    bound = [ZERO] * (count + 1)
    for k in range(count - 1, -1, -1):
        bound[k] = _add(bound[k + 1], _elementwise_max(gains[order[k]]))
    twin = [k > 0 and pieces[order[k]] == pieces[order[k - 1]] for k in range(count)]
    choice = [0] * count
    best: list[Any] = [None, None]  # score, choice

    def visit(k: int, used: int, score: Score) -> None:
        if best[0] is not None and _add(score, bound[k]) <= best[0]:
            return  # cannot strictly beat the best found: ties keep the first
        if k == count:
            best[0], best[1] = score, list(choice)
            return
        piece = order[k]
        for j in range(choice[k - 1] + 1 if twin[k] else 0, len(masks[piece])):
            if not used & masks[piece][j]:
                choice[k] = j
                visit(k + 1, used | masks[piece][j], _add(score, gains[piece][j]))

    visit(0, 0, ZERO)
    if best[0] is None:
        return None
    spots: list[tuple[int, int]] = [(0, 0)] * len(pieces)
    for k, j in enumerate(best[1]):
        spots[order[k]] = pieces[order[k]].spots[j]
    return spots, best[0]


def ci_placements(gi_slices: int) -> dict[int, tuple[int, ...]]:
    """Compute-instance sizes a GPU instance of `gi_slices` compute slices offers, with their starts."""
    if gi_slices in CI_PLACEMENTS:
        return CI_PLACEMENTS[gi_slices]
    # A GI size the table does not know (a future GPU): the whole GI, and power-of-two CIs at aligned starts.
    sizes = {gi_slices: (0,)}
    size = 1
    while size < gi_slices:
        sizes[size] = tuple(range(0, gi_slices - size + 1, size))
        size *= 2
    return sizes


def _ci_pieces(gi_slices: int, cis: Sequence[int]) -> list[_Piece]:
    starts = ci_placements(gi_slices)
    return [_Piece((slices,), tuple((start, slices) for start in starts[slices])) for slices in cis]


def _cis_fit(gi_slices: int, cis: Sequence[int]) -> bool:
    pieces = _ci_pieces(gi_slices, cis)
    return best_placement(pieces, [[ZERO] * len(p.spots) for p in pieces]) is not None


@dataclass(frozen=True)
class _CiMatch:
    starts: tuple[int, ...]  # planned start per wanted CI (in the wanted order)
    kept: tuple[int | None, ...]  # existing CI id kept by each wanted CI, or None (created)
    score: Score


def _match_cis(gi_slices: int, cis: Sequence[int], old: Sequence[OldCI], gpu: Mapping[str, Any], gi_id: int | None) -> _CiMatch | None:
    """Place the wanted CIs in a GI, keeping as many of its existing CIs (same size, same start) as possible."""
    pieces = _ci_pieces(gi_slices, cis)
    at = {(c.start, c.slices): c for c in old if c.start is not None and c.slices is not None}
    gains: list[list[Score]] = []
    for piece in pieces:
        row = []
        for spot in piece.spots:
            keep = at.get(spot)
            row.append((1, len(_pids(gpu, gi_id, keep.ci_id)), 0) if keep and gi_id is not None else ZERO)
        gains.append(row)
    found = best_placement(pieces, gains)
    if found is None:
        return None
    spots, score = found
    kept = tuple(at[spot].ci_id if gi_id is not None and spot in at else None for spot in spots)
    return _CiMatch(tuple(start for start, _size in spots), kept, score)


# ---------------------------------------------------------------------------------------------------------
# The declaration, validated


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


@dataclass(frozen=True)
class InstanceSpec:
    source: str  # where it was declared, for messages: 'instances[2]' or "mig_devices['1c.3g.40gb']"
    profile: str
    start: int | None
    count: int
    cis: tuple[str, ...] | None


@dataclass(frozen=True)
class Entry:
    number: int
    name: str | None
    selector: Selector | None
    enabled: bool
    allow_disruption: bool
    instances: tuple[InstanceSpec, ...] | None
    mig_devices: tuple[tuple[str, int], ...] | None = None  # mig-parted counts, instead of instances
    valid: bool = True  # False: shape problems were reported; its selector is still checked, nothing is planned

    @property
    def label(self) -> str:
        return "'%s'" % self.name if self.name else str(self.number)


def _where(host: str, gpu: Mapping[str, Any] | None = None, entry: Entry | None = None) -> str:
    parts = ['host %s' % host]
    if gpu is not None:
        parts.append('GPU %s (%s)' % (gpu.get('index'), gpu.get('uuid') or 'no uuid'))
    if entry is not None:
        parts.append('entry %s' % entry.label)
    return ': '.join(parts) + ': '


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _str_list(value: Any, what: str) -> tuple[str, ...]:
    """A string or a non-empty list of strings (selectors accept both)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v for v in items):
        raise _Invalid('%s must be a string or a non-empty list of strings' % what)
    return tuple(items)


def normalize_device_id(text: str) -> tuple[str, str | None]:
    """'0x2330' -> ('2330', None); mig-parted's '0x233010DE' -> ('2330', '10de')."""
    match = _DEVICE_ID_RE.match(text.strip().lower())
    if not match:
        raise _Invalid("device_id %r is not a PCI device id such as '0x2330' or '0x233010DE'" % text)
    return match.group('device'), match.group('vendor')


def _index_list(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not value or not all(_is_int(v) and v >= 0 for v in value):
        raise _Invalid('devices must list GPU indexes as non-negative integers, got %r' % (value,))
    return tuple(value)


def parse_selector(value: Any) -> Selector:
    if value == 'all':
        return Selector(every=True)
    if isinstance(value, list):
        return Selector(indexes=_index_list(value))
    if not isinstance(value, Mapping) or not value:
        raise _Invalid("devices must be 'all', a list of GPU indexes, or a mapping of %s" % ', '.join(SELECTOR_KEYS))
    unknown = sorted(str(k) for k in value if k not in SELECTOR_KEYS)
    if unknown:
        raise _Invalid('devices: unknown key(s) %s (known: %s)' % (', '.join(unknown), ', '.join(SELECTOR_KEYS)))
    return Selector(
        indexes=_index_list(value['indexes']) if 'indexes' in value else None,
        uuids=_str_list(value['uuids'], 'devices.uuids') if 'uuids' in value else None,
        models=_str_list(value['model'], 'devices.model') if 'model' in value else None,
        device_ids=tuple(normalize_device_id(d) for d in _str_list(value['device_id'], 'devices.device_id')) if 'device_id' in value else None,
    )


def _bool(raw: Mapping[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise _Invalid('%s must be true or false, got %r' % (key, value))
    return value


def _instance(number: int, raw: Any) -> InstanceSpec:
    where = 'instances[%d]: ' % number
    if not isinstance(raw, Mapping):
        raise _Invalid(where + 'must be a mapping with a profile, got %r' % (raw,))
    unknown = sorted(str(k) for k in raw if k not in INSTANCE_KEYS)
    if unknown:
        raise _Invalid(where + 'unknown key(s) %s (known: %s)' % (', '.join(unknown), ', '.join(INSTANCE_KEYS)))
    profile, start, count, cis = raw.get('profile'), raw.get('start'), raw.get('count', 1), raw.get('compute_instances')
    if not isinstance(profile, str) or not profile:
        raise _Invalid(where + 'profile must be a profile name such as 3g.40gb, got %r' % (profile,))
    if start is not None and not (_is_int(start) and start >= 0):
        raise _Invalid(where + 'start must be a non-negative integer, got %r' % (start,))
    if not (_is_int(count) and count >= 1):
        raise _Invalid(where + 'count must be a positive integer, got %r' % (count,))
    if start is not None and count != 1:
        raise _Invalid(where + 'count must be 1 when start is given (one placement holds one instance), got %d' % count)
    if cis is not None and (not isinstance(cis, list) or not all(isinstance(c, str) for c in cis)):
        raise _Invalid(where + 'compute_instances must be a list such as [1c, 2c], got %r' % (cis,))
    profile = profile[4:] if profile.startswith('MIG ') else profile
    return InstanceSpec('instances[%d]' % number, profile, start, count, tuple(cis) if cis is not None else None)


def _attempt(problems: list[str], func: Any, *args: Any) -> Any:
    """Run one check; its _Invalid reason joins `problems` and None is returned instead."""
    try:
        return func(*args)
    except _Invalid as exc:
        problems.append(str(exc))
        return None


def _selector_of(raw: Mapping[str, Any]) -> Selector:
    if 'devices' not in raw:
        raise _Invalid('devices is required (all, a list of indexes, or a mapping)')
    return parse_selector(raw['devices'])


def _entry(number: int, raw: Any) -> tuple[Entry, list[str]]:
    """Check one entry's shape (not yet against any GPU); returns it and its problems."""
    if not isinstance(raw, Mapping):
        return Entry(number, None, None, True, False, None, None, False), ['must be a mapping with devices, got %r' % (raw,)]
    problems: list[str] = []
    name = raw.get('name')
    if name is not None and not (isinstance(name, str) and name):
        problems.append('name must be a non-empty string, got %r' % (name,))
        name = None
    unknown = sorted(str(k) for k in raw if k not in ENTRY_KEYS)
    if unknown:
        problems.append('unknown key(s) %s (known: %s)' % (', '.join(unknown), ', '.join(ENTRY_KEYS)))
    selector = _attempt(problems, _selector_of, raw)
    enabled = _attempt(problems, _bool, raw, 'enabled', True)
    disrupt = _attempt(problems, _bool, raw, 'allow_disruption', False)
    instances = _attempt(problems, _instances, raw.get('instances'), enabled is not False)
    counts = _attempt(problems, _mig_devices_of, raw, enabled is not False)
    return Entry(number, name, selector, enabled is not False, bool(disrupt), instances, counts, not problems), problems


def _instances(raw: Any, enabled: bool) -> tuple[InstanceSpec, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise _Invalid('instances must be a list, got %r' % (raw,))
    if raw and not enabled:
        raise _Invalid('instances need MIG mode: enabled is false but %d instance(s) are declared' % len(raw))
    return tuple(_instance(n, item) for n, item in enumerate(raw))


def _mig_devices_of(raw: Mapping[str, Any], enabled: bool) -> tuple[tuple[str, int], ...] | None:
    """mig-parted's counts of (GPU instance, compute instance) pairs, checked for shape only."""
    counts = raw.get('mig_devices')
    if counts is None:
        return None
    if 'instances' in raw:
        raise _Invalid('declare instances or mig_devices, not both')
    if not isinstance(counts, Mapping):
        raise _Invalid('mig_devices must be a mapping of profile to count such as {"1g.10gb": 2}, got %r' % (counts,))
    for key, count in counts.items():
        if not isinstance(key, str) or not _MIG_PARTED_KEY_RE.match(key) or not _is_int(count) or count < 0:
            raise _Invalid('mig_devices: %r: %r is not a MIG profile with a count such as "1g.10gb": 2' % (key, count))
    if any(counts.values()) and not enabled:
        raise _Invalid('mig_devices need MIG mode: enabled is false')
    return tuple(sorted((key, count) for key, count in counts.items() if count))


def parse_declaration(host: str, declaration: Any, errors: list[str]) -> list[Entry]:
    """Shape checks of the whole declaration; problems go to `errors`. Every entry is returned (see Entry.valid)."""
    if declaration is None:
        return []
    if not isinstance(declaration, list):
        errors.append(_where(host) + 'gpu_mig must be a list of entries, got %s' % type(declaration).__name__)
        return []
    entries = []
    for number, raw in enumerate(declaration, 1):
        entry, problems = _entry(number, raw)
        errors.extend(_where(host, entry=entry) + p for p in problems)
        entries.append(entry)
    return entries


def _selection_problems(selector: Selector, gpus: Sequence[Mapping[str, Any]]) -> list[str]:
    """Indexes and UUIDs that name no GPU here, or a selector that matches nothing."""
    indexes = [g.get('index') for g in gpus]
    uuids = [g.get('uuid') for g in gpus]
    problems = ['devices: GPU index %d is not on this host (it has %s)' % (i, indexes or 'no GPUs')
                for i in selector.indexes or () if i not in indexes]
    problems += ['devices: no GPU with uuid %s on this host' % u for u in selector.uuids or () if u not in uuids]
    if not problems and not any(selector.matches(g) for g in gpus):
        problems.append('devices selector matches no GPU on this host (models here: %s)' % (
            ', '.join(sorted({str(g.get('name')) for g in gpus})) or 'none'))
    return problems


def resolve(host: str, entries: Sequence[Entry], gpus: Sequence[Mapping[str, Any]], errors: list[str]) -> dict[int, Entry]:
    """GPU index -> the one entry that selects it."""
    chosen: dict[int, list[Entry]] = {}
    for entry in entries:
        problems = _selection_problems(entry.selector, gpus) if entry.selector else []
        errors.extend(_where(host, entry=entry) + p for p in problems)
        for gpu in gpus:
            if entry.selector and entry.selector.matches(gpu):
                chosen.setdefault(gpu['index'], []).append(entry)
    by_gpu = {g['index']: g for g in gpus}
    result = {}
    for index in sorted(chosen):
        picked = chosen[index]
        if len(picked) > 1:
            errors.append(_where(host, by_gpu[index]) + 'selected by entries %s: a GPU may be declared by one entry only' % (
                ', '.join(e.label for e in picked)))
        else:
            result[index] = picked[0]
    return result


# ---------------------------------------------------------------------------------------------------------
# Per-GPU planning


@dataclass(frozen=True)
class Want:
    """One wanted GPU instance: its profile, a fixed start or None, its compute instances' sizes."""

    profile: Profile
    start: int | None
    cis: tuple[int, ...]
    source: str  # 'instances[N]' for messages

    def spots(self) -> tuple[tuple[int, int], ...]:
        return tuple(p for p in self.profile.placements if self.start is None or p[0] == self.start)


@dataclass(frozen=True)
class PlacedCI:
    slices: int
    start: int
    kept_id: int | None


@dataclass(frozen=True)
class PlacedGI:
    profile: Profile
    start: int
    size: int
    kept_id: int | None
    cis: tuple[PlacedCI, ...]


def _ci_slices(text: str, profile: Profile) -> int:
    """'1c', '1c.3g.40gb' or the GI's own name (its whole size) -> compute slices."""
    if text == profile.name:
        return profile.slices
    match = _CI_NAME_RE.match(text)
    if not match or (match.group('gi') and match.group('gi') != profile.name):
        raise _Invalid("compute instance %r is not a compute instance of %s (write '1c' or '1c.%s')" % (text, profile.name, profile.name))
    slices = int(match.group('slices'))
    if slices not in ci_placements(profile.slices):
        raise _Invalid('%s offers compute instances of %s compute slices, not %d' % (
            profile.name, ', '.join('%dc' % s for s in sorted(ci_placements(profile.slices))), slices))
    return slices


def _want_cis(spec: InstanceSpec, profile: Profile) -> tuple[int, ...]:
    if spec.cis is None:
        return (profile.slices,)
    cis = tuple(sorted((_ci_slices(text, profile) for text in spec.cis), reverse=True))
    if not _cis_fit(profile.slices, cis):
        raise _Invalid('compute instances %s do not fit a %s GPU instance (%d compute slices)' % (
            '[%s]' % ', '.join('%dc' % s for s in cis), profile.name, profile.slices))
    return cis


def _want(spec: InstanceSpec, offer: Offer) -> list[Want]:
    where = spec.source + ': '
    profile = offer.profiles.get(spec.profile)
    if profile is None:
        raise _Invalid(where + 'profile %s is not offered by this GPU (it offers: %s)' % (spec.profile, ', '.join(offer.profiles) or 'none'))
    if not profile.placements:
        raise _Invalid(where + 'the facts list no placements for %s (gather facts through NVML)' % profile.name)
    if spec.start is not None and spec.start not in profile.starts:
        raise _Invalid(where + '%s cannot start at %d (starts: %s)' % (profile.name, spec.start, ', '.join(map(str, profile.starts))))
    try:
        cis = _want_cis(spec, profile)
    except _Invalid as exc:
        raise _Invalid(where + str(exc)) from exc
    return [Want(profile, spec.start, cis, spec.source)] * spec.count


def _budget_problems(wants: Sequence[Want], offer: Offer) -> list[str]:
    """Limits that do not depend on placement: per-profile instance counts, compute slices, the OFA engine."""
    problems = []
    counts: dict[str, int] = {}
    for want in wants:
        counts[want.profile.name] = counts.get(want.profile.name, 0) + 1
    for name, count in counts.items():
        if count > offer.profiles[name].instances:
            problems.append('%d instances of %s declared, this GPU allows %d' % (count, name, offer.profiles[name].instances))
    if problems:
        return problems  # the totals below would only repeat the same excess
    slices = sum(w.profile.slices for w in wants)
    if slices > offer.compute_slices:
        problems.append('the instances need %d compute slices, this GPU has %d' % (slices, offer.compute_slices))
    ofas = sum(w.profile.ofas or 0 for w in wants)
    if offer.ofas is not None and ofas > offer.ofas:
        users = sorted({w.profile.name for w in wants if w.profile.ofas})
        problems.append('%s each need the GPU\'s optical-flow/media engine, which it has %d of' % (', '.join(users), offer.ofas))
    return problems


def _unplaceable(wants: Sequence[Want]) -> str:
    memory = sum(w.profile.placements[0][1] for w in wants)
    parts = ['%s (%s)' % (w.profile.name, 'start %d, declared' % w.start if w.start is not None else
                          'starts ' + '/'.join(map(str, w.profile.starts))) for w in wants]
    return 'the instances cannot be placed without overlap: %s use %d memory slices and no choice of starts fits them' % (
        ', '.join(parts), memory)


class _GpuSolver:
    """Choose placements for the wanted instances, keeping as many existing ones as possible."""

    def __init__(self, gpu: Mapping[str, Any], wants: Sequence[Want], old: Sequence[OldGI]):
        self.gpu, self.wants = gpu, wants
        self.old_at = {(g.start, g.size): g for g in old if g.profile is not None and g.start is not None
                       and all(c.slices is not None and c.start is not None for c in g.cis)}
        self._ci_cache: dict[tuple, _CiMatch] = {}

    def _ci_match(self, want: Want, old: OldGI) -> _CiMatch:
        key = (want.profile.name, want.cis, old.gi_id)
        if key not in self._ci_cache:
            match = _match_cis(want.profile.slices, want.cis, old.cis, self.gpu, old.gi_id)
            if match is None:  # the CIs were checked to fit an empty GI, so this does not happen
                match = _CiMatch((), (), ZERO)
            self._ci_cache[key] = match
        return self._ci_cache[key]

    def _gain(self, want: Want, spot: tuple[int, int]) -> Score:
        old = self.old_at.get(spot)
        if old is None or old.profile is None or old.profile.name != want.profile.name:
            return ZERO
        match = self._ci_match(want, old)
        # processes on the GI itself (no CI id) survive too when the GI is kept
        loose = len([p for p in self.gpu.get('processes') or [] if p.get('gpu_instance_id') == old.gi_id and p.get('compute_instance_id') is None])
        return (1, match.score[1] + loose, match.score[0])

    def solve(self) -> list[PlacedGI] | None:
        pieces = [_Piece((w.profile.name, w.cis), w.spots()) for w in self.wants]
        gains = [[self._gain(w, spot) for spot in piece.spots] for w, piece in zip(self.wants, pieces)]
        found = best_placement(pieces, gains)
        if found is None:
            return None
        return sorted((self._placed(w, spot) for w, spot in zip(self.wants, found[0])), key=lambda p: p.start)

    def _placed(self, want: Want, spot: tuple[int, int]) -> PlacedGI:
        old = self.old_at.get(spot)
        if old is not None and old.profile is not None and old.profile.name == want.profile.name:
            match = self._ci_match(want, old)
            kept_id: int | None = old.gi_id
        else:
            match = _match_cis(want.profile.slices, want.cis, (), self.gpu, None) or _CiMatch((), (), ZERO)
            kept_id = None
        cis = sorted((PlacedCI(s, st, k) for s, st, k in zip(want.cis, match.starts, match.kept)), key=lambda c: c.start)
        return PlacedGI(want.profile, spot[0], spot[1], kept_id, tuple(cis))


def _ci_name(slices: int, profile: Profile | None) -> str:
    return '%dc.%s' % (slices, profile.name if profile else 'unknown')


def _base(gpu: Mapping[str, Any]) -> dict[str, Any]:
    return {'gpu': gpu['index'], 'uuid': gpu.get('uuid')}


@dataclass
class _StepSink:
    """Steps of one GPU, and the processes each would stop."""

    gpu: Mapping[str, Any]
    destroys: list[dict] = field(default_factory=list)
    creates: list[dict] = field(default_factory=list)

    def destroy_ci(self, gi: OldGI, ci: OldCI) -> None:
        self.destroys.append(dict(_base(self.gpu), action='destroy_compute_instance', gpu_instance_id=gi.gi_id, compute_instance_id=ci.ci_id,
                                  profile=_ci_name(ci.slices or 0, gi.profile), slices=ci.slices, pids=_pids(self.gpu, gi.gi_id, ci.ci_id)))

    def destroy_gi(self, gi: OldGI) -> None:
        self.destroys.append(dict(_base(self.gpu), action='destroy_gpu_instance', gpu_instance_id=gi.gi_id,
                                  profile=gi.profile.name if gi.profile else None, profile_id=gi.profile.profile_id if gi.profile else None,
                                  start=gi.start, size=gi.size, pids=_pids(self.gpu, gi.gi_id)))

    def create_gi(self, placed: PlacedGI) -> None:
        self.creates.append(dict(_base(self.gpu), action='create_gpu_instance', profile=placed.profile.name,
                                 profile_id=placed.profile.profile_id, start=placed.start, size=placed.size))

    def create_ci(self, placed: PlacedGI, ci: PlacedCI) -> None:
        self.creates.append(dict(_base(self.gpu), action='create_compute_instance', gpu_instance_id=placed.kept_id,
                                 gpu_instance_start=placed.start, gpu_instance_profile=placed.profile.name,
                                 profile=_ci_name(ci.slices, placed.profile), profile_id=CI_PROFILE_IDS.get(ci.slices, ci.slices),
                                 slices=ci.slices, start=ci.start))


def _instance_steps(sink: _StepSink, old: Sequence[OldGI], layout: Sequence[PlacedGI] | None) -> None:
    """Destroy what the layout does not keep (CIs first: a GI with CIs cannot be destroyed), create the rest."""
    kept = {p.kept_id: p for p in layout or () if p.kept_id is not None}
    doomed = [g for g in old if g.gi_id not in kept]
    for gi in old:
        keep_cis = {c.kept_id for c in kept[gi.gi_id].cis} if gi.gi_id in kept else set()
        for ci in gi.cis:
            if ci.ci_id not in keep_cis:
                sink.destroy_ci(gi, ci)
    for gi in doomed:
        sink.destroy_gi(gi)
    for placed in layout or ():
        if placed.kept_id is None:
            sink.create_gi(placed)
    for placed in layout or ():
        for ci in placed.cis:
            if ci.kept_id is None:
                sink.create_ci(placed, ci)


def _declared(layout: Sequence[PlacedGI]) -> list[dict]:
    """A layout in the declaration's own format (for diff and export)."""
    result = []
    for placed in sorted(layout, key=lambda p: p.start):
        item: dict[str, Any] = {'profile': placed.profile.name, 'start': placed.start}
        slices = [c.slices for c in sorted(placed.cis, key=lambda c: c.start)]
        if slices != [placed.profile.slices]:
            item['compute_instances'] = ['%dc' % s for s in slices]
        result.append(item)
    return result


def _as_placed(old: Sequence[OldGI]) -> list[PlacedGI]:
    return [PlacedGI(g.profile, g.start or 0, g.size or 0, g.gi_id,
                     tuple(PlacedCI(c.slices or 0, c.start or 0, c.ci_id) for c in g.cis)) for g in old if g.profile is not None]


@dataclass
class GpuPlan:
    """The plan for one selected GPU."""

    index: int
    uuid: str | None
    entry: str
    enabled: bool
    steps: list[dict]
    deferred: list[dict]
    reboot_required: bool
    before: dict
    after: dict
    instances: list[PlacedGI] | None  # the wanted layout, None when the entry leaves instances alone

    def desired(self) -> dict:
        instances = None
        if self.instances is not None:
            instances = [{'profile': p.profile.name, 'start': p.start, 'compute_instances': sorted((c.slices for c in p.cis), reverse=True)}
                         for p in self.instances]
        return {'gpu': self.index, 'uuid': self.uuid, 'entry': self.entry, 'enabled': self.enabled,
                'reboot_required': self.reboot_required, 'instances': instances}


@dataclass
class HostPlan:
    host: str
    gpus: list[GpuPlan]

    @property
    def steps(self) -> list[dict]:
        return [step for gpu in self.gpus for step in gpu.steps]

    @property
    def changed(self) -> bool:
        return bool(self.steps)

    @property
    def reboot_required(self) -> list[dict]:
        return [{'gpu': g.index, 'uuid': g.uuid, 'reason': 'MIG mode change needs a GPU reset, which is not possible here'}
                for g in self.gpus if g.reboot_required]

    @property
    def deferred(self) -> list[dict]:
        return [{'gpu': g.index, 'uuid': g.uuid, 'reason': 'runs after the reboot that makes MIG mode current', 'steps': g.deferred}
                for g in self.gpus if g.deferred]

    @property
    def before(self) -> list[dict]:
        return [g.before for g in self.gpus]

    @property
    def after(self) -> list[dict]:
        return [g.after for g in self.gpus]

    @property
    def desired(self) -> list[dict]:
        return [g.desired() for g in self.gpus]

    def as_dict(self) -> dict:
        return {'changed': self.changed, 'steps': self.steps, 'reboot_required': self.reboot_required, 'deferred': self.deferred,
                'before': self.before, 'after': self.after, 'desired': self.desired}


@dataclass(frozen=True)
class _Context:
    host: str
    reset_possible: Mapping[Any, bool]

    def resettable(self, gpu: Mapping[str, Any]) -> bool:
        for key in (gpu.get('index'), str(gpu.get('index')), gpu.get('uuid')):
            if key in self.reset_possible:
                return bool(self.reset_possible[key])
        return True


def _gpu_problems(gpu: Mapping[str, Any], entry: Entry) -> list[str]:
    if gpu.get('status') == 'lost':
        return ['the GPU is lost (%s); it cannot be planned' % (gpu.get('error') or 'no answer')]
    mig = gpu.get('mig') or {}
    if entry.enabled and not mig.get('capable'):
        return ['%s does not support MIG' % (gpu.get('name') or 'this GPU')]
    return []


def _pack(gi_slices: int, cis: Sequence[int]) -> list[list[int]]:
    """mig-parted fills a GPU instance with compute instances until one no longer fits: first fit, largest first."""
    bins: list[list[int]] = []
    for slices in sorted(cis, reverse=True):
        for current in bins:
            if _cis_fit(gi_slices, current + [slices]):
                current.append(slices)
                break
        else:
            bins.append([slices])
    return bins


def _pair_key(match: re.Match, profile: Profile) -> tuple[str, int]:
    return profile.name, int(match.group('ci')) if match.group('ci') else profile.slices


def _specs_from_counts(counts: Sequence[tuple[str, int]], offer: Offer) -> list[InstanceSpec]:
    """mig-parted counts -> instances: whole-GI pairs are GIs; smaller CIs are packed into as few GIs as fit."""
    whole: dict[str, int] = {}
    split: dict[str, list[int]] = {}
    for key, count in counts:
        match = _MIG_PARTED_KEY_RE.match(key)
        profile = offer.profiles.get(match.group('gi')) if match else None
        if match is None or profile is None:
            raise _Invalid("mig_devices['%s']: profile %s is not offered by this GPU (it offers: %s)" % (
                key, match.group('gi') if match else key, ', '.join(offer.profiles) or 'none'))
        name, slices = _pair_key(match, profile)
        if slices not in ci_placements(profile.slices):
            raise _Invalid("mig_devices['%s']: %s offers compute instances of %s compute slices, not %d" % (
                key, name, ', '.join('%dc' % s for s in sorted(ci_placements(profile.slices))), slices))
        if slices == profile.slices:
            whole[name] = whole.get(name, 0) + count
        else:
            split.setdefault(name, []).extend([slices] * count)
    specs = [InstanceSpec("mig_devices['%s']" % name, name, None, count, None) for name, count in whole.items()]
    for name, cis in split.items():
        for packed in _pack(offer.profiles[name].slices, cis):
            specs.append(InstanceSpec("mig_devices['%dc.%s']" % (packed[0], name), name, None, 1, tuple('%dc' % s for s in packed)))
    return specs


def _pair_counts(old: Sequence[OldGI]) -> Counter:
    """What mig-parted sees on a GPU: (GPU-instance profile, compute slices) per compute instance."""
    return Counter((g.profile.name if g.profile else None, c.slices) for g in old for c in g.cis)


def _wanted_pairs(counts: Sequence[tuple[str, int]], offer: Offer) -> Counter | None:
    pairs: Counter = Counter()
    for key, count in counts:
        match = _MIG_PARTED_KEY_RE.match(key)
        profile = offer.profiles.get(match.group('gi')) if match else None
        if match is None or profile is None:
            return None
        pairs[_pair_key(match, profile)] += count
    return pairs


def _specs(entry: Entry, offer: Offer) -> Sequence[InstanceSpec] | None:
    if entry.mig_devices is not None:
        return _specs_from_counts(entry.mig_devices, offer)
    return entry.instances


def _wants(entry: Entry, offer: Offer) -> tuple[list[Want] | None, list[str]]:
    if not entry.enabled or (entry.instances is None and entry.mig_devices is None):
        return None, []
    wants: list[Want] = []
    problems: list[str] = []
    specs = _attempt(problems, _specs, entry, offer)
    for spec in specs or ():
        try:
            wants.extend(_want(spec, offer))
        except _Invalid as exc:
            problems.append(str(exc))
    if problems:
        return None, problems
    problems = _budget_problems(wants, offer)
    return (None, problems) if problems else (wants, [])


def _layout(gpu: Mapping[str, Any], entry: Entry, offer: Offer, old: Sequence[OldGI]) -> tuple[list[PlacedGI] | None, list[str]]:
    if entry.enabled and entry.mig_devices is not None and _pair_counts(old) == _wanted_pairs(entry.mig_devices, offer):
        # mig-parted's own test of "applied": the same counts, wherever they sit and however they are grouped
        return _as_placed(old), []
    wants, problems = _wants(entry, offer)
    if wants is None:
        return None, problems
    unknown = [g for g in old if g.profile is None or g.start is None]
    if unknown:
        return None, ['the facts lack the profile or placement of GPU instance(s) %s (nvidia-smi backend?); gather facts through NVML'
                      % ', '.join(str(g.gi_id) for g in unknown)]
    layout = _GpuSolver(gpu, wants, old).solve()
    if layout is None:
        return None, [_unplaceable(wants)]
    return layout, []


def _safety(sink: _StepSink, mode_steps: Sequence[dict], entry: Entry) -> list[str]:
    """Steps that would stop processes, unless the entry allows disruption."""
    if entry.allow_disruption:
        return []
    problems = []
    for step in sink.destroys:
        if step['pids']:
            what = ('compute instance %d of GPU instance %d' % (step['compute_instance_id'], step['gpu_instance_id'])
                    if step['action'] == 'destroy_compute_instance' else
                    'GPU instance %d (%s at %s)' % (step['gpu_instance_id'], step['profile'], step['start']))
            problems.append('destroying %s would stop process(es) %s; set allow_disruption: true to allow it' % (
                what, ', '.join(map(str, step['pids']))))
    for step in mode_steps:
        if step['pids']:
            problems.append('%s would disrupt process(es) %s using the GPU; set allow_disruption: true to allow it' % (
                'changing the MIG mode' if step['action'] == 'set_mig_mode' else 'resetting the GPU', ', '.join(map(str, step['pids']))))
    return problems


def _mode_steps(ctx: _Context, gpu: Mapping[str, Any], enabled: bool) -> tuple[list[dict], bool]:
    """set_mig_mode where the pending mode differs, reset_gpu where the current one does; (steps, reboot needed)."""
    mig = gpu.get('mig') or {}
    current, pending = bool(mig.get('current')), bool(mig.get('pending'))
    steps = []
    pids = _pids(gpu)
    if pending != enabled:
        steps.append(dict(_base(gpu), action='set_mig_mode', enabled=enabled, current=current, pending=pending, pids=pids))
    if current == enabled:
        return steps, False
    if not ctx.resettable(gpu):
        return steps, True
    steps.append(dict(_base(gpu), action='reset_gpu', bus_id=(gpu.get('pci') or {}).get('bus_id'), pids=pids))
    return steps, False


def _before(gpu: Mapping[str, Any], old: Sequence[OldGI]) -> dict:
    current = bool((gpu.get('mig') or {}).get('current'))
    state: dict[str, Any] = {'devices': [gpu['index']], 'enabled': current}
    if current:
        state['instances'] = _declared(_as_placed(old))
    return state


def _after(gpu: Mapping[str, Any], entry: Entry, old: Sequence[OldGI], layout: Sequence[PlacedGI] | None) -> dict:
    state: dict[str, Any] = {'devices': [gpu['index']], 'enabled': entry.enabled}
    if entry.enabled:
        # an entry without instances leaves the existing ones as they are
        state['instances'] = _declared(layout if layout is not None else _as_placed(old))
    return state


def plan_gpu(ctx: _Context, gpu: Mapping[str, Any], entry: Entry, errors: list[str]) -> GpuPlan | None:
    """Validate the entry against this GPU and plan it; problems go to `errors` (and None is returned)."""
    where = _where(ctx.host, gpu, entry)
    old = _existing(gpu, gpu_offer(gpu)) if (gpu.get('mig') or {}).get('current') else []
    problems = _gpu_problems(gpu, entry)
    layout = None
    if not problems:
        layout, problems = _layout(gpu, entry, gpu_offer(gpu), old)
    if problems:
        errors.extend(where + p for p in problems)
        return None
    sink = _StepSink(gpu)
    if entry.enabled and layout is not None:
        _instance_steps(sink, old, layout)
    elif not entry.enabled:
        _instance_steps(sink, old, [])  # MIG mode cannot be disabled while GPU instances exist
    mode_steps, reboot = _mode_steps(ctx, gpu, entry.enabled)
    problems = _safety(sink, mode_steps, entry)
    if problems:
        errors.extend(where + p for p in problems)
        return None
    # Without a reset the new mode is not current yet: creating instances waits for the reboot.
    deferred, creates = (sink.creates, []) if reboot else ([], sink.creates)
    return GpuPlan(gpu['index'], gpu.get('uuid'), entry.label, entry.enabled, sink.destroys + mode_steps + creates, deferred, reboot,
                   _before(gpu, old), _after(gpu, entry, old, layout), layout if entry.enabled else None)


def plan_host(host: str, gpus: Sequence[Mapping[str, Any]], declaration: Any,
              reset_possible: Mapping[Any, bool] | None = None) -> HostPlan:
    """Validate `declaration` (gpu_mig) against the host's GPU facts and return the minimal ordered plan.

    `reset_possible` maps a GPU index or uuid to whether `nvidia-smi -r` can reset it (default true); where it
    cannot (pass-through VMs, some clouds) a mode change waits for a reboot. Raises MigPlanError listing
    every problem of the host before any step is produced.
    """
    errors: list[str] = []
    gpus = sorted(gpus, key=lambda g: g['index'])
    entries = parse_declaration(host, declaration, errors)
    selected = resolve(host, entries, gpus, errors)
    ctx = _Context(host, reset_possible or {})
    plans = []
    for gpu in gpus:
        if gpu['index'] in selected and selected[gpu['index']].valid:
            plan = plan_gpu(ctx, gpu, selected[gpu['index']], errors)
            if plan is not None:
                plans.append(plan)
    if errors:
        raise MigPlanError(host, errors)
    return HostPlan(host, plans)


def validate(host: str, gpus: Sequence[Mapping[str, Any]], declaration: Any) -> list[str]:
    """Every problem plan_host would raise, as a list (empty when the declaration can be planned)."""
    try:
        plan_host(host, gpus, declaration)
    except MigPlanError as exc:
        return exc.errors
    return []


# ---------------------------------------------------------------------------------------------------------
# Verify after apply


def _observed(gpu: Mapping[str, Any]) -> Counter:
    return Counter((g.profile.name if g.profile else None, g.start, tuple(sorted((c.slices or 0 for c in g.cis), reverse=True)))
                   for g in _existing(gpu, gpu_offer(gpu)))


def _describe(item: tuple) -> str:
    profile, start, cis = item
    return '%s at %s with compute instances [%s]' % (profile, start, ', '.join('%dc' % s for s in cis))


def verify(desired: Sequence[Mapping[str, Any]], gpus_after: Sequence[Mapping[str, Any]]) -> list[str]:
    """What the GPUs observed after apply do not match (plan.desired); an empty list means all matched."""
    by_index = {g['index']: g for g in gpus_after}
    mismatches = []
    for want in desired:
        gpu = by_index.get(want['gpu'])
        where = 'GPU %s (%s): ' % (want['gpu'], want.get('uuid'))
        if gpu is None or (want.get('uuid') and gpu.get('uuid') != want['uuid']):
            mismatches.append(where + 'not found after apply')
            continue
        mismatches.extend(where + m for m in _verify_gpu(want, gpu))
    return mismatches


def _verify_gpu(want: Mapping[str, Any], gpu: Mapping[str, Any]) -> list[str]:
    mig = gpu.get('mig') or {}
    problems = []
    if bool(mig.get('pending')) != want['enabled']:
        problems.append('pending MIG mode is %s, wanted %s' % (bool(mig.get('pending')), want['enabled']))
    if want.get('reboot_required'):
        return problems  # the mode becomes current, and instances can be made, only after the reboot
    if bool(mig.get('current')) != want['enabled']:
        problems.append('current MIG mode is %s, wanted %s' % (bool(mig.get('current')), want['enabled']))
    if want['enabled'] and want.get('instances') is not None and not problems:
        wanted = Counter((i['profile'], i['start'], tuple(sorted(i['compute_instances'], reverse=True))) for i in want['instances'])
        seen = _observed(gpu)
        problems += ['missing GPU instance ' + _describe(i) for i in sorted((wanted - seen).elements(), key=repr)]
        problems += ['unexpected GPU instance ' + _describe(i) for i in sorted((seen - wanted).elements(), key=repr)]
    return problems


# ---------------------------------------------------------------------------------------------------------
# Export the current state in the planner's own format


def _exportable(gpus: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [g for g in sorted(gpus, key=lambda g: g['index']) if (g.get('mig') or {}).get('capable') and g.get('status') != 'lost']


def _current_layout(gpu: Mapping[str, Any]) -> list[PlacedGI]:
    old = _existing(gpu, gpu_offer(gpu))
    unknown = [g.gi_id for g in old if g.profile is None or g.start is None or any(c.slices is None for c in g.cis)]
    if unknown:
        raise MigPlanError(None, ['GPU %s (%s): the facts lack the profile or placement of GPU instance(s) %s; gather facts through NVML'
                                  % (gpu['index'], gpu.get('uuid'), ', '.join(map(str, unknown)))])
    return _as_placed(old)


def _group(gpus: Sequence[Mapping[str, Any]], states: Sequence[dict], everything: int) -> list[dict]:
    """One entry per distinct state, naming its GPUs ('all' when one state covers every GPU of the host)."""
    groups: dict[str, tuple[list[int], dict]] = {}
    for gpu, state in zip(gpus, states):
        groups.setdefault(repr(state), ([], state))[0].append(gpu['index'])
    entries = []
    for indexes, state in groups.values():
        entries.append(dict({'devices': 'all' if len(indexes) == everything else indexes}, **state))
    return entries


def export_declaration(gpus: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The current MIG state as a gpu_mig declaration (placements included); planning it gives no steps."""
    usable = _exportable(gpus)
    states = []
    for gpu in usable:
        current = bool(gpu['mig'].get('current'))
        state: dict[str, Any] = {'enabled': current}
        if current:
            state['instances'] = _declared(_current_layout(gpu))
        states.append(state)
    return _group(usable, states, len(gpus))


# ---------------------------------------------------------------------------------------------------------
# NVIDIA's own formats: the device-filter of mig-parted and vgpu-device-manager, and their export shape
#
# Both tools walk the entries of a label in order and, for each GPU, apply every entry whose device-filter and
# devices select it (api/spec/v1/helpers.go, cmd/*/assert/assert.go: WalkSelected...ForEachGPU). An entry that
# selects no GPU is therefore simply never applied. A device-filter is one string or a list of strings, each a
# 32-bit number in Go's strconv.ParseUint(text, 0, 32) syntax (so '0x233010DE' and '0x233010de' alike): the PCI
# device id in the high 16 bits and the vendor id in the low 16 bits, optionally ':' and the subsystem device and
# vendor ids in the same form (pkg/types/device.go). '0x2330' is device 0x0000 of vendor 0x2330 there.


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
        raise _Invalid("device-filter %r is not a PCI id such as '0x233010DE' (device and vendor id) or '0x25B610DE:0x14A910DE' "
                       '(with the subsystem ids)' % text) from exc
    if primary >> 16 == 0:
        raise _Invalid("device-filter %r is device 0x0000 of vendor 0x%04X as NVIDIA's tools read it, which selects no GPU: "
                       "write the device id followed by the vendor id, such as '0x%04X10DE'" % (text, primary, primary))
    return DeviceFilter(text, primary >> 16, primary & 0xFFFF,
                        (subsystem >> 16, subsystem & 0xFFFF) if subsystem is not None else None)


def parse_device_filter(value: Any) -> tuple[DeviceFilter, ...]:
    """A device-filter (absent, '', one id or a list of ids) -> its filters; () selects every GPU, as in NVIDIA's tools."""
    if value is None or value == '':
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise _Invalid("device-filter must be a PCI id such as '0x233010DE' or a list of them, got %r" % (value,))
    return tuple(_one_filter(item.strip()) for item in items)


def _nvidia_indexes(value: Any) -> tuple[int, ...] | None:
    """devices: 'all' (None) or a list of GPU indexes; an index the host lacks selects nothing, as in NVIDIA's tools."""
    if value == 'all':
        return None
    if not isinstance(value, list) or not all(_is_int(v) and v >= 0 for v in value):
        raise _Invalid("devices must be 'all' or a list of GPU indexes, got %r" % (value,))
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


def _nvidia_config(config: Any, label: Any, configs_key: str, tool: str, error: type) -> list:
    """The label's entries of a v1 config of mig-parted ('mig-configs') or vgpu-device-manager ('vgpu-configs')."""
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
    return configs[label]


# ---------------------------------------------------------------------------------------------------------
# mig-parted v1


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
            state['mig-devices'] = _mig_devices(_current_layout(gpu))
        states.append(state)
    return {'version': 'v1', 'mig-configs': {label: nvidia_export_entries(usable, states)}}


@dataclass(frozen=True)
class PartedEntry:
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
    if not isinstance(raw, Mapping):
        raise _Invalid('must be a mapping with devices and mig-enabled, got %r' % (raw,))
    unknown = sorted(str(k) for k in raw if k not in MIG_PARTED_ENTRY_KEYS)
    if unknown:
        raise _Invalid('unknown key(s) %s (known: %s)' % (', '.join(unknown), ', '.join(MIG_PARTED_ENTRY_KEYS)))
    missing = [key for key in ('devices', 'mig-enabled') if key not in raw]
    if missing:
        raise _Invalid('%s %s required' % (' and '.join(missing), 'is' if len(missing) == 1 else 'are'))
    enabled = raw['mig-enabled']
    if not isinstance(enabled, bool):
        raise _Invalid('mig-enabled must be true or false, got %r' % (enabled,))
    selector = nvidia_selector(raw)
    counts = raw.get('mig-devices')
    if enabled and counts is None:
        raise _Invalid('mig-devices is required when mig-enabled is true, as in mig-parted (mig-devices: {} for no instances)')
    if counts is not None:
        _mig_devices_of({'mig_devices': counts}, True)  # the same checks as the declaration's own key
        if not enabled and counts:
            raise _Invalid('mig-devices must be empty when mig-enabled is false, as in mig-parted, got %r' % (dict(counts),))
        if counts and not any(counts.values()):
            raise _Invalid('every count in mig-devices is 0, which mig-parted refuses (mig-devices: {} for no instances)')
    return PartedEntry(number, '%s[%d]' % (label, number), selector, enabled,
                       {k: v for k, v in counts.items() if v} if enabled and counts is not None else None)


def parse_mig_parted(config: Any, label: str) -> list[PartedEntry]:
    """A mig-parted v1 config's label, checked for shape -> its entries (named '<label>[N]', N from 0).

    Which GPUs each entry declares depends on the host: `plan_mig_parted` decides it from the GPUs' facts.
    Raises MigPlanError naming the label and entry of every problem.
    """
    items = _nvidia_config(config, label, 'mig-configs', 'mig-parted', MigPlanError)
    entries, errors = [], []
    for number, raw in enumerate(items):
        try:
            entries.append(_parted_entry(label, number, raw))
        except _Invalid as exc:
            errors.append("mig-parted config: label %r: entry %d: %s" % (label, number, exc))
    if errors:
        raise MigPlanError(None, errors)
    return entries


def _parted_where(host: str, gpu: Mapping[str, Any], entry: PartedEntry) -> str:
    return "host %s: GPU %s (%s): entry '%s': " % (host, gpu.get('index'), gpu.get('uuid') or 'no uuid', entry.name)


def _parted_skips(host: str, entry: PartedEntry, gpu: Mapping[str, Any], errors: list[str]) -> bool:
    """mig-parted's rule for a GPU that is not MIG-capable (cmd/nvidia-mig-parted/apply/mode.go, config.go): an entry
    with devices: all, or with mig-enabled: false, skips it; one naming its index with mig-enabled: true is an error."""
    if gpu.get('status') == 'lost' or (gpu.get('mig') or {}).get('capable'):
        return False  # a lost GPU goes to the planner, which refuses it
    if entry.enabled and entry.selector.indexes is not None:
        errors.append(_parted_where(host, gpu, entry) + '%s is not MIG-capable: mig-parted refuses to enable MIG on a GPU named '
                      'by its index (devices: all skips such GPUs)' % (gpu.get('name') or 'this GPU'))
    return True


def _overridden_problems(host: str, gpu: Mapping[str, Any], entry: PartedEntry, last: PartedEntry) -> list[str]:
    """mig-parted applies an entry that a later one overrides on this GPU too, and stops if it cannot: so must it fit."""
    if not entry.enabled or entry.mig_devices == last.mig_devices:
        return []
    parsed, problems = _entry(entry.number, entry.native([gpu['index']]))
    if not problems:
        problems = _gpu_problems(gpu, parsed) or _layout(gpu, parsed, gpu_offer(gpu), [])[1]
    return [_parted_where(host, gpu, entry) + "mig-parted applies it before entry '%s' on this GPU, and it cannot be applied: %s" % (
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
            errors.append("host %s: GPU %s (%s): entries %s select this GPU with different mig-enabled values; mig-parted sets "
                          'the mode of each in turn and then fails to apply the other' % (
                              host, gpu['index'], gpu.get('uuid') or 'no uuid', ', '.join("'%s'" % e.name for e in applying)))
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
                    reset_possible: Mapping[Any, bool] | None = None) -> HostPlan:
    """Plan a parsed mig-parted label (parse_mig_parted) on this host with mig-parted's meaning (resolve_mig_parted).

    mig-devices keep mig-parted's meaning too: a GPU whose counts of (GPU instance, compute instance) pairs already
    match is left alone, wherever its instances sit; otherwise smaller compute instances ('1c.3g.40gb': 3) are packed
    into as few GPU instances as fit, as mig-parted does, and that layout is planned minimally. Raises MigPlanError
    with every problem of the host before any step exists.
    """
    errors: list[str] = []
    declaration = resolve_mig_parted(host, entries, gpus, errors)
    try:
        plan = plan_host(host, gpus, declaration, reset_possible)
    except MigPlanError as exc:
        errors.extend(exc.errors)
        plan = None
    if errors or plan is None:
        raise MigPlanError(host, errors)
    return plan
