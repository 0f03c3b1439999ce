"""Thin ctypes wrappers over the Linux system calls the container init needs (stdlib only)."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

PR_CAPBSET_DROP = 24

_SYSCALLS = {
    "x86_64": {"clone": 56, "pivot_root": 155},
    "aarch64": {"clone": 220, "pivot_root": 41},
}


def _nr(name: str) -> int:
    try:
        return _SYSCALLS[platform.machine()][name]
    except KeyError:
        raise OSError(f"fleet: no syscall number for {name} on {platform.machine()}") from None


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def clone(flags: int) -> int:
    """fork() into new namespaces; returns 0 in the child. The caller must be single-threaded."""
    import signal
    return _check(_libc.syscall(ctypes.c_long(_nr("clone")), ctypes.c_ulong(flags | signal.SIGCHLD),
                                None, None, None, None), "clone")


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def _enc(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    _check(_libc.mount(_enc(source), _enc(target), _enc(fstype), ctypes.c_ulong(flags), _enc(data)),
           f"mount {fstype or ''} {source} on {target}")


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(os.fsencode(target), ctypes.c_int(flags)), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(ctypes.c_long(_nr("pivot_root")), os.fsencode(new_root), os.fsencode(put_old)),
           "pivot_root")


def sethostname(name: str) -> None:
    b = name.encode()
    _check(_libc.sethostname(b, ctypes.c_size_t(len(b))), "sethostname")


def drop_bounding_caps(caps: list[int]) -> None:
    for cap in caps:
        if _libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0) < 0 and ctypes.get_errno() != 22:
            raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {cap})")
