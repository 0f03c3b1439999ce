"""What the apply tests need from the simulator: counted NVML mutations, nth-call faults, and nvidia-smi -r."""
# pylint: disable=redefined-outer-name,unused-argument  # pytest fixtures are parameters by design
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SMI = str(Path(__file__).resolve().parents[3] / "sim" / "bin" / "nvidia-smi")


def _enable_mig(nvml, simhost, index=0):
    nvml.nvmlDeviceSetMigMode(nvml.nvmlDeviceGetHandleByIndex(index), 1)
    simhost.ok("reset", "--gpu", str(index))


def _create_1g(nvml, index=0, start=0):
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    place = nvml.c_nvmlGpuInstancePlacement_t()
    place.start, place.size = start, 1
    profile = nvml.nvmlDeviceGetGpuInstanceProfileInfo(handle, nvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE)
    return nvml.nvmlDeviceCreateGpuInstanceWithPlacement(handle, profile.id, nvml.byref(place))


def test_mutating_calls_are_counted_by_name_failed_ones_included_reads_not(nvml, simhost):
    simhost.init("h100-80gb-hbm3:2")
    nvml.nvmlInit()
    assert "nvml_mutations" not in simhost.state()
    _enable_mig(nvml, simhost)
    nvml.nvmlDeviceGetMigMode(nvml.nvmlDeviceGetHandleByIndex(0))
    gpu_instance = _create_1g(nvml)
    with pytest.raises(nvml.NVMLError_InsufficientResources):
        _create_1g(nvml)  # the same placement again
    nvml.nvmlGpuInstanceDestroy(gpu_instance)
    assert simhost.state()["nvml_mutations"] == {
        "nvmlDeviceSetMigMode": 1, "nvmlDeviceCreateGpuInstanceWithPlacement": 2, "nvmlGpuInstanceDestroy": 1}
    assert simhost.state()["gpus"][0]["gpu_instances"] == []


def test_an_nth_call_fault_fails_only_that_call_and_leaves_the_gpu_as_it_was(nvml, simhost):
    simhost.init("h100-80gb-hbm3:1")
    nvml.nvmlInit()
    _enable_mig(nvml, simhost)
    simhost.ok("fault", "set", "--call", "nvmlDeviceCreateGpuInstanceWithPlacement", "--error", "NVML_ERROR_UNKNOWN", "--nth", "2")
    _create_1g(nvml, start=0)
    with pytest.raises(nvml.NVMLError_Unknown):
        _create_1g(nvml, start=1)
    assert [g["start"] for g in simhost.state()["gpus"][0]["gpu_instances"]] == [0]
    _create_1g(nvml, start=1)  # the fault fired once
    _create_1g(nvml, start=2)
    assert [g["start"] for g in simhost.state()["gpus"][0]["gpu_instances"]] == [0, 1, 2]
    assert nvml.nvmlDeviceGetMigMode(nvml.nvmlDeviceGetHandleByIndex(0)) == [1, 1]  # reads are never affected


def test_an_nth_call_fault_on_one_gpu_counts_that_gpus_calls_only(nvml, simhost):
    simhost.init("h100-80gb-hbm3:2")
    nvml.nvmlInit()
    simhost.ok("fault", "set", "--gpu", "1", "--call", "nvmlDeviceSetMigMode", "--error", "NVML_ERROR_IN_USE", "--nth", "1")
    nvml.nvmlDeviceSetMigMode(nvml.nvmlDeviceGetHandleByIndex(0), 1)
    with pytest.raises(nvml.NVMLError_InUse):
        nvml.nvmlDeviceSetMigMode(nvml.nvmlDeviceGetHandleByIndex(1), 1)
    assert [g["mig"]["pending"] for g in simhost.state()["gpus"]] == [1, 0]
    nvml.nvmlDeviceSetMigMode(nvml.nvmlDeviceGetHandleByIndex(1), 1)
    assert [g["mig"]["pending"] for g in simhost.state()["gpus"]] == [1, 1]


def test_nth_must_be_positive(simhost):
    simhost.init("h100-80gb-hbm3:1")
    proc = simhost.run("fault", "set", "--call", "nvmlGpuInstanceDestroy", "--error", "UNKNOWN", "--nth", "0")
    assert proc.returncode == 2 and "--nth 0: must be at least 1" in proc.stderr


def _smi(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SMI, *args], capture_output=True, text=True, env=dict(os.environ), check=False)


def test_nvidia_smi_r_resets_one_gpu_making_the_pending_mode_current(nvml, simhost):
    simhost.init("h100-80gb-hbm3:2")
    nvml.nvmlInit()
    nvml.nvmlDeviceSetMigMode(nvml.nvmlDeviceGetHandleByIndex(1), 1)
    nvml.nvmlShutdown()  # this process's open NVML session would hold the GPUs, as on a real host
    proc = _smi("-r", "-i", "1")
    assert (proc.returncode, proc.stdout) == (0, "GPU 00000000:2A:00.0 was successfully reset.\n")
    state = simhost.state()
    assert [g["mig"] for g in state["gpus"]] == [{"current": 0, "pending": 0}, {"current": 1, "pending": 1}]
    assert [g.get("resets", 0) for g in state["gpus"]] == [0, 1]
    uuid = state["gpus"][1]["uuid"]
    for target in ("00000000:2A:00.0", uuid):
        assert _smi("--gpu-reset", "-i", target).returncode == 0
    assert simhost.state()["gpus"][1]["resets"] == 3


def test_nvidia_smi_r_is_refused_while_processes_use_the_gpu(nvml, simhost):
    simhost.init("h100-80gb-hbm3:1")
    simhost.ok("proc", "add", "--gpu", "0", "--pid", "4242", "--mem-mib", "100")
    proc = _smi("-r", "-i", "0")
    assert proc.returncode == 255 and proc.stdout.startswith(
        "The following GPUs could not be reset:\n  GPU 00000000:18:00.0: In use by another client\n\n1 device is currently")
    assert "Please first kill all processes" in proc.stdout and "resets" not in simhost.state()["gpus"][0]


def test_nvidia_smi_r_is_refused_where_a_reset_needs_a_reboot(nvml, simhost):
    simhost.init("h100-80gb-hbm3:1")
    simhost.ok("fault", "set", "--gpu", "0", "--call", "reset", "--error", "NVML_ERROR_RESET_REQUIRED")
    proc = _smi("-r", "-i", "0")
    assert (proc.returncode, proc.stdout) == (3, "\nResetting GPU 00000000:18:00.0 is not supported.\n")
    simhost.ok("reboot")
    assert _smi("-r", "-i", "0").returncode == 0


def test_nvidia_smi_r_without_a_gpu_is_refused_as_unsupported(simhost):
    simhost.init("h100-80gb-hbm3:1")
    proc = _smi("-r")
    assert proc.returncode == 2 and "unsupported arguments: -r" in proc.stderr
