"""The simulated H200 and H100 answer NVML exactly as the real GPUs did, call by call and field by field.

The captures are the shared directory's fixtures/real/<model> (probe.json, nvml-snapshot.json, mig-lgip.txt,
mig-lgipp.txt): every MIG profile (id, name, memory, SMs, engines, placements), PCI ids, memory total and reserved,
VBIOS, InfoROM, board part, virtualization mode, and each of the snapshot's ~55 device calls.
"""
# pylint: disable=redefined-outer-name,unused-argument  # pytest fixtures are parameters by design
from __future__ import annotations

import ctypes
import json
import re

import pytest
from conftest import shared_dir

PROFILE_FIELDS = ("id", "isP2pSupported", "sliceCount", "instanceCount", "multiprocessorCount", "copyEngineCount",
                  "decoderCount", "encoderCount", "jpegCount", "ofaCount", "memorySizeMB", "name")


CAPTURED = ("h200-141gb", "h100-80gb-hbm3")  # model key == capture directory name


@pytest.fixture(scope="module", params=CAPTURED)
def model_key(request):
    return request.param


@pytest.fixture(scope="module")
def capture_dir(model_key):
    path = shared_dir() / "fixtures" / "real" / model_key
    if not path.is_dir():
        pytest.fail("real capture not found at %s: set GPUVIRT_SHARED to the shared directory" % path, pytrace=False)
    return path


@pytest.fixture(scope="module")
def probe(capture_dir):
    return json.loads((capture_dir / "probe.json").read_text())


@pytest.fixture(scope="module")
def snapshot(capture_dir):
    return json.loads((capture_dir / "nvml-snapshot.json").read_text())


def _init_like(simhost, model_key, device_uuid, serial, pci):
    simhost.init(model_key, extra=("--uuid", "0=" + device_uuid, "--serial", "0=" + serial, "--pci", "0=" + pci))


@pytest.fixture
def probe_gpu(nvml, simhost, model_key, probe):
    dev = probe["devices"][0]
    _init_like(simhost, model_key, dev["uuid"], dev["serial"], dev["pci"])
    nvml.nvmlInit()
    return nvml.nvmlDeviceGetHandleByIndex(0)


@pytest.fixture
def snapshot_gpu(nvml, simhost, model_key, snapshot):
    dev = snapshot["devices"][0]
    busid = dev["nvmlDeviceGetPciInfo_v3"]["value"]["busId"]
    _init_like(simhost, model_key, dev["nvmlDeviceGetUUID"]["value"], dev["nvmlDeviceGetSerial"]["value"], busid)
    nvml.nvmlInit()
    return nvml.nvmlDeviceGetHandleByIndex(0)


def _not_supported(nvml, func, *args):
    with pytest.raises(nvml.NVMLError_NotSupported) as info:
        func(*args)
    return str(info.value)


def test_system_answers_equal_the_probe(nvml, probe_gpu, probe):
    assert nvml.nvmlSystemGetDriverVersion() == probe["driver"]
    assert nvml.nvmlSystemGetNVMLVersion() == probe["nvml_version"]
    assert nvml.nvmlSystemGetCudaDriverVersion() == probe["cuda_driver_version"]
    assert nvml.nvmlDeviceGetCount() == probe["count"]


def test_device_answers_equal_the_probe(nvml, probe_gpu, probe):
    dev, h = probe["devices"][0], probe_gpu
    assert nvml.nvmlDeviceGetName(h) == dev["name"]
    assert nvml.nvmlDeviceGetUUID(h) == dev["uuid"]
    assert nvml.nvmlDeviceGetSerial(h) == dev["serial"]
    assert nvml.nvmlDeviceGetArchitecture(h) == dev["arch"] == nvml.NVML_DEVICE_ARCH_HOPPER
    assert nvml.nvmlDeviceGetBrand(h) == dev["brand"]
    assert list(nvml.nvmlDeviceGetCudaComputeCapability(h)) == dev["cuda_cc"]
    assert nvml.nvmlDeviceGetMinorNumber(h) == dev["minor"]
    assert nvml.nvmlDeviceGetMigMode(h) == dev["mig_mode"]
    assert nvml.nvmlDeviceGetVirtualizationMode(h) == dev["virt_mode"]
    assert nvml.nvmlDeviceGetPersistenceMode(h) == dev["persistence"]
    assert nvml.nvmlDeviceGetEccMode(h) == dev["ecc"]
    assert nvml.nvmlDeviceGetEnforcedPowerLimit(h) == dev["power_limit"]
    assert nvml.nvmlDeviceGetVbiosVersion(h) == dev["vbios"]
    assert nvml.nvmlDeviceGetBoardPartNumber(h) == dev["board_part"]
    assert nvml.nvmlDeviceGetMaxMigDeviceCount(h) == dev["max_mig_count"]
    assert repr(nvml.nvmlDeviceIsMigDeviceHandle(h)) == dev["is_mig_device"]
    assert nvml.nvmlDeviceGetComputeRunningProcesses(h) == dev["compute_procs"]
    assert nvml.nvmlDeviceGetPciInfo_v3(h).busId == dev["pci"]
    mem = nvml.nvmlDeviceGetMemoryInfo(h)
    assert {"total": mem.total, "free": mem.free, "used": mem.used} == dev["mem"]


def test_memory_v2_splits_reserved_from_used(nvml, probe_gpu, probe):
    mem = probe["devices"][0]["mem"]
    info = nvml.nvmlDeviceGetMemoryInfo(probe_gpu, version=nvml.nvmlMemory_v2)
    assert isinstance(info, nvml.c_nvmlMemory_v2_t)
    assert (info.total, info.reserved, info.used, info.free) == (mem["total"], mem["used"], 0, mem["free"])


@pytest.mark.parametrize("call", ["host_vgpu_mode", "supported_vgpus", "creatable_vgpus", "active_vgpus"])
def test_vgpu_calls_are_not_supported_as_on_the_probe(nvml, probe_gpu, probe, call):
    func = {"host_vgpu_mode": nvml.nvmlDeviceGetHostVgpuMode, "supported_vgpus": nvml.nvmlDeviceGetSupportedVgpus,
            "creatable_vgpus": nvml.nvmlDeviceGetCreatableVgpus, "active_vgpus": nvml.nvmlDeviceGetActiveVgpus}[call]
    expected = probe["devices"][0][call]
    assert _not_supported(nvml, func, probe_gpu) == expected["nvml_error"]
    assert nvml.NVMLError_NotSupported().value == expected["code"]


def test_every_gpu_instance_profile_equals_the_probe(nvml, probe_gpu, probe):
    for enum, expected in probe["devices"][0]["gi_profiles"].items():
        if "nvml_error" in expected:
            assert _not_supported(nvml, nvml.nvmlDeviceGetGpuInstanceProfileInfo, probe_gpu, int(enum)) == expected["nvml_error"], enum
            continue
        info = nvml.nvmlDeviceGetGpuInstanceProfileInfo(probe_gpu, int(enum))
        assert isinstance(info, nvml.c_nvmlGpuInstanceProfileInfo_v2_t)
        for field in PROFILE_FIELDS:
            assert getattr(info, field) == expected[field], (enum, field)
        by_id = nvml.nvmlDeviceGetGpuInstanceProfileInfoById(probe_gpu, expected["id"])
        assert [getattr(by_id, f) for f in PROFILE_FIELDS] == [expected[f] for f in PROFILE_FIELDS]


def test_not_supported_profile_enums_equal_the_probe(nvml, probe_gpu, probe):
    unsupported = sorted(int(e) for e, v in probe["devices"][0]["gi_profiles"].items() if "nvml_error" in v)
    assert unsupported == [5, 6, 8, 10, 11, 12, 13, 14, 15]


def _lgipp(capture_dir):
    placements = {}
    for line in (capture_dir / "mig-lgipp.txt").read_text().splitlines():
        match = re.match(r"GPU\s+0 Profile ID\s+(\d+) Placements?\s*: \{([\d,]+)\}:(\d+)", line)
        if match:
            placements[int(match.group(1))] = ([int(s) for s in match.group(2).split(",")], int(match.group(3)))
    assert len(placements) == 7, "could not parse mig-lgipp.txt"
    return placements


def test_placements_equal_nvidia_smi_lgipp(nvml, probe_gpu, capture_dir):
    for profile_id, (starts, size) in _lgipp(capture_dir).items():
        count = ctypes.c_uint(0)
        nvml.nvmlDeviceGetGpuInstancePossiblePlacements(probe_gpu, profile_id, None, ctypes.byref(count))
        assert count.value == len(starts), profile_id
        buf = (nvml.c_nvmlGpuInstancePlacement_t * count.value)()
        nvml.nvmlDeviceGetGpuInstancePossiblePlacements(probe_gpu, profile_id, buf, ctypes.byref(count))
        assert [(p.start, p.size) for p in buf] == [(s, size) for s in starts], profile_id


def test_profile_table_equals_nvidia_smi_lgip(nvml, probe_gpu, capture_dir):
    rows = re.findall(r"\|\s+0\s+MIG (\S+)\s+(\d+)\s+(\d+)/(\d+)\s+([\d.]+)\s+No\s+(\d+)\s+(\d+)\s+(\d+)\s+\|\n"
                      r"\|\s+(\d+)\s+(\d+)\s+(\d+)\s+\|", (capture_dir / "mig-lgip.txt").read_text())
    assert len(rows) == 7, "could not parse mig-lgip.txt"
    for name, pid, free, total, gib, sms, dec, enc, ce, jpeg, ofa in rows:
        info = nvml.nvmlDeviceGetGpuInstanceProfileInfoById(probe_gpu, int(pid))
        assert info.name == "MIG " + name
        assert info.instanceCount == int(total) == int(free)
        assert nvml.nvmlDeviceGetGpuInstanceRemainingCapacity(probe_gpu, int(pid)) == int(free)
        assert "%.2f" % (info.memorySizeMB / 1024) == "%.2f" % float(gib)
        assert (info.multiprocessorCount, info.decoderCount, info.encoderCount) == (int(sms), int(dec), int(enc))
        assert (info.copyEngineCount, info.jpegCount, info.ofaCount) == (int(ce), int(jpeg), int(ofa))


# nvml-snapshot.json: every call of the capture, with its value or its error.
def _snapshot_calls(nvml, h):
    return {
        "nvmlDeviceGetName": lambda: nvml.nvmlDeviceGetName(h),
        "nvmlDeviceGetUUID": lambda: nvml.nvmlDeviceGetUUID(h),
        "nvmlDeviceGetPciInfo_v3": lambda: nvml.nvmlDeviceGetPciInfo_v3(h),
        "nvmlDeviceGetIndex": lambda: nvml.nvmlDeviceGetIndex(h),
        "nvmlDeviceGetMemoryInfo": lambda: nvml.nvmlDeviceGetMemoryInfo(h),
        "nvmlDeviceGetBAR1MemoryInfo": lambda: nvml.nvmlDeviceGetBAR1MemoryInfo(h),
        "nvmlDeviceGetUtilizationRates": lambda: nvml.nvmlDeviceGetUtilizationRates(h),
        "nvmlDeviceGetEncoderUtilization": lambda: nvml.nvmlDeviceGetEncoderUtilization(h),
        "nvmlDeviceGetDecoderUtilization": lambda: nvml.nvmlDeviceGetDecoderUtilization(h),
        "nvmlDeviceGetTemperature": lambda: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU),
        "nvmlDeviceGetPowerUsage": lambda: nvml.nvmlDeviceGetPowerUsage(h),
        "nvmlDeviceGetEnforcedPowerLimit": lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(h),
        "nvmlDeviceGetPowerManagementLimitConstraints": lambda: nvml.nvmlDeviceGetPowerManagementLimitConstraints(h),
        "nvmlDeviceGetClockInfo": lambda: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_GRAPHICS),
        "nvmlDeviceGetMaxClockInfo": lambda: nvml.nvmlDeviceGetMaxClockInfo(h, nvml.NVML_CLOCK_GRAPHICS),
        "nvmlDeviceGetPerformanceState": lambda: nvml.nvmlDeviceGetPerformanceState(h),
        "nvmlDeviceGetCurrentClocksEventReasons": lambda: nvml.nvmlDeviceGetCurrentClocksEventReasons(h),
        "nvmlDeviceGetCurrentClocksThrottleReasons": lambda: nvml.nvmlDeviceGetCurrentClocksThrottleReasons(h),
        "nvmlDeviceGetFanSpeed": lambda: nvml.nvmlDeviceGetFanSpeed(h),
        "nvmlDeviceGetPcieThroughput": lambda: nvml.nvmlDeviceGetPcieThroughput(h, nvml.NVML_PCIE_UTIL_TX_BYTES),
        "nvmlDeviceGetCurrPcieLinkGeneration": lambda: nvml.nvmlDeviceGetCurrPcieLinkGeneration(h),
        "nvmlDeviceGetCurrPcieLinkWidth": lambda: nvml.nvmlDeviceGetCurrPcieLinkWidth(h),
        "nvmlDeviceGetPcieReplayCounter": lambda: nvml.nvmlDeviceGetPcieReplayCounter(h),
        "nvmlDeviceGetEccMode": lambda: nvml.nvmlDeviceGetEccMode(h),
        "nvmlDeviceGetTotalEccErrors": lambda: nvml.nvmlDeviceGetTotalEccErrors(
            h, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_VOLATILE_ECC),
        "nvmlDeviceGetRetiredPages": lambda: nvml.nvmlDeviceGetRetiredPages(
            h, nvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR),
        "nvmlDeviceGetRemappedRows": lambda: nvml.nvmlDeviceGetRemappedRows(h),
        "nvmlDeviceGetPersistenceMode": lambda: nvml.nvmlDeviceGetPersistenceMode(h),
        "nvmlDeviceGetComputeMode": lambda: nvml.nvmlDeviceGetComputeMode(h),
        "nvmlDeviceGetMigMode": lambda: nvml.nvmlDeviceGetMigMode(h),
        "nvmlDeviceGetMaxMigDeviceCount": lambda: nvml.nvmlDeviceGetMaxMigDeviceCount(h),
        "nvmlDeviceGetVirtualizationMode": lambda: nvml.nvmlDeviceGetVirtualizationMode(h),
        "nvmlDeviceGetHostVgpuMode": lambda: nvml.nvmlDeviceGetHostVgpuMode(h),
        "nvmlDeviceGetGspFirmwareMode": lambda: nvml.nvmlDeviceGetGspFirmwareMode(h),
        "nvmlDeviceGetGspFirmwareVersion": lambda: nvml.nvmlDeviceGetGspFirmwareVersion(h).decode(),
        "nvmlDeviceGetArchitecture": lambda: nvml.nvmlDeviceGetArchitecture(h),
        "nvmlDeviceGetCudaComputeCapability": lambda: nvml.nvmlDeviceGetCudaComputeCapability(h),
        "nvmlDeviceGetBoardId": lambda: nvml.nvmlDeviceGetBoardId(h),
        "nvmlDeviceGetMultiGpuBoard": lambda: nvml.nvmlDeviceGetMultiGpuBoard(h),
        "nvmlDeviceGetNumaNodeId": lambda: nvml.nvmlDeviceGetNumaNodeId(h),
        "nvmlDeviceGetSupportedEventTypes": lambda: nvml.nvmlDeviceGetSupportedEventTypes(h),
        "nvmlDeviceGetComputeRunningProcesses": lambda: nvml.nvmlDeviceGetComputeRunningProcesses(h),
        "nvmlDeviceGetGraphicsRunningProcesses": lambda: nvml.nvmlDeviceGetGraphicsRunningProcesses(h),
        "nvmlDeviceGetSupportedVgpus": lambda: nvml.nvmlDeviceGetSupportedVgpus(h),
        "nvmlDeviceGetCreatableVgpus": lambda: nvml.nvmlDeviceGetCreatableVgpus(h),
        "nvmlDeviceGetActiveVgpus": lambda: nvml.nvmlDeviceGetActiveVgpus(h),
        "nvmlDeviceGetBrand": lambda: nvml.nvmlDeviceGetBrand(h),
        "nvmlDeviceGetInforomImageVersion": lambda: nvml.nvmlDeviceGetInforomImageVersion(h),
        "nvmlDeviceGetVbiosVersion": lambda: nvml.nvmlDeviceGetVbiosVersion(h),
        "nvmlDeviceGetSerial": lambda: nvml.nvmlDeviceGetSerial(h),
        "nvmlDeviceGetMinorNumber": lambda: nvml.nvmlDeviceGetMinorNumber(h),
        "nvmlDeviceGetAttributes_v2": lambda: nvml.nvmlDeviceGetAttributes_v2(h),
        # the capture does not say which profile it asked for; the full-GPU profile (ID 0) is one with a capacity of 1
        "nvmlDeviceGetGpuInstanceRemainingCapacity": lambda: nvml.nvmlDeviceGetGpuInstanceRemainingCapacity(h, 0),
    }


# calls of the capture that the stand-in does not implement (not used by the collection)
NOT_SIMULATED = {"nvmlDeviceGetNvLinkState", "nvmlDeviceGetVgpuCapabilities", "placements_v2_profile_enum_0",
                 "placements_v2_profile_enum_2"}
# values that move on real hardware: compared for plausibility only
DYNAMIC = {"nvmlDeviceGetTotalEnergyConsumption"}


def _plain(value):
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def test_every_snapshot_call_equals_the_capture(nvml, snapshot_gpu, snapshot):
    calls = _snapshot_calls(nvml, snapshot_gpu)
    captured = snapshot["devices"][0]
    assert set(captured) - NOT_SIMULATED - DYNAMIC == set(calls), "snapshot calls not covered"
    for name, call in calls.items():
        expected = captured[name]
        if expected["error"] is not None:
            with pytest.raises(nvml.NVMLError) as info:
                call()
            assert str(info.value) == expected["error"], name
            continue
        value = call()
        if isinstance(expected["value"], dict):
            for key, want in expected["value"].items():
                assert getattr(value, key) == want, (name, key)
        else:
            assert _plain(value) == expected["value"], name


def test_system_calls_equal_the_snapshot(nvml, snapshot_gpu, snapshot):
    for name, expected in snapshot["system"].items():
        assert getattr(nvml, name)() == expected["value"], name


def test_energy_counter_starts_at_the_capture_and_only_grows(nvml, snapshot_gpu, snapshot):
    first = nvml.nvmlDeviceGetTotalEnergyConsumption(snapshot_gpu)
    assert first >= snapshot["devices"][0]["nvmlDeviceGetTotalEnergyConsumption"]["value"]
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(snapshot_gpu) >= first
