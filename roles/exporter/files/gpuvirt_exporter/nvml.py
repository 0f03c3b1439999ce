# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The exporter's only door to NVML: one session, guarded calls, per-call error and support bookkeeping.

A call NVML does not support (NotSupported, or a function this binding or driver lacks) is remembered per GPU and
not made again, so a scrape only pays for what the GPU answers. Any other error is counted per call name and
degrades that one series. GpuIsLost is raised to the caller, which marks the whole GPU down for this scrape.
"""

from __future__ import annotations

import threading

import pynvml


class GpuLost(Exception):
    """The GPU fell off the bus (NVML_ERROR_GPU_IS_LOST)."""


def text(value) -> str:
    """NVML strings are bytes in old bindings and str in new ones."""
    if isinstance(value, bytes):
        return value.decode('utf-8', 'replace')
    return str(value)


class Nvml:
    """nvmlInit once; counts errors per call; remembers calls a GPU does not support."""

    def __init__(self):
        self._lock = threading.Lock()
        self.errors: dict[str, int] = {}
        self._unsupported: set[tuple[str, str]] = set()
        self.initialized = False
        self.init_error = ''
        self._tally = threading.local()  # per thread: calls answered, calls failed (a scrape asks for its own GPU's)

    def tally(self) -> tuple[int, int]:
        """(answered, failed) calls made by this thread so far; NotSupported and NotFound are answers."""
        return getattr(self._tally, 'ok', 0), getattr(self._tally, 'failed', 0)

    def _count(self, ok: bool) -> None:
        if ok:
            self._tally.ok = getattr(self._tally, 'ok', 0) + 1
        else:
            self._tally.failed = getattr(self._tally, 'failed', 0) + 1

    def init(self) -> bool:
        if self.initialized:
            return True
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            self.init_error = text(exc) or exc.__class__.__name__
            self.count_error('nvmlInit')
            return False
        self.initialized = True
        self.init_error = ''
        return True

    def shutdown(self) -> None:
        if self.initialized:
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError:
                pass
            self.initialized = False

    def count_error(self, name: str) -> None:
        with self._lock:
            self.errors[name] = self.errors.get(name, 0) + 1

    def supported(self, scope: str, name: str) -> bool:
        return (scope, name) not in self._unsupported

    def call(self, scope: str, name: str, *args, default=None, remember: bool = True):
        """pynvml.<name>(*args) for the GPU named by scope; default when unsupported or failing, GpuLost when lost.

        remember=False for calls whose support follows a mode that can change at run time (MIG, vGPU instances).
        """
        if remember and (scope, name) in self._unsupported:
            return default
        func = getattr(pynvml, name, None)
        if func is None:
            self._unsupported.add((scope, name))
            return default
        return self.run(scope, name, func, *args, default=default, remember=remember)

    def run(self, scope: str, name: str, func, *args, default=None, remember: bool = True):
        """func(*args) with the bookkeeping of call(); name is what errors are counted under."""
        if remember and (scope, name) in self._unsupported:
            return default
        try:
            value = func(*args)
        except pynvml.NVMLError as exc:
            return self._failed(exc, scope, name, remember, default)
        except (AttributeError, TypeError):
            # the binding has no such function, the loaded library lacks it, or the binding's signature is older (no
            # version argument to nvmlDeviceGetMemoryInfo before nvidia-ml-py 11.515): not supported here
            self._unsupported.add((scope, name))
            return default
        self._count(True)
        return value

    def _failed(self, exc, scope: str, name: str, remember: bool, default):
        """The bookkeeping of a call that raised the NVMLError exc: GpuLost raised for a lost GPU."""
        if isinstance(exc, pynvml.NVMLError_GpuIsLost):
            self.count_error(name)
            self._count(False)
            raise GpuLost(text(exc)) from exc
        if isinstance(exc, (pynvml.NVMLError_NotSupported, pynvml.NVMLError_FunctionNotFound)):
            self._count(True)
            if remember:
                self._unsupported.add((scope, name))
        elif isinstance(exc, pynvml.NVMLError_NotFound):
            self._count(True)  # an index with nothing behind it (a MIG device slot, a vGPU gone since it was listed)
        else:
            self.count_error(name)
            self._count(False)
        return default
