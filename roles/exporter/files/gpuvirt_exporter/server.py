# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""HTTP(S) endpoint: /metrics with optional TLS and basic auth from a web config file (Prometheus exporter-toolkit format).

The web config file is YAML; JSON is YAML too, and is read with the standard library when PyYAML is missing:
  tls_server_config: {cert_file: ..., key_file: ..., client_ca_file: ..., client_auth_type: RequireAndVerifyClientCert}
  basic_auth_users: {prometheus: <bcrypt hash>}
Scrapes whose requests were complete before a read of NVML began take that read's result.

Connections: one thread watches every open connection (a selector), reads requests, answers them and writes the answers
without blocking, so an idle or slow client holds a socket and a buffer, never a thread; only a bcrypt check runs in a
thread of its own. A connection is closed when its request has not fully arrived --web.read-timeout seconds after it
opened or after its last response (idle keep-alive and slow clients alike; the TLS handshake counts too), or when its
answer made no progress for as long. At most --web.max-connections are open: a new one
beyond that replaces the one waiting longest for a request (an idle or slow client), and waits in the listen backlog
only while every open connection has a request being answered.
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import math
import os
import queue
import select
import selectors
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING

from gpuvirt_exporter import DEFAULT_PORT, __version__, wire
from gpuvirt_exporter.dcgm import HOST_LABEL_CHOICES, NAME_MODES
from gpuvirt_exporter.exposition import CONTENT_TYPE, render_family

if TYPE_CHECKING:
    import ssl

    from gpuvirt_exporter.collector import GpuCollector


class _NoTls:
    """Stands in for the ssl module until a TLS configuration loads it (tls_context): the exception classes the
    connection code names are never raised without TLS, and the exporter does not pay for OpenSSL (5 MiB resident)
    where it serves plain HTTP. BasicAuth loads hashlib and hmac (OpenSSL's libcrypto) the same way."""

    class SSLError(OSError):
        """Never raised."""

    class SSLWantReadError(SSLError):
        """Never raised."""

    class SSLWantWriteError(SSLError):
        """Never raised."""


_ssl = _NoTls  # pylint: disable=invalid-name


def _load_ssl():
    """The ssl module, from now on also the one the connection code's exception handlers name."""
    global _ssl  # pylint: disable=global-statement,invalid-name
    import ssl  # pylint: disable=import-outside-toplevel,redefined-outer-name
    _ssl = ssl
    return ssl


LANDING = b'<html><head><title>gpuvirt exporter</title></head><body><h1>gpuvirt exporter</h1><a href="/metrics">Metrics</a></body></html>\n'
ALLOWED_METHODS = 'GET, HEAD'
EVICT_AFTER = 0.25  # seconds a connection must have waited for a request before a new connection may replace it
BCRYPT_MAX_PASSWORD = 72  # bcrypt reads no further; bcrypt 5 refuses longer passwords


class ConfigError(Exception):
    pass


def _bcrypt_cost(hashed: str) -> int | None:
    parts = hashed.split('$')
    if len(parts) != 4 or parts[1] not in ('2a', '2b', '2y') or not parts[2].isdigit() or len(parts[3]) != 53:
        return None
    cost = int(parts[2])
    return cost if 4 <= cost <= 31 else None


def load_web_config(path: str) -> dict:
    with open(path, encoding='utf-8') as handle:
        raw = handle.read()
    try:
        import yaml  # pylint: disable=import-outside-toplevel
        data = yaml.safe_load(raw)
    except ImportError:
        try:
            # JSON with '#' comment lines (the role's file starts with one) is YAML, not JSON: drop them
            data = json.loads('\n'.join(line for line in raw.splitlines() if not line.lstrip().startswith('#')))
        except ValueError as exc:
            raise ConfigError('%s: not JSON and PyYAML is not installed: %s' % (path, exc)) from exc
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError('%s: expected a mapping' % path)
    unknown = set(data) - {'tls_server_config', 'basic_auth_users', 'http_server_config'}
    if unknown:
        raise ConfigError('%s: unknown keys %s' % (path, ', '.join(sorted(unknown))))
    users = data.get('basic_auth_users') or {}
    if not isinstance(users, dict):
        raise ConfigError('%s: basic_auth_users: expected a mapping of user name to bcrypt hash' % path)
    for user, hashed in users.items():
        if _bcrypt_cost(str(hashed)) is None:
            raise ConfigError('%s: the password of %s is not a bcrypt hash' % (path, user))
    return data


def tls_context(tls: dict) -> ssl.SSLContext:
    ssl = _load_ssl()  # pylint: disable=redefined-outer-name
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2 if tls.get('min_version', 'TLS12') == 'TLS12' else ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(tls['cert_file'], tls['key_file'])
    if tls.get('client_ca_file'):
        context.load_verify_locations(tls['client_ca_file'])
        context.verify_mode = ssl.CERT_REQUIRED if tls.get('client_auth_type') == 'RequireAndVerifyClientCert' else ssl.CERT_OPTIONAL
    return context


class BasicAuth:
    """Checks credentials against bcrypt hashes in time that does not depend on whether the user exists.

    A user name is found by comparing keyed digests of every configured name (no early exit, no dict lookup on the name);
    an unknown user is checked against a dummy hash of the highest configured cost, so it costs what a known user with
    a wrong password costs. bcrypt checks run one at a time (a flood of guesses cannot take every core). Credentials
    that passed are remembered, as a keyed digest under a key made at start, for the next CACHE_SIZE distinct ones:
    only a correct password is ever fast, which its 200 says anyway.
    """

    CACHE_SIZE = 64

    def __init__(self, users: dict[str, str]):
        try:
            import bcrypt  # pylint: disable=import-outside-toplevel
        except ImportError as exc:
            raise ConfigError('basic_auth_users needs the Python package bcrypt') from exc
        import hashlib  # pylint: disable=import-outside-toplevel
        import hmac  # pylint: disable=import-outside-toplevel
        self._bcrypt = bcrypt
        self._hmac, self._sha256 = hmac, hashlib.sha256
        self._key = os.urandom(32)
        self._users = [(self._digest(str(name).encode('utf-8')), str(hashed).encode('ascii')) for name, hashed in users.items()]
        costs = {_bcrypt_cost(str(hashed)) for hashed in users.values()}
        self.mixed_costs = len(costs) > 1
        self._dummy = bcrypt.hashpw(os.urandom(16).hex().encode(), bcrypt.gensalt(rounds=max(costs)))
        self._verified: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._cache_lock = threading.Lock()
        self._bcrypt_lock = threading.Lock()

    @property
    def remembered(self) -> int:
        """How many credentials are remembered as verified (at most CACHE_SIZE)."""
        return len(self._verified)

    def _digest(self, data: bytes) -> bytes:
        return self._hmac.new(self._key, data, self._sha256).digest()

    @staticmethod
    def _credentials(header: str | None) -> tuple[bytes, bytes] | None:
        if not header or not header.startswith('Basic '):
            return None
        try:
            user, sep, password = base64.b64decode(header[6:], validate=True).partition(b':')
        except ValueError:
            return None
        return (user, password) if sep else None

    def quick(self, header: str | None) -> bool | None:
        """True for remembered credentials, False for a header that holds none; None: only check() can tell."""
        credentials = self._credentials(header)
        if credentials is None:
            return False
        user, password = credentials
        with self._cache_lock:
            return True if self._digest(len(user).to_bytes(4, 'big') + user + password) in self._verified else None

    def check(self, header: str | None) -> bool:
        credentials = self._credentials(header)
        if credentials is None:
            return False
        user, password = credentials
        remembered = self._digest(len(user).to_bytes(4, 'big') + user + password)
        with self._cache_lock:
            if remembered in self._verified:
                self._verified.move_to_end(remembered)
                return True
        presented = self._digest(user)
        hashed = None
        for name_digest, user_hash in self._users:  # every name compared, in constant time each
            if self._hmac.compare_digest(name_digest, presented):
                hashed = user_hash
        with self._bcrypt_lock:
            matched = self._bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD], hashed if hashed is not None else self._dummy)
        if not (matched and hashed is not None and len(password) <= BCRYPT_MAX_PASSWORD):
            return False
        with self._cache_lock:
            self._verified[remembered] = None
            while len(self._verified) > self.CACHE_SIZE:
                self._verified.popitem(last=False)
        return True


class SharedScrape:
    """One answer built for the scrapes that arrived before it started: a scrape whose request was complete when the
    last build began takes that build's result instead of building again."""

    def __init__(self, source):
        self.source = source  # what collect() returns families from: the GpuCollector, or any prometheus_client registry
        self._lock = threading.Lock()
        self._started = -1.0
        self._body = b''

    def body(self, arrived: float | None = None) -> bytes:
        arrived = time.monotonic() if arrived is None else arrived
        with self._lock:
            if self._started >= arrived:
                return self._body
            self._started = time.monotonic()
            self._body = render(self.source)
            return self._body


def render(source) -> bytes:
    """The text exposition of every family source.collect() returns (exposition.render_family)."""
    return ''.join([render_family(metric) for metric in source.collect()]).encode('utf-8')


class _Conn:
    """One client connection as the loop sees it."""

    __slots__ = ('sock', 'peer', 'buffer', 'since', 'handshaking', 'busy', 'events', 'out', 'keep', 'arrived')

    def __init__(self, sock, peer, handshaking: bool, now: float):
        self.sock = sock
        self.peer = peer
        self.buffer = bytearray()
        self.since = now  # when it began waiting for its current request, or the last progress of an answer
        self.handshaking = handshaking
        self.busy = False  # its credentials are being checked by the auth thread
        self.events = 0
        self.out: memoryview | None = None  # the rest of an answer the socket did not take yet
        self.keep = False  # the connection stays open once `out` is sent
        self.arrived = now  # when its current request was complete


class Server:  # pylint: disable=too-many-instance-attributes
    """The listening socket and the one thread that accepts, reads, answers and writes on every connection.

    Requests are answered in the loop itself: a scrape formats what the collector's background samplers read (with
    --sample-interval 0 it makes the fast NVML calls itself, never the slow ones), and handing each request to another
    thread cost more than answering it. Only a bcrypt check (tens to hundreds of milliseconds) goes to a thread of its own, so that it delays no other client.
    Answers are written without blocking: a client that does not read its answer holds a buffer, never the loop.
    """

    def __init__(self, address, scrape: SharedScrape, auth: BasicAuth | None = None, tls: ssl.SSLContext | None = None,
                 read_timeout: float = 10.0, max_connections: int = 64):
        if read_timeout <= 0 or max_connections < 1:
            raise ConfigError('read timeout must be above 0 and max connections at least 1')
        self.scrape = scrape
        self.auth = auth
        self.tls = tls
        if tls is not None:
            _load_ssl()
        self.read_timeout = float(read_timeout)
        self.max_connections = int(max_connections)
        family = socket.AF_INET6 if ':' in address[0] else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(address)
            # a backlog in proportion to the cap: a queue of idle clients ahead of a scrape drains in about 2 x EVICT_AFTER
            self.socket.listen(max(16, min(1024, 2 * self.max_connections)))
            self.socket.setblocking(False)
        except OSError:
            self.socket.close()
            raise
        self.server_address = self.socket.getsockname()
        self._conns: dict[int, _Conn] = {}
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._auth_jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._auth_done: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._accepting = False
        self._accept_again = 0.0  # at the cap: when the longest-waiting connection may be replaced
        self._backoff_until = 0.0  # after a failed accept (out of file descriptors)
        self._auth_thread: threading.Thread | None = None
        self._date = wire.DateHeader()

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    # the loop ---------------------------------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        self._stop.clear()
        self._stopped.clear()
        if self.auth is not None:
            self._auth_thread = threading.Thread(target=self._check_credentials, name='http-auth', daemon=True)
            self._auth_thread.start()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._listen(True)
        try:
            while not self._stop.is_set():
                for key, _mask in self._selector.select(self._wait()):
                    if key.fileobj is self.socket:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        self._drain_wake()
                        self._take_back()
                    elif key.data.sock.fileno() < 0 or key.data.sock.fileno() not in self._conns:
                        continue  # closed earlier in this round
                    elif key.data.handshaking:
                        self._handshake(key.data)
                    elif key.data.out is not None:
                        self._writable(key.data)
                    else:
                        self._read(key.data)
                self._expire()
                now = time.monotonic()
                if not self._accepting and now >= self._backoff_until and (len(self._conns) < self.max_connections or now >= self._accept_again):
                    self._listen(True)
        finally:
            self._auth_jobs.put(None)
            for conn in list(self._conns.values()):
                if not conn.busy:
                    self._close(conn)
            self._listen(False)
            self._selector.unregister(self._wake_r)
            self._stopped.set()

    def shutdown(self) -> None:
        self._stop.set()
        self._wake()
        self._stopped.wait()

    def server_close(self) -> None:
        self.socket.close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b'x')
        except OSError:
            pass  # the pipe is full: the loop wakes anyway

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _wait(self) -> float:
        now = time.monotonic()
        deadlines = [conn.since + self.read_timeout for conn in self._conns.values() if not conn.busy]
        if not self._accepting:
            deadlines.append(max(self._accept_again if len(self._conns) >= self.max_connections else now, self._backoff_until))
        return max(0.0, min(deadlines, default=now + 1.0) - now) + 0.001

    def _listen(self, on: bool) -> None:
        if on and not self._accepting:
            self._selector.register(self.socket, selectors.EVENT_READ, None)
        elif not on and self._accepting:
            self._selector.unregister(self.socket)
        self._accepting = on

    def _accept(self) -> None:
        for attempt in range(64):  # then the other connections get their turn
            if attempt and not select.select([self.socket], [], [], 0)[0]:
                return  # nothing more waits: evict nobody for nothing
            if len(self._conns) >= self.max_connections and not self._evict():
                return
            try:
                sock, peer = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of file descriptors, say: try again shortly rather than spin
                self._listen(False)
                self._backoff_until = time.monotonic() + 0.1
                return
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            if self.tls is not None:
                try:
                    sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                except (_ssl.SSLError, OSError):
                    sock.close()
                    continue
            conn = _Conn(sock, peer, self.tls is not None, time.monotonic())
            self._conns[sock.fileno()] = conn
            self._watch(conn, selectors.EVENT_READ)
            if self.tls is None:
                self._read(conn)  # the request often came with the connection

    def _evict(self) -> bool:
        """Closes the connection that has waited longest for a request, if it waited EVICT_AFTER; else stops accepting."""
        now = time.monotonic()
        waiting = [conn for conn in self._conns.values() if not conn.busy and conn.out is None]
        oldest = min(waiting, key=lambda conn: conn.since, default=None)
        if oldest is not None and now - oldest.since >= min(EVICT_AFTER, self.read_timeout):
            self._close(oldest)
            return True
        self._listen(False)
        self._accept_again = now + EVICT_AFTER if oldest is None else oldest.since + min(EVICT_AFTER, self.read_timeout)
        return False

    def _watch(self, conn: _Conn, events: int) -> None:
        if conn.events == events:
            return
        if conn.events:
            self._selector.modify(conn.sock, events, conn)
        else:
            self._selector.register(conn.sock, events, conn)
        conn.events = events

    def _unwatch(self, conn: _Conn) -> None:
        if conn.events:
            self._selector.unregister(conn.sock)
            conn.events = 0

    def _close(self, conn: _Conn) -> None:
        self._unwatch(conn)
        self._conns.pop(conn.sock.fileno(), None)
        try:
            conn.sock.close()
        except OSError:
            pass

    def _handshake(self, conn: _Conn) -> None:
        try:
            conn.sock.do_handshake()
        except _ssl.SSLWantReadError:
            self._watch(conn, selectors.EVENT_READ)
            return
        except _ssl.SSLWantWriteError:
            self._watch(conn, selectors.EVENT_WRITE)
            return
        except (_ssl.SSLError, OSError):
            self._close(conn)
            return
        conn.handshaking = False
        self._watch(conn, selectors.EVENT_READ)
        self._read(conn)

    def _read(self, conn: _Conn) -> None:
        while len(conn.buffer) <= wire.MAX_HEAD:
            try:
                chunk = conn.sock.recv(65536)
            except (BlockingIOError, InterruptedError, _ssl.SSLWantReadError, _ssl.SSLWantWriteError):
                break
            except (_ssl.SSLError, OSError):
                self._close(conn)
                return
            if not chunk:
                self._close(conn)
                return
            conn.buffer += chunk
            if wire.head_end(conn.buffer)[0] != 'partial':
                break
        self._serve(conn)

    # answering --------------------------------------------------------------------------------------------------------
    def _serve(self, conn: _Conn) -> None:
        """Answers the requests complete in the connection's buffer, in order, while the socket takes the answers."""
        while conn.out is None and not conn.busy and conn.sock.fileno() >= 0:
            state, end = wire.head_end(conn.buffer)
            if state == 'partial':
                if self.tls is not None and conn.sock.pending():
                    self._read(conn)  # TLS data already decrypted does not wake the selector
                return
            conn.arrived = time.monotonic()
            if state != 'complete':
                self._respond(conn, 414 if state == 'line_too_long' else 431, None)
            else:
                request = wire.parse(bytes(conn.buffer[:end]))
                del conn.buffer[:end]
                verdict = True
                if not request.error and request.method in ('GET', 'HEAD') and self.auth is not None:
                    verdict = self.auth.quick(request.headers.get('authorization'))
                if verdict is None:  # a bcrypt check: in the auth thread, answered through _take_back
                    conn.busy = True
                    self._unwatch(conn)
                    self._auth_jobs.put((conn, request))
                    return
                self._respond(conn, request.error or (0 if verdict else 401), request)
            if not (self._send(conn) and self._finish(conn)):
                return

    def _respond(self, conn: _Conn, code: int, request: wire.Request | None) -> None:
        """Builds the answer to one request (code: an error to answer, 401, or 0 to serve it) and starts sending it."""
        head = request is not None and request.method == 'HEAD'
        keep = request is not None and request.keep_alive and not self._stop.is_set()
        extra: tuple = ()
        content_type = 'text/plain; charset=utf-8'
        if code == 0 and request.method not in ('GET', 'HEAD'):
            code, body, extra = 405, wire.error_body(405), (('Allow', ALLOWED_METHODS),)
        elif code == 0 and request.path == '/metrics':
            code, body, content_type = 200, self.scrape.body(conn.arrived), CONTENT_TYPE
        elif code == 0 and request.path == '/':
            code, body, content_type = 200, LANDING, 'text/html; charset=utf-8'
        elif code == 0:
            code, body = 404, wire.error_body(404)
        else:
            body = wire.error_body(code)
            if code == 401:
                extra = (('WWW-Authenticate', 'Basic realm="gpuvirt-exporter"'),)
            else:
                keep = False  # a request this server could not read: what follows it cannot be trusted either
        conn.out = memoryview(wire.answer(code, body, content_type, self._date.now(), not keep, head, extra))
        conn.keep = keep
        conn.since = time.monotonic()

    def _send(self, conn: _Conn) -> bool:
        """Sends what the socket takes of the answer; True once all of it is sent."""
        while conn.out is not None:
            try:
                sent = conn.sock.send(conn.out)
            except (BlockingIOError, InterruptedError, _ssl.SSLWantWriteError):
                self._watch(conn, selectors.EVENT_WRITE)
                return False
            except _ssl.SSLWantReadError:
                self._watch(conn, selectors.EVENT_READ)
                return False
            except (_ssl.SSLError, OSError):
                self._close(conn)
                return False
            conn.since = time.monotonic()
            conn.out = conn.out[sent:] if sent < len(conn.out) else None
        return True

    def _finish(self, conn: _Conn) -> bool:
        """After a whole answer: closes the connection, or waits for its next request (True)."""
        if not conn.keep:
            self._close(conn)
            return False
        self._watch(conn, selectors.EVENT_READ)
        return True

    def _writable(self, conn: _Conn) -> None:
        if self._send(conn) and self._finish(conn):
            self._serve(conn)

    def _take_back(self) -> None:
        """Answers the requests whose credentials the auth thread has checked, then what else their connections hold."""
        while True:
            try:
                conn, request, verdict = self._auth_done.get_nowait()
            except queue.Empty:
                return
            conn.busy = False
            if conn.sock.fileno() < 0 or self._stop.is_set():
                self._close(conn)
                continue
            self._respond(conn, 0 if verdict else 401, request)
            self._writable(conn)

    def _expire(self) -> None:
        now = time.monotonic()
        for conn in [c for c in self._conns.values() if not c.busy and now - c.since >= self.read_timeout]:
            if conn.out is not None:  # a client that stopped reading: reset, so no unsent answer lingers in the kernel
                try:
                    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
                except OSError:
                    pass
            self._close(conn)

    # the auth thread --------------------------------------------------------------------------------------------------
    def _check_credentials(self) -> None:
        while True:
            job = self._auth_jobs.get()
            if job is None:
                return
            conn, request = job
            try:
                verdict = self.auth.check(request.headers.get('authorization'))
            except Exception:  # pylint: disable=broad-exception-caught
                traceback.print_exc(file=sys.stderr)
                verdict = False
            self._auth_done.put((conn, request, verdict))
            self._wake()


def release_freed_memory() -> bool:
    """Give the memory freed during start-up (NVML's initialisation, the first reads) back to the system: glibc's
    malloc_trim(0), where the C library has it. A long-running exporter would otherwise keep it resident."""
    import ctypes  # pylint: disable=import-outside-toplevel
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False  # not glibc (musl has no malloc_trim)
    trim(0)
    return True


def parse_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(':')
    if not sep or not port.isdigit():
        raise ConfigError('listen address %r: expected HOST:PORT or :PORT' % value)
    return host.strip('[]') or '0.0.0.0', int(port)


def build_server(listen: str, web_config: str | None, collector: GpuCollector, read_timeout: float = 10.0,
                 max_connections: int = 64) -> Server:
    auth = tls = None
    if web_config:
        config = load_web_config(web_config)
        if config.get('basic_auth_users'):
            auth = BasicAuth(config['basic_auth_users'])
            if auth.mixed_costs:
                print('gpuvirt-exporter: the bcrypt hashes of basic_auth_users have different costs: the time of a check tells '
                      'users of a lower cost from unknown ones; give them all one cost', file=sys.stderr, flush=True)
        if config.get('tls_server_config'):
            tls = tls_context(config['tls_server_config'])
    return Server(parse_address(listen), SharedScrape(collector), auth, tls, read_timeout, max_connections)


def _number(kind, zero: bool = False):
    """An argparse type: a finite number above 0 (zero=True: 0 or more), else an error naming the value."""
    def parse(value: str):
        try:
            number = kind(value)
        except ValueError:
            number = None
        if number is None or not math.isfinite(number) or number < 0 or (number == 0 and not zero):
            raise argparse.ArgumentTypeError('%r: expected a number %s' % (value, '0 or above' if zero else 'above 0'))
        return number
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='gpuvirt-exporter', description='GPU, MIG and vGPU metrics from NVML for Prometheus.')
    parser.add_argument('--web.listen-address', dest='listen', default=':%d' % DEFAULT_PORT, help='HOST:PORT (default :%(default)s)')
    parser.add_argument('--web.config.file', dest='web_config', default='', help='TLS and basic auth (exporter-toolkit format)')
    parser.add_argument('--web.read-timeout', dest='read_timeout', type=_number(float), default=10.0,
                        help='seconds a connection may take to send a whole request, counted from its opening or its last '
                             'answer; idle and slow connections are closed after it (default %(default)s)')
    parser.add_argument('--web.max-connections', dest='max_connections', type=_number(int), default=64,
                        help='open connections at most; a new one replaces the one idle longest (default %(default)s)')
    parser.add_argument('--sample-interval', type=_number(float, zero=True), default=1.0,
                        help='seconds between background reads of the fast values (utilization, memory, temperature, power, '
                             'clocks, vGPUs), served at most twice that old; 0: read in each scrape (default %(default)s)')
    parser.add_argument('--pcie-interval', type=float, default=10.0, help='seconds between PCIe throughput samples (0: off)')
    parser.add_argument('--no-xid-events', dest='events', action='store_false', help='do not watch XID events')
    parser.add_argument('--hostname', default=None, help='value of the Hostname label (default: the host name)')
    parser.add_argument('--metric-names', choices=NAME_MODES, default='both',
                        help="gpuvirt_* names, dcgm-exporter's DCGM_FI_* names, or both (default %(default)s)")
    parser.add_argument('--dcgm-hostname-label', choices=HOST_LABEL_CHOICES, default='Hostname',
                        help="host label of the dcgm series: released dcgm-exporter's Hostname (default), its newer hostname, or both")
    parser.add_argument('--gpm-interval', type=float, default=30.0,
                        help='seconds between GPM and NVLink samples for the dcgm names (0: off; default %(default)s)')
    parser.add_argument('--drift-file', default='/var/lib/gpuvirt/drift.json',
                        help='the roles\' declared-versus-actual file (default %(default)s; empty: none)')
    parser.add_argument('--version', action='version', version=__version__)
    return parser


def notify_systemd(state: str) -> bool:
    """systemd's readiness protocol (sd_notify, for a Type=notify unit): one datagram such as READY=1 to the socket
    in $NOTIFY_SOCKET (a path, or an abstract name written with a leading @). Whether it was sent; nothing where the
    variable is unset (not started by systemd) or names something else."""
    address = os.environ.get('NOTIFY_SOCKET', '')
    if len(address) < 2 or address[0] not in '/@':
        return False
    if address[0] == '@':
        address = '\0' + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode('utf-8'))
    except OSError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from gpuvirt_exporter.collector import GpuCollector  # pylint: disable=import-outside-toplevel
    collector = GpuCollector(hostname=args.hostname, pcie_interval=args.pcie_interval, events=args.events,
                             metric_names=args.metric_names, host_label=args.dcgm_hostname_label, drift_file=args.drift_file or None,
                             gpm_interval=args.gpm_interval, sample_interval=args.sample_interval)
    try:
        server = build_server(args.listen, args.web_config, collector, args.read_timeout, args.max_connections)
    except (ConfigError, OSError, _ssl.SSLError, KeyError) as exc:
        print('gpuvirt-exporter: %s' % exc, file=sys.stderr)
        return 2

    def stop(_signum, _frame):
        threading.Thread(target=server.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    nvml_note = '' if collector.nvml.initialized else ', NVML: ' + collector.nvml.init_error
    release_freed_memory()
    status = 'listening on %s (%d GPUs%s)' % (args.listen, len(collector.gpus), nvml_note)
    print('gpuvirt-exporter %s %s' % (__version__, status), file=sys.stderr, flush=True)
    # the socket listens (connections wait in its backlog until serve_forever takes them): a Type=notify unit's start
    # returns now, so whoever started it can scrape at once
    notify_systemd('READY=1\nSTATUS=%s' % status)
    server.serve_forever()
    notify_systemd('STOPPING=1')
    server.server_close()
    collector.stop()
    collector.nvml.shutdown()
    return 0
