# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""MIG enumeration through NVML, shared by the collection's NVML seam (_nvml) and the exporter.

The exporter role ships this very file as `gpuvirt_exporter/nvml_mig.py` (a symbolic link to it), so it stays
standalone: it imports nothing, neither Ansible nor this collection nor pynvml. Each caller passes its own `pynvml`
module (the collection's seam the one it imported, or the one a test put there; the exporter its own), and turns
`pynvml.NVMLError_GpuIsLost` into its own error.
"""

from __future__ import annotations

import ctypes

# NVML GPU-instance profile enums probed for MIG profiles. The GPU answers NotSupported (or InvalidArgument) for the
# enums it lacks; which profiles exist is what the GPU reports, never a table of ours.
GPU_INSTANCE_PROFILE_ENUMS = range(0, 18)
MAX_GPU_INSTANCES = 8  # per profile: no GPU holds more than seven GPU instances


def gpu_instance_profiles(pynvml, handle, skip_lost: bool = False):
    """Yield the profile info (nvmlDeviceGetGpuInstanceProfileInfo) of every GPU-instance profile the GPU has.

    `pynvml.NVMLError_GpuIsLost` propagates, unless `skip_lost`, which treats a lost GPU like an absent profile."""
    for enum in GPU_INSTANCE_PROFILE_ENUMS:
        try:
            info = pynvml.nvmlDeviceGetGpuInstanceProfileInfo(handle, enum)
        except pynvml.NVMLError_GpuIsLost:
            if skip_lost:
                continue
            raise
        except pynvml.NVMLError:
            continue  # this GPU has no profile for this enum
        yield info


def gpu_instances(pynvml, handle, profile_id: int) -> list:
    """The GPU instances of one profile (nvmlDeviceGetGpuInstances); NVML's errors propagate."""
    count = ctypes.c_uint(0)
    instances = (pynvml.c_nvmlGpuInstance_t * MAX_GPU_INSTANCES)()
    pynvml.nvmlDeviceGetGpuInstances(handle, profile_id, instances, ctypes.byref(count))
    return list(instances[:count.value])
