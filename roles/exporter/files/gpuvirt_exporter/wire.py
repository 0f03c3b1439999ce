# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""HTTP/1.x on the wire, as much as a Prometheus endpoint needs: where a request head ends, what it asks, the answer.

The limits and answers are the standard library server's (414 for a request line over 64 KiB, 431 for over 100 header
lines, 505 for HTTP/2 and later, 400 for a head it cannot read), without its per-request cost: no email parser, no
file objects, one bytes object per answer. Request bodies are never read: a request that announces one is answered and
its connection closed.
"""

from __future__ import annotations

import time

from gpuvirt_exporter import __version__

MAX_REQUEST_LINE = 65536  # longer: 414
MAX_HEAD = 131072  # request line and headers together; longer: 431
MAX_HEADERS = 100  # more header lines, or one longer than MAX_REQUEST_LINE: 431
SERVER = 'gpuvirt-exporter/' + __version__
REASONS = {200: 'OK', 400: 'Bad Request', 401: 'Unauthorized', 404: 'Not Found', 405: 'Method Not Allowed',
           414: 'URI Too Long', 431: 'Request Header Fields Too Large', 505: 'HTTP Version Not Supported'}
_DAYS = ('Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat', 'Sun')
_MONTHS = ('Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec')


def head_end(buffer: bytearray) -> tuple[str, int]:
    """('complete', end of the head), ('partial', 0), ('line_too_long', 0) or ('too_large', 0)."""
    line_end = buffer.find(b'\n', 0, MAX_REQUEST_LINE + 2)
    if line_end < 0:
        return ('line_too_long' if len(buffer) > MAX_REQUEST_LINE else 'partial'), 0
    if line_end > MAX_REQUEST_LINE:
        return 'line_too_long', 0
    if buffer.startswith(b'\r\n', line_end + 1) or buffer.startswith(b'\n', line_end + 1):  # no header lines
        end = line_end + (3 if buffer[line_end + 1] == 13 else 2)
        return 'complete', end
    ends = [i + n for i, n in ((buffer.find(b'\n\r\n', line_end), 3), (buffer.find(b'\n\n', line_end), 2)) if i >= 0]
    if ends and min(ends) <= MAX_HEAD:
        return 'complete', min(ends)
    return ('too_large' if len(buffer) > MAX_HEAD else 'partial'), 0


class Request:
    """A request head: method, path, the headers this server reads, whether the connection stays open after it."""

    __slots__ = ('method', 'path', 'headers', 'keep_alive', 'error')

    def __init__(self):
        self.method = self.path = ''
        self.headers: dict[str, str] = {}
        self.keep_alive = False
        self.error = 0  # an HTTP status to answer instead of serving, 0 when the head is good


def parse(head: bytes) -> Request:
    """The request in a complete head (as head_end found it); request.error names what was wrong with it."""
    request = Request()
    lines = head.decode('iso-8859-1').split('\n')
    words = lines[0].rstrip('\r').split()
    if len(words) != 3 or not words[2].startswith('HTTP/'):
        request.error = 400
        return request
    request.method, target, version = words
    major, dot, minor = version[5:].partition('.')
    if not (dot and major.isdigit() and minor.isdigit() and len(major) <= 3 and len(minor) <= 3):
        request.error = 400
        return request
    if int(major) >= 2:
        request.error = 505
        return request
    request.path = target.split('?', 1)[0]
    headers = request.headers
    name = ''
    count = 0
    for raw in lines[1:]:
        line = raw.rstrip('\r')
        if not line:
            break
        count += 1
        if count > MAX_HEADERS or len(raw) > MAX_REQUEST_LINE:
            request.error = 431
            return request
        if line[0] in ' \t':  # a folded continuation of the header before it
            if not name:
                request.error = 400
                return request
            headers[name] += ' ' + line.strip()
            continue
        key, colon, value = line.partition(':')
        if not colon or not key or key != key.strip():
            request.error = 400
            return request
        name = key.lower()
        if name in headers:  # the first one counts, as the standard library's get() reads it
            name = ''
            continue
        headers[name] = value.strip()
    tokens = {token.strip().lower() for token in headers.get('connection', '').split(',')}
    if (int(major), int(minor)) >= (1, 1):
        request.keep_alive = 'close' not in tokens
    else:
        request.keep_alive = 'keep-alive' in tokens
    if headers.get('transfer-encoding') or headers.get('content-length', '0').strip() not in ('', '0'):
        request.keep_alive = False  # a body may follow, which is never read: close after answering
    return request


class DateHeader:
    """The Date header's value, formatted once a second (RFC 9110 IMF-fixdate, no locale involved)."""

    def __init__(self):
        self._second = -1
        self._text = ''

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            t = time.gmtime(second)
            self._text = '%s, %02d %s %04d %02d:%02d:%02d GMT' % (
                _DAYS[t.tm_wday], t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year, t.tm_hour, t.tm_min, t.tm_sec)
            self._second = second
        return self._text


def answer(code: int, body: bytes, content_type: str, date: str, close: bool, head: bool = False,
           extra: tuple = ()) -> bytes:
    """One HTTP/1.1 response, headers and body in one bytes object (body left out for HEAD, its length kept)."""
    lines = ['HTTP/1.1 %d %s' % (code, REASONS.get(code, '')), 'Server: ' + SERVER, 'Date: ' + date,
             'Content-Type: ' + content_type, 'Content-Length: %d' % len(body)]
    lines.extend('%s: %s' % pair for pair in extra)
    if close:
        lines.append('Connection: close')
    data = ('\r\n'.join(lines) + '\r\n\r\n').encode('ascii')
    return data if head else data + body


def error_body(code: int) -> bytes:
    return ('%d %s\n' % (code, REASONS.get(code, ''))).encode('ascii')
