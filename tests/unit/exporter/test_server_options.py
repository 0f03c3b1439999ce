# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The server's options end to end: the role's unit passes them, the exporter takes them, a process runs with them."""
from __future__ import annotations

import os
import shlex
import socket
import sys
import time

import jinja2
import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
ROLE = os.path.join(REPO, 'roles', 'exporter')
sys.path.insert(0, os.path.join(ROLE, 'files'))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from exporter_support import SimExporter  # noqa: E402  pylint: disable=wrong-import-position
from gpuvirt_exporter.server import build_parser  # noqa: E402  pylint: disable=wrong-import-position


def _exec_start(**overrides) -> list[str]:
    with open(os.path.join(ROLE, 'defaults', 'main.yml'), encoding='utf-8') as handle:
        variables = yaml.safe_load(handle)
    variables.update({'exporter_drift_file': '/var/lib/gpuvirt/drift.json', 'ansible_managed': 'managed',
                      '__exporter_lib': '/opt/gpuvirt-exporter/lib', '__exporter_venv': '/opt/gpuvirt-exporter/venv',
                      '__exporter_web_config_wanted': False, '__exporter_web_config': ''}, **overrides)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.join(ROLE, 'templates')), trim_blocks=True,
                             undefined=jinja2.StrictUndefined)
    env.filters['comment'] = lambda text: '# ' + text
    unit = env.get_template('gpuvirt-exporter.service.j2').render(**variables)
    command = unit.split('ExecStart=', 1)[1].split('\nRestart=', 1)[0].replace('\\\n', ' ')
    words = shlex.split(command)
    assert words[1:3] == ['-m', 'gpuvirt_exporter'], words
    return words[3:]


def test_the_unit_passes_the_timeout_and_the_cap_the_exporter_takes():
    args = build_parser().parse_args(_exec_start())
    assert (args.read_timeout, args.max_connections) == (10.0, 64)
    args = build_parser().parse_args(_exec_start(exporter_web_read_timeout=2.5, exporter_web_max_connections=500))
    assert (args.read_timeout, args.max_connections) == (2.5, 500)


def test_the_unit_passes_the_sample_interval_and_0_reads_in_the_scrape():
    assert build_parser().parse_args(_exec_start()).sample_interval == 1.0  # the role's default, the exporter's own
    assert build_parser().parse_args(_exec_start(exporter_sample_interval=0)).sample_interval == 0.0
    assert build_parser().parse_args(_exec_start(exporter_sample_interval=0.25)).sample_interval == 0.25


@pytest.mark.parametrize('value', ['-1', 'nan', 'inf', 'often'])
def test_a_sample_interval_that_cannot_work_is_refused_naming_it(value, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(['--sample-interval', value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert '--sample-interval' in err and repr(value) in err


@pytest.mark.parametrize('option, value', [('--web.read-timeout', '0'), ('--web.read-timeout', 'soon'),
                                           ('--web.max-connections', '0'), ('--web.max-connections', '1.5')])
def test_a_timeout_or_cap_that_cannot_work_is_refused_naming_it(option, value, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([option, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert option in err and repr(value) in err


def _threads(pid: int) -> int:
    with open('/proc/%d/status' % pid, encoding='utf-8') as handle:
        return int(next(line.split()[1] for line in handle if line.startswith('Threads:')))


def _sockets(pid: int) -> int:
    count = 0
    for name in os.listdir('/proc/%d/fd' % pid):
        try:
            count += os.readlink('/proc/%d/fd/%s' % (pid, name)).startswith('socket:')
        except OSError:
            pass
    return count


def test_the_exporter_process_with_200_idle_clients_keeps_its_threads_and_the_cap_and_answers(tmp_path):
    host = SimExporter(str(tmp_path / 'gpusim'), ['h100-80gb-hbm3:1'])
    host.start('--web.max-connections', '16', '--web.read-timeout', '1')
    idle = []
    try:
        assert host.get()[0] == 200
        threads, sockets = _threads(host.proc.pid), _sockets(host.proc.pid)
        for _client in range(200):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(('127.0.0.1', host.port))
            idle.append(sock)
        time.sleep(0.5)
        print('exporter with 200 idle clients: threads %d -> %d, sockets %d -> %d'
              % (threads, _threads(host.proc.pid), sockets, _sockets(host.proc.pid)))
        assert _threads(host.proc.pid) <= threads
        assert _sockets(host.proc.pid) <= sockets + 16
        start = time.monotonic()
        status, text = host.get()
        assert status == 200 and 'gpuvirt_gpu_up' in text and time.monotonic() - start < 3
        time.sleep(1.5)  # the read timeout: every idle client accepted by now is closed
        assert _sockets(host.proc.pid) <= sockets + 16
        closed = 0
        for sock in idle:
            try:
                closed += sock.recv(1) == b''
            except OSError:
                pass
        assert closed >= 16, closed
    finally:
        for sock in idle:
            sock.close()
        host.stop()


def test_the_exporter_tells_systemd_it_is_ready_once_it_listens_and_that_it_stops(tmp_path):
    """Type=notify in the unit: the exporter sends READY=1 (sd_notify) when its socket listens, so the unit's start
    returns when a scrape can be answered, and STOPPING=1 when it is stopped."""
    unit = open(os.path.join(ROLE, 'templates', 'gpuvirt-exporter.service.j2'), encoding='utf-8').read()
    assert '\nType=notify\n' in unit and '\nNotifyAccess=main\n' in unit
    for address, bind in ((str(tmp_path / 'notify'), str(tmp_path / 'notify')), ('@gpuvirt-test-%d' % os.getpid(), '\0gpuvirt-test-%d' % os.getpid())):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
            listener.bind(bind)
            listener.settimeout(30)
            host = SimExporter(str(tmp_path / ('gpusim-%d' % len(address))), ['h100-80gb-hbm3:1'])
            host.env['NOTIFY_SOCKET'] = address
            host.start()
            try:
                ready = listener.recv(4096).decode()
                assert ready.startswith('READY=1\nSTATUS=listening on 127.0.0.1:%d (1 GPUs' % host.port), ready
                with socket.create_connection(('127.0.0.1', host.port), timeout=5):
                    pass
                assert host.get()[0] == 200
            finally:
                host.stop()
            assert listener.recv(4096) == b'STOPPING=1'


def test_without_a_notify_socket_nothing_is_sent(monkeypatch):
    from gpuvirt_exporter.server import notify_systemd  # pylint: disable=import-outside-toplevel
    monkeypatch.delenv('NOTIFY_SOCKET', raising=False)
    assert notify_systemd('READY=1') is False
    monkeypatch.setenv('NOTIFY_SOCKET', 'relative/path')
    assert notify_systemd('READY=1') is False
    monkeypatch.setenv('NOTIFY_SOCKET', '/nonexistent/notify')
    assert notify_systemd('READY=1') is False
