"""gpuvirt.fleet.driver on the fleet: stand-in NVIDIA packages from a signed local apt repository, real apt and dpkg.

Needs root (the fleet). Builds the stand-in packages (sim/driver-packages/build.py), serves them on 127.0.0.1:23099,
brings up tests/integration/driver/fleet-driver.yml (fleet 'drivertest', ports 23000+) with its own inventory, and
tears both down in the fixture's finaliser. The tests run in file order on one host: install, rerun, refusal, upgrade,
apt-get upgrade, failed install with rollback, downgrade; then on a second host whose driver is a runfile install (no
package carries it): refused, compliant but not package-managed, adopted. Install and upgrade times are printed (pytest -s).
"""
from __future__ import annotations

import json
import os
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
FLEET_FILE = HERE / "fleet-driver.yml"
PLAYBOOK = HERE / "driver.yml"
FLEET = "drivertest"
HOST = "dt-h100"
RUNFILE_HOST = "dt-runfile"  # 580.159.04 from a runfile install: loaded, no package carries it
HTTP_PORT = 23099
VENV_BIN = REPO / ".venv" / "bin"
WHITELIST = ["580.95.05", {"branch": "580", "versions": ["580.159.04", "580.105.08"]}]
DRIVER_PACKAGES = "dpkg-query -W -f '${Package} ${Version} ${db:Status-Abbrev}\\n' '*nvidia*' 'cuda-drivers*' 2>/dev/null | sort"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the fleet needs root"),
    pytest.mark.skipif(not (VENV_BIN / "ansible-playbook").exists(), reason="needs the repo venv with ansible-core"),
]


class Host:
    def __init__(self, workdir: Path, inventory: Path, name: str = HOST):
        self.name = name
        self.workdir = workdir
        self.inventory = inventory
        self.vars = {
            "driver_whitelist": WHITELIST,
            "driver_repository": "mirror",
            "driver_repository_url": f"http://127.0.0.1:{HTTP_PORT}/",
            "driver_repository_keyring_src": str(workdir / "keyring.gpg"),
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

    def packages(self) -> dict[str, str]:
        rows = [line.split() for line in self.sh(DRIVER_PACKAGES).splitlines()]
        return {row[0]: row[1] for row in rows if len(row) == 3 and row[2][1:2] == "i"}

    def loaded(self) -> str:
        return self.sh("cat /proc/driver/nvidia/version 2>/dev/null || true")

    def sim_driver(self) -> dict:
        return json.loads(self.sh("gpusimctl show"))["driver"]


def _recap(r: subprocess.CompletedProcess, name: str = HOST) -> dict[str, int]:
    for line in r.stdout.splitlines():
        if line.startswith(name + " ") and "ok=" in line:
            return {k: int(v) for k, v in (item.split("=") for item in line.split(":", 1)[1].split())}
    raise AssertionError(f"no recap for {name}:\n{r.stdout}\n{r.stderr}")


def _assert_driver(host: Host, version: str) -> None:
    packages = host.packages()
    wanted = ["nvidia-open-580", "nvidia-driver-580-open", "nvidia-dkms-580-open", "nvidia-utils-580", "libnvidia-compute-580",
              "nvidia-fabricmanager-580", "libnvidia-nscq-580"]
    assert {name: packages.get(name) for name in wanted} == {name: f"{version}-1" for name in wanted}, packages
    assert not any(name.startswith(("cuda-drivers", "nvidia-driver-580 ")) for name in packages), packages
    # Fabric manager and NSCQ equal the driver version exactly.
    assert packages["nvidia-fabricmanager-580"] == packages["libnvidia-nscq-580"] == packages["libnvidia-compute-580"]
    assert f"Open Kernel Module for x86_64  {version} " in host.loaded()
    assert host.sim_driver()["version"] == version
    held = set(host.sh("apt-mark showhold").split())
    assert set(wanted) <= held, held


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("driver")
    subprocess.run([sys.executable, str(REPO / "sim" / "driver-packages" / "build.py"), str(workdir)], check=True, capture_output=True)
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind", "127.0.0.1", "--directory", str(workdir / "repo")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    link = REPO / ".build" / "ansible_collections" / "gpuvirt" / "fleet"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("../../..")
    inventory = workdir / "hosts.yml"
    _fleet("down", "--fleet", FLEET, "--purge", check=False)
    try:
        _fleet("up", str(FLEET_FILE), "--inventory", str(inventory))
        assert yaml.safe_load(inventory.read_text())["all"]["hosts"][HOST]["ansible_port"] >= 23000
        yield Host(workdir, inventory)
    finally:
        _fleet("down", "--fleet", FLEET, "--purge", check=False)
        server.terminate()
        server.wait(timeout=10)


def test_install_a_whitelisted_version(host):
    assert host.packages() == {} and host.loaded() == ""
    r, seconds = host.play(driver_version="580.95.05")
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    print(f"\n[driver] first install of 580.95.05 (repository setup, install, reboot, NVML check): {seconds:.1f} s")
    assert _recap(r)["changed"] >= 2
    _assert_driver(host, "580.95.05")
    assert "580.95.05" in host.sh("cat /etc/apt/preferences.d/gpuvirt-nvidia-driver.pref")


def test_rerun_changes_nothing(host):
    r, seconds = host.play(driver_version="580.95.05")
    assert r.returncode == 0, r.stdout[-6000:]
    print(f"\n[driver] rerun, nothing to do: {seconds:.1f} s")
    assert _recap(r)["changed"] == 0, r.stdout[-4000:]


def test_non_whitelisted_version_is_refused_and_nothing_changes(host):
    before = host.sh(DRIVER_PACKAGES)
    r, _seconds = host.play(driver_version="580.159.05")
    assert r.returncode != 0
    assert "refused, nothing changed: driver version 580.159.05 is not whitelisted" in r.stdout, r.stdout[-4000:]
    assert host.sh(DRIVER_PACKAGES) == before


def test_upgrade_between_whitelisted_versions(host):
    r, seconds = host.play(driver_version="580.159.04")
    assert r.returncode == 0, r.stdout[-6000:]
    print(f"\n[driver] upgrade 580.95.05 -> 580.159.04 (install, reboot, NVML check): {seconds:.1f} s")
    _assert_driver(host, "580.159.04")


def test_apt_get_upgrade_does_not_move_the_driver(host):
    # Make the pin alone carry the proof as well as the hold: the newer 580 packages exist in the repository.
    before = host.packages()
    host.sh("DEBIAN_FRONTEND=noninteractive apt-get -q update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get -y -q upgrade")
    assert host.packages() == before
    policy = host.sh("apt-cache policy nvidia-open-580")
    assert "Candidate: 580.159.04-1" in policy, policy


def test_failed_install_restores_the_previous_version(host):
    r, seconds = host.play(driver_version="580.105.08")
    assert r.returncode != 0
    print(f"\n[driver] failed install of 580.105.08 with rollback: {seconds:.1f} s")
    assert "Rolled back: the previous driver packages are installed again" in r.stdout, r.stdout[-6000:]
    assert "stand-in failure" in r.stdout or "nvidia-dkms-580-open" in r.stdout
    _assert_driver(host, "580.159.04")
    assert host.sim_driver()["installed"] and host.sim_driver()["loaded"]


def test_downgrade_between_whitelisted_versions(host):
    r, seconds = host.play(driver_version="580.95.05")
    assert r.returncode == 0, r.stdout[-6000:]
    print(f"\n[driver] downgrade 580.159.04 -> 580.95.05: {seconds:.1f} s")
    _assert_driver(host, "580.95.05")
    r, _seconds = host.play(driver_branch="580")
    assert r.returncode == 0, r.stdout[-6000:]
    _assert_driver(host, "580.159.04")  # the branch resolves to its newest whitelisted version


def test_a_runfile_driver_is_refused_reported_compliant_and_adopted(host):
    runfile = Host(host.workdir, host.inventory, RUNFILE_HOST)
    assert runfile.packages() == {} and "Open Kernel Module for x86_64  580.159.04 " in runfile.loaded()
    # Another version: refused, naming what is loaded and where it came from; no package changes.
    r, _seconds = runfile.play(driver_version="580.95.05")
    assert r.returncode != 0
    assert ("refused, nothing changed: the loaded driver 580.159.04 (open) was not installed by the package manager (source: runfile: "
            "/usr/bin/nvidia-installer, /usr/bin/nvidia-uninstall, /var/log/nvidia-installer.log)") in r.stdout, r.stdout[-4000:]
    assert runfile.packages() == {}
    # The loaded version declared: ok, unchanged, compliant but not package-managed (and NVML agrees).
    r, _seconds = runfile.play(driver_version="580.159.04")
    assert r.returncode == 0, r.stdout[-6000:]
    assert _recap(r, RUNFILE_HOST)["changed"] == 0, r.stdout[-4000:]
    assert "complies with the whitelist (declared 580.159.04) but was not installed by the package manager" in r.stdout
    assert runfile.packages() == {}
    # adopt: the whitelisted packages replace it, held and pinned, and a rerun finds a package-managed host.
    r, seconds = runfile.play(driver_version="580.159.04", driver_adopt=True)
    assert r.returncode == 0, r.stdout[-6000:]
    print(f"\n[driver] adopt a runfile install of 580.159.04: {seconds:.1f} s")
    assert "adopted a runfile install" in r.stdout + r.stderr, r.stdout[-4000:]
    _assert_driver(runfile, "580.159.04")
    r, _seconds = runfile.play(driver_version="580.159.04")
    assert r.returncode == 0 and _recap(r, RUNFILE_HOST)["changed"] == 0, r.stdout[-4000:]
