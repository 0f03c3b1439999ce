# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The exporter's HTTP server on its own (a stand-in collector, in this process): authentication that does not tell
users apart by its time, connection timeouts and the connection cap, the methods it answers, oversized requests, TLS."""
from __future__ import annotations

import base64
import concurrent.futures
import http.client
import os
import re
import select
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))),
                                'roles', 'exporter', 'files'))
from prometheus_client import CollectorRegistry  # noqa: E402  pylint: disable=wrong-import-position
from prometheus_client.core import GaugeMetricFamily  # noqa: E402  pylint: disable=wrong-import-position

from gpuvirt_exporter.server import BasicAuth, Server, SharedScrape  # noqa: E402  pylint: disable=wrong-import-position

bcrypt = pytest.importorskip('bcrypt')


class _Collector:
    def collect(self):
        yield GaugeMetricFamily('gpuvirt_gpu_up', 'stand-in', value=1)


class _Large:
    """About 8 MB of series: more than a socket buffer takes at once."""

    def collect(self):
        family = GaugeMetricFamily('gpuvirt_padding', 'stand-in', labels=['n'])
        for n in range(100_000):
            family.add_metric(['%040d' % n], n)
        yield family


class Running:
    """A Server on a loopback port, served by a thread, stopped by close()."""

    def __init__(self, collector=None, **kwargs):
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector or _Collector())
        self.server = Server(('127.0.0.1', 0), SharedScrape(registry), **kwargs)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def connect(self) -> socket.socket:
        return socket.create_connection(('127.0.0.1', self.port), timeout=10)

    def http(self, context: ssl.SSLContext | None = None) -> http.client.HTTPConnection:
        if context is not None:
            return http.client.HTTPSConnection('127.0.0.1', self.port, timeout=10, context=context)
        return http.client.HTTPConnection('127.0.0.1', self.port, timeout=10)

    def request(self, method: str = 'GET', path: str = '/metrics', headers: dict | None = None, context=None):
        conn = self.http(context)
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(name='running')
def running_fixture():
    servers = []

    def start(**kwargs) -> Running:
        servers.append(Running(**kwargs))
        return servers[-1]
    yield start
    for server in servers:
        server.close()


def _basic(user: str, password: str) -> dict:
    return {'Authorization': 'Basic ' + base64.b64encode(('%s:%s' % (user, password)).encode()).decode()}


def _closed_after(sock: socket.socket, limit: float) -> float | None:
    """Seconds until the server closed sock (reading whatever it sent), or None when it is still open after limit."""
    start = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(65536):
            pass
    except socket.timeout:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - start


# authentication ------------------------------------------------------------------------------------------------------
def test_an_unknown_user_costs_what_a_wrong_password_of_a_known_user_costs(running):
    users = {name: bcrypt.hashpw(b's3cret-' + name.encode(), bcrypt.gensalt(rounds=10)).decode() for name in ('prometheus', 'grafana')}
    server = running(auth=BasicAuth(users))
    cases = {'unknown user': _basic('nobody', 's3cret-prometheus'), 'wrong password': _basic('prometheus', 'wrong'),
             'no credentials': {}}
    times: dict[str, list[float]] = {case: [] for case in cases}
    for turn in range(9):  # side by side: one of each per round, in turns of order, so load on the machine hits all alike
        for case, headers in (list(cases.items()) if turn % 2 else list(cases.items())[::-1]):
            start = time.perf_counter()
            status, _headers, _body = server.request(headers=headers)
            times[case].append(time.perf_counter() - start)
            assert status == 401, case
    unknown, wrong, none = (statistics.median(times[case]) for case in cases)
    print('median 401: unknown user %.1f ms, wrong password %.1f ms, no credentials %.1f ms' % (unknown * 1e3, wrong * 1e3, none * 1e3))
    assert wrong > 5 * none, 'the wrong password was not checked with bcrypt at all'
    assert abs(unknown - wrong) <= 0.35 * max(unknown, wrong), (unknown, wrong)
    status, _headers, body = server.request(headers=_basic('grafana', 's3cret-grafana'))
    assert status == 200 and b'gpuvirt_gpu_up' in body


def test_a_correct_password_is_remembered_within_a_bound_and_a_wrong_one_never(running):
    users = {'user%d' % i: bcrypt.hashpw(b'pw%d' % i, bcrypt.gensalt(rounds=4)).decode() for i in range(BasicAuth.CACHE_SIZE + 10)}
    auth = BasicAuth(users)
    server = running(auth=auth)
    for i in range(BasicAuth.CACHE_SIZE + 10):
        assert server.request(headers=_basic('user%d' % i, 'pw%d' % i))[0] == 200
        assert server.request(headers=_basic('user%d' % i, 'pw%d!' % i))[0] == 401
    assert auth.remembered == BasicAuth.CACHE_SIZE
    assert server.request(headers=_basic('user0', 'pw0'))[0] == 200  # fell out of the memory: checked again
    assert server.request(headers=_basic('user1', 'pw0'))[0] == 401  # another user's password is not theirs


def test_a_password_beyond_bcrypts_72_bytes_gets_401_not_a_dropped_connection(running):
    password = 'p' * 72
    server = running(auth=BasicAuth({'prometheus': bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}))
    assert server.request(headers=_basic('prometheus', password + 'more'))[0] == 401
    assert server.request(headers=_basic('nobody', 'x' * 100))[0] == 401
    assert server.request(headers=_basic('prometheus', password))[0] == 200


def test_malformed_credentials_get_401(running):
    server = running(auth=BasicAuth({'prometheus': bcrypt.hashpw(b'pw', bcrypt.gensalt(rounds=4)).decode()}))
    for header in ('Basic !!!', 'Basic ' + base64.b64encode(b'no-colon').decode(), 'Bearer abc', 'Basic ' + base64.b64encode(b'\xff:\xfe').decode()):
        assert server.request(headers={'Authorization': header})[0] == 401, header


# timeouts and the connection cap ---------------------------------------------------------------------------------
def test_an_idle_connection_is_closed_after_the_read_timeout(running):
    server = running(read_timeout=0.5)
    with server.connect() as sock:
        waited = _closed_after(sock, 10)
    assert waited is not None and 0.3 <= waited < 3, waited


def test_a_keep_alive_connection_is_closed_that_long_after_its_last_answer(running):
    server = running(read_timeout=0.5)
    with server.connect() as sock:
        for _answer in range(3):  # each answer starts the time again: 3 x 0.3 s of use outlasts one timeout
            sock.sendall(b'GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n')
            assert sock.recv(65536).startswith(b'HTTP/1.1 200 ')
            time.sleep(0.3)
        waited = _closed_after(sock, 10)
    assert waited is not None and waited < 3, waited


def test_a_request_that_trickles_in_is_closed_at_the_read_timeout(running):
    server = running(read_timeout=0.6)
    with server.connect() as sock:
        start = time.monotonic()
        sock.sendall(b'GET /metrics HTTP/1.1\r\n')
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            while time.monotonic() - start < 10:  # one header byte every 50 ms: never idle, never done
                sock.sendall(b'X')
                time.sleep(0.05)
        assert time.monotonic() - start < 3


def test_200_idle_connections_hold_no_thread_each_and_a_scrape_is_still_answered(running):
    server = running(read_timeout=30, max_connections=16)
    assert server.request()[0] == 200
    threads_before = threading.active_count()
    idle = []
    try:
        for _client in range(200):  # non-blocking connects: those beyond the listen backlog need not wait for it
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(('127.0.0.1', server.port))
            idle.append(sock)
        time.sleep(0.5)
        assert threading.active_count() <= threads_before
        assert server.server.open_connections <= 16
        start = time.monotonic()
        status, _headers, body = server.request()
        took = time.monotonic() - start
        print('scrape with 200 idle clients at a cap of 16: %d in %.3f s' % (status, took))
        assert status == 200 and b'gpuvirt_gpu_up' in body
        assert took < 3
        assert threading.active_count() <= threads_before and server.server.open_connections <= 16
    finally:
        for sock in idle:
            sock.close()


def test_a_burst_beyond_the_cap_is_answered_in_full(running):
    server = running(max_connections=8)
    with concurrent.futures.ThreadPoolExecutor(60) as pool:
        statuses = list(pool.map(lambda _i: server.request()[0], range(60)))
    assert statuses == [200] * 60


def test_a_client_that_does_not_read_its_answer_delays_no_other_and_is_closed_after_the_timeout(running):
    server = running(collector=_Large(), read_timeout=1.0)
    with server.connect() as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b'GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n')
        assert select.select([stalled], [], [], 30)[0]  # its answer is being sent (rendered; it fills the buffers)
        time.sleep(0.3)  # and it reads nothing
        start = time.monotonic()
        status, _headers, body = server.request(path='/')
        assert status == 200 and b'<html>' in body and time.monotonic() - start < 0.5
        deadline = time.monotonic() + 10  # the read timeout passes with no progress on its answer
        while server.server.open_connections and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.server.open_connections == 0
        with pytest.raises(ConnectionResetError):  # reset: the rest of its answer does not linger in the kernel
            while stalled.recv(1 << 20):
                pass


# methods ---------------------------------------------------------------------------------------------------------
def test_head_is_answered_like_get_without_a_body(running):
    server = running()
    conn = server.http()
    try:
        for path, get_status in (('/metrics', 200), ('/', 200), ('/nowhere', 404)):
            conn.request('GET', path)
            got = conn.getresponse()
            body = got.read()
            conn.request('HEAD', path)
            head = conn.getresponse()
            assert head.status == got.status == get_status
            assert head.getheader('Content-Type') == got.getheader('Content-Type')
            assert int(head.getheader('Content-Length')) == len(body) > 0
            assert head.read() == b''
        conn.request('GET', '/metrics')  # the same connection still reads answers in step: HEAD sent no body
        assert conn.getresponse().read().startswith(b'# HELP')
    finally:
        conn.close()


@pytest.mark.parametrize('method', ['POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'TRACE', 'PROPFIND'])
def test_every_other_method_gets_405_with_allow(running, method):
    server = running()
    status, headers, _body = server.request(method, '/metrics', headers={'Content-Length': '5'} if method in ('POST', 'PUT') else None)
    assert status == 405
    assert headers['Allow'] == 'GET, HEAD'


def test_a_request_body_this_server_does_not_read_closes_the_connection(running):
    server = running()
    with server.connect() as sock:
        sock.sendall(b'POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 24\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n')
        answer = _until_closed(sock)
    assert answer.startswith(b'HTTP/1.1 405 ') and b'Connection: close' in answer
    assert answer.count(b'HTTP/1.1') == 1  # the body was not taken for a request


# oversized and pipelined requests ------------------------------------------------------------------------------------
def _until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    answer = b''
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return answer
        answer += chunk


def _raw(server: Running, data: bytes) -> bytes:
    with server.connect() as sock:
        sock.sendall(data)
        return sock.recv(65536)


def test_oversized_requests_get_414_and_431(running):
    server = running()
    assert _raw(server, b'GET /' + b'a' * 70000 + b' HTTP/1.1\r\n\r\n').startswith(b'HTTP/1.1 414 ')
    assert _raw(server, b'GET / HTTP/1.1\r\n' + b'X-A: b\r\n' * 150 + b'\r\n').startswith(b'HTTP/1.1 431 ')
    assert _raw(server, b'GET / HTTP/1.1\r\nX-A: ' + b'b' * 70000 + b'\r\n\r\n').startswith(b'HTTP/1.1 431 ')
    assert _raw(server, b'GET / HTTP/1.1\r\n' + (b'X-A: ' + b'b' * 1000 + b'\r\n') * 140).startswith(b'HTTP/1.1 431 ')
    assert server.request()[0] == 200


def test_pipelined_requests_are_answered_in_order(running):
    server = running()
    with server.connect() as sock:
        sock.sendall(b'GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
        answer = _until_closed(sock)
    statuses = re.findall(rb'HTTP/1\.1 (\d{3}) ', answer)
    assert statuses == [b'200', b'200', b'404']
    assert answer.index(b'<html>') < answer.index(b'gpuvirt_gpu_up')


# TLS -----------------------------------------------------------------------------------------------------------------
@pytest.fixture(name='tls')
def tls_fixture(tmp_path):
    cert, key = tmp_path / 'cert.pem', tmp_path / 'key.pem'
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
                    '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', str(key), '-out', str(cert)],
                   check=True, capture_output=True)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(str(cert), str(key))
    return server_context, ssl.create_default_context(cafile=str(cert))


def test_tls_with_basic_auth_keep_alive_and_timeouts(running, tls):
    server_context, client_context = tls
    server = running(tls=server_context, auth=BasicAuth({'prometheus': bcrypt.hashpw(b'pw', bcrypt.gensalt(rounds=4)).decode()}),
                     read_timeout=0.5)
    assert server.request(context=client_context)[0] == 401
    conn = server.http(client_context)
    try:
        for _answer in range(3):
            conn.request('GET', '/metrics', headers=_basic('prometheus', 'pw'))
            response = conn.getresponse()
            assert response.status == 200 and b'gpuvirt_gpu_up' in response.read()
        conn.request('HEAD', '/metrics', headers=_basic('prometheus', 'pw'))
        assert conn.getresponse().read() == b''
        conn.request('DELETE', '/metrics', headers=_basic('prometheus', 'pw'))
        response = conn.getresponse()
        assert response.status == 405 and response.getheader('Allow') == 'GET, HEAD'
    finally:
        conn.close()
    with server.connect() as sock:  # never starts the handshake
        waited = _closed_after(sock, 10)
        assert waited is not None and waited < 3
    with client_context.wrap_socket(server.connect(), server_hostname='127.0.0.1') as sock:  # handshake, then nothing
        waited = _closed_after(sock, 10)
        assert waited is not None and waited < 3
