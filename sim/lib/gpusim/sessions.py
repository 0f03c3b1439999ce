"""NVML client sessions: which processes have the GPUs open, as the driver sees it.

A process that calls ``nvmlInit`` (the NVML stand-in) registers one small file ``$GPUSIM_ROOT/sessions/<pid>``
(``<pid> <start time> <comm>``, start time = field 22 of /proc/<pid>/stat) and holds open file descriptors on the
GPU device nodes, as libnvidia-ml does: ``/dev/nvidiactl`` and ``/dev/nvidia<minor>`` of every GPU it attaches
(opened ``O_PATH``, so a node whose major no driver serves opens too). The last ``nvmlShutdown`` closes them and
removes the file. A session counts while its process lives: /proc/<pid> exists and its start time is the one
recorded (a reused PID does not count). Nothing here runs on the warm path of NVML calls.
"""
from __future__ import annotations

import os
from typing import Any

SESSIONS_DIR = "sessions"
DEV_ENV = "GPUSIM_DEV"  # where the device nodes are (default /dev); tests point it at a directory of their own
PROC_ENV = "GPUSIM_PROC"  # the procfs to check liveness in (default /proc)


def dev_dir() -> str:
    return os.environ.get(DEV_ENV) or "/dev"


def proc_dir() -> str:
    return os.environ.get(PROC_ENV) or "/proc"


def start_time(pid: int, proc: str | None = None) -> int | None:
    """Field 22 (starttime) of /proc/<pid>/stat, or None when there is no such process."""
    try:
        with open(os.path.join(proc or proc_dir(), str(pid), "stat"), "rb") as handle:
            raw = handle.read().decode("utf-8", "replace")
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: the fields after it start after the last ')'
    rest = raw[raw.rfind(")") + 2:].split()
    try:
        return int(rest[19])  # rest[0] is field 3 (state): field 22 is rest[19]
    except (IndexError, ValueError):
        return None


def comm(pid: int, proc: str | None = None) -> str:
    try:
        with open(os.path.join(proc or proc_dir(), str(pid), "comm"), encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return "?"


class Session:
    """This process's session: the registration file and the device node descriptors."""

    def __init__(self, root: str, minors: list[int], attach: bool = True) -> None:
        """``attach`` False (NVML_INIT_FLAG_NO_ATTACH, or no GPU): only /dev/nvidiactl is opened and no GPU is held."""
        self.pid = os.getpid()
        self.path: str | None = None
        self.fds: list[int] = []
        if attach:
            self._register(root)
        nodes = os.path.join(dev_dir(), "nvidiactl"), *(os.path.join(dev_dir(), "nvidia%d" % m) for m in minors)
        for node in nodes:
            try:
                self.fds.append(os.open(node, os.O_PATH | os.O_CLOEXEC))
            except OSError:
                pass  # no such node (a host without device nodes): nothing to hold

    def _register(self, root: str) -> None:
        directory = os.path.join(root, SESSIONS_DIR)
        try:
            if not os.path.isdir(directory):
                os.makedirs(directory, exist_ok=True)
                os.chmod(directory, 0o1777)  # any NVML client may register, as any may open /dev/nvidia*
            path = os.path.join(directory, str(self.pid))
            started = start_time(self.pid)
            with open(path + ".tmp", "w", encoding="utf-8") as handle:
                handle.write("%d %s %s\n" % (self.pid, started if started is not None else "-", comm(self.pid)))
            os.replace(path + ".tmp", path)
            self.path = path
        except OSError:
            self.path = None  # a state directory this client cannot write: the descriptors still show it

    def close(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []
        if self.path is not None and os.getpid() == self.pid:  # a forked child never ends its parent's session
            try:
                os.unlink(self.path)
            except OSError:
                pass
        self.path = None


def live(root: str) -> list[dict[str, Any]]:
    """The live sessions under ``root``: [{pid, comm}], sorted by pid; dead ones are skipped (and removed where
    this process may)."""
    directory = os.path.join(root, SESSIONS_DIR)
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    result = []
    for name in names:
        if not name.isdigit():
            continue
        path = os.path.join(directory, name)
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                fields = handle.read().split(None, 2)
        except OSError:
            continue
        pid = int(name)
        recorded = fields[1] if len(fields) > 1 else "-"
        now = start_time(pid)
        if now is None or (recorded != "-" and recorded != str(now)):
            try:
                os.unlink(path)
            except OSError:
                pass
            continue
        result.append({"pid": pid, "comm": fields[2].strip() if len(fields) > 2 else "?"})
    return sorted(result, key=lambda s: s["pid"])


def clear(root: str) -> None:
    """A reboot: every session is gone with its process."""
    directory = os.path.join(root, SESSIONS_DIR)
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            pass


def others(root: str, exclude: int | None = None) -> list[dict[str, Any]]:
    """Live sessions of processes other than ``exclude`` (default: this process)."""
    me = os.getpid() if exclude is None else exclude
    return [s for s in live(root) if s["pid"] != me]
