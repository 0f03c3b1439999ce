"""Every GPU model data file is self-consistent and matches the reference tables."""
from __future__ import annotations

import math
import re

import pytest

from gpusim import models

IDENTITY = {  # key: (NVML name, PCI device id, architecture, MIG, vGPU)
    "a100-sxm4-40gb": ("NVIDIA A100-SXM4-40GB", 0x20B0, 7, True, False),
    "a100-sxm4-80gb": ("NVIDIA A100-SXM4-80GB", 0x20B2, 7, True, False),
    "h100-80gb-hbm3": ("NVIDIA H100 80GB HBM3", 0x2330, 9, True, False),
    "h200-141gb": ("NVIDIA H200", 0x2335, 9, True, False),
    "a30": ("NVIDIA A30", 0x20B7, 7, True, False),
    "a40": ("NVIDIA A40", 0x2235, 7, False, True),
    "t4": ("Tesla T4", 0x1EB8, 6, False, True),
    "v100-sxm2-32gb": ("Tesla V100-SXM2-32GB", 0x1DB5, 5, False, False),
}

# reference/mig-profiles.md "Names per model": 1g, 1g+me, 1g double memory, 2g, 3g, 4g, 7g (profile IDs 19, 20, 15, 14, 9, 5, 0)
SEVEN_SLICE_NAMES = {
    "a100-sxm4-40gb": ("1g.5gb", "1g.5gb+me", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"),
    "a100-sxm4-80gb": ("1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"),
    "h100-80gb-hbm3": ("1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"),
    "h200-141gb": ("1g.18gb", "1g.18gb+me", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"),
}
SEVEN_SLICE_TABLE = {  # profile id: (enum, compute slices, memory slices, max, placement starts)
    19: (0, 1, 1, 7, [0, 1, 2, 3, 4, 5, 6]),
    20: (7, 1, 1, 1, [0, 1, 2, 3, 4, 5, 6]),
    15: (9, 1, 2, 4, [0, 2, 4, 6]),
    14: (1, 2, 2, 3, [0, 2, 4]),
    9: (2, 3, 4, 2, [0, 4]),
    5: (3, 4, 4, 1, [0]),
    0: (4, 7, 8, 1, [0]),
}
A30_TABLE = {  # reference "A30": name: (smi ID, max, placements, size)
    "1g.6gb": (14, 4, [0, 1, 2, 3], 1),
    "1g.6gb+me": (21, 1, [0, 1, 2, 3], 1),
    "2g.12gb": (5, 2, [0, 2], 2),
    "2g.12gb+me": (6, 1, [0, 2], 2),
    "4g.24gb": (0, 1, [0], 4),
}


def test_model_keys_are_the_documented_ones():
    assert models.keys() == sorted(IDENTITY)


@pytest.mark.parametrize("key", sorted(IDENTITY))
def test_identity_matches_the_model_table(key):
    model = models.get(key)
    name, device_id, arch, has_mig, has_vgpu = IDENTITY[key]
    assert (model["key"], model["name"], model["pci_device_id"], model["architecture"]) == (key, name, device_id, arch)
    assert model["pci_vendor_id"] == 0x10DE
    assert bool(model.get("mig")) is has_mig
    assert bool(model.get("vgpu")) is has_vgpu
    assert 0 <= model["memory_reserved_bytes"] < model["memory_total_bytes"]
    assert model["power"]["min_limit_mw"] <= model["power"]["enforced_limit_mw"] <= model["power"]["max_limit_mw"]


@pytest.mark.parametrize("key", sorted(IDENTITY))
def test_every_model_says_where_its_numbers_come_from(key):
    source = models.get(key)["source"]
    assert source["default"]
    if key in ("h100-80gb-hbm3", "h200-141gb"):
        assert "real capture" in source["default"]
    else:
        assert "documented" in source["default"] and "not measured" in source["default"]


def _mig_models():
    return [k for k in sorted(IDENTITY) if IDENTITY[k][3]]


@pytest.mark.parametrize("key", _mig_models())
def test_placements_lie_inside_the_memory_slices(key):
    section = models.get(key)["mig"]
    for prof in section["gpu_instance_profiles"]:
        size = prof["placements"]["size"]
        for start in prof["placements"]["starts"]:
            assert 0 <= start and start + size <= section["memory_slices"], (prof["name"], start)
            assert start % size == 0, "placements are aligned to their size"
        assert prof["sliceCount"] <= section["compute_slices"]


@pytest.mark.parametrize("key", _mig_models())
def test_instance_count_equals_non_overlapping_placements(key):
    # ... unless the GPU's optical-flow engine (one per GPU) limits it: "+me" profiles, as in the real capture
    profiles = models.get(key)["mig"]["gpu_instance_profiles"]
    gpu_ofa = max(profiles, key=lambda p: p["sliceCount"])["ofaCount"]
    for prof in profiles:
        starts, size = prof["placements"]["starts"], prof["placements"]["size"]
        limit = gpu_ofa // prof["ofaCount"] if prof["ofaCount"] else len(starts)
        assert prof["instanceCount"] == min(models.max_disjoint(starts, size), limit), prof["name"]


@pytest.mark.parametrize("key", _mig_models())
def test_profile_names_follow_the_memory_size(key):
    # NVIDIA's tools derive "Ngb" from the memory size (H100 capture: N = ceil(MiB / 1024); A100-80GB's
    # documented 80384 MiB is still called 7g.80gb, so allow the rounding some slack)
    for prof in models.get(key)["mig"]["gpu_instance_profiles"]:
        match = re.fullmatch(r"MIG (\d)g\.(\d+)gb(\+me)?", prof["name"])
        assert match, prof["name"]
        assert int(match.group(1)) == prof["sliceCount"]
        if key == "h200-141gb":
            # measured on a real H200: its names do not follow the size (1g.18gb has 16384 MiB, 7g.141gb 143360 MiB)
            assert int(match.group(2)) > prof["memorySizeMB"] / 1024, prof["name"]
            continue
        assert abs(int(match.group(2)) - prof["memorySizeMB"] / 1024) <= 1.5, prof["name"]
    if key == "h100-80gb-hbm3":
        for prof in models.get(key)["mig"]["gpu_instance_profiles"]:
            assert prof["name"].split(".")[1].startswith("%dgb" % math.ceil(prof["memorySizeMB"] / 1024))


@pytest.mark.parametrize("key", sorted(SEVEN_SLICE_NAMES))
def test_seven_slice_gpus_match_the_reference_table(key):
    section = models.get(key)["mig"]
    assert (section["compute_slices"], section["memory_slices"]) == (7, 8)
    by_id = {p["id"]: p for p in section["gpu_instance_profiles"]}
    assert sorted(by_id) == sorted(SEVEN_SLICE_TABLE)
    for (pid, (enum, slices, mem_slices, count, starts)), name in zip(
            sorted(SEVEN_SLICE_TABLE.items(), key=lambda kv: [19, 20, 15, 14, 9, 5, 0].index(kv[0])), SEVEN_SLICE_NAMES[key]):
        prof = by_id[pid]
        assert prof["name"] == "MIG " + name
        assert (prof["enum"], prof["sliceCount"], prof["placements"]["size"], prof["instanceCount"]) == (enum, slices, mem_slices, count)
        assert prof["placements"]["starts"] == starts


def test_a30_matches_the_reference_table():
    section = models.get("a30")["mig"]
    assert (section["compute_slices"], section["memory_slices"]) == (4, 4)
    by_name = {p["name"][4:]: p for p in section["gpu_instance_profiles"]}
    assert sorted(by_name) == sorted(A30_TABLE)
    for name, (pid, count, starts, size) in A30_TABLE.items():
        prof = by_name[name]
        assert (prof["id"], prof["instanceCount"], prof["placements"]["starts"], prof["placements"]["size"]) == (pid, count, starts, size)


@pytest.mark.parametrize("key", _mig_models())
def test_compute_instance_profiles_fit_their_gpu_instance(key):
    model = models.get(key)
    for prof in model["mig"]["gpu_instance_profiles"]:
        ci_profiles = models.ci_profiles_for(model, prof)
        assert ci_profiles, prof["name"]
        assert any(c["sliceCount"] == prof["sliceCount"] for c in ci_profiles), "a CI can span the whole GI"
        for cprof in ci_profiles:
            info = models.ci_profile_info(model, prof, cprof)
            for start in cprof["placements"]["starts"]:
                assert start + cprof["placements"]["size"] <= prof["sliceCount"]
            assert info["instanceCount"] * info["sliceCount"] <= prof["sliceCount"]
            assert info["multiprocessorCount"] <= prof["multiprocessorCount"]


def test_seven_slice_compute_instances_match_the_reference():
    model = models.get("h100-80gb-hbm3")
    seven = models.gi_profile_by_id(model, 0)
    counts = {c["sliceCount"]: models.ci_profile_info(model, seven, c)["instanceCount"] for c in models.ci_profiles_for(model, seven)}
    assert counts == {1: 7, 2: 3, 3: 2, 4: 1, 7: 1}
    three = models.gi_profile_by_id(model, 9)
    names = sorted(models.ci_profile_info(model, three, c)["name"] for c in models.ci_profiles_for(model, three))
    assert names == ["MIG 1c.3g.40gb", "MIG 2c.3g.40gb", "MIG 3g.40gb"]


@pytest.mark.parametrize("key,nominal_gib,prefix", [("a40", 48, "NVIDIA A40-"), ("t4", 16, "GRID T4-")])
def test_vgpu_types_are_consistent(key, nominal_gib, prefix):
    types = models.vgpu_types(models.get(key))
    assert len({t["id"] for t in types}) == len(types)
    for vtype in types:
        match = re.fullmatch(re.escape(prefix) + r"(\d+)([QABC])4?", vtype["name"])
        assert match, vtype["name"]
        gib = int(match.group(1))
        assert vtype["framebuffer_bytes"] == gib << 30
        assert vtype["max_instances"] == min(32, nominal_gib // gib), vtype["name"]
        assert vtype["class"] == {"Q": "Quadro", "B": "NVS", "A": "GRID", "C": "Compute"}[match.group(2)]


def test_vgpu_type_ids_are_unique_across_models():
    ids = [t["id"] for k in models.keys() for t in models.vgpu_types(models.get(k))]
    assert len(ids) == len(set(ids))
    assert models.vgpu_type(557)[1]["name"] == "NVIDIA A40-1Q"
    assert models.vgpu_type(230)[1]["name"] == "GRID T4-1Q"


def test_unknown_model_is_rejected():
    with pytest.raises(models.UnknownModel):
        models.get("h100")
