"""On-disk state of one simulated host, shared by concurrent processes.

Layout under the root directory (``GPUSIM_ROOT``, default ``/var/lib/gpusim``):

* ``state.json``: the whole host state (see README.md for the format);
* ``state.lock``: lock file; writers hold ``LOCK_EX``, readers ``LOCK_SH``.

A writer serialises to a temporary file in the same directory and ``os.replace``\\ s it over
``state.json``, so a reader never sees a half-written document.  Readers cache the parsed
document keyed by (inode, mtime_ns, size); every writer stamps a strictly increasing
mtime so that two writes within one timestamp tick still change the key.
"""
from __future__ import annotations

import contextlib
import copy
import errno
import fcntl
import json
import os
import tempfile
import time
from typing import Any, Iterator

DEFAULT_ROOT = "/var/lib/gpusim"
STATE_FILE = "state.json"
LOCK_FILE = "state.lock"
FORMAT_VERSION = 1


class StateMissing(Exception):
    """The root has no state file: the host has no simulated GPUs configured."""


def root_dir(root: str | None = None) -> str:
    """The state directory: explicit argument, else $GPUSIM_ROOT, else the default."""
    return root or os.environ.get("GPUSIM_ROOT") or DEFAULT_ROOT


def state_path(root: str | None = None) -> str:
    return os.path.join(root_dir(root), STATE_FILE)


_cache: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}
_paths: dict[str, str] = {}


def _key(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_mtime_ns, st.st_size)


@contextlib.contextmanager
def _locked(root: str, mode: int, create: bool) -> Iterator[None]:
    path = os.path.join(root, LOCK_FILE)
    if create:
        os.makedirs(root, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    else:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            # A state written by hand (or copied) without its lock file: nothing to serialise against.
            yield
            return
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)


def load(root: str | None = None) -> dict[str, Any]:
    """The current state, read-only by convention (callers must not mutate it).

    Cheap when nothing changed since the last call: one stat(2).
    """
    root = root_dir(root)
    path = _paths.get(root)
    if path is None:
        path = _paths[root] = os.path.join(root, STATE_FILE)
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise StateMissing(path) from exc
    hit = _cache.get(path)
    if hit is not None and hit[0] == _key(st):
        return hit[1]
    with _locked(root, fcntl.LOCK_SH, create=False):
        try:
            with open(path, "rb") as handle:
                st = os.fstat(handle.fileno())
                data = json.loads(handle.read())
        except FileNotFoundError as exc:
            raise StateMissing(path) from exc
    _cache[path] = (_key(st), data)
    return data


def _write(root: str, path: str, data: dict[str, Any]) -> None:
    try:
        previous = os.stat(path).st_mtime_ns
    except FileNotFoundError:
        previous = 0
    fd, tmp = tempfile.mkstemp(prefix=".state.", suffix=".tmp", dir=root)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        stamp = max(time.time_ns(), previous + 1000)
        os.utime(tmp, ns=(stamp, stamp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    st = os.stat(path)
    _cache[path] = (_key(st), copy.deepcopy(data))


@contextlib.contextmanager
def transaction(root: str | None = None, create: bool = False) -> Iterator[dict[str, Any]]:
    """Exclusive read-modify-write of the state.

    Yields a private copy; it is written back when the block exits without an exception.
    ``create=True`` yields an empty dict when no state exists yet (used by ``init``).
    """
    root = root_dir(root)
    path = os.path.join(root, STATE_FILE)
    if not create and not os.path.exists(path):
        raise StateMissing(path)
    with _locked(root, fcntl.LOCK_EX, create=True):
        try:
            with open(path, "rb") as handle:
                data = json.loads(handle.read())
        except FileNotFoundError as exc:
            if not create:
                raise StateMissing(path) from exc
            data = {}
        before = _gpm_rates(data)
        yield data
        _gpm_settle(before, data)
        _write(root, path, data)
        _after_write(root, data)


def _gpm_rates(data: dict[str, Any]) -> dict[str, Any]:
    from . import gpm  # pylint: disable=import-outside-toplevel  # gpm reads models, which stay out of the store
    return gpm.snapshot(data)


def _gpm_settle(before: dict[str, Any], data: dict[str, Any]) -> None:
    """GPM counters: fold in the activity rates that held until this write where the write changed them."""
    from . import gpm  # pylint: disable=import-outside-toplevel
    gpm.settle(before, data, time.time_ns())


def _after_write(root: str, data: dict[str, Any]) -> None:
    """Keep the driver's /proc files (``procfs``) in step with the state, still under the lock."""
    from . import procfs  # pylint: disable=import-outside-toplevel  # procfs reads the state through host
    try:
        procfs.sync(root, data)
    except OSError:
        pass  # a root whose proc tree this writer may not change: the state itself is saved


def replace(data: dict[str, Any], root: str | None = None) -> None:
    """Overwrite the whole state (used by ``init``)."""
    with transaction(root, create=True) as current:
        current.clear()
        current.update(data)


def ensure_writable(root: str | None = None) -> None:
    """Raise PermissionError early when the state cannot be written (clear CLI error)."""
    root = root_dir(root)
    os.makedirs(root, exist_ok=True)
    if not os.access(root, os.W_OK):
        raise PermissionError(errno.EACCES, "state directory is not writable", root)
