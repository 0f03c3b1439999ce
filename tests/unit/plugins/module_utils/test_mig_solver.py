# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The exact placement solver: it accepts every layout a GPU can hold and refuses every other one.

The reference is a brute force written differently from the planner: it walks every set of non-overlapping
(profile, placement) pairs of a model (forward enumeration, from the model JSON) and records which profile
multisets some such set realises within the model's instance, compute-slice and OFA limits. The planner
(a per-request backtracking search over the facts) must agree with it on every multiset within the counts.
"""
from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _facts, _mig, _mig_model, _mig_solver

from mig_support import MIG_MODELS, apply_on_sim, load_model, model_gpu  # pylint: disable=import-error


def _candidates(model: dict) -> list[tuple[str, int, int]]:
    return [(_facts.mig_profile_name(raw['name']), start, raw['placements']['size'])
            for raw in model['mig']['gpu_instance_profiles'] for start in raw['placements']['starts']]


def _within_limits(model: dict, names: Counter) -> bool:
    raws = {_facts.mig_profile_name(raw['name']): raw for raw in model['mig']['gpu_instance_profiles']}
    full = max(model['mig']['gpu_instance_profiles'], key=lambda raw: raw['sliceCount'])
    return (all(count <= raws[name]['instanceCount'] for name, count in names.items())
            and sum(raws[name]['sliceCount'] * n for name, n in names.items()) <= model['mig']['compute_slices']
            and sum(raws[name]['ofaCount'] * n for name, n in names.items()) <= full['ofaCount'])


def brute_force_placeable(model: dict) -> set[tuple[str, ...]]:
    """Every profile multiset (sorted names) that some set of non-overlapping placements realises."""
    candidates = _candidates(model)
    found = set()

    def walk(i: int, used: frozenset, chosen: tuple) -> None:
        if i == len(candidates):
            if _within_limits(model, Counter(chosen)):
                found.add(tuple(sorted(chosen)))
            return
        walk(i + 1, used, chosen)
        name, start, size = candidates[i]
        cells = frozenset(range(start, start + size))
        if not used & cells:
            walk(i + 1, used | cells, chosen + (name,))

    walk(0, frozenset(), ())
    return found


def all_multisets(model: dict) -> list[tuple[str, ...]]:
    """Every profile multiset whose per-profile counts are within the instance limits."""
    raws = [(_facts.mig_profile_name(raw['name']), raw['instanceCount']) for raw in model['mig']['gpu_instance_profiles']]
    result = []
    for counts in itertools.product(*(range(limit + 1) for _name, limit in raws)):
        result.append(tuple(sorted(name for (name, _limit), n in zip(raws, counts) for _i in range(n))))
    return result


def _declaration(names: tuple[str, ...]) -> list[dict]:
    return [{'devices': 'all', 'instances': [{'profile': name, 'count': n} for name, n in sorted(Counter(names).items())]}]


def _feasible(gpu: dict, names: tuple[str, ...]) -> bool:
    try:
        _mig.plan_host('h', [gpu], _declaration(names))
    except _mig.MigPlanError:
        return False
    return True


@pytest.mark.parametrize('key', MIG_MODELS)
def test_planner_accepts_exactly_the_layouts_a_brute_force_can_place(key):
    model = load_model(key)
    gpu = model_gpu(key)
    placeable = brute_force_placeable(model)
    disagree = [names for names in all_multisets(model) if _feasible(gpu, names) != (names in placeable)]
    assert not disagree, disagree[:5]
    assert len(placeable) >= 20  # the reference found real layouts, not an empty set both sides agree on


def test_the_h100_has_a_known_number_of_placeable_layouts():
    """The count the bench prints; a change in the model data or the rules shows here first."""
    model = load_model('h100-80gb-hbm3')
    placeable = brute_force_placeable(model)
    assert len(all_multisets(model)) == 3840
    assert len(placeable) == 128  # the empty layout included
    assert ('3g.40gb', '4g.40gb') in placeable and ('1g.20gb', '3g.40gb', '3g.40gb') not in placeable


@pytest.mark.parametrize('key', MIG_MODELS)
def test_every_profile_fills_to_its_limit_on_every_model_and_no_further(key):
    gpu = model_gpu(key)
    for profile in gpu['mig']['profiles']:
        plan = _mig.plan_host('h', [gpu], [{'devices': 'all', 'instances': [{'profile': profile['name'], 'count': profile['instances']}]}])
        creates = [s for s in plan.steps if s['action'] == 'create_gpu_instance']
        assert len(creates) == profile['instances']
        cells = [c for s in creates for c in range(s['start'], s['start'] + s['size'])]
        assert len(cells) == len(set(cells)) and all(s['start'] in [p['start'] for p in profile['placements']] for s in creates)
        # one more: past this GPU's limit, or (at 7) past what any GPU allows, refused before planning
        with pytest.raises(_mig.MigPlanError, match='instances of %s declared|count 8 exceeds what any GPU allows' % profile['name'].replace('+', r'\+')):
            _mig.plan_host('h', [gpu], [{'devices': 'all', 'instances': [{'profile': profile['name'], 'count': profile['instances'] + 1}]}])


def test_the_4g_takes_start_0_so_an_unpinned_3g_goes_to_start_4():
    plan = _mig.plan_host('h', [model_gpu('h100-80gb-hbm3')], [{'devices': 'all', 'instances': [{'profile': '3g.40gb'}, {'profile': '4g.40gb'}]}])
    assert [(s['profile'], s['start']) for s in plan.steps if s['action'] == 'create_gpu_instance'] == [('4g.40gb', 0), ('3g.40gb', 4)]


def test_the_3g_pinned_at_0_blocks_the_4g():
    with pytest.raises(_mig.MigPlanError, match='cannot be placed without overlap: 4g.40gb .starts 0., 3g.40gb .start 0, declared.'):
        _mig.plan_host('h', [model_gpu('h100-80gb-hbm3')], [{'devices': 'all', 'instances': [
            {'profile': '4g.40gb'}, {'profile': '3g.40gb', 'start': 0}]}])


def test_an_infeasible_declaration_produces_no_step_on_any_gpu():
    gpus = [model_gpu('h100-80gb-hbm3', 0, current=False), model_gpu('h100-80gb-hbm3', 1)]
    with pytest.raises(_mig.MigPlanError) as info:
        _mig.plan_host('h', gpus, [{'devices': [0], 'instances': [{'profile': '7g.80gb'}]},
                                   {'devices': [1], 'instances': [{'profile': '3g.40gb', 'count': 2}, {'profile': '1g.20gb'}]}])
    assert len(info.value.errors) == 1 and 'GPU 1 (' in info.value.errors[0]


def test_compute_instances_are_placed_exactly_where_first_fit_largest_first_would_fail():
    """In a 7g GI, 3c first-fit at 0 leaves room for one 2c only; the exact search puts 2c, 2c at 0, 2 and 3c at 4."""
    gpu = model_gpu('h100-80gb-hbm3')
    plan = _mig.plan_host('h', [gpu], [{'devices': 'all', 'instances': [{'profile': '7g.80gb', 'compute_instances': ['3c', '2c', '2c']}]}])
    cis = [(s['slices'], s['start']) for s in plan.steps if s['action'] == 'create_compute_instance']
    assert sorted(cis) == [(2, 0), (2, 2), (3, 4)]
    after = apply_on_sim([gpu], plan.steps, {0: 'h100-80gb-hbm3'})
    assert not _mig.verify(plan.desired, after)


def test_best_placement_maximises_gain_then_keeps_the_first_lowest_start():
    piece = _mig_solver.Piece(('1g',), ((0, 1), (1, 1), (2, 1)))
    spots, score = _mig_solver.best_placement([piece, piece], [[_mig_solver.ZERO, (1, 0, 0), _mig_solver.ZERO]] * 2)
    assert spots == [(0, 1), (1, 1)] and score == (1, 0, 0)
    spots, score = _mig_solver.best_placement([piece, piece], [[_mig_solver.ZERO] * 3] * 2)
    assert spots == [(0, 1), (1, 1)] and score == _mig_solver.ZERO
    assert _mig_solver.best_placement([piece] * 4, [[_mig_solver.ZERO] * 3] * 4) is None


def test_compute_instance_table_matches_every_model_file():
    for key in MIG_MODELS:
        for gi_slices, profiles in load_model(key)['mig']['compute_instance_profiles'].items():
            expected = {p['sliceCount']: tuple(p['placements']['starts']) for p in profiles}
            assert _mig_model.ci_placements(int(gi_slices)) == expected, (key, gi_slices)
            assert all(_mig.CI_PROFILE_IDS[p['sliceCount']] == p['id'] for p in profiles)


def _fits_beside(model: dict, names: list[str], used: frozenset) -> bool:
    """Can these profiles be placed in the cells left free? (plain recursion over the model's placements)"""
    if not names:
        return True
    raw = next(r for r in model['mig']['gpu_instance_profiles'] if _facts.mig_profile_name(r['name']) == names[0])
    size = raw['placements']['size']
    return any(not used & set(range(start, start + size)) and _fits_beside(model, names[1:], used | set(range(start, start + size)))
               for start in raw['placements']['starts'])


def best_kept_by_subsets(model: dict, existing: list[tuple[str, int]], target: tuple[str, ...]) -> int:
    """The most existing instances any legal layout of `target` keeps: try every subset of them, largest first."""
    sizes = {_facts.mig_profile_name(r['name']): r['placements']['size'] for r in model['mig']['gpu_instance_profiles']}
    for keep in range(len(existing), -1, -1):
        for subset in itertools.combinations(existing, keep):
            rest = Counter(target) - Counter(name for name, _start in subset)
            if sum(rest.values()) + keep != len(target):
                continue  # the subset holds a profile the target does not want (or too many of it)
            used = frozenset(c for name, start in subset for c in range(start, start + sizes[name]))
            if _fits_beside(model, sorted(rest.elements()), used):
                return keep
    return 0


@pytest.mark.parametrize('key', ['h100-80gb-hbm3', 'a30'])
def test_planner_keeps_as_many_existing_instances_as_the_best_possible_layout(key):
    model = load_model(key)
    placeable = sorted(n for n in brute_force_placeable(model) if n)
    rng = random.Random(key)
    checked = 0
    for _round in range(60):
        start_layout = _mig.plan_host('h', [model_gpu(key)], _declaration(rng.choice(placeable)))
        gpu = apply_on_sim([model_gpu(key)], start_layout.steps, {0: key})[0]
        existing = [(g['profile'], g['placement']['start']) for g in gpu['mig']['gpu_instances']]
        target = rng.choice(placeable)
        plan = _mig.plan_host('h', [gpu], _declaration(target))
        destroyed = sum(1 for s in plan.steps if s['action'] == 'destroy_gpu_instance')
        assert len(existing) - destroyed == best_kept_by_subsets(model, existing, target), (existing, target)
        checked += destroyed > 0 and destroyed < len(existing)
    assert checked >= 5  # partial keeps happened, not only all-or-nothing cases
