"""`nvidia-ctk cdi generate` and `nvidia-ctk cdi list`, with the real tool's options, logging and exit codes.

Environment (simulator only): GPUSIM_CTK_DEV_ROOT (default /) and GPUSIM_CTK_PROC_ROOT (default /proc) point the
tool at another /dev and /proc, for tests that run it outside a fleet host. `--dev-root` does the same for /dev, as
the real tool's flag does.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile

import pynvml

from gpusim_ctk import render, spec as specmod

VERSION = "1.18.0"
SPEC_DIRS = ("/etc/cdi", "/var/run/cdi")


def _log(level: str, message: str) -> None:
    sys.stderr.write("%s[0000] %s\n" % (level, message))


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        _log("ERRO", message)
        sys.exit(1)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nvidia-ctk", add_help=True)
    parser.add_argument("--version", action="store_true")
    parser.add_argument("--debug", "-d", action="store_true")
    sub = parser.add_subparsers(dest="command")
    cdi = sub.add_parser("cdi")
    cdi_sub = cdi.add_subparsers(dest="cdi_command")
    gen = cdi_sub.add_parser("generate")
    gen.add_argument("--output", default="")
    gen.add_argument("--format", default="", choices=["", "yaml", "json"])
    gen.add_argument("--device-name-strategy", action="append", default=[], choices=list(specmod.STRATEGIES))
    gen.add_argument("--dev-root", default=os.environ.get("GPUSIM_CTK_DEV_ROOT", "/"))
    gen.add_argument("--driver-root", default="/")
    gen.add_argument("--mode", default="auto", choices=["auto", "nvml"])
    gen.add_argument("--vendor", "--cdi-vendor", default="nvidia.com")
    gen.add_argument("--class", "--cdi-class", dest="klass", default="gpu")
    lst = cdi_sub.add_parser("list")
    lst.add_argument("--spec-dir", action="append", default=[])
    return parser


def _format(args) -> str:
    if args.format:
        return args.format
    ext = os.path.splitext(args.output)[1].lower()
    return "json" if ext == ".json" else "yaml"


def _write(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".nvidia-ctk-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def generate(args) -> int:
    strategies = args.device_name_strategy or list(specmod.DEFAULT_STRATEGIES)
    proc_root = os.environ.get("GPUSIM_CTK_PROC_ROOT", "/proc")
    try:
        spec = specmod.generate(strategies, args.dev_root, proc_root)
    except (pynvml.NVMLError_LibraryNotFound, pynvml.NVMLError_DriverNotLoaded) as exc:
        _log("ERRO", "failed to generate CDI spec: failed to initialize NVML: %s" % exc)
        return 1
    except (specmod.CtkError, pynvml.NVMLError) as exc:
        _log("ERRO", "failed to generate CDI spec: %s" % exc)
        return 1
    spec["kind"] = "%s/%s" % (args.vendor, args.klass)
    _log("INFO", "Auto-detected mode as 'nvml'")
    text = render.to_json(spec) if _format(args) == "json" else render.to_yaml(spec)
    if args.output:
        try:
            _write(args.output, text)
        except OSError as exc:
            _log("ERRO", "failed to save CDI spec: %s" % exc)
            return 1
        _log("INFO", "Generated CDI spec with version %s" % spec["cdiVersion"])
    else:
        sys.stdout.write(text)
    return 0


def list_devices(args) -> int:
    found = []
    for directory in args.spec_dir or SPEC_DIRS:
        for path in sorted(glob.glob(os.path.join(directory, "*.yaml")) + glob.glob(os.path.join(directory, "*.json"))):
            try:
                with open(path, encoding="utf-8") as f:
                    kind, names = render.names_from_text(f.read())
            except (OSError, ValueError) as exc:
                _log("WARN", "failed to load CDI spec %s: %s" % (path, exc))
                continue
            found.extend("%s=%s" % (kind, n) for n in names)
    _log("INFO", "Found %d CDI devices" % len(found))
    for name in found:
        print(name)
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.version:
        print("NVIDIA Container Toolkit CLI version %s" % VERSION)
        return 0
    if args.command == "cdi" and args.cdi_command == "generate":
        return generate(args)
    if args.command == "cdi" and args.cdi_command == "list":
        return list_devices(args)
    _log("ERRO", "unsupported command: %s" % " ".join(argv))
    return 1
