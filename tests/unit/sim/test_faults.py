"""Injected faults, lost GPUs, missing or unloaded drivers, and the NVML life cycle."""
# pylint: disable=redefined-outer-name,unused-argument  # pytest fixtures are parameters by design
from __future__ import annotations

import pytest


def test_calls_before_init_are_uninitialized(nvml, simhost):
    simhost.init("h100-80gb-hbm3")
    with pytest.raises(nvml.NVMLError_Uninitialized):
        nvml.nvmlDeviceGetCount()
    with pytest.raises(nvml.NVMLError_Uninitialized):
        nvml.nvmlSystemGetDriverVersion()


def test_init_is_reference_counted(nvml, simhost):
    simhost.init("h100-80gb-hbm3")
    nvml.nvmlInit()
    nvml.nvmlInit()
    nvml.nvmlShutdown()
    assert nvml.nvmlDeviceGetCount() == 1
    nvml.nvmlShutdown()
    with pytest.raises(nvml.NVMLError_Uninitialized):
        nvml.nvmlDeviceGetCount()
    with pytest.raises(nvml.NVMLError_Uninitialized):
        nvml.nvmlShutdown()


def test_no_driver_means_library_not_found(nvml, simhost):
    simhost.init("h100-80gb-hbm3", extra=("--no-driver",))
    with pytest.raises(nvml.NVMLError_LibraryNotFound) as info:
        nvml.nvmlInit()
    assert str(info.value) == "NVML Shared Library Not Found"


def test_host_without_simulator_state_has_no_library(nvml, simhost):
    with pytest.raises(nvml.NVMLError_LibraryNotFound):
        nvml.nvmlInit()


def test_driver_installed_but_not_loaded(nvml, simhost):
    simhost.init("h100-80gb-hbm3", extra=("--driver-not-loaded",))
    with pytest.raises(nvml.NVMLError_DriverNotLoaded) as info:
        nvml.nvmlInitWithFlags(0)
    assert str(info.value) == "Driver Not Loaded"


def test_open_kernel_modules_do_not_drive_volta(nvml, simhost):
    simhost.init("v100-sxm2-32gb", "t4", extra=("--flavor", "open"))
    nvml.nvmlInit()
    assert nvml.nvmlDeviceGetCount() == 1
    assert nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(0)) == "Tesla T4"
    nvml.nvmlShutdown()
    simhost.init("v100-sxm2-32gb", extra=("--flavor", "open"))
    with pytest.raises(nvml.NVMLError_DriverNotLoaded):
        nvml.nvmlInit()
    simhost.init("v100-sxm2-32gb", extra=("--flavor", "proprietary"))
    nvml.nvmlInit()
    assert nvml.nvmlDeviceGetCount() == 1


def test_injected_error_on_one_gpu(nvml, simhost):
    simhost.init("h100-80gb-hbm3:2")
    simhost.ok("fault", "set", "--gpu", "1", "--call", "nvmlDeviceGetPowerUsage", "--error", "NVML_ERROR_UNKNOWN")
    nvml.nvmlInit()
    assert nvml.nvmlDeviceGetPowerUsage(nvml.nvmlDeviceGetHandleByIndex(0)) > 0
    with pytest.raises(nvml.NVMLError_Unknown):
        nvml.nvmlDeviceGetPowerUsage(nvml.nvmlDeviceGetHandleByIndex(1))
    assert nvml.nvmlDeviceGetTemperature(nvml.nvmlDeviceGetHandleByIndex(1), 0) > 0


def test_injected_error_on_all_gpus_and_system_calls(nvml, simhost):
    simhost.init("h100-80gb-hbm3:2")
    nvml.nvmlInit()
    simhost.ok("fault", "set", "--gpu", "all", "--call", "nvmlDeviceGetMigMode", "--error", "NOT_SUPPORTED")
    simhost.ok("fault", "set", "--call", "nvmlSystemGetDriverVersion", "--error", "NVML_ERROR_TIMEOUT")
    for index in (0, 1):
        with pytest.raises(nvml.NVMLError_NotSupported):
            nvml.nvmlDeviceGetMigMode(nvml.nvmlDeviceGetHandleByIndex(index))
    with pytest.raises(nvml.NVMLError_Timeout):
        nvml.nvmlSystemGetDriverVersion()
    simhost.ok("fault", "clear")
    assert nvml.nvmlDeviceGetMigMode(nvml.nvmlDeviceGetHandleByIndex(0)) == [0, 0]
    assert nvml.nvmlSystemGetDriverVersion() == "580.159.04"


def test_injected_error_on_init(nvml, simhost):
    simhost.init("h100-80gb-hbm3")
    simhost.ok("fault", "set", "--call", "nvmlInit", "--error", "NVML_ERROR_NO_PERMISSION")
    with pytest.raises(nvml.NVMLError_NoPermission):
        nvml.nvmlInit()


def test_injected_error_on_a_mutation_leaves_the_state_alone(nvml, simhost):
    simhost.init("h100-80gb-hbm3")
    nvml.nvmlInit()
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    simhost.ok("fault", "set", "--gpu", "0", "--call", "nvmlDeviceSetMigMode", "--error", "NVML_ERROR_NO_PERMISSION")
    with pytest.raises(nvml.NVMLError_NoPermission):
        nvml.nvmlDeviceSetMigMode(h, 1)
    assert nvml.nvmlDeviceGetMigMode(h) == [0, 0]


def test_lost_gpu_fails_every_device_call_but_is_still_counted(nvml, simhost):
    simhost.init("h100-80gb-hbm3:2")
    nvml.nvmlInit()
    simhost.ok("lose", "--gpu", "1")
    assert nvml.nvmlDeviceGetCount() == 2
    lost = nvml.nvmlDeviceGetHandleByIndex(1)
    for call in (nvml.nvmlDeviceGetName, nvml.nvmlDeviceGetUUID, nvml.nvmlDeviceGetMemoryInfo, nvml.nvmlDeviceGetMigMode,
                 nvml.nvmlDeviceGetPciInfo_v3, nvml.nvmlDeviceGetPowerUsage):
        with pytest.raises(nvml.NVMLError_GpuIsLost) as info:
            call(lost)
        assert str(info.value) == "GPU is lost"
    assert nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(0)) == "NVIDIA H100 80GB HBM3"
    simhost.ok("reboot")
    assert nvml.nvmlDeviceGetName(lost) == "NVIDIA H100 80GB HBM3"


def test_handle_lookups_of_a_lost_gpu(nvml, simhost):
    simhost.init("h100-80gb-hbm3")
    nvml.nvmlInit()
    uuid = nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(0))
    simhost.ok("lose", "--gpu", "0")
    with pytest.raises(nvml.NVMLError_GpuIsLost):
        nvml.nvmlDeviceGetHandleByUUID(uuid)
    with pytest.raises(nvml.NVMLError_GpuIsLost):
        nvml.nvmlDeviceGetHandleByPciBusId("00000000:18:00.0")


def test_reset_refused_while_processes_run(nvml, simhost):
    simhost.init("h100-80gb-hbm3")
    simhost.ok("proc", "add", "--gpu", "0", "--pid", "123", "--mem-mib", "10")
    result = simhost.run("reset", "--gpu", "0")
    assert result.returncode == 1
    assert "123" in result.stderr and "in use" in result.stderr.lower()
    simhost.ok("proc", "clear")
    assert simhost.run("reset", "--gpu", "0").returncode == 0


def test_reset_that_needs_a_reboot(nvml, simhost):
    simhost.init("h100-80gb-hbm3")
    nvml.nvmlInit()
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    nvml.nvmlDeviceSetMigMode(h, 1)
    simhost.ok("fault", "set", "--gpu", "0", "--call", "reset", "--error", "NVML_ERROR_RESET_REQUIRED")
    nvml.nvmlShutdown()  # an open session of this process would hold the GPU (IN_USE) before the fault is reached
    result = simhost.run("reset", "--gpu", "0")
    assert result.returncode == 1 and "reboot is required" in result.stderr
    nvml.nvmlInit()
    assert nvml.nvmlDeviceGetMigMode(h) == [0, 1]
    simhost.ok("reboot")
    assert nvml.nvmlDeviceGetMigMode(h) == [1, 1]
    assert simhost.state()["gpus"][0]["faults"] == []
    assert simhost.run("reset", "--gpu", "0").returncode == 0


def test_bad_handles_are_invalid_arguments(nvml, simhost):
    simhost.init("h100-80gb-hbm3")
    nvml.nvmlInit()
    with pytest.raises(nvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetHandleByIndex(1)
    with pytest.raises(nvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetName(nvml.c_nvmlDevice_t())
    with pytest.raises(nvml.NVMLError_NotFound):
        nvml.nvmlDeviceGetHandleByUUID("GPU-00000000-0000-0000-0000-000000000000")
