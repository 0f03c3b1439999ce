"""The nth-call fault forms a rollback test needs: several calls (--nth N,M), every call from one on (--nth N+), any
mutating NVML call ('*'), and sysfs write faults (their errno; the emulated tree consults them on each write)."""
# pylint: disable=redefined-outer-name,unused-argument  # pytest fixtures are parameters by design
from __future__ import annotations

import errno

import pytest
from gpusim import host  # pylint: disable=import-error


def _set_mig(nvml, index, mode):
    return nvml.nvmlDeviceSetMigMode(nvml.nvmlDeviceGetHandleByIndex(index), mode)


def test_a_star_fault_counts_every_mutating_call_and_fires_on_each_listed_one(nvml, simhost):
    simhost.init("h100-80gb-hbm3:2")
    nvml.nvmlInit()
    simhost.ok("fault", "set", "--call", "*", "--error", "NVML_ERROR_UNKNOWN", "--nth", "2,3")
    _set_mig(nvml, 0, 1)
    for index in (1, 0):
        with pytest.raises(nvml.NVMLError_Unknown):
            _set_mig(nvml, index, 1)
    _set_mig(nvml, 1, 1)
    assert [g["mig"]["pending"] for g in simhost.state()["gpus"]] == [1, 1]


def test_an_onward_fault_fires_from_its_call_on(nvml, simhost):
    simhost.init("h100-80gb-hbm3:1")
    nvml.nvmlInit()
    simhost.ok("fault", "set", "--call", "nvmlDeviceSetMigMode", "--error", "NVML_ERROR_UNKNOWN", "--nth", "2+")
    _set_mig(nvml, 0, 1)
    for _attempt in range(3):
        with pytest.raises(nvml.NVMLError_Unknown):
            _set_mig(nvml, 0, 0)


@pytest.mark.parametrize("text", ["0", "2,x", "2,3+", ""])
def test_bad_nth_forms_are_refused(simhost, text):
    simhost.init("h100-80gb-hbm3:1")
    proc = simhost.run("fault", "set", "--call", "*", "--error", "UNKNOWN", "--nth", text)
    assert proc.returncode == 2 and "--nth" in proc.stderr


def test_a_sysfs_fault_gives_its_errno_on_the_writes_it_names():
    state = {"faults": []}
    host.set_fault(state, None, "sysfs:create", host.parse_errno("EIO"), [2], onward=True)
    assert state["faults"][0]["error_name"] == "EIO"
    assert [host.sysfs_fault(state, "create") for _attempt in range(3)] == [None, errno.EIO, errno.EIO]
    assert host.sysfs_fault(state, "remove") is None
