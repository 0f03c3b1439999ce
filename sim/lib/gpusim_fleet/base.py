"""The shared, read-only base root filesystem every simulated host overlays.

Built once with debootstrap (minbase bookworm plus systemd and sshd), configured for life inside a
namespace (units that need real hardware or the real kernel masked), and cached with a stamp.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import paths

SUITE = "bookworm"
PACKAGES = [
    "systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "python3-apt",
    "iproute2", "procps", "sudo", "kmod", "ca-certificates",
]
# The stamp has two lines.
# recipe(): "<BASE_VERSION> <SUITE> <PACKAGES>", what debootstrap installed. A change of PACKAGES alone is applied to
# the existing base in place by the next `up` or `base` (apt-get install / purge in a chroot, seconds; stopped hosts
# keep their disk layers); a change of BASE_VERSION or SUITE builds a new base (and the hosts' layers must be purged).
# CONFIG: the configuration below; bump it when MASKED_UNITS or DROPINS change, and the next `up` re-applies it to the
# existing base in place (cheap).
BASE_VERSION = "gpuvirt-fleet-base-3"
CONFIG = "gpuvirt-fleet-config-2"


def recipe() -> str:
    """The recipe line of the stamp for the current package list."""
    return BASE_VERSION + " " + SUITE + " " + ",".join(PACKAGES)


# Units that need real hardware, the real kernel or a console, or that only add load; masked so
# `systemctl is-system-running` answers `running` and each host costs little.
MASKED_UNITS = [
    # udev: no devices to manage; /sys is emulated
    "systemd-udevd.service", "systemd-udevd-control.socket", "systemd-udevd-kernel.socket",
    "systemd-udev-trigger.service", "systemd-udev-settle.service", "systemd-hwdb-update.service",
    # consoles
    "getty.target", "getty@.service", "console-getty.service", "serial-getty@.service",
    "getty-static.service",
    # kernel tunables, modules and pseudo filesystems the container must not touch
    "systemd-sysctl.service", "systemd-modules-load.service", "kmod-static-nodes.service",
    "systemd-binfmt.service", "proc-sys-fs-binfmt_misc.automount", "proc-sys-fs-binfmt_misc.mount",
    "sys-kernel-debug.mount", "sys-kernel-tracing.mount", "sys-kernel-config.mount",
    "sys-fs-fuse-connections.mount", "dev-hugepages.mount", "dev-mqueue.mount",
    "systemd-journald-audit.socket", "systemd-pstore.service", "systemd-remount-fs.service",
    "systemd-firstboot.service", "systemd-machine-id-commit.service", "ldconfig.service",
    "systemd-ask-password-console.path", "systemd-ask-password-wall.path",
    "systemd-networkd-wait-online.service", "systemd-timesyncd.service", "systemd-time-wait-sync.service",
    "e2scrub_reap.service", "e2scrub_all.timer",
    # periodic jobs: apt-daily would hold the dpkg lock under a role's feet
    "apt-daily.timer", "apt-daily-upgrade.timer", "apt-daily.service", "apt-daily-upgrade.service",
    "dpkg-db-backup.timer", "fstrim.timer", "man-db.timer",
]

DROPINS = {
    "etc/systemd/system.conf.d/gpuvirt-fleet.conf": (
        "# gpuvirt-fleet: short timeouts so simulated hosts reboot quickly\n"
        "[Manager]\nDefaultTimeoutStopSec=15s\nDefaultTimeoutStartSec=60s\nShowStatus=no\nLogColor=no\n"
    ),
    "etc/systemd/journald.conf.d/gpuvirt-fleet.conf": (
        "# gpuvirt-fleet: a small, volatile journal per simulated host\n"
        "[Journal]\nStorage=volatile\nRuntimeMaxUse=16M\nForwardToSyslog=no\nForwardToWall=no\n"
    ),
    "etc/ssh/sshd_config.d/00-gpuvirt-fleet-base.conf": (
        "# gpuvirt-fleet: key-only root login on throwaway hosts\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UseDNS no\nPrintMotd no\n"
    ),
}


def log(msg: str) -> None:
    print(f"fleet: {msg}", file=sys.stderr, flush=True)


def _apt_install(pkgs: list[str]) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *pkgs], check=True, env=env)


def ensure_host_tools() -> None:
    """Install what the fleet needs on the machine itself (a fresh Debian/Ubuntu has none of it)."""
    need = []
    if not shutil.which("debootstrap"):
        need.append("debootstrap")
    if not Path("/usr/share/keyrings/debian-archive-keyring.gpg").exists():
        need.append("debian-archive-keyring")
    if not shutil.which("ssh-keygen") or not shutil.which("ssh"):
        need.append("openssh-client")
    if not shutil.which("nsenter") or not shutil.which("unshare"):
        need.append("util-linux")
    if need:
        log(f"installing {' '.join(need)} with apt-get")
        _apt_install(need)


def _stamp() -> list[str]:
    try:
        return paths.BASE_STAMP.read_text().split("\n")
    except FileNotFoundError:
        return []


def base_ready() -> bool:
    st = _stamp()
    return st[:2] == [recipe(), CONFIG] and (paths.BASE_DIR / "sbin/init").exists()


def _package_change(stamp_recipe: str) -> tuple[list[str], list[str]] | None:
    """(added, removed) packages when the stamp's recipe differs from the current one in its package list only;
    None when it differs in more (another BASE_VERSION or SUITE: a new base is needed)."""
    parts = stamp_recipe.split(" ")
    if len(parts) != 3 or parts[:2] != [BASE_VERSION, SUITE]:
        return None
    old = [p for p in parts[2].split(",") if p]
    return [p for p in PACKAGES if p not in old], [p for p in old if p not in PACKAGES]


def _running_hosts() -> int:
    """Hosts running on this base now (their overlay's lower layer)."""
    # control imports this module: imported here, when needed
    from .control import scan_pid1s  # pylint: disable=import-outside-toplevel
    n = 0
    for _pid, fleet, host in scan_pid1s():
        try:
            used = json.loads((paths.host_state(fleet, host) / "host.json").read_text()).get("base")
        except (OSError, ValueError):
            used = None
        n += used is None or str(paths.BASE_DIR) in used.split(":")
    return n


POLICY_RC = "#!/bin/sh\n# gpuvirt-fleet: no service starts while the base's packages change\nexit 101\n"


def _update_packages(root: Path, added: list[str], removed: list[str]) -> None:
    """Install `added` and purge `removed` in the existing base with its own apt, in a chroot inside a private mount
    namespace (its /proc vanishes with it), no service started. Seconds instead of a new debootstrap, and the hosts'
    disk layers stay usable. A host whose own layer holds a changed dpkg database (one that installed packages) keeps
    seeing its copy of it; `down --purge` gives it the new base whole."""
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text(POLICY_RC)
    policy.chmod(0o755)
    steps = ["apt-get update -qq"]
    if added:
        steps.append("apt-get install -y -qq --no-install-recommends " + " ".join(added))
    if removed:
        steps.append("apt-get purge -y -qq " + " ".join(removed))
    steps.append("apt-get clean")
    script = (f"set -e; mount -t proc proc {root}/proc; "
              + "; ".join(f"chroot {root} {step}" for step in steps))
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8"}
    try:
        subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], check=True, env=env)
    finally:
        policy.unlink(missing_ok=True)


def _mirror() -> str:
    return os.environ.get("GPUVIRT_FLEET_MIRROR", "http://deb.debian.org/debian")


def _configure(root: Path) -> None:
    sysd = root / "etc/systemd/system"
    for unit in MASKED_UNITS:
        link = sysd / unit
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")
    # Drop any wants-links of masked units so systemd does not warn about them.
    for wants in sysd.glob("*.wants/*"):
        if wants.name in MASKED_UNITS:
            wants.unlink()
    default = sysd / "default.target"
    if default.is_symlink() or default.exists():
        default.unlink()
    default.symlink_to("/lib/systemd/system/multi-user.target")
    wants = sysd / "multi-user.target.wants"
    wants.mkdir(exist_ok=True)
    ssh_link = wants / "ssh.service"
    if not (ssh_link.exists() or ssh_link.is_symlink()):
        ssh_link.symlink_to("/lib/systemd/system/ssh.service")
    for rel, text in DROPINS.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    # Host keys and identity are made per host in its own layer.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.is_symlink() or dbus_id.exists():
        dbus_id.unlink()
    dbus_id.parent.mkdir(parents=True, exist_ok=True)
    dbus_id.symlink_to("/etc/machine-id")
    (root / "etc/hostname").write_text("localhost\n")
    (root / "etc/fstab").write_text("# gpuvirt-fleet: the fleet mounts everything a host needs\n")
    if Path("/etc/resolv.conf").exists():
        rc = root / "etc/resolv.conf"
        if rc.is_symlink():
            rc.unlink()
        rc.write_text(Path("/etc/resolv.conf").read_text())
    (root / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
    for sub in ("var/cache/apt/archives",):
        for deb in (root / sub).glob("*.deb"):
            deb.unlink()


def build_base(rebuild: bool = False) -> None:
    """Build the base once; concurrent callers wait on a lock and reuse the result."""
    paths.CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(paths.BASE_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if base_ready() and not rebuild:
            return
        have_base = (paths.BASE_DIR / "sbin/init").exists()
        if not rebuild and _stamp()[:1] == [recipe()] and have_base:
            log(f"re-applying the base configuration ({CONFIG}) to {paths.BASE_DIR}")
            _configure(paths.BASE_DIR)
            paths.BASE_STAMP.write_text(recipe() + "\n" + CONFIG + "\n")
            return
        change = _package_change(_stamp()[0]) if _stamp() and have_base and not rebuild else None
        if change is not None:
            added, removed = change
            what = " ".join(["+" + p for p in added] + ["-" + p for p in removed])
            running = _running_hosts()
            if running:
                raise SystemExit(f"fleet: the base's package list changed ({what}) and {running} host(s) run on it: "
                                 "`sim/fleet down` first; the next `up` updates the base in place (disk layers stay)")
            t0 = time.monotonic()
            log(f"updating the base's packages in place ({what})")
            _update_packages(paths.BASE_DIR, added, removed)
            _configure(paths.BASE_DIR)
            paths.BASE_STAMP.write_text(recipe() + "\n" + CONFIG + "\n")
            log(f"base updated in {time.monotonic() - t0:.0f} s")
            return
        ensure_host_tools()
        if paths.BASE_DIR.exists():
            users = list(paths.STATE_DIR.glob("*/hosts/*/upper"))
            if users and not rebuild:
                raise SystemExit(
                    f"fleet: base at {paths.BASE_DIR} is from another recipe and {len(users)} host layers use it; "
                    "run `sim/fleet down --purge` then `sim/fleet base --rebuild`")
        new = paths.CACHE_DIR / "base.new"
        if new.exists():
            shutil.rmtree(new)
        debs = paths.CACHE_DIR / "debs"
        debs.mkdir(exist_ok=True)
        t0 = time.monotonic()
        log(f"building the base root filesystem in {new} (debootstrap {SUITE}, once)")
        # A private mount namespace: debootstrap's /proc and /sys mounts vanish with it, even if killed.
        subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "debootstrap", "--variant=minbase",
             "--include=" + ",".join(PACKAGES), "--components=main", f"--cache-dir={debs}",
             SUITE, str(new), _mirror()],
            check=True,
        )
        _configure(new)
        if paths.BASE_DIR.exists():
            old = paths.CACHE_DIR / "base.old"
            if old.exists():
                shutil.rmtree(old)
            paths.BASE_DIR.rename(old)
            shutil.rmtree(old)
        new.rename(paths.BASE_DIR)
        paths.BASE_STAMP.write_text(recipe() + "\n" + CONFIG + "\n")
        log(f"base ready in {time.monotonic() - t0:.0f} s")
