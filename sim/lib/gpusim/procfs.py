"""The driver's /proc files that follow the GPU state, rendered under ``$GPUSIM_ROOT/proc`` after every state write.

* ``proc/driver/nvidia/capabilities/``: ``mig/config`` (minor 1), ``mig/monitor`` (minor 2), and for every existing
  GPU instance and compute instance ``gpu<minor>/mig/gi<id>/access`` and ``gpu<minor>/mig/gi<id>/ci<id>/access``;
  each file ``DeviceFileMinor: <M>``, ``DeviceFileMode: <mode, decimal>``, ``DeviceFileModify: 1``, as the driver
  writes them (what nvidia-modprobe -f and the container toolkit parse). They appear on create and go on destroy,
  reset and reboot.
* ``proc/driver/nvidia-caps/mig-minors``: ``config 1``, ``monitor 2``, then ``gpu<g>/gi<i>/access <M>`` and
  ``gpu<g>/gi<i>/ci<c>/access <M>`` for every possible instance of GPU minors 0..31 (GI minor = 3 + 135*g + 9*i,
  CI minor = GI minor + 1 + c), a static table.
* ``proc/modules``: the NVIDIA kernel modules that are loaded, in the kernel's format (nvidia_drm when loaded);
  ``sys/module/<name>/initstate`` ("live") of the same modules, as sysfs shows a loaded module.

The whole tree describes the loaded kernel module: with no module loaded the capability tree is empty and there is
no mig-minors. A fleet host binds ``capabilities`` and ``nvidia-caps`` read-only into its /proc/driver at boot
(and ``modules`` over /proc/modules where the kernel has that file); the top directories are never replaced, only
their contents, so the binds follow every change. Called under the state lock by ``store``.
"""
from __future__ import annotations

import os
from typing import Any

from . import models

PROC_DIR = "proc"
MAX_GPU_MINORS = 32  # NV_MAX_DEVICES: the driver's static mig-minors table covers this many GPU minors
GI_SLOTS = 15  # GI ids 0..14 (swizzle ids of an 8-slice GPU)
CI_SLOTS = 8
MODE_CONFIG = 0o400  # mig/config: root only (MIG user guide, "/proc" interface)
MODE_READ = 0o444  # mig/monitor and every instance's access file


def gi_minor(gpu_minor: int, gi_id: int) -> int:
    return 3 + 135 * gpu_minor + 9 * gi_id


def ci_minor(gpu_minor: int, gi_id: int, ci_id: int) -> int:
    return gi_minor(gpu_minor, gi_id) + 1 + ci_id


def cap_text(minor: int, mode: int = MODE_READ) -> str:
    return "DeviceFileMinor: %d\nDeviceFileMode: %d\nDeviceFileModify: 1\n" % (minor, mode)


def mig_minors_text() -> str:
    lines = ["config 1", "monitor 2"]
    for gpu in range(MAX_GPU_MINORS):
        for gi in range(GI_SLOTS):
            lines.append("gpu%d/gi%d/access %d" % (gpu, gi, gi_minor(gpu, gi)))
            lines += ["gpu%d/gi%d/ci%d/access %d" % (gpu, gi, ci, ci_minor(gpu, gi, ci)) for ci in range(CI_SLOTS)]
    return "\n".join(lines) + "\n"


def _visible(state: dict[str, Any]) -> list[dict[str, Any]]:
    from .host import visible_gpus  # pylint: disable=import-outside-toplevel  # host imports store imports this
    return visible_gpus(state)


def capability_files(state: dict[str, Any]) -> tuple[dict[str, str], set[str]]:
    """(relative path -> content, directories) of the capabilities tree for this state."""
    files: dict[str, str] = {}
    dirs: set[str] = set()
    if not state.get("driver", {}).get("loaded"):
        return files, dirs
    dirs.add("mig")
    files["mig/config"] = cap_text(1, MODE_CONFIG)
    files["mig/monitor"] = cap_text(2)
    for entry in _visible(state):
        if not models.mig(models.get(entry["model"])):
            continue
        minor = int(entry.get("minor", entry["index"]))
        base = "gpu%d/mig" % minor
        dirs.update(("gpu%d" % minor, base))
        for inst in entry.get("gpu_instances", []):
            gdir = "%s/gi%d" % (base, inst["id"])
            dirs.add(gdir)
            files[gdir + "/access"] = cap_text(gi_minor(minor, inst["id"]))
            for ci in inst.get("compute_instances", []):
                cdir = "%s/ci%d" % (gdir, ci["id"])
                dirs.add(cdir)
                files[cdir + "/access"] = cap_text(ci_minor(minor, inst["id"], ci["id"]))
    return files, dirs


def modules_text(state: dict[str, Any]) -> str:
    """/proc/modules lines of the loaded NVIDIA modules (name size refcount deps state address taint)."""
    from .host import drm_loaded  # pylint: disable=import-outside-toplevel
    if not state.get("driver", {}).get("loaded"):
        return ""
    drm = drm_loaded(state)
    lines = ["nvidia_uvm 2076672 0 - Live 0xffffffffc2400000 (OE)"]
    users = ["nvidia_uvm"]
    if drm:
        lines.append("nvidia_drm 139264 1 - Live 0xffffffffc23d0000 (OE)")
        lines.append("nvidia_modeset 1830912 1 nvidia_drm, Live 0xffffffffc2210000 (OE)")
        users.append("nvidia_modeset")
    lines.append("nvidia 97406976 %d %s, Live 0xffffffffc0a00000 (OE)" % (len(users), ",".join(users)))
    return "\n".join(lines) + "\n"


def module_dirs(state: dict[str, Any]) -> dict[str, str]:
    """/sys/module/<name>/initstate of the loaded NVIDIA modules ("live"), as the kernel shows a loaded module."""
    names = [line.split()[0] for line in modules_text(state).splitlines()]
    return {name + "/initstate": "live\n" for name in names}


def _write_if_changed(path: str, text: str) -> None:
    try:
        with open(path, encoding="utf-8") as handle:
            if handle.read() == text:
                return
    except OSError:
        pass
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, 0o444)
    os.replace(tmp, path)


def _sync_tree(top: str, files: dict[str, str], dirs: set[str]) -> None:
    os.makedirs(top, exist_ok=True)
    for dirpath, dirnames, filenames in os.walk(top, topdown=False):
        rel = os.path.relpath(dirpath, top)
        rel = "" if rel == "." else rel
        for name in filenames:
            path = os.path.join(rel, name) if rel else name
            if path not in files:
                os.unlink(os.path.join(dirpath, name))
        for name in dirnames:
            path = os.path.join(rel, name) if rel else name
            if path not in dirs:
                full = os.path.join(dirpath, name)
                if os.path.isdir(full) and not os.path.islink(full):
                    os.rmdir(full)
    for rel in sorted(dirs):
        os.makedirs(os.path.join(top, rel), exist_ok=True)
    for rel, text in files.items():
        _write_if_changed(os.path.join(top, rel), text)


def proc_root(root: str) -> str:
    return os.path.join(root, PROC_DIR)


def sync(root: str, state: dict[str, Any]) -> None:
    """Bring ``<root>/proc`` in step with ``state`` (only what differs is written)."""
    if not state or "gpus" not in state:
        return
    base = proc_root(root)
    files, dirs = capability_files(state)
    _sync_tree(os.path.join(base, "driver/nvidia/capabilities"), files, dirs)
    caps = os.path.join(base, "driver/nvidia-caps")
    os.makedirs(caps, exist_ok=True)
    minors = os.path.join(caps, "mig-minors")
    if state.get("driver", {}).get("loaded"):
        if not os.path.exists(minors):
            _write_if_changed(minors, mig_minors_text())
    elif os.path.exists(minors):
        os.unlink(minors)
    _write_if_changed(os.path.join(base, "modules"), modules_text(state))
    files = module_dirs(state)
    _sync_tree(os.path.join(root, "sys", "module"), files, {name.split("/")[0] for name in files})
