# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/report.yml on a fleet, opened in headless Chromium: the page renders, names every host and profile, and
its screenshot really shows the MIG slice blocks (pixels of each profile colour, blocks as wide as their slices).

Needs root (the fleet) and Debian's chromium (skipped, saying so, when it is missing). Brings up fleet-report.yml
(fleet 'reporttest', ports 23600+): an 8x H100 host with mixed MIG layouts, an A40 vGPU host, an A100 host set up to
drift from its declaration, plus an inventory host nothing answers on. The report and the screenshots stay under
.build/report/test-chromium/ for a person to look at.
"""
from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fleethost import REPO, VENV_BIN, ansible_env, fleet_up, recap  # noqa: E402 pylint: disable=import-error,wrong-import-position

HERE = Path(__file__).resolve().parent
FLEET = 'reporttest'
ARTIFACTS = REPO / '.build' / 'report' / 'test-chromium'
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
DOWN_INVENTORY = '''all:
  children:
    offline:
      hosts:
        rt-down:
          ansible_host: 127.0.0.1
          ansible_port: 23699
'''
# The profile colours of plugins/module_utils/_report_html.py (by compute slices), and its grid geometry.
COLORS = {'1g': (0x4e, 0x79, 0xa7), '2g': (0x59, 0xa1, 0x4f), '3g': (0xe1, 0x57, 0x59), '4g': (0xf2, 0x8e, 0x2b), '7g': (0x8c, 0x5f, 0xa8)}
CELL_W = 64

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='the fleet needs root')


def _playbook(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / 'ansible-playbook'), *args], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=ansible_env(), check=False)


def chromium(*args: str) -> subprocess.CompletedProcess:
    """Headless Chromium with a throw-away profile, bounded in time."""
    with tempfile.TemporaryDirectory(prefix='report-chromium-') as profile:
        command = [CHROMIUM, '--headless', '--disable-gpu', '--hide-scrollbars', '--user-data-dir=%s' % profile, *args]
        if os.geteuid() == 0:
            command.insert(1, '--no-sandbox')
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def screenshot(page: Path, out: Path, width: int, height: int) -> bytes:
    out.unlink(missing_ok=True)
    proc = chromium('--screenshot=%s' % out, '--window-size=%d,%d' % (width, height), page.as_uri())
    assert out.is_file(), 'chromium wrote no screenshot: %s' % proc.stderr[-2000:]
    return out.read_bytes()


# ---- a PNG decoder (zlib + struct), enough for Chromium's screenshots: 8-bit RGB or RGBA, not interlaced
def _add_rows(a: bytes, b: bytes) -> bytes:
    """Byte-wise (a + b) mod 256 over a whole row at once (carry-free addition on Python ints)."""
    low, high = int.from_bytes(b'\x7f' * len(a), 'big'), int.from_bytes(b'\x80' * len(a), 'big')
    x, y = int.from_bytes(a, 'big'), int.from_bytes(b, 'big')
    return (((x & low) + (y & low)) ^ ((x ^ y) & high)).to_bytes(len(a), 'big')


def _unfilter(kind: int, line: bytes, prev: bytes, bpp: int) -> bytes:
    if kind == 0:
        return line
    if kind == 2:
        return _add_rows(line, prev)
    cur = bytearray(line)
    for i in range(len(cur)):
        left = cur[i - bpp] if i >= bpp else 0
        if kind == 1:
            cur[i] = (cur[i] + left) & 255
        elif kind == 3:
            cur[i] = (cur[i] + ((left + prev[i]) >> 1)) & 255
        else:
            up, upper_left = prev[i], (prev[i - bpp] if i >= bpp else 0)
            guess = left + up - upper_left
            pa, pb, pc = abs(guess - left), abs(guess - up), abs(guess - upper_left)
            cur[i] = (cur[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else upper_left)) & 255
    return bytes(cur)


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows as RGB bytes, 3 per pixel); checks the signature and every chunk's CRC."""
    assert data[:8] == b'\x89PNG\r\n\x1a\n', 'not a PNG file'
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack('>I4s', data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        assert zlib.crc32(kind + body) == struct.unpack('>I', data[pos + 8 + length:pos + 12 + length])[0], 'bad CRC in %r' % kind
        if kind == b'IHDR':
            header = struct.unpack('>IIBBBBB', body)
        elif kind == b'IDAT':
            idat.append(body)
        elif kind == b'IEND':
            break
        pos += 12 + length
    assert header is not None, 'no IHDR'
    width, height, depth, color, interlace = header[:4] + header[6:]
    assert depth == 8 and color in (2, 6) and interlace == 0, 'unexpected PNG format %r' % (header,)
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(b''.join(idat))
    stride = width * bpp
    assert len(raw) == height * (stride + 1), 'truncated image data'
    rows, prev = [], bytes(stride)
    for y in range(height):
        start = y * (stride + 1)
        prev = _unfilter(raw[start], raw[start + 1:start + 1 + stride], prev, bpp)
        rows.append(prev if bpp == 3 else b''.join(prev[i:i + 3] for i in range(0, stride, 4)))
    return width, height, rows


def color_runs(row: bytes, color: tuple[int, int, int]) -> list[tuple[int, int]]:
    """(x0, x1) of each horizontal run of exactly this colour in one RGB row (found with a regex, at C speed)."""
    pixel = bytes(color)
    found = []
    for match in re.finditer(b'(?:' + re.escape(pixel) + b')+', row):
        start, end = match.span()
        start += -start % 3  # a match not on a pixel boundary: keep its whole pixels
        end -= (end - start) % 3
        if end > start:
            found.append((start // 3, end // 3))
    return found


def components(rows: list[bytes], color: tuple[int, int, int]) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (x0, y0, x1, y1, exclusive ends) of the connected areas of exactly this colour: one per drawn
    block (the white label inside a block leaves it one area; the white strokes between blocks keep them apart)."""
    parent: dict[int, int] = {}
    boxes: dict[int, list[int]] = {}

    def find(key: int) -> int:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    previous: list[tuple[int, int, int]] = []  # (x0, x1, id) of the row above
    next_id = 0
    for y, row in enumerate(rows):
        current = []
        for x, end in color_runs(row, color):
            parent[next_id] = next_id
            boxes[next_id] = [x, y, end, y + 1]
            for x0, x1, other in previous:
                if x0 < end and x < x1:
                    a, b = find(next_id), find(other)
                    if a != b:
                        parent[b] = a
                        box, merged = boxes[a], boxes.pop(b)
                        boxes[a] = [min(box[0], merged[0]), min(box[1], merged[1]), max(box[2], merged[2]), max(box[3], merged[3])]
            root = find(next_id)
            box = boxes[root]
            boxes[root] = [min(box[0], x), min(box[1], y), max(box[2], end), max(box[3], y + 1)]
            current.append((x, end, next_id))
            next_id += 1
        previous = current
    return sorted(tuple(box) for key, box in boxes.items() if find(key) == key)


def blocks(rows, color) -> list[tuple[int, int, int]]:
    """The drawn blocks of a colour as (x, y, width in grid cells), leaving out legend swatches and specks."""
    return [(x0, y0, round((x1 - x0 + 4) / CELL_W)) for x0, y0, x1, y1 in components(rows, color) if x1 - x0 > CELL_W / 2 and y1 - y0 > 15]


def cells(rows, color) -> dict[int, int]:
    """How many blocks of a colour span each number of cells."""
    counts: dict[int, int] = {}
    for block in blocks(rows, color):
        width = block[2]
        counts[width] = counts.get(width, 0) + 1
    return counts


@pytest.fixture(scope='module', name='report')
def report_fixture(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('report')
    (workdir / 'down.yml').write_text(DOWN_INVENTORY)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    output = ARTIFACTS / 'fleet-report.html'
    output.unlink(missing_ok=True)
    with fleet_up(FLEET, HERE / 'fleet-report.yml', workdir) as inventory:
        setup = _playbook('-i', str(inventory), str(HERE / 'setup.yml'))
        assert setup.returncode == 0, setup.stdout[-6000:] + setup.stderr[-2000:]
        started = time.monotonic()
        proc = _playbook('-i', str(inventory), '-i', str(workdir / 'down.yml'), str(REPO / 'playbooks' / 'report.yml'),
                         '-e', 'gpuvirt_report_output=%s' % output)
        yield {'proc': proc, 'output': output, 'elapsed': time.monotonic() - started}


def test_playbook_writes_the_report_and_prints_its_path(report):
    proc = report['proc']
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert 'Fleet report: %s' % report['output'] in proc.stdout
    assert recap(proc, 'rt-down', 'unreachable') == 0 and recap(proc, 'rt-down', 'ignored') == 1, 'an unreachable host must not fail the play'
    html = report['output'].read_text(encoding='utf-8')
    assert re.findall(r'<section class="host (\w+)" id="host-([^"]+)"', html) == [
        ('ok', 'rt-a40'), ('unreachable', 'rt-down'), ('drift', 'rt-drift'), ('ok', 'rt-h100')]
    assert 'driver: 580.159.04 loaded, 580.95.05 declared' in html
    assert 'missing GPU instance 7 x 1g.10gb [1c] at 0, 1, 2, 3, 4, 5, 6' in html
    assert 'http://' not in html and 'https://' not in html and '<script' not in html
    print('report.yml over 4 hosts (one unreachable): %.1f s' % report['elapsed'])


@pytest.mark.skipif(CHROMIUM is None, reason='chromium is not installed (apt-get install chromium): the rendered report cannot be checked')
def test_chromium_renders_hosts_and_profiles(report):
    proc = chromium('--dump-dom', report['output'].as_uri())
    dom = proc.stdout
    assert proc.returncode == 0 and '</html>' in dom, proc.stderr[-2000:]
    for host in ('rt-h100', 'rt-a40', 'rt-drift', 'rt-down'):
        assert 'id="host-%s"' % host in dom, host
    for profile in ('3g.40gb', '1g.10gb', '4g.40gb', '2g.20gb', '7g.80gb'):
        assert re.search(r'<text [^>]*>%s</text>' % re.escape(profile), dom), profile
    assert dom.count('class="gi"') == 2 * (3 * 2 + 2 * 7 + 3 + 1 + 2)  # memory and compute block per GPU instance
    assert dom.count('A40-8Q') == 12 and 'MIG GPU instances' in dom
    # The unreachable host: its badge and Ansible's reason (its wording depends on how SSH failed: refused, timed out).
    down = re.search(r'<section class="host unreachable" id="host-rt-down".*?</section>', dom, re.S)
    assert down and '>unreachable</span>' in down.group(0), dom[-3000:]
    assert re.search(r'<p class="muted">No facts: \S[^<]*</p>', down.group(0)), down.group(0)


@pytest.mark.skipif(CHROMIUM is None, reason='chromium is not installed (apt-get install chromium): the rendered report cannot be checked')
def test_screenshot_is_a_png_of_the_requested_size_with_the_slices_drawn(report):
    data = screenshot(report['output'], ARTIFACTS / 'fleet-report.png', 1400, 2000)
    width, height, rows = decode_png(data)
    assert (width, height) == (1400, 2000)
    non_white = width * height - sum(x1 - x0 for row in rows for x0, x1 in color_runs(row, (255, 255, 255)))
    assert non_white > 0.05 * width * height, 'the page looks blank'
    # rt-drift (above the fold): GPU 0 holds 4g.40gb at 0 and 3g.40gb at 4, each drawn on the memory row (4 cells) and
    # on the compute row (a 4c compute instance over 4 cells, a 3c one over 3 cells).
    orange, red = blocks(rows, COLORS['4g']), blocks(rows, COLORS['3g'])
    assert sorted(b[2] for b in orange) == [4, 4] and sorted(b[2] for b in red) == [3, 4], (orange, red)
    memory_4g = min(orange, key=lambda b: b[1])
    memory_3g = min(red, key=lambda b: b[1])
    assert memory_3g[1] == memory_4g[1], 'both GPU instances sit on the same memory row'
    assert abs(memory_3g[0] - (memory_4g[0] + 4 * CELL_W)) <= 2, '3g.40gb at 4 must start four cells right of 4g.40gb at 0'
    compute_3g = max(red, key=lambda b: b[1])
    assert compute_3g[1] > memory_3g[1] and abs(compute_3g[0] - memory_3g[0]) <= 4, 'its 3c compute instance starts at column 4 too'


@pytest.mark.skipif(CHROMIUM is None, reason='chromium is not installed (apt-get install chromium): the rendered report cannot be checked')
def test_full_page_shows_every_profile_colour_at_its_width(report):
    data = screenshot(report['output'], ARTIFACTS / 'fleet-report-full.png', 1400, 4200)
    width, height, rows = decode_png(data)
    assert (width, height) == (1400, 4200)
    # rt-h100: 3 GPUs of halves (3g.40gb at 0 and 4), 2 of sevenths (1g.10gb), one 4g.40gb (two 2c compute instances)
    # + 2g.20gb + 1g.10gb, one 7g.80gb over all 8 memory cells; each GPU instance has a memory block and a block per
    # compute instance. rt-drift adds a 4g.40gb and a 3g.40gb (a 4c and a 3c compute instance).
    assert cells(rows, COLORS['1g']) == {1: 2 * (2 * 7 + 1)}
    assert cells(rows, COLORS['2g']) == {2: 2}
    assert cells(rows, COLORS['3g']) == {4: 3 * 2 + 1, 3: 3 * 2 + 1}
    assert cells(rows, COLORS['4g']) == {4: 2 + 1, 2: 2}
    assert cells(rows, COLORS['7g']) == {8: 1, 7: 1}
