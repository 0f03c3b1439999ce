# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared helpers of the nvidia-smi stand-in tests: paths, real captures, a tiny NVML fake."""

from __future__ import annotations

import io
import os
import sys
import types
import typing as t

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
SIM_LIB = os.path.join(REPO, "sim", "lib")
SMI = os.path.join(REPO, "sim", "bin", "nvidia-smi")
GPUSIMCTL = os.path.join(REPO, "sim", "bin", "gpusimctl")
REAL_UUID = "GPU-2bbc3af3-7a90-4193-7574-41743730389f"

if SIM_LIB not in sys.path:
    sys.path.insert(0, SIM_LIB)


def shared_dir() -> str:
    """The project's shared/ folder: $GPUVIRT_SHARED, else <repo>/../shared (never skipped)."""
    path = os.environ.get("GPUVIRT_SHARED") or os.path.join(os.path.dirname(REPO), "shared")
    capture = os.path.join(path, "fixtures", "real", "h100-80gb-hbm3")
    if not os.path.isdir(capture):
        raise RuntimeError(
            f"real captures not found at {capture}: set GPUVIRT_SHARED to the project's shared/ folder"
        )
    return path


def real(name: str) -> str:
    """A real H100 capture without its '# rc=N' first line."""
    path = os.path.join(shared_dir(), "fixtures", "real", "h100-80gb-hbm3", name)
    with open(path, encoding="utf-8") as handle:
        first = handle.readline()
        assert first.startswith("# rc="), f"{path}: expected a '# rc=' first line"
        return handle.read()


def run_main(argv: list[str], module: t.Any) -> tuple[int, str, str]:
    """Run the stand-in in-process against ``module``; returns (rc, stdout, stderr)."""
    from gpusim_smi import main  # pylint: disable=import-outside-toplevel

    out, err = io.StringIO(), io.StringIO()
    code = main(argv, module=module, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


# --- a tiny NVML fake: just enough API for the renderers, used where no stand-in state can reach ---

class NVMLError(Exception):
    """Same shape as pynvml.NVMLError: carries the NVML return code in ``value``."""

    TEXT = {3: "Not Supported", 9: "Driver Not Loaded", 12: "NVML Shared Library Not Found",
            15: "GPU is lost", 18: "RM has detected an NVML/RM version mismatch.", 999: "Unknown Error"}

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return self.TEXT.get(self.value, f"NVML Error with code {self.value}")


def fake_nvml(gpus: list[dict[str, t.Any]], init_error: int | None = None) -> types.ModuleType:
    """A module with the pynvml calls the stand-in makes; calls it does not model raise NOT_SUPPORTED."""
    module = types.ModuleType("fake_pynvml")
    module.NVMLError = NVMLError  # type: ignore[attr-defined]

    def init() -> None:
        if init_error is not None:
            raise NVMLError(init_error)

    def handle(index: int) -> int:
        if gpus[index].get("handle_error"):
            raise NVMLError(gpus[index]["handle_error"])
        return index

    def answer(name: str, index: int) -> t.Any:
        value = gpus[index].get(name)
        if value is None:
            raise NVMLError(3)
        if isinstance(value, int) and name.startswith("error:"):
            raise NVMLError(value)
        return value

    calls = {
        "nvmlInit": init,
        "nvmlShutdown": lambda: None,
        "nvmlSystemGetDriverVersion": lambda: "580.159.04",
        "nvmlSystemGetCudaDriverVersion": lambda: 13000,
        "nvmlDeviceGetCount": lambda: len(gpus),
        "nvmlDeviceGetHandleByIndex": handle,
        "nvmlDeviceGetName": lambda h: answer("name", h),
        "nvmlDeviceGetUUID": lambda h: answer("uuid", h),
        "nvmlDeviceGetPciInfo": lambda h: answer("pci", h),
        "nvmlDeviceGetMigMode": lambda h: answer("mig", h),
    }
    for name, func in calls.items():
        setattr(module, name, func)
    return module


def fake_gpu(index: int = 0, **extra: t.Any) -> dict[str, t.Any]:
    """One fake GPU answering name, UUID and PCI info."""
    pci = types.SimpleNamespace(busId=f"00000000:{index:02X}:00.0", domain=0, bus=index, device=0,
                                pciDeviceId=0x233010DE, pciSubSystemId=0x16C110DE)
    gpu = {"name": "NVIDIA H100 80GB HBM3", "uuid": REAL_UUID, "pci": pci}
    gpu.update(extra)
    return gpu
