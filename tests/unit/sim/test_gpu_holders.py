"""GPU holders off-fleet: NVML sessions (files and device descriptors), their liveness, nvidia_drm, the IN_USE
refusals of a reset and a MIG mode change, the MIG capability /proc files, and the nvidia-modprobe stand-in."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from gpusim import modprobe, procfs, sessions

REPO_SIM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "sim")
SMI = os.path.join(REPO_SIM, "bin", "nvidia-smi")
PERSISTENCED = os.path.join(REPO_SIM, "bin", "nvidia-persistenced")

HOLD = "import os, sys, time, pynvml\npynvml.nvmlInit()\nprint('ready', flush=True)\n" \
       "sys.stdin.readline()\n" \
       "if sys.argv[1] == 'shutdown':\n    pynvml.nvmlShutdown()\n    print('closed', flush=True)\n    sys.stdin.readline()\n"


@pytest.fixture
def devdir(tmp_path, monkeypatch):
    """Device nodes stand-ins (regular files: O_PATH opens them as it opens a node nobody serves)."""
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("nvidiactl", "nvidia0", "nvidia1"):
        (dev / name).touch()
    monkeypatch.setenv("GPUSIM_DEV", str(dev))
    return dev


def _client(mode: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO_SIM, "lib"))
    proc = subprocess.Popen([sys.executable, "-c", HOLD, mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _fd_targets(pid: int) -> set[str]:
    fds = "/proc/%d/fd" % pid
    return {os.readlink(os.path.join(fds, f)) for f in os.listdir(fds) if not os.readlink(os.path.join(fds, f)).startswith(("pipe:", "/dev/null"))}


def test_an_nvml_session_holds_the_gpus_until_the_last_shutdown(nvml, simhost, devdir):
    simhost.init("h100-80gb-hbm3:2")
    client = _client("shutdown")
    try:
        assert {str(devdir / "nvidiactl"), str(devdir / "nvidia0"), str(devdir / "nvidia1")} <= _fd_targets(client.pid)
        comm = open("/proc/%d/comm" % client.pid, encoding="utf-8").read().strip()
        expected = "pid %d (%s)" % (client.pid, comm)
        assert sessions.others(str(simhost.root)) == [{"pid": client.pid, "comm": comm}]
        assert simhost.run("reset", "--gpu", "1").returncode == 1
        result = simhost.run("reset", "--gpu", "1")
        assert "in use by another client: %s" % expected in result.stderr
        nvml.nvmlInit()
        # bare metal: the mode is recorded but cannot take effect while held (activation status IN_USE)
        assert nvml.nvmlDeviceSetMigMode(nvml.nvmlDeviceGetHandleByIndex(0), 1) == nvml.NVML_ERROR_IN_USE
        assert simhost.state()["gpus"][0]["mig"] == {"current": 0, "pending": 1}
        nvml.nvmlShutdown()
        result = simhost.run("reset", "--gpu", "0")
        assert result.returncode == 1 and "in use by another client: %s" % expected in result.stderr
        assert simhost.state()["gpus"][0]["mig"] == {"current": 0, "pending": 1}
        client.stdin.write("\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "closed"
        assert not any(str(devdir) in t for t in _fd_targets(client.pid))
        assert sessions.others(str(simhost.root)) == []
        assert simhost.run("reset", "--gpu", "1").returncode == 0
    finally:
        client.kill()
        client.wait()


def test_the_calling_process_is_never_its_own_holder(nvml, simhost, devdir):
    simhost.init("h100-80gb-hbm3:1")
    nvml.nvmlInit()
    nvml.nvmlInit()  # reference counted: one session
    assert [s["pid"] for s in sessions.live(str(simhost.root))] == [os.getpid()]
    assert nvml.nvmlDeviceSetMigMode(nvml.nvmlDeviceGetHandleByIndex(0), 1) == nvml.NVML_ERROR_RESET_REQUIRED
    assert simhost.ctl("reset", "--gpu", "0") == 0  # gpusimctl in this very process
    nvml.nvmlShutdown()
    assert len(sessions.live(str(simhost.root))) == 1
    nvml.nvmlShutdown()
    assert sessions.live(str(simhost.root)) == []


def test_a_dead_client_and_a_reused_pid_hold_nothing(nvml, simhost, devdir):
    simhost.init("h100-80gb-hbm3:1")
    client = _client("keep")
    client.kill()
    client.wait()
    path = simhost.root / "sessions" / str(client.pid)
    assert path.exists()
    assert sessions.others(str(simhost.root)) == [] and not path.exists()
    # a live pid whose start time differs from the one recorded is another process
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        real = sessions.start_time(sleeper.pid)
        (simhost.root / "sessions" / str(sleeper.pid)).write_text("%d %d python3\n" % (sleeper.pid, real - 1))
        assert sessions.others(str(simhost.root)) == []
        (simhost.root / "sessions" / str(sleeper.pid)).write_text("%d %d sleep\n" % (sleeper.pid, real))
        assert sessions.others(str(simhost.root)) == [{"pid": sleeper.pid, "comm": "sleep"}]
        assert simhost.ctl("reboot") == 0  # a reboot frees everything
        assert sessions.others(str(simhost.root)) == []
    finally:
        sleeper.kill()
        sleeper.wait()


def test_nvidia_smi_r_refuses_with_the_real_words_and_gpusimctl_force_resets(nvml, simhost, devdir):
    simhost.init("h100-80gb-hbm3:1")
    simhost.ok("proc", "add", "--gpu", "0", "--pid", "4242", "--mem-mib", "10", "--name", "train")
    proc = subprocess.run([sys.executable, SMI, "-r", "-i", "0"], capture_output=True, text=True, check=False)
    assert proc.returncode == 255 and proc.stdout.startswith(
        "The following GPUs could not be reset:\n  GPU 00000000:18:00.0: In use by another client\n\n"
        "1 device is currently being used by one or more other processes (e.g., Fabric Manager")
    assert "in use by another client: pid 4242 (train)" in simhost.run("reset", "--gpu", "0").stderr
    assert simhost.run("reset", "--gpu", "0", "--force").returncode == 0
    gpu = simhost.state()["gpus"][0]
    assert gpu["processes"] == [] and gpu["resets"] == 1


def test_nvidia_drm_holds_every_gpu_and_shows_in_proc_modules(nvml, simhost):
    simhost.init("h100-80gb-hbm3:2")
    modules = simhost.root / "proc" / "modules"
    assert "nvidia_drm" not in modules.read_text() and modules.read_text().startswith("nvidia_uvm ")
    simhost.ok("nvidia-drm", "--loaded", "yes")
    assert json.loads(simhost.run("holders").stdout) == {"0": ["nvidia_drm (kernel module)"], "1": ["nvidia_drm (kernel module)"]}
    assert "nvidia_drm 139264 1 - Live" in modules.read_text()
    nvml.nvmlInit()
    assert nvml.nvmlDeviceSetMigMode(nvml.nvmlDeviceGetHandleByIndex(1), 1) == nvml.NVML_ERROR_IN_USE  # pending, held
    nvml.nvmlShutdown()
    assert simhost.run("reset", "--gpu", "1").returncode == 1
    assert simhost.ctl("reboot") == 0  # not loaded at boot: a reboot unloads it, and the pending mode is current
    assert simhost.state()["gpus"][1]["mig"] == {"current": 1, "pending": 1}
    assert json.loads(simhost.run("holders").stdout) == {"0": [], "1": []}
    simhost.ok("nvidia-drm", "--at-boot", "yes")
    assert simhost.ctl("reboot") == 0
    assert simhost.state()["nvidia_drm"] == {"at_boot": True, "loaded": True}
    simhost.ok("driver", "--loaded", "no")
    assert simhost.run("nvidia-drm", "--loaded", "yes").returncode == 2  # needs the NVIDIA module
    assert modules.read_text() == ""


def test_capability_files_follow_instances_and_the_driver(nvml, simhost):
    simhost.init("h100-80gb-hbm3:2", "a100-sxm4-40gb:1")
    caps = simhost.root / "proc" / "driver" / "nvidia" / "capabilities"
    assert (caps / "mig" / "config").read_text() == "DeviceFileMinor: 1\nDeviceFileMode: 256\nDeviceFileModify: 1\n"
    assert sorted(p.name for p in caps.iterdir()) == ["gpu0", "gpu1", "gpu2", "mig"]
    minors = (simhost.root / "proc" / "driver" / "nvidia-caps" / "mig-minors").read_text().splitlines()
    assert len(minors) == 2 + 32 * 135 and minors[2:4] == ["gpu0/gi0/access 3", "gpu0/gi0/ci0/access 4"]
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(1)
    nvml.nvmlDeviceSetMigMode(handle, 1)
    simhost.ok("reset", "--gpu", "1")
    gi = nvml.nvmlDeviceCreateGpuInstance(handle, 9)
    ci = nvml.nvmlGpuInstanceCreateComputeInstance(gi, 2)
    gi_id, ci_id = nvml.nvmlGpuInstanceGetInfo(gi).id, nvml.nvmlComputeInstanceGetInfo(ci).id
    gi_dir = caps / "gpu1" / "mig" / ("gi%d" % gi_id)
    assert (gi_dir / "access").read_text() == "DeviceFileMinor: %d\nDeviceFileMode: 292\nDeviceFileModify: 1\n" % (138 + 9 * gi_id)
    assert (gi_dir / ("ci%d" % ci_id) / "access").read_text().startswith("DeviceFileMinor: %d\n" % (139 + 9 * gi_id + ci_id))
    nvml.nvmlComputeInstanceDestroy(ci)
    assert not (gi_dir / ("ci%d" % ci_id)).exists() and (gi_dir / "access").exists()
    nvml.nvmlDeviceCreateGpuInstance(handle, 9)
    nvml.nvmlShutdown()
    simhost.ok("reset", "--gpu", "1")  # a reset drops every instance
    assert list((caps / "gpu1" / "mig").iterdir()) == []
    simhost.ok("driver", "--loaded", "no")
    assert list(caps.iterdir()) == [] and not (simhost.root / "proc" / "driver" / "nvidia-caps" / "mig-minors").exists()


def test_nvidia_modprobe_makes_capability_nodes_from_the_proc_files(tmp_path, monkeypatch):
    proc, dev = tmp_path / "proc", tmp_path / "dev"
    cap = proc / "driver/nvidia/capabilities/gpu0/mig/gi1/access"
    cap.parent.mkdir(parents=True)
    cap.write_text("DeviceFileMinor: 12\nDeviceFileMode: 292\nDeviceFileModify: 1\n")
    (proc / "driver/nvidia/capabilities/mig").mkdir()
    (proc / "driver/nvidia/capabilities/mig/config").write_text(procfs.cap_text(1, 0o400))
    dev.mkdir()
    monkeypatch.setenv("GPUSIM_PROC", str(proc))
    monkeypatch.setenv("GPUSIM_DEV", str(dev))
    assert modprobe.main(["-f", "/proc/driver/nvidia/capabilities/gpu0/mig/gi1/access",
                          "--nvidia-capability-device-file=/proc/driver/nvidia/capabilities/mig/config"]) == 0
    st = os.stat(dev / "nvidia-caps")
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o755
    node = os.stat(dev / "nvidia-caps/nvidia-cap12")
    assert stat.S_ISCHR(node.st_mode) and (os.major(node.st_rdev), os.minor(node.st_rdev)) == (modprobe.CAPS_MAJOR, 12)
    assert stat.S_IMODE(node.st_mode) == 0o444
    assert stat.S_IMODE(os.stat(dev / "nvidia-caps/nvidia-cap1").st_mode) == 0o400
    assert modprobe.main(["-f", "/etc/passwd"]) == 1
    assert modprobe.main(["-f", "/proc/driver/nvidia/capabilities/../../../etc/passwd"]) == 1
    assert modprobe.main(["-u", "-m", "-s"]) == 0
    assert modprobe.main(["--bogus"]) == 2
    assert modprobe.main(["-f"]) == 2


def test_persistenced_stand_in_holds_until_sigterm(simhost, devdir):
    simhost.init("h100-80gb-hbm3:1")
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO_SIM, "lib"))
    daemon = subprocess.Popen([PERSISTENCED, "--verbose"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert daemon.stdout.readline().startswith("nvidia-persistenced: holding 1 GPU")
        assert sessions.others(str(simhost.root)) == [{"pid": daemon.pid, "comm": "nvidia-persiste"}]
        daemon.terminate()
        assert daemon.wait(10) == 0
        assert sessions.others(str(simhost.root)) == []
    finally:
        daemon.kill()
        daemon.wait()
