# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection as a user runs it: built into a tarball, installed with ansible-galaxy from a requirements.yml into
./collections of an empty directory outside any checkout (no ansible.cfg of this repository), and run by FQCN
(gpuvirt.fleet.site, report, rollout, facts, plan) by an unprivileged controller user, over SSH as an unprivileged remote user
with passwordless sudo. Proves that the plays become root where they need it, that a rerun of site changes nothing,
that the controller-side outputs land under the current directory (gpuvirt-output/) and never in the installed
collection, and that nothing connected as root.

Needs root (the fleet, useradd, runuser) and the exporter wheels of `make demo` (.build/exporter-wheels). Brings up
fleet-installed.yml (fleet 'installedtest', ports 23800+, exporters on 23850-23851) once for the module and tears it
down in the fixture's finaliser. The controller user is `gpuvirt-ci` (made with useradd if missing).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fleethost import (REPO, VENV_BIN, controller_python, ensure_controller_user, fleet_up,  # noqa: E402 pylint: disable=import-error,wrong-import-position
                       recap, run_as)
from fleethost import fleet as _fleet  # noqa: E402 pylint: disable=import-error,wrong-import-position

HERE = Path(__file__).resolve().parent
FLEET = 'installedtest'
HOSTS = ['it-a100', 'it-a40']
EXPORTER_PORTS = {'it-a100': 23850, 'it-a40': 23851}
REMOTE_USER = 'ops'
WHEELS = REPO / '.build' / 'exporter-wheels'
DEMANDS = [{'tenant': 'inference', 'memory_gb': 10, 'count': 1, 'isolation': 'mig'}]

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason='the fleet and the controller user need root'),
              pytest.mark.skipif(not (WHEELS / '.stamp').exists(), reason='no exporter wheels: run make demo (or its wheel step) first')]

# The user's inventory sketch: groups as in inventories/example, connection settings as a real inventory has them.
GROUP_VARS = {
    'all': {
        # the hosts share this machine's network namespace and have no PyPI: loopback ports, wheels from the controller
        'gpuvirt_exporter': True,
        'exporter_listen_address': '127.0.0.1',
        'exporter_system_nvml': True,
        'exporter_wheel_dir': '{{ inventory_dir }}/wheels',
    },
    'a100_80gb': {
        'gpu_mig': [{'name': 'a100-quarters', 'devices': 'all', 'enabled': True, 'instances': [{'profile': '1g.20gb', 'count': 4}]}],
    },
    'a40_vgpu': {
        'driver_flavor': 'proprietary',
        'gpu_vgpu': [{'name': 'a40-workstations', 'devices': {'model': 'NVIDIA A40'}, 'type': 'A40-8Q', 'count': 6}],
    },
}
CONNECTION_VARS = ('ansible_user', 'ansible_python_interpreter', 'ansible_ssh_common_args')


def readme_quickstart() -> dict:
    """The README's real-host quickstart (the sh block under '### Against real hosts'): its requirements.yml, its
    inventory sketch (heredocs) and its commands, as a user would paste them."""
    text = (REPO / 'README.md').read_text(encoding='utf-8')
    block = text.split('### Against real hosts', 1)[1].split('```sh\n', 1)[1].split('\n```', 1)[0]
    files, commands, lines = {}, [], iter(block.splitlines())
    for line in lines:
        if line.startswith('cat > ') and line.endswith(" <<'EOF'"):
            files[line[len('cat > '):-len(" <<'EOF'")]] = ''.join(body + '\n' for body in iter(lines.__next__, 'EOF'))
        elif line.strip():
            commands.append(line.split('  #', 1)[0].strip())
    return {'files': files, 'commands': commands}


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its size and modification time (directories too)."""
    out = {}
    for path in sorted(root.rglob('*')):
        st = path.lstat()
        out[str(path.relative_to(root))] = (st.st_size if not path.is_dir() else 0, st.st_mtime_ns)
    return out


class Controller:
    """An empty directory of the unprivileged controller user (its HOME and cwd) and the commands it runs there."""

    def __init__(self, top: Path, user, bindir: Path, fleet_inventory: Path, logs: Path):
        self.user = user
        self.bindir = bindir
        self.cwd = top / 'work'
        self.fleet_inventory = fleet_inventory
        self.logs = logs  # each command's output, kept by pytest after the temporary directory is gone
        self.timings: dict[str, float] = {}
        self.runs: dict[str, subprocess.CompletedProcess] = {}
        self.before: dict[str, tuple[int, int]] = {}  # the installed collection's files, right after the install

    def env(self) -> dict:
        return {'HOME': str(self.cwd), 'PATH': '%s:/usr/bin:/bin' % self.bindir, 'LANG': 'C.UTF-8', 'USER': self.user.pw_name,
                'ANSIBLE_COLLECTIONS_PATH': './collections', 'ANSIBLE_NOCOLOR': '1', 'ANSIBLE_FORCE_COLOR': '0',
                'PYTHONDONTWRITEBYTECODE': '1'}

    def run(self, label: str, *argv: str, timeout: int = 900) -> subprocess.CompletedProcess:
        started = time.monotonic()
        proc = run_as(self.user.pw_name, list(argv), self.cwd, self.env(), timeout=timeout)
        self.timings[label] = time.monotonic() - started
        (self.logs / ('%s.log' % label)).write_text('$ %s\n%s\n%s' % (' '.join(argv), proc.stdout, proc.stderr))
        print('%s: %.1f s (rc %d)' % (label, self.timings[label], proc.returncode))
        self.runs[label] = proc
        return proc

    def playbook(self, label: str, name: str, *extra: str) -> subprocess.CompletedProcess:
        return self.run(label, 'ansible-playbook', name, '-i', 'inventory.yml', *extra)

    def give(self, path: Path, mode: int) -> None:
        os.chown(path, self.user.pw_uid, self.user.pw_gid)
        path.chmod(mode)

    def write(self, rel: str, data, mode: int = 0o644) -> Path:
        path = self.cwd / rel
        for parent in reversed(path.relative_to(self.cwd).parents[:-1]):
            if not (self.cwd / parent).is_dir():
                (self.cwd / parent).mkdir()
                self.give(self.cwd / parent, 0o755 if parent.parts[0] != '.ssh' else 0o700)
        path.write_text(data if isinstance(data, str) else '---\n' + yaml.safe_dump(data, sort_keys=False))
        self.give(path, mode)
        return path

    def prepare(self, tarball: Path) -> None:
        """What a user has before the first command: the tarball, the key of the hosts, the exporter's wheels
        (the hosts have no PyPI), a requirements.yml and an inventory sketch. Nothing of the checkout."""
        self.cwd.mkdir(mode=0o700)
        self.give(self.cwd, 0o700)
        assert not list(self.cwd.iterdir())
        fleet_inv = yaml.safe_load(self.fleet_inventory.read_text())['all']
        self.write('.ssh/id_fleet', Path(fleet_inv['vars']['ansible_ssh_private_key_file']).read_text(), 0o600)
        shutil.copy(tarball, self.cwd / tarball.name)
        self.give(self.cwd / tarball.name, 0o644)
        for wheel in sorted(WHEELS.glob('*.whl')):
            self.write('wheels/' + wheel.name, '', 0o644)  # the directory, owned by the user
            shutil.copyfile(wheel, self.cwd / 'wheels' / wheel.name)
        # the README's requirements.yml, verbatim: it must name the tarball this checkout builds
        readme = readme_quickstart()
        assert yaml.safe_load(readme['files']['requirements.yml']) == {'collections': [{'name': './' + tarball.name, 'type': 'file'}]}
        self.write('requirements.yml', readme['files']['requirements.yml'])
        hosts = {}
        for name, hv in fleet_inv['hosts'].items():
            hosts[name] = {k: hv[k] for k in ('ansible_host', 'ansible_port', 'exporter_port')}
        children = {group: {'hosts': {h: None for h in members['hosts']}} for group, members in fleet_inv['children'].items()}
        conn = {k: fleet_inv['vars'][k] for k in CONNECTION_VARS}
        conn['ansible_ssh_private_key_file'] = str(self.cwd / '.ssh' / 'id_fleet')
        self.write('inventory.yml', {'all': {'vars': conn, 'hosts': hosts, 'children': children}})
        for group, variables in GROUP_VARS.items():
            self.write('group_vars/%s.yml' % group, variables)


@pytest.fixture(scope='module', name='ctl')
def controller_fixture(tmp_path_factory):
    user = ensure_controller_user()
    top = Path(tempfile.mkdtemp(prefix='gpuvirt-installed-', dir='/tmp'))
    try:
        top.chmod(0o755)  # the controller user reaches its directory and the Python below; the rest stays root's
        bindir = controller_python(top / 'python')
        build = top / 'build'
        proc = subprocess.run([str(VENV_BIN / 'ansible-galaxy'), 'collection', 'build', '--output-path', str(build), '--force', str(REPO)],
                              capture_output=True, text=True, cwd=REPO, check=False, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        tarballs = sorted(build.glob('gpuvirt-fleet-*.tar.gz'))
        assert len(tarballs) == 1, tarballs
        tarball = tarballs[0]
        fleetdir = top / 'fleet'
        fleetdir.mkdir(mode=0o700)
        with fleet_up(FLEET, HERE / 'fleet-installed.yml', fleetdir) as inventory:
            ctl = Controller(top, user, bindir, inventory, tmp_path_factory.mktemp('installed-logs'))
            ctl.prepare(tarball)
            yield ctl
            print('timings: ' + ', '.join('%s %.1f s' % kv for kv in ctl.timings.items()))
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _installed(ctl: Controller) -> Path:
    return ctl.cwd / 'collections' / 'ansible_collections' / 'gpuvirt' / 'fleet'


def _sh(host: str, command: str) -> str:
    proc = _fleet('exec', '--fleet', FLEET, host, '--', 'sh', '-c', command, check=False)
    assert proc.returncode == 0, '%r failed on %s: %s %s' % (command, host, proc.stdout, proc.stderr)
    return proc.stdout


def _ok(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout[-8000:] + proc.stderr[-3000:]


def test_the_fleet_hands_out_an_unprivileged_remote_user(ctl):
    inventory = yaml.safe_load(ctl.fleet_inventory.read_text())['all']
    assert inventory['vars']['ansible_user'] == REMOTE_USER
    for host in HOSTS:
        assert _sh(host, 'id -un %s && sudo -l -U %s' % (REMOTE_USER, REMOTE_USER)).count('NOPASSWD: ALL') == 1
        assert _sh(host, 'whoami').strip() == 'root'  # sim/fleet exec is still root


def test_install_from_the_tarball_with_a_requirements_file(ctl):
    proc = ctl.run('version', 'ansible-playbook', '--version')
    assert proc.returncode == 0 and 'config file = None' in proc.stdout, _ok(proc)
    install = [c for c in readme_quickstart()['commands'] if c.startswith('ansible-galaxy collection install')]
    assert install == ['ansible-galaxy collection install -r requirements.yml -p ./collections'], install  # the README's command
    proc = ctl.run('galaxy-install', *install[0].split())
    assert proc.returncode == 0, _ok(proc)
    assert (_installed(ctl) / 'MANIFEST.json').is_file()
    assert not (_installed(ctl) / 'sim').exists() and not (_installed(ctl) / 'tests').exists()
    proc = ctl.run('galaxy-list', 'ansible-galaxy', 'collection', 'list', 'gpuvirt.fleet', '--format', 'json')
    assert proc.returncode == 0, _ok(proc)
    found = [path for path, collections in json.loads(proc.stdout).items() if 'gpuvirt.fleet' in collections]
    assert found == [str(ctl.cwd / 'collections' / 'ansible_collections')], found  # only the one just installed
    ctl.before = _listing(_installed(ctl))


def test_site_converges_through_become(ctl):
    proc = ctl.playbook('site', 'gpuvirt.fleet.site')
    assert proc.returncode == 0, _ok(proc)
    for host in HOSTS:
        assert recap(proc, host, 'failed') == 0 and recap(proc, host, 'unreachable') == 0
        assert recap(proc, host) > 0, _ok(proc)
    # root's work, done through sudo: the MIG layout, the vGPU devices, the exporter's unit running
    state = json.loads(_sh('it-a100', 'gpusimctl show'))
    assert state['gpus'][0]['mig']['current'] and len(state['gpus'][0]['gpu_instances']) == 4
    assert int(_sh('it-a40', 'ls /sys/bus/mdev/devices | wc -l')) == 6
    # the boot-time re-apply runs from the code the roles copied out of the installed collection (every module_utils
    # file it has): its unit, run as at boot, finds what it imports and succeeds
    installed = sorted(path.name for path in (_installed(ctl) / 'plugins' / 'module_utils').glob('*.py'))
    for host, unit in (('it-a100', 'gpuvirt-mig.service'), ('it-a40', 'gpuvirt-vgpu.service')):
        code = _sh(host, 'ls /usr/local/lib/gpuvirt/ansible_collections/gpuvirt/fleet/plugins/module_utils/').split()
        assert sorted(name for name in code if name.endswith('.py')) == installed, host
        _sh(host, 'systemctl restart %s' % unit)
        assert _sh(host, 'systemctl is-active %s' % unit).strip() == 'active', host
    for host, port in EXPORTER_PORTS.items():
        assert _sh(host, 'systemctl is-active gpuvirt-exporter.service').strip() == 'active'
        assert _sh(host, 'stat -c %U /etc/systemd/system/gpuvirt-exporter.service').strip() == 'root'
        with urllib.request.urlopen('http://127.0.0.1:%d/metrics' % port, timeout=10) as response:
            assert response.status == 200 and 'gpu' in response.read().decode()
    # the monitoring play wrote under the current directory
    monitoring = ctl.cwd / 'gpuvirt-output' / 'monitoring'
    scrape = yaml.safe_load((monitoring / 'prometheus.yml').read_text())
    assert '127.0.0.1:23850' in json.dumps(scrape) and '127.0.0.1:23851' in json.dumps(scrape)
    assert list((monitoring / 'grafana').glob('*.json'))
    assert (monitoring / 'prometheus.yml').stat().st_uid == ctl.user.pw_uid


def test_report_is_written_under_the_current_directory(ctl):
    proc = ctl.playbook('report', 'gpuvirt.fleet.report')
    assert proc.returncode == 0, _ok(proc)
    report = ctl.cwd / 'gpuvirt-output' / 'fleet-report.html'
    assert report.is_file(), _ok(proc)
    html = report.read_text()
    assert all(host in html for host in HOSTS) and '1g.20gb' in html and 'A40-8Q' in html
    assert report.stat().st_uid == ctl.user.pw_uid


def test_site_rerun_changes_nothing(ctl):
    proc = ctl.playbook('site-rerun', 'gpuvirt.fleet.site')
    assert proc.returncode == 0, _ok(proc)
    lines = [line for line in proc.stdout.splitlines() if line.split(' ', 1)[0] in HOSTS + ['localhost'] and 'changed=' in line]
    print('\n'.join(lines))
    for host in HOSTS:
        assert recap(proc, host) == 0, _ok(proc)
        assert recap(proc, host, 'failed') == 0


def test_rollout_runs_by_fqcn_and_writes_its_summary_under_the_current_directory(ctl):
    proc = ctl.playbook('rollout', 'gpuvirt.fleet.rollout', '-e', json.dumps({'gpuvirt_rollout_batch': 1}))
    assert proc.returncode == 0, _ok(proc)
    summary = ctl.cwd / 'gpuvirt-output' / 'rollout-summary.json'
    data = json.loads(summary.read_text())
    assert data['status'] == 'completed', data
    assert data['settings']['canaries'] == [HOSTS[0]]
    assert {host: data['hosts'][host]['state'] for host in HOSTS} == {host: 'done' for host in HOSTS}
    assert summary.stat().st_uid == ctl.user.pw_uid
    for host in HOSTS:  # converged already: the rollout's converge and gates change nothing
        assert recap(proc, host) == 0, _ok(proc)


def test_facts_and_plan_run_by_fqcn(ctl):
    proc = ctl.playbook('facts', 'gpuvirt.fleet.facts')
    assert proc.returncode == 0, _ok(proc)
    assert all(recap(proc, host, 'failed') == 0 for host in HOSTS)
    proc = ctl.playbook('plan', 'gpuvirt.fleet.plan', '-e', json.dumps({'gpu_demands': DEMANDS, 'gpuvirt_plan_apply': False}))
    assert proc.returncode == 0, _ok(proc)
    written = sorted((ctl.cwd / 'gpuvirt-output' / 'plan' / 'host_vars').glob('*.yml'))
    assert written and {path.stem for path in written} <= set(HOSTS), _ok(proc)
    assert any(yaml.safe_load(path.read_text()).get('gpu_mig') for path in written)
    # gpuvirt_plan_apply false: the layout site made is still there
    assert len(json.loads(_sh('it-a100', 'gpusimctl show'))['gpus'][0]['gpu_instances']) == 4


def test_the_remote_user_is_not_root_and_become_reaches_root(ctl):
    proc = ctl.run('whoami', 'ansible', 'all', '-i', 'inventory.yml', '-m', 'ansible.builtin.command', '-a', 'whoami', '-o')
    assert proc.returncode == 0, _ok(proc)
    assert sorted(line.split(' | ')[0] for line in proc.stdout.splitlines() if line.endswith('(stdout) ' + REMOTE_USER)) == HOSTS, proc.stdout
    proc = ctl.run('whoami-become', 'ansible', 'all', '-i', 'inventory.yml', '-b', '-m', 'ansible.builtin.command', '-a', 'whoami', '-o')
    assert proc.returncode == 0 and proc.stdout.count('(stdout) root') == 2, _ok(proc)
    # every SSH login of the whole test was the remote user's, never root's
    for host in HOSTS:
        logins = _sh(host, 'journalctl -b -o cat _COMM=sshd-session _COMM=sshd | grep "^Accepted publickey for " || true').splitlines()
        assert logins and {line.split()[3] for line in logins} == {REMOTE_USER}, logins


def test_nothing_was_written_into_the_installed_collection(ctl):
    assert _listing(_installed(ctl)) == ctl.before
    # and everything the runs wrote belongs to the controller user, under its directory
    outputs = list((ctl.cwd / 'gpuvirt-output').rglob('*'))
    assert outputs and all(p.stat().st_uid == ctl.user.pw_uid for p in outputs)
