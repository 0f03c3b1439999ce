"""Where the fleet keeps its files; every path can be moved with an environment variable."""
from __future__ import annotations

import os
from pathlib import Path

# Repository root: sim/lib/gpusim_fleet/paths.py -> three levels up.
REPO = Path(__file__).resolve().parents[3]

CACHE_DIR = Path(os.environ.get("GPUVIRT_FLEET_CACHE", "/var/cache/gpuvirt-fleet"))
STATE_DIR = Path(os.environ.get("GPUVIRT_FLEET_STATE", "/var/lib/gpuvirt-fleet"))
RUN_DIR = Path(os.environ.get("GPUVIRT_FLEET_RUN", "/run/gpuvirt-fleet"))
CGROUP_ROOT = Path("/sys/fs/cgroup/systemd")
CGROUP_PREFIX = "gpuvirt-fleet"  # our subtree of the name=systemd hierarchy

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
