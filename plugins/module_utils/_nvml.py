# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""The NVML seam: every call this collection makes into NVML (pynvml, from nvidia-ml-py) is in this file, and in
_nvml_mig, the MIG enumeration it shares with the exporter (which ships that file as it is).

Sessions are context managers (`with NvmlSession():`). The seam observes and reports (`read_*`), and makes the MIG
changes a plan asks for (`set_mig_mode`, `create_*`, `destroy_*`, one planned step each); deciding what the
observations mean and which changes to make is left to the pure code in _facts and _mig, and running a plan to
_mig_apply.
"""

from __future__ import annotations

import contextlib
import ctypes
import traceback
from typing import Any, Callable

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _facts, _nvml_mig

try:
    import pynvml
except ImportError:
    pynvml = None
    PYNVML_IMPORT_ERROR = traceback.format_exc()
else:
    PYNVML_IMPORT_ERROR = None

HAS_PYNVML = pynvml is not None
PYNVML_PACKAGE = 'nvidia-ml-py'

# NVML compute-instance profile enums probed inside a GPU instance (the GPU-instance ones: _nvml_mig).
_COMPUTE_INSTANCE_PROFILE_ENUMS = range(0, 9)


class DriverUnavailable(Exception):
    """NVML could not start: no library (driver not installed) or the kernel driver is not loaded."""


class GpuLost(Exception):
    pass


def _error_text(exc: Exception) -> str:
    return str(exc) or exc.__class__.__name__


class NvmlSession:
    """One NVML session (nvmlInit ... nvmlShutdown), a context manager: `with NvmlSession():` opens it on entering
    and closes it on leaving; a session opened before (`session = NvmlSession().open()`, as `open_or_report` does)
    is entered as it is, as a file is. `open()` and `close()` do nothing when it is open or closed already;
    `open()` raises DriverUnavailable when NVML cannot start."""

    def __init__(self):
        self.active = False

    def open(self) -> NvmlSession:
        if self.active:
            return self
        try:
            pynvml.nvmlInit()
        except (pynvml.NVMLError_LibraryNotFound, pynvml.NVMLError_DriverNotLoaded) as exc:
            raise DriverUnavailable(_error_text(exc)) from exc
        self.active = True
        return self

    def close(self) -> None:
        if not self.active:
            return
        self.active = False
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass

    @contextlib.contextmanager
    def suspended(self):
        """Closed for the duration of the block (a GPU reset needs every NVML client gone), open again after it,
        also when the block fails (DriverUnavailable when NVML cannot start again)."""
        self.close()
        try:
            yield self
        finally:
            self.open()

    def __enter__(self) -> NvmlSession:
        return self.open()

    def __exit__(self, *exc_info) -> bool:
        self.close()
        return False


def open_or_report(result: dict, open_session: Callable[[], Any]) -> Any:
    """Open NVML for an apply: what `open_session()` returns (such as `NvmlSession().open`: an open session, to
    enter with `with`), or None with `result` marked failed and saying why (pynvml not installed: `missing_library`
    names the package; no driver loaded)."""
    if not HAS_PYNVML:
        result.update(failed=True, msg='the Python module pynvml (package %s) is required' % PYNVML_PACKAGE,
                      missing_library=PYNVML_PACKAGE, exception=PYNVML_IMPORT_ERROR)
        return None
    try:
        return open_session()
    except DriverUnavailable as exc:
        result.update(failed=True, msg='NVML is not available (is the NVIDIA driver loaded?): %s' % exc)
        return None


class _GpuReader:
    """Reads one GPU; a call NVML does not support marks the field unsupported, a lost GPU stops the read."""

    def __init__(self, gpu: dict, handle):
        self.gpu = gpu
        self.handle = handle

    def call(self, field: str, func, *args):
        try:
            return func(*args)
        except pynvml.NVMLError_GpuIsLost as exc:
            raise GpuLost(_error_text(exc)) from exc
        except pynvml.NVMLError_NotSupported:
            _facts.mark_unsupported(self.gpu, field)
        except pynvml.NVMLError as exc:
            _facts.mark_error(self.gpu, field, '%s: %s' % (func.__name__, _error_text(exc)))
        return None


def read_system() -> dict:
    return {
        'driver_version': _facts.text(pynvml.nvmlSystemGetDriverVersion()),
        'nvml_version': _facts.text(pynvml.nvmlSystemGetNVMLVersion()),
        'cuda_version': _facts.cuda_version(pynvml.nvmlSystemGetCudaDriverVersion_v2()),
        'count': pynvml.nvmlDeviceGetCount(),
    }


def read_gpu(index: int) -> dict:
    gpu = _facts.new_gpu(index)
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    except pynvml.NVMLError as exc:
        _facts.mark_lost(gpu, _error_text(exc))
        return gpu
    reader = _GpuReader(gpu, handle)
    try:
        _read_identity(reader)
        _read_memory_and_modes(reader)
        _read_mig(reader)
        _read_vgpu(reader)
        _read_settings(reader)
        _read_processes(reader)
    except GpuLost as exc:
        _facts.mark_lost(gpu, str(exc))
    return gpu


def _read_identity(r: _GpuReader) -> None:
    gpu, h = r.gpu, r.handle
    name = r.call('name', pynvml.nvmlDeviceGetName, h)
    gpu['name'] = _facts.text(name) if name is not None else None
    uuid = r.call('uuid', pynvml.nvmlDeviceGetUUID, h)
    gpu['uuid'] = _facts.text(uuid) if uuid is not None else None
    gpu['minor_number'] = r.call('minor_number', pynvml.nvmlDeviceGetMinorNumber, h)
    pci = r.call('pci', pynvml.nvmlDeviceGetPciInfo_v3, h)
    if pci is not None:
        gpu['pci'] = dict(bus_id=_facts.text(pci.busId), **_facts.pci_ids(pci.pciDeviceId, pci.pciSubSystemId))
    gpu['architecture'] = _facts.architecture_name(r.call('architecture', pynvml.nvmlDeviceGetArchitecture, h))
    cc = r.call('compute_capability', pynvml.nvmlDeviceGetCudaComputeCapability, h)
    if cc is not None:
        gpu['compute_capability'] = _facts.compute_capability(*cc)


def _read_memory_and_modes(r: _GpuReader) -> None:
    gpu, h = r.gpu, r.handle
    mem = r.call('memory', pynvml.nvmlDeviceGetMemoryInfo, h, pynvml.nvmlMemory_v2)
    if mem is not None:
        gpu['memory'] = {
            'total_mib': _facts.mib(mem.total),
            'used_mib': _facts.mib(mem.used),
            'free_mib': _facts.mib(mem.free),
            'reserved_mib': _facts.mib(mem.reserved),
        }
    persistence = r.call('persistence_mode', pynvml.nvmlDeviceGetPersistenceMode, h)
    gpu['persistence_mode'] = None if persistence is None else bool(persistence)
    ecc = r.call('ecc', pynvml.nvmlDeviceGetEccMode, h)
    if ecc is not None:
        gpu['ecc'] = {'current': bool(ecc[0]), 'pending': bool(ecc[1])}


def _read_mig(r: _GpuReader) -> None:
    gpu, h = r.gpu, r.handle
    mode = r.call('mig', pynvml.nvmlDeviceGetMigMode, h)
    if mode is None:
        return
    mig = gpu['mig']
    mig['capable'] = True
    mig['current'], mig['pending'] = bool(mode[0]), bool(mode[1])
    try:
        for info in _nvml_mig.gpu_instance_profiles(pynvml, h):
            placements = r.call('mig.profiles.placements', _possible_placements, h, info.id) or []
            mig['profiles'].append(_facts.mig_profile(
                info.id, _facts.text(info.name), info.sliceCount, info.instanceCount, info.memorySizeMB, placements,
                multiprocessors=info.multiprocessorCount, copy_engines=info.copyEngineCount, decoders=info.decoderCount,
                encoders=info.encoderCount, jpegs=info.jpegCount, ofas=info.ofaCount))
            if mig['current']:
                for gi in r.call('mig.gpu_instances', _nvml_mig.gpu_instances, pynvml, h, info.id) or []:
                    mig['gpu_instances'].append(_describe_gpu_instance(r, gi, mig['profiles'][-1]['name']))
    except pynvml.NVMLError_GpuIsLost as exc:
        raise GpuLost(_error_text(exc)) from exc
    mig['profiles'] = _facts.sort_profiles(mig['profiles'])
    mig['gpu_instances'].sort(key=lambda g: g['id'])


def _possible_placements(handle, profile_id: int) -> list[dict]:
    count = ctypes.c_uint(0)
    pynvml.nvmlDeviceGetGpuInstancePossiblePlacements(handle, profile_id, None, ctypes.byref(count))
    placements = (pynvml.c_nvmlGpuInstancePlacement_t * max(count.value, 1))()
    pynvml.nvmlDeviceGetGpuInstancePossiblePlacements(handle, profile_id, placements, ctypes.byref(count))
    return [{'start': p.start, 'size': p.size} for p in placements[:count.value]]


def _compute_instances(gpu_instance, profile_id: int) -> list:
    count = ctypes.c_uint(0)
    instances = (pynvml.c_nvmlComputeInstance_t * 8)()
    pynvml.nvmlGpuInstanceGetComputeInstances(gpu_instance, profile_id, instances, ctypes.byref(count))
    return list(instances[:count.value])


def _describe_gpu_instance(r: _GpuReader, gi, profile_name: str) -> dict:
    info = r.call('mig.gpu_instances', pynvml.nvmlGpuInstanceGetInfo, gi)
    entry = {
        'id': info.id if info else None,
        'profile_id': info.profileId if info else None,
        'profile': profile_name,
        'placement': {'start': info.placement.start, 'size': info.placement.size} if info else None,
        'compute_instances': [],
    }
    for enum in _COMPUTE_INSTANCE_PROFILE_ENUMS:
        try:
            ci_profile = pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(
                gi, enum, pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
        except pynvml.NVMLError:
            continue
        for ci in r.call('mig.compute_instances', _compute_instances, gi, ci_profile.id) or []:
            ci_info = r.call('mig.compute_instances', pynvml.nvmlComputeInstanceGetInfo, ci)
            if ci_info is None:
                continue
            entry['compute_instances'].append({
                'id': ci_info.id,
                'profile_id': ci_info.profileId,
                'slices': ci_profile.sliceCount,
                'placement': {'start': ci_info.placement.start, 'size': ci_info.placement.size},
            })
    entry['compute_instances'].sort(key=lambda c: c['id'])
    return entry


def _read_vgpu(r: _GpuReader) -> None:
    gpu, h = r.gpu, r.handle
    vgpu = gpu['vgpu']
    mode = r.call('vgpu.virtualization_mode', pynvml.nvmlDeviceGetVirtualizationMode, h)
    vgpu['virtualization_mode'] = None if mode is None else _facts.VIRTUALIZATION_MODES.get(mode, 'unknown')
    host_mode = r.call('vgpu.host_mode', pynvml.nvmlDeviceGetHostVgpuMode, h)
    vgpu['host_mode'] = None if host_mode is None else _facts.HOST_VGPU_MODES.get(host_mode, 'unknown')
    supported = r.call('vgpu.supported_types', pynvml.nvmlDeviceGetSupportedVgpus, h)
    if supported is None:
        return
    names = {}
    for type_id in supported:
        type_id = int(type_id)
        names[type_id] = _facts.text(r.call('vgpu.supported_types', pynvml.nvmlVgpuTypeGetName, type_id) or '')
        vgpu['supported_types'].append({
            'id': type_id,
            'name': names[type_id],
            'framebuffer_mib': _facts.mib(r.call('vgpu.supported_types', pynvml.nvmlVgpuTypeGetFramebufferSize, type_id)),
            'max_instances': r.call('vgpu.supported_types', pynvml.nvmlVgpuTypeGetMaxInstances, h, type_id),
        })
    creatable = r.call('vgpu.creatable_types', pynvml.nvmlDeviceGetCreatableVgpus, h) or []
    vgpu['creatable_types'] = [names.get(int(t), str(int(t))) for t in creatable]
    for instance in r.call('vgpu.active', pynvml.nvmlDeviceGetActiveVgpus, h) or []:
        type_id = r.call('vgpu.active', pynvml.nvmlVgpuInstanceGetType, instance)
        uuid = r.call('vgpu.active', pynvml.nvmlVgpuInstanceGetUUID, instance)
        vm_id = r.call('vgpu.active', pynvml.nvmlVgpuInstanceGetVmID, instance)
        vgpu['active'].append({
            'instance': int(instance),
            'type': names.get(type_id, str(type_id)),
            'uuid': _facts.text(uuid) if uuid is not None else None,
            'vm_id': _facts.text(vm_id[0]) if vm_id else None,
        })


def _read_settings(r: _GpuReader) -> None:
    gpu, h = r.gpu, r.handle
    settings = gpu['settings']
    mode = r.call('settings.compute_mode', pynvml.nvmlDeviceGetComputeMode, h)
    settings['compute_mode'] = None if mode is None else _facts.COMPUTE_MODES.get(int(mode), 'unknown')
    limits = r.call('settings.power_limit', pynvml.nvmlDeviceGetPowerManagementLimitConstraints, h)
    if limits is not None:
        power = settings['power_limit']
        power['min_mw'], power['max_mw'] = int(limits[0]), int(limits[1])
        for key, func in (('limit_mw', pynvml.nvmlDeviceGetPowerManagementLimit), ('default_mw', pynvml.nvmlDeviceGetPowerManagementDefaultLimit),
                          ('enforced_mw', pynvml.nvmlDeviceGetEnforcedPowerLimit)):
            value = r.call('settings.power_limit', func, h)
            power[key] = None if value is None else int(value)
    for key, func in (('applications_clocks', pynvml.nvmlDeviceGetApplicationsClock),
                      ('default_applications_clocks', pynvml.nvmlDeviceGetDefaultApplicationsClock)):
        graphics = r.call('settings.' + key, func, h, pynvml.NVML_CLOCK_GRAPHICS)
        memory = r.call('settings.' + key, func, h, pynvml.NVML_CLOCK_MEM) if graphics is not None else None
        settings[key] = {'graphics_mhz': graphics, 'memory_mhz': memory}
    for memory in r.call('settings.supported_clocks', pynvml.nvmlDeviceGetSupportedMemoryClocks, h) or []:
        graphics = r.call('settings.supported_clocks', pynvml.nvmlDeviceGetSupportedGraphicsClocks, h, memory) or []
        settings['supported_clocks'].append({'memory_mhz': int(memory), 'graphics_mhz': [int(g) for g in graphics]})


def _read_processes(r: _GpuReader) -> None:
    procs = r.call('processes', pynvml.nvmlDeviceGetComputeRunningProcesses, r.handle)
    for proc in procs or []:
        gi = getattr(proc, 'gpuInstanceId', _facts.NVML_VALUE_NOT_AVAILABLE_UINT)
        ci = getattr(proc, 'computeInstanceId', _facts.NVML_VALUE_NOT_AVAILABLE_UINT)
        r.gpu['processes'].append({
            'pid': proc.pid,
            'used_memory_mib': _facts.mib(proc.usedGpuMemory),
            'gpu_instance_id': None if gi == _facts.NVML_VALUE_NOT_AVAILABLE_UINT else gi,
            'compute_instance_id': None if ci == _facts.NVML_VALUE_NOT_AVAILABLE_UINT else ci,
        })


# ---------------------------------------------------------------------------------------------------------
# MIG changes. Each function makes the NVML calls of one planned step; a failing call raises NvmlCallError
# naming the call and NVML's error, and deciding what the failure means is left to the caller (_mig_apply).

ERROR_IN_USE = 19  # NVML_ERROR_IN_USE: a process or compute instance uses what a step would change


class NvmlCallError(Exception):
    """An NVML call failed: `call` is the NVML function, `code` its NVML_ERROR_* value, `reason` NVML's text."""

    def __init__(self, call: str, code: int | None, reason: str):
        super().__init__('%s: %s' % (call, reason))
        self.call = call
        self.code = code
        self.reason = reason


def _nvml_call(call: str, *args):
    func = getattr(pynvml, call)
    try:
        return func(*args)
    except pynvml.NVMLError as exc:
        raise NvmlCallError(call, getattr(exc, 'value', None), _error_text(exc)) from exc


def device_handle(index: int):
    return _nvml_call('nvmlDeviceGetHandleByIndex', index)


def gpu_instance_handle(index: int, gpu_instance_id: int):
    """The GPU instance with this id (NOT_FOUND once it is destroyed)."""
    return _nvml_call('nvmlDeviceGetGpuInstanceById', device_handle(index), gpu_instance_id)


def compute_instance_handle(index: int, gpu_instance_id: int, compute_instance_id: int):
    return _nvml_call('nvmlGpuInstanceGetComputeInstanceById', gpu_instance_handle(index, gpu_instance_id), compute_instance_id)


def gpu_instance_id_at(index: int, start: int) -> int | None:
    """The id of the GPU instance placed at `start` (memory slices), or None when no instance starts there."""
    handle = device_handle(index)
    for info in _nvml_mig.gpu_instance_profiles(pynvml, handle, skip_lost=True):
        try:
            instances = _nvml_mig.gpu_instances(pynvml, handle, info.id)
        except pynvml.NVMLError as exc:
            raise NvmlCallError('nvmlDeviceGetGpuInstances', getattr(exc, 'value', None), _error_text(exc)) from exc
        for gpu_instance in instances:
            gi_info = _nvml_call('nvmlGpuInstanceGetInfo', gpu_instance)
            if gi_info.placement.start == start:
                return gi_info.id
    return None


def set_mig_mode(index: int, enabled: bool) -> int:
    """nvmlDeviceSetMigMode; returns the activation status (NVML_ERROR_RESET_REQUIRED: pending until a reset)."""
    mode = pynvml.NVML_DEVICE_MIG_ENABLE if enabled else pynvml.NVML_DEVICE_MIG_DISABLE
    return int(_nvml_call('nvmlDeviceSetMigMode', device_handle(index), mode) or 0)


def create_gpu_instance(index: int, profile_id: int, start: int, size: int) -> int:
    """Create a GPU instance of profile `profile_id` (the id nvidia-smi shows) at this placement; returns its id."""
    placement = pynvml.c_nvmlGpuInstancePlacement_t()
    placement.start, placement.size = start, size
    gpu_instance = _nvml_call('nvmlDeviceCreateGpuInstanceWithPlacement', device_handle(index), profile_id, ctypes.byref(placement))
    return int(_nvml_call('nvmlGpuInstanceGetInfo', gpu_instance).id)


def create_compute_instance(index: int, gpu_instance_id: int, profile: int, start: int) -> int:
    """Create a compute instance of NVML_COMPUTE_INSTANCE_PROFILE_<n>_SLICE `profile` at `start` (compute slices)
    inside a GPU instance; returns its id."""
    gpu_instance = gpu_instance_handle(index, gpu_instance_id)
    info = _nvml_call('nvmlGpuInstanceGetComputeInstanceProfileInfo', gpu_instance, profile,
                      pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
    placement = pynvml.c_nvmlComputeInstancePlacement_t()
    placement.start, placement.size = start, info.sliceCount
    compute_instance = _nvml_call('nvmlGpuInstanceCreateComputeInstanceWithPlacement', gpu_instance, info.id, ctypes.byref(placement))
    return int(_nvml_call('nvmlComputeInstanceGetInfo', compute_instance).id)


def destroy_compute_instance(index: int, gpu_instance_id: int, compute_instance_id: int) -> None:
    _nvml_call('nvmlComputeInstanceDestroy', compute_instance_handle(index, gpu_instance_id, compute_instance_id))


def destroy_gpu_instance(index: int, gpu_instance_id: int) -> None:
    _nvml_call('nvmlGpuInstanceDestroy', gpu_instance_handle(index, gpu_instance_id))


def read_mig_mode(index: int) -> tuple[bool, bool]:
    """(current, pending) MIG mode of one GPU."""
    current, pending = _nvml_call('nvmlDeviceGetMigMode', device_handle(index))
    return bool(current), bool(pending)


# ---------------------------------------------------------------------------------------------------------
# Settings (gpu_settings): one NVML setter per planned step. Each needs root; NVML answers NO_PERMISSION otherwise.

ERROR_NO_PERMISSION = 4  # NVML_ERROR_NO_PERMISSION
_LOCKED_CLOCK_CALLS = {'gpu': ('nvmlDeviceSetGpuLockedClocks', 'nvmlDeviceResetGpuLockedClocks'),
                       'memory': ('nvmlDeviceSetMemoryLockedClocks', 'nvmlDeviceResetMemoryLockedClocks')}


def set_power_limit(index: int, milliwatts: int) -> None:
    _nvml_call('nvmlDeviceSetPowerManagementLimit', device_handle(index), int(milliwatts))


def set_ecc_mode(index: int, enabled: bool) -> None:
    """The pending ECC mode; it becomes current at the next GPU reset or reboot."""
    _nvml_call('nvmlDeviceSetEccMode', device_handle(index), 1 if enabled else 0)


def read_ecc_mode(index: int) -> tuple[bool, bool]:
    """(current, pending) ECC mode of one GPU."""
    current, pending = _nvml_call('nvmlDeviceGetEccMode', device_handle(index))
    return bool(current), bool(pending)


def set_persistence_mode(index: int, enabled: bool) -> None:
    """Persistence mode on the GPU itself (what nvidia-smi -pm sets; nvidia-persistenced is the supported way on)."""
    _nvml_call('nvmlDeviceSetPersistenceMode', device_handle(index), 1 if enabled else 0)


def set_compute_mode(index: int, mode: str) -> None:
    value = {name: number for number, name in _facts.COMPUTE_MODES.items()}[mode]
    _nvml_call('nvmlDeviceSetComputeMode', device_handle(index), value)


def set_applications_clocks(index: int, memory_mhz: int | None, graphics_mhz: int | None) -> None:
    """The application clocks, or (both None) back to the default ones."""
    if memory_mhz is None and graphics_mhz is None:
        _nvml_call('nvmlDeviceResetApplicationsClocks', device_handle(index))
    else:
        _nvml_call('nvmlDeviceSetApplicationsClocks', device_handle(index), int(memory_mhz), int(graphics_mhz))


def set_locked_clocks(index: int, which: str, low: int | None, high: int | None) -> None:
    """Lock the GPU (`which` 'gpu') or memory ('memory') clocks to low..high MHz, or (both None) unlock them."""
    set_call, reset_call = _LOCKED_CLOCK_CALLS[which]
    if low is None and high is None:
        _nvml_call(reset_call, device_handle(index))
    else:
        _nvml_call(set_call, device_handle(index), int(low), int(high))
