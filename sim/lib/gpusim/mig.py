"""MIG placement rules, applied to one GPU's state dict.

A GPU instance (GI) occupies ``size`` memory slices from ``start``; it also consumes
``sliceCount`` compute slices and its engines (the OFA engine is the scarce one: one per GPU
on A100/H100, so ``1g+me`` and ``7g`` exclude each other).  Creation fails with
INSUFFICIENT_RESOURCES when the placement overlaps, when compute slices or OFA run out, or
when the profile's instance count is reached.  GI ids are the driver's "swizzle ids": the
heap index of the placement in the binary tree of memory slices, ``M/size - 1 + start/size``
(7g -> 0, 3g@0 -> 1, 3g@4 -> 2, 2g -> 3..5, 1g -> 7..13 on 8-slice GPUs).
"""
from __future__ import annotations

from typing import Any

from . import models
from .errors import (NVML_ERROR_IN_USE, NVML_ERROR_INSUFFICIENT_RESOURCES, NVML_ERROR_INVALID_ARGUMENT,
                     NVML_ERROR_NOT_FOUND, NVML_ERROR_NOT_SUPPORTED, SimError)

Gpu = dict[str, Any]
Model = dict[str, Any]


def require_mig(model: Model) -> dict[str, Any]:
    section = models.mig(model)
    if not section:
        raise SimError(NVML_ERROR_NOT_SUPPORTED, "GPU does not support MIG")
    return section


def gi_profile(model: Model, profile_id: int) -> dict[str, Any]:
    require_mig(model)
    prof = models.gi_profile_by_id(model, profile_id)
    if prof is None:
        raise SimError(NVML_ERROR_INVALID_ARGUMENT, "no GPU instance profile id %s" % profile_id)
    return prof


def gi_id_for(model: Model, start: int, size: int) -> int:
    slices = require_mig(model)["memory_slices"]
    return slices // size - 1 + start // size


def occupied(gpu: Gpu) -> set[int]:
    used: set[int] = set()
    for inst in gpu.get("gpu_instances", []):
        used.update(range(inst["start"], inst["start"] + inst["size"]))
    return used


def _budget_ok(gpu: Gpu, model: Model, prof: dict[str, Any], extra: list[dict[str, Any]]) -> bool:
    section = require_mig(model)
    existing = [models.gi_profile_by_id(model, inst["profile_id"]) for inst in gpu.get("gpu_instances", [])] + extra
    slices = sum(p["sliceCount"] for p in existing if p) + prof["sliceCount"]
    if slices > section["compute_slices"]:
        return False
    full = max(section["gpu_instance_profiles"], key=lambda p: p["sliceCount"])
    ofa = sum(p["ofaCount"] for p in existing if p) + prof["ofaCount"]
    if ofa > full["ofaCount"]:
        return False
    same = sum(1 for p in existing if p and p["id"] == prof["id"]) + 1
    return same <= prof["instanceCount"]


def _fits(used: set[int], start: int, size: int) -> bool:
    return not used.intersection(range(start, start + size))


def placement_error(gpu: Gpu, model: Model, prof: dict[str, Any], start: int) -> str | None:
    """Why ``prof`` cannot be placed at ``start`` now (None when it can)."""
    size = prof["placements"]["size"]
    if start not in prof["placements"]["starts"]:
        return "placement %d:%d is not a legal placement of %s" % (start, size, prof["name"])
    if not _fits(occupied(gpu), start, size):
        return "placement %d:%d overlaps an existing GPU instance" % (start, size)
    if not _budget_ok(gpu, model, prof, []):
        return "no compute slices, engines or instances of %s left" % prof["name"]
    return None


def remaining_capacity(gpu: Gpu, model: Model, prof: dict[str, Any]) -> int:
    """How many more GIs of ``prof`` can be created, placing them first-fit."""
    used = occupied(gpu)
    added: list[dict[str, Any]] = []
    size = prof["placements"]["size"]
    for start in sorted(prof["placements"]["starts"]):
        if _fits(used, start, size) and _budget_ok(gpu, model, prof, added):
            used.update(range(start, start + size))
            added.append(prof)
    return len(added)


def create_gi(gpu: Gpu, model: Model, profile_id: int, start: int | None = None) -> dict[str, Any]:
    """Create a GPU instance (first fit when ``start`` is None); returns its state entry."""
    prof = gi_profile(model, profile_id)
    size = prof["placements"]["size"]
    if start is None:
        for candidate in sorted(prof["placements"]["starts"]):
            if placement_error(gpu, model, prof, candidate) is None:
                start = candidate
                break
        else:
            raise SimError(NVML_ERROR_INSUFFICIENT_RESOURCES, "no free placement for %s" % prof["name"])
    else:
        if start not in prof["placements"]["starts"]:
            raise SimError(NVML_ERROR_INVALID_ARGUMENT, "placement %d:%d is not legal for %s" % (start, size, prof["name"]))
        why = placement_error(gpu, model, prof, start)
        if why:
            raise SimError(NVML_ERROR_INSUFFICIENT_RESOURCES, why)
    gpu["next_uid"] = gpu.get("next_uid", 1) + 1
    inst = {"id": gi_id_for(model, start, size), "uid": gpu["next_uid"] - 1, "profile_id": prof["id"],
            "start": start, "size": size, "compute_instances": []}
    gpu.setdefault("gpu_instances", []).append(inst)
    gpu["gpu_instances"].sort(key=lambda g: g["id"])
    return inst


def find_gi(gpu: Gpu, gi_id: int) -> dict[str, Any]:
    for inst in gpu.get("gpu_instances", []):
        if inst["id"] == gi_id:
            return inst
    raise SimError(NVML_ERROR_NOT_FOUND, "no GPU instance %s" % gi_id)


def _procs_on(gpu: Gpu, gi_id: int, ci_id: int | None = None) -> list[dict[str, Any]]:
    return [p for p in gpu.get("processes", []) if p.get("gi") == gi_id and (ci_id is None or p.get("ci") == ci_id)]


def destroy_gi(gpu: Gpu, gi_id: int) -> None:
    inst = find_gi(gpu, gi_id)
    if inst["compute_instances"]:
        raise SimError(NVML_ERROR_IN_USE, "GPU instance %d still has compute instances" % gi_id)
    if _procs_on(gpu, gi_id):
        raise SimError(NVML_ERROR_IN_USE, "GPU instance %d is used by a process" % gi_id)
    gpu["gpu_instances"].remove(inst)


def ci_profile(model: Model, inst: dict[str, Any], profile_id: int) -> dict[str, Any]:
    """Derived CI profile info for CI profile id ``profile_id`` inside GI ``inst``."""
    gprof = models.gi_profile_by_id(model, inst["profile_id"])
    for cprof in models.ci_profiles_for(model, gprof):
        if cprof["id"] == profile_id:
            return models.ci_profile_info(model, gprof, cprof)
    raise SimError(NVML_ERROR_NOT_SUPPORTED, "CI profile %s not available in this GPU instance" % profile_id)


def ci_occupied(inst: dict[str, Any]) -> set[int]:
    used: set[int] = set()
    for ci in inst["compute_instances"]:
        used.update(range(ci["start"], ci["start"] + ci["size"]))
    return used


def ci_remaining_capacity(model: Model, inst: dict[str, Any], profile_id: int) -> int:
    info = ci_profile(model, inst, profile_id)
    used = ci_occupied(inst)
    size = info["placements"]["size"]
    count = 0
    for start in sorted(info["placements"]["starts"]):
        if _fits(used, start, size):
            used.update(range(start, start + size))
            count += 1
    return count


def create_ci(gpu: Gpu, model: Model, inst: dict[str, Any], profile_id: int, start: int | None = None) -> dict[str, Any]:
    info = ci_profile(model, inst, profile_id)
    size = info["placements"]["size"]
    used = ci_occupied(inst)
    if start is None:
        for candidate in sorted(info["placements"]["starts"]):
            if _fits(used, candidate, size):
                start = candidate
                break
        else:
            raise SimError(NVML_ERROR_INSUFFICIENT_RESOURCES, "no free compute slices for %s" % info["name"])
    elif start not in info["placements"]["starts"]:
        raise SimError(NVML_ERROR_INVALID_ARGUMENT, "placement %d:%d is not legal for %s" % (start, size, info["name"]))
    elif not _fits(used, start, size):
        raise SimError(NVML_ERROR_INSUFFICIENT_RESOURCES, "placement %d:%d overlaps a compute instance" % (start, size))
    taken = {ci["id"] for ci in inst["compute_instances"]}
    ci_id = next(i for i in range(len(taken) + 1) if i not in taken)
    gpu["next_uid"] = gpu.get("next_uid", 1) + 1
    entry = {"id": ci_id, "uid": gpu["next_uid"] - 1, "profile_id": profile_id, "start": start, "size": size}
    inst["compute_instances"].append(entry)
    inst["compute_instances"].sort(key=lambda c: c["id"])
    return entry


def find_ci(inst: dict[str, Any], ci_id: int) -> dict[str, Any]:
    for ci in inst["compute_instances"]:
        if ci["id"] == ci_id:
            return ci
    raise SimError(NVML_ERROR_NOT_FOUND, "no compute instance %s" % ci_id)


def destroy_ci(gpu: Gpu, inst: dict[str, Any], ci_id: int) -> None:
    ci = find_ci(inst, ci_id)
    if _procs_on(gpu, inst["id"], ci_id):
        raise SimError(NVML_ERROR_IN_USE, "compute instance %d is used by a process" % ci_id)
    inst["compute_instances"].remove(ci)


def mig_devices(gpu: Gpu) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(GI, CI) pairs in MIG device index order (GI id, then CI id)."""
    return [(inst, ci) for inst in gpu.get("gpu_instances", []) for ci in inst["compute_instances"]]
