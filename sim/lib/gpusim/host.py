"""Building and changing the state of one simulated host (pure functions on the state dict).

Callers wrap the mutating functions in ``store.transaction()``; ``gpusimctl`` and the NVML
stand-in both go through here, so the CLI and the API cannot drift apart.
"""
from __future__ import annotations

import errno
import time
import uuid
from typing import Any

from . import mig, models, settings
from .errors import (NVML_ERROR_IN_USE, NVML_ERROR_INSUFFICIENT_RESOURCES, NVML_ERROR_INVALID_ARGUMENT, NVML_ERROR_NOT_FOUND, NVML_ERROR_NOT_SUPPORTED,
                     NVML_ERROR_RESET_REQUIRED, SimError, error_name)
from .store import FORMAT_VERSION

DEFAULT_DRIVER = "580.159.04"
DEFAULT_CUDA = 13000
# Bus numbers of the eight GPUs of a typical HGX board; further GPUs continue at 0xe0.
_HGX_BUSES = [0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB]
_NAMESPACE = uuid.UUID("5f1d3c1e-9a0b-4c7e-8f4e-6770757369ad")

VIRT_MODES = {"none": 0, "passthrough": 1, "vgpu": 2, "host-vgpu": 3, "host-vsga": 4}
HOST_FLAVORS = ("open", "proprietary")
ARCH_TURING = 6


def pci_bus_id(index: int) -> str:
    if index < len(_HGX_BUSES):
        bus = _HGX_BUSES[index]
    elif index < len(_HGX_BUSES) + 32:
        bus = 0xE0 + index - len(_HGX_BUSES)
    else:
        raise ValueError("at most %d GPUs per host" % (len(_HGX_BUSES) + 32))
    return "00000000:%02X:00.0" % bus


def gpu_uuid(hostname: str, index: int) -> str:
    return "GPU-" + str(uuid.uuid5(_NAMESPACE, "%s/gpu/%d" % (hostname, index)))


def gpu_serial(hostname: str, index: int, prefix: str) -> str:
    digits = uuid.uuid5(_NAMESPACE, "%s/serial/%d" % (hostname, index)).int % 10 ** (13 - len(prefix))
    return prefix + str(digits).rjust(13 - len(prefix), "0")


def new_gpu(hostname: str, index: int, model_key: str, vgpu_host: bool, virt: str | None) -> dict[str, Any]:
    model = models.get(model_key)
    if virt is None:
        # Default: pass-through, as in the real capture; a vGPU host's vGPU-capable GPUs are in host-vGPU mode.
        virt = "host-vgpu" if vgpu_host and model.get("vgpu") else "passthrough"
    return {
        "index": index,
        "model": model_key,
        "uuid": gpu_uuid(hostname, index),
        "serial": gpu_serial(hostname, index, model.get("serial_prefix", "1320")),
        "pci_bus_id": pci_bus_id(index),
        "minor": index,
        "persistence": model.get("persistence_default", 1),
        "ecc": {"current": model.get("ecc_default", 1), "pending": model.get("ecc_default", 1)},
        "mig": {"current": 0, "pending": 0},
        "virtualization_mode": VIRT_MODES[virt],
        "gpu_instances": [],
        "processes": [],
        "vgpu_instances": [],
        "lost": False,
        "reset_requires_reboot": False,
        "faults": [],
        "next_uid": 1,
    }


def build(hostname: str, gpus: list[tuple[str, int]], driver: str = DEFAULT_DRIVER, flavor: str = "open",
          driver_state: str = "loaded", vgpu_host: bool = False, uuids: dict[int, str] | None = None,
          pci: dict[int, str] | None = None, serials: dict[int, str] | None = None, virt: str | None = None,
          cuda_version: int = DEFAULT_CUDA) -> dict[str, Any]:
    """A fresh host state. Raises ValueError/UnknownModel naming the bad argument."""
    if flavor not in HOST_FLAVORS:
        raise ValueError("--flavor must be one of %s, not %r" % ("|".join(HOST_FLAVORS), flavor))
    if driver_state not in ("loaded", "not_loaded", "absent"):
        raise ValueError("driver state must be loaded, not_loaded or absent")
    if virt is not None and virt not in VIRT_MODES:
        raise ValueError("--virt-mode must be one of %s" % "|".join(VIRT_MODES))
    entries = []
    for model_key, count in gpus:
        models.get(model_key)
        if count < 1:
            raise ValueError("--gpu %s:%d: count must be at least 1" % (model_key, count))
        for _copy in range(count):
            entries.append(new_gpu(hostname, len(entries), model_key, vgpu_host, virt))
    for overrides, field in ((uuids, "uuid"), (pci, "pci_bus_id"), (serials, "serial")):
        for index, value in (overrides or {}).items():
            if not 0 <= index < len(entries):
                raise ValueError("--%s %d=...: no GPU with index %d" % (field.split("_", maxsplit=1)[0], index, index))
            entries[index][field] = value
    return {
        "format": FORMAT_VERSION,
        "hostname": hostname,
        "driver": {
            "version": driver,
            "cuda_version": cuda_version,
            "flavor": flavor,
            "installed": driver_state != "absent",
            "loaded": driver_state == "loaded",
            "installed_version": driver,
            "installed_flavor": flavor,
        },
        "vgpu_host": vgpu_host,
        "boot_id": 1,
        "boot_time": time.time(),
        "faults": [],
        "next_vgpu_instance": 1,
        "gpus": entries,
    }


def same_config(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """True when ``init`` with the same arguments would change nothing the user declared."""
    if not old:
        return False

    def strip(state: dict[str, Any]) -> dict[str, Any]:
        return {
            "hostname": state.get("hostname"),
            "driver": state.get("driver"),
            "vgpu_host": state.get("vgpu_host"),
            "gpus": [(g["model"], g["uuid"], g["serial"], g["pci_bus_id"], g["virtualization_mode"]) for g in state.get("gpus", [])],
        }
    return strip(old) == strip(new)


def visible_gpus(state: dict[str, Any]) -> list[dict[str, Any]]:
    """GPUs the loaded driver drives: the open kernel module does not bind pre-Turing GPUs."""
    if state["driver"].get("flavor") == "open":
        return [g for g in state["gpus"] if models.get(g["model"])["architecture"] >= ARCH_TURING]
    return list(state["gpus"])


def gpu(state: dict[str, Any], index: int) -> dict[str, Any]:
    for entry in state["gpus"]:
        if entry["index"] == index:
            return entry
    raise ValueError("--gpu %s: no such GPU (host has %d)" % (index, len(state["gpus"])))


def _targets(state: dict[str, Any], which: str | int | None) -> list[dict[str, Any]]:
    if which in (None, "all"):
        return list(state["gpus"])
    return [gpu(state, int(which))]


# ---- driver: installed userspace vs loaded kernel module -----------------------------------
# ``driver.version``/``flavor``/``loaded`` describe the kernel module (what /proc/driver/nvidia/version shows and what
# NVML's RM side reports); ``installed``/``installed_version``/``installed_flavor`` the userspace (libnvidia-ml and
# the packages). Package maintainer scripts change only the latter; a reboot or a module reload makes them meet.
def installed_version(drv: dict[str, Any]) -> str | None:
    """The installed userspace driver version (None: no driver installed). States written before the split have
    no ``installed_version``: their userspace is the loaded version."""
    if not drv.get("installed"):
        return None
    return str(drv.get("installed_version") or drv.get("version"))


def installed_flavor(drv: dict[str, Any]) -> str:
    return str(drv.get("installed_flavor") or drv.get("flavor") or "open")


def version_mismatch(drv: dict[str, Any]) -> bool:
    """True when NVML (userspace) and RM (loaded kernel module) differ: nvmlInit fails with LibRmVersionMismatch."""
    return bool(drv.get("installed") and drv.get("loaded") and installed_version(drv) != drv.get("version"))


def install_driver(state: dict[str, Any], version: str, flavor: str | None = None) -> None:
    """A driver package was installed: the userspace changes, the loaded kernel module stays as it is."""
    drv = state["driver"]
    if flavor is not None and flavor not in HOST_FLAVORS:
        raise ValueError("--installed-flavor must be one of %s, not %r" % ("|".join(HOST_FLAVORS), flavor))
    drv["installed"] = True
    drv["installed_version"] = version
    drv["installed_flavor"] = flavor or installed_flavor(drv)


def uninstall_driver(state: dict[str, Any]) -> None:
    """The driver packages were removed: the loaded kernel module (if any) stays loaded until reboot or unload."""
    state["driver"]["installed"] = False


def load_installed_driver(state: dict[str, Any]) -> None:
    """The kernel module of the installed driver is loaded (nothing is loaded when no driver is installed)."""
    drv = state["driver"]
    version = installed_version(drv)
    if version is None:
        drv["loaded"] = False
        return
    drv["installed_version"] = version
    drv["installed_flavor"] = installed_flavor(drv)
    drv["version"] = version
    drv["flavor"] = drv["installed_flavor"]
    drv["loaded"] = True


def unload_driver(state: dict[str, Any]) -> None:
    state["driver"]["loaded"] = False


def reload_driver(state: dict[str, Any]) -> None:
    """rmmod + modprobe of the NVIDIA modules: refused while a process or vGPU uses a GPU (the module is in use);
    otherwise the installed driver is loaded and GPU/compute instances, which live in the driver, are gone."""
    busy = []
    for entry in state["gpus"]:
        busy += ["pid %d on GPU %d" % (p["pid"], entry["index"]) for p in entry.get("processes", [])]
        busy += ["vGPU %s on GPU %d" % (v["uuid"], entry["index"]) for v in entry.get("vgpu_instances", [])]
    if busy:
        raise SimError(NVML_ERROR_IN_USE, "the NVIDIA kernel modules are in use (%s)" % ", ".join(busy))
    if state["driver"].get("loaded"):
        for entry in state["gpus"]:
            entry["gpu_instances"] = []
            settings.forget_volatile(entry)  # the power limit and the clocks live in the driver too
    load_installed_driver(state)
    state["driver"]["reloads"] = state["driver"].get("reloads", 0) + 1


# ---- faults --------------------------------------------------------------------------------
def parse_nth(text: str) -> tuple[list[int], bool]:
    """``--nth``: '3' (the 3rd call), '3,4' (the 3rd and the 4th: a fault that fails twice, then clears), '3+' (the 3rd
    and every later call: a permanent fault from then on) -> (call numbers, onward); ValueError otherwise."""
    raw = text.strip()
    onward = raw.endswith("+")
    try:
        numbers = sorted({int(part) for part in raw.rstrip("+").split(",")})
    except ValueError:
        raise ValueError("--nth %s: expected N, N,M,... or N+" % text) from None
    if numbers[0] < 1 or (onward and len(numbers) > 1):
        raise ValueError("--nth %s: %s" % (text, "must be at least 1" if numbers[0] < 1 else "N+ takes one number"))
    return numbers, onward


def set_fault(state: dict[str, Any], which: str | int | None, call: str, code: int, nth: int | list[int] | None = None,
              onward: bool = False) -> None:
    """Make ``call`` fail with ``code``: every call, or (``nth``) only the nth mutating call(s) from now on (and, with
    ``onward``, every call after the first of them). ``call`` '*' with ``nth`` counts every mutating NVML call;
    'sysfs:<file>' (or 'sysfs:*') is a write to the emulated sysfs, ``code`` an errno."""
    name = errno_name(code) if call.startswith("sysfs:") else error_name(code)
    entry: dict[str, Any] = {"call": call, "error": code, "error_name": name}
    if nth is not None:
        numbers = nth if isinstance(nth, list) else [nth]
        if min(numbers) < 1:
            raise ValueError("--nth %d: must be at least 1" % min(numbers))
        entry.update(nth=numbers[0] if len(numbers) == 1 else numbers, calls=0)
        if onward:
            entry["onward"] = True
    holder = state["faults"] if which in (None, "all") else gpu(state, int(which))["faults"]
    holder[:] = [f for f in holder if f["call"] != call] + [entry]


def errno_name(code: int) -> str:
    return errno.errorcode.get(code, str(code))


def parse_errno(text: str) -> int:
    """'EIO', 'eio' or '5' -> 5; ValueError otherwise."""
    raw = text.strip()
    if raw.isdigit():
        return int(raw)
    code = getattr(errno, raw.upper(), None)
    if not isinstance(code, int):
        raise ValueError("unknown errno %s" % text)
    return code


def _fires(fault: dict[str, Any]) -> bool:
    """Count one call against an nth-call fault: does it fail?"""
    fault["calls"] += 1
    numbers = fault["nth"] if isinstance(fault["nth"], list) else [fault["nth"]]
    return fault["calls"] in numbers or (bool(fault.get("onward")) and fault["calls"] >= numbers[0])


def sysfs_fault(state: dict[str, Any], what: str) -> int | None:
    """The errno of a sysfs write fault that fires on a write to ``what`` ('create', 'remove', 'current_vgpu_type',
    'sriov_numvfs'), if any; nth-call faults count the writes they match."""
    code = None
    for fault in state.get("faults", []):
        if fault["call"] in ("sysfs:" + what, "sysfs:*") and ("nth" not in fault or _fires(fault)) and code is None:
            code = int(fault["error"])
    return code


def clear_faults(state: dict[str, Any], which: str | int | None = None, call: str | None = None) -> None:
    holders = [state["faults"]] if which in (None, "all") else []
    holders += [g["faults"] for g in _targets(state, which)]
    for holder in holders:
        holder[:] = [f for f in holder if call is not None and f["call"] != call]
    for entry in _targets(state, which):
        if call in (None, "reset"):
            entry["reset_requires_reboot"] = False


def fault_for(state: dict[str, Any], entry: dict[str, Any] | None, names: tuple[str, ...]) -> int | None:
    """The injected error code for a call on ``entry`` (None: host-level call), if any."""
    holders = [state.get("faults", [])]
    if entry is not None:
        holders.insert(0, entry.get("faults", []))
    for holder in holders:
        for fault in holder:
            if "nth" not in fault and (fault["call"] in names or fault["call"] == "*"):
                return int(fault["error"])
    return None


def count_mutation(state: dict[str, Any], entry: dict[str, Any] | None, call: str) -> int | None:
    """Count one mutating NVML call (``state["nvml_mutations"]``, by function name, failed calls included) and
    return the error of an nth-call fault that fires on it, if any."""
    counts = state.setdefault("nvml_mutations", {})
    counts[call] = counts.get(call, 0) + 1
    code = None
    for holder in ([entry.get("faults", [])] if entry is not None else []) + [state.get("faults", [])]:
        for fault in holder:
            if "nth" in fault and fault["call"] in (call, "*") and _fires(fault) and code is None:
                code = int(fault["error"])
    return code


# ---- processes -----------------------------------------------------------------------------
def add_process(state: dict[str, Any], index: int, pid: int, mem_mib: int, gi: int | None = None,
                ci: int | None = None, kind: str = "compute") -> None:
    entry = gpu(state, index)
    if (gi is None) != (ci is None):
        raise ValueError("--gi and --ci go together")
    if gi is not None:
        if not entry["mig"]["current"]:
            raise ValueError("--gi: MIG is not enabled on GPU %d" % index)
        try:
            mig.find_ci(mig.find_gi(entry, gi), ci)
        except SimError as exc:
            raise ValueError("--gi %s --ci %s: %s" % (gi, ci, exc)) from exc
    elif entry["mig"]["current"]:
        raise ValueError("--gi/--ci: GPU %d is in MIG mode, a process runs in a compute instance" % index)
    entry["processes"] = [p for p in entry["processes"] if p["pid"] != pid]
    entry["processes"].append({"pid": pid, "used_memory": mem_mib << 20, "gi": gi, "ci": ci, "type": kind})


def clear_processes(state: dict[str, Any], which: str | int | None = None) -> None:
    for entry in _targets(state, which):
        entry["processes"] = []


def lose(state: dict[str, Any], index: int) -> None:
    gpu(state, index)["lost"] = True


# ---- holders: what keeps a GPU from a reset or a MIG mode change ---------------------------
def drm_loaded(state: dict[str, Any]) -> bool:
    """nvidia_drm is loaded (it holds every GPU); it needs the NVIDIA kernel module."""
    return bool((state.get("nvidia_drm") or {}).get("loaded")) and bool(state.get("driver", {}).get("loaded"))


def set_nvidia_drm(state: dict[str, Any], loaded: bool | None = None, at_boot: bool | None = None) -> None:
    """Load or unload nvidia_drm now (``loaded``), and whether a boot loads it (``at_boot``)."""
    drm = state.setdefault("nvidia_drm", {"loaded": False, "at_boot": False})
    if at_boot is not None:
        drm["at_boot"] = at_boot
    if loaded is not None:
        if loaded and not state["driver"].get("loaded"):
            raise ValueError("nvidia_drm: the NVIDIA kernel module is not loaded")
        drm["loaded"] = loaded


def holders(state: dict[str, Any], entry: dict[str, Any], others: list[dict[str, Any]] | None = None) -> list[str]:
    """What holds this GPU, one phrase each: NVML sessions of other processes (``others``, from
    ``sessions.others``: they attach every GPU), registered processes, vGPU instances and a loaded nvidia_drm."""
    held = ["pid %d (%s)" % (s["pid"], s.get("comm") or "?") for s in others or []]
    seen = {s["pid"] for s in others or []}
    for proc in entry.get("processes", []):
        if proc["pid"] not in seen:
            seen.add(proc["pid"])
            held.append("pid %d (%s)" % (proc["pid"], proc.get("name") or "?"))
    held += ["vGPU %s" % v["uuid"] for v in entry.get("vgpu_instances", [])]
    if drm_loaded(state):
        held.append("nvidia_drm (kernel module)")
    return held


def in_use(entry: dict[str, Any], held: list[str]) -> SimError:
    error = SimError(NVML_ERROR_IN_USE, "GPU %d is in use by another client: %s" % (entry["index"], ", ".join(held)))
    error.holders = held  # type: ignore[attr-defined]
    return error


# ---- MIG mode, reset, reboot ---------------------------------------------------------------
def set_mig_mode(entry: dict[str, Any], mode: int, state: dict[str, Any] | None = None,
                 others: list[dict[str, Any]] | None = None) -> int:
    """nvmlDeviceSetMigMode: record the pending mode; returns the activation status: IN_USE while anything holds the
    GPU (see ``holders``: ``others`` are the live NVML sessions of other processes), the mode then stays pending.

    The mode becomes current on GPU reset or reboot, so the activation status is
    NVML_ERROR_RESET_REQUIRED whenever pending differs from current (as in pass-through VMs).
    """
    model = models.get(entry["model"])
    if not models.mig(model):
        raise SimError(NVML_ERROR_NOT_SUPPORTED, "GPU does not support MIG")
    if mode not in (0, 1):
        raise SimError(NVML_ERROR_INVALID_ARGUMENT, "MIG mode must be 0 or 1")
    if mode == 0 and entry["gpu_instances"]:
        raise SimError(NVML_ERROR_IN_USE, "GPU instances exist")
    entry["mig"]["pending"] = mode
    if entry["mig"]["pending"] == entry["mig"]["current"]:
        return 0
    # While anything holds the GPU the new mode is recorded (pending) but cannot take effect: the call succeeds with
    # the activation status IN_USE, as on bare metal ("Warning: MIG mode is in pending enable state for GPU ...: In use
    # by another client", NVIDIA's MIG user guide); the reset that would make it current is refused until the
    # holders are gone, and a reboot makes it current.
    return NVML_ERROR_IN_USE if holders(state or {}, entry, others) else NVML_ERROR_RESET_REQUIRED


def reset(state: dict[str, Any], index: int, others: list[dict[str, Any]] | None = None, force: bool = False) -> None:
    """nvidia-smi -r: pending MIG and ECC modes become current; instances are gone, power limit and clocks are back to
    their defaults. Refused (IN_USE, naming the holders)
    while anything holds the GPU (``others``: live NVML sessions of other processes); ``force`` (test set-up only,
    ``gpusimctl reset --force``) resets a held GPU, dropping its registered processes."""
    entry = gpu(state, index)
    held = holders(state, entry, others)
    if held and not force:
        raise in_use(entry, held)
    if force:
        entry["processes"] = []
        entry["vgpu_instances"] = []
    if entry.get("reset_requires_reboot"):
        raise SimError(NVML_ERROR_RESET_REQUIRED, "GPU %d cannot be reset: a reboot is required" % index)
    entry["mig"]["current"] = entry["mig"]["pending"]
    entry["ecc"]["current"] = entry["ecc"]["pending"]
    entry["gpu_instances"] = []
    entry["lost"] = False
    settings.forget_volatile(entry)
    entry["resets"] = entry.get("resets", 0) + 1


def reboot(state: dict[str, Any]) -> None:
    """Pending modes take effect; instances, vGPUs and processes are gone, power limits and clocks back to their defaults;
    lost GPUs are back; the kernel module
    of the installed driver is loaded (none when no driver is installed)."""
    load_installed_driver(state)
    drm = state.get("nvidia_drm")
    if drm is not None:
        drm["loaded"] = bool(drm.get("at_boot")) and state["driver"].get("loaded", False)
    for entry in state["gpus"]:
        entry["mig"]["current"] = entry["mig"]["pending"]
        entry["ecc"]["current"] = entry["ecc"]["pending"]
        settings.forget_volatile(entry)
        entry["gpu_instances"] = []
        entry["processes"] = []
        entry["vgpu_instances"] = []
        entry["lost"] = False
        entry["reset_requires_reboot"] = False
        entry["faults"] = [f for f in entry.get("faults", []) if f["call"] != "reset"]
    state["faults"] = [f for f in state.get("faults", []) if f["call"] != "reset"]
    state["boot_id"] = state.get("boot_id", 0) + 1
    state["boot_time"] = time.time()


# ---- vGPU instances (created by the mdev / SR-IOV emulation) -------------------------------
def creatable_vgpu_types(entry: dict[str, Any]) -> list[int]:
    """Types that can be created now: homogeneous mode, all instances share one type."""
    model = models.get(entry["model"])
    active = entry.get("vgpu_instances", [])
    result = []
    for vtype in models.vgpu_types(model):
        if active and any(v["type_id"] != vtype["id"] for v in active):
            continue
        if sum(1 for v in active if v["type_id"] == vtype["id"]) < vtype["max_instances"]:
            result.append(vtype["id"])
    return result


def add_vgpu(state: dict[str, Any], index: int, type_id: int, vgpu_uuid: str | None = None,
             vm_id: str = "") -> dict[str, Any]:
    entry = gpu(state, index)
    model = models.get(entry["model"])
    if not state.get("vgpu_host") or not models.vgpu_types(model):
        raise SimError(NVML_ERROR_NOT_SUPPORTED, "GPU %d is not in host vGPU mode" % index)
    if entry["mig"]["current"]:
        raise SimError(NVML_ERROR_NOT_SUPPORTED, "MIG-backed vGPU is not modelled")
    if type_id not in [v["id"] for v in models.vgpu_types(model)]:
        raise SimError(NVML_ERROR_INVALID_ARGUMENT, "vGPU type %d is not supported on %s" % (type_id, model["name"]))
    if type_id not in creatable_vgpu_types(entry):
        raise SimError(NVML_ERROR_INSUFFICIENT_RESOURCES, "vGPU type %d cannot be created now" % type_id)
    inst = {"id": state.get("next_vgpu_instance", 1), "type_id": type_id,
            "uuid": vgpu_uuid or str(uuid.uuid4()), "vm_id": vm_id, "fb_usage": 0}
    state["next_vgpu_instance"] = inst["id"] + 1
    entry.setdefault("vgpu_instances", []).append(inst)
    return inst


def remove_vgpu(state: dict[str, Any], vgpu_uuid: str) -> None:
    for entry in state["gpus"]:
        for inst in entry.get("vgpu_instances", []):
            if inst["uuid"] == vgpu_uuid:
                entry["vgpu_instances"].remove(inst)
                return
    raise SimError(NVML_ERROR_NOT_FOUND, "no vGPU instance %s" % vgpu_uuid)
