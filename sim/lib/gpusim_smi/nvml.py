"""The only door between the nvidia-smi stand-in and NVML.

Every NVML function the tool calls is reached through ``Session.get``/``Session.call``, so a
fault injected into the NVML stand-in (or a real driver error, when this runs against the real
``pynvml``) reaches the output exactly where the real nvidia-smi would show it.
"""

from __future__ import annotations

import typing as t

# NVML return codes are part of the C ABI; they are spelled out here so a partial stand-in module
# that lacks some constants still gets the right exit codes and texts.
ERROR_UNINITIALIZED = 1
ERROR_INVALID_ARGUMENT = 2
ERROR_NOT_SUPPORTED = 3
ERROR_NO_PERMISSION = 4
ERROR_NOT_FOUND = 6
ERROR_INSUFFICIENT_SIZE = 7
ERROR_DRIVER_NOT_LOADED = 9
ERROR_LIBRARY_NOT_FOUND = 12
ERROR_FUNCTION_NOT_FOUND = 13
ERROR_GPU_IS_LOST = 15
ERROR_LIB_RM_VERSION_MISMATCH = 18
ERROR_UNKNOWN = 999

# nvidia-smi exit codes that mirror an NVML return code (nvidia-smi(1), RETURN VALUE); any
# other failure exits 255.
_EXIT_CODES = frozenset((2, 3, 4, 6, 8, 9, 10, 12, 13, 14, 15))

NA = "N/A"
MIB = 1024 * 1024
UINT_NA = 0xFFFFFFFF


class Unavailable(Exception):
    """The NVML module offers no such function: shown as N/A, like NVML_ERROR_FUNCTION_NOT_FOUND."""


def error_code(exc: BaseException) -> int | None:
    """The NVML return code carried by an exception, if any."""
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


def exit_code_for(exc: BaseException) -> int:
    """The exit code nvidia-smi uses for a failure caused by ``exc``."""
    code = error_code(exc)
    return code if code in _EXIT_CODES else 255


def is_not_supported(exc: BaseException) -> bool:
    """True where nvidia-smi prints N/A rather than the error text."""
    if isinstance(exc, (Unavailable, NotImplementedError)):
        return True
    return error_code(exc) in (ERROR_NOT_SUPPORTED, ERROR_FUNCTION_NOT_FOUND)


def error_text(exc: BaseException) -> str:
    """What nvidia-smi prints in place of a value whose NVML call failed."""
    if is_not_supported(exc):
        return NA
    text = str(exc)
    return text if text else "Unknown Error"


def to_str(value: t.Any) -> str:
    """NVML strings arrive as ``bytes`` from ctypes fields and as ``str`` from wrappers."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class Outcome:
    """The value of one NVML call, or the error it raised."""

    __slots__ = ("value", "error")

    def __init__(self, value: t.Any = None, error: BaseException | None = None) -> None:
        self.value = value
        self.error = error

    @property
    def ok(self) -> bool:
        """True when the call succeeded."""
        return self.error is None

    def text(self, fmt: t.Callable[[t.Any], str] = str) -> str:
        """The formatted value, or N/A / the error text as nvidia-smi prints it."""
        if self.error is None:
            return fmt(self.value)
        return error_text(self.error)


class Session:
    """An initialised NVML library: wraps the ``pynvml`` module the tool was given."""

    def __init__(self, module: t.Any) -> None:
        self.module = module
        base = getattr(module, "NVMLError", None)
        self._errors: tuple[type[BaseException], ...] = (Unavailable, NotImplementedError)
        if isinstance(base, type) and issubclass(base, BaseException):
            self._errors = self._errors + (base,)

    def const(self, name: str, default: int) -> int:
        """An NVML constant, falling back to its ABI value."""
        value = getattr(self.module, name, default)
        return value if isinstance(value, int) else default

    def call(self, name: str, *args: t.Any, **kwargs: t.Any) -> t.Any:
        """Call an NVML function; raises what it raises, or Unavailable when it does not exist."""
        func = getattr(self.module, name, None)
        if func is None:
            raise Unavailable(name)
        return func(*args, **kwargs)

    def get(self, name: str, *args: t.Any, **kwargs: t.Any) -> Outcome:
        """Call an NVML function and keep its NVML error instead of raising it."""
        try:
            return Outcome(self.call(name, *args, **kwargs))
        except self._errors as exc:
            return Outcome(error=exc)

    def is_error(self, exc: BaseException) -> bool:
        """True for the exceptions that ``get`` turns into an Outcome."""
        return isinstance(exc, self._errors)

    def init(self) -> None:
        """nvmlInit: raises the NVML error when the driver cannot be reached."""
        self.call("nvmlInit")

    def shutdown(self) -> None:
        """nvmlShutdown, ignoring errors (the tool is exiting anyway)."""
        self.get("nvmlShutdown")


class Gpu:
    """One GPU by index, with its NVML handle and a cache of the calls made on it."""

    def __init__(self, session: Session, index: int, handle: t.Any) -> None:
        self.session = session
        self.index = index
        self.handle = handle
        self._cache: dict[tuple[t.Any, ...], Outcome] = {}

    def get(self, name: str, *args: t.Any, **kwargs: t.Any) -> Outcome:
        """Call ``name(handle, *args)`` once per tool run."""
        key = (name, args, tuple(sorted(kwargs.items())))
        if key not in self._cache:
            self._cache[key] = self.session.get(name, self.handle, *args, **kwargs)
        return self._cache[key]

    def text(self, name: str, *args: t.Any, fmt: t.Callable[[t.Any], str] = str) -> str:
        """``get`` rendered as nvidia-smi renders a value."""
        return self.get(name, *args).text(fmt)

    def memory(self) -> Outcome:
        """nvmlDeviceGetMemoryInfo, version 2 (the one that reports reserved memory)."""
        version = self.session.const("nvmlMemory_v2", 0x02000028)
        return self.get("nvmlDeviceGetMemoryInfo", version=version)

    def pci(self) -> Outcome:
        """nvmlDeviceGetPciInfo (v3 in nvidia-ml-py 13)."""
        return self.get("nvmlDeviceGetPciInfo")

    def bus_id(self) -> str:
        """The PCI bus id as nvidia-smi prints it (00000000:00:06.0), or N/A."""
        return self.pci().text(lambda info: to_str(info.busId))

    def mig_mode(self) -> Outcome:
        """[current, pending] MIG mode; NOT_SUPPORTED on GPUs without MIG."""
        return self.get("nvmlDeviceGetMigMode")

    def mig_enabled(self) -> bool:
        """True when MIG mode is currently enabled."""
        mode = self.mig_mode()
        return mode.ok and bool(mode.value[0])

    def mig_devices(self) -> list[tuple[int, t.Any]]:
        """(index, handle) of each existing MIG device, in NVML order."""
        if not self.mig_enabled():
            return []
        count = self.get("nvmlDeviceGetMaxMigDeviceCount")
        if not count.ok:
            return []
        found = []
        for index in range(int(count.value)):
            handle = self.session.get("nvmlDeviceGetMigDeviceHandleByIndex", self.handle, index)
            if handle.ok:
                found.append((index, handle.value))
        return found


class GpuUnavailable(Exception):
    """A GPU whose handle cannot be had (fallen off the bus, or an injected fault)."""

    def __init__(self, index: int, where: str, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.index = index
        self.where = where
        self.cause = cause

    @property
    def exit_code(self) -> int:
        """The exit code nvidia-smi ends with after this error."""
        return exit_code_for(self.cause)

    def message(self) -> str:
        """The line the real tool prints for a GPU it cannot open."""
        reason = error_text(self.cause) if not is_not_supported(self.cause) else "Not Supported"
        if error_code(self.cause) == ERROR_GPU_IS_LOST:
            reason = f"{reason}. Reboot the system to recover this GPU"
        return f"Unable to determine the device handle for GPU {self.where}: {reason}"


def open_gpu(session: Session, index: int) -> Gpu:
    """Get the handle of GPU ``index`` and check it answers, as nvidia-smi does before printing it.

    A GPU that fell off the bus fails here: either nvmlDeviceGetHandleByIndex itself fails, or
    the handle is returned but the device no longer answers (NVML_ERROR_GPU_IS_LOST).
    """
    try:
        handle = session.call("nvmlDeviceGetHandleByIndex", index)
    except Exception as exc:  # pylint: disable=broad-exception-caught
        if not session.is_error(exc):
            raise
        raise GpuUnavailable(index, str(index), exc) from exc
    gpu = Gpu(session, index, handle)
    pci = gpu.pci()
    where = short_bus_id(to_str(pci.value.busId)) if pci.ok else str(index)
    for probe in (pci, gpu.get("nvmlDeviceGetUUID")):
        if not probe.ok and error_code(probe.error) == ERROR_GPU_IS_LOST:
            raise GpuUnavailable(index, where, probe.error)
    return gpu


def short_bus_id(bus_id: str) -> str:
    """00000000:00:06.0 -> 0000:00:06.0, the form nvidia-smi uses in its error lines."""
    domain, sep, rest = bus_id.partition(":")
    if sep and len(domain) == 8:
        return f"{domain[4:]}:{rest}"
    return bus_id
