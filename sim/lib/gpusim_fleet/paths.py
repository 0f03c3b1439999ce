"""Where the fleet keeps its files; every path can be moved with an environment variable."""
from __future__ import annotations

import os
from pathlib import Path

# Repository root: sim/lib/gpusim_fleet/paths.py -> three levels up.
REPO = Path(__file__).resolve().parents[3]

CACHE_DIR = Path(os.environ.get("GPUVIRT_FLEET_CACHE", "/var/cache/gpuvirt-fleet"))
STATE_DIR = Path(os.environ.get("GPUVIRT_FLEET_STATE", "/var/lib/gpuvirt-fleet"))
RUN_DIR = Path(os.environ.get("GPUVIRT_FLEET_RUN", "/run/gpuvirt-fleet"))
CGROUP_PREFIX = "gpuvirt-fleet"  # our subtree of the cgroup hierarchy systemd uses


def _mount_types() -> dict[str, str]:
    out = {}
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                out[fields[4]] = fields[sep + 1]
    except (OSError, ValueError):
        pass
    return out


def _cgroup_layout() -> tuple[str, Path]:
    """Which hierarchy a host's systemd gets a private subtree of: cgroup v1's name=systemd one
    (legacy and hybrid machines, like this project's), or cgroup v2 (unified machines). The
    variable GPUVIRT_FLEET_CGROUP=v1|v2|v2-hybrid forces one (v2-hybrid: the v2 tree of a hybrid
    machine, /sys/fs/cgroup/unified)."""
    forced = os.environ.get("GPUVIRT_FLEET_CGROUP", "")
    types = _mount_types()
    if forced == "v2-hybrid":
        return "v2", Path("/sys/fs/cgroup/unified")
    if forced == "v2" or (not forced and types.get("/sys/fs/cgroup") == "cgroup2"):
        return "v2", Path("/sys/fs/cgroup")
    return "v1", Path("/sys/fs/cgroup/systemd")


CGROUP_MODE, CGROUP_ROOT = _cgroup_layout()
# Where `down` looks for leftovers, whatever layout the fleet was started with.
CGROUP_TOPS = [Path("/sys/fs/cgroup/systemd") / CGROUP_PREFIX, Path("/sys/fs/cgroup/unified") / CGROUP_PREFIX,
               Path("/sys/fs/cgroup") / CGROUP_PREFIX]

BASE_DIR = CACHE_DIR / "base"
BASE_STAMP = CACHE_DIR / "base.stamp"
BASE_LOCK = CACHE_DIR / "base.lock"

DEFAULT_INVENTORY = REPO / "inventories" / "sim" / "hosts.yml"

# Value of the `container` variable systemd sees; also the marker `down` looks for.
CONTAINER_MARK = "gpuvirt-fleet"
HOST_ENV = "GPUVIRT_FLEET_HOST"  # "<fleet>/<host>" in PID 1's environment


def fleet_state(fleet: str) -> Path:
    return STATE_DIR / fleet


def host_state(fleet: str, host: str) -> Path:
    return STATE_DIR / fleet / "hosts" / host


def host_run(fleet: str, host: str) -> Path:
    return RUN_DIR / fleet / host


def host_cgroup(fleet: str, host: str) -> Path:
    return CGROUP_ROOT / CGROUP_PREFIX / fleet / host


def ssh_key(fleet: str) -> Path:
    return fleet_state(fleet) / "id_ed25519"
