"""gpuvirt.fleet.driver on RHEL-family fleet hosts: stand-in NVIDIA RPMs, the real dnf, rpm and versionlock.

Needs root (the fleet), rpmbuild and createrepo_c. Builds the stand-in RPMs (sim/driver-packages/build_rpm.py, cached
under .build/driver-rpms) and two repositories, one with NVIDIA's module metadata (streams) and one without (plain),
serves them on 127.0.0.1:24499, brings up tests/integration/driver_rhel/fleet-driver-rhel.yml (fleet 'drvrhel', ports
24400+, hosts of kind rhel9-like) with its own inventory, and tears both down in the fixture's finaliser. The tests run
in file order: on the streams host install, rerun, refusal, upgrade, dnf upgrade, failed install with rollback,
downgrade; then the versionlock-only layout on the plain host. Each step's wall time is printed (pytest -s) and
written to .build/driver-rhel-times.json.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fleethost import fleet as _fleet  # noqa: E402 pylint: disable=import-error,wrong-import-position

REPO = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
FLEET_FILE = HERE / "fleet-driver-rhel.yml"
PLAYBOOK = HERE / "driver.yml"
FLEET = "drvrhel"
STREAMS_HOST = "dr-streams"
PLAIN_HOST = "dr-plain"
HTTP_PORT = 24499
VENV_BIN = REPO / ".venv" / "bin"
TIMES = REPO / ".build" / "driver-rhel-times.json"
WHITELIST = ["580.95.05", {"branch": "580", "versions": ["580.159.04", "580.105.08"]}]
RPM_QA = "rpm -qa --qf '%{NAME} %{EPOCHNUM}:%{VERSION}-%{RELEASE}\\n' | sort"
# The packages an open 580 install on an NVSwitch host brings, with NVIDIA's names and epochs.
OPEN_PACKAGES = {"nvidia-open": 3, "nvidia-driver-cuda": 3, "nvidia-driver-cuda-libs": 3, "libnvidia-ml": 3, "nvidia-kmod-common": 3,
                 "kmod-nvidia-open-dkms": 3, "nvidia-fabric-manager": 0, "libnvidia-nscq-580": 0}

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the fleet needs root"),
    pytest.mark.skipif(not (VENV_BIN / "ansible-playbook").exists(), reason="needs the repo venv with ansible-core"),
    pytest.mark.skipif(shutil.which("rpmbuild") is None or shutil.which("createrepo_c") is None,
                       reason="needs rpmbuild and createrepo_c (make deps: rpm, createrepo-c)"),
]


def _record(step: str, seconds: float) -> None:
    print(f"\n[driver-rhel] {step}: {seconds:.1f} s")
    times = json.loads(TIMES.read_text()) if TIMES.exists() else {}
    times[step] = round(seconds, 1)
    TIMES.parent.mkdir(parents=True, exist_ok=True)
    TIMES.write_text(json.dumps(times, indent=1) + "\n")


class Host:
    def __init__(self, workdir: Path, inventory: Path, name: str, layout: str):
        self.name = name
        self.workdir = workdir
        self.inventory = inventory
        self.vars = {
            "driver_whitelist": WHITELIST,
            "driver_repository": "mirror",
            "driver_repository_url": f"http://127.0.0.1:{HTTP_PORT}/{'streams' if layout == 'streams' else 'plain'}/",
            "driver_repository_gpgcheck": False,  # stand-in packages, unsigned
            "driver_dnf_layout": layout,
            "driver_nvswitch": True,
            "driver_reboot_allowed": True,
        }

    def sh(self, command: str, check: bool = True) -> str:
        r = _fleet("exec", "--fleet", FLEET, self.name, "--", "sh", "-c", command, check=False, timeout=120)
        if check and r.returncode != 0:
            raise AssertionError(f"{command!r} failed ({r.returncode}): {r.stdout}{r.stderr}")
        return r.stdout

    def play(self, **extra) -> tuple[subprocess.CompletedProcess, float]:
        varfile = self.workdir / f"vars-{self.name}.json"
        varfile.write_text(json.dumps({**self.vars, **extra}))
        env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build"),
                   ANSIBLE_NOCOLOR="1", ANSIBLE_DEPRECATION_WARNINGS="False",
                   ANSIBLE_STDOUT_CALLBACK="default", PATH=f"{VENV_BIN}:{os.environ['PATH']}")
        started = time.monotonic()
        r = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(self.inventory), "--limit", self.name, "-e", f"@{varfile}",
                            str(PLAYBOOK)],
                           capture_output=True, text=True, timeout=600, cwd=REPO, env=env, check=False)
        return r, time.monotonic() - started

    def rpm_qa(self) -> str:
        return self.sh(RPM_QA)

    def packages(self) -> dict[str, str]:
        rows = [line.split() for line in self.rpm_qa().splitlines()]
        return {row[0]: row[1] for row in rows if len(row) == 2}

    def locks(self) -> list[str]:
        return [line for line in self.sh("cat /etc/dnf/plugins/versionlock.list").splitlines() if line and not line.startswith("#")]

    def loaded(self) -> str:
        return self.sh("cat /proc/driver/nvidia/version 2>/dev/null || true")

    def sim_driver(self) -> dict:
        return json.loads(self.sh("gpusimctl show"))["driver"]


def _recap(r: subprocess.CompletedProcess, name: str) -> dict[str, int]:
    for line in r.stdout.splitlines():
        if line.startswith(name + " ") and "ok=" in line:
            return {k: int(v) for k, v in (item.split("=") for item in line.split(":", 1)[1].split())}
    raise AssertionError(f"no recap for {name}:\n{r.stdout}\n{r.stderr}")


def _assert_driver(host: Host, version: str, stream: bool = True) -> None:
    packages = host.packages()
    assert {name: packages.get(name) for name in OPEN_PACKAGES} == {
        name: f"{epoch}:{version}-1.el9" for name, epoch in OPEN_PACKAGES.items()}, packages
    assert "cuda-drivers" not in packages and "kmod-nvidia-latest-dkms" not in packages, packages
    # Fabric manager and NSCQ equal the driver version exactly.
    driver = packages["nvidia-driver-cuda"].split(":", 1)[1]
    assert packages["nvidia-fabric-manager"].split(":", 1)[1] == packages["libnvidia-nscq-580"].split(":", 1)[1] == driver
    assert f"Open Kernel Module for x86_64  {version} " in host.loaded()
    sim = host.sim_driver()
    assert sim["version"] == version and sim["installed"] and sim["loaded"], sim
    # Locked: every driver package the repository offers at this version, exactly, and nothing else of the driver.
    locks = host.locks()
    for name, epoch in OPEN_PACKAGES.items():
        assert f"{name}-{epoch}:{version}-1.el9.*" in locks, locks
    assert all(f":{version}-1.el9.*" in line for line in locks), locks
    module = host.sh("cat /etc/dnf/modules.d/nvidia-driver.module 2>/dev/null || true")
    if stream:
        assert "stream=580-open" in module and "state=enabled" in module, module
    else:
        assert module == "", module


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("driver-rhel")
    started = time.monotonic()
    subprocess.run([sys.executable, str(REPO / "sim" / "driver-packages" / "build_rpm.py"), str(workdir / "repo")], check=True,
                   capture_output=True)
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind", "127.0.0.1", "--directory", str(workdir / "repo")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    link = REPO / ".build" / "ansible_collections" / "gpuvirt" / "fleet"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("../../..")
    inventory = workdir / "hosts.yml"
    TIMES.unlink(missing_ok=True)
    _fleet("down", "--fleet", FLEET, "--purge", check=False)
    try:
        _fleet("up", str(FLEET_FILE), "--inventory", str(inventory))
        assert yaml.safe_load(inventory.read_text())["all"]["hosts"][STREAMS_HOST]["ansible_port"] >= 24400
        _record("setup (RPMs, repositories, fleet up)", time.monotonic() - started)
        yield {"streams": Host(workdir, inventory, STREAMS_HOST, "streams"), "plain": Host(workdir, inventory, PLAIN_HOST, "versionlock")}
    finally:
        _fleet("down", "--fleet", FLEET, "--purge", check=False)
        server.terminate()
        server.wait(timeout=10)


def test_the_host_takes_the_redhat_family_path(hosts):
    host = hosts["streams"]
    assert 'ID="rocky"' in host.sh("cat /etc/os-release")
    assert host.rpm_qa().split() == ["gpuvirt-rhel9-like-release", "0:9.4-1"] and host.loaded() == ""


def test_install_a_whitelisted_version(hosts):
    host = hosts["streams"]
    r, seconds = host.play(driver_version="580.95.05")
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    _record("first install of 580.95.05 (repository, stream, lock, dnf install, reboot, NVML check)", seconds)
    assert _recap(r, host.name)["changed"] >= 2
    _assert_driver(host, "580.95.05")


def test_rerun_changes_nothing(hosts):
    host = hosts["streams"]
    r, seconds = host.play(driver_version="580.95.05")
    assert r.returncode == 0, r.stdout[-6000:]
    _record("rerun, nothing to do", seconds)
    assert _recap(r, host.name)["changed"] == 0, r.stdout[-4000:]


def test_non_whitelisted_version_is_refused_and_nothing_changes(hosts):
    host = hosts["streams"]
    before = host.rpm_qa()
    r, _seconds = host.play(driver_version="580.159.05")
    assert r.returncode != 0
    assert "refused, nothing changed: driver version 580.159.05 is not whitelisted" in r.stdout, r.stdout[-4000:]
    assert host.rpm_qa() == before


def test_upgrade_between_whitelisted_versions(hosts):
    host = hosts["streams"]
    r, seconds = host.play(driver_version="580.159.04")
    assert r.returncode == 0, r.stdout[-6000:]
    _record("upgrade 580.95.05 -> 580.159.04", seconds)
    _assert_driver(host, "580.159.04")


def test_dnf_upgrade_does_not_move_the_driver(hosts):
    # 580.105.08 (newer in the same stream) is in the repository: only the lock keeps the driver where it is.
    host = hosts["streams"]
    before = host.rpm_qa()
    assert "580.105.08" in host.sh("dnf -q repoquery --disableplugin=versionlock --qf '%{version}' nvidia-open")
    host.sh("dnf -y -q upgrade")
    assert host.rpm_qa() == before
    _assert_driver(host, "580.159.04")


def test_failed_install_restores_the_previous_version(hosts):
    host = hosts["streams"]
    r, seconds = host.play(driver_version="580.105.08")
    assert r.returncode != 0
    _record("failed install of 580.105.08 (%post fails) with rollback", seconds)
    assert "Rolled back: the previous driver packages are installed again" in r.stdout, r.stdout[-6000:]
    assert "the install scriptlet of kmod-nvidia-open-dkms failed" in r.stdout, r.stdout[-6000:]
    _assert_driver(host, "580.159.04")  # installed, locked and loaded
    assert host.sim_driver()["loaded"]


def test_downgrade_between_whitelisted_versions(hosts):
    host = hosts["streams"]
    r, seconds = host.play(driver_version="580.95.05")
    assert r.returncode == 0, r.stdout[-6000:]
    _record("downgrade 580.159.04 -> 580.95.05", seconds)
    _assert_driver(host, "580.95.05")


def test_versionlock_layout_without_module_metadata(hosts):
    host = hosts["plain"]
    r, seconds = host.play(driver_branch="580")
    assert r.returncode == 0, r.stdout[-6000:]
    _record("versionlock layout: install of branch 580 (resolves to 580.159.04)", seconds)
    _assert_driver(host, "580.159.04", stream=False)
    before = host.rpm_qa()
    host.sh("dnf -y -q upgrade")
    assert host.rpm_qa() == before
    r, seconds = host.play(driver_version="580.95.05")
    assert r.returncode == 0, r.stdout[-6000:]
    _record("versionlock layout: downgrade to 580.95.05", seconds)
    _assert_driver(host, "580.95.05", stream=False)
