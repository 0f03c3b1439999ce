"""up, down, status, reboot: the fleet tool's verbs, on top of the per-host supervisors."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import base, host as hostmod, oslayer, paths
from .config import Fleet, HostSpec


def log(msg: str) -> None:
    print(f"fleet: {msg}", file=sys.stderr, flush=True)


# ---- process and state helpers ------------------------------------------------------------------

def _read_int(p: Path) -> int:
    try:
        return int(p.read_text().strip())
    except (FileNotFoundError, ValueError):
        return 0


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except OSError:
        return {}
    return dict(kv.split("=", 1) for kv in raw.split("\0") if "=" in kv)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def supervisor_pid(fleet: str, name: str) -> int:
    """The host's supervisor, if it runs (checked against its command line, not just the pid file)."""
    pid = _read_int(paths.host_run(fleet, name) / "supervisor.pid")
    cmd = _cmdline(pid) if _alive(pid) else []
    if "gpusim_fleet.supervisor" in cmd and fleet in cmd and name in cmd:
        return pid
    return 0


def host_state(fleet: str, name: str) -> dict:
    try:
        return json.loads((paths.host_run(fleet, name) / "state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def pid1(fleet: str, name: str) -> int:
    pid = _read_int(paths.host_run(fleet, name) / "pid1")
    if _alive(pid) and _environ(pid).get(paths.HOST_ENV) == f"{fleet}/{name}":
        return pid
    return 0


def ssh_banner(port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def nsenter(pid: int) -> list[str]:
    return ["nsenter", "-t", str(pid), "-m", "-u", "-i", "-p", "-C", "-r", "-w"]


def system_state(pid: int, wait: bool = False, timeout: float = 60) -> str:
    cmd = nsenter(pid) + ["systemctl", "is-system-running"] + (["--wait"] if wait else [])
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False).stdout.strip() or "?"
    except subprocess.TimeoutExpired:
        return "timeout"


def known_fleets() -> list[str]:
    names = set()
    for d in (paths.RUN_DIR, paths.STATE_DIR, *paths.CGROUP_TOPS):
        if d.is_dir():
            names.update(p.name for p in d.iterdir() if p.is_dir())
    for found in scan_pid1s():
        names.add(found[1])
    return sorted(names)


def fleet_hosts(fleet: str) -> list[str]:
    names = set()
    for d in (paths.RUN_DIR / fleet, paths.STATE_DIR / fleet / "hosts"):
        if d.is_dir():
            names.update(p.name for p in d.iterdir() if p.is_dir())
    return sorted(names)


def scan_pid1s(fleet: str | None = None) -> list[tuple[int, str, str]]:
    """Every host PID 1 on the machine, found by the marker in its environment."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        env = _environ(int(d.name))
        if env.get("container") != paths.CONTAINER_MARK or paths.HOST_ENV not in env:
            continue
        # Only the namespace's init carries both; its children get systemd's own environment.
        f, h = (env[paths.HOST_ENV].split("/", 1) + [""])[:2]
        if _cmdline(int(d.name))[:1] in (["/sbin/init"], ["/lib/systemd/systemd"]) and (fleet is None or f == fleet):
            out.append((int(d.name), f, h))
    return out


def scan_supervisors(fleet: str | None = None) -> list[tuple[int, str, str]]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        cmd = _cmdline(int(d.name))
        if "gpusim_fleet.supervisor" in cmd:
            i = cmd.index("gpusim_fleet.supervisor")
            if len(cmd) > i + 2 and (fleet is None or cmd[i + 1] == fleet):
                out.append((int(d.name), cmd[i + 1], cmd[i + 2]))
    return out


def cgroup_pids(fleet: str) -> list[int]:
    pids: set[int] = set()
    for root in (top / fleet for top in paths.CGROUP_TOPS):
        if not root.is_dir():
            continue
        for procs in root.rglob("cgroup.procs"):
            try:
                pids.update(int(x) for x in procs.read_text().split())
            except OSError:
                pass
    return sorted(pids)


def fleet_mounts(fleet: str | None) -> list[str]:
    """Mount points on the machine under the fleet's directories (there should never be any: every
    host mount lives in the host's own mount namespace; this catches a crashed build or an old run)."""
    roots = [str(paths.STATE_DIR / fleet) if fleet else str(paths.STATE_DIR), str(paths.RUN_DIR / fleet if fleet else paths.RUN_DIR),
             str(paths.CACHE_DIR / "base.new")]
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if any(mp == r or mp.startswith(r + "/") for r in roots):
                found.append(mp)
    return found


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    end = time.monotonic() + timeout
    left = [p for p in pids if _alive(p)]
    while left and time.monotonic() < end:
        time.sleep(0.1)
        left = [p for p in left if _alive(p)]
    return left


def _kill(pids: list[int], sig: int) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


# ---- up -----------------------------------------------------------------------------------------

def ensure_key(fleet: Fleet) -> str:
    key = paths.ssh_key(fleet.name)
    key.parent.mkdir(parents=True, exist_ok=True)
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"gpuvirt-fleet-{fleet.name}",
                        "-f", str(key)], check=True, stdin=subprocess.DEVNULL)
    os.chmod(key, 0o600)
    return key.with_name(key.name + ".pub").read_text()


def start_supervisor(fleet: str, name: str) -> int:
    run = paths.host_run(fleet, name)
    run.mkdir(parents=True, exist_ok=True)
    for stale in ("state.json", "pid1", "supervisor.pid"):
        (run / stale).unlink(missing_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LANG": "C.UTF-8",
           "PYTHONPATH": str(paths.REPO / "sim" / "lib"), "PYTHONDONTWRITEBYTECODE": "1"}
    for k in ("GPUVIRT_FLEET_CACHE", "GPUVIRT_FLEET_STATE", "GPUVIRT_FLEET_RUN"):
        if k in os.environ:
            env[k] = os.environ[k]
    with open(run / "supervisor.log", "a") as logf:
        p = subprocess.Popen([sys.executable, "-m", "gpusim_fleet.supervisor", fleet, name], cwd="/", env=env,
                             stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    return p.pid


def wait_ready(fleet: str, spec: HostSpec, timeout: float, since_boots: int = -1) -> str:
    """Wait until the host booted (a newer boot than since_boots) and its sshd answers."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = host_state(fleet, spec.name)
        if st.get("state") in ("failed",):
            return f"failed to boot: see {paths.host_run(fleet, spec.name)}/console.log"
        if not supervisor_pid(fleet, spec.name) and time.monotonic() > end - timeout + 3:
            return f"supervisor is not running: see {paths.host_run(fleet, spec.name)}/supervisor.log"
        if st.get("state") == "running" and st.get("boots", 0) > since_boots and ssh_banner(spec.port, 1.0):
            return "ok"
        time.sleep(0.2)
    return f"sshd on 127.0.0.1:{spec.port} did not answer in {timeout:.0f} s"


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


def raise_inotify_limit(hosts: int) -> None:
    """Every host's systemd, dbus and logind hold inotify instances, all counted against root's
    fs.inotify.max_user_instances (128 by default): raise it so many hosts fit (never lowered)."""
    knob = Path("/proc/sys/fs/inotify/max_user_instances")
    try:
        cur = int(knob.read_text())
        want = 256 + 16 * hosts
        if cur < want:
            knob.write_text(f"{want}\n")
            log(f"raised fs.inotify.max_user_instances from {cur} to {want}")
    except (OSError, ValueError) as e:
        log(f"cannot raise fs.inotify.max_user_instances: {e}")


@contextlib.contextmanager
def fleet_lock(fleet: str):
    """One `up` or `down` of a fleet at a time (two would start two supervisors per host)."""
    paths.STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(paths.STATE_DIR / f".{fleet}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def up(fleet: Fleet, inventory: Path, timeout: float = 180) -> int:
    base.build_base()
    for kind in sorted({spec.os for spec in fleet.hosts}):
        oslayer.ensure(kind)
    with fleet_lock(fleet.name):
        return _up(fleet, inventory, timeout)


def _up(fleet: Fleet, inventory: Path, timeout: float) -> int:
    t0 = time.monotonic()
    running_elsewhere = len(scan_pid1s())
    raise_inotify_limit(running_elsewhere + len(fleet.hosts))
    pub = ensure_key(fleet)
    state = paths.fleet_state(fleet.name)
    info = {"fleet": fleet.name, "file": str(fleet.path), "inventory": str(inventory.resolve())}
    (state / "fleet.json").write_text(json.dumps(info) + "\n")
    (paths.CGROUP_ROOT / paths.CGROUP_PREFIX / fleet.name).mkdir(parents=True, exist_ok=True)

    running, to_start, woken = [], [], []
    for spec in fleet.hosts:
        if supervisor_pid(fleet.name, spec.name):
            st = host_state(fleet.name, spec.name)
            if st.get("state") in ("off", "failed"):
                woken.append(spec)
            else:
                running.append(spec)
        else:
            to_start.append(spec)
    for spec in to_start:
        if _port_taken(spec.port):
            log(f"{spec.name}: port {spec.port} is already in use on 127.0.0.1; pick another base_port")
            return 1

    def prep(spec: HostSpec) -> tuple[str, list[str]]:
        return spec.name, hostmod.prepare(fleet, spec, pub)

    with ThreadPoolExecutor(max_workers=min(8, max(1, len(to_start + woken)))) as ex:
        for name, notes in ex.map(prep, to_start + woken):
            log(f"{name}: " + "; ".join(notes))
    before = {s.name: host_state(fleet.name, s.name).get("boots", 0) if s in woken else 0 for s in fleet.hosts}
    for spec in to_start:
        start_supervisor(fleet.name, spec.name)
    for spec in woken:
        os.kill(supervisor_pid(fleet.name, spec.name), signal.SIGUSR1)
    for spec in running:
        log(f"{spec.name}: already running, left alone")

    write_inventory(fleet, inventory)
    write_ssh_config(fleet, ssh_config_path(inventory))
    bad = 0
    with ThreadPoolExecutor(max_workers=max(1, len(fleet.hosts))) as ex:
        # A host left running gets a short look only (its sshd may have been stopped on purpose).
        results = list(ex.map(lambda s: (s, wait_ready(fleet.name, s, min(timeout, 20) if s in running else timeout,
                                                       before[s.name] if s in woken else 0)),
                              to_start + woken + running))
    for spec, res in results:
        if res != "ok":
            bad += 1
            log(f"{spec.name}: {res}")
    log(f"{len(fleet.hosts) - bad}/{len(fleet.hosts)} hosts up in {time.monotonic() - t0:.1f} s; inventory {inventory}")
    return 1 if bad else 0


# ---- inventory ----------------------------------------------------------------------------------

def inventory_data(fleet: Fleet) -> dict:
    key = str(paths.ssh_key(fleet.name))
    hosts: dict[str, dict] = {}
    groups: dict[str, dict] = {}
    for h in fleet.hosts:
        hv = {
            "ansible_host": "127.0.0.1",
            "ansible_port": h.port,
            "gpusim_gpus": dict(h.gpus),
            "gpusim_driver_version": h.driver_version,
            "gpusim_driver_flavour": h.driver_flavour,
            "gpusim_os": h.os,
            "gpusim_vgpu_host": h.vgpu_host,
            "gpusim_vgpu_sriov": h.vgpu_sriov,
        }
        if h.remote_user != fleet.remote_user:
            hv["ansible_user"] = h.remote_user
        hv.update(h.vars)
        hosts[h.name] = hv
        for g in h.groups:
            groups.setdefault(g, {"hosts": {}})["hosts"][h.name] = {}
    all_vars = {
        "ansible_user": fleet.remote_user,
        "ansible_ssh_private_key_file": key,
        "ansible_python_interpreter": "/usr/bin/python3",
        # Throwaway hosts whose keys change with every purge: no prompts, no known_hosts entries.
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
        "ansible_host_key_checking": False,
        "ansible_paramiko_host_key_checking": False,
        "ansible_paramiko_record_host_keys": False,
        "gpusim_fleet": fleet.name,
    }
    all_vars.update(fleet.vars)
    data: dict = {"all": {"vars": all_vars, "hosts": hosts}}
    if groups:
        data["all"]["children"] = groups
    return data


def write_inventory(fleet: Fleet, inventory: Path) -> None:
    import yaml

    inventory.parent.mkdir(parents=True, exist_ok=True)
    text = ("# Written by `sim/fleet up " + str(fleet.path) + "`; do not edit (git-ignored).\n"
            + yaml.safe_dump(inventory_data(fleet), sort_keys=False, default_flow_style=False))
    tmp = inventory.with_name(inventory.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, inventory)


def ssh_config_path(inventory: Path) -> Path:
    """`ssh -F <this> HOST` reaches a host: .build/fleet/ssh_config for the default inventory, else
    beside the inventory."""
    if inventory.resolve() == paths.DEFAULT_INVENTORY.resolve():
        return paths.REPO / ".build" / "fleet" / "ssh_config"
    return inventory.with_name(inventory.stem + ".ssh_config")


def write_ssh_config(fleet: Fleet, path: Path) -> None:
    key = paths.ssh_key(fleet.name)
    lines = [f"# Written by `sim/fleet up {fleet.path}`: ssh -F {path} HOST"]
    for h in fleet.hosts:
        lines += [f"Host {h.name}", "  HostName 127.0.0.1", f"  Port {h.port}", f"  User {h.remote_user}",
                  f"  IdentityFile {key}", "  IdentitiesOnly yes", "  StrictHostKeyChecking no",
                  "  UserKnownHostsFile /dev/null", "  LogLevel ERROR", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


# ---- down ---------------------------------------------------------------------------------------

def down(fleet: str | None, purge: bool = False) -> int:
    fleets = [fleet] if fleet else known_fleets()
    with contextlib.ExitStack() as stack:
        for f in fleets:
            stack.enter_context(fleet_lock(f))
        return _down(fleets, purge)


def _down(fleets: list[str], purge: bool) -> int:
    # 1. Ask every supervisor to power its host off cleanly, all at once.
    sups = [(p, f, h) for p, f, h in scan_supervisors() if f in fleets]
    _kill([s[0] for s in sups], signal.SIGTERM)
    left = _wait_gone([s[0] for s in sups], 45)
    if left:
        log(f"supervisors {left} did not stop: SIGKILL")
        _kill(left, signal.SIGKILL)
        _wait_gone(left, 5)
    # 2. Host PID 1s without a supervisor (a killed up, a crashed supervisor): clean poweroff, then kill.
    orphans = [p[0] for p in scan_pid1s() if p[1] in fleets]
    if orphans:
        log(f"powering off {len(orphans)} host(s) whose supervisor is gone")
        _kill(orphans, signal.SIGRTMIN + 4)
        left = _wait_gone(orphans, 20)
        _kill(left, signal.SIGKILL)
        _wait_gone(left, 5)
    # 3. Anything still in a host's cgroup (processes that escaped the PID namespace cannot exist, but
    #    nsenter'd helpers might).
    for f in fleets:
        stray = cgroup_pids(f)
        if stray:
            log(f"killing {len(stray)} leftover process(es) of fleet {f}")
            _kill(stray, signal.SIGKILL)
            _wait_gone(stray, 5)
    # 4. Mounts on the machine (none expected) and the cgroup tree.
    for f in fleets:
        for mp in sorted(fleet_mounts(f), key=len, reverse=True):
            log(f"unmounting leftover {mp}")
            subprocess.run(["umount", "-l", mp], check=False)
        for cg in (top / f for top in paths.CGROUP_TOPS):
            if not cg.is_dir():
                continue
            for d in sorted((p for p in cg.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [cg]:
                try:
                    d.rmdir()
                except OSError as e:
                    log(f"cannot remove cgroup {d}: {e}")
        shutil.rmtree(paths.RUN_DIR / f, ignore_errors=True)
        if purge:
            info = paths.fleet_state(f) / "fleet.json"
            try:
                inv = Path(json.loads(info.read_text())["inventory"])
                if inv.exists() and f"gpusim_fleet: {f}\n" in inv.read_text():
                    inv.unlink()
                cfg = ssh_config_path(inv)
                if cfg.exists() and str(paths.ssh_key(f)) in cfg.read_text():
                    cfg.unlink()
            except (FileNotFoundError, KeyError, json.JSONDecodeError):
                pass
            shutil.rmtree(paths.fleet_state(f), ignore_errors=True)
            (paths.STATE_DIR / f".{f}.lock").unlink(missing_ok=True)
    for top in paths.CGROUP_TOPS:
        if top.is_dir() and not any(p.is_dir() for p in top.iterdir()):
            try:
                top.rmdir()
            except OSError:
                pass
    left = [p[0] for p in scan_pid1s() + scan_supervisors() if p[1] in fleets]
    mounts = [m for f in fleets for m in fleet_mounts(f)]
    if left or mounts:
        log(f"left behind: processes {left}, mounts {mounts}")
        return 1
    log(f"down: {', '.join(fleets) or 'no fleet'}" + (" (purged)" if purge else ""))
    return 0


# ---- status, reboot, exec -----------------------------------------------------------------------

def find_host(name: str, fleet: str | None) -> tuple[str, str]:
    cands = [f for f in ([fleet] if fleet else known_fleets()) if name in fleet_hosts(f)]
    if not cands:
        raise SystemExit(f"fleet: no host {name}" + (f" in fleet {fleet}" if fleet else ""))
    if len(cands) > 1:
        running = [f for f in cands if supervisor_pid(f, name)]
        if len(running) == 1:
            return running[0], name
        raise SystemExit(f"fleet: host {name} is in fleets {cands}; say which with --fleet")
    return cands[0], name


def status(fleet: str | None, as_json: bool = False) -> int:
    rows = []
    for f in ([fleet] if fleet else known_fleets()):
        for h in fleet_hosts(f):
            st = host_state(f, h)
            sup = supervisor_pid(f, h)
            p1 = pid1(f, h) if sup else 0
            port = st.get("port") or _port_from_state(f, h)
            sshd = ssh_banner(port, 1.0) if port and p1 else False
            sysstate = system_state(p1, timeout=10) if p1 else "-"
            rows.append({"fleet": f, "host": h, "port": port, "supervisor": sup, "pid1": p1,
                         "state": st.get("state", "down") if sup else "down", "boots": st.get("boots", 0),
                         "sshd": sshd, "system": sysstate})
    if as_json:
        print(json.dumps(rows, indent=1))
        return 0
    fmt = "{:<12} {:<16} {:>6} {:>8} {:>8} {:<9} {:>5} {:<5} {}"
    print(fmt.format("FLEET", "HOST", "PORT", "SUPERV", "PID1", "STATE", "BOOTS", "SSHD", "SYSTEM"))
    for r in rows:
        print(fmt.format(r["fleet"], r["host"], r["port"] or "-", r["supervisor"] or "-", r["pid1"] or "-",
                         r["state"], r["boots"], "yes" if r["sshd"] else "no", r["system"]))
    return 0


def _port_from_state(fleet: str, name: str) -> int:
    try:
        return json.loads((paths.host_state(fleet, name) / "host.json").read_text())["port"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        return 0


def reboot(name: str, fleet: str | None, timeout: float = 120) -> int:
    f, h = find_host(name, fleet)
    sup = supervisor_pid(f, h)
    if not sup:
        log(f"{h}: not running (use `sim/fleet up`)")
        return 1
    before = host_state(f, h).get("boots", 0)
    t0 = time.monotonic()
    os.kill(sup, signal.SIGHUP)
    port = _port_from_state(f, h)
    spec = HostSpec(name=h, port=port, groups=[], gpus=[], driver_version=None, driver_flavour="open", vgpu_host=False)
    res = wait_ready(f, spec, timeout, since_boots=before)
    if res != "ok":
        log(f"{h}: {res}")
        return 1
    log(f"{h}: rebooted in {time.monotonic() - t0:.1f} s")
    return 0


def exec_in(name: str, fleet: str | None, argv: list[str]) -> int:
    f, h = find_host(name, fleet)
    p = pid1(f, h)
    if not p:
        log(f"{h}: not running")
        return 1
    # Same capability bounding set as the host's own processes (nsenter alone keeps the machine's).
    from .supervisor import DROPPED_CAPS
    drop = ",".join("-" + c.lower().removeprefix("cap_") for c in DROPPED_CAPS)
    return subprocess.run(nsenter(p) + ["setpriv", f"--bounding-set={drop}", "--"]
                          + (argv or ["/bin/bash", "-l"]), check=False).returncode


def install(name: str | None, fleet: str | None) -> int:
    """Copy the repo's simulator into running hosts (their live root) without a reboot."""
    fleets = [fleet] if fleet else known_fleets()
    n = 0
    for f in fleets:
        for h in fleet_hosts(f):
            if name and h != name:
                continue
            p = pid1(f, h)
            if p:
                done = hostmod.install_sim(Path(f"/proc/{p}/root"))
                log(f"{h}: installed {', '.join(done) or 'nothing'}")
                n += 1
    return 0 if n else 1
