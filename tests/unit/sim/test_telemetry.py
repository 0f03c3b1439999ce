"""Exporter-facing queries: types, plausibility, and load that follows the simulated processes."""
# pylint: disable=redefined-outer-name  # pytest fixtures are parameters by design
from __future__ import annotations

import ctypes
import time

import pytest


@pytest.fixture
def gpus(nvml, simhost):
    simhost.init("h100-80gb-hbm3", "t4", "v100-sxm2-32gb", extra=("--flavor", "proprietary"))
    nvml.nvmlInit()
    return [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(3)]


def test_idle_gpu_reports_idle_figures(nvml, gpus):
    h100 = gpus[0]
    util = nvml.nvmlDeviceGetUtilizationRates(h100)
    assert isinstance(util, nvml.c_nvmlUtilization_t) and (util.gpu, util.memory) == (0, 0)
    assert nvml.nvmlDeviceGetCurrentClocksEventReasons(h100) == nvml.nvmlClocksEventReasonGpuIdle
    assert nvml.nvmlDeviceGetPowerUsage(h100) < nvml.nvmlDeviceGetEnforcedPowerLimit(h100)


def test_busy_gpu_draws_more_power_and_runs_hotter(nvml, simhost, gpus):
    h100 = gpus[0]
    idle_power, idle_temp = nvml.nvmlDeviceGetPowerUsage(h100), nvml.nvmlDeviceGetTemperature(h100, 0)
    simhost.ok("proc", "add", "--gpu", "0", "--pid", "3", "--mem-mib", "4096")
    assert nvml.nvmlDeviceGetUtilizationRates(h100).gpu > 50
    assert idle_power < nvml.nvmlDeviceGetPowerUsage(h100) <= nvml.nvmlDeviceGetEnforcedPowerLimit(h100)
    assert nvml.nvmlDeviceGetTemperature(h100, 0) > idle_temp
    assert nvml.nvmlDeviceGetCurrentClocksEventReasons(h100) == nvml.nvmlClocksEventReasonNone
    mem = nvml.nvmlDeviceGetMemoryInfo(h100, version=nvml.nvmlMemory_v2)
    assert mem.used == 4096 << 20
    proc = nvml.nvmlDeviceGetComputeRunningProcesses(h100)[0]
    assert (proc.pid, proc.usedGpuMemory, proc.gpuInstanceId, proc.computeInstanceId) == (3, 4096 << 20, 0xFFFFFFFF, 0xFFFFFFFF)
    assert nvml.nvmlDeviceGetGraphicsRunningProcesses(h100) == []


def test_energy_is_monotonic(nvml, gpus):
    first = nvml.nvmlDeviceGetTotalEnergyConsumption(gpus[1])
    time.sleep(0.02)
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(gpus[1]) > first


def test_clocks_and_pcie(nvml, gpus):
    h100 = gpus[0]
    assert nvml.nvmlDeviceGetMaxClockInfo(h100, nvml.NVML_CLOCK_MEM) == 2619
    assert nvml.nvmlDeviceGetClockInfo(h100, nvml.NVML_CLOCK_SM) <= nvml.nvmlDeviceGetMaxClockInfo(h100, nvml.NVML_CLOCK_SM)
    with pytest.raises(nvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetClockInfo(h100, 9)
    assert nvml.nvmlDeviceGetPcieThroughput(h100, nvml.NVML_PCIE_UTIL_RX_BYTES) >= 0
    assert (nvml.nvmlDeviceGetCurrPcieLinkGeneration(gpus[1]), nvml.nvmlDeviceGetCurrPcieLinkWidth(gpus[1])) == (3, 16)


def test_page_retirement_and_row_remapping_by_architecture(nvml, gpus):
    h100, t4, v100 = gpus
    with pytest.raises(nvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetRetiredPages(h100, 0)
    assert nvml.nvmlDeviceGetRetiredPages(v100, 0) == []
    assert nvml.nvmlDeviceGetRemappedRows(h100) == (0, 0, 0, 0)
    with pytest.raises(nvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetRemappedRows(t4)


def test_gsp_firmware_by_architecture(nvml, gpus):
    h100, v100 = gpus[0], gpus[2]
    assert nvml.nvmlDeviceGetGspFirmwareMode(h100) == [1, 1]
    assert nvml.nvmlDeviceGetGspFirmwareMode(v100) == [0, 0]
    with pytest.raises(nvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetGspFirmwareVersion(v100)
    enabled, default = ctypes.c_uint(), ctypes.c_uint()
    assert nvml.nvmlDeviceGetGspFirmwareMode(h100, ctypes.byref(enabled), ctypes.byref(default)) == nvml.NVML_SUCCESS
    assert (enabled.value, default.value) == (1, 1)


def test_pci_lookups(nvml, gpus):
    t4 = gpus[1]
    info = nvml.nvmlDeviceGetPciInfo(t4)
    assert isinstance(info, nvml.nvmlPciInfo_t)
    assert (info.busId, info.busIdLegacy) == ("00000000:2A:00.0", "0000:2A:00.0")
    assert (info.pciDeviceId, info.pciSubSystemId) == (0x1EB810DE, 0x12A210DE)
    for text in ("00000000:2A:00.0", "0000:2a:00.0", "2a:00.0", b"00000000:2A:00.0"):
        assert nvml.nvmlDeviceGetIndex(nvml.nvmlDeviceGetHandleByPciBusId(text)) == 1
    with pytest.raises(nvml.NVMLError_NotFound):
        nvml.nvmlDeviceGetHandleByPciBusId("0000:99:00.0")


def test_warm_calls_are_cheap(nvml, gpus):
    # the real H100 answers 4 metrics in 13 us; the stand-in must stay well below a millisecond per call
    h100 = gpus[0]
    start = time.perf_counter()
    for _round in range(200):
        nvml.nvmlDeviceGetUtilizationRates(h100)
        nvml.nvmlDeviceGetMemoryInfo(h100)
        nvml.nvmlDeviceGetTemperature(h100, 0)
        nvml.nvmlDeviceGetPowerUsage(h100)
    assert (time.perf_counter() - start) / 800 < 0.0005
