"""Fleet in a box, end to end: namespaces, systemd, sshd, reboots, and a clean `down`.

Needs root (namespaces, overlay, cgroups). Brings up tests/integration/fleet/fleet-test.yml with its
own inventory file and tears it down (with --purge) in the fixture's finaliser. The first run on a
machine builds the cached base root filesystem (about a minute); later runs reuse it.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fleethost import fleet  # noqa: E402 pylint: disable=import-error,wrong-import-position

REPO = Path(__file__).resolve().parents[3]
FLEET_FILE = Path(__file__).with_name("fleet-test.yml")
FLEET = "fleettest"
HOSTS = ["ft-h100", "ft-a100", "ft-a40"]
VENV_BIN = REPO / ".venv" / "bin"
STATE = Path(os.environ.get("GPUVIRT_FLEET_STATE", "/var/lib/gpuvirt-fleet")) / FLEET
RUN = Path(os.environ.get("GPUVIRT_FLEET_RUN", "/run/gpuvirt-fleet")) / FLEET
CGROUP = Path("/sys/fs/cgroup/systemd/gpuvirt-fleet") / FLEET

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the fleet needs root"),
    pytest.mark.skipif(not (VENV_BIN / "ansible").exists(), reason="needs the repo venv with ansible-core"),
]


def ansible(inv: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ, ANSIBLE_DEPRECATION_WARNINGS="False", ANSIBLE_NOCOLOR="1")
    return subprocess.run([str(VENV_BIN / "ansible"), "-i", str(inv), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env, check=False)


def status() -> dict[str, dict]:
    rows = json.loads(fleet("status", "--fleet", FLEET, "--json").stdout)
    return {r["host"]: r for r in rows}


class Fleet:
    def __init__(self, inventory: Path):
        self.inventory = inventory
        self.inv = yaml.safe_load(inventory.read_text())

    def hostvars(self, host: str) -> dict:
        return {**self.inv["all"]["vars"], **self.inv["all"]["hosts"][host]}

    def ssh(self, host: str, command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        hv = self.hostvars(host)
        cmd = ["ssh", "-i", hv["ansible_ssh_private_key_file"], "-p", str(hv["ansible_port"]),
               *hv["ansible_ssh_common_args"].split(), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
               f"root@{hv['ansible_host']}", command]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise AssertionError(f"ssh {host} {command!r} failed ({r.returncode}): {r.stderr}")
        return r


def _pid_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _fleet_processes(namespaces: set[str]) -> list[str]:
    """Processes of this fleet: supervisors (command line), host inits (environment), and anything
    in one of the host PID namespaces seen while the fleet ran."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = (d / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if f"gpusim_fleet.supervisor {FLEET} " in cmd or f"GPUVIRT_FLEET_HOST={FLEET}/" in env \
                or _pid_ns(int(d.name)) in namespaces:
            found.append(f"{d.name}: {cmd}")
    return found


def _fleet_mounts() -> list[str]:
    with open("/proc/mounts") as f:
        return [line.strip() for line in f if str(STATE) in line or str(RUN) in line]


@pytest.fixture(scope="module")
def up(tmp_path_factory) -> Fleet:
    inventory = tmp_path_factory.mktemp("fleet") / "hosts.yml"
    fleet("down", "--fleet", FLEET, "--purge", check=False)
    try:
        t0 = time.monotonic()
        fleet("up", str(FLEET_FILE), "--inventory", str(inventory), timeout=900)
        print(f"fleet up took {time.monotonic() - t0:.1f} s")
        yield Fleet(inventory)
    finally:
        fleet("down", "--fleet", FLEET, "--purge", check=False)


def test_up_writes_inventory_with_groups_and_connection_vars(up: Fleet):
    inv = up.inv["all"]
    assert sorted(inv["hosts"]) == sorted(HOSTS)
    assert set(inv["children"]["gpu_hosts"]["hosts"]) == set(HOSTS)
    assert list(inv["children"]["vgpu_hosts"]["hosts"]) == ["ft-a40"]
    assert list(inv["children"]["h100"]["hosts"]) == ["ft-h100"]
    ports = [h["ansible_port"] for h in inv["hosts"].values()]
    assert ports == [22900, 22901, 22902]
    for h in HOSTS:
        hv = up.hostvars(h)
        assert hv["ansible_host"] == "127.0.0.1"
        assert hv["ansible_user"] == "root"
        assert hv["ansible_python_interpreter"] == "/usr/bin/python3"
        assert Path(hv["ansible_ssh_private_key_file"]).is_file()
        assert "StrictHostKeyChecking=no" in hv["ansible_ssh_common_args"]
    assert up.hostvars("ft-a40")["fleet_test_marker"] == "a40"


def test_up_again_leaves_running_hosts_alone(up: Fleet):
    before = {h: r["pid1"] for h, r in status().items()}
    t0 = time.monotonic()
    r = fleet("up", str(FLEET_FILE), "--inventory", str(up.inventory))
    assert time.monotonic() - t0 < 15
    assert r.stderr.count("already running, left alone") == len(HOSTS)
    assert {h: r["pid1"] for h, r in status().items()} == before


def test_host_mounts_stay_inside_the_hosts(up: Fleet):
    # Every overlay, proc, sys and dev mount of a host lives in its own mount namespace.
    assert _fleet_mounts() == []
    st = status()
    assert all(r["pid1"] and r["supervisor"] for r in st.values())
    for h in HOSTS:
        assert os.readlink(f"/proc/{st[h]['pid1']}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        assert os.readlink(f"/proc/{st[h]['pid1']}/ns/pid") != os.readlink("/proc/self/ns/pid")


def test_systemd_reaches_running_on_every_host_over_ssh(up: Fleet):
    for h in HOSTS:
        r = up.ssh(h, "systemctl is-system-running --wait", check=False)
        assert r.stdout.strip() == "running", (h, r.stdout, up.ssh(h, "systemctl --failed --no-pager").stdout)


def test_hostname_equals_inventory_name(up: Fleet):
    for h in HOSTS:
        assert up.ssh(h, "hostname").stdout.strip() == h
        assert up.ssh(h, "cat /etc/hostname").stdout.strip() == h


def test_a_file_written_on_one_host_is_not_on_another(up: Fleet):
    up.ssh("ft-h100", "echo only-here > /root/isolation-marker && sync")
    assert up.ssh("ft-h100", "cat /root/isolation-marker").stdout.strip() == "only-here"
    for other in ("ft-a100", "ft-a40"):
        assert up.ssh(other, "test -e /root/isolation-marker", check=False).returncode == 1
    # Nor on the machine's own root filesystem.
    assert not Path("/root/isolation-marker").exists()


def test_each_host_has_its_own_simulated_gpus(up: Fleet):
    if not (REPO / "sim" / "bin" / "gpusimctl").exists():
        pytest.skip("sim/bin/gpusimctl is not in the repo yet: no GPU state to compare")
    listings = {h: up.ssh(h, "nvidia-smi -L").stdout for h in HOSTS}
    assert listings["ft-h100"].count("GPU ") == 2 and "H100" in listings["ft-h100"]
    assert listings["ft-a100"].count("GPU ") == 1 and "A100" in listings["ft-a100"]
    assert "A40" in listings["ft-a40"]
    assert len(set(listings.values())) == len(HOSTS)
    # The same tool on the machine sees each host's state through the host's own root.
    uuids = [line.split("UUID: ")[1] for text in listings.values() for line in text.splitlines() if "UUID: " in line]
    assert len(uuids) == len(set(uuids))


def test_proc_driver_nvidia_version_is_per_host(up: Fleet):
    open_ = up.ssh("ft-h100", "cat /proc/driver/nvidia/version").stdout
    prop = up.ssh("ft-a40", "cat /proc/driver/nvidia/version").stdout
    assert open_.startswith("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build")
    assert prop.startswith("NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.95.05  Release Build")
    assert open_.splitlines()[1].startswith("GCC version:  gcc version")
    # Read-only, like the real file.
    assert up.ssh("ft-h100", "echo x > /proc/driver/nvidia/version", check=False).returncode != 0


def test_sys_is_emulated_not_the_machines(up: Fleet):
    out = up.ssh("ft-h100", "stat -f -c %T /sys; ls /sys; ls /sys/fs/cgroup").stdout.split()
    assert out[0] == "tmpfs"
    assert "class" in out and "bus" in out and "systemd" in out
    assert up.ssh("ft-h100", "test -e /sys/class/net/lo", check=False).returncode == 1


def test_openssh_and_paramiko_both_reach_a_host(up: Fleet):
    for extra in ([], ["-c", "paramiko_ssh"]):
        r = ansible(up.inventory, "ft-a100", "-m", "ansible.builtin.ping", *extra)
        assert r.returncode == 0, (extra, r.stdout, r.stderr)
        assert '"ping": "pong"' in r.stdout


def nvml(up: Fleet, host: str, code: str) -> str:
    """Run NVML calls on a host (GPU 0 as d) through the pynvml installed there."""
    prog = "import pynvml as n; n.nvmlInit(); d = n.nvmlDeviceGetHandleByIndex(0); " + code
    return up.ssh(host, "python3 -c " + shlex.quote(prog)).stdout.strip()


def test_fleet_reboot_keeps_disk_and_enabled_units_but_not_run(up: Fleet):
    h = "ft-a100"
    up.ssh(h, "printf '[Unit]\\nDescription=fleet test\\n[Service]\\nType=oneshot\\nRemainAfterExit=yes\\n"
              "ExecStart=/bin/true\\n[Install]\\nWantedBy=multi-user.target\\n' > /etc/systemd/system/fleet-test.service"
              " && systemctl daemon-reload && systemctl enable fleet-test.service"
              " && touch /run/fleet-test-volatile /var/tmp/fleet-test-persistent")
    boot_id = up.ssh(h, "cat /proc/sys/kernel/random/boot_id").stdout.strip()
    pid1 = status()[h]["pid1"]
    mig = (REPO / "sim" / "lib" / "pynvml.py").exists()
    if mig:  # a pending MIG mode takes effect at the reboot, as on a real host
        assert nvml(up, h, "n.nvmlDeviceSetMigMode(d, 1); print(n.nvmlDeviceGetMigMode(d))") == "[0, 1]"
    fleet("reboot", h)
    if mig:
        assert nvml(up, h, "print(n.nvmlDeviceGetMigMode(d))") == "[1, 1]"
    assert status()[h]["pid1"] != pid1
    assert up.ssh(h, "cat /proc/sys/kernel/random/boot_id").stdout.strip() != boot_id
    assert up.ssh(h, "systemctl is-system-running --wait", check=False).stdout.strip() == "running"
    assert up.ssh(h, "systemctl is-active fleet-test.service", check=False).stdout.strip() == "active"
    assert up.ssh(h, "test -e /run/fleet-test-volatile", check=False).returncode == 1
    assert up.ssh(h, "test -e /var/tmp/fleet-test-persistent", check=False).returncode == 0


def test_ansible_reboot_module_gets_the_host_back(up: Fleet):
    h = "ft-h100"
    boots = status()[h]["boots"]
    gpusim = (REPO / "sim" / "bin" / "gpusimctl").exists()
    if gpusim:
        gpu_boot = json.loads(up.ssh(h, "gpusimctl show").stdout)["boot_id"]
    # systemd inside powers off with a reboot request; the fleet notices and boots the host again.
    r = ansible(up.inventory, h, "-m", "ansible.builtin.reboot", "-a", "reboot_timeout=120")
    assert r.returncode == 0, r.stdout + r.stderr
    assert '"rebooted": true' in r.stdout
    assert status()[h]["boots"] == boots + 1
    if gpusim:  # and its simulated GPUs went through the reboot too
        assert json.loads(up.ssh(h, "gpusimctl show").stdout)["boot_id"] == gpu_boot + 1


def test_host_with_sshd_stopped_is_unreachable_while_others_answer(up: Fleet):
    down_host = "ft-a40"
    fleet("exec", down_host, "--", "systemctl", "stop", "ssh.service")
    try:
        r = ansible(up.inventory, "all", "-m", "ansible.builtin.ping", "-o")
        lines = {line.split(" | ")[0]: line for line in r.stdout.splitlines() if " | " in line}
        assert "UNREACHABLE" in lines[down_host], r.stdout
        for h in HOSTS:
            if h != down_host:
                assert "SUCCESS" in lines[h], r.stdout
        assert r.returncode == 4  # ansible: some hosts unreachable
    finally:
        fleet("exec", down_host, "--", "systemctl", "start", "ssh.service")


def test_down_leaves_no_mount_and_no_process_even_after_a_crash(up: Fleet):
    st = status()
    namespaces = {_pid_ns(r["pid1"]) for r in st.values()} - {None}
    assert len(namespaces) == len(HOSTS)
    # A crashed supervisor: its host keeps running without it, and `down` must still find it.
    os.kill(st["ft-a100"]["supervisor"], signal.SIGKILL)
    time.sleep(0.5)
    assert _fleet_processes(namespaces)
    fleet("down", "--fleet", FLEET)
    assert _fleet_processes(namespaces) == []
    assert _fleet_mounts() == []
    assert not CGROUP.exists()
    assert not RUN.exists()
    # Disk layers stay without --purge; a second down is a no-op.
    assert (STATE / "hosts" / "ft-h100" / "upper" / "root" / "isolation-marker").exists()
    fleet("down", "--fleet", FLEET)
    for r in status().values():
        assert r["state"] == "down" and not r["sshd"]
