"""gpusimctl: create and poke the simulated GPU state of one host.

Exit status 0 on success; on a bad argument or a refused operation a one-line error naming
the argument goes to stderr and the status is 2 (usage) or 1 (refused).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any, Sequence

from . import host, models, sessions, store
from .errors import SimError, parse_error


class CliError(Exception):
    """A one-line error for the user; ``status`` is the exit code."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise CliError("gpusimctl: " + message)


def _gpu_spec(text: str) -> tuple[str, int]:
    key, _colon, count = text.partition(":")
    if key not in models.keys():
        raise CliError("gpusimctl: --gpu %s: unknown model %r (known: %s)" % (text, key, ", ".join(models.keys())))
    if count and not count.isdigit():
        raise CliError("gpusimctl: --gpu %s: count must be a positive integer" % text)
    return key, int(count or 1)


def _index_map(values: list[str] | None, option: str, pattern: str | None = None) -> dict[int, str]:
    result = {}
    for item in values or []:
        index, sep, value = item.partition("=")
        if not sep or not index.isdigit() or not value:
            raise CliError("gpusimctl: %s %s: expected INDEX=VALUE" % (option, item))
        if pattern and not re.fullmatch(pattern, value):
            raise CliError("gpusimctl: %s %s: malformed value %r" % (option, item, value))
        result[int(index)] = value
    return result


_UUID_RE = r"GPU-[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_BDF_RE = r"[0-9a-fA-F]{8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]"


def _which(value: str | None) -> str | int | None:
    if value is None or value == "all":
        return value
    if not value.isdigit():
        raise CliError("gpusimctl: --gpu %s: expected a GPU index or 'all'" % value)
    return int(value)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gpusimctl", description="Control the simulated GPUs of this host.")
    parser.add_argument("--root", help="state directory (default: $GPUSIM_ROOT or %s)" % store.DEFAULT_ROOT)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    init = sub.add_parser("init", help="create (or overwrite) the host state")
    init.add_argument("--hostname", required=True)
    init.add_argument("--gpu", action="append", required=True, metavar="MODEL[:COUNT]")
    init.add_argument("--driver", default=host.DEFAULT_DRIVER, metavar="VERSION")
    init.add_argument("--cuda-version", type=int, default=host.DEFAULT_CUDA, metavar="INT")
    init.add_argument("--flavor", default="open", metavar="open|proprietary")
    drv = init.add_mutually_exclusive_group()
    drv.add_argument("--no-driver", action="store_true", help="no NVIDIA driver installed")
    drv.add_argument("--driver-not-loaded", action="store_true", help="driver installed but kernel module not loaded")
    init.add_argument("--vgpu-host", action="store_true", help="NVIDIA vGPU manager installed")
    init.add_argument("--virt-mode", choices=sorted(host.VIRT_MODES), help="virtualization mode of every GPU")
    init.add_argument("--uuid", action="append", metavar="INDEX=UUID")
    init.add_argument("--pci", action="append", metavar="INDEX=BUSID")
    init.add_argument("--serial", action="append", metavar="INDEX=SERIAL")

    sub.add_parser("show", help="print the state as JSON")
    sub.add_parser("models", help="list the GPU model keys")

    fault = sub.add_parser("fault", help="inject or clear NVML call failures")
    fsub = fault.add_subparsers(dest="fault_command", required=True, parser_class=_Parser)
    fset = fsub.add_parser("set")
    fset.add_argument("--gpu", default="all")
    fset.add_argument("--call", required=True, help="NVML function name, '*' for every call, 'reset' for reboot-required resets, "
                                                    "'sysfs:create|remove|current_vgpu_type|sriov_numvfs|*' for sysfs writes")
    fset.add_argument("--error", required=True, metavar="NVML_ERROR_XXX|EXXX", help="an NVML error; an errno for sysfs writes")
    fset.add_argument("--nth", metavar="N|N,M,...|N+",
                      help="fail only the Nth call (or each listed call, or every call from the Nth on) "
                           "of a mutating NVML function ('*': of any), or of a sysfs write, counted from now")
    fclear = fsub.add_parser("clear")
    fclear.add_argument("--gpu", default=None)
    fclear.add_argument("--call", default=None)

    lose = sub.add_parser("lose", help="make a GPU fall off the bus")
    lose.add_argument("--gpu", required=True)

    proc = sub.add_parser("proc", help="simulated processes holding GPUs")
    psub = proc.add_subparsers(dest="proc_command", required=True, parser_class=_Parser)
    padd = psub.add_parser("add")
    padd.add_argument("--gpu", required=True)
    padd.add_argument("--pid", required=True, type=int)
    padd.add_argument("--mem-mib", required=True, type=int)
    padd.add_argument("--gi", type=int)
    padd.add_argument("--ci", type=int)
    padd.add_argument("--name", default="")
    padd.add_argument("--type", default="compute", choices=("compute", "graphics"))
    pclear = psub.add_parser("clear")
    pclear.add_argument("--gpu", default=None)

    vgpu = sub.add_parser("vgpu", help="vGPU instances (normally created by the mdev/SR-IOV emulation)")
    vsub = vgpu.add_subparsers(dest="vgpu_command", required=True, parser_class=_Parser)
    vadd = vsub.add_parser("add")
    vadd.add_argument("--gpu", required=True)
    vadd.add_argument("--type", required=True, type=int)
    vadd.add_argument("--uuid")
    vadd.add_argument("--vm-id", default="")
    vrm = vsub.add_parser("remove")
    vrm.add_argument("--uuid", required=True)

    driver = sub.add_parser("driver", help="change the driver in place (used by the driver package stand-ins)")
    driver.add_argument("--version", metavar="VERSION", help="installed and loaded version at once (in place)")
    driver.add_argument("--flavor", metavar="open|proprietary", help="installed and loaded flavor at once (in place)")
    driver.add_argument("--installed-version", metavar="VERSION",
                        help="install this userspace version only (package postinst); the loaded module stays")
    driver.add_argument("--installed-flavor", metavar="open|proprietary", help="flavor of --installed-version")
    driver.add_argument("--installed", choices=("yes", "no"), help="no: packages removed (the loaded module stays)")
    load = driver.add_mutually_exclusive_group()
    load.add_argument("--loaded", choices=("yes", "no"), help="force: load the installed driver's module, or unload it")
    load.add_argument("--reload", action="store_true",
                      help="modprobe -r + modprobe: load the installed version; refused while processes use a GPU")

    sub.add_parser("reboot", help="reboot the host: pending modes apply, instances and processes are gone")
    reset = sub.add_parser("reset", help="reset one GPU like nvidia-smi -r (refused while anything holds it)")
    reset.add_argument("--gpu", required=True)
    reset.add_argument("--force", action="store_true",
                       help="test set-up only: reset even while held (its registered processes and vGPUs are dropped)")

    held = sub.add_parser("holders", help="what holds each GPU (NVML sessions, processes, vGPUs, nvidia_drm) as JSON")
    held.add_argument("--gpu", default=None)

    drm = sub.add_parser("nvidia-drm", help="load or unload nvidia_drm (it holds every GPU while loaded)")
    drm.add_argument("--loaded", choices=("yes", "no"), help="load or unload it now")
    drm.add_argument("--at-boot", choices=("yes", "no"), help="whether a boot loads it")
    drm.add_argument("--as-booted", action="store_true",
                     help="loaded now as a boot would leave it (with --at-boot; the fleet, while the host is down)")
    return parser


def _init(args: argparse.Namespace) -> dict[str, Any]:
    if args.flavor not in host.HOST_FLAVORS:
        raise CliError("gpusimctl: --flavor %s: expected open or proprietary" % args.flavor)
    if not re.fullmatch(r"\d+\.\d+(\.\d+)?", args.driver):
        raise CliError("gpusimctl: --driver %s: expected a version like 580.159.04" % args.driver)
    gpus = [_gpu_spec(spec) for spec in args.gpu]
    driver_state = "absent" if args.no_driver else "not_loaded" if args.driver_not_loaded else "loaded"
    try:
        new = host.build(args.hostname, gpus, driver=args.driver, flavor=args.flavor, driver_state=driver_state,
                         vgpu_host=args.vgpu_host, uuids=_index_map(args.uuid, "--uuid", _UUID_RE),
                         pci=_index_map(args.pci, "--pci", _BDF_RE), serials=_index_map(args.serial, "--serial", r"\d{1,29}"),
                         virt=args.virt_mode, cuda_version=args.cuda_version)
    except ValueError as exc:
        raise CliError("gpusimctl: %s" % exc) from exc
    with store.transaction(args.root, create=True) as state:
        if host.same_config(state, new):
            return {"changed": False}
        state.clear()
        state.update(new)
    return {"changed": True}


def _mutate(args: argparse.Namespace, action) -> None:
    try:
        with store.transaction(args.root) as state:
            action(state)
    except store.StateMissing as exc:
        raise CliError("gpusimctl: no simulator state at %s (run 'gpusimctl init' first)" % exc, 1) from exc
    except ValueError as exc:
        raise CliError("gpusimctl: %s" % exc) from exc
    except SimError as exc:
        raise CliError("gpusimctl: %s" % exc, 1) from exc


def _fault(args: argparse.Namespace) -> None:
    which = _which(args.gpu)
    if args.fault_command == "set":
        try:
            code = host.parse_errno(args.error) if args.call.startswith("sysfs:") else parse_error(args.error)
        except ValueError as exc:
            raise CliError("gpusimctl: --error %s: %s" % (args.error, exc)) from exc
        try:
            nth, onward = host.parse_nth(args.nth) if args.nth is not None else (None, False)
        except ValueError as exc:
            raise CliError("gpusimctl: %s" % exc) from exc

        def action(state: dict[str, Any]) -> None:
            if args.call == "reset":
                for entry in host._targets(state, which):  # pylint: disable=protected-access
                    entry["reset_requires_reboot"] = True
            host.set_fault(state, which, args.call, code, nth, onward)
        _mutate(args, action)
    else:
        _mutate(args, lambda state: host.clear_faults(state, which, args.call))


def _driver(args: argparse.Namespace) -> None:
    for option, value in (("--version", args.version), ("--installed-version", args.installed_version)):
        if value is not None and not re.fullmatch(r"\d+\.\d+(\.\d+)?", value):
            raise CliError("gpusimctl: %s %s: expected a version like 580.159.04" % (option, value))
    for option, value in (("--flavor", args.flavor), ("--installed-flavor", args.installed_flavor)):
        if value is not None and value not in host.HOST_FLAVORS:
            raise CliError("gpusimctl: %s %s: expected open or proprietary" % (option, value))
    if args.installed_flavor is not None and args.installed_version is None:
        raise CliError("gpusimctl: --installed-flavor goes with --installed-version")
    if args.installed_version is not None and args.installed == "no":
        raise CliError("gpusimctl: --installed-version contradicts --installed no")

    def action(state: dict[str, Any]) -> None:
        drv = state["driver"]
        # --version/--flavor: both sides at once, as if installed and the module swapped in place
        if args.version is not None:
            drv["version"] = args.version
            drv["installed_version"] = args.version
        if args.flavor is not None:
            drv["flavor"] = args.flavor
            drv["installed_flavor"] = args.flavor
        if args.installed_version is not None:
            host.install_driver(state, args.installed_version, args.installed_flavor)
        if args.installed == "yes":
            if not drv.get("installed"):
                host.install_driver(state, drv.get("installed_version") or drv["version"])
        elif args.installed == "no":
            host.uninstall_driver(state)
        if args.loaded == "yes":
            if not drv["installed"]:
                raise ValueError("--loaded yes: no driver is installed")
            host.load_installed_driver(state)
        elif args.loaded == "no":
            host.unload_driver(state)
        if args.reload:
            host.reload_driver(state)
    _mutate(args, action)


def _reset(args: argparse.Namespace) -> None:
    index = _which(args.gpu)
    if not isinstance(index, int):
        raise CliError("gpusimctl: --gpu %s: reset takes one GPU index" % args.gpu)
    root = store.root_dir(args.root)
    _mutate(args, lambda state: host.reset(state, index, sessions.others(root), force=args.force))


def _holders(args: argparse.Namespace) -> dict[str, list[str]]:
    try:
        state = store.load(args.root)
    except store.StateMissing as exc:
        raise CliError("gpusimctl: no simulator state at %s" % exc, 1) from exc
    which = _which(args.gpu)
    try:
        targets = host._targets(state, which)  # pylint: disable=protected-access
    except ValueError as exc:
        raise CliError("gpusimctl: %s" % exc) from exc
    others = sessions.others(store.root_dir(args.root))
    return {str(entry["index"]): host.holders(state, entry, others) for entry in targets}


def _nvidia_drm(args: argparse.Namespace) -> None:
    if args.loaded is None and args.at_boot is None:
        raise CliError("gpusimctl: nvidia-drm: give --loaded and/or --at-boot")
    if args.as_booted and (args.at_boot is None or args.loaded is not None):
        raise CliError("gpusimctl: nvidia-drm: --as-booted goes with --at-boot and without --loaded")
    loaded = None if args.loaded is None else args.loaded == "yes"
    at_boot = None if args.at_boot is None else args.at_boot == "yes"

    def action(state: dict[str, Any]) -> None:
        now = loaded
        if args.as_booted:
            now = bool(at_boot) and bool(state["driver"].get("loaded"))
        host.set_nvidia_drm(state, now, at_boot)
    _mutate(args, action)


def _reboot(args: argparse.Namespace) -> None:
    _mutate(args, host.reboot)
    sessions.clear(store.root_dir(args.root))  # every process is gone: so are their NVML sessions


def _proc(args: argparse.Namespace) -> None:
    if args.proc_command == "add":
        index = _which(args.gpu)
        if not isinstance(index, int):
            raise CliError("gpusimctl: --gpu %s: a process runs on one GPU index" % args.gpu)
        if args.mem_mib < 0:
            raise CliError("gpusimctl: --mem-mib %d: must not be negative" % args.mem_mib)

        def action(state: dict[str, Any]) -> None:
            host.add_process(state, index, args.pid, args.mem_mib, args.gi, args.ci, args.type)
            if args.name:
                host.gpu(state, index)["processes"][-1]["name"] = args.name
        _mutate(args, action)
    else:
        _mutate(args, lambda state: host.clear_processes(state, _which(args.gpu)))


def _vgpu(args: argparse.Namespace) -> None:
    if args.vgpu_command == "add":
        index = _which(args.gpu)
        if not isinstance(index, int):
            raise CliError("gpusimctl: --gpu %s: expected a GPU index" % args.gpu)
        result: dict[str, Any] = {}
        _mutate(args, lambda state: result.update(host.add_vgpu(state, index, args.type, args.uuid, args.vm_id)))
        print(json.dumps(result))
    else:
        _mutate(args, lambda state: host.remove_vgpu(state, args.uuid))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        if args.command == "init":
            print(json.dumps(_init(args)))
        elif args.command == "show":
            try:
                print(json.dumps(store.load(args.root), indent=1, sort_keys=True))
            except store.StateMissing as exc:
                raise CliError("gpusimctl: no simulator state at %s" % exc, 1) from exc
        elif args.command == "models":
            print("\n".join(models.keys()))
        elif args.command == "fault":
            _fault(args)
        elif args.command == "lose":
            index = _which(args.gpu)
            if not isinstance(index, int):
                raise CliError("gpusimctl: --gpu %s: expected a GPU index" % args.gpu)
            _mutate(args, lambda state: host.lose(state, index))
        elif args.command == "proc":
            _proc(args)
        elif args.command == "vgpu":
            _vgpu(args)
        elif args.command == "driver":
            _driver(args)
        elif args.command == "reboot":
            _reboot(args)
        elif args.command == "holders":
            print(json.dumps(_holders(args), indent=1, sort_keys=True))
        elif args.command == "nvidia-drm":
            _nvidia_drm(args)
        elif args.command == "reset":
            _reset(args)
    except CliError as exc:
        print(str(exc), file=sys.stderr)
        return exc.status
    except PermissionError as exc:
        print("gpusimctl: --root: %s" % exc, file=sys.stderr)
        return 1
    return 0
