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
import pwd
import stat
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
    return dict(os.environ, ANSIBLE_CONFIG=str(REPO / 'ansible.cfg'), ANSIBLE_COLLECTIONS_PATH=str(REPO / '.build'),
                ANSIBLE_NOCOLOR='1', PATH='%s:%s' % (VENV_BIN, os.environ['PATH']), **extra)


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


# ---- an unprivileged controller user ------------------------------------------------------------------------------
# The tests above run Ansible as root from the checkout. A user installs the collection and runs it as themselves:
# these helpers give a test an unprivileged local user, a Python that user can run with the venv's packages, and a
# way to run commands as that user in a clean environment (no variable of the test's own environment leaks in).

CONTROLLER_USER = 'gpuvirt-ci'


def ensure_controller_user(name: str = CONTROLLER_USER) -> pwd.struct_passwd:
    """The unprivileged controller user, made with useradd if missing: no login shell, no sudo, and a home of its own
    (/home/NAME), as a real user has. The tests run its commands with HOME set to a temporary directory, but Ansible
    still looks the home up in passwd where it expands `~NAME` (the remote_tmp of a local connection)."""
    try:
        user = pwd.getpwnam(name)
    except KeyError:
        proc = subprocess.run(['useradd', '--user-group', '--create-home', '--home-dir', '/home/' + name, '--shell', '/usr/sbin/nologin',
                               '--comment', 'gpuvirt.fleet tests, unprivileged Ansible controller', name],
                              capture_output=True, text=True, check=False)
        try:  # another test file may have made it meanwhile
            user = pwd.getpwnam(name)
        except KeyError:
            raise AssertionError('useradd %s failed: %s' % (name, proc.stderr)) from None
    home = Path(user.pw_dir)
    if not home.is_dir():
        home.mkdir(mode=0o750, parents=True, exist_ok=True)
        os.chown(home, user.pw_uid, user.pw_gid)
    return user


def _world_reachable(path: Path) -> bool:
    """Every directory above `path` can be traversed, and `path` read (and run, if executable), by any user."""
    real = Path(os.path.realpath(path))
    for parent in real.parents:
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return False
    mode = os.stat(real).st_mode
    return bool(mode & stat.S_IROTH) and (not mode & stat.S_IXUSR or bool(mode & stat.S_IXOTH))


def controller_python(dest: Path) -> Path:
    """A bin directory with python and the ansible commands of the repository's venv that any user can run.

    The venv's own interpreter may be unreachable for other users (here it links to /root/.pyenv, and /root is 0700).
    Then `dest` becomes a venv of a world-reachable interpreter of the same version (no pip, nothing downloaded),
    whose site-packages add the repository venv's through a .pth file, with the venv's ansible scripts copied in
    with their first line pointing at it. Fails when no such interpreter exists or the venv cannot be read.
    """
    venv_python = VENV_BIN / 'python'
    if _world_reachable(venv_python):
        return VENV_BIN
    version = subprocess.run([str(venv_python), '-c', 'import sys; print("%d.%d" % sys.version_info[:2])'],
                             capture_output=True, text=True, check=True).stdout.strip()
    site = REPO / '.venv' / 'lib' / ('python' + version) / 'site-packages'
    assert _world_reachable(site) and _world_reachable(site / 'ansible' / '__init__.py'), (
        '%s cannot be read by other users: make the repository path traversable (o+x) or move the venv' % site)
    base = next((Path(p) for p in ('/usr/bin/python' + version, '/usr/local/bin/python' + version)
                 if Path(p).exists() and _world_reachable(Path(p))), None)
    assert base is not None, 'no world-readable python%s for the unprivileged controller (the venv is %s)' % (version, os.path.realpath(venv_python))
    subprocess.run([str(base), '-m', 'venv', '--without-pip', str(dest)], check=True, capture_output=True)
    (dest / 'lib' / ('python' + version) / 'site-packages' / 'gpuvirt_repo_venv.pth').write_text(
        'import site; site.addsitedir(%r)\n' % str(site))
    for script in sorted(VENV_BIN.glob('ansible*')):
        lines = script.read_text().split('\n')
        if not lines[0].startswith('#!'):
            continue
        target = dest / 'bin' / script.name
        target.write_text('\n'.join(['#!%s' % (dest / 'bin' / 'python')] + lines[1:]))
        target.chmod(0o755)
    for path in [dest, *dest.rglob('*')]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | stat.S_IROTH | (stat.S_IXOTH if path.is_dir() or path.stat().st_mode & stat.S_IXUSR else 0))
    return dest / 'bin'


def run_as(user: str, argv: list[str], cwd: Path, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    """`argv` as `user` (runuser) in `cwd` with exactly the environment `env` (env -i): nothing of root's leaks in."""
    return subprocess.run(['runuser', '-u', user, '--', 'env', '-i', *('%s=%s' % kv for kv in sorted(env.items())), *argv],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False)
