# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Installed userspace vs loaded kernel module: a package install changes NVML's library, not the running driver.

Until the modules are reloaded or the host reboots, nvmlInit fails with LibRmVersionMismatch and nvidia-smi says
"Failed to initialize NVML: Driver/library version mismatch" (exit 18), as on a real host after an upgrade.
"""
from __future__ import annotations

import os
import subprocess

import pytest

from conftest import REPO

SMI = REPO / "sim" / "bin" / "nvidia-smi"
H100 = "h100-80gb-hbm3"
MISMATCH = "Failed to initialize NVML: Driver/library version mismatch\n"


def smi(simhost, *args):
    done = subprocess.run([str(SMI), *args], capture_output=True, text=True, check=False,
                          env=dict(os.environ, GPUSIM_ROOT=str(simhost.root)))
    return done.returncode, done.stdout, done.stderr


def postinst(simhost, version, flavor="open"):
    """What the stand-in kernel-module package's postinst runs."""
    simhost.ok("driver", "--installed-version", version, "--installed-flavor", flavor)


def test_install_before_reboot_is_a_version_mismatch(nvml, simhost):
    simhost.init(H100)
    postinst(simhost, "580.95.05")
    drv = simhost.state()["driver"]
    assert (drv["version"], drv["loaded"], drv["installed_version"]) == ("580.159.04", True, "580.95.05")
    with pytest.raises(nvml.NVMLError_LibRmVersionMismatch) as caught:
        nvml.nvmlInit()
    assert caught.value.value == nvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH
    assert str(caught.value) == "RM has detected an NVML/RM version mismatch."
    with pytest.raises(nvml.NVMLError_Uninitialized):
        nvml.nvmlSystemGetDriverVersion()


def test_a_session_opened_before_the_install_keeps_working(nvml, simhost):
    simhost.init(H100)
    nvml.nvmlInit()
    postinst(simhost, "580.95.05")
    assert nvml.nvmlSystemGetDriverVersion() == "580.159.04"  # the library in memory still matches the module


def test_reboot_loads_the_installed_version(nvml, simhost):
    simhost.init(H100)
    postinst(simhost, "570.195.03", "proprietary")
    simhost.ok("reboot")
    drv = simhost.state()["driver"]
    assert (drv["version"], drv["flavor"], drv["loaded"]) == ("570.195.03", "proprietary", True)
    nvml.nvmlInit()
    assert nvml.nvmlSystemGetDriverVersion() == "570.195.03"
    assert nvml.nvmlSystemGetNVMLVersion() == "13.570.195.03"


def test_reinstalling_the_loaded_version_heals_without_reboot(nvml, simhost):
    """A failed upgrade that restores the previous version leaves library and module equal again."""
    simhost.init(H100)
    postinst(simhost, "580.95.05")
    postinst(simhost, "580.159.04")
    nvml.nvmlInit()
    assert nvml.nvmlSystemGetDriverVersion() == "580.159.04"


def test_module_reload_heals_only_when_no_process_uses_a_gpu(nvml, simhost):
    simhost.init(f"{H100}:2")
    simhost.ok("proc", "add", "--gpu", "1", "--pid", "4242", "--mem-mib", "64")
    postinst(simhost, "580.95.05")
    refused = simhost.run("driver", "--reload")
    assert refused.returncode == 1 and "in use" in refused.stderr and "4242" in refused.stderr
    assert simhost.state()["driver"]["version"] == "580.159.04"
    with pytest.raises(nvml.NVMLError_LibRmVersionMismatch):
        nvml.nvmlInit()
    simhost.ok("proc", "clear")
    simhost.ok("driver", "--reload")
    drv = simhost.state()["driver"]
    assert (drv["version"], drv["loaded"], drv["reloads"]) == ("580.95.05", True, 1)
    nvml.nvmlInit()
    assert nvml.nvmlSystemGetDriverVersion() == "580.95.05"


def test_reload_drops_mig_instances_but_keeps_the_mode(simhost):
    simhost.init(H100)
    assert simhost.state()["gpus"][0]["mig"]["current"] == 0
    from gpusim import host, store  # pylint: disable=import-outside-toplevel
    with store.transaction(str(simhost.root)) as state:
        state["gpus"][0]["mig"] = {"current": 1, "pending": 1}
        state["gpus"][0]["gpu_instances"] = [{"id": 0, "uid": 1, "profile_id": 0, "start": 0, "size": 8, "compute_instances": []}]
        host.reload_driver(state)
    gpu = simhost.state()["gpus"][0]
    assert gpu["gpu_instances"] == [] and gpu["mig"]["current"] == 1


def test_removed_packages_unload_at_reboot(nvml, simhost):
    simhost.init(H100)
    simhost.ok("driver", "--installed", "no")  # postrm
    assert simhost.state()["driver"]["loaded"] is True  # the running module stays until reboot
    with pytest.raises(nvml.NVMLError_LibraryNotFound):
        nvml.nvmlInit()
    simhost.ok("reboot")
    assert simhost.state()["driver"]["loaded"] is False
    simhost.ok("driver", "--reload")  # nothing installed: nothing to load
    assert simhost.state()["driver"]["loaded"] is False


def test_first_install_on_a_host_without_driver_loads_at_reboot(nvml, simhost):
    simhost.init(H100, extra=("--no-driver",))
    postinst(simhost, "580.95.05")
    with pytest.raises(nvml.NVMLError_DriverNotLoaded):
        nvml.nvmlInit()
    simhost.ok("reboot")
    nvml.nvmlInit()
    assert nvml.nvmlSystemGetDriverVersion() == "580.95.05"


def test_version_sets_both_sides_at_once_for_other_callers(nvml, simhost):
    simhost.init(H100)
    simhost.ok("driver", "--version", "580.95.05", "--flavor", "proprietary")
    drv = simhost.state()["driver"]
    assert (drv["version"], drv["installed_version"], drv["flavor"], drv["installed_flavor"]) == \
        ("580.95.05", "580.95.05", "proprietary", "proprietary")
    nvml.nvmlInit()
    assert nvml.nvmlSystemGetDriverVersion() == "580.95.05"


def test_loaded_yes_forces_the_installed_version_in(nvml, simhost):
    simhost.init(H100)
    simhost.ok("proc", "add", "--gpu", "0", "--pid", "7", "--mem-mib", "1")
    postinst(simhost, "580.95.05")
    simhost.ok("driver", "--loaded", "yes")  # a test knob: no in-use check
    nvml.nvmlInit()
    assert nvml.nvmlSystemGetDriverVersion() == "580.95.05"


def test_state_without_installed_version_reads_as_matching(nvml, simhost):
    """A state file written before the split (no installed_version) is not a mismatch."""
    simhost.init(H100)
    from gpusim import store  # pylint: disable=import-outside-toplevel
    with store.transaction(str(simhost.root)) as state:
        del state["driver"]["installed_version"], state["driver"]["installed_flavor"]
    nvml.nvmlInit()
    assert nvml.nvmlSystemGetDriverVersion() == "580.159.04"


@pytest.mark.parametrize("args, named", [
    (("driver", "--installed-version", "580"), "--installed-version"),
    (("driver", "--installed-version", "580.95.05", "--installed-flavor", "closed"), "--installed-flavor"),
    (("driver", "--installed-flavor", "open"), "--installed-flavor"),
    (("driver", "--installed-version", "580.95.05", "--installed", "no"), "--installed"),
    (("driver", "--reload", "--loaded", "yes"), "--reload"),
])
def test_bad_driver_arguments_are_named(simhost, args, named):
    simhost.init(H100)
    result = simhost.run(*args)
    assert result.returncode == 2 and named in result.stderr and len(result.stderr.splitlines()) == 1


def test_nvidia_smi_prints_the_mismatch_and_exits_18(simhost):
    simhost.init(H100)
    postinst(simhost, "580.95.05")
    for args in (("-L",), ("-q", "-x"), ("--query-gpu=driver_version", "--format=csv,noheader")):
        assert smi(simhost, *args) == (18, MISMATCH + "NVML library version: 580.95\n", "")
    simhost.ok("reboot")
    assert smi(simhost, "--query-gpu=driver_version", "--format=csv,noheader") == (0, "580.95.05\n", "")
