"""Build the CDI spec `nvidia-ctk cdi generate` prints, from NVML, procfs and /dev."""
from __future__ import annotations

import glob
import os
import re

import pynvml

KIND = "nvidia.com/gpu"
STRATEGIES = ("index", "uuid", "type-index")
DEFAULT_STRATEGIES = ("index", "uuid")
# Control nodes every device needs, in the order the toolkit lists them (a node that does not exist is left out).
CONTROL_NODES = ("/dev/nvidia-modeset", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidiactl")
LIB_DIR = "/usr/lib/x86_64-linux-gnu"
LIBRARIES = ("libcuda.so.*", "libnvidia-ml.so.*", "libnvidia-ptxjitcompiler.so.*")
BINARIES = ("/usr/bin/nvidia-smi", "/usr/bin/nvidia-debugdump", "/usr/bin/nvidia-persistenced",
            "/usr/bin/nvidia-cuda-mps-control", "/usr/bin/nvidia-cuda-mps-server")
HOOK_PATH = "/usr/bin/nvidia-cdi-hook"
MOUNT_OPTIONS = ["ro", "nosuid", "nodev", "rbind", "rprivate"]
_MINOR = re.compile(r"^DeviceFileMinor:\s*(\d+)\s*$", re.MULTILINE)


class CtkError(Exception):
    pass


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def cap_minor(proc_root: str, gpu_minor: int, gi: int, ci: int | None = None) -> int:
    """The /dev/nvidia-caps minor of a GPU instance's (or compute instance's) access capability."""
    path = os.path.join(proc_root, "driver/nvidia/capabilities", "gpu%d" % gpu_minor, "mig", "gi%d" % gi)
    if ci is not None:
        path = os.path.join(path, "ci%d" % ci)
    path = os.path.join(path, "access")
    try:
        with open(path, encoding="utf-8") as f:
            match = _MINOR.search(f.read())
    except OSError as exc:
        raise CtkError("failed to get MIG capability device for %s: %s" % (path, exc.strerror)) from exc
    if match is None:
        raise CtkError("failed to get MIG capability device for %s: no DeviceFileMinor" % path)
    return int(match.group(1))


def _names(strategies, index: str, uuid: str, mig: bool) -> list[str]:
    names = []
    for strategy in strategies:
        if strategy == "index":
            names.append(index)
        elif strategy == "uuid":
            names.append(uuid)
        else:
            names.append(("mig" if mig else "gpu") + index)
    return names


def _nodes(paths) -> list[dict]:
    return [{"path": p} for p in paths]


def _exists(dev_root: str, path: str) -> bool:
    return os.path.exists(os.path.join(dev_root, path.lstrip("/")))


def devices(strategies=DEFAULT_STRATEGIES, proc_root: str = "/proc") -> list[dict]:
    """One CDI device per name of each GPU, then of each MIG device (GPU index order, MIG device index order)."""
    gpus, migs = [], []
    for i in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(i)
        uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
        minor = int(pynvml.nvmlDeviceGetMinorNumber(handle))
        parent = "/dev/nvidia%d" % minor
        for name in _names(strategies, str(i), uuid, False):
            gpus.append({"name": name, "containerEdits": {"deviceNodes": _nodes([parent])}})
        try:
            current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
        except pynvml.NVMLError_NotSupported:
            continue
        if not current:
            continue
        for j in range(int(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle))):
            try:
                mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, j)
            except pynvml.NVMLError_NotFound:
                continue
            gi = int(pynvml.nvmlDeviceGetGpuInstanceId(mig))
            ci = int(pynvml.nvmlDeviceGetComputeInstanceId(mig))
            paths = [parent, "/dev/nvidia-caps/nvidia-cap%d" % cap_minor(proc_root, minor, gi),
                     "/dev/nvidia-caps/nvidia-cap%d" % cap_minor(proc_root, minor, gi, ci)]
            for name in _names(strategies, "%d:%d" % (i, j), _text(pynvml.nvmlDeviceGetUUID(mig)), True):
                migs.append({"name": name, "containerEdits": {"deviceNodes": _nodes(paths)}})
    return gpus + migs


def _all_device(devs: list[dict]) -> dict:
    seen, paths = set(), []
    for dev in devs:
        for node in dev["containerEdits"]["deviceNodes"]:
            if node["path"] not in seen:
                seen.add(node["path"])
                paths.append(node["path"])
    return {"name": "all", "containerEdits": {"deviceNodes": _nodes(paths)}}


def common_edits(dev_root: str = "/") -> dict:
    edits: dict = {"env": ["NVIDIA_VISIBLE_DEVICES=void"]}
    nodes = [p for p in CONTROL_NODES if _exists(dev_root, p)]
    if nodes:
        edits["deviceNodes"] = _nodes(nodes)
    libs = sorted(p for pattern in LIBRARIES for p in glob.glob(os.path.join(dev_root, LIB_DIR.lstrip("/"), pattern))
                  if os.path.isfile(p) and not os.path.islink(p))
    mounts = []
    for path in libs + [b for b in BINARIES if _exists(dev_root, b)]:
        path = "/" + os.path.relpath(path, dev_root) if path.startswith(dev_root.rstrip("/") + "/") else path
        mounts.append({"hostPath": path, "containerPath": path, "options": list(MOUNT_OPTIONS)})
    if mounts:
        edits["mounts"] = mounts
    if libs:
        edits["hooks"] = [{"hookName": "createContainer", "path": HOOK_PATH,
                           "args": ["nvidia-cdi-hook", "update-ldcache", "--folder", LIB_DIR]}]
    return edits


def minimum_version(spec: dict) -> str:
    """The lowest CDI spec version that carries every feature the spec uses (the version the toolkit writes)."""
    version = (0, 3, 0)
    edits = [spec.get("containerEdits") or {}] + [d.get("containerEdits") or {} for d in spec.get("devices", [])]
    if any(m.get("type") for e in edits for m in e.get("mounts", [])):
        version = max(version, (0, 4, 0))
    if any(n.get("hostPath") for e in edits for n in e.get("deviceNodes", [])) or \
            any(d["name"][:1].isdigit() for d in spec.get("devices", [])):
        version = max(version, (0, 5, 0))
    if spec.get("annotations") or any(d.get("annotations") for d in spec.get("devices", [])):
        version = max(version, (0, 6, 0))
    if any(e.get("intelRdt") or e.get("additionalGids") for e in edits):
        version = max(version, (0, 7, 0))
    if any(e.get("netDevices") for e in edits):
        version = max(version, (1, 1, 0))
    return "%d.%d.%d" % version


def generate(strategies=DEFAULT_STRATEGIES, dev_root: str = "/", proc_root: str = "/proc") -> dict:
    pynvml.nvmlInit()
    try:
        devs = devices(strategies, proc_root)
    finally:
        pynvml.nvmlShutdown()
    if not devs:
        raise CtkError("failed to create device CDI specs: no NVIDIA devices found")
    spec = {"cdiVersion": "", "kind": KIND, "devices": devs + [_all_device(devs)],
            "containerEdits": common_edits(dev_root)}
    spec["cdiVersion"] = minimum_version(spec)
    return spec
