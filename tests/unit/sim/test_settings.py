"""GPU settings in the NVML stand-in: constraints, NVML's errors, ECC pending until a reset, defaults after a reboot."""
# pylint: disable=redefined-outer-name,unused-argument  # pytest fixtures are parameters by design
from __future__ import annotations

import pytest


@pytest.fixture
def h200(nvml, simhost):
    simhost.init("h200-141gb:2")
    nvml.nvmlInit()
    return nvml.nvmlDeviceGetHandleByIndex(0)


def test_power_limit_follows_the_constraints_the_real_h200_reports(nvml, h200):
    assert nvml.nvmlDeviceGetPowerManagementLimitConstraints(h200) == [200000, 700000]  # fixtures/real/h200-141gb
    nvml.nvmlDeviceSetPowerManagementLimit(h200, 450000)
    assert nvml.nvmlDeviceGetPowerManagementLimit(h200) == nvml.nvmlDeviceGetEnforcedPowerLimit(h200) == 450000
    assert nvml.nvmlDeviceGetPowerManagementDefaultLimit(h200) == 700000
    for bad in (199999, 700001):
        with pytest.raises(nvml.NVMLError_InvalidArgument):
            nvml.nvmlDeviceSetPowerManagementLimit(h200, bad)
    assert nvml.nvmlDeviceGetPowerManagementLimit(h200) == 450000


def test_supported_clocks_are_the_real_h200_table(nvml, h200):
    assert nvml.nvmlDeviceGetSupportedMemoryClocks(h200) == [3201, 2201]
    graphics = nvml.nvmlDeviceGetSupportedGraphicsClocks(h200, 3201)
    assert (len(graphics), graphics[0], graphics[-1]) == (110, 1980, 345)
    with pytest.raises(nvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetSupportedGraphicsClocks(h200, 3000)


def test_clock_setters_check_the_supported_clocks(nvml, h200):
    nvml.nvmlDeviceSetApplicationsClocks(h200, 2201, 1500)
    assert (nvml.nvmlDeviceGetApplicationsClock(h200, nvml.NVML_CLOCK_MEM), nvml.nvmlDeviceGetApplicationsClock(h200, nvml.NVML_CLOCK_GRAPHICS)) == (2201, 1500)
    assert nvml.nvmlDeviceGetDefaultApplicationsClock(h200, nvml.NVML_CLOCK_GRAPHICS) == 1980
    with pytest.raises(nvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceSetApplicationsClocks(h200, 2201, 1501)
    nvml.nvmlDeviceResetApplicationsClocks(h200)
    assert nvml.nvmlDeviceGetApplicationsClock(h200, nvml.NVML_CLOCK_MEM) == 3201
    nvml.nvmlDeviceSetGpuLockedClocks(h200, 1200, 1200)
    assert nvml.nvmlDeviceGetClockInfo(h200, nvml.NVML_CLOCK_GRAPHICS) == 1200
    for low, high in ((1300, 1200), (100, 1200), (1200, 2000)):
        with pytest.raises(nvml.NVMLError_InvalidArgument):
            nvml.nvmlDeviceSetGpuLockedClocks(h200, low, high)


def test_ecc_change_is_pending_until_a_reset(nvml, simhost, h200):
    nvml.nvmlDeviceSetEccMode(h200, 0)
    assert nvml.nvmlDeviceGetEccMode(h200) == [1, 0]
    assert simhost.ctl("reset", "--gpu", "0") == 0
    assert nvml.nvmlDeviceGetEccMode(h200) == [0, 0]


def test_a_reboot_puts_power_limit_and_clocks_back_to_their_defaults_and_keeps_the_rest(nvml, simhost, h200):
    nvml.nvmlDeviceSetPowerManagementLimit(h200, 300000)
    nvml.nvmlDeviceSetApplicationsClocks(h200, 2201, 1500)
    nvml.nvmlDeviceSetMemoryLockedClocks(h200, 2201, 2201)
    nvml.nvmlDeviceSetComputeMode(h200, nvml.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS)
    nvml.nvmlDeviceSetEccMode(h200, 0)
    assert simhost.ctl("reboot") == 0
    assert nvml.nvmlDeviceGetPowerManagementLimit(h200) == 700000
    assert nvml.nvmlDeviceGetApplicationsClock(h200, nvml.NVML_CLOCK_MEM) == 3201
    assert nvml.nvmlDeviceGetClockInfo(h200, nvml.NVML_CLOCK_MEM) == 3201
    assert nvml.nvmlDeviceGetComputeMode(h200) == nvml.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS
    assert nvml.nvmlDeviceGetEccMode(h200) == [0, 0]


def test_setters_need_root_and_are_counted(nvml, simhost, h200, monkeypatch):
    monkeypatch.setattr(nvml.os, "geteuid", lambda: 1000)
    with pytest.raises(nvml.NVMLError_NoPermission):
        nvml.nvmlDeviceSetPowerManagementLimit(h200, 450000)
    with pytest.raises(nvml.NVMLError_NoPermission):
        nvml.nvmlDeviceSetEccMode(h200, 0)
    assert nvml.nvmlDeviceGetPowerManagementLimit(h200) == 700000
    assert simhost.state()["nvml_mutations"] == {"nvmlDeviceSetPowerManagementLimit": 1, "nvmlDeviceSetEccMode": 1}


def test_what_a_model_lacks_is_not_supported(nvml, simhost):
    simhost.init("a100-sxm4-40gb")
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(nvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetSupportedMemoryClocks(handle)
    with pytest.raises(nvml.NVMLError_NotSupported):
        nvml.nvmlDeviceSetGpuLockedClocks(handle, 1000, 1000)
    with pytest.raises(nvml.NVMLError_NotSupported):
        nvml.nvmlDeviceSetComputeMode(handle, nvml.NVML_COMPUTEMODE_EXCLUSIVE_THREAD)


def test_the_persistence_daemon_turns_persistence_on_and_off(nvml, simhost):
    from gpusim import holderd  # pylint: disable=import-outside-toplevel
    simhost.init("h200-141gb:2")
    holderd.persistence_mode(False)
    assert [g["persistence"] for g in simhost.state()["gpus"]] == [0, 0]
    holderd.persistence_mode(True)
    nvml.nvmlInit()
    assert nvml.nvmlDeviceGetPersistenceMode(nvml.nvmlDeviceGetHandleByIndex(1)) == 1
