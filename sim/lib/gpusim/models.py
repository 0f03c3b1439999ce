"""GPU models are data: one JSON file per model in ``models/``.

Every file carries a ``source`` map saying which facts were read off real hardware and which
come from documentation (or are estimates).  Only the standard library is used here: the
simulator runs on bare Debian hosts.
"""
from __future__ import annotations

import json
import os
from typing import Any

MODELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")

_models: dict[str, dict[str, Any]] = {}


class UnknownModel(KeyError):
    """No data file for this model key."""


def keys() -> list[str]:
    """All model keys, sorted."""
    return sorted(name[:-5] for name in os.listdir(MODELS_DIR) if name.endswith(".json"))


def get(key: str) -> dict[str, Any]:
    """The model data for ``key`` (cached; do not mutate)."""
    model = _models.get(key)
    if model is None:
        path = os.path.join(MODELS_DIR, key + ".json")
        if not key or os.sep in key or not os.path.isfile(path):
            raise UnknownModel(key)
        with open(path, encoding="utf-8") as handle:
            model = json.load(handle)
        _models[key] = model
    return model


def mig(model: dict[str, Any]) -> dict[str, Any] | None:
    """The MIG section, or None for GPUs without MIG."""
    return model.get("mig")


def gi_profile_by_enum(model: dict[str, Any], enum: int) -> dict[str, Any] | None:
    section = mig(model)
    if not section:
        return None
    for prof in section["gpu_instance_profiles"]:
        if prof["enum"] == enum:
            return prof
    return None


def gi_profile_by_id(model: dict[str, Any], profile_id: int) -> dict[str, Any] | None:
    section = mig(model)
    if not section:
        return None
    for prof in section["gpu_instance_profiles"]:
        if prof["id"] == profile_id:
            return prof
    return None


def ci_profiles_for(model: dict[str, Any], gi_profile: dict[str, Any]) -> list[dict[str, Any]]:
    """Compute-instance profiles available inside a GPU instance of ``gi_profile``."""
    section = mig(model) or {}
    return section.get("compute_instance_profiles", {}).get(str(gi_profile["sliceCount"]), [])


def ci_profile_info(model: dict[str, Any], gi_profile: dict[str, Any], ci_profile: dict[str, Any]) -> dict[str, Any]:
    """Derived attributes of a compute-instance profile inside a GPU instance.

    A CI spanning the whole GI gets the GI's SM count; a partial CI gets ``slices x`` the SM
    count of the model's 1-slice GPU instance (documented structure, SM numbers estimated).
    Engines are shared with the GI.
    """
    gi_slices = gi_profile["sliceCount"]
    slices = ci_profile["sliceCount"]
    one_slice = gi_profile_by_enum(model, 0)
    per_slice = one_slice["multiprocessorCount"] if one_slice else gi_profile["multiprocessorCount"] // gi_slices
    gi_name = gi_profile["name"][4:] if gi_profile["name"].startswith("MIG ") else gi_profile["name"]
    if slices == gi_slices:
        sms = gi_profile["multiprocessorCount"]
        name = "MIG " + gi_name
    else:
        sms = per_slice * slices
        name = "MIG %dc.%s" % (slices, gi_name)
    starts = ci_profile["placements"]["starts"]
    return {
        "id": ci_profile["id"],
        "enum": ci_profile["enum"],
        "sliceCount": slices,
        "instanceCount": max_disjoint(starts, ci_profile["placements"]["size"]),
        "multiprocessorCount": sms,
        "sharedCopyEngineCount": gi_profile["copyEngineCount"],
        "sharedDecoderCount": gi_profile["decoderCount"],
        "sharedEncoderCount": gi_profile["encoderCount"],
        "sharedJpegCount": gi_profile["jpegCount"],
        "sharedOfaCount": gi_profile["ofaCount"],
        "name": name,
        "placements": ci_profile["placements"],
    }


def max_disjoint(starts: list[int], size: int) -> int:
    """How many placements of equal ``size`` fit at once (greedy is optimal for equal sizes)."""
    count, end = 0, -1
    for start in sorted(starts):
        if start >= end:
            count += 1
            end = start + size
    return count


def vgpu_types(model: dict[str, Any]) -> list[dict[str, Any]]:
    section = model.get("vgpu") or {}
    return section.get("types", [])


def vgpu_type(type_id: int) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(model, type) for a vGPU type id across all models."""
    for key in keys():
        model = get(key)
        for vtype in vgpu_types(model):
            if vtype["id"] == type_id:
                return model, vtype
    return None
