"""A simulated host's own disk layer: identity, SSH, the simulator installed as if real, GPU state."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from . import paths
from .config import Fleet, HostSpec

NVRM_LINE = {
    "open": "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {v}  Release Build  "
            "(dvs-builder@U16-I2-C03-12-4)  Thu Nov 13 2025\n",
    "proprietary": "NVRM version: NVIDIA UNIX x86_64 Kernel Module  {v}  Release Build  "
                   "(dvs-builder@U16-I2-C03-12-4)  Thu Nov 13 2025\n",
}
GCC_LINE = "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14+deb12u1) \n"
# The "installed kernel module" inside a host: key=value lines version= and flavour=. The fleet
# writes it from the fleet file at the first `up`; a stand-in driver package may replace or remove
# it. Each boot renders /proc/driver/nvidia/version from it (absent: no driver loaded).
KMOD_FILE = "usr/lib/gpusim/kernel-module"


def nvrm_version_text(version: str, flavour: str) -> str:
    return NVRM_LINE[flavour].format(v=version) + GCC_LINE


def read_kmod(root: Path) -> tuple[str, str] | None:
    try:
        text = (root / KMOD_FILE).read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    kv = dict(line.split("=", 1) for line in text.split() if "=" in line)
    v, f = kv.get("version"), kv.get("flavour", "open")
    if not v or f not in NVRM_LINE:
        return None
    return v, f


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


def sim_sources() -> tuple[list[Path], list[Path]]:
    """What the repo's sim/ holds today: Python modules/packages for dist-packages, tools for /usr/bin."""
    lib = paths.REPO / "sim" / "lib"
    libs = [p for p in sorted(lib.glob("pynvml.py"))]
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
    return done


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
        return subprocess.run([*cmd, "init", "--help"], capture_output=True, text=True, timeout=30,
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
    # Optional flags, passed only where this gpusimctl knows them.
    if spec.driver_version and "--driver-version" in helptext:
        args += ["--driver-version", spec.driver_version]
    if "--driver-flavour" in helptext:
        args += ["--driver-flavour", spec.driver_flavour]
    if spec.vgpu_host and "--vgpu-host" in helptext:
        args += ["--vgpu-host"]
    r = subprocess.run(args, capture_output=True, text=True, env=gpusimctl_env(), timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"{spec.name}: {' '.join(args)} failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
    return "GPU state initialised: " + " ".join(spec.gpu_args())


def gpu_reboot(gpusim_root: Path) -> str:
    cmd = gpusimctl_cmd()
    if cmd is None or not gpusim_root.exists():
        return "no simulated GPU state to reboot"
    r = subprocess.run([*cmd, "--root", str(gpusim_root), "reboot"], capture_output=True, text=True,
                       env=gpusimctl_env(), timeout=120)
    if r.returncode != 0:
        return f"gpusimctl reboot failed ({r.returncode}): {r.stderr.strip()}"
    return "simulated GPUs rebooted"


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
    # The simulator, as if it were the real NVML and nvidia-smi.
    installed = install_sim(upper)
    notes.append("installed " + (", ".join(installed) if installed else "nothing (sim/ has no simulator yet)"))
    # The preinstalled driver's kernel module, only at the first up or when the fleet file changes it.
    digest = spec.gpu_digest()
    applied = st / "gpus.applied"
    if not applied.exists() or applied.read_text().strip() != digest:
        if spec.driver_version:
            write(upper, KMOD_FILE, f"version={spec.driver_version}\nflavour={spec.driver_flavour}\n")
        elif (upper / KMOD_FILE).exists():
            (upper / KMOD_FILE).unlink()
        notes.append(init_gpus(spec, upper / "var/lib/gpusim"))
        if gpusimctl_cmd() is not None:
            applied.write_text(digest + "\n")
    cfg = {
        "fleet": fleet.name, "name": spec.name, "port": spec.port, "repo": str(paths.REPO),
        "base": str(paths.BASE_DIR), "upper": str(upper), "work": str(work), "merged": str(merged),
        "spec": spec.to_json(),
    }
    (st / "host.json").write_text(json.dumps(cfg, indent=1) + "\n")
    return notes
