"""gpusimctl: the interface the fleet and the other simulator parts call."""
from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest


def test_gpusimctl_runs_as_a_command(gpusimctl_path, tmp_path):
    """Installed on a host it is run by name, so it must be executable and find python3 itself."""
    assert os.stat(gpusimctl_path).st_mode & stat.S_IXUSR
    proc = subprocess.run([str(gpusimctl_path), "--root", str(tmp_path), "models"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "h100-80gb-hbm3" in proc.stdout.split()


def test_init_then_show(simhost):
    result = simhost.run("init", "--hostname", "gpu-a", "--gpu", "h100-80gb-hbm3:2", "--gpu", "t4")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"changed": True}
    state = json.loads(simhost.run("show").stdout)
    assert state["hostname"] == "gpu-a"
    assert [g["model"] for g in state["gpus"]] == ["h100-80gb-hbm3", "h100-80gb-hbm3", "t4"]
    assert [g["pci_bus_id"] for g in state["gpus"]] == ["00000000:18:00.0", "00000000:2A:00.0", "00000000:3A:00.0"]
    assert state["driver"] == {"version": "580.159.04", "cuda_version": 13000, "flavor": "open", "installed": True, "loaded": True,
                               "installed_version": "580.159.04", "installed_flavor": "open"}


def test_init_is_idempotent_and_identities_are_deterministic(simhost):
    args = ("init", "--hostname", "gpu-a", "--gpu", "a100-sxm4-80gb:2")
    assert json.loads(simhost.run(*args).stdout) == {"changed": True}
    first = simhost.state()
    assert json.loads(simhost.run(*args).stdout) == {"changed": False}
    assert simhost.state() == first
    assert first["gpus"][0]["uuid"] != first["gpus"][1]["uuid"]
    assert first["gpus"][0]["serial"] != first["gpus"][1]["serial"]
    assert json.loads(simhost.run("init", "--hostname", "gpu-b", "--gpu", "a100-sxm4-80gb:2").stdout) == {"changed": True}
    assert simhost.state()["gpus"][0]["uuid"] != first["gpus"][0]["uuid"]


def test_init_keeps_runtime_state_when_unchanged(simhost):
    simhost.init("h100-80gb-hbm3")
    simhost.ok("proc", "add", "--gpu", "0", "--pid", "9", "--mem-mib", "1")
    simhost.init("h100-80gb-hbm3")
    assert simhost.state()["gpus"][0]["processes"][0]["pid"] == 9


def test_init_with_explicit_uuid(simhost):
    simhost.init("h100-80gb-hbm3", extra=("--uuid", "0=GPU-2bbc3af3-7a90-4193-7574-41743730389f"))
    assert simhost.state()["gpus"][0]["uuid"] == "GPU-2bbc3af3-7a90-4193-7574-41743730389f"


@pytest.mark.parametrize("args,named", [
    (("init", "--hostname", "h", "--gpu", "h100"), "--gpu h100"),
    (("init", "--hostname", "h", "--gpu", "t4:x"), "--gpu t4:x"),
    (("init", "--hostname", "h", "--gpu", "t4", "--flavor", "nouveau"), "--flavor"),
    (("init", "--hostname", "h", "--gpu", "t4", "--driver", "latest"), "--driver"),
    (("init", "--hostname", "h", "--gpu", "t4", "--uuid", "0=nope"), "--uuid"),
    (("init", "--hostname", "h", "--gpu", "t4", "--uuid", "3=GPU-2bbc3af3-7a90-4193-7574-41743730389f"), "--uuid"),
    (("init", "--hostname", "h", "--gpu", "t4", "--no-driver", "--driver-not-loaded"), "--driver-not-loaded"),
    (("init", "--gpu", "t4"), "--hostname"),
    (("fault", "set", "--gpu", "0", "--call", "nvmlDeviceGetName", "--error", "NVML_ERROR_BOGUS"), "--error"),
    (("lose", "--gpu", "7"), "--gpu"),
    (("lose", "--gpu", "x"), "--gpu"),
    (("proc", "add", "--gpu", "0", "--pid", "1", "--mem-mib", "1", "--gi", "1"), "--gi"),
    (("reset", "--gpu", "all"), "--gpu"),
    (("frobnicate",), "frobnicate"),
])
def test_bad_arguments_exit_non_zero_with_one_line_naming_them(simhost, args, named):
    simhost.init("t4")
    result = simhost.run(*args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert named in lines[0]


def test_commands_without_state_say_so(simhost):
    result = simhost.run("reboot")
    assert result.returncode == 1 and "gpusimctl init" in result.stderr


def test_models_lists_the_data_files(simhost):
    result = simhost.run("models")
    assert result.stdout.split() == ["a100-sxm4-40gb", "a100-sxm4-80gb", "a30", "a40", "h100-80gb-hbm3", "h200-141gb", "t4",
                                     "v100-sxm2-32gb"]


def test_fault_set_and_clear_are_recorded(simhost):
    simhost.init("h100-80gb-hbm3:2")
    simhost.ok("fault", "set", "--gpu", "1", "--call", "nvmlDeviceGetName", "--error", "NVML_ERROR_GPU_IS_LOST")
    simhost.ok("fault", "set", "--gpu", "all", "--call", "nvmlDeviceGetUUID", "--error", "3")
    state = simhost.state()
    assert state["gpus"][1]["faults"] == [{"call": "nvmlDeviceGetName", "error": 15, "error_name": "NVML_ERROR_GPU_IS_LOST"}]
    assert state["faults"] == [{"call": "nvmlDeviceGetUUID", "error": 3, "error_name": "NVML_ERROR_NOT_SUPPORTED"}]
    simhost.ok("fault", "clear", "--gpu", "1")
    assert simhost.state()["gpus"][1]["faults"] == [] and simhost.state()["faults"]
    simhost.ok("fault", "clear")
    assert simhost.state()["faults"] == []


def test_reboot_clears_runtime_state_and_applies_pending_modes(simhost):
    simhost.init("a100-sxm4-40gb", extra=("--vgpu-host",))
    from gpusim import host, store  # pylint: disable=import-outside-toplevel
    with store.transaction(str(simhost.root)) as state:
        state["gpus"][0]["mig"]["pending"] = 1
        state["gpus"][0]["ecc"]["pending"] = 0
        state["gpus"][0]["lost"] = True
        host.add_process(state, 0, 5, 1)
    boot = simhost.state()["boot_id"]
    simhost.ok("reboot")
    gpu = simhost.state()["gpus"][0]
    assert (gpu["mig"], gpu["ecc"], gpu["lost"], gpu["processes"]) == ({"current": 1, "pending": 1}, {"current": 0, "pending": 0}, False, [])
    assert simhost.state()["boot_id"] == boot + 1


def test_proc_add_and_clear(simhost):
    simhost.init("h100-80gb-hbm3:2")
    simhost.ok("proc", "add", "--gpu", "1", "--pid", "31", "--mem-mib", "2048", "--name", "python3")
    assert simhost.state()["gpus"][1]["processes"] == [
        {"pid": 31, "used_memory": 2048 << 20, "gi": None, "ci": None, "type": "compute", "name": "python3"}]
    simhost.ok("proc", "clear", "--gpu", "1")
    assert simhost.state()["gpus"][1]["processes"] == []


def test_state_file_is_complete_json_with_a_lock_file(simhost):
    simhost.init("t4")
    assert json.loads((simhost.root / "state.json").read_text())["format"] == 1
    assert (simhost.root / "state.lock").exists()
    assert not [p for p in os.listdir(simhost.root) if p.endswith(".tmp")]


def test_driver_changes_in_place_and_nvml_follows(nvml, simhost):
    simhost.init("h100-80gb-hbm3")
    simhost.ok("proc", "add", "--gpu", "0", "--pid", "8", "--mem-mib", "1")
    simhost.ok("driver", "--loaded", "no")
    with pytest.raises(nvml.NVMLError_DriverNotLoaded):
        nvml.nvmlInit()
    simhost.ok("driver", "--version", "580.95.05", "--loaded", "yes")
    nvml.nvmlInit()
    assert nvml.nvmlSystemGetDriverVersion() == "580.95.05"
    assert simhost.state()["gpus"][0]["processes"][0]["pid"] == 8
    simhost.ok("driver", "--installed", "no")
    assert simhost.state()["driver"]["installed"] is False
    assert simhost.state()["driver"]["loaded"] is True  # removing the packages does not unload the module
    result = simhost.run("driver", "--loaded", "yes")
    assert result.returncode == 2 and "--loaded" in result.stderr
