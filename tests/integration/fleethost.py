# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One host of a test fleet, for the integration tests that drive roles over SSH: `sim/fleet` (up, down, exec,
reboot), ansible-playbook and ad-hoc modules against the fleet's generated inventory, and the recap's counts.

Each test file brings up its own fleet (its own name and ports) with `fleet_up`, a context manager that always
tears it down, even after a failed `up`.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[2]
FLEET_TOOL = REPO / 'sim' / 'fleet'
VENV_BIN = REPO / '.venv' / 'bin'


def fleet(*args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run sim/fleet; with `check`, a failure raises with its output."""
    proc = subprocess.run([str(FLEET_TOOL), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False)
    if check and proc.returncode != 0:
        raise AssertionError('sim/fleet %s failed: %s %s' % (' '.join(args), proc.stdout, proc.stderr))
    return proc


def ansible_env(**extra: str) -> dict:
    """The environment ansible-playbook runs in: the repository's ansible.cfg and the venv's tools first."""
    return dict(os.environ, ANSIBLE_CONFIG=str(REPO / 'ansible.cfg'), ANSIBLE_NOCOLOR='1',
                PATH='%s:%s' % (VENV_BIN, os.environ['PATH']), **extra)


def recap(proc: subprocess.CompletedProcess, host: str, key: str = 'changed') -> int:
    """One count (changed, failed, ok, ...) of `host` from a playbook's recap."""
    for line in proc.stdout.splitlines():
        if line.startswith(host + ' ') and key + '=' in line:
            return int(line.split(key + '=')[1].split()[0])
    raise AssertionError('no recap for %s:\n%s\n%s' % (host, proc.stdout[-4000:], proc.stderr[-2000:]))


class FleetHost:
    """A host of a running test fleet, and the playbook the test file drives it with."""

    def __init__(self, fleet_name: str, name: str, workdir: Path, inventory: Path, playbook: Path):
        self.fleet = fleet_name
        self.name = name
        self.workdir = workdir
        self.inventory = inventory
        self.playbook = playbook

    def sh(self, command: str) -> str:
        """A shell command on the host (as root, through the fleet's namespaces); it must succeed."""
        proc = fleet('exec', '--fleet', self.fleet, self.name, '--', 'sh', '-c', command, check=False)
        assert proc.returncode == 0, '%r failed: %s %s' % (command, proc.stdout, proc.stderr)
        return proc.stdout

    def state(self) -> dict:
        """The host's simulated GPU state (the test's view behind the scenes)."""
        return json.loads(self.sh('gpusimctl show'))

    def play(self, playbook: Path | None = None, **variables) -> subprocess.CompletedProcess:
        """ansible-playbook over SSH with `variables` as extra vars (a JSON file, so types survive)."""
        varfile = self.workdir / 'vars.json'
        varfile.write_text(json.dumps(variables))
        return subprocess.run([str(VENV_BIN / 'ansible-playbook'), '-i', str(self.inventory), '-e', '@%s' % varfile,
                               str(playbook or self.playbook)],
                              capture_output=True, text=True, timeout=600, cwd=REPO, env=ansible_env(), check=False)

    def facts(self) -> dict:
        """gpuvirt.fleet.gpu_facts run on the host over SSH, as a playbook would see them."""
        proc = subprocess.run([str(VENV_BIN / 'ansible'), '-i', str(self.inventory), self.name, '-m', 'gpuvirt.fleet.gpu_facts', '-o'],
                              capture_output=True, text=True, timeout=120, cwd=REPO, env=ansible_env(), check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return json.loads(proc.stdout.split('=>', 1)[1])['ansible_facts']

    def changed(self, proc: subprocess.CompletedProcess) -> int:
        return recap(proc, self.name)

    def reboot(self) -> None:
        """sim/fleet reboot, then wait until systemd has finished booting."""
        fleet('reboot', '--fleet', self.fleet, self.name)
        self.sh('systemctl is-system-running --wait >/dev/null || true')


@contextlib.contextmanager
def fleet_up(fleet_name: str, fleet_file: Path, workdir: Path) -> Iterator[Path]:
    """Bring the fleet up from a clean slate with its inventory in `workdir`; purge it on the way out."""
    inventory = workdir / 'hosts.yml'
    fleet('down', '--fleet', fleet_name, '--purge', check=False)
    try:
        fleet('up', str(fleet_file), '--inventory', str(inventory))
        yield inventory
    finally:
        fleet('down', '--fleet', fleet_name, '--purge', check=False)
