"""MIG behaviour through the pynvml API: modes, GPU/compute instances, placements, capacity."""
# pylint: disable=redefined-outer-name  # pytest fixtures are parameters by design
from __future__ import annotations

import ctypes

import pytest

PROFILE_1G, PROFILE_1G_ME, PROFILE_1G_20GB, PROFILE_2G, PROFILE_3G, PROFILE_4G, PROFILE_7G = 19, 20, 15, 14, 9, 5, 0
CI_1C, CI_2C, CI_3C = 0, 1, 2


def _placement(nvml, start, size):
    return nvml.c_nvmlGpuInstancePlacement_t(start, size)


@pytest.fixture
def h100(nvml, simhost):
    """One H100 with MIG already enabled (mode set, then GPU reset)."""
    simhost.init("h100-80gb-hbm3")
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    nvml.nvmlDeviceSetMigMode(handle, nvml.NVML_DEVICE_MIG_ENABLE)
    simhost.ok("reset", "--gpu", "0")
    return handle


def test_set_mig_mode_stays_pending_until_reset(nvml, simhost):
    simhost.init("h100-80gb-hbm3")
    nvml.nvmlInit()
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    status = nvml.nvmlDeviceSetMigMode(h, nvml.NVML_DEVICE_MIG_ENABLE)
    assert status == nvml.NVML_ERROR_RESET_REQUIRED
    assert nvml.nvmlDeviceGetMigMode(h) == [0, 1]
    with pytest.raises(nvml.NVMLError_NotSupported):
        nvml.nvmlDeviceCreateGpuInstance(h, PROFILE_1G)
    simhost.ok("reset", "--gpu", "0")
    assert nvml.nvmlDeviceGetMigMode(h) == [1, 1]
    assert nvml.nvmlDeviceGetMaxMigDeviceCount(h) == 7


def test_set_mig_mode_to_the_current_mode_needs_no_reset(nvml, h100):
    assert nvml.nvmlDeviceSetMigMode(h100, nvml.NVML_DEVICE_MIG_ENABLE) == nvml.NVML_SUCCESS


def test_mig_mode_becomes_current_on_reboot(nvml, simhost):
    simhost.init("a100-sxm4-40gb:2")
    nvml.nvmlInit()
    nvml.nvmlDeviceSetMigMode(nvml.nvmlDeviceGetHandleByIndex(1), 1)
    simhost.ok("reboot")
    assert nvml.nvmlDeviceGetMigMode(nvml.nvmlDeviceGetHandleByIndex(0)) == [0, 0]
    assert nvml.nvmlDeviceGetMigMode(nvml.nvmlDeviceGetHandleByIndex(1)) == [1, 1]


def test_set_mig_mode_stays_pending_with_status_in_use_while_processes_run(nvml, simhost):
    simhost.init("h100-80gb-hbm3")
    simhost.ok("proc", "add", "--gpu", "0", "--pid", "4242", "--mem-mib", "1024")
    nvml.nvmlInit()
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlDeviceSetMigMode(h, 1) == nvml.NVML_ERROR_IN_USE
    assert nvml.nvmlDeviceGetMigMode(h) == [0, 1]
    nvml.nvmlShutdown()
    assert simhost.run("reset", "--gpu", "0").returncode == 1  # the reset that would make it current is refused


def test_disabling_mig_with_instances_fails_in_use(nvml, h100):
    nvml.nvmlDeviceCreateGpuInstance(h100, PROFILE_7G)
    with pytest.raises(nvml.NVMLError_InUse):
        nvml.nvmlDeviceSetMigMode(h100, 0)


def test_mig_on_a_gpu_without_mig_is_not_supported(nvml, simhost):
    simhost.init("t4")
    nvml.nvmlInit()
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    for call, args in ((nvml.nvmlDeviceGetMigMode, ()), (nvml.nvmlDeviceSetMigMode, (1,)),
                       (nvml.nvmlDeviceGetGpuInstanceProfileInfo, (0,)), (nvml.nvmlDeviceGetMaxMigDeviceCount, ())):
        with pytest.raises(nvml.NVMLError_NotSupported):
            call(h, *args)


def test_create_with_placement_and_read_back_info(nvml, h100):
    gi = nvml.nvmlDeviceCreateGpuInstanceWithPlacement(h100, PROFILE_3G, _placement(nvml, 4, 4))
    assert isinstance(gi, nvml.c_nvmlGpuInstance_t)
    info = nvml.nvmlGpuInstanceGetInfo(gi)
    assert isinstance(info, nvml.c_nvmlGpuInstanceInfo_t)
    assert (info.id, info.profileId, info.placement.start, info.placement.size) == (2, PROFILE_3G, 4, 4)
    assert nvml.nvmlDeviceGetUUID(info.device) == nvml.nvmlDeviceGetUUID(h100)
    again = nvml.nvmlDeviceGetGpuInstanceById(h100, 2)
    assert nvml.nvmlGpuInstanceGetInfo(again).placement.start == 4


def test_gpu_instance_ids_follow_the_placement(nvml, h100):
    expected = {(PROFILE_1G, 0): 7, (PROFILE_1G, 6): 13, (PROFILE_2G, 2): 4}
    for (profile, start), gi_id in expected.items():
        size = 1 if profile == PROFILE_1G else 2
        gi = nvml.nvmlDeviceCreateGpuInstanceWithPlacement(h100, profile, _placement(nvml, start, size))
        assert nvml.nvmlGpuInstanceGetInfo(gi).id == gi_id


def test_overlapping_placement_is_insufficient_resources(nvml, h100):
    nvml.nvmlDeviceCreateGpuInstanceWithPlacement(h100, PROFILE_2G, _placement(nvml, 2, 2))
    with pytest.raises(nvml.NVMLError_InsufficientResources):
        nvml.nvmlDeviceCreateGpuInstanceWithPlacement(h100, PROFILE_3G, _placement(nvml, 0, 4))
    with pytest.raises(nvml.NVMLError_InsufficientResources):
        nvml.nvmlDeviceCreateGpuInstanceWithPlacement(h100, PROFILE_1G, _placement(nvml, 3, 1))


def test_illegal_placement_is_invalid_argument(nvml, h100):
    with pytest.raises(nvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceCreateGpuInstanceWithPlacement(h100, PROFILE_3G, _placement(nvml, 2, 4))


def test_placement_can_be_passed_by_reference(nvml, h100):
    gi = nvml.nvmlDeviceCreateGpuInstanceWithPlacement(h100, PROFILE_4G, ctypes.byref(_placement(nvml, 0, 4)))
    assert nvml.nvmlGpuInstanceGetInfo(gi).placement.start == 0


def test_driver_chosen_placement_is_first_fit(nvml, h100):
    first = nvml.nvmlDeviceCreateGpuInstance(h100, PROFILE_3G)
    second = nvml.nvmlDeviceCreateGpuInstance(h100, PROFILE_3G)
    assert [nvml.nvmlGpuInstanceGetInfo(g).placement.start for g in (first, second)] == [0, 4]
    with pytest.raises(nvml.NVMLError_InsufficientResources):
        nvml.nvmlDeviceCreateGpuInstance(h100, PROFILE_3G)


def test_3g_at_start_0_blocks_the_4g(nvml, h100):
    # first fit puts a 3g at 0, where the only 4g placement is: "4g + 3g" becomes impossible
    nvml.nvmlDeviceCreateGpuInstance(h100, PROFILE_3G)
    assert nvml.nvmlDeviceGetGpuInstanceRemainingCapacity(h100, PROFILE_4G) == 0
    with pytest.raises(nvml.NVMLError_InsufficientResources):
        nvml.nvmlDeviceCreateGpuInstance(h100, PROFILE_4G)


def test_3g_at_start_4_leaves_room_for_the_4g(nvml, h100):
    # the same layout placed explicitly: 4g.40gb + 3g.40gb is one of NVIDIA's supported configurations
    nvml.nvmlDeviceCreateGpuInstanceWithPlacement(h100, PROFILE_3G, _placement(nvml, 4, 4))
    assert nvml.nvmlDeviceGetGpuInstanceRemainingCapacity(h100, PROFILE_4G) == 1
    gi = nvml.nvmlDeviceCreateGpuInstance(h100, PROFILE_4G)
    assert nvml.nvmlGpuInstanceGetInfo(gi).placement.start == 0
    assert nvml.nvmlDeviceGetGpuInstanceRemainingCapacity(h100, PROFILE_1G) == 0


def test_remaining_capacity_shrinks(nvml, h100):
    assert nvml.nvmlDeviceGetGpuInstanceRemainingCapacity(h100, PROFILE_1G) == 7
    nvml.nvmlDeviceCreateGpuInstance(h100, PROFILE_1G)
    assert nvml.nvmlDeviceGetGpuInstanceRemainingCapacity(h100, PROFILE_1G) == 6
    assert nvml.nvmlDeviceGetGpuInstanceRemainingCapacity(h100, PROFILE_7G) == 0
    nvml.nvmlDeviceCreateGpuInstanceWithPlacement(h100, PROFILE_2G, _placement(nvml, 2, 2))
    assert nvml.nvmlDeviceGetGpuInstanceRemainingCapacity(h100, PROFILE_1G) == 4
    assert nvml.nvmlDeviceGetGpuInstanceRemainingCapacity(h100, PROFILE_2G) == 1


def test_only_one_media_engine_profile(nvml, h100):
    nvml.nvmlDeviceCreateGpuInstance(h100, PROFILE_1G_ME)
    assert nvml.nvmlDeviceGetGpuInstanceRemainingCapacity(h100, PROFILE_1G_ME) == 0
    with pytest.raises(nvml.NVMLError_InsufficientResources):
        nvml.nvmlDeviceCreateGpuInstance(h100, PROFILE_1G_ME)


def test_compute_slices_limit_the_1g_20gb_profile(nvml, h100):
    for _gi in range(4):
        nvml.nvmlDeviceCreateGpuInstance(h100, PROFILE_1G_20GB)
    assert nvml.nvmlDeviceGetGpuInstanceRemainingCapacity(h100, PROFILE_1G) == 0


def test_possible_placements_count_query_then_fill(nvml, h100):
    count = ctypes.c_uint(0)
    assert nvml.nvmlDeviceGetGpuInstancePossiblePlacements(h100, PROFILE_1G_20GB, None, ctypes.byref(count)) == nvml.NVML_SUCCESS
    assert count.value == 4
    buf = (nvml.c_nvmlGpuInstancePlacement_t * count.value)()
    nvml.nvmlDeviceGetGpuInstancePossiblePlacements(h100, PROFILE_1G_20GB, buf, ctypes.byref(count))
    assert [(p.start, p.size) for p in buf] == [(0, 2), (2, 2), (4, 2), (6, 2)]


def test_possible_placements_into_a_too_small_buffer_is_insufficient_size(nvml, h100):
    count = ctypes.c_uint(0)
    buf = (nvml.c_nvmlGpuInstancePlacement_t * 2)()
    with pytest.raises(nvml.NVMLError_InsufficientSize):
        nvml.nvmlDeviceGetGpuInstancePossiblePlacements(h100, PROFILE_1G, buf, ctypes.byref(count))


def test_possible_placements_are_reported_with_mig_disabled(nvml, simhost):
    simhost.init("a30")
    nvml.nvmlInit()
    count = ctypes.c_uint(0)
    nvml.nvmlDeviceGetGpuInstancePossiblePlacements(nvml.nvmlDeviceGetHandleByIndex(0), 14, None, ctypes.byref(count))
    assert count.value == 4


def test_list_gpu_instances_through_a_handle_array(nvml, h100):
    for _gi in range(3):
        nvml.nvmlDeviceCreateGpuInstance(h100, PROFILE_2G)
    count = ctypes.c_uint(0)
    handles = (nvml.c_nvmlGpuInstance_t * 7)()
    nvml.nvmlDeviceGetGpuInstances(h100, PROFILE_2G, handles, ctypes.byref(count))
    assert count.value == 3
    assert [nvml.nvmlGpuInstanceGetInfo(h).id for h in handles[:count.value]] == [3, 4, 5]
    nvml.nvmlDeviceGetGpuInstances(h100, PROFILE_7G, handles, ctypes.byref(count))
    assert count.value == 0


def test_destroy_with_a_compute_instance_is_in_use(nvml, h100):
    gi = nvml.nvmlDeviceCreateGpuInstance(h100, PROFILE_3G)
    ci = nvml.nvmlGpuInstanceCreateComputeInstance(gi, CI_3C)
    with pytest.raises(nvml.NVMLError_InUse):
        nvml.nvmlGpuInstanceDestroy(gi)
    nvml.nvmlComputeInstanceDestroy(ci)
    assert nvml.nvmlGpuInstanceDestroy(gi) == nvml.NVML_SUCCESS
    with pytest.raises(nvml.NVMLError_InvalidArgument):
        nvml.nvmlGpuInstanceGetInfo(gi)  # the handle of a destroyed instance stays invalid


def test_destroy_with_a_process_is_in_use(nvml, simhost, h100):
    gi = nvml.nvmlDeviceCreateGpuInstance(h100, PROFILE_7G)
    nvml.nvmlGpuInstanceCreateComputeInstance(gi, 4)
    gi_id = nvml.nvmlGpuInstanceGetInfo(gi).id
    simhost.ok("proc", "add", "--gpu", "0", "--pid", "77", "--mem-mib", "100", "--gi", str(gi_id), "--ci", "0")
    ci = nvml.nvmlGpuInstanceGetComputeInstanceById(gi, 0)
    with pytest.raises(nvml.NVMLError_InUse):
        nvml.nvmlComputeInstanceDestroy(ci)
    procs = nvml.nvmlDeviceGetComputeRunningProcesses(h100)
    assert [(p.pid, p.usedGpuMemory, p.gpuInstanceId, p.computeInstanceId) for p in procs] == [(77, 100 << 20, gi_id, 0)]


def test_compute_instances_inside_a_gpu_instance(nvml, h100):
    gi = nvml.nvmlDeviceCreateGpuInstance(h100, PROFILE_7G)
    prof = nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, nvml.NVML_COMPUTE_INSTANCE_PROFILE_2_SLICE,
                                                             nvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
    assert isinstance(prof, nvml.c_nvmlComputeInstanceProfileInfo_v2_t)
    assert (prof.id, prof.sliceCount, prof.instanceCount, prof.multiprocessorCount, prof.name) == (CI_2C, 2, 3, 32, "MIG 2c.7g.80gb")
    first = nvml.nvmlGpuInstanceCreateComputeInstance(gi, CI_2C)
    second = nvml.nvmlGpuInstanceCreateComputeInstanceWithPlacement(gi, CI_2C, nvml.c_nvmlComputeInstancePlacement_t(4, 2))
    info = nvml.nvmlComputeInstanceGetInfo(second)
    assert isinstance(info, nvml.c_nvmlComputeInstanceInfo_t)
    assert (info.id, info.profileId, info.placement.start, info.placement.size) == (1, CI_2C, 4, 2)
    assert nvml.nvmlGpuInstanceGetInfo(info.gpuInstance).id == 0
    assert nvml.nvmlComputeInstanceGetInfo_v2(first).placement.start == 0
    assert nvml.nvmlGpuInstanceGetComputeInstanceRemainingCapacity(gi, CI_2C) == 1
    with pytest.raises(nvml.NVMLError_InsufficientResources):
        nvml.nvmlGpuInstanceCreateComputeInstanceWithPlacement(gi, CI_3C, nvml.c_nvmlComputeInstancePlacement_t(4, 3))
    count = ctypes.c_uint(0)
    cis = (nvml.c_nvmlComputeInstance_t * 8)()
    nvml.nvmlGpuInstanceGetComputeInstances(gi, CI_2C, cis, ctypes.byref(count))
    assert count.value == 2


def test_compute_instance_profile_not_in_the_gpu_instance_is_not_supported(nvml, h100):
    gi = nvml.nvmlDeviceCreateGpuInstance(h100, PROFILE_2G)
    with pytest.raises(nvml.NVMLError_NotSupported):
        nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, nvml.NVML_COMPUTE_INSTANCE_PROFILE_3_SLICE, 0)


def test_mig_devices_are_the_compute_instances(nvml, h100):
    gi = nvml.nvmlDeviceCreateGpuInstance(h100, PROFILE_1G)
    nvml.nvmlGpuInstanceCreateComputeInstance(gi, CI_1C)
    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(h100, 0)
    assert nvml.nvmlDeviceIsMigDeviceHandle(mig).value == 1
    assert nvml.nvmlDeviceIsMigDeviceHandle(h100).value == 0
    assert nvml.nvmlDeviceGetName(mig) == "NVIDIA H100 80GB HBM3 MIG 1g.10gb"
    assert nvml.nvmlDeviceGetUUID(mig).startswith("MIG-")
    assert (nvml.nvmlDeviceGetGpuInstanceId(mig), nvml.nvmlDeviceGetComputeInstanceId(mig)) == (7, 0)
    assert nvml.nvmlDeviceGetMemoryInfo(mig).total == 9984 << 20
    assert nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig)) == nvml.nvmlDeviceGetUUID(h100)
    assert nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByUUID(nvml.nvmlDeviceGetUUID(mig))) == nvml.nvmlDeviceGetUUID(mig)
    with pytest.raises(nvml.NVMLError_NotFound):
        nvml.nvmlDeviceGetMigDeviceHandleByIndex(h100, 1)
    with pytest.raises(nvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetGpuInstanceId(h100)


def test_instances_are_gone_after_reset_and_reboot(nvml, simhost, h100):
    nvml.nvmlDeviceCreateGpuInstance(h100, PROFILE_7G)
    simhost.ok("reset", "--gpu", "0")
    assert nvml.nvmlDeviceGetGpuInstanceRemainingCapacity(h100, PROFILE_7G) == 1
    nvml.nvmlDeviceCreateGpuInstance(h100, PROFILE_7G)
    simhost.ok("reboot")
    assert nvml.nvmlDeviceGetMigMode(h100) == [1, 1]  # the mode survives a reboot, the instances do not
    assert nvml.nvmlDeviceGetGpuInstanceRemainingCapacity(h100, PROFILE_7G) == 1


def test_a30_layout(nvml, simhost):
    simhost.init("a30")
    nvml.nvmlInit()
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    nvml.nvmlDeviceSetMigMode(h, 1)
    simhost.ok("reset", "--gpu", "0")
    assert nvml.nvmlDeviceGetMaxMigDeviceCount(h) == 4
    two = nvml.nvmlDeviceCreateGpuInstance(h, 5)
    one = nvml.nvmlDeviceCreateGpuInstance(h, 14)
    assert [nvml.nvmlGpuInstanceGetInfo(g).id for g in (two, one)] == [1, 5]
    assert nvml.nvmlDeviceGetGpuInstanceRemainingCapacity(h, 14) == 1
    assert nvml.nvmlDeviceGetGpuInstanceRemainingCapacity(h, 0) == 0
