"""vGPU host behaviour of the vGPU-capable models (A40 SR-IOV, T4 mdev)."""
# pylint: disable=redefined-outer-name  # pytest fixtures are parameters by design
from __future__ import annotations

import json

import pytest

A40_1Q, A40_2Q, A40_48Q = 557, 558, 566
T4_1Q = 230


@pytest.fixture
def a40_host(nvml, simhost):
    simhost.init("a40", "t4", "h100-80gb-hbm3", extra=("--vgpu-host",))
    nvml.nvmlInit()
    return [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(3)]


def test_vgpu_host_modes(nvml, a40_host):
    a40, t4, h100 = a40_host
    assert nvml.nvmlDeviceGetVirtualizationMode(a40) == nvml.NVML_GPU_VIRTUALIZATION_MODE_HOST_VGPU
    assert nvml.nvmlDeviceGetHostVgpuMode(a40) == nvml.NVML_HOST_VGPU_MODE_SRIOV
    assert nvml.nvmlDeviceGetHostVgpuMode(t4) == nvml.NVML_HOST_VGPU_MODE_NON_SRIOV
    assert nvml.nvmlDeviceGetVirtualizationMode(h100) == nvml.NVML_GPU_VIRTUALIZATION_MODE_PASSTHROUGH
    with pytest.raises(nvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetHostVgpuMode(h100)


def test_supported_types_and_their_attributes(nvml, a40_host):
    a40, t4 = a40_host[:2]
    supported = nvml.nvmlDeviceGetSupportedVgpus(a40)
    assert A40_1Q in supported and T4_1Q not in supported
    assert T4_1Q in nvml.nvmlDeviceGetSupportedVgpus(t4)
    assert nvml.nvmlVgpuTypeGetName(A40_1Q) == "NVIDIA A40-1Q"
    assert nvml.nvmlVgpuTypeGetClass(A40_1Q) == "Quadro"
    assert nvml.nvmlVgpuTypeGetFramebufferSize(A40_2Q) == 2 << 30
    assert nvml.nvmlVgpuTypeGetMaxInstances(a40, A40_2Q) == 24
    assert nvml.nvmlVgpuTypeGetMaxInstances(t4, T4_1Q) == 16
    with pytest.raises(nvml.NVMLError_InvalidArgument):
        nvml.nvmlVgpuTypeGetMaxInstances(t4, A40_1Q)


def test_creatable_types_follow_the_active_instances(nvml, simhost, a40_host):
    a40 = a40_host[0]
    assert nvml.nvmlDeviceGetCreatableVgpus(a40) == nvml.nvmlDeviceGetSupportedVgpus(a40)
    assert nvml.nvmlDeviceGetActiveVgpus(a40) == []
    result = simhost.run("vgpu", "add", "--gpu", "0", "--type", str(A40_48Q), "--vm-id", "vm-1")
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    assert nvml.nvmlDeviceGetCreatableVgpus(a40) == []
    active = nvml.nvmlDeviceGetActiveVgpus(a40)
    assert active == [created["id"]]
    assert nvml.nvmlVgpuInstanceGetType(active[0]) == A40_48Q
    assert nvml.nvmlVgpuInstanceGetUUID(active[0]) == created["uuid"]
    assert nvml.nvmlVgpuInstanceGetVmID(active[0]) == ("vm-1", nvml.NVML_VGPU_VM_ID_UUID)
    assert nvml.nvmlVgpuInstanceGetFbUsage(active[0]) == 0
    mem = nvml.nvmlDeviceGetMemoryInfo(a40)
    assert mem.used == mem.total  # a 48Q takes the whole framebuffer


def test_homogeneous_mode_allows_only_the_same_type(nvml, simhost, a40_host):
    a40 = a40_host[0]
    simhost.ok("vgpu", "add", "--gpu", "0", "--type", str(A40_2Q))
    assert nvml.nvmlDeviceGetCreatableVgpus(a40) == [A40_2Q]
    assert simhost.run("vgpu", "add", "--gpu", "0", "--type", str(A40_1Q)).returncode == 1


def test_vgpu_instances_vanish_on_reboot(nvml, simhost, a40_host):
    simhost.ok("vgpu", "add", "--gpu", "1", "--type", str(T4_1Q), "--uuid", "0b5f2a2e-6d6e-4a8a-9e0c-5b9d8f0a1c11")
    assert len(nvml.nvmlDeviceGetActiveVgpus(a40_host[1])) == 1
    simhost.ok("vgpu", "remove", "--uuid", "0b5f2a2e-6d6e-4a8a-9e0c-5b9d8f0a1c11")
    assert nvml.nvmlDeviceGetActiveVgpus(a40_host[1]) == []
    simhost.ok("vgpu", "add", "--gpu", "1", "--type", str(T4_1Q))
    simhost.ok("reboot")
    assert nvml.nvmlDeviceGetActiveVgpus(a40_host[1]) == []


def test_vgpu_calls_without_vgpu_manager_are_not_supported(nvml, simhost):
    simhost.init("a40")
    nvml.nvmlInit()
    a40 = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlDeviceGetVirtualizationMode(a40) == nvml.NVML_GPU_VIRTUALIZATION_MODE_PASSTHROUGH
    for call in (nvml.nvmlDeviceGetHostVgpuMode, nvml.nvmlDeviceGetSupportedVgpus, nvml.nvmlDeviceGetCreatableVgpus,
                 nvml.nvmlDeviceGetActiveVgpus):
        with pytest.raises(nvml.NVMLError_NotSupported):
            call(a40)
    with pytest.raises(nvml.NVMLError_NotSupported):
        nvml.nvmlVgpuTypeGetName(A40_1Q)
    assert simhost.run("vgpu", "add", "--gpu", "0", "--type", str(A40_1Q)).returncode == 1
