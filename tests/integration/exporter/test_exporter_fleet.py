# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpuvirt.fleet.exporter and gpuvirt.fleet.monitoring on the fleet, over SSH: every host serves metrics, a real
Prometheus on loopback scrapes them all (up == 1), promtool accepts the rendered config, and basic auth answers 401.

Needs root (the fleet) and Debian's prometheus package (promtool, prometheus). Brings up fleet-exporter.yml (fleet
'exptest', ports 23300-23399) with its own inventory and tears it down in the fixture's finaliser.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fleethost import fleet as _fleet  # noqa: E402 pylint: disable=import-error,wrong-import-position

REPO = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
FLEET = 'exptest'
VENV_BIN = REPO / '.venv' / 'bin'
PORTS = {'et-h100': 23350, 'et-a40': 23351}
PROMETHEUS_PORT = 23390
WHEELS = ['bcrypt==5.0.0', 'pip']

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason='the fleet needs root'),
              pytest.mark.skipif(not shutil.which('prometheus') or not shutil.which('promtool'),
                                 reason="Debian's prometheus package (prometheus, promtool) is not installed")]


def _get(port: int, auth: tuple[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request('http://127.0.0.1:%d/metrics' % port)
    if auth:
        request.add_header('Authorization', 'Basic ' + base64.b64encode(('%s:%s' % auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ''


class Fleet:
    def __init__(self, workdir: Path, inventory: Path, wheels: Path):
        self.workdir = workdir
        self.inventory = inventory
        self.wheels = wheels
        self.prometheus_config = workdir / 'monitoring' / 'prometheus.yml'

    def play(self, *extra: str, **variables) -> subprocess.CompletedProcess:
        variables = dict({'exporter_wheel_dir': str(self.wheels), 'monitoring_prometheus_config': str(self.prometheus_config),
                          'monitoring_dashboard_dir': str(self.workdir / 'monitoring' / 'grafana'),
                          'monitoring_scrape_interval': '1s', 'monitoring_scrape_timeout': '1s'}, **variables)
        varfile = self.workdir / 'vars.json'
        varfile.write_text(json.dumps(variables))
        env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / 'ansible.cfg'), ANSIBLE_COLLECTIONS_PATH=str(REPO / '.build'),
                   ANSIBLE_NOCOLOR='1', PATH='%s:%s' % (VENV_BIN, os.environ['PATH']))
        return subprocess.run([str(VENV_BIN / 'ansible-playbook'), '-i', str(self.inventory), '-e', '@%s' % varfile, *extra,
                               str(HERE / 'exporter.yml')], capture_output=True, text=True, timeout=600, cwd=REPO, env=env, check=False)

    def sh(self, host: str, command: str) -> str:
        proc = _fleet('exec', '--fleet', FLEET, host, '--', 'sh', '-c', command, check=False)
        assert proc.returncode == 0, '%r failed: %s %s' % (command, proc.stdout, proc.stderr)
        return proc.stdout


def _changed(proc: subprocess.CompletedProcess) -> dict[str, int]:
    return {line.split()[0]: int(line.split('changed=')[1].split()[0]) for line in proc.stdout.splitlines() if 'changed=' in line}


@pytest.fixture(scope='module', name='fleet')
def fleet_fixture(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('exporter')
    inventory = workdir / 'hosts.yml'
    wheels = workdir / 'wheels'
    subprocess.run([sys.executable, '-m', 'pip', 'download', '-q', '--disable-pip-version-check', '-d', str(wheels), '--only-binary=:all:',
                    '--python-version', '3.11', '--platform', 'manylinux2014_x86_64', *WHEELS], check=True, capture_output=True)
    _fleet('down', '--fleet', FLEET, '--purge', check=False)
    try:
        _fleet('up', str(HERE / 'fleet-exporter.yml'), '--inventory', str(inventory))
        yield Fleet(workdir, inventory, wheels)
    finally:
        _fleet('down', '--fleet', FLEET, '--purge', check=False)


def test_the_roles_deploy_and_a_rerun_changes_nothing(fleet):
    proc = fleet.play()
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    # the pinned packages come from the wheels in the code's host_state call: pip is not started
    pip_task = proc.stdout.split('TASK [gpuvirt.fleet.exporter : Install the packages offline with the pip of the wheel directory]')
    assert len(pip_task) == 2 and 'changed: [' not in pip_task[1].split('TASK [')[0], proc.stdout[-6000:]
    listed = fleet.sh('et-h100', 'cat /opt/gpuvirt-exporter/venv/lib/python3*/site-packages/bcrypt-5.0.0.dist-info/INSTALLER')
    assert listed.strip() == 'gpuvirt.fleet'
    # a fresh host: the exporter is started once, with its new code and configuration, not started and restarted
    # (the one call that writes the unit starts it; the restart handler does nothing)
    handler = proc.stdout.split('RUNNING HANDLER [gpuvirt.fleet.exporter : Restart the exporter]')
    assert len(handler) == 2 and 'changed: [' not in handler[1].split('TASK [')[0], proc.stdout[-6000:]
    for host in PORTS:
        assert fleet.sh(host, 'systemctl show --property=NRestarts --value gpuvirt-exporter.service').strip() == '0'
    again = fleet.play()
    assert again.returncode == 0, again.stdout[-6000:]
    assert set(_changed(again).values()) == {0}, again.stdout[-4000:]
    check = fleet.play('--check', '--limit', 'gpu_hosts')
    assert check.returncode == 0 and set(_changed(check).values()) == {0}, check.stdout[-4000:]
    for host in PORTS:
        assert fleet.sh(host, 'systemctl is-active gpuvirt-exporter.service').strip() == 'active'
        assert fleet.sh(host, 'getent passwd gpuvirt-exporter | cut -d: -f7').strip() == '/usr/sbin/nologin'


def test_a_changed_configuration_restarts_the_running_exporter(fleet):
    def invocation():
        return fleet.sh('et-h100', 'systemctl show --property=InvocationID --value gpuvirt-exporter.service').strip()
    before = invocation()
    changed = fleet.play('--limit', 'et-h100', '-v', exporter_sample_interval=2)
    assert changed.returncode == 0 and re.search(r"TASK \[gpuvirt.fleet.exporter : Write the exporter's configuration and unit, and enable and "
                                                 r'\(re\)start it \(one call\)\] \**\nchanged: \[et-h100\].*"restart gpuvirt-exporter.service"',
                                                 changed.stdout), changed.stdout[-6000:]
    assert invocation() != before and '--sample-interval=2' in fleet.sh('et-h100', 'systemctl cat gpuvirt-exporter.service')
    back = fleet.play('--limit', 'et-h100')
    assert back.returncode == 0 and '--sample-interval=1' in fleet.sh('et-h100', 'systemctl cat gpuvirt-exporter.service'), back.stdout[-4000:]
    assert fleet.sh('et-h100', 'systemctl is-active gpuvirt-exporter.service').strip() == 'active'


def test_every_host_serves_its_own_gpus(fleet):
    fleet.sh('et-a40', 'gpusimctl vgpu add --gpu 0 --type 558 --vm-id vm-7 >/dev/null')
    added = time.monotonic()
    for host, port in PORTS.items():
        status, text = _get(port)
        assert status == 200
        assert 'gpuvirt_gpu_up{Hostname="%s"' % host in text
        # the unit's default --sample-interval 1: the values a scrape serves were read at most 2 s before it
        ages = [float(v) for v in re.findall(r'^gpuvirt_gpu_sample_age_seconds\{[^}]*\} (\S+)$', text, re.M)]
        assert ages and max(ages) <= 2.0, ages
    # the new vGPU shows once the background sampler has read the GPU again: within 2 x the interval
    while 'vm_id="vm-7"' not in (text := _get(PORTS['et-a40'])[1]):
        assert time.monotonic() - added < 10, text[-2000:]
        time.sleep(0.2)
    assert 'NVIDIA H100 80GB HBM3' in _get(PORTS['et-h100'])[1]


def test_dcgm_names_and_the_drift_file_through_the_hardened_unit(fleet):
    """The default names (both): dcgm-exporter's series with its labels; the unit (ProtectSystem=strict) reads the drift file."""
    status, text = _get(PORTS['et-h100'])
    assert status == 200
    assert re.search(r'^DCGM_FI_DEV_SM_CLOCK\{[^}]*Hostname="et-h100"[^}]*\} 1980(\.0)?$', text, re.M), text[:2000]
    assert '# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter' in text and 'DCGM_FI_DRIVER_VERSION="580.159.04"' in text
    assert 'gpuvirt_declaration_drift' not in text  # no file yet
    fleet.sh('et-h100', 'mkdir -p /var/lib/gpuvirt && printf \'{"mig": {"drift": true, "checked": 1764000000.0}}\' '
                        '> /var/lib/gpuvirt/drift.json && chmod 0644 /var/lib/gpuvirt/drift.json')
    try:
        text = _get(PORTS['et-h100'])[1]
        assert re.search(r'^gpuvirt_declaration_drift\{kind="mig"\} 1(\.0)?$', text, re.M), text[-3000:]
        assert re.search(r'^gpuvirt_exporter_drift_file_errors_total 0(\.0)?$', text, re.M)
    finally:
        fleet.sh('et-h100', 'rm -f /var/lib/gpuvirt/drift.json')
    assert 'DCGM_FI_DEV_FB_USED' in _get(PORTS['et-a40'])[1]


def test_the_unit_is_hardened(fleet):
    out = fleet.sh('et-h100', 'systemd-analyze security gpuvirt-exporter.service --no-pager | tail -1')
    score = float(out.split('service:')[1].split()[0])
    print('systemd-analyze security gpuvirt-exporter.service: %s' % out.strip())
    assert score <= 2.0, out


def test_promtool_accepts_the_rendered_config_with_every_gpu_host(fleet):
    proc = subprocess.run(['promtool', 'check', 'config', str(fleet.prometheus_config)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = fleet.prometheus_config.read_text()
    assert 'job_name: vgpu_metrics' in text
    for port in PORTS.values():
        assert '127.0.0.1:%d' % port in text


def test_a_real_prometheus_scrapes_every_host_up(fleet):
    data = fleet.workdir / 'tsdb'
    prometheus = subprocess.Popen(['prometheus', '--config.file=%s' % fleet.prometheus_config, '--storage.tsdb.path=%s' % data,
                                   '--web.listen-address=127.0.0.1:%d' % PROMETHEUS_PORT], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
    url = 'http://127.0.0.1:%d/api/v1/query?query=up%%7Bjob%%3D%%22vgpu_metrics%%22%%7D' % PROMETHEUS_PORT
    result = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    result = json.load(response)['data']['result']
            except (OSError, ValueError, KeyError):
                result = []
            if len(result) == len(PORTS) and all(r['value'][1] == '1' for r in result):
                break
            time.sleep(1)
    finally:
        prometheus.terminate()
        prometheus.wait(20)
    assert sorted((r['metric']['instance'], r['value'][1]) for r in result) == sorted((h, '1') for h in PORTS)


def test_with_basic_auth_no_or_wrong_credentials_get_401(fleet):
    bcrypt = pytest.importorskip('bcrypt')
    hashed = bcrypt.hashpw(b'gpu-s3cret', bcrypt.gensalt(rounds=6)).decode()
    proc = fleet.play('--limit', 'et-h100', '--tags', 'exporter_configure,exporter_run', exporter_basic_auth_users={'prometheus': hashed})
    assert proc.returncode == 0, proc.stdout[-6000:]
    port = PORTS['et-h100']
    assert _get(port)[0] == 401
    assert _get(port, ('prometheus', 'wrong'))[0] == 401
    status, text = _get(port, ('prometheus', 'gpu-s3cret'))
    assert status == 200 and 'gpuvirt_gpu_up' in text
    assert fleet.sh('et-h100', 'stat -c %a:%G /etc/gpuvirt-exporter/web-config.yml').strip() == '640:gpuvirt-exporter'


def test_a_requirement_the_wheel_installer_cannot_decide_is_installed_by_pip(fleet):
    """An unpinned requirement: host_state installs nothing and says why; pip from the wheel directory installs it."""
    fleet.sh('et-a40', 'rm -rf /opt/gpuvirt-exporter/venv')
    proc = fleet.play('--limit', 'et-a40', '-v', exporter_pip_packages=['bcrypt'])
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert "requirement 'bcrypt' is not pinned with ==" in proc.stdout, proc.stdout[-6000:]
    pip_task = proc.stdout.split('TASK [gpuvirt.fleet.exporter : Install the packages offline with the pip of the wheel directory]')
    assert len(pip_task) == 2 and 'changed: [et-a40]' in pip_task[1].split('TASK [')[0], proc.stdout[-6000:]
    assert fleet.sh('et-a40', 'cat /opt/gpuvirt-exporter/venv/lib/python3*/site-packages/bcrypt-*.dist-info/INSTALLER').strip() == 'pip'
    assert fleet.sh('et-a40', 'systemctl is-active gpuvirt-exporter.service').strip() == 'active'
    assert _get(PORTS['et-a40'])[0] == 200


def test_code_changed_behind_ansibles_back_is_written_back_and_the_running_exporter_restarted(fleet):
    """The install call rewrites the code; the configuration call, which writes nothing itself, restarts the exporter
    because the install changed something in this run (units[].restart: always)."""
    code = '/opt/gpuvirt-exporter/lib/gpuvirt_exporter/wire.py'
    fleet.sh('et-a40', 'echo "# edited by hand" >> %s' % code)
    before = fleet.sh('et-a40', 'systemctl show --property=InvocationID --value gpuvirt-exporter.service').strip()
    proc = fleet.play('--limit', 'et-a40')
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert 'edited by hand' not in fleet.sh('et-a40', 'cat %s' % code)
    assert fleet.sh('et-a40', 'systemctl show --property=InvocationID --value gpuvirt-exporter.service').strip() != before
    assert fleet.sh('et-a40', 'systemctl is-active gpuvirt-exporter.service').strip() == 'active' and _get(PORTS['et-a40'])[0] == 200
