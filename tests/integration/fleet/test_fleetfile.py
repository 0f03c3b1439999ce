"""Fleet files parse into the hosts, ports and inventory the fleet tool promises (no root needed)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "sim" / "lib"))

from gpusim_fleet import config, control  # noqa: E402


def parse(text: str, name: str = "t.yml") -> config.Fleet:
    import yaml
    return config.parse(yaml.safe_load(text), Path(name))


def test_demo_fleet_has_the_four_documented_hosts():
    f = config.load(REPO / "sim" / "fleets" / "demo.yml")
    assert f.name == "demo"
    by = {h.name: h for h in f.hosts}
    assert by["gpu-h100-01"].gpus == [("h100-80gb-hbm3", 8)]
    assert by["gpu-a100-01"].gpus == [("a100-sxm4-80gb", 4)]
    assert by["gpu-mixed-01"].gpus == [("a30", 2), ("a100-sxm4-40gb", 2)]
    assert by["gpu-a40-01"].gpus == [("a40", 2)] and by["gpu-a40-01"].vgpu_host
    assert by["gpu-a40-01"].driver_flavour == "proprietary"
    assert [h.port for h in f.hosts] == [22200, 22201, 22202, 22203]


def test_scale_fleet_has_32_hosts_on_distinct_ports():
    f = config.load(REPO / "sim" / "fleets" / "scale-32.yml")
    assert len(f.hosts) == 32
    assert len({h.name for h in f.hosts}) == 32
    assert len({h.port for h in f.hosts}) == 32
    assert {pair[0] for h in f.hosts for pair in h.gpus} >= {"h100-80gb-hbm3", "a100-sxm4-80gb", "a30", "a40"}


def test_inventory_carries_groups_connection_and_host_vars():
    f = parse("""
fleet: inv
base_port: 23000
vars: {site: lab}
defaults: {groups: [gpu_hosts]}
hosts:
  - {name: a-1, groups: [h100], gpus: {h100-80gb-hbm3: 1}, vars: {rack: r1}}
  - {name: b-1, port: 23100, groups: [vgpu_hosts], gpus: {a40: 1}, vgpu_host: true}
""")
    inv = control.inventory_data(f)["all"]
    assert inv["vars"]["ansible_user"] == "root"
    assert inv["vars"]["site"] == "lab"
    assert inv["hosts"]["a-1"]["ansible_port"] == 23000
    assert inv["hosts"]["a-1"]["rack"] == "r1"
    assert inv["hosts"]["b-1"]["ansible_port"] == 23100
    assert set(inv["children"]["gpu_hosts"]["hosts"]) == {"a-1", "b-1"}
    assert set(inv["children"]["vgpu_hosts"]["hosts"]) == {"b-1"}


def test_vgpu_host_picks_the_backend_the_host_emulates():
    f = parse("hosts: [{name: a, vgpu_host: true}, {name: b, vgpu_host: mdev}, {name: c, vgpu_host: sriov}, {name: d}]")
    assert [(h.vgpu_host, h.vgpu_sriov) for h in f.hosts] == [(True, False), (True, False), (True, True), (False, False)]
    inv = control.inventory_data(f)["all"]
    assert inv["hosts"]["c"]["gpusim_vgpu_sriov"] is True and inv["hosts"]["a"]["gpusim_vgpu_sriov"] is False


def test_remote_user_defaults_to_root_and_an_unprivileged_one_gets_sudo_unless_told():
    f = parse("""
defaults: {remote_user: {name: ops, sudo: true}}
hosts:
  - {name: a}
  - {name: b, remote_user: audit}
  - {name: c, remote_user: {name: plain, sudo: false}}
  - {name: d, remote_user: root}
""")
    assert [(h.remote_user, h.remote_sudo) for h in f.hosts] == [("ops", True), ("audit", True), ("plain", False), ("root", False)]
    inv = control.inventory_data(f)["all"]
    assert inv["vars"]["ansible_user"] == "ops"
    assert "ansible_user" not in inv["hosts"]["a"]
    assert [inv["hosts"][h]["ansible_user"] for h in "bcd"] == ["audit", "plain", "root"]
    assert [h.remote_user for h in parse("hosts: [{name: a}]").hosts] == ["root"]
    assert control.inventory_data(parse("hosts: [{name: a}]"))["all"]["vars"]["ansible_user"] == "root"
    # the user is not part of the GPU state: changing it does not make the GPUs anew
    assert f.hosts[0].gpu_digest() == parse("hosts: [{name: a}]").hosts[0].gpu_digest()


def test_driver_source_runfile_marks_a_driver_no_package_carries(tmp_path, monkeypatch):
    from gpusim_fleet import host as hostmod  # pylint: disable=import-outside-toplevel
    f = parse("""
defaults: {driver: {version: "580.159.04", source: runfile}}
hosts: [{name: a}, {name: b, driver: {source: null}}, {name: c, driver: none}]
""")
    assert [(h.driver_version, h.driver_source) for h in f.hosts] == [("580.159.04", "runfile"), ("580.159.04", ""), (None, "")]
    with pytest.raises(config.FleetError, match="driver source must be runfile"):
        parse("hosts: [{name: a, driver: {source: mount}}]")
    monkeypatch.setattr(hostmod.paths, "BASE_DIR", tmp_path / "base")
    upper = tmp_path / "upper"
    upper.mkdir()
    assert hostmod.install_runfile_traces(upper, "580.159.04") == "runfile install traces of driver 580.159.04"
    assert "version: 580.159.04)" in (upper / "var/log/nvidia-installer.log").read_text()
    assert (upper / "usr/bin/nvidia-uninstall").is_symlink() and os.access(upper / "usr/bin/nvidia-installer", os.X_OK)
    assert hostmod.install_runfile_traces(upper, "580.95.05") == "runfile install traces already there"


def test_count_expands_a_name_template():
    f = parse("hosts: [{name: 'n-{n:02d}', count: 3, start: 7, gpus: {a30: 1}}]")
    assert [h.name for h in f.hosts] == ["n-07", "n-08", "n-09"]


@pytest.mark.parametrize("text, message", [
    ("hosts: []", "non-empty"),
    ("hosts: [{name: Bad_Name}]", "DNS label"),
    ("hosts: [{name: a}, {name: a}]", "declared twice"),
    ("hosts: [{name: a, gpus: {h100: 0}}]", "1..16"),
    ("hosts: [{name: a, driver: {version: 'x.y'}}]", "580.159.04"),
    ("hosts: [{name: a, driver: {flavour: closed}}]", "flavour"),
    ("hosts: [{name: a, groups: [all]}]", "group"),
    ("hosts: [{name: a, port: 80}]", "1024..65535"),
    ("hosts: [{name: a, port: 23000}, {name: b, port: 23000}]", "share a port"),
    ("hosts: [{name: a, colour: red}]", "unknown keys"),
    ("hosts: [{name: a, count: 2}]", "placeholder"),
    ("hosts: [{name: a, vgpu_host: vfio}]", r"hosts\[0\] \(a\): vgpu_host must be true, false, mdev or sriov"),
    ("hosts: [{name: a, remote_user: Ops}]", r"hosts\[0\] \(a\): remote_user name 'Ops' is not a user name"),
    ("hosts: [{name: a, remote_user: {name: ops, sudo: yes please}}]", "sudo must be true or false"),
    ("hosts: [{name: a, remote_user: {name: ops, shell: /bin/sh}}]", "unknown remote_user keys"),
    ("defaults: {remote_user: [ops]}\nhosts: [{name: a}]", "defaults: remote_user must be a user name or a mapping"),
])
def test_bad_fleet_files_are_refused_naming_the_entry(text, message):
    with pytest.raises(config.FleetError, match=message):
        parse(text)


def test_services_and_nvidia_drm_default_to_none_and_are_checked():
    f = parse("""
defaults: {services: [nvidia-persistenced], nvidia_drm: true}
hosts:
  - {name: a, gpus: {h100-80gb-hbm3: 1}}
  - {name: b, gpus: {h100-80gb-hbm3: 1}, services: [nvidia-fabricmanager, nvidia-persistenced], nvidia_drm: false}
""")
    by = {h.name: h for h in f.hosts}
    assert (by["a"].services, by["a"].nvidia_drm) == (["nvidia-persistenced"], True)
    assert (by["b"].services, by["b"].nvidia_drm) == (["nvidia-fabricmanager", "nvidia-persistenced"], False)
    plain = parse("hosts: [{name: c, gpus: {a30: 1}}]").hosts[0]
    assert (plain.services, plain.nvidia_drm) == ([], False)
    with pytest.raises(config.FleetError, match=r"hosts\[0\] \(d\): services: unknown service 'dcgm'"):
        parse("hosts: [{name: d, gpus: {a30: 1}, services: [dcgm]}]")
    with pytest.raises(config.FleetError, match=r"defaults: services must be a list"):
        parse("defaults: {services: nvidia-persistenced}\nhosts: [{name: e, gpus: {a30: 1}}]")
    with pytest.raises(config.FleetError, match=r"nvidia_drm must be true or false"):
        parse("hosts: [{name: f, gpus: {a30: 1}, nvidia_drm: yes please}]")


def test_os_kind_defaults_to_debian12_and_is_checked():
    f = parse("defaults: {os: rhel9-like}\nhosts:\n  - {name: a, gpus: {a30: 1}}\n  - {name: b, gpus: {a30: 1}, os: debian12}\n")
    assert [h.os for h in f.hosts] == ["rhel9-like", "debian12"]
    assert parse("hosts: [{name: c, gpus: {a30: 1}}]").hosts[0].os == "debian12"
    with pytest.raises(config.FleetError, match=r"hosts\[0\] \(d\): os must be one of debian12, rhel9-like, not 'rhel8'"):
        parse("hosts: [{name: d, gpus: {a30: 1}, os: rhel8}]")
