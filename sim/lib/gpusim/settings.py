"""GPU settings with NVML's semantics: power limit, ECC mode, compute mode, application and locked clocks, persistence.

Pure functions on one GPU's state entry and its model (the NVML stand-in wraps them in a state transaction). What a
setting is when the state has no key for it is the model's default: a reboot or a GPU reset drops the keys of what
the driver forgets (power limit, application clocks, locked clocks), so they are back to their defaults.

Model data (``models/*.json``):
- ``power``: ``default_limit_mw``, ``min_limit_mw``, ``max_limit_mw`` (nvmlDeviceGetPowerManagementLimitConstraints);
- ``supported_clocks``: ``memory_mhz`` (the memory clocks, highest first) and ``graphics_mhz``: ``{min, max, step}``,
  the graphics clocks supported with each memory clock (nvmlDeviceGetSupportedGraphicsClocks, highest first). A model
  without it answers NOT_SUPPORTED to the clock queries and setters;
- ``applications_clocks_default``: ``{graphics, mem}`` (else the maximum clocks);
- ``ecc_supported`` (default true), ``memory_locked_clocks_supported`` (default true where ``supported_clocks`` is set).
"""
from __future__ import annotations

from typing import Any

from .errors import NVML_ERROR_INVALID_ARGUMENT, NVML_ERROR_NOT_SUPPORTED, SimError

# NVML_COMPUTEMODE_*: 1 (EXCLUSIVE_THREAD) was removed from CUDA; the driver refuses it
COMPUTE_MODES = (0, 2, 3)
COMPUTE_MODE_EXCLUSIVE_THREAD = 1
# what a reboot or a GPU reset puts back to the default
VOLATILE_KEYS = ("power_limit_mw", "applications_clocks", "locked_clocks")


def _invalid(message: str) -> SimError:
    return SimError(NVML_ERROR_INVALID_ARGUMENT, message)


def _int(value: Any, what: str) -> int:
    try:
        number = int(getattr(value, "value", value))
    except (TypeError, ValueError):
        raise _invalid("%s must be an integer" % what) from None
    if number < 0:
        raise _invalid("%s must not be negative" % what)
    return number


# ---- power limit ---------------------------------------------------------------------------
def power_constraints(model: dict[str, Any]) -> tuple[int, int]:
    power = model.get("power") or {}
    if "min_limit_mw" not in power or "max_limit_mw" not in power:
        raise SimError(NVML_ERROR_NOT_SUPPORTED, "power management is not supported")
    return int(power["min_limit_mw"]), int(power["max_limit_mw"])


def power_limit(gpu: dict[str, Any], model: dict[str, Any]) -> int:
    """The power management limit (mW): what was set since the last boot or reset, else the default."""
    return int(gpu.get("power_limit_mw", model["power"]["default_limit_mw"]))


def set_power_limit(gpu: dict[str, Any], model: dict[str, Any], limit: Any) -> None:
    low, high = power_constraints(model)
    value = _int(limit, "limit")
    if not low <= value <= high:
        raise _invalid("power limit %d mW is outside %d..%d mW" % (value, low, high))
    gpu["power_limit_mw"] = value


# ---- ECC and compute mode ------------------------------------------------------------------
def ecc_supported(model: dict[str, Any]) -> bool:
    return bool(model.get("ecc_supported", True))


def set_ecc_mode(gpu: dict[str, Any], model: dict[str, Any], mode: Any) -> None:
    """nvmlDeviceSetEccMode: the mode becomes pending; it is current after the next GPU reset or reboot."""
    if not ecc_supported(model):
        raise SimError(NVML_ERROR_NOT_SUPPORTED, "ECC is not supported")
    value = _int(mode, "mode")
    if value not in (0, 1):
        raise _invalid("ECC mode must be 0 or 1")
    gpu["ecc"]["pending"] = value


def compute_mode(gpu: dict[str, Any], model: dict[str, Any]) -> int:
    return int(gpu.get("compute_mode", model.get("compute_mode", 0)))


def set_gpu_persistence(gpu: dict[str, Any], mode: Any) -> None:
    """nvmlDeviceSetPersistenceMode: one GPU's persistence mode (NVML_FEATURE_DISABLED 0 / ENABLED 1)."""
    value = _int(mode, "mode")
    if value not in (0, 1):
        raise _invalid("persistence mode must be 0 or 1, not %d" % value)
    gpu["persistence"] = value


def set_compute_mode(gpu: dict[str, Any], mode: Any) -> None:
    value = _int(mode, "mode")
    if value == COMPUTE_MODE_EXCLUSIVE_THREAD:
        raise SimError(NVML_ERROR_NOT_SUPPORTED, "EXCLUSIVE_THREAD compute mode is not supported")
    if value not in COMPUTE_MODES:
        raise _invalid("unknown compute mode %d" % value)
    gpu["compute_mode"] = value


# ---- clocks --------------------------------------------------------------------------------
def _supported(model: dict[str, Any]) -> dict[str, Any]:
    table = model.get("supported_clocks")
    if not table:
        raise SimError(NVML_ERROR_NOT_SUPPORTED, "clock control is not supported")
    return table


def memory_clocks(model: dict[str, Any]) -> list[int]:
    """nvmlDeviceGetSupportedMemoryClocks: highest first."""
    return sorted((int(m) for m in _supported(model)["memory_mhz"]), reverse=True)


def graphics_clocks(model: dict[str, Any], memory_mhz: Any) -> list[int]:
    """nvmlDeviceGetSupportedGraphicsClocks for one memory clock: highest first; NOT_FOUND-like INVALID_ARGUMENT for a
    memory clock the GPU does not support."""
    table = _supported(model)
    if _int(memory_mhz, "memoryClockMHz") not in memory_clocks(model):
        raise _invalid("memory clock %s MHz is not supported" % memory_mhz)
    graphics = table["graphics_mhz"]
    return list(range(int(graphics["max"]), int(graphics["min"]) - 1, -int(graphics["step"])))


def default_applications_clocks(model: dict[str, Any]) -> dict[str, int]:
    default = model.get("applications_clocks_default") or {}
    top = model["clocks_mhz"]["max"]
    return {"graphics": int(default.get("graphics", top["graphics"])), "mem": int(default.get("mem", top["mem"]))}


def applications_clocks(gpu: dict[str, Any], model: dict[str, Any]) -> dict[str, int]:
    return dict(gpu.get("applications_clocks") or default_applications_clocks(model))


def set_applications_clocks(gpu: dict[str, Any], model: dict[str, Any], mem: Any, graphics: Any) -> None:
    """nvmlDeviceSetApplicationsClocks: a supported (memory, graphics) pair, else INVALID_ARGUMENT."""
    mem_mhz, graphics_mhz = _int(mem, "maxMemClockMHz"), _int(graphics, "maxGraphicsClockMHz")
    if mem_mhz not in memory_clocks(model) or graphics_mhz not in graphics_clocks(model, mem_mhz):
        raise _invalid("applications clocks %d MHz (memory), %d MHz (graphics) are not a supported pair" % (mem_mhz, graphics_mhz))
    gpu["applications_clocks"] = {"graphics": graphics_mhz, "mem": mem_mhz}


def reset_applications_clocks(gpu: dict[str, Any], model: dict[str, Any]) -> None:
    _supported(model)
    gpu.pop("applications_clocks", None)


def _locked_range(low: Any, high: Any, supported: list[int], what: str) -> list[int]:
    lo, hi = _int(low, "min" + what), _int(high, "max" + what)
    if lo > hi or lo < min(supported) or hi > max(supported):
        raise _invalid("locked %s clocks %d..%d MHz are outside %d..%d MHz" % (what.lower(), lo, hi, min(supported), max(supported)))
    return [lo, hi]


def set_locked_clocks(gpu: dict[str, Any], model: dict[str, Any], which: str, low: Any, high: Any) -> None:
    """nvmlDeviceSetGpuLockedClocks (``which`` 'gpu') or nvmlDeviceSetMemoryLockedClocks ('memory')."""
    if which == "memory":
        if not model.get("memory_locked_clocks_supported", True):
            raise SimError(NVML_ERROR_NOT_SUPPORTED, "memory locked clocks are not supported")
        supported = memory_clocks(model)
    else:
        supported = graphics_clocks(model, memory_clocks(model)[0])
    gpu.setdefault("locked_clocks", {})[which] = _locked_range(low, high, supported, "Memory" if which == "memory" else "Gpu")


def reset_locked_clocks(gpu: dict[str, Any], model: dict[str, Any], which: str) -> None:
    _supported(model)
    if which == "memory" and not model.get("memory_locked_clocks_supported", True):
        raise SimError(NVML_ERROR_NOT_SUPPORTED, "memory locked clocks are not supported")
    locked = gpu.get("locked_clocks") or {}
    locked.pop(which, None)
    if not locked:
        gpu.pop("locked_clocks", None)


def clamp_clock(gpu: dict[str, Any], kind: str, value: int) -> int:
    """A current clock as the locked clocks bound it ('graphics'/'sm' by the GPU clocks, 'mem' by the memory clocks)."""
    locked = (gpu.get("locked_clocks") or {}).get("memory" if kind == "mem" else "gpu" if kind in ("graphics", "sm") else "")
    if not locked:
        return value
    return max(locked[0], min(locked[1], value))


# ---- reboot and reset ----------------------------------------------------------------------
def forget_volatile(gpu: dict[str, Any]) -> None:
    """What a reboot or a GPU reset loses: the power limit and the clocks are back to their defaults."""
    for key in VOLATILE_KEYS:
        gpu.pop(key, None)


def set_persistence(state: dict[str, Any], enabled: bool) -> None:
    """Persistence mode of every GPU (what nvidia-persistenced does when it starts, and undoes when it stops)."""
    for entry in state["gpus"]:
        entry["persistence"] = 1 if enabled else 0
