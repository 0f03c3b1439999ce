# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""The pure MIG planner: validate a `gpu_mig` declaration against a host's GPU facts, plan the minimal steps, verify.

Input is exactly what `gpuvirt.fleet.gpu_facts` returns in `ansible_facts.gpus`; nothing here imports pynvml,
reads a file or runs a command. The parts: `_mig_declaration` (the declaration's format and shape checks, which
entry declares each GPU), `_mig_model` (what a GPU offers and holds, from its facts), `_mig_solver` (what an entry
wants on a GPU and where it goes), this module (steps, plan, verify, export) and `_mig_parted` (mig-parted's format).

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

`mismatches(plan.desired, gpus_after)` lists what the GPUs observed after apply do not match, as `Mismatch`
records (GPU, entry, field, wanted, found); `verify` gives the same as sentences (`render`, from MESSAGES).
`export_declaration(gpus)` writes the current state as a declaration that plans no step.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.gpuvirt.fleet.plugins.module_utils._mig_declaration import Entry, parse_declaration, resolve
from ansible_collections.gpuvirt.fleet.plugins.module_utils._mig_model import (
    OldCI, OldGI, PlacedCI, PlacedGI, Profile, as_placed, declared_layout, existing_instances, gpu_offer, gpu_pids)
from ansible_collections.gpuvirt.fleet.plugins.module_utils._mig_solver import layout_for
from ansible_collections.gpuvirt.fleet.plugins.module_utils._selector import PlanError, where

# NVML_COMPUTE_INSTANCE_PROFILE_<n>_SLICE: the id nvmlGpuInstanceCreateComputeInstance takes.
CI_PROFILE_IDS = {1: 0, 2: 1, 3: 2, 4: 3, 7: 4, 8: 5, 6: 6}


class MigPlanError(PlanError):
    """Every problem found in a MIG declaration (or a mig-parted config), reported together."""

    kind = 'MIG'


# ---------------------------------------------------------------------------------------------------------
# Steps and plans


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
                                  profile=_ci_name(ci.slices or 0, gi.profile), slices=ci.slices, pids=gpu_pids(self.gpu, gi.gi_id, ci.ci_id)))

    def destroy_gi(self, gi: OldGI) -> None:
        self.destroys.append(dict(_base(self.gpu), action='destroy_gpu_instance', gpu_instance_id=gi.gi_id,
                                  profile=gi.profile.name if gi.profile else None, profile_id=gi.profile.profile_id if gi.profile else None,
                                  start=gi.start, size=gi.size, pids=gpu_pids(self.gpu, gi.gi_id)))

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


def gpu_problems(gpu: Mapping[str, Any], entry: Entry) -> list[str]:
    if gpu.get('status') == 'lost':
        return ['the GPU is lost (%s); it cannot be planned' % (gpu.get('error') or 'no answer')]
    mig = gpu.get('mig') or {}
    if entry.enabled and not mig.get('capable'):
        return ['%s does not support MIG' % (gpu.get('name') or 'this GPU')]
    return []


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
    pids = gpu_pids(gpu)
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
        state['instances'] = declared_layout(as_placed(old))
    return state


def _after(gpu: Mapping[str, Any], entry: Entry, old: Sequence[OldGI], layout: Sequence[PlacedGI] | None) -> dict:
    state: dict[str, Any] = {'devices': [gpu['index']], 'enabled': entry.enabled}
    if entry.enabled:
        # an entry without instances leaves the existing ones as they are
        state['instances'] = declared_layout(layout if layout is not None else as_placed(old))
    return state


def plan_gpu(ctx: _Context, gpu: Mapping[str, Any], entry: Entry, errors: list[str]) -> GpuPlan | None:
    """Validate the entry against this GPU and plan it; problems go to `errors` (and None is returned)."""
    prefix = where(ctx.host, gpu, entry)
    old = existing_instances(gpu, gpu_offer(gpu)) if (gpu.get('mig') or {}).get('current') else []
    problems = gpu_problems(gpu, entry)
    layout = None
    if not problems:
        layout, problems = layout_for(gpu, entry, gpu_offer(gpu), old)
    if problems:
        errors.extend(prefix + p for p in problems)
        return None
    sink = _StepSink(gpu)
    if entry.enabled and layout is not None:
        _instance_steps(sink, old, layout)
    elif not entry.enabled:
        _instance_steps(sink, old, [])  # MIG mode cannot be disabled while GPU instances exist
    mode_steps, reboot = _mode_steps(ctx, gpu, entry.enabled)
    problems = _safety(sink, mode_steps, entry)
    if problems:
        errors.extend(prefix + p for p in problems)
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


@dataclass(frozen=True)
class InstanceState:
    """A GPU instance as verify compares it: its profile, its start (memory slices), its compute instances' sizes."""

    profile: str | None
    start: int | None
    compute_instances: tuple[int, ...]  # compute slices, largest first


@dataclass(frozen=True)
class Mismatch:
    """One thing a GPU observed after apply does not match: on GPU `gpu` (`uuid`), declared by `entry` (its label),
    `field` is `found` where `wanted` was planned. Fields: 'present' (wanted True, found False: the GPU is gone),
    'pending_mode' and 'current_mode' (the MIG modes, booleans), 'gpu_instance' (an InstanceState: wanted and found
    None when it is missing, found and wanted None when it is unexpected)."""

    gpu: int
    uuid: str | None
    entry: str | None
    field: str
    wanted: Any
    found: Any

    @property
    def message(self) -> str:
        """The key of its sentence in MESSAGES."""
        if self.field == 'gpu_instance':
            return 'missing_instance' if self.found is None else 'unexpected_instance'
        return self.field

    def __str__(self) -> str:
        return render(self)


# The sentences verify's mismatches are written in (what mig_layout's failure message says); nothing reads them back.
MESSAGES = {
    'present': 'not found after apply',
    'pending_mode': 'pending MIG mode is {found}, wanted {wanted}',
    'current_mode': 'current MIG mode is {found}, wanted {wanted}',
    'missing_instance': 'missing GPU instance {wanted}',
    'unexpected_instance': 'unexpected GPU instance {found}',
}


def describe_instance(instance: InstanceState) -> str:
    return '%s at %s with compute instances [%s]' % (instance.profile, instance.start, ', '.join('%dc' % s for s in instance.compute_instances))


def render(mismatch: Mismatch) -> str:
    """A mismatch as a sentence: 'GPU 0 (GPU-...): pending MIG mode is False, wanted True'."""
    values = {key: describe_instance(value) if isinstance(value, InstanceState) else value
              for key, value in (('wanted', mismatch.wanted), ('found', mismatch.found))}
    return 'GPU %s (%s): ' % (mismatch.gpu, mismatch.uuid) + MESSAGES[mismatch.message].format(**values)


def _observed(gpu: Mapping[str, Any]) -> Counter:
    return Counter((g.profile.name if g.profile else None, g.start, tuple(sorted((c.slices or 0 for c in g.cis), reverse=True)))
                   for g in existing_instances(gpu, gpu_offer(gpu)))


def mismatches(desired: Sequence[Mapping[str, Any]], gpus_after: Sequence[Mapping[str, Any]]) -> list[Mismatch]:
    """What the GPUs observed after apply do not match (plan.desired); an empty list means all matched."""
    by_index = {g['index']: g for g in gpus_after}
    found = []
    for want in desired:
        gpu = by_index.get(want['gpu'])
        if gpu is None or (want.get('uuid') and gpu.get('uuid') != want['uuid']):
            found.append(Mismatch(want['gpu'], want.get('uuid'), want.get('entry'), 'present', True, False))
            continue
        found.extend(_gpu_mismatches(want, gpu))
    return found


def _gpu_mismatches(want: Mapping[str, Any], gpu: Mapping[str, Any]) -> list[Mismatch]:
    mig = gpu.get('mig') or {}
    modes = {'pending_mode': bool(mig.get('pending')), 'current_mode': bool(mig.get('current'))}
    if want.get('reboot_required'):
        del modes['current_mode']  # the mode becomes current, and instances can be made, only after the reboot
    found = [Mismatch(want['gpu'], want.get('uuid'), want.get('entry'), key, want['enabled'], value)
             for key, value in modes.items() if value != want['enabled']]
    if want['enabled'] and want.get('instances') is not None and not found and not want.get('reboot_required'):
        wanted = Counter((i['profile'], i['start'], tuple(sorted(i['compute_instances'], reverse=True))) for i in want['instances'])
        seen = _observed(gpu)
        found += [Mismatch(want['gpu'], want.get('uuid'), want.get('entry'), 'gpu_instance', InstanceState(*item), None)
                  for item in sorted((wanted - seen).elements(), key=repr)]
        found += [Mismatch(want['gpu'], want.get('uuid'), want.get('entry'), 'gpu_instance', None, InstanceState(*item))
                  for item in sorted((seen - wanted).elements(), key=repr)]
    return found


def verify(desired: Sequence[Mapping[str, Any]], gpus_after: Sequence[Mapping[str, Any]]) -> list[str]:
    """mismatches() as sentences (render); an empty list means all matched."""
    return [render(m) for m in mismatches(desired, gpus_after)]


# ---------------------------------------------------------------------------------------------------------
# Export the current state in the planner's own format


def _exportable(gpus: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [g for g in sorted(gpus, key=lambda g: g['index']) if (g.get('mig') or {}).get('capable') and g.get('status') != 'lost']


def current_layout(gpu: Mapping[str, Any]) -> list[PlacedGI]:
    old = existing_instances(gpu, gpu_offer(gpu))
    unknown = [g.gi_id for g in old if g.profile is None or g.start is None or any(c.slices is None for c in g.cis)]
    if unknown:
        raise MigPlanError(None, ['GPU %s (%s): the facts lack the profile or placement of GPU instance(s) %s; gather facts through NVML'
                                  % (gpu['index'], gpu.get('uuid'), ', '.join(map(str, unknown)))])
    return as_placed(old)


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
            state['instances'] = declared_layout(current_layout(gpu))
        states.append(state)
    return _group(usable, states, len(gpus))
