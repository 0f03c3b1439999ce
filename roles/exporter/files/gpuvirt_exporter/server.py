# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""HTTP(S) endpoint: /metrics with optional TLS and basic auth from a web config file (Prometheus exporter-toolkit format).

The web config file is YAML; JSON is YAML too, and is read with the standard library when PyYAML is missing:
  tls_server_config: {cert_file: ..., key_file: ..., client_ca_file: ..., client_auth_type: RequireAndVerifyClientCert}
  basic_auth_users: {prometheus: <bcrypt hash>}
Scrapes that arrive while another one reads NVML share its result instead of queueing a read each.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import signal
import socket
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gpuvirt_exporter import DEFAULT_PORT, __version__
from gpuvirt_exporter.collector import GpuCollector
from gpuvirt_exporter.dcgm import HOST_LABEL_CHOICES, NAME_MODES, render_verbatim

LANDING = b'<html><head><title>gpuvirt exporter</title></head><body><h1>gpuvirt exporter</h1><a href="/metrics">Metrics</a></body></html>\n'


class ConfigError(Exception):
    pass


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
    for user, hashed in users.items():
        if not str(hashed).startswith(('$2a$', '$2b$', '$2y$')):
            raise ConfigError('%s: the password of %s is not a bcrypt hash' % (path, user))
    return data


def tls_context(tls: dict) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2 if tls.get('min_version', 'TLS12') == 'TLS12' else ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(tls['cert_file'], tls['key_file'])
    if tls.get('client_ca_file'):
        context.load_verify_locations(tls['client_ca_file'])
        context.verify_mode = ssl.CERT_REQUIRED if tls.get('client_auth_type') == 'RequireAndVerifyClientCert' else ssl.CERT_OPTIONAL
    return context


class BasicAuth:
    """Checks credentials against bcrypt hashes; a verified password is remembered as a keyed digest (bcrypt is slow on purpose)."""

    def __init__(self, users: dict[str, str]):
        self.users = {str(k): str(v).encode() for k, v in users.items()}
        self._verified: set[tuple[str, bytes]] = set()
        self._key = hashlib.sha256(repr(sorted(self.users.items())).encode()).digest()
        self._lock = threading.Lock()

    def check(self, header: str | None) -> bool:
        if not header or not header.startswith('Basic '):
            return False
        try:
            user, _sep, password = base64.b64decode(header[6:], validate=True).decode('utf-8').partition(':')
        except (ValueError, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
        if hashed is None:
            return False
        digest = hmac.new(self._key, password.encode(), hashlib.sha256).digest()
        with self._lock:
            if (user, digest) in self._verified:
                return True
        import bcrypt  # pylint: disable=import-outside-toplevel
        if not bcrypt.checkpw(password.encode(), hashed):
            return False
        with self._lock:
            self._verified.add((user, digest))
        return True


class SharedScrape:
    """Serialises NVML reads; a scrape that waited while another read started after it arrived takes that result."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self._lock = threading.Lock()
        self._started = -1.0
        self._body = b''

    def body(self) -> bytes:
        arrived = time.monotonic()
        with self._lock:
            if self._started >= arrived:
                return self._body
            self._started = time.monotonic()
            self._body = render(self.registry)
            return self._body


class _One:
    """A collector of one family, so that prometheus_client renders each gpuvirt family exactly as before."""

    def __init__(self, metric):
        self.metric = metric

    def collect(self):
        return [self.metric]


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition: prometheus_client's for the gpuvirt families, names as is for dcgm's (no _total on counters)."""
    parts = []
    for metric in registry.collect():
        if getattr(metric, 'verbatim', False):
            parts.append(render_verbatim(metric).encode('utf-8'))
        else:
            parts.append(generate_latest(_One(metric)))
    return b''.join(parts)


class Handler(BaseHTTPRequestHandler):
    server_version = 'gpuvirt-exporter/' + __version__
    protocol_version = 'HTTP/1.1'

    def do_GET(self):  # pylint: disable=invalid-name
        auth = self.server.auth
        if auth is not None and not auth.check(self.headers.get('Authorization')):
            self._send(401, b'Unauthorized\n', 'text/plain; charset=utf-8', {'WWW-Authenticate': 'Basic realm="gpuvirt-exporter"'})
            return
        path = self.path.split('?', 1)[0]
        if path == '/metrics':
            self._send(200, self.server.scrape.body(), CONTENT_TYPE_LATEST)
        elif path == '/':
            self._send(200, LANDING, 'text/html; charset=utf-8')
        else:
            self._send(404, b'Not Found\n', 'text/plain; charset=utf-8')

    def _send(self, code: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(code)
        self.send_header('Content-Type', content_type)
        self.send_header('Content-Length', str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        pass  # one line per scrape would flood the journal


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512

    def __init__(self, address, scrape: SharedScrape, auth: BasicAuth | None = None, tls: ssl.SSLContext | None = None):
        self.address_family = socket.AF_INET6 if ':' in address[0] else socket.AF_INET
        self.scrape = scrape
        self.auth = auth
        self.tls = tls
        super().__init__(address, Handler)

    def finish_request(self, request, client_address):
        # the TLS handshake runs in the request's thread, so a slow client never holds the accept loop
        if self.tls is not None:
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return
        super().finish_request(request, client_address)


def parse_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(':')
    if not sep or not port.isdigit():
        raise ConfigError('listen address %r: expected HOST:PORT or :PORT' % value)
    return host.strip('[]') or '0.0.0.0', int(port)


def build_server(listen: str, web_config: str | None, collector: GpuCollector) -> Server:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    auth = tls = None
    if web_config:
        config = load_web_config(web_config)
        if config.get('basic_auth_users'):
            auth = BasicAuth(config['basic_auth_users'])
        if config.get('tls_server_config'):
            tls = tls_context(config['tls_server_config'])
    return Server(parse_address(listen), SharedScrape(registry), auth, tls)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='gpuvirt-exporter', description='GPU, MIG and vGPU metrics from NVML for Prometheus.')
    parser.add_argument('--web.listen-address', dest='listen', default=':%d' % DEFAULT_PORT, help='HOST:PORT (default :%(default)s)')
    parser.add_argument('--web.config.file', dest='web_config', default='', help='TLS and basic auth (exporter-toolkit format)')
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
    args = parser.parse_args(argv)
    collector = GpuCollector(hostname=args.hostname, pcie_interval=args.pcie_interval, events=args.events,
                             metric_names=args.metric_names, host_label=args.dcgm_hostname_label, drift_file=args.drift_file or None,
                             gpm_interval=args.gpm_interval)
    try:
        server = build_server(args.listen, args.web_config, collector)
    except (ConfigError, OSError, ssl.SSLError, KeyError) as exc:
        print('gpuvirt-exporter: %s' % exc, file=sys.stderr)
        return 2

    def stop(_signum, _frame):
        threading.Thread(target=server.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    nvml_note = '' if collector.nvml.initialized else ', NVML: ' + collector.nvml.init_error
    print('gpuvirt-exporter %s listening on %s (%d GPUs%s)' % (__version__, args.listen, len(collector.gpus), nvml_note),
          file=sys.stderr, flush=True)
    server.serve_forever()
    server.server_close()
    collector.stop()
    collector.nvml.shutdown()
    return 0
