"""Stand-in for nvidia-modprobe: make the NVIDIA device files a simulated host needs (see sim/README.md).

``nvidia-modprobe -f|--nvidia-capability-device-file <cap file>`` (repeatable) reads ``DeviceFileMinor``,
``DeviceFileMode`` (decimal, as the driver writes it), ``DeviceFileUID``/``DeviceFileGID`` (when present) and
``DeviceFileModify`` from the /proc/driver/nvidia/capabilities/... file, creates /dev/nvidia-caps (0755) and makes
/dev/nvidia-caps/nvidia-cap<minor>, a character device of the nvidia-caps major, with that mode and owner. Paths
outside /proc/driver/nvidia/capabilities/ are refused, as by the real tool. ``-c|--create-nvidia-device-file N``
makes /dev/nvidiaN where it is missing; ``-u`` (nvidia-uvm), ``-m`` (nvidia-modeset) and ``-s`` (silent) change
nothing on a simulated host, whose modules are loaded and whose /dev/nvidia-uvm is made at boot. Any other option
fails (exit 2).

The real nvidia-caps major is dynamic (``nvidia-caps`` in /proc/devices); a simulated host's /proc/devices is the
machine's, so the stand-in uses the fixed major CAPS_MAJOR. A fleet host has no CAP_MKNOD: there the node is a hard
link of the one its boot made under /dev/.gpusim-nodes (same device numbers), which needs no capability.
"""
from __future__ import annotations

import os
import stat
import sys

CAPS_MAJOR = 508  # fixed stand-in for the dynamic "nvidia-caps" character major
NVIDIA_MAJOR = 195
UVM_MAJOR = 510  # fixed stand-in for the dynamic "nvidia-uvm" character major
CAP_PREFIX = "/proc/driver/nvidia/capabilities/"
STASH = ".gpusim-nodes"  # under /dev on a fleet host: nodes made at boot, linked into place


def _proc_path(path: str) -> str:
    """Where to read a /proc path: $GPUSIM_PROC replaces /proc (tests)."""
    base = os.environ.get("GPUSIM_PROC")
    return os.path.join(base, path[len("/proc/"):]) if base else path


def _dev() -> str:
    return os.environ.get("GPUSIM_DEV") or "/dev"


def read_cap_file(path: str) -> dict[str, int]:
    attrs: dict[str, int] = {}
    with open(_proc_path(path), encoding="utf-8") as handle:
        for line in handle:
            key, sep, value = line.partition(":")
            if sep and key.strip().startswith("DeviceFile"):
                try:
                    attrs[key.strip()] = int(value.strip())
                except ValueError:
                    pass
    if "DeviceFileMinor" not in attrs:
        raise ValueError("no DeviceFileMinor in %s" % path)
    return attrs


def make_node(path: str, major: int, minor: int, mode: int, uid: int = 0, gid: int = 0) -> None:
    """A character device at ``path`` (replacing one with other numbers); mknod, else a link from the boot stash."""
    want = os.makedev(major, minor)
    try:
        st = os.lstat(path)
        if not stat.S_ISCHR(st.st_mode) or st.st_rdev != want:
            os.unlink(path)
            st = None
    except FileNotFoundError:
        st = None
    if st is None:
        try:
            os.mknod(path, stat.S_IFCHR | mode, want)
        except PermissionError:
            stash = os.path.join(_dev(), STASH, os.path.relpath(path, _dev()))
            sst = os.lstat(stash)  # FileNotFoundError: nothing to link, reported by the caller
            if not stat.S_ISCHR(sst.st_mode) or sst.st_rdev != want:
                raise
            os.link(stash, path)
    os.chmod(path, mode)
    os.chown(path, uid, gid)


def capability_node(cap_path: str) -> str:
    norm = os.path.normpath(cap_path)
    if not norm.startswith(CAP_PREFIX):
        raise ValueError("%s is not a file under %s" % (cap_path, CAP_PREFIX))
    attrs = read_cap_file(norm)
    caps_dir = os.path.join(_dev(), "nvidia-caps")
    if not os.path.isdir(caps_dir):
        os.mkdir(caps_dir, 0o755)
        os.chmod(caps_dir, 0o755)
    node = os.path.join(caps_dir, "nvidia-cap%d" % attrs["DeviceFileMinor"])
    if attrs.get("DeviceFileModify", 1):
        make_node(node, CAPS_MAJOR, attrs["DeviceFileMinor"], attrs.get("DeviceFileMode", 0o444) & 0o7777,
                  attrs.get("DeviceFileUID", 0), attrs.get("DeviceFileGID", 0))
    return node


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    caps: list[str] = []
    minors: list[int] = []
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, inline = arg.partition("=")
        if name in ("-f", "--nvidia-capability-device-file", "-c", "--create-nvidia-device-file"):
            if eq:
                value = inline
            elif i + 1 < len(args):
                i += 1
                value = args[i]
            else:
                print("nvidia-modprobe: option %s needs an argument" % arg, file=sys.stderr)
                return 2
            if name in ("-f", "--nvidia-capability-device-file"):
                caps.append(value)
            elif value.isdigit():
                minors.append(int(value))
            else:
                print("nvidia-modprobe: invalid minor number %r" % value, file=sys.stderr)
                return 2
        elif arg not in ("-u", "--unified-memory", "-m", "--modeset", "-s", "--silent"):
            print("nvidia-modprobe: unrecognized option: %s" % arg, file=sys.stderr)
            return 2
        i += 1
    status = 0
    for minor in minors:
        try:
            make_node(os.path.join(_dev(), "nvidia%d" % minor), NVIDIA_MAJOR, minor, 0o666)
        except (OSError, ValueError) as exc:
            print("nvidia-modprobe: /dev/nvidia%d: %s" % (minor, exc), file=sys.stderr)
            status = 1
    for path in caps:
        try:
            capability_node(path)
        except (OSError, ValueError) as exc:
            print("nvidia-modprobe: %s: %s" % (path, exc), file=sys.stderr)
            status = 1
    return status
