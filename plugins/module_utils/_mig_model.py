# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""The MIG model: what a GPU offers and holds, read from its facts (`gpuvirt.fleet.gpu_facts`, `ansible_facts.gpus`).

Profiles, placements and instance limits come from the facts of each GPU (never from a static table of names), so a
driver that renames a profile is followed, not fought. Only compute-instance placements inside a GPU instance come
from a table (CI_PLACEMENTS): NVML reports CI profiles only for a GPU instance that already exists. A layout, existing
or planned, is a list of PlacedGI. Pure: nothing here imports pynvml, reads a file or runs a command.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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


def existing_instances(gpu: Mapping[str, Any], offer: Offer) -> list[OldGI]:
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


def gpu_pids(gpu: Mapping[str, Any], gi_id: int | None = None, ci_id: int | None = None) -> list[int]:
    """PIDs on the GPU, on one of its GPU instances, or on one compute instance of it."""
    pids = []
    for proc in gpu.get('processes') or []:
        if gi_id is not None and proc.get('gpu_instance_id') != gi_id:
            continue
        if ci_id is not None and proc.get('compute_instance_id') != ci_id:
            continue
        pids.append(int(proc['pid']))
    return sorted(pids)


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


def as_placed(old: Sequence[OldGI]) -> list[PlacedGI]:
    return [PlacedGI(g.profile, g.start or 0, g.size or 0, g.gi_id,
                     tuple(PlacedCI(c.slices or 0, c.start or 0, c.ci_id) for c in g.cis)) for g in old if g.profile is not None]


def declared_layout(layout: Sequence[PlacedGI]) -> list[dict]:
    """A layout in the declaration's own format (for diff and export)."""
    result = []
    for placed in sorted(layout, key=lambda p: p.start):
        item: dict[str, Any] = {'profile': placed.profile.name, 'start': placed.start}
        slices = [c.slices for c in sorted(placed.cis, key=lambda c: c.start)]
        if slices != [placed.profile.slices]:
            item['compute_instances'] = ['%dc' % s for s in slices]
        result.append(item)
    return result
