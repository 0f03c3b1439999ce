"""``nvidia-smi mig -lgip`` and ``nvidia-smi mig -lgipp``: GPU instance profiles and placements."""

from __future__ import annotations

import ctypes
import math
import typing as t

from .nvml import Gpu, to_str

NO_MIG_DEVICES = "No MIG-supported devices found."
PROFILE_COUNT = 0x12  # NVML_GPU_INSTANCE_PROFILE_COUNT in nvidia-ml-py 13

_RULE = "+" + "-" * 79 + "+"
_HEADER = [
    _RULE,
    "| GPU instance profiles:" + " " * 56 + "|",
    "| GPU   Name               ID    Instances   Memory     P2P    SM    DEC   ENC  |",
    "|                                Free/Total   GiB              CE    JPEG  OFA  |",
    "|" + "=" * 79 + "|",
]


class _Placement(ctypes.Structure):  # pylint: disable=too-few-public-methods
    """nvmlGpuInstancePlacement_t, for a module that does not export the struct."""

    _fields_ = [("start", ctypes.c_uint), ("size", ctypes.c_uint)]


def mig_capable(gpu: Gpu) -> bool:
    """A GPU supports MIG when NVML reports a MIG mode for it (enabled or not)."""
    return gpu.mig_mode().ok


def profiles(gpu: Gpu) -> list[t.Any]:
    """The GPU instance profiles the GPU supports, in the order nvidia-smi lists them.

    nvidia-smi lists profiles by size: compute slices, then memory, then the profile enum
    (so '1g.10gb' comes before '1g.10gb+me', and both before '1g.20gb').
    """
    found = []
    count = gpu.session.const("NVML_GPU_INSTANCE_PROFILE_COUNT", PROFILE_COUNT)
    for enum in range(count):
        info = gpu.get("nvmlDeviceGetGpuInstanceProfileInfo", enum)
        if info.ok and int(info.value.instanceCount) > 0:
            found.append((int(info.value.sliceCount), int(info.value.memorySizeMB), enum, info.value))
    found.sort(key=lambda entry: entry[:3])
    return [entry[3] for entry in found]


def profile_name(info: t.Any) -> str:
    """'MIG 1g.10gb' from the profile info (or built from its size when NVML gives no name)."""
    name = to_str(getattr(info, "name", b"")).strip()
    if name:
        return name
    return f"MIG {int(info.sliceCount)}g.{math.ceil(int(info.memorySizeMB) / 1024)}gb"


def lgip(gpus: t.Sequence[Gpu]) -> list[str]:
    """The -lgip table for the given MIG-capable GPUs."""
    out = list(_HEADER)
    for gpu in gpus:
        for info in profiles(gpu):
            free = gpu.get("nvmlDeviceGetGpuInstanceRemainingCapacity", int(info.id))
            free_count = int(free.value) if free.ok else 0
            memory = f"{int(info.memorySizeMB) / 1024:.2f}"
            p2p = "Yes" if int(info.isP2pSupported) else "No"
            out.append(
                f"|{gpu.index:>4d}  {profile_name(info):<18}{int(info.id):>4d}{free_count:>6d}/{int(info.instanceCount):<9d}"
                f"{memory:<11}{p2p:<7}{int(info.multiprocessorCount):<7d}{int(info.decoderCount):<6d}"
                f"{int(info.encoderCount):<4d}|"
            )
            out.append(
                f"|{'':63}{int(info.copyEngineCount):<6d}{int(info.jpegCount):<6d}{int(info.ofaCount):<4d}|"
            )
            out.append(_RULE)
    return out


def placements(gpu: Gpu, profile_id: int) -> list[tuple[int, int]] | None:
    """(start, size) of every possible placement of a profile, or None when NVML refuses."""
    session = gpu.session
    struct = getattr(session.module, "c_nvmlGpuInstancePlacement_t", _Placement)
    count = ctypes.c_uint(0)
    name = "nvmlDeviceGetGpuInstancePossiblePlacements"
    # NVML's two-step protocol: a NULL array asks for the count, then the array is filled.
    if not session.get(name, gpu.handle, profile_id, None, ctypes.byref(count)).ok:
        return None
    array = (struct * max(count.value, 1))()
    if not session.get(name, gpu.handle, profile_id, array, ctypes.byref(count)).ok:
        return None
    return [(int(array[i].start), int(array[i].size)) for i in range(count.value)]


def lgipp(gpus: t.Sequence[Gpu]) -> list[str]:
    """The -lgipp lines for the given MIG-capable GPUs."""
    out = []
    for gpu in gpus:
        for info in profiles(gpu):
            found = placements(gpu, int(info.id))
            if not found:
                continue
            starts = ",".join(str(placement[0]) for placement in found)
            plural = "s" if len(found) > 1 else " "
            out.append(f"GPU {gpu.index:2d} Profile ID {int(info.id):2d} Placement{plural}: {{{starts}}}:{found[0][1]}")
    return out
