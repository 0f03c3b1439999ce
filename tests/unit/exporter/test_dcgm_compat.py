# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The exporter's dcgm names against dcgm-exporter's default counters: names, types, units and labels.

Any difference from fixtures/dcgm-default-counters.json that fixtures/dcgm-differences.json does not document fails;
docs/metrics.md carries the rendered differences table.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from exporter_support import REPO, SimExporter  # noqa: E402  pylint: disable=wrong-import-position

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures')
MIB = 1024 * 1024
SAMPLE = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def load(name: str) -> dict:
    with open(os.path.join(FIXTURES, name), encoding='utf-8') as handle:
        return json.load(handle)


COUNTERS = load('dcgm-default-counters.json')
DIFFERENCES = load('dcgm-differences.json')
SERIES = [c for c in COUNTERS['counters'] if c['type'] != 'label']
GPU_KEYS = set(COUNTERS['labels']['gpu'])
MIG_KEYS = GPU_KEYS | set(COUNTERS['labels']['mig'])


# GPM per MIG instance needs nvmlGpmMigSampleGet in the NVML binding and library (the simulator's, once it models it)
with open(os.path.join(REPO, 'sim', 'lib', 'pynvml.py'), encoding='utf-8') as _handle:
    SIM_GPM_MIG = 'def nvmlGpmMigSampleGet(' in _handle.read()


def parse(text: str) -> tuple[dict[str, str], list[tuple[str, dict, float]]]:
    """TYPE per family and (name, labels, value) per sample, names exactly as written (no parser renaming)."""
    types, found = {}, []
    for line in text.splitlines():
        if line.startswith('# TYPE '):
            _hash, _type, name, kind = line.split(' ')
            types[name] = kind
        elif line and not line.startswith('#'):
            match = SAMPLE.match(line)
            assert match, line
            labels = {k: v.replace('\\"', '"').replace('\\n', '\n').replace('\\\\', '\\') for k, v in LABEL.findall(match.group(2) or '')}
            found.append((match.group(1), labels, float(match.group(3))))
    return types, found


def render_differences() -> str:
    """The markdown table docs/metrics.md carries (kept equal by test_docs_render_the_differences_table)."""
    words = {'exposed': 'exposed', 'different': 'exposed, different meaning', 'not_from_nvml': 'not possible from NVML'}
    lines = ['| dcgm-exporter counter | type | unit | status | NVML source here | absent on | note |',
             '|---|---|---|---|---|---|---|']
    for counter in COUNTERS['counters']:
        diff = DIFFERENCES['counters'][counter['name']]
        lines.append('| `%s` | %s | %s | %s | %s | %s | %s |' % (
            counter['name'], counter['type'], counter['unit'], words[diff['status']], diff['source'].replace('|', '/'),
            ', '.join(diff['absent_on']) or '', diff.get('note', '').replace('|', '/')))
    return '\n'.join(lines) + '\n'


@pytest.fixture(scope='module', name='scrape')
def scrape_fixture(tmp_path_factory):
    """A host with a busy whole H100 (GPU 0) and an H100 with seven MIG instances (GPU 1), scraped in the default mode (both)."""
    host = SimExporter(str(tmp_path_factory.mktemp('dcgm') / 'gpusim'), ['h100-80gb-hbm3:2'])
    host.mig_sevenths([1])
    host.ctl('proc', 'add', '--gpu', '0', '--pid', '3', '--mem-mib', '4096')
    host.start('--gpm-interval', '0.3')
    try:
        time.sleep(1.0)  # two GPM samples and a PCIe sample in the background
        status, text = host.get()
    finally:
        host.stop()
    assert status == 200
    return parse(text)


def _one(found, name, **labels):
    values = [v for n, lab, v in found if n == name and all(lab.get(k) == w for k, w in labels.items())]
    assert len(values) == 1, (name, labels, values)
    return values[0]


def test_the_list_and_the_differences_table_cover_the_same_26_counters():
    names = [c['name'] for c in COUNTERS['counters']]
    assert len(names) == 26 and len(set(names)) == 26 and len(SERIES) == 25
    assert set(DIFFERENCES['counters']) == set(names)
    for name, diff in DIFFERENCES['counters'].items():
        assert diff['status'] in ('exposed', 'different', 'not_from_nvml'), name
        assert set(diff['absent_on']) <= {'simulator', 'mig_instance', 'mig_without_gpm_mig', 'pre_hopper', 'no_nvlink', 'no_xid_yet'}, name


@pytest.mark.parametrize('counter', SERIES, ids=[c['name'] for c in SERIES])
def test_each_counter_is_exposed_with_dcgm_type_and_labels_unless_documented(scrape, counter):
    types, found = scrape
    name, diff = counter['name'], DIFFERENCES['counters'][counter['name']]
    got = [(labels, value) for n, labels, value in found if n == name]
    if diff['status'] == 'not_from_nvml' or 'simulator' in diff['absent_on'] or 'no_xid_yet' in diff['absent_on']:
        assert not got, '%s is documented absent here but is exposed: update dcgm-differences.json' % name
        return
    assert types.get(name) == counter['type'], (name, types.get(name))
    whole = [labels for labels, _v in got if labels['gpu'] == '0']
    mig = [labels for labels, _v in got if labels['gpu'] == '1']
    assert len(whole) == 1 and set(whole[0]) == GPU_KEYS, (name, whole)
    if 'mig_instance' in diff['absent_on'] or ('mig_without_gpm_mig' in diff['absent_on'] and not SIM_GPM_MIG):
        assert not mig, '%s is documented absent on MIG instances but is exposed' % name
    else:
        assert len(mig) == 7 and all(set(labels) == MIG_KEYS for labels in mig), (name, mig)
        assert {labels['GPU_I_PROFILE'] for labels in mig} == {'1g.10gb'} and len({labels['GPU_I_ID'] for labels in mig}) == 7


def test_no_other_dcgm_series_and_the_driver_version_is_a_label(scrape):
    types, found = scrape
    listed = {c['name'] for c in SERIES}
    assert {n for n in types if n.startswith('DCGM_')} <= listed
    assert 'DCGM_FI_DRIVER_VERSION' not in {n for n, _l, _v in found}
    driver = _one(found, 'gpuvirt_driver_info') and [lab for n, lab, _v in found if n == 'gpuvirt_driver_info'][0]['driver_version']
    assert driver == '580.159.04'
    assert {lab['DCGM_FI_DRIVER_VERSION'] for n, lab, _v in found if n.startswith('DCGM_')} == {driver}
    assert {lab['Hostname'] for n, lab, _v in found if n.startswith('DCGM_')} == {'exp-host'}


def test_units_match_the_gpuvirt_series_numerically(scrape):
    _types, found = scrape
    gpu = {'gpu': '0'}

    def dcgm(name):
        return _one(found, name, **gpu)

    def ours(name, **labels):
        return _one(found, name, **gpu, **labels)

    assert dcgm('DCGM_FI_DEV_SM_CLOCK') * 1e6 == ours('gpuvirt_gpu_clock_hz', clock='sm') == 1980e6
    assert dcgm('DCGM_FI_DEV_MEM_CLOCK') * 1e6 == ours('gpuvirt_gpu_clock_hz', clock='mem')
    assert dcgm('DCGM_FI_DEV_GPU_TEMP') == ours('gpuvirt_gpu_temperature_celsius')
    assert dcgm('DCGM_FI_DEV_MEMORY_TEMP') == 43  # the H100 capture's "Memory Current Temp", in C
    assert dcgm('DCGM_FI_DEV_POWER_USAGE') == ours('gpuvirt_gpu_power_watts')
    assert dcgm('DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION') / 1000 == pytest.approx(ours('gpuvirt_gpu_energy_joules_total'))
    assert dcgm('DCGM_FI_DEV_PCIE_REPLAY_COUNTER') == ours('gpuvirt_gpu_pcie_replays_total') == 1
    assert dcgm('DCGM_FI_DEV_GPU_UTIL') == ours('gpuvirt_gpu_utilization_percent')
    assert dcgm('DCGM_FI_DEV_MEM_COPY_UTIL') == ours('gpuvirt_gpu_memory_utilization_percent')
    assert dcgm('DCGM_FI_DEV_ENC_UTIL') == ours('gpuvirt_gpu_encoder_utilization_percent')
    assert dcgm('DCGM_FI_DEV_DEC_UTIL') == ours('gpuvirt_gpu_decoder_utilization_percent')
    # MiB; NVML's v1 "used" (the gpuvirt series) counts the reserved memory, v2's (DCGM's) does not
    assert dcgm('DCGM_FI_DEV_FB_FREE') == ours('gpuvirt_gpu_memory_free_bytes') // MIB
    assert dcgm('DCGM_FI_DEV_FB_USED') + dcgm('DCGM_FI_DEV_FB_RESERVED') == ours('gpuvirt_gpu_memory_used_bytes') // MIB
    assert dcgm('DCGM_FI_DEV_FB_RESERVED') == 480  # the H100 capture: "Reserved : 480 MiB"
    assert dcgm('DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS') == ours('gpuvirt_gpu_remapped_rows', error_type='corrected')
    assert dcgm('DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS') == ours('gpuvirt_gpu_remapped_rows', error_type='uncorrected')
    assert dcgm('DCGM_FI_DEV_ROW_REMAP_FAILURE') == ours('gpuvirt_gpu_row_remap_failure')
    assert dcgm('DCGM_FI_DEV_VGPU_LICENSE_STATUS') == 0  # no GRID licensing on a passthrough GPU (live H200 probe)
    assert dcgm('DCGM_FI_DEV_FB_USED') == 4096 and dcgm('DCGM_FI_DEV_GPU_UTIL') == 95  # the busy GPU: units, not zeros
    # GPM: percent -> ratio, MiB/s -> bytes/s; the simulated GPM reads the same utilization and PCIe figures
    assert dcgm('DCGM_FI_PROF_GR_ENGINE_ACTIVE') == pytest.approx(ours('gpuvirt_gpu_utilization_percent') / 100) == 0.95
    assert dcgm('DCGM_FI_PROF_DRAM_ACTIVE') == pytest.approx(ours('gpuvirt_gpu_memory_utilization_percent') / 100) == 0.4
    assert dcgm('DCGM_FI_PROF_PIPE_TENSOR_ACTIVE') == 0
    assert dcgm('DCGM_FI_PROF_PCIE_TX_BYTES') == ours('gpuvirt_gpu_pcie_throughput_bytes_per_second', direction='tx')
    assert dcgm('DCGM_FI_PROF_PCIE_RX_BYTES') == ours('gpuvirt_gpu_pcie_throughput_bytes_per_second', direction='rx')
    for labels in [lab for n, lab, _v in found if n == 'gpuvirt_mig_instance_info']:
        gi = {'gpu': '1', 'GPU_I_ID': labels['GPU_I_ID']}
        total = _one(found, 'gpuvirt_mig_memory_total_bytes', **gi)
        used = _one(found, 'gpuvirt_mig_memory_used_bytes', **gi)
        assert _one(found, 'DCGM_FI_DEV_FB_USED', **gi) == used // MIB
        assert _one(found, 'DCGM_FI_DEV_FB_FREE', **gi) == (total - used) // MIB == 9984
        assert _one(found, 'DCGM_FI_DEV_SM_CLOCK', **gi) == _one(found, 'DCGM_FI_DEV_SM_CLOCK', gpu='1', GPU_I_ID=labels['GPU_I_ID'])


def test_naming_modes_and_the_hostname_label(tmp_path):
    host = SimExporter(str(tmp_path / 'gpusim'), ['h100-80gb-hbm3:1'])
    texts = {}
    for mode, extra in (('gpuvirt', []), ('dcgm', ['--dcgm-hostname-label', 'both']), ('lower', ['--dcgm-hostname-label', 'hostname'])):
        host.start('--metric-names', 'dcgm' if mode == 'lower' else mode, *extra)
        try:
            texts[mode] = parse(host.get()[1])[1]
        finally:
            host.stop()
    gpuvirt, dcgm, lower = texts['gpuvirt'], texts['dcgm'], texts['lower']
    assert not [n for n, _l, _v in gpuvirt if n.startswith('DCGM_')]
    kept = {n for n, _l, _v in dcgm if n.startswith('gpuvirt_')}
    assert kept == {'gpuvirt_gpu_up', 'gpuvirt_exporter_build_info', 'gpuvirt_exporter_nvml_up', 'gpuvirt_exporter_gpus',
                    'gpuvirt_exporter_gpus_lost', 'gpuvirt_exporter_xid_events_supported', 'gpuvirt_exporter_scrape_duration_seconds',
                    'gpuvirt_exporter_drift_file_errors_total', 'gpuvirt_exporter_stale_samples_total', 'gpuvirt_gpu_gpm_supported',
                    'gpuvirt_exporter_sample_rounds_total', 'gpuvirt_exporter_sample_duration_seconds'}, kept
    sm = [lab for n, lab, _v in dcgm if n == 'DCGM_FI_DEV_SM_CLOCK'][0]
    assert sm['Hostname'] == sm['hostname'] == 'exp-host'
    sm = [lab for n, lab, _v in lower if n == 'DCGM_FI_DEV_SM_CLOCK'][0]
    assert sm['hostname'] == 'exp-host' and 'Hostname' not in sm


def test_the_last_xid_is_a_gauge_with_err_code_and_err_msg(tmp_path):
    """The simulator has no NVML event sets: the XID events are recorded into the collector in-process."""
    host = SimExporter(str(tmp_path / 'gpusim'), ['h100-80gb-hbm3:1'])
    code = ('from gpuvirt_exporter.collector import GpuCollector\nfrom gpuvirt_exporter.server import render\n'
            'from prometheus_client import CollectorRegistry\n'
            'c = GpuCollector(hostname="exp-host", pcie_interval=0, gpm_interval=0)\nr = CollectorRegistry(auto_describe=False)\n'
            'r.register(c)\nprint(render(r).decode())\nprint("----")\nc.xid.record(0, 48)\nc.xid.record(0, 79)\n'
            'print(render(r).decode())\nc.xid.record(0, 500)\nprint("----")\nprint(render(r).decode())\n')
    proc = subprocess.run([sys.executable, '-c', code], env=host.env, capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    before, after, unknown = (parse(part)[1] for part in proc.stdout.split('----\n'))
    assert not [n for n, _l, _v in before if n == 'DCGM_FI_DEV_XID_ERRORS']  # none before the first XID
    xids = [(lab, v) for n, lab, v in after if n == 'DCGM_FI_DEV_XID_ERRORS']
    assert len(xids) == 1 and xids[0][1] == 79
    assert xids[0][0]['err_code'] == '79' and xids[0][0]['err_msg'] == 'GPU has fallen off the bus'
    assert set(xids[0][0]) == GPU_KEYS | {'err_code', 'err_msg'}
    assert [lab['err_msg'] for n, lab, _v in unknown if n == 'DCGM_FI_DEV_XID_ERRORS'] == ['Unknown Error']


def test_the_declaration_drift_file(tmp_path):
    drift = tmp_path / 'drift.json'
    host = SimExporter(str(tmp_path / 'gpusim'), ['h100-80gb-hbm3:1'])
    host.start('--drift-file', str(drift), '--metric-names', 'dcgm')
    try:
        absent = parse(host.get()[1])[1]
        drift.write_text(json.dumps({'mig': {'drift': True, 'checked': 1764000000.0}}))
        mig_only = parse(host.get()[1])[1]
        drift.write_text(json.dumps({'mig': {'drift': False, 'checked': 1764000100.0}, 'vgpu': {'drift': True, 'checked': 1764000200}}))
        both = parse(host.get()[1])[1]
        drift.write_text('{"mig": {"drift": tru')
        broken = parse(host.get()[1])[1]
        drift.write_text(json.dumps({'mig': {'drift': 'no', 'checked': 1.0}, 'vgpu': {'drift': False, 'checked': 5.0}}))
        bad_entry = parse(host.get()[1])[1]
    finally:
        host.stop()
    assert not [n for n, _l, _v in absent if n.startswith('gpuvirt_declaration_')]
    assert _one(absent, 'gpuvirt_exporter_drift_file_errors_total') == 0
    assert _one(mig_only, 'gpuvirt_declaration_drift', kind='mig') == 1
    assert _one(mig_only, 'gpuvirt_declaration_checked_timestamp_seconds', kind='mig') == 1764000000.0
    assert not [lab for n, lab, _v in mig_only if n == 'gpuvirt_declaration_drift' and lab['kind'] == 'vgpu']
    assert _one(both, 'gpuvirt_declaration_drift', kind='mig') == 0 and _one(both, 'gpuvirt_declaration_drift', kind='vgpu') == 1
    assert not [n for n, _l, _v in broken if n.startswith('gpuvirt_declaration_')]
    assert _one(broken, 'gpuvirt_exporter_drift_file_errors_total') == 1
    assert [lab['kind'] for n, lab, _v in bad_entry if n == 'gpuvirt_declaration_drift'] == ['vgpu']
    assert _one(bad_entry, 'gpuvirt_exporter_drift_file_errors_total') == 2


def test_docs_render_the_differences_table():
    with open(os.path.join(REPO, 'docs', 'metrics.md'), encoding='utf-8') as handle:
        assert render_differences() in handle.read()


def test_gpm_and_nvlink_values_are_rendered_in_dcgm_units():
    """GPM %/MiB/s become DCGM ratios/bytes/s, and the NVLink rate (no NVLink in the simulator) keeps its counter type."""
    sys.path.insert(0, os.path.join(REPO, 'roles', 'exporter', 'files'))
    try:
        from gpuvirt_exporter import dcgm, exposition  # pylint: disable=import-outside-toplevel
    finally:
        sys.path.pop(0)
    scrape = exposition.Families(exposition.TextCache())
    reading = dcgm.Reading(gpm={1: 50.0, 5: 12.5, 10: 3.0, 20: 2.0, 21: 0.5}, nvlink_mbps=1.5)
    dcgm.DcgmSeries().add(scrape, ['0', 'GPU-x', '00000000:18:00.0', 'nvidia0', 'NVIDIA H200', 'h'], '580.159.04', reading)
    families = {family.name: family for family in scrape.collect()}
    value = {name: family.samples[0].value for name, family in families.items()}
    assert value['DCGM_FI_PROF_GR_ENGINE_ACTIVE'] == 0.5 and value['DCGM_FI_PROF_PIPE_TENSOR_ACTIVE'] == 0.125
    assert value['DCGM_FI_PROF_DRAM_ACTIVE'] == 0.03
    assert value['DCGM_FI_PROF_PCIE_TX_BYTES'] == 2 * MIB and value['DCGM_FI_PROF_PCIE_RX_BYTES'] == MIB / 2
    assert value['DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL'] == 1.5 and families['DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL'].type == 'counter'


class _Field:  # pylint: disable=too-few-public-methods
    def __init__(self, kib: int, code: int = 0):
        self.nvmlReturn = code
        self.value = type('V', (), {'ullVal': kib})()


class _FakeNvml:
    """The exporter's NVML door with canned answers: GPM samples and NVLink KiB counters that grow between samples."""

    def __init__(self, gpm_supported: bool):
        self.gpm_supported = gpm_supported
        self.kib = 0
        self.samples = 0

    def call(self, _scope, name, *_args, default=None, remember=True):  # pylint: disable=unused-argument
        if name == 'nvmlGpmQueryDeviceSupport':
            return type('S', (), {'isSupportedDevice': int(self.gpm_supported)})()
        if name == 'nvmlGpmSampleAlloc':
            return object()
        if name == 'nvmlGpmSampleGet':
            self.samples += 1
            return True
        if name == 'nvmlDeviceGetFieldValues':
            self.kib += 500_000
            return [_Field(self.kib // 2), _Field(self.kib - self.kib // 2)]
        return default

    def supported(self, _scope, name):
        return name != 'nvmlGpmMigSampleGet'  # this fake has no MIG

    def run(self, _scope, name, _func, *_args, default=None, remember=True):  # pylint: disable=unused-argument
        assert name == 'nvmlGpmMetricsGet'
        return {1: 40.0, 20: 3.0}


def test_the_background_sampler_differences_two_samples():
    sys.path.insert(0, os.path.join(REPO, 'roles', 'exporter', 'files'))
    try:
        from gpuvirt_exporter.samplers import DcgmSampler  # pylint: disable=import-outside-toplevel
    finally:
        sys.path.pop(0)
    gpu = type('G', (), {'index': 0, 'scope': '0', 'handle': object()})()
    for supported in (True, False):
        nvml = _FakeNvml(supported)
        sampler = DcgmSampler(nvml, 1.0)
        sampler.gpus = [gpu]
        sampler.sample_once()
        assert 0 not in sampler.gpm and 0 not in sampler.nvlink  # one sample: nothing to difference yet
        started = time.monotonic()
        time.sleep(0.2)
        sampler.sample_once()
        elapsed = time.monotonic() - started
        # 500000 KiB more in about 0.2 s: KiB/s / 1000, DCGM's "MB/s"
        assert 500_000 / (elapsed + 0.05) / 1000 < sampler.nvlink[0] < 500_000 / (elapsed - 0.05) / 1000
        assert sampler.gpm.get(0) == ({1: 40.0, 20: 3.0} if supported else None)
        assert nvml.samples == (2 if supported else 0)
