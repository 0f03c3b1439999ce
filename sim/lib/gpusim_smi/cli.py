"""Command line of the nvidia-smi stand-in: parse, open NVML, dispatch, exit like the real tool."""

from __future__ import annotations

import sys
import typing as t

from . import listing, mig, query, reset
from .nvml import (
    ERROR_DRIVER_NOT_LOADED, ERROR_LIB_RM_VERSION_MISMATCH, ERROR_LIBRARY_NOT_FOUND, ERROR_NO_PERMISSION,
    Gpu, GpuUnavailable, Session, error_code, error_text, exit_code_for, open_gpu, to_str,
)
from .report import cuda_version, gpu_node, timestamp
from .tree import leaf, render_text, render_xml

DRIVER_NOT_LOADED = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running.\n\n"
)
LIBRARY_NOT_FOUND = (
    "NVIDIA-SMI couldn't find libnvidia-ml.so library in your system. Please make sure that the NVIDIA Display Driver "
    "is properly installed and present in your system.\nPlease also try adding directory that contains libnvidia-ml.so "
    "to your system PATH.\n"
)
NO_DEVICES = "No devices were found\n"
OPTION_NOT_VALID = "ERROR: Option {} is not valid for this command. Please run 'nvidia-smi -h' for help.\n\n"
SUPPORTED = ("-L | -q [-x] | --query-gpu=F[,F...] --format=csv[,noheader][,nounits] | mig -lgip | mig -lgipp, each with [-i ID]"
             " | -r -i ID")


class Unsupported(Exception):
    """Arguments the stand-in does not implement: refused loudly, never answered wrongly."""


class Refused(Exception):
    """Arguments the real tool itself refuses: its message (stdout) and exit code."""

    def __init__(self, text: str, code: int) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


class Request:  # pylint: disable=too-few-public-methods
    """What was asked on the command line."""

    def __init__(self) -> None:
        self.mode = ""
        self.ids: list[str] | None = None
        self.fields: list[str] = []
        self.header = True
        self.units = True


def _value(argv: list[str], pos: int, option: str) -> tuple[str, int]:
    """The value of an option given as '-i 0', '-i=0', '--id=0' or '--id 0'."""
    arg = argv[pos]
    if "=" in arg and arg.split("=", 1)[0] == option:
        return arg.split("=", 1)[1], pos + 1
    if pos + 1 >= len(argv):
        raise Unsupported(arg)
    return argv[pos + 1], pos + 2


def parse(argv: list[str]) -> Request:
    """Parse the supported subset of nvidia-smi's command line."""
    request = Request()
    flags: set[str] = set()
    fmt = None
    query_fields = None
    args = list(argv)
    if args and args[0] == "mig":
        flags.add("mig")
        args = args[1:]
    pos = 0
    while pos < len(args):
        arg = args[pos]
        name = arg.split("=", 1)[0]
        if name in ("-i", "--id"):
            value, pos = _value(args, pos, name)
            request.ids = [part.strip() for part in value.split(",") if part.strip()]
            continue
        if name == "--query-gpu" and "mig" not in flags:
            query_fields, pos = _value(args, pos, name)
            continue
        if name == "--format" and "mig" not in flags:
            fmt, pos = _value(args, pos, name)
            continue
        known = {
            "-L": "list", "--list-gpus": "list", "-q": "query", "--query": "query", "-x": "xml", "--xml-format": "xml",
            "-r": "reset", "--gpu-reset": "reset",
        } if "mig" not in flags else {
            "-lgip": "lgip", "--list-gpu-instance-profiles": "lgip",
            "-lgipp": "lgipp", "--list-gpu-instance-possible-placements": "lgipp",
        }
        if arg not in known or known[arg] in flags:
            raise Unsupported(arg)
        flags.add(known[arg])
        pos += 1
    request.mode = _mode(flags, query_fields, fmt)
    if request.mode == "reset" and request.ids is None:
        raise Unsupported("-r without -i")  # the real tool resets every GPU; the stand-in resets one at a time
    if request.mode == "list" and request.ids is not None:
        raise Refused(OPTION_NOT_VALID.format("-i"), 2)  # as the real 580 tool answers '-L -i N'
    if request.mode == "csv":
        options = [part.strip() for part in (fmt or "").split(",")]
        if "csv" not in options or any(part not in ("csv", "noheader", "nounits") for part in options):
            raise Unsupported(f"--format={fmt}")
        request.header = "noheader" not in options
        request.units = "nounits" not in options
        request.fields = query.resolve(query_fields or "")
    return request


def _mode(flags: set[str], query_fields: str | None, fmt: str | None) -> str:
    modes = {
        frozenset({"list"}): "list",
        frozenset({"query"}): "text",
        frozenset({"query", "xml"}): "xml",
        frozenset({"reset"}): "reset",
        frozenset({"mig", "lgip"}): "lgip",
        frozenset({"mig", "lgipp"}): "lgipp",
    }
    if query_fields is not None and fmt is not None and not flags:
        return "csv"
    if query_fields is None and fmt is None and frozenset(flags) in modes:
        return modes[frozenset(flags)]
    raise Unsupported("combination")


def _init_failure(exc: BaseException) -> tuple[str, int]:
    code = error_code(exc)
    if code == ERROR_DRIVER_NOT_LOADED:
        return DRIVER_NOT_LOADED, 9
    if code == ERROR_LIBRARY_NOT_FOUND:
        return LIBRARY_NOT_FOUND, 12
    if code == ERROR_LIB_RM_VERSION_MISMATCH:
        text = "Failed to initialize NVML: Driver/library version mismatch\n"
        # Newer tools add the library's major.minor (e.g. "NVML library version: 580.159"); the NVML stand-in
        # attaches the installed version to the error, a real binding does not (then only the first line).
        library = getattr(exc, "library_version", None)
        if library:
            text += "NVML library version: %s\n" % ".".join(str(library).split(".")[:2])
        return text, 18
    if code == ERROR_NO_PERMISSION:
        return "Failed to initialize NVML: Insufficient Permissions\n", 4
    return f"Failed to initialize NVML: {error_text(exc)}\n", exit_code_for(exc)


class Run:
    """One invocation against an initialised NVML session."""

    def __init__(self, session: Session, out: t.TextIO, err: t.TextIO) -> None:
        self.session = session
        self.out = out
        self.err = err
        self.code = 0
        self.count = 0

    def fail(self, code: int) -> None:
        """Remember the first non-zero exit code."""
        if not self.code:
            self.code = code

    def select(self, ids: list[str] | None) -> list[int] | None:
        """GPU indices for -i (index, UUID or PCI bus id), or None when one matches no GPU."""
        if ids is None:
            return list(range(self.count))
        chosen = []
        for wanted in ids:
            index = int(wanted) if wanted.isdigit() else self._find(wanted)
            if index is None or index >= self.count:
                return None
            chosen.append(index)
        return chosen

    def _find(self, wanted: str) -> int | None:
        target = wanted.upper()
        for index in range(self.count):
            try:
                gpu = open_gpu(self.session, index)
            except GpuUnavailable:
                continue
            uuid = gpu.text("nvmlDeviceGetUUID", fmt=to_str).upper()
            bus = gpu.bus_id().upper()
            if target in (uuid, bus) or (len(target) < len(bus) and bus.endswith(target)):
                return index
        return None

    def open_all(self, indices: list[int], stream: t.TextIO) -> list[Gpu]:
        """Open each GPU; a GPU that cannot be opened is reported on ``stream`` and skipped."""
        gpus = []
        for index in indices:
            try:
                gpus.append(open_gpu(self.session, index))
            except GpuUnavailable as exc:
                stream.write(exc.message() + "\n")
                self.fail(exc.exit_code)
        return gpus

    def execute(self, request: Request) -> int:
        """Run the request; returns the exit code."""
        count = self.session.get("nvmlDeviceGetCount")
        if not count.ok:
            self.out.write(f"Unable to determine the number of GPUs: {error_text(count.error)}\n")
            return exit_code_for(count.error)
        self.count = int(count.value)
        indices = self.select(request.ids) if self.count else None
        if not indices:
            self.out.write(NO_DEVICES)
            return 6
        getattr(self, "do_" + request.mode)(request, indices)
        return self.code

    def do_list(self, _request: Request, indices: list[int]) -> None:
        """-L"""
        for index in indices:
            try:
                gpu = open_gpu(self.session, index)
            except GpuUnavailable as exc:
                self.out.write(exc.message() + "\n")
                self.fail(exc.exit_code)
                continue
            self.out.write("\n".join(listing.lines(gpu)) + "\n")

    def _system_nodes(self) -> list:
        return [
            leaf("timestamp", "Timestamp", timestamp()),
            leaf("driver_version", "Driver Version", self.session.get("nvmlSystemGetDriverVersion").text(to_str)),
            leaf("cuda_version", "CUDA Version", self.session.get("nvmlSystemGetCudaDriverVersion").text(cuda_version)),
            leaf("attached_gpus", "Attached GPUs", str(self.count)),
        ]

    def do_xml(self, _request: Request, indices: list[int]) -> None:
        """-q -x: the XML document; a GPU that cannot be opened is reported on stderr."""
        lines = ['<?xml version="1.0" ?>', '<!DOCTYPE nvidia_smi_log SYSTEM "nvsmi_device_v13.dtd">', "<nvidia_smi_log>"]
        for node in self._system_nodes():
            render_xml(node, 1, lines)
        for gpu in self.open_all(indices, self.err):
            render_xml(gpu_node(gpu), 1, lines)
            lines.append("")
        lines.append("</nvidia_smi_log>")
        self.out.write("\n".join(lines) + "\n")

    def do_text(self, _request: Request, indices: list[int]) -> None:
        """-q: the text report."""
        system = self._system_nodes()
        lines = ["", "==============NVSMI LOG==============", ""]
        for node in system[:3]:
            render_text(node, 0, lines)
        lines.append("")
        render_text(system[3], 0, lines)
        self.out.write("\n".join(lines) + "\n")
        for index in indices:
            try:
                gpu = open_gpu(self.session, index)
            except GpuUnavailable as exc:
                self.out.write(exc.message() + "\n")
                self.fail(exc.exit_code)
                continue
            block: list[str] = []
            render_text(gpu_node(gpu), 0, block)
            self.out.write("\n".join(block) + "\n\n")

    def do_csv(self, request: Request, indices: list[int]) -> None:
        """--query-gpu"""
        if request.header:
            self.out.write(query.header(request.fields) + "\n")
        ctx = query.Context(self.session, self.count)
        for index in indices:
            try:
                gpu = open_gpu(self.session, index)
            except GpuUnavailable as exc:
                self.out.write(exc.message() + "\n")
                self.fail(exc.exit_code)
                continue
            self.out.write(query.row(ctx, gpu, request.fields, request.units) + "\n")

    def _mig_gpus(self, indices: list[int]) -> list[Gpu]:
        gpus = [gpu for gpu in self.open_all(indices, self.out) if mig.mig_capable(gpu)]
        if not gpus:
            self.out.write(mig.NO_MIG_DEVICES + "\n")
            self.fail(6)
        return gpus

    def do_reset(self, _request: Request, indices: list[int]) -> None:
        """-r -i ID: reset each GPU named (see reset.py)."""
        for gpu in self.open_all(indices, self.out):
            text, code = reset.reset_gpu(gpu.text("nvmlDeviceGetUUID", fmt=to_str), gpu.bus_id())
            self.out.write(text)
            if code:
                self.fail(code)

    def do_lgip(self, _request: Request, indices: list[int]) -> None:
        """mig -lgip"""
        gpus = self._mig_gpus(indices)
        if gpus:
            self.out.write("\n".join(mig.lgip(gpus)) + "\n")

    def do_lgipp(self, _request: Request, indices: list[int]) -> None:
        """mig -lgipp"""
        gpus = self._mig_gpus(indices)
        if gpus:
            lines = mig.lgipp(gpus)
            if lines:
                self.out.write("\n".join(lines) + "\n")


def main(argv: list[str] | None = None, module: t.Any = None, out: t.TextIO | None = None, err: t.TextIO | None = None) -> int:
    """Run the stand-in; returns the exit code the real nvidia-smi would return."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        request = parse(argv)
    except Unsupported:
        err.write(f"gpusim nvidia-smi: unsupported arguments: {' '.join(argv) or '(none)'}\n")
        err.write(f"gpusim nvidia-smi: this stand-in implements: {SUPPORTED}\n")
        return 2
    except Refused as exc:
        out.write(exc.text)
        return exc.code
    except query.QueryError as exc:
        if exc.valid:
            err.write(f"gpusim nvidia-smi: unsupported arguments: field {exc.name!r} is valid but not simulated\n")
        else:
            out.write(f'Field "{exc.name}" is not a valid field to query.\n\n')
        return 2
    if module is None:
        try:
            import pynvml as module  # pylint: disable=import-outside-toplevel
        except ImportError:
            out.write(LIBRARY_NOT_FOUND)
            return 12
    session = Session(module)
    try:
        session.init()
    except Exception as exc:  # pylint: disable=broad-exception-caught
        if not session.is_error(exc):
            raise
        text, code = _init_failure(exc)
        out.write(text)
        return code
    try:
        return Run(session, out, err).execute(request)
    finally:
        session.shutdown()
