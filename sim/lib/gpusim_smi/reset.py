"""``nvidia-smi -r -i ID``: reset one GPU of the simulated host.

NVML has no public reset call, so this is the one thing the stand-in does outside the ``pynvml`` API: it
changes the simulated host's state directly, exactly as ``gpusimctl reset`` does (pending MIG mode becomes
current, instances are gone). It is refused, with the real tool's words and exit code (255), while anything else
holds the GPU: another process's NVML session, a registered compute process, a vGPU, a loaded nvidia_drm (this
nvidia-smi's own session does not count); and where a reset needs a reboot (``gpusimctl fault set --call reset``, 3).
The real tool does not name the processes, so neither does this one (``gpusimctl holders`` does).
"""

from __future__ import annotations

# What nvidia-smi of the 535..580 drivers prints when a GPU is held (see sim/README.md for the evidence).
IN_USE = (
    "The following GPUs could not be reset:\n"
    "  GPU {bus}: In use by another client\n\n"
    "1 device is currently being used by one or more other processes (e.g., Fabric Manager, CUDA application, "
    "graphics application such as an X server, or a monitoring application such as another instance of nvidia-smi). "
    "Please first kill all processes using this device and all compute applications running in the system.\n"
)
NOT_SUPPORTED = "\nResetting GPU {bus} is not supported.\n"
DONE = "GPU {bus} was successfully reset.\n"
EXIT_IN_USE = 255
EXIT_NOT_SUPPORTED = 3  # nvidia-smi(1): the requested operation is not available on the target device


def reset_gpu(uuid: str, bus: str) -> tuple[str, int]:
    """Reset the GPU with this UUID; returns (what nvidia-smi prints on stdout, its exit code)."""
    try:
        # pylint: disable=import-outside-toplevel  # only a simulated host has the state to reset
        from gpusim import host, sessions, store
        from gpusim.errors import NVML_ERROR_IN_USE, SimError
    except ImportError:
        return NOT_SUPPORTED.format(bus=bus), EXIT_NOT_SUPPORTED
    try:
        with store.transaction() as state:
            entry = next((g for g in state["gpus"] if g["uuid"] == uuid), None)
            if entry is None:
                return NOT_SUPPORTED.format(bus=bus), EXIT_NOT_SUPPORTED
            host.reset(state, entry["index"], sessions.others(store.root_dir()))
    except store.StateMissing:
        return NOT_SUPPORTED.format(bus=bus), EXIT_NOT_SUPPORTED
    except SimError as exc:
        if exc.code == NVML_ERROR_IN_USE:
            return IN_USE.format(bus=bus), EXIT_IN_USE
        return NOT_SUPPORTED.format(bus=bus), EXIT_NOT_SUPPORTED
    return DONE.format(bus=bus), 0
