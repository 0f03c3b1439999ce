"""GPU holders on fleet hosts: what keeps a GPU from a reset or a MIG mode change, as on a real host.

Needs root. Brings up fleet-holders.yml (fleet `holders`, ports 23400+): hd-h100 runs the stand-in
nvidia-persistenced (enabled, so it starts at boot) and hd-drm loads nvidia_drm at boot. Proves that the daemon
holds the GPUs where a holder scan looks (/proc/*/fd links to /dev/nvidia*), that nvidia-smi -r, gpusimctl reset and
nvmlDeviceSetMigMode refuse with IN_USE while it runs and succeed once it is stopped, that a dead NVML client holds
nothing, that nvidia_drm holds every GPU, and that the MIG capability files follow the instances and nvidia-modprobe -f
makes their device nodes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fleethost import fleet, fleet_up  # noqa: E402 pylint: disable=import-error,wrong-import-position

FLEET_FILE = Path(__file__).with_name("fleet-holders.yml")
FLEET = "holders"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the fleet needs root")

# the holder scan production code does (as fuser): every process with a descriptor on a GPU device node
SCAN = ("for p in /proc/[0-9]*; do for f in $p/fd/*; do t=$(readlink $f 2>/dev/null) || continue; "
        "case $t in /dev/nvidia[0-9]*|/dev/nvidiactl) echo ${p#/proc/} $t;; esac; done; done")

NVML_SET_MIG = """
import json, pynvml
pynvml.nvmlInit()
h = pynvml.nvmlDeviceGetHandleByIndex(0)
try:
    print(json.dumps({"status": pynvml.nvmlDeviceSetMigMode(h, %d)}))
except pynvml.NVMLError as exc:
    print(json.dumps({"error": exc.value, "text": str(exc), "holders": getattr(exc, "holders", None)}))
"""

CREATE_GI = """
import pynvml
pynvml.nvmlInit()
h = pynvml.nvmlDeviceGetHandleByIndex(0)
gi = pynvml.nvmlDeviceCreateGpuInstance(h, 9)
ci = pynvml.nvmlGpuInstanceCreateComputeInstance(gi, 2)
print(pynvml.nvmlGpuInstanceGetInfo(gi).id, pynvml.nvmlComputeInstanceGetInfo(ci).id)
"""

DESTROY = """
import pynvml
pynvml.nvmlInit()
gi = pynvml.nvmlDeviceGetGpuInstanceById(pynvml.nvmlDeviceGetHandleByIndex(0), %d)
pynvml.nvmlComputeInstanceDestroy(pynvml.nvmlGpuInstanceGetComputeInstanceById(gi, %d))
pynvml.nvmlGpuInstanceDestroy(gi)
"""


def run(host: str, command: str) -> subprocess.CompletedProcess:
    """A shell command on the host as root, through the fleet's namespaces (no CAP_MKNOD, as the host's own)."""
    return fleet("exec", "--fleet", FLEET, host, "--", "sh", "-c", command, check=False)


def sh(host: str, command: str) -> str:
    proc = run(host, command)
    assert proc.returncode == 0, "%r failed: %s %s" % (command, proc.stdout, proc.stderr)
    return proc.stdout


def python(host: str, code: str) -> str:
    return sh(host, "python3 -c '%s'" % code.replace("'", "'\"'\"'"))


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    with fleet_up(FLEET, FLEET_FILE, tmp_path_factory.mktemp("holders")):
        for host in ("hd-h100", "hd-drm"):
            sh(host, "systemctl is-system-running --wait >/dev/null || true")
        yield


def _main_pid(host: str, unit: str) -> int:
    return int(sh(host, "systemctl show -p MainPID --value %s" % unit).strip())


def _enable_mig_on_gpu0(host: str) -> None:
    """MIG on GPU 0 of an idle host: pending through NVML, current after nvidia-smi -r."""
    assert json.loads(python(host, NVML_SET_MIG % 1)) in ({"status": 16}, {"status": 0})
    sh(host, "nvidia-smi -r -i 0 >/dev/null")
    assert json.loads(sh(host, "gpusimctl show"))["gpus"][0]["mig"] == {"current": 1, "pending": 1}


def test_boot_makes_the_gpu_device_nodes(hosts):
    out = sh("hd-h100", "stat -c '%n %F %t:%T %a' /dev/nvidiactl /dev/nvidia0 /dev/nvidia1 /dev/nvidia-uvm")
    assert out.splitlines() == ["/dev/nvidiactl character special file c3:ff 666", "/dev/nvidia0 character special file c3:0 666",
                                "/dev/nvidia1 character special file c3:1 666", "/dev/nvidia-uvm character special file 1fe:0 666"]
    assert run("hd-h100", "test -e /dev/nvidia2").returncode != 0


def test_persistenced_holds_the_gpus_until_it_is_stopped(hosts):
    host = "hd-h100"
    assert sh(host, "systemctl is-active nvidia-persistenced").strip() == "active"
    pid = _main_pid(host, "nvidia-persistenced")
    held = {tuple(line.split()) for line in sh(host, SCAN).splitlines()}
    assert {(str(pid), "/dev/nvidiactl"), (str(pid), "/dev/nvidia0"), (str(pid), "/dev/nvidia1")} <= held
    assert json.loads(sh(host, "gpusimctl holders")) == {"0": ["pid %d (nvidia-persiste)" % pid],
                                                         "1": ["pid %d (nvidia-persiste)" % pid]}
    # a GPU reset: nvidia-smi says what the real one says, with its exit code; gpusimctl names the holder
    smi = run(host, "nvidia-smi -r -i 0")
    assert smi.returncode == 255
    assert smi.stdout.startswith("The following GPUs could not be reset:\n  GPU 00000000:18:00.0: In use by another client\n")
    ctl = run(host, "gpusimctl reset --gpu 0")
    assert ctl.returncode == 1 and "pid %d (nvidia-persiste)" % pid in ctl.stderr
    # a MIG mode change through NVML: recorded as pending, activation status IN_USE (bare metal); not current
    assert json.loads(python(host, NVML_SET_MIG % 1)) == {"status": 19}
    state = json.loads(sh(host, "gpusimctl show"))
    assert state["gpus"][0]["mig"] == {"current": 0, "pending": 1} and "resets" not in state["gpus"][0]
    assert json.loads(python(host, NVML_SET_MIG % 0)) == {"status": 0}  # back to where it was

    sh(host, "systemctl stop nvidia-persistenced")
    assert sh(host, SCAN).strip() == ""
    assert json.loads(sh(host, "gpusimctl holders")) == {"0": [], "1": []}
    _enable_mig_on_gpu0(host)


def test_a_client_that_died_without_shutdown_holds_nothing(hosts):
    host = "hd-h100"
    sh(host, "systemctl stop nvidia-persistenced")
    python(host, "import os, pynvml\npynvml.nvmlInit()\nos._exit(0)")
    assert sh(host, "ls /var/lib/gpusim/sessions").strip() != ""  # its registration is left behind ...
    assert json.loads(sh(host, "gpusimctl holders")) == {"0": [], "1": []}  # ... and does not count
    assert run(host, "nvidia-smi -r -i 1").returncode == 0


def test_nvidia_drm_holds_every_gpu(hosts):
    host = "hd-drm"
    assert json.loads(sh(host, "gpusimctl holders")) == {"0": ["nvidia_drm (kernel module)"]}
    assert "nvidia_drm 139264 " in sh(host, "cat /var/lib/gpusim/proc/modules")
    if run(host, "test -e /proc/modules").returncode == 0:  # a kernel with module support: bound over /proc/modules
        assert "nvidia_drm " in sh(host, "cat /proc/modules")
    smi = run(host, "nvidia-smi -r -i 0")
    assert smi.returncode == 255 and "In use by another client" in smi.stdout
    assert json.loads(python(host, NVML_SET_MIG % 1)) == {"status": 19}  # pending, cannot take effect
    assert json.loads(python(host, NVML_SET_MIG % 0)) == {"status": 0}
    sh(host, "gpusimctl nvidia-drm --loaded no")
    assert run(host, "nvidia-smi -r -i 0").returncode == 0
    assert "nvidia_drm" not in sh(host, "cat /var/lib/gpusim/proc/modules")


def test_capability_files_follow_the_instances_and_nvidia_modprobe_makes_the_nodes(hosts):
    host = "hd-h100"
    sh(host, "systemctl stop nvidia-persistenced")
    if json.loads(sh(host, "gpusimctl show"))["gpus"][0]["mig"]["current"] != 1:
        _enable_mig_on_gpu0(host)
    caps = "/proc/driver/nvidia/capabilities"
    assert sh(host, "cat %s/mig/config %s/mig/monitor" % (caps, caps)) == (
        "DeviceFileMinor: 1\nDeviceFileMode: 256\nDeviceFileModify: 1\n"
        "DeviceFileMinor: 2\nDeviceFileMode: 292\nDeviceFileModify: 1\n")
    minors = sh(host, "cat /proc/driver/nvidia-caps/mig-minors").splitlines()
    assert minors[:4] == ["config 1", "monitor 2", "gpu0/gi0/access 3", "gpu0/gi0/ci0/access 4"]
    assert {"gpu0/gi7/access 66", "gpu1/gi7/access 201", "gpu1/gi13/access 255", "gpu31/gi14/ci7/access 4322"} <= set(minors)
    gi, ci = map(int, python(host, CREATE_GI).split())
    gi_minor, ci_minor = 3 + 9 * gi, 3 + 9 * gi + 1 + ci
    gi_file, ci_file = "%s/gpu0/mig/gi%d/access" % (caps, gi), "%s/gpu0/mig/gi%d/ci%d/access" % (caps, gi, ci)
    assert sh(host, "cat %s" % gi_file) == "DeviceFileMinor: %d\nDeviceFileMode: 292\nDeviceFileModify: 1\n" % gi_minor
    assert "gpu0/gi%d/access %d" % (gi, gi_minor) in minors and "gpu0/gi%d/ci%d/access %d" % (gi, ci, ci_minor) in minors
    assert run(host, "touch %s" % gi_file).returncode != 0  # read-only, as the driver's
    sh(host, "nvidia-modprobe -f %s -f %s -f %s/mig/config" % (gi_file, ci_file, caps))
    out = sh(host, "stat -c '%%n %%F %%t:%%T %%a' /dev/nvidia-caps /dev/nvidia-caps/nvidia-cap1 "
                   "/dev/nvidia-caps/nvidia-cap%d /dev/nvidia-caps/nvidia-cap%d" % (gi_minor, ci_minor))
    assert out.splitlines() == ["/dev/nvidia-caps directory 0:0 755", "/dev/nvidia-caps/nvidia-cap1 character special file 1fc:1 400",
                                "/dev/nvidia-caps/nvidia-cap%d character special file 1fc:%x 444" % (gi_minor, gi_minor),
                                "/dev/nvidia-caps/nvidia-cap%d character special file 1fc:%x 444" % (ci_minor, ci_minor)]
    refused = run(host, "nvidia-modprobe -f /etc/passwd")
    assert refused.returncode != 0 and "/proc/driver/nvidia/capabilities/" in refused.stderr
    python(host, DESTROY % (gi, ci))
    assert run(host, "test -e %s" % gi_file).returncode != 0
    assert sh(host, "ls %s/gpu0/mig" % caps).strip() == ""


def test_a_reboot_frees_everything_and_persistenced_starts_again(hosts):
    host = "hd-h100"
    sh(host, "systemctl stop nvidia-persistenced")
    python(host, CREATE_GI)
    fleet("reboot", "--fleet", FLEET, host)
    sh(host, "systemctl is-system-running --wait >/dev/null || true")
    assert sh(host, "ls /proc/driver/nvidia/capabilities/gpu0/mig").strip() == ""
    assert run(host, "test -e /dev/nvidia-caps").returncode != 0  # /dev is new at every boot
    pid = _main_pid(host, "nvidia-persistenced")
    assert pid and json.loads(sh(host, "gpusimctl holders"))["0"] == ["pid %d (nvidia-persiste)" % pid]
