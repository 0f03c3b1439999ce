# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""The MIG placement solver: what an entry wants on one GPU, and where it goes, keeping what already matches.

`layout_for(gpu, entry, offer, old)` checks the entry's instances against what the GPU offers (profiles, placements,
instance limits, compute slices, the shared media engine) and returns the wanted layout, or the problems. mig-parted's
`mig_devices` counts become instances first: smaller compute instances are packed into as few GPU instances as fit,
and counts the GPU already holds are met wherever they sit. Placement is an exact search (`best_placement`) that
keeps as many existing GPU instances as any legal layout can, then prefers keeping the ones processes use, then
compute instances, then the lowest starts. Pure: nothing here imports pynvml, reads a file or runs a command.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Tuple

from ansible_collections.gpuvirt.fleet.plugins.module_utils._mig_declaration import MIG_DEVICES_KEY_RE, Entry, InstanceSpec
from ansible_collections.gpuvirt.fleet.plugins.module_utils._mig_model import (
    Offer, OldCI, OldGI, PlacedCI, PlacedGI, Profile, as_placed, ci_placements, gpu_pids)
from ansible_collections.gpuvirt.fleet.plugins.module_utils._selector import Invalid, attempt

# A plan's quality, compared as a tuple: (GPU instances kept, processes left running, compute instances kept).
Score = Tuple[int, int, int]  # typing.Tuple: managed hosts may run a Python older than 3.9
ZERO: Score = (0, 0, 0)

_CI_NAME_RE = re.compile(r'^(?P<slices>\d+)c(?:\.(?P<gi>.+))?$')


@dataclass(frozen=True)
class Piece:
    """Something to place: `key` names its kind; pieces with equal keys and spots are interchangeable."""

    key: tuple
    spots: tuple[tuple[int, int], ...]  # candidate (start, size)


def _add(a: Score, b: Score) -> Score:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])


def _elementwise_max(scores: Sequence[Score]) -> Score:
    return (max((s[0] for s in scores), default=0), max((s[1] for s in scores), default=0), max((s[2] for s in scores), default=0))


def _mask(start: int, size: int) -> int:
    return ((1 << size) - 1) << start


def best_placement(pieces: Sequence[Piece], gains: Sequence[Sequence[Score]]) -> tuple[list[tuple[int, int]], Score] | None:
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


def _ci_pieces(gi_slices: int, cis: Sequence[int]) -> list[Piece]:
    starts = ci_placements(gi_slices)
    return [Piece((slices,), tuple((start, slices) for start in starts[slices])) for slices in cis]


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
            row.append((1, len(gpu_pids(gpu, gi_id, keep.ci_id)), 0) if keep and gi_id is not None else ZERO)
        gains.append(row)
    found = best_placement(pieces, gains)
    if found is None:
        return None
    spots, score = found
    kept = tuple(at[spot].ci_id if gi_id is not None and spot in at else None for spot in spots)
    return _CiMatch(tuple(start for start, _size in spots), kept, score)


# ---------------------------------------------------------------------------------------------------------
# What an entry wants on one GPU


@dataclass(frozen=True)
class Want:
    """One wanted GPU instance: its profile, a fixed start or None, its compute instances' sizes."""

    profile: Profile
    start: int | None
    cis: tuple[int, ...]
    source: str  # 'instances[N]' for messages

    def spots(self) -> tuple[tuple[int, int], ...]:
        return tuple(p for p in self.profile.placements if self.start is None or p[0] == self.start)


def _ci_slices(text: str, profile: Profile) -> int:
    """'1c', '1c.3g.40gb' or the GI's own name (its whole size) -> compute slices."""
    if text == profile.name:
        return profile.slices
    match = _CI_NAME_RE.match(text)
    if not match or (match.group('gi') and match.group('gi') != profile.name):
        raise Invalid("compute instance %r is not a compute instance of %s (write '1c' or '1c.%s')" % (text, profile.name, profile.name))
    slices = int(match.group('slices'))
    if slices not in ci_placements(profile.slices):
        raise Invalid('%s offers compute instances of %s compute slices, not %d' % (
            profile.name, ', '.join('%dc' % s for s in sorted(ci_placements(profile.slices))), slices))
    return slices


def _want_cis(spec: InstanceSpec, profile: Profile) -> tuple[int, ...]:
    if spec.cis is None:
        return (profile.slices,)
    cis = tuple(sorted((_ci_slices(text, profile) for text in spec.cis), reverse=True))
    if not _cis_fit(profile.slices, cis):
        raise Invalid('compute instances %s do not fit a %s GPU instance (%d compute slices)' % (
            '[%s]' % ', '.join('%dc' % s for s in cis), profile.name, profile.slices))
    return cis


def _want(spec: InstanceSpec, offer: Offer) -> list[Want]:
    where = spec.source + ': '
    profile = offer.profiles.get(spec.profile)
    if profile is None:
        raise Invalid(where + 'profile %s is not offered by this GPU (it offers: %s)' % (spec.profile, ', '.join(offer.profiles) or 'none'))
    if not profile.placements:
        raise Invalid(where + 'the facts list no placements for %s (gather facts through NVML)' % profile.name)
    if spec.start is not None and spec.start not in profile.starts:
        raise Invalid(where + '%s cannot start at %d (starts: %s)' % (profile.name, spec.start, ', '.join(map(str, profile.starts))))
    try:
        cis = _want_cis(spec, profile)
    except Invalid as exc:
        raise Invalid(where + str(exc)) from exc
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
        match = MIG_DEVICES_KEY_RE.match(key)
        profile = offer.profiles.get(match.group('gi')) if match else None
        if match is None or profile is None:
            raise Invalid("mig_devices['%s']: profile %s is not offered by this GPU (it offers: %s)" % (
                key, match.group('gi') if match else key, ', '.join(offer.profiles) or 'none'))
        name, slices = _pair_key(match, profile)
        if slices not in ci_placements(profile.slices):
            raise Invalid("mig_devices['%s']: %s offers compute instances of %s compute slices, not %d" % (
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
        match = MIG_DEVICES_KEY_RE.match(key)
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
    specs = attempt(problems, _specs, entry, offer)
    for spec in specs or ():
        try:
            wants.extend(_want(spec, offer))
        except Invalid as exc:
            problems.append(str(exc))
    if problems:
        return None, problems
    problems = _budget_problems(wants, offer)
    return (None, problems) if problems else (wants, [])


# ---------------------------------------------------------------------------------------------------------
# Where it goes


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
        pieces = [Piece((w.profile.name, w.cis), w.spots()) for w in self.wants]
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


def layout_for(gpu: Mapping[str, Any], entry: Entry, offer: Offer, old: Sequence[OldGI]) -> tuple[list[PlacedGI] | None, list[str]]:
    """The layout the entry wants on this GPU (its existing GPU instances `old`), or None and why it cannot be had;
    (None, []) when the entry leaves the instances alone."""
    if entry.enabled and entry.mig_devices is not None and _pair_counts(old) == _wanted_pairs(entry.mig_devices, offer):
        # mig-parted's own test of "applied": the same counts, wherever they sit and however they are grouped
        return as_placed(old), []
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
