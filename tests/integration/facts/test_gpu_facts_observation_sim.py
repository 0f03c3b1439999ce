# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpu_facts' exporter and cdi options, on a simulated host: the one call the health gates make before a change reads
the GPUs, the exporter's XID count (a real HTTP server on loopback, with basic auth) and the CDI spec, and reports
what the exporter role's scrape and gpu_cdi's verification report, without failing the task.

The CDI spec is written by the nvidia-ctk stand-in through gpu_cdi (generate), as on a host with the container
toolkit; the MIG capability files are the driver's layout in a directory of the test.
"""
from __future__ import annotations

import base64
import http.server
import os
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'unit' / 'sim'))
import ctk_support  # noqa: E402 pylint: disable=import-error,wrong-import-position
from simhost import SimHost  # noqa: E402 pylint: disable=import-error,wrong-import-position

METRICS = '''# TYPE gpuvirt_exporter_nvml_up gauge
gpuvirt_exporter_nvml_up 1.0
gpuvirt_exporter_xid_events_supported 1.0
gpuvirt_gpu_xid_events_total{UUID="GPU-a",gpu="0"} 3.0
gpuvirt_gpu_xid_events_total{UUID="GPU-a",gpu="0",xid="79"} 1.0
'''


class _Exporter(http.server.BaseHTTPRequestHandler):
    body = METRICS

    def do_GET(self):  # noqa: N802 pylint: disable=invalid-name
        wanted = 'Basic ' + base64.b64encode(b'prom:s3cret').decode()
        if self.headers.get('Authorization') != wanted:
            self.send_response(401)
            self.send_header('WWW-Authenticate', 'Basic realm="exporter"')
            self.end_headers()
            return
        data = self.body.encode()
        self.send_response(200)
        self.send_header('Content-Type', 'text/plain; version=0.0.4')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # pylint: disable=arguments-differ
        pass


@pytest.fixture(name='exporter')
def exporter_fixture():
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Exporter)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield 'http://127.0.0.1:%d/metrics' % server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(name='host')
def host_fixture(tmp_path):
    host = SimHost(str(tmp_path / 'state'))
    host.ctl('init', '--hostname', 'obs-node', '--gpu', 'a30:2')
    # systemd's answer for the exporter unit, where the exporter publishes no invocation id
    fake = tmp_path / 'bin'
    fake.mkdir()
    (fake / 'systemctl').write_text('#!/bin/sh\necho 7e57ab1e\n')
    (fake / 'systemctl').chmod(0o755)
    host.env['PATH'] = str(fake) + os.pathsep + host.env['PATH']
    return host


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_the_exporter_is_read_with_basic_auth_and_the_facts_are_the_same(host, exporter):
    plain = host.module('gpu_facts', {})
    result = host.module('gpu_facts', {'exporter': {'url': exporter, 'username': 'prom', 'password': 's3cret'}})
    assert result['ansible_facts']['gpus'] == plain['ansible_facts']['gpus'] and 'cdi' not in result
    assert result['exporter'] == {'ok': True, 'status': 200, 'msg': 'OK (%d bytes)' % len(METRICS), 'nvml_up': True,
                                  'xid_supported': True, 'xid_total': 4, 'invocation': '7e57ab1e'}
    assert 's3cret' not in str(result)


def test_an_exporter_that_refuses_or_does_not_answer_is_a_result_not_a_failure(host, exporter):
    refused = host.module('gpu_facts', {'exporter': {'url': exporter, 'username': 'prom', 'password': 'wrong'}})
    assert not refused.get('failed') and refused['ansible_facts']['gpus']
    assert (refused['exporter']['ok'], refused['exporter']['status'], refused['exporter']['xid_total']) == (False, 401, 0)
    gone = host.module('gpu_facts', {'exporter': {'url': 'http://127.0.0.1:%d/metrics' % _free_port(), 'timeout': 2}})
    assert not gone.get('failed')
    assert (gone['exporter']['ok'], gone['exporter']['status'], gone['exporter']['invocation']) == (False, -1, '')
    assert 'Connection refused' in gone['exporter']['msg']
    local = host.module('gpu_facts', {'exporter': {'url': 'file:///etc/hostname'}})
    assert (local['exporter']['ok'], local['exporter']['msg']) == (False, 'not an http(s) URL: file:///etc/hostname')


def test_an_exporter_behind_tls_is_read_with_or_without_checking_its_certificate(host, tmp_path):
    cert, key = tmp_path / 'cert.pem', tmp_path / 'key.pem'
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
                    '-subj', '/CN=exporter.example', '-keyout', str(key), '-out', str(cert)], check=True, capture_output=True)
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Exporter)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = 'https://127.0.0.1:%d/metrics' % server.server_address[1]
        request = {'url': url, 'username': 'prom', 'password': 's3cret'}
        unchecked = host.module('gpu_facts', {'exporter': dict(request, validate_certs=False)})['exporter']
        assert (unchecked['ok'], unchecked['xid_total']) == (True, 4), unchecked
        checked = host.module('gpu_facts', {'exporter': request})['exporter']  # validate_certs defaults to true
        assert (checked['ok'], checked['status']) == (False, -1) and 'CERTIFICATE_VERIFY_FAILED' in checked['msg'], checked
    finally:
        server.shutdown()
        server.server_close()


def _cdi_env(host: SimHost, tmp_path: Path) -> dict:
    """The nvidia-ctk stand-in on PATH reads the test's capability files and device root."""
    host.env.update(GPUSIM_CTK_PROC_ROOT=str(tmp_path / 'proc'), GPUSIM_CTK_DEV_ROOT=str(tmp_path / 'devroot'))
    (tmp_path / 'devroot' / 'dev').mkdir(parents=True, exist_ok=True)
    for node in ('nvidiactl', 'nvidia-uvm', 'nvidia-uvm-tools'):
        (tmp_path / 'devroot' / 'dev' / node).touch()
    return {'spec_path': str(tmp_path / 'cdi' / 'nvidia.yaml'),
            'capabilities_root': str(tmp_path / 'proc' / 'driver' / 'nvidia' / 'capabilities')}


def test_the_cdi_spec_is_checked_as_gpu_cdi_checks_it(host, tmp_path):
    cdi = _cdi_env(host, tmp_path)
    ctk_support.enable_mig(tmp_path, 0)
    ctk_support.make_mig(tmp_path, 0, 0, 1)  # a 1g.6gb and a 2g.12gb GPU instance, a compute instance each
    ctk_support.write_capabilities(tmp_path)
    missing = host.module('gpu_facts', {'cdi': cdi})
    assert not missing.get('failed')
    assert missing['cdi']['matches'] is False and missing['cdi']['msg'] == '%s does not exist: no CDI spec to verify' % cdi['spec_path']

    generated = host.module('gpu_cdi', dict(cdi, generate=True, verify=True))
    assert generated['changed'] is True and generated['matches'] is True, generated
    observed = host.module('gpu_facts', {'cdi': cdi})['cdi']
    assert observed['matches'] is True and observed['devices'] == generated['devices'] and observed['msg'] == ''

    # a MIG change behind the spec's back: the same stale device names and message as gpu_cdi's failure
    small = [gi for gi in host.facts()['gpus'][0]['mig']['gpu_instances'] if gi['profile'] == '1g.6gb'][0]
    host.nvml('h = pynvml.nvmlDeviceGetHandleByIndex(0)\ngi = pynvml.nvmlDeviceGetGpuInstanceById(h, %d)\n'
              'pynvml.nvmlComputeInstanceDestroy(pynvml.nvmlGpuInstanceGetComputeInstanceById(gi, %d))\n'
              'pynvml.nvmlGpuInstanceDestroy(gi)\n' % (small['id'], small['compute_instances'][0]['id']))
    stale = host.module('gpu_facts', {'cdi': cdi})
    verify = host.module('gpu_cdi', dict(cdi, generate=False, verify=True))
    assert not stale.get('failed') and verify['failed'] is True
    assert stale['cdi']['matches'] is False and stale['cdi']['stale'] == verify['stale'] and stale['cdi']['stale']
    assert stale['cdi']['msg'] == verify['msg']


def test_without_the_toolkit_nothing_is_compared(host, tmp_path):
    result = host.module('gpu_facts', {'cdi': {'nvidia_ctk': str(tmp_path / 'no-such-ctk'), 'spec_path': str(tmp_path / 'x.yaml')}})
    assert result['cdi'] == {'toolkit_installed': False, 'spec_path': str(tmp_path / 'x.yaml'),
                             'msg': 'nvidia-ctk is not installed: no CDI spec to verify'}
