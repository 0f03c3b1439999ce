# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The exporter's HTTP request parsing: what HTTP/1.0 and 1.1 clients send, and what it refuses, as the standard library
server answered it (the exporter replaced that server's parser with its own, cheaper one)."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))),
                                'roles', 'exporter', 'files'))
from gpuvirt_exporter import wire  # noqa: E402  pylint: disable=wrong-import-position


def _parse(text: bytes) -> wire.Request:
    state, end = wire.head_end(bytearray(text))
    assert state == 'complete', state
    return wire.parse(text[:end])


@pytest.mark.parametrize('head, keep', [
    (b'GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n', True),
    (b'GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', False),
    (b'GET /metrics HTTP/1.1\r\nConnection: Upgrade, Close\r\n\r\n', False),
    (b'GET /metrics HTTP/1.0\r\n\r\n', False),
    (b'GET /metrics HTTP/1.0\r\nConnection: keep-alive\r\n\r\n', True),
    (b'GET /metrics HTTP/1.1\nHost: x\n\n', True),  # bare newlines, as the standard library accepted them
    (b'GET /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\n', False),  # a body that is never read
    (b'GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n', False),
])
def test_keep_alive_follows_the_version_and_the_connection_header(head, keep):
    request = _parse(head)
    assert request.error == 0 and request.method == 'GET' and request.path == '/metrics'
    assert request.keep_alive is keep


def test_the_query_string_is_not_part_of_the_path_and_the_first_of_a_repeated_header_counts():
    request = _parse(b'GET /metrics?collect[]=x HTTP/1.1\r\nAuthorization: Basic one\r\nauthorization: Basic two\r\n'
                     b'X-Folded: a\r\n  b\r\n\r\n')
    assert request.path == '/metrics'
    assert request.headers['authorization'] == 'Basic one'
    assert request.headers['x-folded'] == 'a b'


@pytest.mark.parametrize('head, error', [
    (b'GET /metrics\r\n\r\n', 400),  # HTTP/0.9
    (b'GET /metrics HTTP/x.y\r\n\r\n', 400),
    (b'GET /metrics FTP/1.1\r\n\r\n', 400),
    (b'GET /metrics HTTP/2.0\r\n\r\n', 505),
    (b'GET /metrics HTTP/1.1\r\nNo colon here\r\n\r\n', 400),
    (b'GET /metrics HTTP/1.1\r\nSpace before : colon\r\n\r\n', 400),
    (b'GET /metrics HTTP/1.1\r\n folded first\r\n\r\n', 400),
    (b'GET / HTTP/1.1\r\n' + b'X-A: b\r\n' * 101 + b'\r\n', 431),
    (b'GET / HTTP/1.1\r\nX-A: ' + b'b' * 70000 + b'\r\n\r\n', 431),
])
def test_a_head_it_cannot_read_names_the_status_to_answer(head, error):
    assert _parse(head).error == error


def test_where_a_head_ends_and_when_it_is_too_large():
    assert wire.head_end(bytearray(b'GET / HTTP/1.1\r\nHost: x\r\n')) == ('partial', 0)
    assert wire.head_end(bytearray(b'GET / HTTP/1.1\r\n\r\nGET /x HTTP/1.1\r\n\r\n')) == ('complete', 18)
    assert wire.head_end(bytearray(b'GET /' + b'a' * 70000))[0] == 'line_too_long'
    assert wire.head_end(bytearray(b'GET / HTTP/1.1\r\n' + b'X-A: ' + b'b' * 140000))[0] == 'too_large'


def test_an_answer_carries_its_length_and_head_leaves_out_the_body():
    date = wire.DateHeader().now()
    assert date.endswith(' GMT') and len(date) == 29
    full = wire.answer(405, b'no\n', 'text/plain', date, True, extra=(('Allow', 'GET, HEAD'),))
    head = wire.answer(405, b'no\n', 'text/plain', date, True, head=True, extra=(('Allow', 'GET, HEAD'),))
    assert full.startswith(b'HTTP/1.1 405 Method Not Allowed\r\n') and full.endswith(b'\r\n\r\nno\n')
    assert b'Content-Length: 3\r\n' in head and b'Allow: GET, HEAD\r\n' in head and b'Connection: close\r\n' in head
    assert head == full[:-3]
