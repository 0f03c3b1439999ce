"""The NVML stand-in has the same API surface as nvidia-ml-py 13.x for what it implements."""
# pylint: disable=redefined-outer-name,protected-access  # pytest fixtures are parameters by design
from __future__ import annotations

import ctypes
import inspect
import sys

import pytest

sim_pynvml = sys.modules["sim_pynvml"]  # loaded by conftest.py from sim/lib/pynvml.py

MUST = """
nvmlInit nvmlInitWithFlags nvmlShutdown nvmlSystemGetDriverVersion nvmlSystemGetNVMLVersion nvmlSystemGetCudaDriverVersion
nvmlSystemGetCudaDriverVersion_v2 nvmlDeviceGetCount nvmlDeviceGetHandleByIndex nvmlDeviceGetHandleByUUID nvmlDeviceGetHandleByPciBusId
nvmlDeviceGetIndex nvmlDeviceGetName nvmlDeviceGetUUID nvmlDeviceGetSerial nvmlDeviceGetMinorNumber nvmlDeviceGetBrand
nvmlDeviceGetVbiosVersion nvmlDeviceGetBoardPartNumber nvmlDeviceGetPciInfo nvmlDeviceGetPciInfo_v3 nvmlDeviceGetArchitecture
nvmlDeviceGetCudaComputeCapability nvmlDeviceGetMemoryInfo nvmlDeviceGetPersistenceMode nvmlDeviceGetEccMode nvmlDeviceGetMigMode
nvmlDeviceSetMigMode nvmlDeviceGetMaxMigDeviceCount nvmlDeviceGetMigDeviceHandleByIndex nvmlDeviceIsMigDeviceHandle
nvmlDeviceGetGpuInstanceId nvmlDeviceGetComputeInstanceId nvmlDeviceGetGpuInstanceProfileInfo nvmlDeviceGetGpuInstanceProfileInfoById
nvmlDeviceGetGpuInstanceRemainingCapacity nvmlDeviceGetGpuInstancePossiblePlacements nvmlDeviceGetGpuInstances
nvmlDeviceGetGpuInstanceById nvmlGpuInstanceGetInfo nvmlGpuInstanceGetComputeInstanceProfileInfo nvmlGpuInstanceGetComputeInstances
nvmlComputeInstanceGetInfo nvmlComputeInstanceGetInfo_v2 nvmlDeviceCreateGpuInstance nvmlDeviceCreateGpuInstanceWithPlacement
nvmlGpuInstanceDestroy nvmlGpuInstanceCreateComputeInstance nvmlGpuInstanceCreateComputeInstanceWithPlacement nvmlComputeInstanceDestroy
nvmlDeviceGetVirtualizationMode nvmlDeviceGetHostVgpuMode nvmlDeviceGetSupportedVgpus nvmlDeviceGetCreatableVgpus nvmlDeviceGetActiveVgpus
nvmlVgpuTypeGetName nvmlVgpuTypeGetFramebufferSize nvmlVgpuTypeGetMaxInstances nvmlVgpuTypeGetClass nvmlVgpuInstanceGetType
nvmlVgpuInstanceGetUUID nvmlVgpuInstanceGetVmID nvmlVgpuInstanceGetFbUsage nvmlDeviceGetComputeRunningProcesses
nvmlDeviceGetGraphicsRunningProcesses
nvmlDeviceGetUtilizationRates nvmlDeviceGetEncoderUtilization nvmlDeviceGetDecoderUtilization nvmlDeviceGetTemperature
nvmlDeviceGetPowerUsage nvmlDeviceGetTotalEnergyConsumption nvmlDeviceGetEnforcedPowerLimit nvmlDeviceGetPowerManagementLimitConstraints
nvmlDeviceGetClockInfo nvmlDeviceGetMaxClockInfo nvmlDeviceGetPerformanceState nvmlDeviceGetCurrentClocksEventReasons
nvmlDeviceGetCurrentClocksThrottleReasons nvmlDeviceGetFanSpeed nvmlDeviceGetPcieThroughput nvmlDeviceGetCurrPcieLinkGeneration
nvmlDeviceGetCurrPcieLinkWidth nvmlDeviceGetPcieReplayCounter nvmlDeviceGetTotalEccErrors nvmlDeviceGetRetiredPages
nvmlDeviceGetRemappedRows nvmlDeviceGetBAR1MemoryInfo nvmlDeviceGetComputeMode nvmlDeviceGetGspFirmwareMode
nvmlDeviceGetGspFirmwareVersion nvmlDeviceGetNumaNodeId nvmlDeviceGetInforomImageVersion nvmlDeviceGetBoardId
nvmlDeviceGetMultiGpuBoard nvmlDeviceGetSupportedEventTypes nvmlErrorString
""".split()

STRUCTS = """
nvmlPciInfo_t c_nvmlMemory_t c_nvmlMemory_v2_t c_nvmlBAR1Memory_t c_nvmlProcessInfo_v2_t c_nvmlProcessInfo_t c_nvmlUtilization_t
c_nvmlGpuInstancePlacement_t c_nvmlGpuInstanceProfileInfo_t c_nvmlGpuInstanceProfileInfo_v2_t c_nvmlGpuInstanceInfo_t
c_nvmlComputeInstancePlacement_t c_nvmlComputeInstanceProfileInfo_t c_nvmlComputeInstanceProfileInfo_v2_t c_nvmlComputeInstanceInfo_t
c_nvmlDeviceAttributes c_nvmlEccErrorCounts_t
""".split()


def _public_functions(module):
    return {name: obj for name, obj in vars(module).items() if inspect.isfunction(obj) and not name.startswith("_")}


def test_every_must_call_is_implemented():
    missing = [name for name in MUST if not callable(getattr(sim_pynvml, name, None))]
    assert not missing


def test_every_must_call_exists_in_the_real_bindings(real_pynvml):
    # guards the MUST list itself against typos
    assert [name for name in MUST if not hasattr(real_pynvml, name)] == []


def test_signatures_equal_the_real_ones(real_pynvml):
    mismatches = []
    for name, func in _public_functions(sim_pynvml).items():
        real = getattr(real_pynvml, name, None)
        if real is None:
            continue
        ours, theirs = inspect.signature(func), inspect.signature(real)
        # defaults that are ctypes instances (nvmlDeviceGetGspFirmwareMode) never compare equal: compare their repr
        if ours != theirs and str(ours) != str(theirs):
            mismatches.append("%s%s != %s" % (name, ours, theirs))
    assert not mismatches


def test_no_public_function_that_the_real_bindings_lack(real_pynvml):
    extra = sorted(set(_public_functions(sim_pynvml)) - set(vars(real_pynvml)))
    assert extra == []


def test_constants_have_the_real_values(real_pynvml):
    wrong = []
    for name, value in vars(sim_pynvml).items():
        if not name.startswith(("NVML_", "nvml")) or callable(value) and not isinstance(value, ctypes._SimpleCData):
            continue
        if isinstance(value, type):
            continue
        if not hasattr(real_pynvml, name):
            wrong.append("%s: not in nvidia-ml-py" % name)
            continue
        real = getattr(real_pynvml, name)
        if isinstance(value, ctypes._SimpleCData):
            value, real = value.value, real.value
        if value != real:
            wrong.append("%s = %r, real %r" % (name, value, real))
    assert not wrong


def test_struct_classes_have_the_real_field_names(real_pynvml):
    for name in STRUCTS:
        ours = [f[0] for f in getattr(sim_pynvml, name)._fields_]
        theirs = [f[0] for f in getattr(real_pynvml, name)._fields_]
        assert ours == theirs, name


def test_handle_types_are_ctypes_pointers_like_the_real_ones(real_pynvml):
    for name in ("c_nvmlDevice_t", "c_nvmlGpuInstance_t", "c_nvmlComputeInstance_t"):
        assert issubclass(getattr(sim_pynvml, name), ctypes._Pointer)
        assert getattr(sim_pynvml, name).__name__ == getattr(real_pynvml, name).__name__


def _error_classes(module):
    return {name: obj for name, obj in vars(module).items() if name.startswith("NVMLError_") and isinstance(obj, type)}


def test_every_real_error_class_exists_with_the_same_code(real_pynvml):
    ours = _error_classes(sim_pynvml)
    for name, cls in _error_classes(real_pynvml).items():
        assert name in ours, name
        assert ours[name]().value == cls().value, name
        assert issubclass(ours[name], sim_pynvml.NVMLError)


@pytest.mark.usefixtures("pristine_error_texts")
def test_error_texts_equal_the_real_ones_before_any_init(real_pynvml):
    # neither library is loaded here: both answer from the bindings' own table or "NVML Error with code N"
    for name, cls in _error_classes(real_pynvml).items():
        assert str(getattr(sim_pynvml, name)()) == str(cls()), name


@pytest.mark.parametrize("code,cls_name,text", [
    (3, "NVMLError_NotSupported", "Not Supported"),
    (15, "NVMLError_GpuIsLost", "GPU is lost"),
    (9, "NVMLError_DriverNotLoaded", "Driver Not Loaded"),
    (12, "NVMLError_LibraryNotFound", "NVML Shared Library Not Found"),
])
def test_base_class_maps_codes_to_subclasses(code, cls_name, text):
    err = sim_pynvml.NVMLError(code)
    assert type(err).__name__ == cls_name
    assert err.value == code
    assert str(err) == text
    assert err == getattr(sim_pynvml, cls_name)()
    assert sim_pynvml.nvmlExceptionClass(code) is type(err)


def test_unknown_code_stays_base_class():
    err = sim_pynvml.NVMLError(4242)
    assert err.__class__ is sim_pynvml.NVMLError and err.value == 4242


@pytest.mark.usefixtures("pristine_error_texts")
def test_error_strings_come_from_the_library_once_it_is_loaded(nvml, simhost):
    simhost.init("h100-80gb-hbm3")
    nvml.nvmlInit()
    assert nvml.nvmlErrorString(19) == "In use by another client"
    assert str(nvml.NVMLError_InsufficientResources()) == "Ran out of critical resources, other than memory"
