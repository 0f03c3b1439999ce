# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The exporter writes the Prometheus text format itself (no client library in its process): checked against
prometheus_client's own writer and parser, which the tests have and the exporter does not load."""
from __future__ import annotations

import math
import os
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
EXPORTER_LIB = os.path.join(REPO, 'roles', 'exporter', 'files')
sys.path.insert(0, EXPORTER_LIB)
from gpuvirt_exporter import exposition  # noqa: E402  pylint: disable=wrong-import-position
from gpuvirt_exporter.server import render  # noqa: E402  pylint: disable=wrong-import-position

LABEL_TEXT = st.text(alphabet=st.characters(blacklist_categories=('Cs',)), max_size=12)


@settings(max_examples=400, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers(min_value=-10**20, max_value=10**20).map(float))
def test_values_are_written_as_prometheus_client_writes_them(value):
    assert exposition.go_float(value) == floatToGoString(value)


def test_values_at_the_exponent_boundary():
    for value in (999999.0, 1e6, 1234567.0, 9999999.5, 1e7, 150754820096.0, 8e10, 1e16, 1e22, 0.1, 1e-9, -1e7, -0.0, 5e-324):
        assert exposition.go_float(value) == floatToGoString(value), value
        assert float(exposition.go_float(value)) == value


def _ours(name, doc, kind, keys, rows) -> str:
    fam = exposition.Families(exposition.TextCache())
    for values, value in rows:
        fam.add(name, doc, kind, keys, values, value, False)
    return ''.join(family.exposition for family in fam.collect())


def _theirs(name, doc, kind, keys, rows) -> str:
    family = (CounterMetricFamily if kind == 'counter' else GaugeMetricFamily)(name, doc, labels=keys)
    for values, value in rows:
        family.add_metric(values, value)
    registry = CollectorRegistry(auto_describe=False)

    class _One:  # pylint: disable=too-few-public-methods
        def collect(self):
            return [family]
    registry.register(_One())
    return generate_latest(registry).decode('utf-8')


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(['gauge', 'counter']),
       doc=st.text(alphabet=st.characters(blacklist_categories=('Cs',)), max_size=30),
       rows=st.lists(st.tuples(st.tuples(LABEL_TEXT, LABEL_TEXT), st.floats(allow_nan=False, width=64)), min_size=1, max_size=4,
                     unique_by=lambda row: row[0]))
def test_a_family_is_written_as_prometheus_client_writes_it(kind, doc, rows):
    """Quotes, backslashes, newlines and any Unicode in label values and HELP; labels in any order; counters as _total."""
    keys = ['zone', 'UUID']
    # a negative zero may come out as 0.0 (values share their text by equality, and -0.0 == 0.0 there as in Prometheus)
    theirs = _theirs('gpuvirt_test_value', doc, kind, keys, rows).replace('} -0.0\n', '} 0.0\n')
    assert _ours('gpuvirt_test_value', doc, kind, keys, rows).replace('} -0.0\n', '} 0.0\n') == theirs


def test_a_negative_zero_never_becomes_the_text_of_zero():
    fam = exposition.Families(exposition.TextCache())
    fam.add('gpuvirt_test_sign', 'Sign.', 'gauge', ['n'], ['a'], -0.0, False)
    fam.add('gpuvirt_test_sign', 'Sign.', 'gauge', ['n'], ['b'], 0, False)
    assert ''.join(fam.items['gpuvirt_test_sign']).endswith('gpuvirt_test_sign{n="b"} 0.0\n')


def test_dcgm_names_stay_as_they_are_and_the_text_parses_back():
    fam = exposition.Families(exposition.TextCache())
    fam.add('DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION', 'Total energy consumption since boot (in mJ).', 'counter', ['gpu', 'err_msg'],
            ['0', 'say "hi"\\\n'], 3004566, True)
    fam.add('gpuvirt_gpu_energy_joules', 'Energy consumed.', 'counter', ['gpu'], ['0'], 3004.566, False)
    text = ''.join(family.exposition for family in fam.collect())
    assert '# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter\nDCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{' in text
    assert '# TYPE gpuvirt_gpu_energy_joules_total counter\ngpuvirt_gpu_energy_joules_total{gpu="0"} 3004.566\n' in text
    dcgm = [s for family in text_string_to_metric_families(text) for s in family.samples if 'err_msg' in s.labels]
    assert [(s.labels['err_msg'], s.value) for s in dcgm] == [('say "hi"\\\n', 3004566)]


def test_a_foreign_collectors_families_are_rendered_too():
    """SharedScrape renders whatever collect() gives: prometheus_client families from another collector as well."""
    gauge = GaugeMetricFamily('other_value', 'Other.\nline', labels=['a'])
    gauge.add_metric(['x"y'], math.inf)
    counter = CounterMetricFamily('other_events', 'Events.', labels=[])
    counter.add_metric([], 7)

    class _Source:  # pylint: disable=too-few-public-methods
        def collect(self):
            return [gauge, counter]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Source())
    assert render(_Source()) == generate_latest(registry)


def _sim_host(root) -> dict:
    """The environment of a process on a simulated host with one H100 (state in root)."""
    env = dict(os.environ, GPUSIM_ROOT=str(root), PYTHONPATH=os.pathsep.join([os.path.join(REPO, 'sim', 'lib'), EXPORTER_LIB]))
    subprocess.run([sys.executable, os.path.join(REPO, 'sim', 'bin', 'gpusimctl'), '--root', str(root), 'init', '--hostname', 'h',
                    '--gpu', 'h100-80gb-hbm3:1'], env=env, check=True, capture_output=True)
    return env


def test_the_exporter_process_loads_no_client_library_and_no_openssl_without_tls_or_auth(tmp_path):
    """Resident memory: prometheus_client, ssl and hashlib (OpenSSL) are not imported by a plain-HTTP exporter; the
    scrape is still served. With a TLS web config, ssl is loaded."""
    env = _sim_host(tmp_path)
    code = ('import sys\n'
            'from gpuvirt_exporter.collector import GpuCollector\n'
            'from gpuvirt_exporter.server import build_server\n'
            'c = GpuCollector(hostname="h", pcie_interval=0, gpm_interval=0, events=False)\n'
            'server = build_server("127.0.0.1:0", sys.argv[1] or None, c)\n'
            'body = server.scrape.body()\n'
            'assert b"gpuvirt_gpu_up{" in body, body[:200]\n'
            'print(" ".join(m for m in ("prometheus_client", "ssl", "_ssl", "hashlib", "_hashlib", "hmac", "dataclasses") if m in sys.modules))\n')
    plain = subprocess.run([sys.executable, '-c', code, ''], env=env, capture_output=True, text=True, check=False)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.split() == []
    cert, key = tmp_path / 'cert.pem', tmp_path / 'key.pem'
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1',
                    '-subj', '/CN=127.0.0.1', '-keyout', str(key), '-out', str(cert)], check=True, capture_output=True)
    web = tmp_path / 'web.yml'
    web.write_text('tls_server_config: {cert_file: %s, key_file: %s}\n' % (cert, key))
    tls = subprocess.run([sys.executable, '-c', code, str(web)], env=env, capture_output=True, text=True, check=False)
    assert tls.returncode == 0, tls.stderr
    assert 'ssl' in tls.stdout.split() and 'prometheus_client' not in tls.stdout.split()


def test_memory_freed_at_start_up_is_given_back():
    """release_freed_memory() (called once before the exporter listens) returns what glibc kept of freed allocations:
    20 MiB of small blocks, freed, stay resident until it runs."""
    code = ('import ctypes, re\n'
            'from gpuvirt_exporter.server import release_freed_memory\n'
            'libc = ctypes.CDLL(None)\n'
            'libc.malloc.restype = ctypes.c_void_p\n'
            'libc.free.argtypes = [ctypes.c_void_p]\n'
            'def rss():\n'
            '    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1))\n'
            'blocks = [libc.malloc(32768) for _ in range(640)]\n'
            'for b in blocks:\n'
            '    ctypes.memset(b, 1, 32768)\n'
            'for b in blocks[:-1]:\n'
            '    libc.free(b)\n'
            'before = rss()\n'
            'assert release_freed_memory()\n'
            'print(before - rss())\n')
    proc = subprocess.run([sys.executable, '-c', code], env=dict(os.environ, PYTHONPATH=EXPORTER_LIB), capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) > 10 * 1024  # KiB given back


def test_a_binding_without_the_v2_memory_call_falls_back_to_v1(tmp_path):
    """An older nvidia-ml-py whose nvmlDeviceGetMemoryInfo takes no version (TypeError) or lacks nvmlMemory_v2
    (AttributeError): the v1 call answers, the v2 call is not made again, the scrape does not fail."""
    code = ('import pynvml\n'
            'from gpuvirt_exporter.collector import GpuCollector\n'
            'from gpuvirt_exporter.server import render\n'
            'original = pynvml.nvmlDeviceGetMemoryInfo\n'
            'calls = []\n'
            'def old_binding(handle):\n'
            '    calls.append(1)\n'
            '    return original(handle)\n'
            'pynvml.nvmlDeviceGetMemoryInfo = old_binding\n'
            'c = GpuCollector(hostname="h", pcie_interval=0, gpm_interval=0, events=False, sample_interval=0)\n'
            'first = render(c).decode()\n'
            'second = render(c).decode()\n'
            'assert "gpuvirt_gpu_memory_total_bytes{" in second and "DCGM_FI_DEV_FB_USED{" in second, second[:300]\n'
            'assert "DCGM_FI_DEV_FB_RESERVED{" not in second\n'
            'assert "nvmlDeviceGetMemoryInfo" not in second.split("gpuvirt_exporter_nvml_errors_total", 1)[-1]\n'
            'print(len(calls))\n')
    proc = subprocess.run([sys.executable, '-c', code], env=_sim_host(tmp_path), capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) == 2  # one v1 call per scrape (the v2 call, refused by the binding, is not made again)
