"""Stand-ins for NVIDIA daemons that keep the GPUs open: nvidia-persistenced and nv-fabricmanager.

Each opens an NVML session at start (so it holds every GPU, in /proc/<pid>/fd and in the simulator's sessions) and
keeps it until SIGTERM or SIGINT; then nvmlShutdown and exit 0. It stays in the foreground (its unit is
Type=simple); the real options the NVIDIA units pass are accepted. nvidia-persistenced enables persistence mode on
every GPU once it holds them (unless --no-persistence-mode) and disables it again when it stops, as the real daemon
does; nothing else changes.
"""
from __future__ import annotations

import ctypes
import signal
import sys

DAEMONS = {
    # name: (command name as the kernel shows it: 15 characters, options accepted with a value, flags)
    "nvidia-persistenced": ("nvidia-persiste", {"--user", "-u", "--group", "-g"},
                            {"--verbose", "-V", "--foreground", "-f", "--persistence-mode", "--no-persistence-mode",
                             "--nvidia-cfg-path"}),
    "nv-fabricmanager": ("nv-fabricmanage", {"-c", "--config"}, {"-r", "--restart"}),
}


def _set_comm(name: str) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, ctypes.c_char_p(name.encode()), 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def persistence_mode(enabled: bool) -> None:
    """Persistence mode of every GPU in the simulator's state (the daemon's own effect, not an NVML call: the real
    daemon sets it through the driver, and no NVML mutation is counted)."""
    from gpusim import settings, store  # pylint: disable=import-outside-toplevel
    try:
        with store.transaction() as state:
            settings.set_persistence(state, enabled)
    except (OSError, store.StateMissing) as exc:
        print("nvidia-persistenced: cannot set persistence mode: %s" % exc, file=sys.stderr)


def main(daemon: str, argv: list[str]) -> int:
    comm, with_value, flags = DAEMONS[daemon]
    i = 0
    while i < len(argv):
        if argv[i] in with_value:
            i += 1
        elif argv[i].split("=", 1)[0] not in flags | with_value:
            print("%s: unrecognized option: %s" % (daemon, argv[i]), file=sys.stderr)
            return 2
        i += 1
    _set_comm(comm)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    import pynvml  # pylint: disable=import-outside-toplevel  # the host's NVML (the stand-in on a simulated host)
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        print("%s: failed to initialize NVML: %s" % (daemon, exc), file=sys.stderr)
        return 1
    persistence = daemon == "nvidia-persistenced" and "--no-persistence-mode" not in argv
    if persistence:
        persistence_mode(True)
    print("%s: holding %d GPU(s)" % (daemon, pynvml.nvmlDeviceGetCount()), flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    if persistence:
        persistence_mode(False)
    pynvml.nvmlShutdown()
    return 0
