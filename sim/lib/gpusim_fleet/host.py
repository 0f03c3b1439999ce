"""A simulated host's own disk layer: identity, SSH, the simulator installed as if real, GPU state."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from . import oslayer, paths
from .config import Fleet, HostSpec

NVRM_LINE = {
    "open": "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {v}  Release Build  "
            "(dvs-builder@U16-I2-C03-12-4)  Thu Nov 13 2025\n",
    "proprietary": "NVRM version: NVIDIA UNIX x86_64 Kernel Module  {v}  Release Build  "
                   "(dvs-builder@U16-I2-C03-12-4)  Thu Nov 13 2025\n",
}
GCC_LINE = "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14+deb12u1) \n"


def nvrm_version_text(version: str, flavour: str) -> str:
    return NVRM_LINE[flavour].format(v=version) + GCC_LINE


def loaded_driver(upper: Path, spec: dict) -> tuple[str, str] | None:
    """The kernel driver a host boots with. The simulator's state says which driver is installed and
    loaded (so a stand-in driver package that updates it shows after a reboot, as a real kernel
    module does); a host without simulator state falls back to the fleet file. None: no driver
    loaded, so no /proc/driver/nvidia."""
    try:
        state = json.loads((upper / "var/lib/gpusim/state.json").read_text())
        drv = state.get("driver") or {}
        if not drv.get("loaded") or not drv.get("version"):
            return None
        flavour = drv.get("flavor", drv.get("flavour", "open"))
        return str(drv["version"]), flavour if flavour in NVRM_LINE else "open"
    except (OSError, ValueError, AttributeError):
        pass
    if spec.get("driver_version"):
        return spec["driver_version"], spec.get("driver_flavour", "open")
    return None


def mkdirs_like(upper: Path, rel: str) -> Path:
    """Create upper/rel with each missing level's mode and owner taken from the base, so the merged
    view keeps the base's permissions (an upper directory's attributes win in an overlay)."""
    cur_u, cur_b = upper, paths.BASE_DIR
    for part in Path(rel).parts:
        cur_u, cur_b = cur_u / part, cur_b / part
        if not cur_u.is_dir():
            cur_u.mkdir()
            try:
                st = cur_b.stat()
                os.chmod(cur_u, st.st_mode & 0o7777)
                os.chown(cur_u, st.st_uid, st.st_gid)
            except FileNotFoundError:
                os.chmod(cur_u, 0o755)
    return cur_u


def write(upper: Path, rel: str, text: str, mode: int = 0o644) -> None:
    d = mkdirs_like(upper, str(Path(rel).parent))
    f = d / Path(rel).name
    tmp = f.with_name(f.name + ".fleet-tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, f)


def _etc_lines(upper: Path, rel: str) -> list[str]:
    """A file of the host's /etc as the host sees it: its own layer's copy, else the base's."""
    for root in (upper, paths.BASE_DIR):
        f = root / rel
        if f.is_file():
            return f.read_text().splitlines()
    return []


def _etc_write(upper: Path, rel: str, lines: list[str]) -> None:
    """Write an /etc account file into the host's layer with the mode and owner it has (root:shadow 0640 for shadow)."""
    src = upper / rel if (upper / rel).is_file() else paths.BASE_DIR / rel
    try:
        st = src.stat()
        mode, uid, gid = st.st_mode & 0o7777, st.st_uid, st.st_gid
    except FileNotFoundError:
        mode, uid, gid = 0o644, 0, 0
    write(upper, rel, "\n".join(lines) + "\n", mode)
    os.chown(upper / rel, uid, gid)


SUDOERS_DROPIN = "etc/sudoers.d/90-gpuvirt-fleet"


def ensure_user(upper: Path, name: str, sudo: bool, pubkey: str) -> str:
    """The unprivileged account Ansible logs in as: made once in the host's layer (passwd, group, shadow and gshadow
    entries as useradd writes them, a home with the fleet's key authorized), with passwordless sudo if `sudo`.
    Idempotent; the key and the sudo rule are refreshed at every `up`. root (the default) needs nothing: its key is
    authorized anyway, so `sim/fleet exec` and `ssh root@` keep working whatever the remote user."""
    dropin = upper / SUDOERS_DROPIN
    if name == "root":
        if dropin.exists():
            dropin.unlink()
        return "remote user root"
    passwd = _etc_lines(upper, "etc/passwd")
    entry = next((l.split(":") for l in passwd if l.split(":")[0] == name), None)
    made = entry is None
    if entry is None:
        group = _etc_lines(upper, "etc/group")
        if any(l.split(":")[0] == name for l in group):
            raise RuntimeError(f"remote_user {name}: a group of that name exists already on the host")
        used_uids = {int(l.split(":")[2]) for l in passwd if l.count(":") >= 6}
        used_gids = {int(l.split(":")[2]) for l in group if l.count(":") >= 3}
        uid = next(n for n in range(1000, 60000) if n not in used_uids and n not in used_gids)
        home = f"/home/{name}"
        entry = [name, "x", str(uid), str(uid), name, home, "/bin/bash"]
        _etc_write(upper, "etc/passwd", passwd + [":".join(entry)])
        _etc_write(upper, "etc/group", group + [f"{name}:x:{uid}:"])
        # '*': no password (key login only; sudo needs none); not '!', which sshd would take for a locked account
        _etc_write(upper, "etc/shadow", _etc_lines(upper, "etc/shadow") + [f"{name}:*:19000:0:99999:7:::"])
        _etc_write(upper, "etc/gshadow", _etc_lines(upper, "etc/gshadow") + [f"{name}:!::"])
    elif not 1000 <= int(entry[2]) < 60000:
        raise RuntimeError(f"remote_user {name}: a system account of that name exists on the host (uid {entry[2]})")
    uid, gid, home = int(entry[2]), int(entry[3]), entry[5].lstrip("/")
    homedir = mkdirs_like(upper, str(Path(home).parent)) / Path(home).name
    homedir.mkdir(mode=0o750, exist_ok=True)
    ssh = homedir / ".ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    write(upper, f"{home}/.ssh/authorized_keys", pubkey.strip() + "\n", 0o600)
    for p in (homedir, ssh, ssh / "authorized_keys"):
        os.chown(p, uid, gid)
    if sudo:
        mkdirs_like(upper, "etc/sudoers.d")
        write(upper, SUDOERS_DROPIN, f"# gpuvirt-fleet: the fleet's remote user\n{name} ALL=(ALL:ALL) NOPASSWD: ALL\n", 0o440)
    elif dropin.exists():
        dropin.unlink()
    return f"remote user {name} (uid {uid}{', made' if made else ''}{', passwordless sudo' if sudo else ', no sudo'})"


def sim_sources() -> tuple[list[Path], list[Path]]:
    """What the repo's sim/ holds today: Python modules/packages for dist-packages, tools for /usr/bin."""
    lib = paths.REPO / "sim" / "lib"
    libs = sorted(lib.glob("pynvml.py"))
    libs += [p for p in sorted(lib.glob("gpusim*")) if p.is_dir() and p.name != "gpusim_fleet"]
    tools = [p for p in (paths.REPO / "sim" / "bin" / n for n in ("nvidia-smi", "gpusimctl")) if p.is_file()]
    return libs, tools


def install_sim(root: Path) -> list[str]:
    """Copy the simulator into a host root (its upper layer while it is down, /proc/PID/root while up)."""
    libs, tools = sim_sources()
    done = []
    dist = root / "usr/lib/python3/dist-packages"
    bindir = root / "usr/bin"
    if not dist.is_dir():
        mkdirs_like(root, "usr/lib/python3/dist-packages")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for src in libs:
        dst = dist / src.name
        if src.is_dir():
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(src, dst, ignore=ignore)
        else:
            shutil.copy2(src, dst)
        done.append(f"/usr/lib/python3/dist-packages/{src.name}")
    if tools and not bindir.is_dir():
        mkdirs_like(root, "usr/bin")
    for src in tools:
        dst = bindir / src.name
        shutil.copy2(src, dst)
        os.chmod(dst, 0o755)
        done.append(f"/usr/bin/{src.name}")
    # the NVIDIA tool stand-ins a host has (nvidia-modprobe, the services' daemons) are refreshed where present
    for name in STANDIN_TOOLS:
        src, dst = paths.REPO / "sim" / "bin" / name, bindir / name
        if src.is_file() and _is_standin(dst):
            shutil.copy2(src, dst)
            os.chmod(dst, 0o755)
            done.append(f"/usr/bin/{name}")
    return done


# ---- NVIDIA tools and services of a host (stand-ins) ----------------------------------------------
STANDIN_TOOLS = ("nvidia-modprobe", "nvidia-persistenced", "nv-fabricmanager")
# service name -> (its daemon in /usr/bin, unit text)
SERVICE_UNITS = {
    "nvidia-persistenced": ("nvidia-persistenced", """# gpusim stand-in
[Unit]
Description=NVIDIA Persistence Daemon (gpusim stand-in: holds the GPUs through NVML)

[Service]
Type=simple
ExecStart=/usr/bin/nvidia-persistenced --verbose
KillSignal=SIGTERM

[Install]
WantedBy=multi-user.target
"""),
    "nvidia-fabricmanager": ("nv-fabricmanager", """# gpusim stand-in
[Unit]
Description=NVIDIA fabric manager service (gpusim stand-in: holds the GPUs through NVML)
After=network-online.target

[Service]
Type=simple
ExecStart=/usr/bin/nv-fabricmanager -c /usr/share/nvidia/nvswitch/fabricmanager.cfg
KillSignal=SIGTERM

[Install]
WantedBy=multi-user.target
"""),
}


def _is_standin(path: Path) -> bool:
    try:
        return path.is_file() and b"gpusim stand-in" in path.read_bytes()[:400]
    except OSError:
        return False


def install_nvidia_tools(upper: Path, spec: HostSpec) -> list[str]:
    """nvidia-modprobe where the host has a driver; the services the fleet file names, installed enabled (the others
    this tool installed before are removed). Idempotent; only our own stand-ins are ever removed."""
    notes = []
    bindir = paths.REPO / "sim" / "bin"
    wanted = {"nvidia-modprobe"} if spec.driver_version else set()
    wanted |= {SERVICE_UNITS[s][0] for s in spec.services}
    for name in STANDIN_TOOLS:
        dst = upper / "usr/bin" / name
        if name in wanted:
            mkdirs_like(upper, "usr/bin")
            shutil.copy2(bindir / name, dst)
            os.chmod(dst, 0o755)
            notes.append(f"/usr/bin/{name}")
        elif _is_standin(dst):
            dst.unlink()
    for service, (_daemon, unit) in SERVICE_UNITS.items():
        rel = f"etc/systemd/system/{service}.service"
        wants = upper / f"etc/systemd/system/multi-user.target.wants/{service}.service"
        if service in spec.services:
            write(upper, rel, unit)
            mkdirs_like(upper, "etc/systemd/system/multi-user.target.wants")
            if not wants.is_symlink():
                os.symlink(f"/etc/systemd/system/{service}.service", wants)
            notes.append(f"{service}.service (enabled)")
        elif _is_standin(upper / rel):
            (upper / rel).unlink()
            if wants.is_symlink():
                wants.unlink()
    return notes


def gpu_minors(upper: Path) -> list[int]:
    """Minor numbers of the GPUs the loaded driver drives (what /dev/nvidia<minor> a boot makes)."""
    try:
        state = json.loads((upper / "var/lib/gpusim/state.json").read_text())
    except (OSError, ValueError):
        return []
    if not (state.get("driver") or {}).get("loaded"):
        return []
    try:
        from gpusim.host import visible_gpus  # pylint: disable=import-outside-toplevel  # sim/lib is on the path
        gpus = visible_gpus(state)
    except Exception:  # pylint: disable=broad-exception-caught  # an older state or model set: every GPU
        gpus = state.get("gpus", [])
    return sorted(int(g.get("minor", g.get("index", 0))) for g in gpus)


SYSFS_UNIT = """[Unit]
Description=gpusim: emulated vGPU sysfs trees (FUSE), bound over /sys/class/mdev_bus and /sys/bus/mdev{pci_desc}
DefaultDependencies=no
Before=sysinit.target shutdown.target
Conflicts=shutdown.target

[Service]
Environment=FUSE_LIBRARY_PATH=/usr/local/lib/gpusim/libfuse3.so.3
ExecStartPre=/bin/mkdir -p /run/gpusim-sysfs
ExecStart=/usr/bin/python3 -m gpusim_sysfs /run/gpusim-sysfs{sriov_flag}
ExecStartPost=/bin/sh -c 'for i in $(seq 200); do mountpoint -q /run/gpusim-sysfs && break; sleep 0.05; done; \\
  mount --bind /run/gpusim-sysfs/class/mdev_bus /sys/class/mdev_bus && mount --bind /run/gpusim-sysfs/bus/mdev /sys/bus/mdev{pci_bind}'
ExecStopPost=-/bin/sh -c '{pci_umount}umount -l /sys/class/mdev_bus; umount -l /sys/bus/mdev; umount -l /run/gpusim-sysfs'

[Install]
WantedBy=sysinit.target
"""

# What NVIDIA's vGPU manager installs as /usr/lib/nvidia/sriov-manage, for the emulated tree: -e enables every
# SR-IOV GPU's VFs (sriov_numvfs = sriov_totalvfs), -d disables them; ALL or one PF address.
SRIOV_MANAGE = """#!/bin/sh
# gpusim stand-in for sriov-manage: enable (-e) or disable (-d) the VFs of ALL or one GPU (PCI address).
set -eu
usage() { echo "usage: $0 -e|-d ALL|<domain:bus:slot.function>" >&2; exit 2; }
[ $# -eq 2 ] || usage
case "$1" in -e|-d) ;; *) usage ;; esac
for pf in /sys/bus/pci/devices/*; do
    [ -f "$pf/sriov_totalvfs" ] || continue
    if [ "$2" != ALL ] && [ "$(basename "$pf")" != "$2" ]; then continue; fi
    want=0
    [ "$1" = -e ] && want=$(cat "$pf/sriov_totalvfs")
    [ "$(cat "$pf/sriov_numvfs")" = "$want" ] && continue
    if [ "$want" != 0 ] && [ "$(cat "$pf/sriov_numvfs")" != 0 ]; then echo 0 > "$pf/sriov_numvfs"; fi
    echo "$want" > "$pf/sriov_numvfs"
    echo "$(basename "$pf"): $want VFs"
done
"""


def install_sysfs_emulation(root: Path, sriov: bool = False) -> str:
    """A vGPU host's emulated mdev trees: mfusepy and the machine's libfuse3 copied in, and a unit that mounts them.

    With `sriov` the SR-IOV GPUs' PFs and VFs are served under /sys/bus/pci/devices too (the vendor vGPU
    interface), and sriov-manage is installed where NVIDIA's vGPU manager puts it.
    """
    import ctypes.util  # pylint: disable=import-outside-toplevel
    import importlib.util  # pylint: disable=import-outside-toplevel
    found = importlib.util.find_spec("mfusepy")
    origin = found.origin if found is not None else next(iter(sorted(paths.REPO.glob(".venv/lib/python3*/site-packages/mfusepy.py"))), None)
    lib = ctypes.util.find_library("fuse3")
    libpath = next((Path(d) / lib for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/lib64")
                    if lib and (Path(d) / lib).exists()), None)
    if origin is None or libpath is None:
        return "no mdev sysfs emulation (mfusepy or libfuse3 missing on this machine)"
    mkdirs_like(root, "usr/lib/python3/dist-packages")
    shutil.copy2(origin, root / "usr/lib/python3/dist-packages/mfusepy.py")
    mkdirs_like(root, "usr/local/lib/gpusim")
    shutil.copy2(os.path.realpath(libpath), root / "usr/local/lib/gpusim/libfuse3.so.3")
    write(root, "etc/systemd/system/gpusim-sysfs.service", SYSFS_UNIT.format(
        pci_desc=" and /sys/bus/pci/devices" if sriov else "",
        sriov_flag=" --sriov" if sriov else "",
        pci_bind=" && mount --bind /run/gpusim-sysfs/bus/pci/devices /sys/bus/pci/devices" if sriov else "",
        pci_umount="umount -l /sys/bus/pci/devices; " if sriov else ""))
    manage = root / "usr/lib/nvidia/sriov-manage"
    if sriov:
        mkdirs_like(root, "usr/lib/nvidia")
        write(root, "usr/lib/nvidia/sriov-manage", SRIOV_MANAGE, 0o755)
    elif manage.exists():
        manage.unlink()
    wants = mkdirs_like(root, "etc/systemd/system/sysinit.target.wants") / "gpusim-sysfs.service"
    if not wants.is_symlink():
        os.symlink("/etc/systemd/system/gpusim-sysfs.service", wants)
    return "installed the vGPU sysfs emulation (gpusim-sysfs.service%s)" % (", SR-IOV" if sriov else "")


def gpusimctl_cmd() -> list[str] | None:
    tool = paths.REPO / "sim" / "bin" / "gpusimctl"
    if not tool.is_file():
        return None
    return [sys.executable, str(tool)]


def gpusimctl_env() -> dict:
    env = dict(os.environ)
    lib = str(paths.REPO / "sim" / "lib")
    env["PYTHONPATH"] = lib + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _init_flags(cmd: list[str]) -> str:
    try:
        return subprocess.run([*cmd, "init", "--help"], capture_output=True, text=True, timeout=30, check=False,
                              env=gpusimctl_env()).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def init_gpus(spec: HostSpec, gpusim_root: Path) -> str:
    """Give the host its GPUs with the simulator's own tool. Returns what was done, for the log."""
    cmd = gpusimctl_cmd()
    if cmd is None:
        return "no sim/bin/gpusimctl yet: GPU state not initialised"
    if not spec.gpus:
        return "no GPUs declared"
    if gpusim_root.exists():
        shutil.rmtree(gpusim_root)
    mkdirs_like(gpusim_root.parents[2], "var/lib")  # upper/var/lib with the base's modes
    args = [*cmd, "--root", str(gpusim_root), "init", "--hostname", spec.name]
    for g in spec.gpu_args():
        args += ["--gpu", g]
    helptext = _init_flags(cmd)

    def flag(*names: str) -> str | None:
        """The first of names this gpusimctl's `init --help` mentions (optional flags only)."""
        return next((n for n in names if re.search(re.escape(n) + r"(?![\w-])", helptext)), None)

    f = flag("--driver-version", "--driver")
    if spec.driver_version and f:
        args += [f, spec.driver_version]
    f = flag("--driver-flavour", "--driver-flavor", "--flavour", "--flavor")
    if f:
        args += [f, spec.driver_flavour]
    if not spec.driver_version and flag("--no-driver"):
        args += ["--no-driver"]
    f = flag("--vgpu-host")
    if spec.vgpu_host and f:
        args += [f]
    r = subprocess.run(args, capture_output=True, text=True, env=gpusimctl_env(), timeout=120, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{spec.name}: {' '.join(args)} failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
    return "GPU state initialised: " + " ".join(spec.gpu_args())


def boot_settings(spec: HostSpec, gpusim_root: Path) -> str:
    """What the next boot loads besides the driver (nvidia_drm, from the fleet file); no process survives a stopped
    host, so no NVML session does either."""
    cmd = gpusimctl_cmd()
    if cmd is None or not (gpusim_root / "state.json").exists():
        return "no simulated GPU state: no boot settings"
    shutil.rmtree(gpusim_root / "sessions", ignore_errors=True)
    flag = "yes" if spec.nvidia_drm else "no"
    r = subprocess.run([*cmd, "--root", str(gpusim_root), "nvidia-drm", "--at-boot", flag, "--as-booted"],
                       capture_output=True, text=True, check=False, env=gpusimctl_env(), timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"{spec.name}: gpusimctl nvidia-drm failed ({r.returncode}): {r.stderr.strip()}")
    return f"nvidia_drm {'loaded' if spec.nvidia_drm else 'not loaded'} at boot"


def gpu_reboot(gpusim_root: Path) -> str:
    cmd = gpusimctl_cmd()
    if cmd is None or not gpusim_root.exists():
        return "no simulated GPU state to reboot"
    r = subprocess.run([*cmd, "--root", str(gpusim_root), "reboot"], capture_output=True, text=True, check=False,
                       env=gpusimctl_env(), timeout=120)
    if r.returncode != 0:
        return f"gpusimctl reboot failed ({r.returncode}): {r.stderr.strip()}"
    return "simulated GPUs rebooted"


RUNFILE_INSTALLER = """#!/bin/sh
# gpuvirt-fleet stand-in for NVIDIA's .run installer of driver {v}: it tells its version and changes nothing.
case "$1" in
  --version|-v) echo "nvidia-installer:  version {v}"; exit 0 ;;
esac
echo "nvidia-installer (gpuvirt-fleet stand-in): only --version is simulated" >&2
exit 1
"""


def install_runfile_traces(upper: Path, version: str) -> str:
    """What NVIDIA's .run installer leaves on a host (its installer, uninstaller and log), once: the driver the
    fleet file gives is then a runfile install that no package carries. Kept, as on a real host, after packages
    replace it."""
    if (upper / "var/log/nvidia-installer.log").exists():
        return "runfile install traces already there"
    write(upper, "usr/bin/nvidia-installer", RUNFILE_INSTALLER.format(v=version), 0o755)
    link = upper / "usr/bin/nvidia-uninstall"
    if not link.is_symlink():
        link.symlink_to("nvidia-installer")
    write(upper, "var/log/nvidia-installer.log",
          f"nvidia-installer log file '/var/log/nvidia-installer.log'\ninstaller version: {version}\n"
          "Installation of the NVIDIA Accelerated Graphics Driver for Linux-x86_64 (version: "
          f"{version}) is now complete.\n")
    return f"runfile install traces of driver {version}"


def prepare(fleet: Fleet, spec: HostSpec, pubkey: str) -> list[str]:
    """Make or refresh the host's layer while it is not running. Idempotent."""
    st = paths.host_state(fleet.name, spec.name)
    upper, work, merged = st / "upper", st / "work", st / "merged"
    for d in (upper, work, merged):
        d.mkdir(parents=True, exist_ok=True)
    os.chmod(upper, 0o755)
    notes = []
    # Identity, made once and kept across reboots and down/up.
    mid = upper / "etc/machine-id"
    if not mid.exists() or not mid.read_text().strip():
        write(upper, "etc/machine-id", uuid.uuid4().hex + "\n", 0o444)
    key = upper / "etc/ssh/ssh_host_ed25519_key"
    if not key.exists():
        mkdirs_like(upper, "etc/ssh")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{spec.name}", "-f", str(key)],
                       check=True, stdin=subprocess.DEVNULL)
    write(upper, "etc/hostname", spec.name + "\n")
    hosts = (paths.BASE_DIR / "etc/hosts").read_text() if (paths.BASE_DIR / "etc/hosts").exists() else ""
    hosts = "".join(l for l in hosts.splitlines(True) if "127.0.1.1" not in l)
    write(upper, "etc/hosts", hosts + f"127.0.1.1\t{spec.name}\n")
    write(upper, "etc/ssh/sshd_config.d/10-gpuvirt-fleet.conf",
          f"# gpuvirt-fleet: this host's sshd on the shared loopback\nPort {spec.port}\nListenAddress 127.0.0.1\n"
          "HostKey /etc/ssh/ssh_host_ed25519_key\n")
    mkdirs_like(upper, "root/.ssh")
    os.chmod(upper / "root/.ssh", 0o700)
    write(upper, "root/.ssh/authorized_keys", pubkey.strip() + "\n", 0o600)
    notes.append(ensure_user(upper, spec.remote_user, spec.remote_sudo, pubkey))
    # The simulator, as if it were the real NVML and nvidia-smi.
    installed = install_sim(upper)
    notes.append("installed " + (", ".join(installed) if installed else "nothing (sim/ has no simulator yet)"))
    if spec.vgpu_host:
        notes.append(install_sysfs_emulation(upper, sriov=spec.vgpu_sriov))
    tools = install_nvidia_tools(upper, spec)
    if tools:
        notes.append("NVIDIA stand-ins: " + ", ".join(tools))
    if spec.driver_source == "runfile" and spec.driver_version:
        notes.append(install_runfile_traces(upper, spec.driver_version))
    # The simulated GPUs and driver: only at the first up or when the fleet file changes them.
    digest = spec.gpu_digest()
    applied = st / "gpus.applied"
    if not applied.exists() or applied.read_text().strip() != digest:
        notes.append(init_gpus(spec, upper / "var/lib/gpusim"))
        if gpusimctl_cmd() is not None:
            applied.write_text(digest + "\n")
    notes.append(boot_settings(spec, upper / "var/lib/gpusim"))
    cfg = {
        "fleet": fleet.name, "name": spec.name, "port": spec.port, "repo": str(paths.REPO),
        "base": oslayer.lowerdir(spec.os), "upper": str(upper), "work": str(work), "merged": str(merged),
        "spec": spec.to_json(), "cgroup_mode": paths.CGROUP_MODE, "cgroup": str(paths.host_cgroup(fleet.name, spec.name)),
    }
    (st / "host.json").write_text(json.dumps(cfg, indent=1) + "\n")
    return notes
