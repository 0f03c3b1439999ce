"""One supervisor per simulated host: boots systemd as PID 1 in fresh namespaces, and boots it again
after a reboot, until the fleet goes down.

Run as `python3 -m gpusim_fleet.supervisor FLEET HOST` (the fleet tool starts it detached). Signals:
  SIGTERM  power the host off cleanly (SIGRTMIN+4 to its PID 1) and exit;
  SIGHUP   reboot: power off cleanly, reboot the simulated GPUs, boot again;
  SIGUSR1  boot a host that was powered off from inside.
PID 1 ending on its own: SIGHUP from the kernel means the host asked to reboot (systemctl reboot),
SIGINT means poweroff/halt (the host stays off); anything else is treated as a reset (boot again),
unless the host keeps dying right after boot.
"""
from __future__ import annotations

import json
import os
import signal
import stat
import sys
import time
import traceback
import uuid
from pathlib import Path

from . import host as hostmod
from . import nsutil as ns
from . import paths

STOP_TIMEOUT = 30.0  # clean poweroff budget before SIGKILL
# Capabilities the host's PID 1 never gets: they reach the real machine (modules, clock, raw I/O,
# network config of the shared network namespace, device nodes for the machine's disks).
DROPPED_CAPS = {
    "CAP_NET_ADMIN": 12, "CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17, "CAP_SYS_PACCT": 20,
    "CAP_SYS_TIME": 25, "CAP_MAC_OVERRIDE": 32, "CAP_MAC_ADMIN": 33, "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36, "CAP_MKNOD": 27,
}
WATCHED = {signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGUSR1}


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S ") + msg, flush=True)


class Supervisor:
    def __init__(self, fleet: str, name: str):
        self.fleet, self.name = fleet, name
        self.st = paths.host_state(fleet, name)
        self.cfg = json.loads((self.st / "host.json").read_text())
        self.run = paths.host_run(fleet, name)
        self.cgroup = Path(self.cfg.get("cgroup", str(paths.host_cgroup(fleet, name))))
        self.boots = 0
        self.pid1 = 0
        self.exits: list[float] = []

    # -- state shared with the fleet tool ------------------------------------------------------
    def publish(self, state: str, **extra) -> None:
        data = {"state": state, "supervisor": os.getpid(), "pid1": self.pid1, "boots": self.boots,
                "since": time.time(), "port": self.cfg["port"], **extra}
        tmp = self.run / "state.json.tmp"
        tmp.write_text(json.dumps(data) + "\n")
        os.replace(tmp, self.run / "state.json")

    # -- one boot ---------------------------------------------------------------------------------
    def prepare_boot(self) -> None:
        boot = self.run / "boot"
        boot.mkdir(parents=True, exist_ok=True)
        (boot / "boot_id").write_text(str(uuid.uuid4()) + "\n")
        kmod = hostmod.loaded_driver(Path(self.cfg["upper"]), self.cfg["spec"])
        nv = boot / "nvidia-version"
        if kmod:
            nv.write_text(hostmod.nvrm_version_text(*kmod))
        elif nv.exists():
            nv.unlink()
        # the GPUs whose device nodes the loaded driver makes (none without a loaded driver)
        (boot / "nvidia-minors").write_text(json.dumps(hostmod.gpu_minors(Path(self.cfg["upper"])) if kmod else []) + "\n")
        console = self.run / "console.log"
        if console.exists() and console.stat().st_size > 4 << 20:
            console.rename(self.run / "console.log.old")
        console.touch()
        self.cgroup.mkdir(parents=True, exist_ok=True)

    def boot(self) -> int:
        self.prepare_boot()
        flags = ns.CLONE_NEWPID | ns.CLONE_NEWNS | ns.CLONE_NEWUTS | ns.CLONE_NEWIPC
        pid = ns.clone(flags)
        if pid == 0:
            try:
                container_init(self.cfg, self.run, self.cgroup)
            except BaseException:  # noqa: BLE001 - the child must never return into the supervisor
                traceback.print_exc()
                sys.stderr.flush()
            os._exit(127)
        self.boots += 1
        self.pid1 = pid
        (self.run / "pid1").write_text(f"{pid}\n")
        log(f"boot {self.boots}: PID 1 is {pid}")
        self.publish("running")
        return pid

    def wait(self, pid: int) -> tuple[int, str | None]:
        """Wait for PID 1 to end; returns (wait status, what the fleet asked for: stop/reboot/None)."""
        intent, deadline, resend = None, None, 0.0
        while True:
            try:
                got, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return 0, intent
            if got == pid:
                return status, intent
            timeout = 5.0 if deadline is None else max(0.05, min(1.0, deadline - time.monotonic()))
            info = signal.sigtimedwait(WATCHED, timeout)
            if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                new = "reboot" if info.si_signo == signal.SIGHUP else "stop"
                if intent != "stop":
                    intent = new
                if deadline is None:
                    log(f"{intent}: powering off PID 1 with SIGRTMIN+4")
                    _signal(pid, signal.SIGRTMIN + 4)
                    deadline = time.monotonic() + STOP_TIMEOUT
                    resend = time.monotonic() + 2
                    self.publish("stopping")
            if deadline is not None and time.monotonic() > deadline:
                log("PID 1 did not power off in time: SIGKILL")
                _signal(pid, signal.SIGKILL)
                deadline = time.monotonic() + 3600
            elif deadline is not None and time.monotonic() > resend:
                # A PID 1 that has no handler yet (early boot) ignores the signal: say it again.
                _signal(pid, signal.SIGRTMIN + 4)
                resend = time.monotonic() + 2

    def clean_cgroups(self) -> None:
        """Remove the sub-cgroups systemd made; the host's own directory stays for the next boot."""
        if not self.cgroup.exists():
            return
        for d in sorted((p for p in self.cgroup.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            try:
                d.rmdir()
            except OSError:
                pass

    def main(self) -> int:
        self.run.mkdir(parents=True, exist_ok=True)
        (self.run / "supervisor.pid").write_text(f"{os.getpid()}\n")
        signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
        state = "boot"
        while True:
            if state == "boot":
                pid = self.boot()
                status, intent = self.wait(pid)
                self.pid1 = 0
                (self.run / "pid1").unlink(missing_ok=True)
                self.clean_cgroups()
                how = describe(status)
                log(f"PID 1 ended: {how}; fleet asked for: {intent or 'nothing'}")
                if intent == "stop":
                    self.publish("off", last_exit=how)
                    return 0
                gpusim = Path(self.cfg["upper"]) / "var/lib/gpusim"
                if intent == "reboot" or (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGHUP):
                    log(hostmod.gpu_reboot(gpusim))
                    continue
                if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGINT:
                    log("host powered itself off; it stays off until `sim/fleet up` or SIGUSR1")
                    log(hostmod.gpu_reboot(gpusim))
                    state = "off"
                    self.publish("off", last_exit=how)
                    continue
                now = time.monotonic()
                self.exits = [t for t in self.exits if now - t < 60] + [now]
                if len(self.exits) >= 4:
                    log("PID 1 keeps dying: giving up; see console.log")
                    state = "off"
                    self.publish("failed", last_exit=how)
                    continue
                log("unexpected end of PID 1: resetting the host")
                log(hostmod.gpu_reboot(gpusim))
                time.sleep(1)
                continue
            # powered off: wait for a start or a stop request
            info = signal.sigwaitinfo(WATCHED)
            if info.si_signo in (signal.SIGTERM, signal.SIGINT):
                return 0
            if info.si_signo in (signal.SIGUSR1, signal.SIGHUP):
                self.exits = []
                state = "boot"


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    if os.WIFEXITED(status):
        return f"exit status {os.WEXITSTATUS(status)}"
    return f"status {status}"


# ---- inside the new namespaces, before systemd --------------------------------------------------

def _mknod(path: str, major: int, minor: int, mode: int = 0o666) -> None:
    os.mknod(path, stat.S_IFCHR | mode, os.makedev(major, minor))
    os.chmod(path, mode)


def _bind_ro(src: str, dst: str) -> None:
    ns.mount(src, dst, None, ns.MS_BIND)
    ns.mount(None, dst, None, ns.MS_BIND | ns.MS_REMOUNT | ns.MS_RDONLY | ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC)


NVIDIA_MAJOR, CAPS_MAJOR, UVM_MAJOR = 195, 508, 510  # the caps and uvm majors are fixed stand-ins (gpusim.modprobe)
CAP_MINORS_PER_GPU = 135  # 15 GPU instances x (1 + 8 compute instances) per GPU minor, after config 1 and monitor 2


def _nvidia_nodes(r, minors: list[int]) -> None:
    """What the driver and nvidia-modprobe make when the module loads: /dev/nvidiactl, /dev/nvidia<minor>,
    /dev/nvidia-uvm(-tools). The nvidia-caps nodes are made later by nvidia-modprobe -f; with CAP_MKNOD dropped it
    links them from /dev/.gpusim-nodes/nvidia-caps, made here for every cap minor of these GPUs (mode 0, root only)."""
    if not minors:
        return
    _mknod(r("/dev/nvidiactl"), NVIDIA_MAJOR, 255)
    for minor in minors:
        _mknod(r("/dev/nvidia%d" % minor), NVIDIA_MAJOR, minor)
    _mknod(r("/dev/nvidia-uvm"), UVM_MAJOR, 0)
    _mknod(r("/dev/nvidia-uvm-tools"), UVM_MAJOR, 1)
    stash = r("/dev/.gpusim-nodes/nvidia-caps")
    os.makedirs(stash, 0o700)
    os.chmod(r("/dev/.gpusim-nodes"), 0o700)
    caps = [1, 2] + [3 + CAP_MINORS_PER_GPU * g + k for g in minors for k in range(CAP_MINORS_PER_GPU)]
    for cap in caps:
        _mknod("%s/nvidia-cap%d" % (stash, cap), CAPS_MAJOR, cap, 0)


def container_init(cfg: dict, run: Path, cgroup: Path) -> None:
    """PID 1 of a fresh PID namespace (and own mount/UTS/IPC namespaces): build the host's root
    filesystem, then exec systemd. Every mount made here lives only in this mount namespace."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    if os.getpid() != 1:
        raise RuntimeError("not PID 1 of a new PID namespace: refusing to start systemd")
    # Join the host's own cgroup, then make it this namespace's cgroup root.
    (cgroup / "cgroup.procs").write_text("0\n")
    ns.unshare(ns.CLONE_NEWCGROUP)
    # Nothing done below may propagate back to the machine.
    ns.mount(None, "/", None, ns.MS_REC | ns.MS_PRIVATE)

    root = cfg["merged"]
    # nodev: a device node on the host's disk opens nothing (with CAP_MKNOD dropped, none can be made).
    ns.mount("overlay", root, "overlay", ns.MS_NODEV,
             f"lowerdir={cfg['base']},upperdir={cfg['upper']},workdir={cfg['work']}")

    def r(path: str) -> str:
        return root + path

    # /proc: own PID view; kernel tunables read-only (the network namespace is the machine's).
    ns.mount("proc", r("/proc"), "proc", ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC)
    for p in ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs"):
        if os.path.exists(r(p)):
            ns.mount(r(p), r(p), None, ns.MS_BIND | ns.MS_REC)
            ns.mount(None, r(p), None, ns.MS_BIND | ns.MS_REMOUNT | ns.MS_RDONLY | ns.MS_REC)
    if os.path.exists(r("/proc/kcore")):
        ns.mount("/dev/null", r("/proc/kcore"), None, ns.MS_BIND)
    # A boot id per boot, so "did it reboot?" checks (ansible.builtin.reboot) see a new boot.
    ns.mount(str(run / "boot/boot_id"), r("/proc/sys/kernel/random/boot_id"), None, ns.MS_BIND)
    # The loaded kernel driver, as /proc/driver/nvidia/version shows it.
    ns.mount("tmpfs", r("/proc/driver"), "tmpfs", ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC, "mode=0555,size=1m")
    nv = run / "boot/nvidia-version"
    if nv.exists():
        os.mkdir(r("/proc/driver/nvidia"), 0o555)
        with open(r("/proc/driver/nvidia/version"), "w") as f:
            f.write(nv.read_text())
        os.chmod(r("/proc/driver/nvidia/version"), 0o444)
        # The driver's files that follow the GPU state (MIG capability files, mig-minors), which the simulator keeps
        # in step under its state lock in /var/lib/gpusim/proc (gpusim/procfs.py): bound read-only.
        for src, dst in (("/var/lib/gpusim/proc/driver/nvidia/capabilities", "/proc/driver/nvidia/capabilities"),
                         ("/var/lib/gpusim/proc/driver/nvidia-caps", "/proc/driver/nvidia-caps")):
            if os.path.isdir(r(src)):
                os.makedirs(r(dst), 0o555, exist_ok=True)
                _bind_ro(r(src), r(dst))
    # /proc/modules: the simulator's list of the loaded NVIDIA modules, where the kernel has the file to bind over
    # (a kernel without module support has none, and procfs takes no new file).
    if os.path.exists(r("/proc/modules")) and os.path.isfile(r("/var/lib/gpusim/proc/modules")):
        _bind_ro(r("/var/lib/gpusim/proc/modules"), r("/proc/modules"))
    # Read-only, as the kernel's file is (root ignores file modes on a tmpfs).
    ns.mount(None, r("/proc/driver"), None, ns.MS_REMOUNT | ns.MS_RDONLY | ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC,
             "mode=0555,size=1m")

    # /sys: an emulated tree, never the machine's. systemd needs its cgroup hierarchy; the
    # simulator's PCI, mdev and SR-IOV entries go under bus/pci/devices and class/mdev_bus.
    ns.mount("sysfs-gpusim", r("/sys"), "tmpfs", ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC, "mode=0755,size=16m")
    for d in ("fs/cgroup", "bus/pci/devices", "bus/pci/drivers", "bus/mdev/devices", "class/mdev_bus",
              "devices/pci0000:00", "devices/virtual", "kernel", "module"):
        os.makedirs(r("/sys/" + d), exist_ok=True)
    # /sys/module: the loaded NVIDIA modules (nvidia_drm when loaded), kept in step by the simulator (procfs.py).
    os.makedirs(r("/var/lib/gpusim/sys/module"), exist_ok=True)
    _bind_ro(r("/var/lib/gpusim/sys/module"), r("/sys/module"))
    if cfg.get("cgroup_mode", "v1") == "v2":
        # The host's own subtree, as the cgroup namespace's root.
        ns.mount("cgroup2", r("/sys/fs/cgroup"), "cgroup2", ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC)
    else:
        ns.mount("cgroup", r("/sys/fs/cgroup"), "tmpfs", ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC, "mode=0755,size=1m")
        os.mkdir(r("/sys/fs/cgroup/systemd"))
        ns.mount(str(cgroup), r("/sys/fs/cgroup/systemd"), None, ns.MS_BIND)
        # Read-only, so systemd cannot mount the machine's other controller hierarchies (or the
        # unified one) here and make cgroups in them: the host's cgroups stay in its own subtree.
        ns.mount(None, r("/sys/fs/cgroup"), None, ns.MS_REMOUNT | ns.MS_RDONLY | ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC,
                 "mode=0755,size=1m")

    # /dev: a minimal set of nodes; FUSE for the simulator's sysfs daemons.
    ns.mount("dev", r("/dev"), "tmpfs", ns.MS_NOSUID, "mode=0755,size=4m")
    for name, (ma, mi) in {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8),
                           "urandom": (1, 9), "tty": (5, 0), "fuse": (10, 229)}.items():
        _mknod(r("/dev/" + name), ma, mi)
    _nvidia_nodes(r, json.loads((run / "boot/nvidia-minors").read_text() or "[]"))
    for name, target in {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
                         "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx", "core": "/proc/kcore"}.items():
        os.symlink(target, r("/dev/" + name))
    os.mkdir(r("/dev/pts"))
    ns.mount("devpts", r("/dev/pts"), "devpts", ns.MS_NOSUID | ns.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5")
    os.mkdir(r("/dev/shm"), 0o1777)
    ns.mount("shm", r("/dev/shm"), "tmpfs", ns.MS_NOSUID | ns.MS_NODEV, "mode=1777,size=64m")
    # The console is a file the fleet keeps (run/<host>/console.log).
    open(r("/dev/console"), "w").close()
    ns.mount(str(run / "console.log"), r("/dev/console"), None, ns.MS_BIND)

    # /run: fresh on every boot.
    ns.mount("run", r("/run"), "tmpfs", ns.MS_NOSUID | ns.MS_NODEV, "mode=0755,size=64m")

    console_fd = os.open(str(run / "console.log"), os.O_WRONLY | os.O_APPEND)
    devnull = os.open("/dev/null", os.O_RDONLY)

    # Switch to the new root and drop every view of the machine's mounts.
    os.chdir(root)
    ns.pivot_root(".", ".")
    ns.umount(".", ns.MNT_DETACH)
    os.chdir("/")
    ns.sethostname(cfg["name"])
    ns.drop_bounding_caps(sorted(DROPPED_CAPS.values()))

    os.dup2(devnull, 0)
    os.dup2(console_fd, 1)
    os.dup2(console_fd, 2)
    os.closerange(3, 1 << 16)
    env = {
        "container": paths.CONTAINER_MARK,
        paths.HOST_ENV: f"{cfg['fleet']}/{cfg['name']}",
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
    }
    os.execve("/sbin/init", ["/sbin/init"], env)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python3 -m gpusim_fleet.supervisor FLEET HOST", file=sys.stderr)
        return 2
    return Supervisor(argv[0], argv[1]).main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
