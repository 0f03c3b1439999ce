"""``nvidia-smi -L``: one line per GPU, then one line per MIG device of that GPU."""

from __future__ import annotations

import math

from .nvml import Gpu, to_str


def mig_name(gpu: Gpu, handle: object) -> str:
    """The MIG profile part of a MIG device's name ('1g.10gb', '1c.3g.40gb', '1g.10gb+me').

    NVML names a MIG device '<GPU name> MIG <profile>'; when it does not, the name is built
    from the device attributes the way NVIDIA's tools build it.
    """
    session = gpu.session
    name = session.get("nvmlDeviceGetName", handle)
    if name.ok and " MIG " in f" {to_str(name.value)}":
        return f" {to_str(name.value)}".rsplit(" MIG ", 1)[1].strip()
    attrs = session.get("nvmlDeviceGetAttributes", handle)
    if not attrs.ok:
        return "N/A"
    value = attrs.value
    memory_gb = math.ceil(int(value.memorySizeMB) / 1024)
    gi_slices, ci_slices = int(value.gpuInstanceSliceCount), int(value.computeInstanceSliceCount)
    if ci_slices and ci_slices != gi_slices:
        return f"{ci_slices}c.{gi_slices}g.{memory_gb}gb"
    return f"{gi_slices}g.{memory_gb}gb"


def lines(gpu: Gpu) -> list[str]:
    """The -L lines of one GPU."""
    name = gpu.text("nvmlDeviceGetName", fmt=to_str)
    uuid = gpu.text("nvmlDeviceGetUUID", fmt=to_str)
    out = [f"GPU {gpu.index}: {name} (UUID: {uuid})"]
    for index, handle in gpu.mig_devices():
        mig_uuid = gpu.session.get("nvmlDeviceGetUUID", handle).text(to_str)
        out.append(f"  MIG {mig_name(gpu, handle):<12}Device {index:2d}: (UUID: {mig_uuid})")
    return out
