"""Command line of sim/fleet."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from . import base, paths


def _need_root() -> None:
    if os.geteuid() != 0:
        raise SystemExit("fleet: needs root (namespaces, overlay mounts, cgroups)")


def _fleet_name(args) -> str | None:
    if getattr(args, "fleetfile", None):
        from .config import load
        return load(args.fleetfile).name
    return args.fleet


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sim/fleet", description="Fleet in a box: simulated GPU hosts over real SSH.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("up", help="start the hosts of a fleet file (idempotent) and write the inventory")
    p.add_argument("fleetfile")
    p.add_argument("--inventory", default=str(paths.DEFAULT_INVENTORY), help="where to write the Ansible inventory")
    p.add_argument("--timeout", type=float, default=180, help="seconds to wait for every sshd")

    p = sub.add_parser("down", help="stop every host and remove every mount (all fleets unless one is named)")
    p.add_argument("fleetfile", nargs="?")
    p.add_argument("--fleet")
    p.add_argument("--purge", action="store_true", help="also delete the hosts' disk layers, keys and inventory")

    p = sub.add_parser("status", help="hosts, ports, PIDs, sshd and systemd state")
    p.add_argument("fleetfile", nargs="?")
    p.add_argument("--fleet")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("reboot", help="power a host off cleanly, reboot its GPUs, boot it again")
    p.add_argument("host")
    p.add_argument("--fleet")
    p.add_argument("--timeout", type=float, default=120)

    p = sub.add_parser("exec", help="run a command inside a host (nsenter; no SSH): exec HOST -- CMD...")
    p.add_argument("host")
    p.add_argument("--fleet")
    p.add_argument("argv", nargs=argparse.REMAINDER)

    p = sub.add_parser("install-sim", help="copy the repo's simulator into running hosts (no reboot)")
    p.add_argument("host", nargs="?")
    p.add_argument("--fleet")

    p = sub.add_parser("inventory", help="print the inventory a fleet file gives (starts nothing)")
    p.add_argument("fleetfile")

    p = sub.add_parser("base", help="build the cached base root filesystem (once)")
    p.add_argument("--rebuild", action="store_true")

    args = ap.parse_args(argv)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `sim/fleet status | head` ends quietly
    from . import config, control

    try:
        if args.cmd == "inventory":
            import yaml
            print(yaml.safe_dump(control.inventory_data(config.load(args.fleetfile)), sort_keys=False), end="")
            return 0
        _need_root()
        if args.cmd == "base":
            base.build_base(rebuild=args.rebuild)
            return 0
        if args.cmd == "up":
            return control.up(config.load(args.fleetfile), Path(args.inventory), timeout=args.timeout)
        if args.cmd == "down":
            return control.down(_fleet_name(args), purge=args.purge)
        if args.cmd == "status":
            return control.status(_fleet_name(args), as_json=args.json)
        if args.cmd == "reboot":
            return control.reboot(args.host, args.fleet, timeout=args.timeout)
        if args.cmd == "exec":
            argv_ = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            return control.exec_in(args.host, args.fleet, argv_)
        if args.cmd == "install-sim":
            return control.install(args.host, args.fleet)
    except config.FleetError as e:
        print(f"fleet: {e}", file=sys.stderr)
        return 2
    return 2
