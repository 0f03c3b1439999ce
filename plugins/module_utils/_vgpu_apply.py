# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""Apply a `gpu_vgpu` declaration on this host (mdev, or the SR-IOV vendor interface per GPU): observe, plan, apply,
verify, roll back on failure.

The one implementation behind the `gpuvirt.fleet.vgpu_devices` module and the vgpu role's boot-time service, so it
imports nothing from Ansible (only _vgpu, the pure planner, and the seams _nvml, _sysfs and _mdevctl).

1. observe: each GPU through NVML (identity, MIG mode, active vGPUs with the VM each is attached to) and its mdev
   parent through sysfs (types with their available instances, the devices of each type);
2. plan: `_vgpu.plan_host` validates the whole declaration and returns the minimal steps; a refused plan writes
   nothing (and in check mode the plan is the answer);
3. apply: removals, then creations, one sysfs write each (mdev: `create` / `remove`; SR-IOV: the VF's
   `nvidia/current_vgpu_type`, the type id or 0);
4. verify: observe again and compare every planned GPU's devices with the plan.

A refused write, or a verify mismatch, rolls back: the devices this run created are removed and the ones it removed
are created again with their UUIDs and types, each write tried again on failure (three tries, a short backoff:
`_retry`) and the others run still; whatever then still differs from the previous devices (a half-done step too) is
planned again from a fresh observation while that makes progress. The result then says which step failed, the
kernel's errno in words, and whether the host holds exactly its previous devices again, or what each GPU lacks and
holds beyond them.

Persistence: for every planned GPU the mdevctl definitions `<mdevctl_dir>/<parent>/<uuid>` (JSON with `start: auto`)
are made to match the declared devices, so mdevctl re-creates them at boot; the role also installs a boot-time
re-apply for hosts without mdevctl, and for SR-IOV vGPUs (VFs have no mdevctl definitions).
"""

from __future__ import annotations

import errno
import re
import traceback
from collections.abc import Mapping, Sequence
from typing import Any, Callable

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _facts, _inputs, _mdevctl, _nvml, _retry, _sysfs, _vgpu, _vgpu_manager

MDEVCTL_DIR = _mdevctl.DEFINITIONS_DIR
DEFAULT_LABEL = 'current'
_MAX_RE = re.compile(r'max_instance=(\d+)')
_PASSES = 3


# ---------------------------------------------------------------------------------------------------------
# observe

def _types_of(parent: str | None, gpu: Mapping[str, Any], root: str) -> tuple[list[_vgpu.VgpuType], list[_vgpu.Device]]:
    if parent is None:
        return [], []
    active = {(v.get('uuid') or '').lower(): v for v in (gpu.get('vgpu') or {}).get('active') or []}
    nvml_max = {_vgpu.short_name(t.get('name') or ''): t.get('max_instances') for t in (gpu.get('vgpu') or {}).get('supported_types') or []}
    types, devices = [], []
    for raw in _sysfs.read_mdev_types(parent, root):
        match = _MAX_RE.search(raw['description'])
        maximum = int(match.group(1)) if match else nvml_max.get(_vgpu.short_name(raw['name'])) or 0
        types.append(_vgpu.VgpuType(raw['type_id'], raw['name'], maximum, raw['available_instances']))
        for value in raw['devices']:
            vm_id = (active.get(value) or {}).get('vm_id')
            devices.append(_vgpu.Device(value, raw['name'], in_use=bool(vm_id)))
    return types, devices


def sriov_parts(vf_states: Sequence[Mapping[str, Any]], gpu: Mapping[str, Any]) -> tuple[list[_vgpu.VgpuType], list[_vgpu.Device]]:
    """The SR-IOV vendor interface as the planner sees it. `vf_states` are _sysfs.read_vf_vgpu of each VF in order: a
    VF whose current type is not 0 holds a device (identity: the VF); a type is available on as many free VFs as list
    it creatable now; the catalogue and per-GPU maximum come from NVML, else from what the VFs list."""
    nvml = (gpu.get('vgpu') or {}).get('supported_types') or []
    names = {int(t['id']): t.get('name') or str(t['id']) for t in nvml if t.get('id') is not None}
    maximum = {int(t['id']): int(t.get('max_instances') or 0) for t in nvml if t.get('id') is not None}
    for state in vf_states:
        for type_id, name in state['creatable']:
            names.setdefault(type_id, name)
    free = [s for s in vf_states if not s['current']]
    held = {}
    for state in vf_states:
        if state['current']:
            held.setdefault(state['current'], []).append(state['vf'])
    active = {}
    for item in (gpu.get('vgpu') or {}).get('active') or []:
        active.setdefault(_vgpu.short_name(item.get('type') or ''), []).append(item.get('uuid'))
    types = []
    for type_id, name in sorted(names.items()):
        available = sum(1 for s in free if any(pair[0] == type_id for pair in s['creatable']))
        types.append(_vgpu.VgpuType(str(type_id), name, maximum.get(type_id) or len(vf_states), available))
    devices = []
    for type_id, vfs in sorted(held.items()):
        name = names.get(type_id, str(type_id))
        uuids = active.get(_vgpu.short_name(name), [])
        # NVML does not name the VF of an active vGPU: a UUID is reported only where one device of the type exists.
        single = uuids[0] if len(vfs) == 1 and len(uuids) == 1 else None
        devices.extend(_vgpu.Device(vf, name, vf=vf, vgpu_uuid=single) for vf in vfs)
    return types, devices


def observe(root: str) -> list[_vgpu.GpuView]:
    """Every GPU as the planner sees it (the caller holds an NVML session). A GPU whose VFs carry
    `nvidia/creatable_vgpu_types` uses the SR-IOV vendor interface; else its mdev parent, if any."""
    parents = set(_sysfs.list_mdev_parents(root))
    views = []
    for index in range(_nvml.read_system()['count']):
        gpu = _nvml.read_gpu(index)
        pci = gpu.get('pci') or {}
        bus_id = pci.get('bus_id')
        address = _facts.sysfs_pci_address(bus_id) if bus_id else None
        vfs = _sysfs.list_vfs(address, root) if address else []
        backend = 'sriov' if vfs and _sysfs.is_sriov_vgpu(vfs[0], root) else 'mdev'
        if backend == 'sriov':
            parent = address
            types, devices = sriov_parts([_sysfs.read_vf_vgpu(vf, root) for vf in vfs], gpu)
        else:
            parent = address if address in parents else None
            types, devices = _types_of(parent, gpu, root)
        views.append(_vgpu.GpuView(index=index, uuid=gpu.get('uuid'), name=gpu.get('name') or 'GPU %d' % index, bus_id=bus_id,
                                   parent=parent, types=types, devices=devices, pci=pci,
                                   mig_enabled=bool((gpu.get('mig') or {}).get('current')), backend=backend,
                                   vfs=vfs if backend == 'sriov' else []))
    return views


# ---------------------------------------------------------------------------------------------------------
# apply, one sysfs write per step

def explain(step: Mapping[str, Any], exc: _sysfs.SysfsWriteError) -> str:
    """The kernel's errno in words: what was refused and what to do."""
    device, code = step['device'], exc.errno
    if step.get('backend') == 'sriov':
        return _explain_sriov(step, exc)
    if step['action'] == 'create':
        what = 'creating vGPU %s (%s) on %s' % (device, _vgpu.short_name(step['type']), step.get('parent'))
        reasons = {
            errno.EINVAL: 'the driver rejected the UUID or the type (malformed UUID, or a type this GPU cannot host beside '
                          'its current vGPUs)',
            errno.EEXIST: 'a mediated device with this UUID already exists (on this or another GPU): remove it or declare '
                          'another UUID',
            errno.ENOSPC: 'no capacity left for this type on the GPU: lower the count or remove other vGPUs first',
            errno.EDQUOT: 'no capacity left for this type on the GPU: lower the count or remove other vGPUs first',
            errno.EUSERS: 'no capacity left for this type on the GPU: lower the count or remove other vGPUs first',
        }
    else:
        what = 'removing vGPU %s (%s) from %s' % (device, _vgpu.short_name(step.get('type') or ''), step.get('parent'))
        reasons = {
            errno.EBUSY: 'it is in use (a VM holds it): shut the VM down or detach the vGPU, then run again',
            errno.ENOENT: 'the device is gone already (removed by someone else)',
            errno.ENODEV: 'the device is gone already (removed by someone else)',
        }
    reasons[errno.EACCES] = reasons[errno.EPERM] = 'permission denied: run as root (become: true)'
    reasons[errno.ENOENT] = reasons.get(errno.ENOENT, 'the sysfs file is missing: is the NVIDIA vGPU manager driver loaded?')
    reason = reasons.get(code, 'the kernel refused it')
    return '%s failed with %s (%s): %s' % (what, errno.errorcode.get(code or 0, code), exc.text, reason)


def _explain_sriov(step: Mapping[str, Any], exc: _sysfs.SysfsWriteError) -> str:
    code = exc.errno
    if step['action'] == 'create':
        what = 'creating a %s vGPU on VF %s of %s' % (_vgpu.short_name(step['type']), step['vf'], step.get('parent'))
        reasons = {
            errno.EINVAL: 'the driver does not know this type id or cannot create it on this VF (see its creatable_vgpu_types)',
            errno.ENOSPC: 'no capacity left for this type on the GPU (or another type is active on a GPU that allows one): '
                          'lower the count or remove other vGPUs first',
            errno.EBUSY: 'the VF holds a vGPU already: remove it first',
        }
    else:
        what = 'removing the %s vGPU of VF %s on %s' % (_vgpu.short_name(step.get('type') or ''), step['vf'], step.get('parent'))
        reasons = {errno.EBUSY: 'it is in use (a VM holds the VF): shut the VM down or detach the VF, then run again'}
    reasons[errno.EACCES] = reasons[errno.EPERM] = 'permission denied: run as root (become: true)'
    reasons[errno.ENOENT] = 'the VF has no nvidia/current_vgpu_type: are its VFs enabled (sriov-manage -e) with the vGPU manager driver?'
    return '%s failed with %s (%s): %s' % (what, errno.errorcode.get(code or 0, code), exc.text, reasons.get(code, 'the kernel refused it'))


def _run(step: Mapping[str, Any], root: str) -> None:
    if step.get('backend') == 'sriov':
        _sysfs.set_vf_vgpu_type(step['vf'], int(step['type_id']) if step['action'] == 'create' else 0, root)
    elif step['action'] == 'create':
        _sysfs.create_mdev(step['parent'], step['type_id'], step['device'], root)
    else:
        _sysfs.remove_mdev(step['device'], root)


def _undo_steps(applied: Sequence[Mapping[str, Any]], before: Sequence[_vgpu.GpuView]) -> list[dict]:
    """Remove what was created, create again what was removed (same UUID and type), latest first."""
    type_ids = {(g.parent, t.name): t.type_id for g in before for t in g.types}
    undo = []
    for step in reversed(applied):
        if step['action'] == 'create':
            undo.append(dict(step, action='remove'))
        else:
            undo.append(dict(step, action='create', type_id=type_ids.get((step['parent'], step['type']))))
    return sorted(undo, key=lambda s: s['action'] != 'remove')


def _device_sets(gpus: Sequence[_vgpu.GpuView]) -> dict[int, set]:
    return {g.index: {(d.uuid, _vgpu.short_name(d.type_name)) for d in g.devices} for g in gpus}


# ---------------------------------------------------------------------------------------------------------
# persistence: mdevctl definitions, through the _mdevctl seam

def persist(plan: _vgpu.HostPlan, type_ids: Mapping[tuple, str], directory: str, check_mode: bool) -> list[str]:
    """Make `<directory>/<parent>/` hold exactly the planned devices of each planned GPU; the paths changed."""
    changed = []
    for gpu_plan in plan.gpus:
        if gpu_plan.gpu.backend == 'sriov':
            continue  # no mdevctl for VFs: the role's boot-time re-apply re-creates them
        parent = gpu_plan.gpu.parent
        want = {d['uuid']: _mdevctl.definition(type_ids[(parent, d['type'])]) for d in gpu_plan.after()['devices']}
        have = _mdevctl.read_definitions(directory, parent)
        for name in sorted(set(have) - set(want)):
            changed.append(_mdevctl.definition_path(directory, parent, name))
            if not check_mode:
                _mdevctl.remove_definition(directory, parent, name)
        for name, text in sorted(want.items()):
            if have.get(name) != text:
                changed.append(_mdevctl.definition_path(directory, parent, name))
                if not check_mode:
                    _mdevctl.write_definition(directory, parent, name, text)
    return changed


# ---------------------------------------------------------------------------------------------------------
# one run

def _new_result() -> dict:
    return {'changed': False, 'failed': False, 'msg': '', 'steps': [], 'applied': [], 'before': [], 'after': [],
            'devices': [], 'persisted': [], 'declaration': None, 'vgpu_device_manager': None}


def _devices_out(gpus: Sequence[_vgpu.GpuView]) -> list[dict]:
    """Every vGPU device on the host, for the libvirt filter and the caller."""
    out = []
    for gpu in gpus:
        for device in sorted(gpu.devices, key=lambda d: d.uuid):
            item = {'uuid': device.vgpu_uuid if device.vf else device.uuid, 'type': _vgpu.short_name(device.type_name), 'gpu': gpu.index,
                    'gpu_uuid': gpu.uuid, 'parent': gpu.parent, 'in_use': device.in_use, 'backend': gpu.backend}
            if device.vf:
                item['vf'] = device.vf
            out.append(item)
    return out


def _redo_steps(before: Sequence[_vgpu.GpuView], now: Sequence[_vgpu.GpuView], touched: set[int]) -> list[dict]:
    """What still differs from `before` on the touched GPUs, as steps: remove what was not there (or had another type),
    create what is missing; removals first."""
    was = {g.index: g for g in before}
    type_ids = {(g.parent, t.name): t.type_id for g in before for t in g.types}
    removes, creates = [], []
    for gpu in now:
        if gpu.index not in touched or gpu.index not in was:
            continue
        base = {'gpu': gpu.index, 'uuid': gpu.uuid, 'parent': gpu.parent}
        if gpu.backend == 'sriov':
            base['backend'] = 'sriov'
        old = {d.uuid: d for d in was[gpu.index].devices}
        new = {d.uuid: d for d in gpu.devices}
        for name, device in sorted(new.items()):
            if name not in old or old[name].type_name != device.type_name:
                removes.append(dict(base, action='remove', device=name, type=device.type_name, in_use=device.in_use, vf=device.vf))
        for name, device in sorted(old.items()):
            if name not in new or new[name].type_name != device.type_name:
                creates.append(dict(base, action='create', device=name, type=device.type_name, vf=device.vf,
                                    type_id=type_ids.get((gpu.parent, device.type_name))))
    return removes + creates


def _roll_back(result: dict, before: Sequence[_vgpu.GpuView], root: str, failure: str, retrier: _retry.Retrier) -> list[_vgpu.GpuView]:
    """Undo the applied steps, each write tried again on failure (`_retry`) and the others run still; then, while that
    makes progress, whatever still differs from `before` (a half-done step included), planned from a fresh observation."""
    rollback: dict[str, Any] = {'steps': [], 'errors': [], 'restored': False}
    touched = {s['gpu'] for s in result['applied']} | ({result['failure']['step']['gpu']} if result.get('failure', {}).get('step') else set())
    steps = _undo_steps(result['applied'], before)
    final = before
    for _pass in range(_PASSES):
        progress = False
        for step in steps:
            try:
                tries = retrier.run(lambda step=step: _run(step, root), (_sysfs.SysfsWriteError,))[1]
            except _retry.GaveUp as exc:
                rollback['errors'].append(explain(step, exc.error) + (' (%d tries)' % exc.tries if exc.tries > 1 else ''))
                continue
            rollback['steps'].append(dict(step, tries=tries) if tries > 1 else step)
            progress = True
        final = observe(root)
        steps = _redo_steps(before, final, touched)
        if not steps or not progress:
            break
    was, now = _device_sets(before), _device_sets(final)
    mismatches = ['GPU %s holds %s; before: %s%s' % (i, sorted(p[0] for p in now.get(i, ())), sorted(p[0] for p in was.get(i, ())),
                                                     _difference(was.get(i, set()), now.get(i, set())))
                  for i in sorted(touched) if now.get(i) != was.get(i)]
    rollback['restored'] = not mismatches
    outcome = ('rolled back: GPU(s) %s hold their previous vGPUs again' % ', '.join(map(str, sorted(touched))) if not mismatches
               else 'ROLLBACK INCOMPLETE: %s' % '; '.join(rollback['errors'] + mismatches))
    result.update(failed=True, msg='%s; %s' % (failure, outcome), rollback=rollback)
    return final


def _difference(was: set, now: set) -> str:
    """' (missing: A (A40-8Q); extra: B (A40-4Q))': what a GPU lacks and what it holds beyond its previous devices."""
    parts = [('missing', sorted(was - now)), ('extra', sorted(now - was))]
    text = '; '.join('%s: %s' % (label, ', '.join('%s (%s)' % pair for pair in pairs)) for label, pairs in parts if pairs)
    return ' (%s)' % text if text else ''


def _apply(hostname: str, plan: _vgpu.HostPlan, before: Sequence[_vgpu.GpuView], root: str, result: dict,
           retrier: _retry.Retrier) -> list[_vgpu.GpuView]:
    steps = plan.steps
    failure = None
    for number, step in enumerate(steps, 1):
        try:
            _run(step, root)
        except _sysfs.SysfsWriteError as exc:
            failure = 'host %s: GPU %s (%s): step %d of %d: %s' % (hostname, step['gpu'], step.get('uuid'), number, len(steps), explain(step, exc))
            result['failure'] = {'step': step, 'step_number': number, 'errno': errno.errorcode.get(exc.errno or 0), 'error': exc.text}
            break
        result['applied'].append(step)
    result['changed'] = bool(result['applied'])
    after = observe(root)
    if failure is None:
        mismatches = _vgpu.verify(plan.desired(), after)
        if mismatches:
            failure = 'host %s: verify after apply found: %s' % (hostname, '; '.join(mismatches))
            result['failure'] = {'step': None, 'error': failure}
    if failure is not None:
        after = _roll_back(result, before, root, failure, retrier)
    return after


def _start(result: dict) -> _nvml.NvmlSession | None:
    return _nvml.open_or_report(result, _nvml.NvmlSession().open)


def apply_declaration(hostname: str, declaration: Any, *, check_mode: bool = False, vgpu_device_manager: Any = None,
                      sysfs_root: str = _sysfs.SYSFS, mdevctl_dir: str | None = MDEVCTL_DIR,
                      sleep: Callable[[float], Any] | None = None) -> dict:
    """Bring this host's vGPU devices to `declaration` (gpu_vgpu; or `vgpu_device_manager`: {'config': .., 'label': ..},
    planned with vgpu-device-manager's meaning: _vgpu_manager.plan_vgpu_device_manager).

    Returns changed, failed, msg, steps (the plan), applied, before/after (per planned GPU, for diff), devices (every
    vGPU device at the end), persisted (mdevctl definitions written or removed; none when `mdevctl_dir` is None),
    declaration and vgpu_device_manager (the state at the end in gpu_vgpu form and as a vgpu-device-manager config
    whose label is the one applied, else 'current'), and on failure `errors` (a refused plan: nothing was written)
    or `failure` and `rollback` (steps, errors, restored). `sleep` waits between the tries of a failed rollback write
    (default time.sleep).
    """
    label = vgpu_device_manager.get('label') if isinstance(vgpu_device_manager, Mapping) else None
    result = _new_result()
    problems = _vgpu.input_problems(hostname, declaration, vgpu_device_manager is not None, sysfs_root, mdevctl_dir)
    if not problems and not _sysfs.root_exists(sysfs_root):
        problems = [_vgpu.where(hostname) + 'sysfs_root %s does not exist (where is sysfs mounted?)' % _inputs.quote(sysfs_root)]
    if problems:
        return _vgpu.VgpuPlanError(hostname, problems).refuse(result, hostname)
    manager = None
    if vgpu_device_manager is not None:
        try:
            manager = _vgpu_manager.parse_vgpu_device_manager(vgpu_device_manager.get('config'), vgpu_device_manager.get('label'))
        except _vgpu.VgpuPlanError as exc:
            return exc.refuse(result, hostname)
    session = _start(result)
    if session is None:
        return result
    with session:
        try:
            before = observe(sysfs_root)
            try:
                if manager is not None:
                    plan = _vgpu_manager.plan_vgpu_device_manager(hostname, before, manager)
                else:
                    plan = _vgpu.plan_host(hostname, before, declaration)
            except _vgpu.VgpuPlanError as exc:
                result.update(failed=True, msg='%s; nothing was changed' % exc, errors=exc.errors, devices=_devices_out(before))
                return result
            result.update(plan.as_dict())
            after = before
            if plan.changed and not check_mode:
                after = _apply(hostname, plan, before, sysfs_root, result, _retry.Retrier(sleep))
            else:
                result['changed'] = plan.changed
            if mdevctl_dir and not result['failed']:
                type_ids = {(g.parent, _vgpu.short_name(t.name)): t.type_id for g in before for t in g.types}
                result['persisted'] = persist(plan, type_ids, mdevctl_dir, check_mode)
                result['changed'] = result['changed'] or bool(result['persisted'])
            result['devices'] = _devices_out(after)
            result['declaration'] = _vgpu.export_declaration(after)
            result['vgpu_device_manager'] = _vgpu_manager.export_vgpu_device_manager(after, label or DEFAULT_LABEL)
        except Exception:  # pylint: disable=broad-exception-caught  # reported, never a silent half-applied host
            applied = result['applied']
            result.update(failed=True, exception=traceback.format_exc(), msg='host %s: unexpected error while %s the vGPU devices%s' % (
                hostname, 'applying' if applied else 'reading or planning',
                '; %d step(s) had run (see applied) and were not verified' % len(applied) if applied else '; nothing was changed'))
    return result
