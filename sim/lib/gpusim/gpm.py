"""GPM (GPU Performance Monitoring) activity of the simulated GPUs: counters that grow with time.

NVML's GPM API works on samples: ``nvmlGpmSampleGet`` (per GPU) or ``nvmlGpmMigSampleGet`` (per MIG GPU instance)
snapshots counters, and ``nvmlGpmMetricsGet`` turns two samples into rates over the interval between them. Here a
"unit" is a whole GPU (``"gpu"``) or one GPU instance (``"gi<id>"``); each has a rate per metric (percent for the
utilisations, KiB/s for PCIe), piecewise constant: rates change only when the state changes (a process starts or
stops, a GPU instance comes or goes, a metric override is written). A GPU's ``gpm`` entry keeps the counters
integrated up to the last change (``base``) and when that was (``since_ns``); a counter at time t is
``base + rate x (t - since)``. Every state write (``store.transaction``) calls ``settle``, which folds the old rates
in when they changed, so the rate between two samples is the time-weighted mean of what ran in between.

Counters are integers (rate x 1e6 x ns), so a steady rate comes back exactly. The metric ids, their short names and
units, and the call limits are those a real H200 answered (``gpm_metrics.json``); which ids have a modelled figure is
the simulator's choice, the rest read 0 as on an idle real GPU. Only the standard library is used.
"""
from __future__ import annotations

import json
import os
from typing import Any

from . import models

SCALE = 1_000_000
ARCH_HOPPER = 9
BUSY = {"gpu": 95, "memory": 40}  # a GPU (or GPU instance) with a process on it, as nvmlDeviceGetUtilizationRates says

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpm_metrics.json"), encoding="utf-8") as _handle:
    _TABLE = json.load(_handle)
METRIC_INFO: dict[int, tuple[str, str]] = {int(k): (v[0], v[1]) for k, v in _TABLE["metrics"].items()}
MAX_METRICS_PER_CALL = int(_TABLE["max_metrics_per_call"])

GRAPHICS, SM, TENSOR, DRAM, PCIE_TX, PCIE_RX = 1, 2, 5, 10, 20, 21
# metric id -> override key in a GPU's "metrics" map ("gpm_<name>"), for the utilisations that have one
OVERRIDES = {1: "graphics_util", 2: "sm_util", 3: "sm_occupancy", 4: "integer_util", 5: "tensor_util",
             6: "dfma_tensor_util", 7: "hmma_tensor_util", 8: "dmma_tensor_util", 9: "imma_tensor_util",
             10: "dram_bw_util", 11: "fp64_util", 12: "fp32_util", 13: "fp16_util"}
PCIE_METRICS = (PCIE_TX, PCIE_RX)  # GPU-wide: a GPU instance sample has none


def supported(model: dict[str, Any]) -> bool:
    """GPM exists on Hopper and newer."""
    return int(model.get("architecture", 0)) >= ARCH_HOPPER


def _scaled(value: float) -> int:
    return int(round(float(value) * SCALE))


def _activity(model: dict[str, Any], busy: bool, overrides: dict[str, Any], whole_gpu: bool) -> dict[int, int]:
    util = model["utilization"]
    gpu = overrides.get("utilization_gpu", BUSY["gpu"] if busy else util["gpu"])
    memory = overrides.get("utilization_memory", BUSY["memory"] if busy else util["memory"])
    rates = {}
    for metric_id, name in OVERRIDES.items():
        default = gpu if metric_id in (GRAPHICS, SM) else memory if metric_id == DRAM else 0
        rates[metric_id] = _scaled(overrides.get("gpm_" + name, default))
    if whole_gpu:
        pcie = model["pcie"]
        rates[PCIE_TX] = _scaled(overrides.get("pcie_tx_kbps", pcie["tx_kbps"]))
        rates[PCIE_RX] = _scaled(overrides.get("pcie_rx_kbps", pcie["rx_kbps"]))
    return rates


def rates(gpu: dict[str, Any]) -> dict[str, dict[int, int]]:
    """Unit -> metric id -> rate x SCALE, for one GPU's state entry (empty for GPUs without GPM)."""
    model = models.get(gpu["model"])
    if not supported(model):
        return {}
    overrides = gpu.get("metrics", {}) or {}
    processes = gpu.get("processes", [])
    instances = gpu.get("gpu_instances", []) if (gpu.get("mig") or {}).get("current") else []
    if not instances:
        return {"gpu": _activity(model, bool(processes), overrides, True)}
    per_gi = overrides.get("gpm_gi", {}) or {}
    section = models.mig(model) or {}
    total_sms = max((p["multiprocessorCount"] for p in section.get("gpu_instance_profiles", [])), default=1)
    units: dict[str, dict[int, int]] = {}
    whole = {k: 0 for k in OVERRIDES}
    idle = _activity(model, False, {}, False)
    spare = total_sms
    for inst in instances:
        busy = any(p.get("gi") == inst["id"] for p in processes)
        unit = _activity(model, busy, per_gi.get(str(inst["id"]), {}), False)
        units["gi%d" % inst["id"]] = unit
        prof = models.gi_profile_by_id(model, inst["profile_id"]) or {"multiprocessorCount": 0}
        spare -= prof["multiprocessorCount"]
        for metric_id in whole:
            whole[metric_id] += unit[metric_id] * prof["multiprocessorCount"]
    for metric_id in whole:  # the whole GPU: the instances' figures weighted by their SMs, spare SMs idle
        whole[metric_id] = (whole[metric_id] + idle[metric_id] * max(spare, 0)) // total_sms
    pcie = _activity(model, False, overrides, True)
    whole[PCIE_TX], whole[PCIE_RX] = pcie[PCIE_TX], pcie[PCIE_RX]
    units["gpu"] = whole
    return units


def counters(gpu: dict[str, Any], unit: str, now_ns: int) -> dict[int, int] | None:
    """The unit's counters at ``now_ns`` (rate x SCALE x ns), or None when the unit does not exist."""
    unit_rates = rates(gpu).get(unit)
    if unit_rates is None:
        return None
    ledger = gpu.get("gpm") or {}
    since = int(ledger.get("since_ns", 0))
    base = (ledger.get("base") or {}).get(unit, {})
    return {m: int(base.get(str(m), 0)) + r * (now_ns - since) for m, r in unit_rates.items()}


def snapshot(state: dict[str, Any]) -> dict[str, dict[str, dict[int, int]]]:
    """Rates of every GPU (by UUID) before a state change."""
    out = {}
    for gpu in state.get("gpus", []) or []:
        try:
            out[gpu["uuid"]] = rates(gpu)
        except (KeyError, TypeError, models.UnknownModel):
            continue
    return out


def settle(before: dict[str, dict[str, dict[int, int]]], state: dict[str, Any], now_ns: int) -> None:
    """Fold the rates that held until now into each GPU's counters where the state change altered them."""
    for gpu in state.get("gpus", []) or []:
        try:
            after = rates(gpu)
        except (KeyError, TypeError, models.UnknownModel):
            continue
        old = before.get(gpu.get("uuid"))
        ledger = gpu.get("gpm")
        if old is None or not ledger:
            gpu["gpm"] = {"since_ns": now_ns, "base": {}}
            continue
        if old == after:
            continue
        since = int(ledger.get("since_ns", now_ns))
        base = ledger.get("base") or {}
        folded = {}
        for unit, unit_rates in old.items():
            if unit not in after:
                continue  # a GPU instance that is gone: its counters go with it
            prior = base.get(unit, {})
            folded[unit] = {str(m): int(prior.get(str(m), 0)) + r * (now_ns - since) for m, r in unit_rates.items()}
        gpu["gpm"] = {"since_ns": now_ns, "base": folded}
