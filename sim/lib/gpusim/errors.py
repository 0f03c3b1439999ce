"""NVML return codes (values as in nvml.h / nvidia-ml-py) and the simulator's error type."""
from __future__ import annotations

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_INSUFFICIENT_POWER = 8
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_IRQ_ISSUE = 11
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_CORRUPTED_INFOROM = 14
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_OPERATING_SYSTEM = 17
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_IN_USE = 19
NVML_ERROR_MEMORY = 20
NVML_ERROR_NO_DATA = 21
NVML_ERROR_VGPU_ECC_NOT_SUPPORTED = 22
NVML_ERROR_INSUFFICIENT_RESOURCES = 23
NVML_ERROR_FREQ_NOT_SUPPORTED = 24
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
NVML_ERROR_DEPRECATED = 26
NVML_ERROR_NOT_READY = 27
NVML_ERROR_GPU_NOT_FOUND = 28
NVML_ERROR_INVALID_STATE = 29
NVML_ERROR_RESET_TYPE_NOT_SUPPORTED = 30
NVML_ERROR_UNKNOWN = 999

ERROR_CODES: dict[str, int] = {name: value for name, value in globals().items() if name.startswith("NVML_ERROR_")}

# What libnvidia-ml's nvmlErrorString() answers (the texts nvidia-smi prints after "...: ").
ERROR_STRINGS: dict[int, str] = {
    NVML_SUCCESS: "Success",
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_ALREADY_INITIALIZED: "Already Initialized",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_INSUFFICIENT_SIZE: "Insufficient Size",
    NVML_ERROR_INSUFFICIENT_POWER: "Insufficient External Power",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_TIMEOUT: "Timeout",
    NVML_ERROR_IRQ_ISSUE: "Interrupt Request Issue",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
    NVML_ERROR_CORRUPTED_INFOROM: "Corrupted infoROM",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_RESET_REQUIRED: "GPU requires restart",
    NVML_ERROR_OPERATING_SYSTEM: "The operating system has blocked the request.",
    NVML_ERROR_LIB_RM_VERSION_MISMATCH: "RM has detected an NVML/RM version mismatch.",
    NVML_ERROR_IN_USE: "In use by another client",
    NVML_ERROR_MEMORY: "Insufficient Memory",
    NVML_ERROR_NO_DATA: "No data",
    NVML_ERROR_VGPU_ECC_NOT_SUPPORTED: "The requested vgpu operation is not available on target device, becasue ECC is enabled",
    NVML_ERROR_INSUFFICIENT_RESOURCES: "Ran out of critical resources, other than memory",
    NVML_ERROR_FREQ_NOT_SUPPORTED: "The requested frequency is not supported",
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH: "The provided version is invalid/unsupported",
    NVML_ERROR_DEPRECATED: "The requested functionality has been deprecated",
    NVML_ERROR_NOT_READY: "The system is not ready for the request",
    NVML_ERROR_GPU_NOT_FOUND: "No GPUs were found",
    NVML_ERROR_INVALID_STATE: "Resource not in correct state to perform requested operation",
    NVML_ERROR_RESET_TYPE_NOT_SUPPORTED: "Reset type not supported",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class SimError(Exception):
    """A simulated NVML failure; ``code`` is the NVML return code."""

    def __init__(self, code: int, detail: str = "") -> None:
        super().__init__(detail or ERROR_STRINGS.get(code, "NVML error %d" % code))
        self.code = code
        self.detail = detail


def parse_error(text: str) -> int:
    """'NVML_ERROR_IN_USE', 'IN_USE', 'InUse' or '19' -> 19; ValueError otherwise."""
    raw = text.strip()
    if raw.isdigit():
        code = int(raw)
        if code in ERROR_CODES.values():
            return code
        raise ValueError("unknown NVML error code %s" % raw)
    upper = raw.upper()
    for candidate in (upper, "NVML_ERROR_" + upper):
        if candidate in ERROR_CODES:
            return ERROR_CODES[candidate]
    squashed = raw.replace("_", "").lower()
    for name, code in ERROR_CODES.items():
        if name[len("NVML_ERROR_"):].replace("_", "").lower() == squashed:
            return code
    raise ValueError("unknown NVML error %r (expected a name such as NVML_ERROR_GPU_IS_LOST)" % text)


def error_name(code: int) -> str:
    for name, value in ERROR_CODES.items():
        if value == code:
            return name
    return "NVML_ERROR_%d" % code
