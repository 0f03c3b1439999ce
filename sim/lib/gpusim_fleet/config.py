"""Fleet files: which hosts, which GPUs, which driver. Parsed and validated before anything starts."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
FLEET_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,30}$")
GROUP_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MODEL_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
DRIVER_RE = re.compile(r"^\d+\.\d+(\.\d+)?$")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,30}$")
FLAVOURS = ("open", "proprietary")
# How the loaded driver got there where no package carries it: "" (nothing tells), runfile (the .run installer's files).
DRIVER_SOURCES = ("", "runfile")
DEFAULT_BASE_PORT = 22200

HOST_KEYS = {"name", "count", "start", "port", "groups", "gpus", "driver", "vgpu_host", "vars", "remote_user", "services",
             "nvidia_drm", "os"}
DEFAULT_KEYS = {"groups", "driver", "vars", "vgpu_host", "remote_user", "services", "nvidia_drm", "os"}
# The OS a host looks like (sim/lib/gpusim_fleet/oslayer.py): debian12 (the base), rhel9-like (Debian's rpm and dnf,
# named Rocky Linux 9).
OS_KINDS = ("debian12", "rhel9-like")
# Stand-in NVIDIA services a host may run (installed enabled: they start at boot and hold the GPUs through NVML).
SERVICES = ("nvidia-persistenced", "nvidia-fabricmanager")
TOP_KEYS = {"fleet", "base_port", "defaults", "vars", "hosts"}


class FleetError(ValueError):
    """A fleet file that cannot be used; the message names the offending entry."""


def _vgpu_host(where: str, value: object) -> str:
    """vgpu_host: false | true (= mdev) | mdev | sriov, as 'none', 'mdev' or 'sriov'."""
    if value is False or value is None:
        return "none"
    if value is True or value == "mdev":
        return "mdev"
    if value == "sriov":
        return "sriov"
    raise FleetError(f"{where}: vgpu_host must be true, false, mdev or sriov, not {value!r}")


def _services(where: str, value: object) -> list[str]:
    """services: a list of SERVICES (none by default)."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FleetError(f"{where}: services must be a list of names ({', '.join(SERVICES)})")
    for name in value:
        if name not in SERVICES:
            raise FleetError(f"{where}: services: unknown service {name!r} (known: {', '.join(SERVICES)})")
    return list(dict.fromkeys(value))


def _flag(where: str, key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise FleetError(f"{where}: {key} must be true or false, not {value!r}")
    return value


def _remote_user(where: str, value: object, default: tuple[str, bool]) -> tuple[str, bool]:
    """remote_user: the account Ansible logs in as, as (name, sudo).

    Absent: the default (defaults.remote_user, else root). `root` or {name: root}: root (sudo is moot). A name, or
    {name: NAME, sudo: true|false}: an unprivileged user the fleet creates on the host, with passwordless sudo unless
    sudo is false (a plain user: become fails on it, as on a host where the account has no sudo rights).
    """
    if value is None:
        return default
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise FleetError(f"{where}: remote_user must be a user name or a mapping {{name: NAME, sudo: true}}")
    unknown = set(value) - {"name", "sudo"}
    if unknown:
        raise FleetError(f"{where}: unknown remote_user keys {sorted(unknown)}")
    name = value.get("name")
    if not isinstance(name, str) or not USER_RE.match(name):
        raise FleetError(f"{where}: remote_user name {name!r} is not a user name like ops (lower case, {USER_RE.pattern})")
    sudo = value.get("sudo", True)
    if not isinstance(sudo, bool):
        raise FleetError(f"{where}: remote_user sudo must be true or false, not {sudo!r}")
    if name == "root":
        return ("root", False)
    return (name, sudo)


@dataclass
class HostSpec:
    name: str
    port: int
    groups: list[str]
    gpus: list[tuple[str, int]]
    driver_version: str | None
    driver_flavour: str
    vgpu_host: bool
    vars: dict = field(default_factory=dict)
    # vgpu_host: sriov: the SR-IOV GPUs (A40) serve the vendor vGPU interface on their VFs instead of mdev.
    vgpu_sriov: bool = False
    # The account Ansible logs in as (the inventory's ansible_user): root, or a user the fleet creates on the host,
    # with passwordless sudo when remote_sudo.
    remote_user: str = "root"
    remote_sudo: bool = False
    # runfile: the host's layer gets the .run installer's files (a driver no package carries); "": nothing.
    driver_source: str = ""
    # Stand-in NVIDIA services installed enabled (SERVICES), and whether nvidia_drm is loaded at boot.
    services: list[str] = field(default_factory=list)
    nvidia_drm: bool = False
    os: str = "debian12"

    def gpu_args(self) -> list[str]:
        return [f"{m}:{c}" for m, c in self.gpus]

    def gpu_digest(self) -> str:
        """Changes when what gpusimctl init gets changes (then the GPU state is made anew)."""
        data = json.dumps([self.name, self.gpus, self.driver_version, self.driver_flavour, self.vgpu_host])
        return hashlib.sha256(data.encode()).hexdigest()[:16]

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Fleet:
    name: str
    path: Path
    base_port: int
    hosts: list[HostSpec]
    vars: dict
    remote_user: str = "root"  # defaults.remote_user: the inventory's ansible_user of group all

    def host(self, name: str) -> HostSpec:
        for h in self.hosts:
            if h.name == name:
                return h
        raise FleetError(f"fleet {self.name}: no host {name!r}")


def _gpus(where: str, value) -> list[tuple[str, int]]:
    items: list[tuple[str, object]]
    if value is None:
        return []
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = []
        for v in value:
            if isinstance(v, str) and ":" in v:
                m, c = v.rsplit(":", 1)
                items.append((m, c))
            elif isinstance(v, dict) and len(v) == 1:
                items.extend(v.items())
            else:
                raise FleetError(f"{where}: gpus entry {v!r} is not MODEL:COUNT")
    else:
        raise FleetError(f"{where}: gpus must be a mapping model: count")
    out = []
    for model, count in items:
        if not isinstance(model, str) or not MODEL_RE.match(model):
            raise FleetError(f"{where}: GPU model {model!r} is not a model name like h100-80gb-hbm3")
        try:
            n = int(count)
        except (TypeError, ValueError):
            raise FleetError(f"{where}: GPU count for {model} is not a number: {count!r}") from None
        if not 1 <= n <= 16:
            raise FleetError(f"{where}: GPU count for {model} must be 1..16, got {n}")
        out.append((model, n))
    if sum(pair[1] for pair in out) > 16:
        raise FleetError(f"{where}: more than 16 GPUs in one host")
    return out


def _driver(where: str, value, default: tuple[str | None, str, str]) -> tuple[str | None, str, str]:
    if value is None:
        return default
    if value in ("none", False):
        return (None, default[1], "")
    if not isinstance(value, dict):
        raise FleetError(f"{where}: driver must be a mapping with version and flavour (or 'none')")
    unknown = set(value) - {"version", "flavour", "source"}
    if unknown:
        raise FleetError(f"{where}: unknown driver keys {sorted(unknown)}")
    version = value.get("version", default[0])
    flavour = value.get("flavour", default[1])
    if version is not None:
        version = str(version)
        if not DRIVER_RE.match(version):
            raise FleetError(f"{where}: driver version {version!r} is not like 580.159.04")
    if flavour not in FLAVOURS:
        raise FleetError(f"{where}: driver flavour must be one of {FLAVOURS}, got {flavour!r}")
    source = value.get("source", default[2]) or ""
    if source not in DRIVER_SOURCES:
        raise FleetError(f"{where}: driver source must be runfile (or left out), got {source!r}")
    if source and version is None:
        raise FleetError(f"{where}: driver source {source} needs a driver version")
    return (version, flavour, source)


def _os(where: str, value: object) -> str:
    if value not in OS_KINDS:
        raise FleetError(f"{where}: os must be one of {', '.join(OS_KINDS)}, not {value!r}")
    return str(value)


def _groups(where: str, value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise FleetError(f"{where}: groups must be a list")
    for g in value:
        if not isinstance(g, str) or not GROUP_RE.match(g) or g in ("all", "ungrouped"):
            raise FleetError(f"{where}: {g!r} is not a usable Ansible group name")
    return list(value)


def parse(data, path: Path) -> Fleet:
    if not isinstance(data, dict):
        raise FleetError(f"{path}: a fleet file is a mapping with `hosts:`")
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise FleetError(f"{path}: unknown keys {sorted(unknown)}")
    name = str(data.get("fleet") or path.stem)
    if not FLEET_RE.match(name):
        raise FleetError(f"{path}: fleet name {name!r} must match {FLEET_RE.pattern}")
    base_port = int(data.get("base_port", DEFAULT_BASE_PORT))
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise FleetError(f"{path}: defaults must be a mapping")
    unknown = set(defaults) - DEFAULT_KEYS
    if unknown:
        raise FleetError(f"{path}: unknown keys in defaults: {sorted(unknown)}")
    d_driver = _driver(f"{path}: defaults", defaults.get("driver"), ("580.159.04", "open", ""))
    d_groups = _groups(f"{path}: defaults", defaults.get("groups"))
    d_user = _remote_user(f"{path}: defaults", defaults.get("remote_user"), ("root", False))
    d_vars = defaults.get("vars") or {}
    d_services = _services(f"{path}: defaults", defaults.get("services"))
    d_drm = _flag(f"{path}: defaults", "nvidia_drm", defaults.get("nvidia_drm", False))
    d_os = _os(f"{path}: defaults", defaults.get("os", OS_KINDS[0]))
    fleet_vars = data.get("vars") or {}
    if not isinstance(fleet_vars, dict) or not isinstance(d_vars, dict):
        raise FleetError(f"{path}: vars must be a mapping")
    entries = data.get("hosts")
    if not isinstance(entries, list) or not entries:
        raise FleetError(f"{path}: hosts must be a non-empty list")

    hosts: list[HostSpec] = []
    for i, entry in enumerate(entries):
        where = f"{path}: hosts[{i}]"
        if not isinstance(entry, dict) or "name" not in entry:
            raise FleetError(f"{where}: each host needs a name")
        unknown = set(entry) - HOST_KEYS
        if unknown:
            raise FleetError(f"{where}: unknown keys {sorted(unknown)}")
        count = int(entry.get("count", 1))
        start = int(entry.get("start", 1))
        template = str(entry["name"])
        if count > 1 and "{" not in template:
            raise FleetError(f"{where}: with count, name must hold a placeholder like gpu-h100-{{n:02d}}")
        if count > 1 and "port" in entry:
            raise FleetError(f"{where}: port cannot be given together with count")
        for n in range(start, start + count):
            hname = template.format(n=n) if "{" in template else template
            hw = f"{where} ({hname})"
            if not HOSTNAME_RE.match(hname):
                raise FleetError(f"{hw}: host name must be a lower-case DNS label")
            driver = _driver(hw, entry.get("driver"), d_driver)
            hvars = dict(d_vars)
            hv = entry.get("vars") or {}
            if not isinstance(hv, dict):
                raise FleetError(f"{hw}: vars must be a mapping")
            hvars.update(hv)
            user, sudo = _remote_user(hw, entry.get("remote_user"), d_user)
            hosts.append(HostSpec(
                name=hname,
                port=int(entry["port"]) if "port" in entry else 0,
                groups=list(dict.fromkeys(d_groups + _groups(hw, entry.get("groups")))),
                gpus=_gpus(hw, entry.get("gpus")),
                driver_version=driver[0],
                driver_flavour=driver[1],
                driver_source=driver[2],
                vgpu_host=_vgpu_host(hw, entry.get("vgpu_host", defaults.get("vgpu_host", False))) != "none",
                vars=hvars,
                vgpu_sriov=_vgpu_host(hw, entry.get("vgpu_host", defaults.get("vgpu_host", False))) == "sriov",
                remote_user=user,
                remote_sudo=sudo,
                services=_services(hw, entry["services"]) if "services" in entry else list(d_services),
                nvidia_drm=_flag(hw, "nvidia_drm", entry.get("nvidia_drm", d_drm)),
                os=_os(hw, entry.get("os", d_os)),
            ))

    seen: dict[str, int] = {}
    for h in hosts:
        if h.name in seen:
            raise FleetError(f"{path}: host {h.name} is declared twice")
        seen[h.name] = 1
    # Ports: explicit ones stay, the rest count up from base_port in file order, skipping taken ones.
    taken = {h.port for h in hosts if h.port}
    nxt = base_port
    for h in hosts:
        if not h.port:
            while nxt in taken:
                nxt += 1
            h.port = nxt
            taken.add(nxt)
            nxt += 1
    ports = [h.port for h in hosts]
    if len(set(ports)) != len(ports):
        raise FleetError(f"{path}: two hosts share a port")
    for h in hosts:
        if not 1024 <= h.port <= 65535:
            raise FleetError(f"{path}: host {h.name}: port {h.port} is not in 1024..65535")
    return Fleet(name=name, path=path, base_port=base_port, hosts=hosts, vars=dict(fleet_vars), remote_user=d_user[0])


def load(path: str | Path) -> Fleet:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise FleetError(f"{p}: no such fleet file") from None
    except yaml.YAMLError as e:
        raise FleetError(f"{p}: not YAML: {e}") from None
    return parse(data, p.resolve())
