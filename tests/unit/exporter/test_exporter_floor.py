# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The exporter near NVML's floor (issue 18): slow calls off the request path and served with their age, GPM per MIG
instance in both naming modes, a GPU lost at start identified when it returns, gpu_up 0 for a GPU that answers no call,
and the real-H200 run kept as fixtures."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from exporter_support import EXPORTER_LIB, H100_1G_PROFILE, SimExporter  # noqa: E402  pylint: disable=wrong-import-position
from test_dcgm_compat import parse  # noqa: E402  pylint: disable=wrong-import-position

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures')
# what the real H200 answers in milliseconds (../shared/fixtures/real/h200-141gb, warm): never in a scrape
SLOW_CALLS = ('nvmlDeviceGetPcieThroughput', 'nvmlDeviceGetTotalEnergyConsumption', 'nvmlDeviceGetFieldValues',
              'nvmlDeviceGetMaxClockInfo', 'nvmlDeviceGetPcieReplayCounter', 'nvmlDeviceGetMigMode',
              'nvmlDeviceGetCurrPcieLinkGeneration', 'nvmlDeviceGetCurrPcieLinkWidth', 'nvmlDeviceGetGpuInstances',
              'nvmlGpmSampleGet', 'nvmlGpmMigSampleGet', 'nvmlGpmMetricsGet')


def _samples(text: str) -> list:
    """(name, labels, value) of each sample, names as written (dcgm's counters have no _total)."""
    return parse(text)[1]


def _value(text: str, name: str, **labels) -> float | None:
    found = [v for n, lab, v in _samples(text) if n == name and all(lab.get(k) == w for k, w in labels.items())]
    return found[0] if found else None


def _run(host: SimExporter, code: str) -> str:
    proc = subprocess.run([sys.executable, '-c', code], env=host.env, capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


PRELUDE = '''
import time, pynvml
from prometheus_client import CollectorRegistry
from gpuvirt_exporter.collector import GpuCollector
from gpuvirt_exporter.server import render
'''


SPY = '''
made = []
for name in dir(pynvml):
    if name.startswith("nvml") and callable(getattr(pynvml, name)):
        def spy(*args, _f=getattr(pynvml, name), _n=name, **kw):
            made.append(_n)
            return _f(*args, **kw)
        setattr(pynvml, name, spy)
'''


def test_a_scrape_makes_no_nvml_call_and_serves_every_value_with_its_age(tmp_path):
    host = SimExporter(str(tmp_path / 'gpusim'), ['h100-80gb-hbm3:2'])
    host.mig_sevenths([1])
    out = _run(host, PRELUDE + '''
c = GpuCollector(hostname="h", pcie_interval=30, gpm_interval=30, metric_names="both")
assert c.fast.interval == 1.0 and c.fast.max_age == 2.0  # the default --sample-interval
r = CollectorRegistry(auto_describe=False); r.register(c)
time.sleep(0.3)
c.stop()  # no background round during the scrape below: every call counted is the scrape's own
time.sleep(0.1)
''' + SPY + '''
text = render(r).decode()
print(len(made))
print(text)
''')
    count, text = out.split('\n', 1)
    assert count == '0'
    # the fast values, from the background read taken at start, with its age
    assert _value(text, 'gpuvirt_gpu_up', gpu='0') == 1
    assert 0 <= _value(text, 'gpuvirt_gpu_sample_age_seconds', gpu='0') < 2
    assert _value(text, 'gpuvirt_gpu_temperature_celsius', gpu='0') is not None
    assert _value(text, 'DCGM_FI_DEV_POWER_USAGE', gpu='0') is not None
    assert _value(text, 'gpuvirt_exporter_sample_rounds_total', sampler='fast') >= 1
    # and the slow ones with theirs
    assert _value(text, 'gpuvirt_gpu_energy_joules_total', gpu='0') is not None
    assert _value(text, 'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION', gpu='0') is not None
    assert 0 <= _value(text, 'gpuvirt_gpu_slow_sample_age_seconds', gpu='0') < 5
    assert _value(text, 'gpuvirt_gpu_mig_mode', gpu='1') == 1
    assert len([1 for n, lab, _v in _samples(text) if n == 'gpuvirt_mig_instance_info' and lab['gpu'] == '1']) == 7


def test_with_sample_interval_0_a_scrape_reads_the_fast_values_and_none_of_the_slow_calls(tmp_path):
    host = SimExporter(str(tmp_path / 'gpusim'), ['h100-80gb-hbm3:2'])
    host.mig_sevenths([1])
    out = _run(host, PRELUDE + '''
SLOW = %r
c = GpuCollector(hostname="h", pcie_interval=30, gpm_interval=30, metric_names="both", sample_interval=0)
assert c.fast is None
r = CollectorRegistry(auto_describe=False); r.register(c)
time.sleep(0.3)
''' % (SLOW_CALLS,) + SPY + '''
text = render(r).decode()
print(sorted(set(made) & set(SLOW)))
print(len(made))
print(text)
''')
    slow_made, count, text = out.split('\n', 2)
    assert slow_made == '[]'
    assert int(count) > 10  # the fast calls are made in the scrape
    assert _value(text, 'gpuvirt_gpu_temperature_celsius', gpu='0') is not None
    assert _value(text, 'gpuvirt_gpu_sample_age_seconds', gpu='0') is None
    assert _value(text, 'gpuvirt_gpu_energy_joules_total', gpu='0') is not None


def test_a_fast_sample_older_than_twice_its_interval_marks_the_gpu_down_and_is_counted(tmp_path):
    """A sampler thread stuck in a call (a hung GPU) cannot hold scrapes: they answer, with the GPU down."""
    host = SimExporter(str(tmp_path / 'gpusim'), ['h100-80gb-hbm3:1'])
    out = _run(host, PRELUDE + '''
c = GpuCollector(hostname="h", pcie_interval=30, gpm_interval=0, sample_interval=0.1)
r = CollectorRegistry(auto_describe=False); r.register(c)
print(render(r).decode()); print("----")
c.fast.stopping.set()  # as if the thread hung in NVML
time.sleep(0.5)
print(render(r).decode())
''')
    fresh, stale = out.split('----\n')
    assert _value(fresh, 'gpuvirt_gpu_up') == 1
    assert _value(fresh, 'gpuvirt_gpu_temperature_celsius') is not None
    assert _value(fresh, 'gpuvirt_exporter_stale_samples_total', sampler='fast') == 0
    assert _value(stale, 'gpuvirt_gpu_up') == 0
    assert _value(stale, 'gpuvirt_gpu_info') == 1
    for name in ('gpuvirt_gpu_temperature_celsius', 'gpuvirt_gpu_sample_age_seconds', 'DCGM_FI_DEV_GPU_TEMP',
                 'gpuvirt_gpu_energy_joules_total'):
        assert _value(stale, name) is None, name
    assert _value(stale, 'gpuvirt_exporter_stale_samples_total', sampler='fast') == 1
    assert _value(stale, 'gpuvirt_exporter_gpus_lost') == 1


def test_a_sample_older_than_twice_the_interval_is_dropped_and_counted(tmp_path):
    host = SimExporter(str(tmp_path / 'gpusim'), ['h100-80gb-hbm3:1'])
    out = _run(host, PRELUDE + '''
c = GpuCollector(hostname="h", pcie_interval=30, gpm_interval=0)
assert c.slow.max_age == 60
r = CollectorRegistry(auto_describe=False); r.register(c)
print(render(r).decode()); print("----")
c.slow.max_age = 0.2   # as if the background thread had stalled for longer than 2 x its interval
time.sleep(0.3)
print(render(r).decode())
''')
    fresh, stale = out.split('----\n')
    assert _value(fresh, 'gpuvirt_gpu_energy_joules_total') is not None
    assert _value(fresh, 'gpuvirt_exporter_stale_samples_total', sampler='slow') == 0
    for name in ('gpuvirt_gpu_energy_joules_total', 'gpuvirt_gpu_pcie_replays_total', 'gpuvirt_gpu_slow_sample_age_seconds',
                 'gpuvirt_gpu_pcie_throughput_bytes_per_second', 'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION'):
        assert _value(stale, name) is None, name
    assert _value(stale, 'gpuvirt_exporter_stale_samples_total', sampler='slow') == 1
    assert _value(stale, 'gpuvirt_gpu_temperature_celsius') is not None  # the fast sampler's: still served
    assert _value(stale, 'gpuvirt_gpu_up') == 1


def test_cached_text_follows_changing_values_and_labels(tmp_path):
    """The exposition is built from cached prefixes: a new value, and a new label set, still show up right."""
    host = SimExporter(str(tmp_path / 'gpusim'), ['h100-80gb-hbm3:1'])
    host.start('--pcie-interval', '0.2')
    try:
        first = host.get()[1]
        host.ctl('proc', 'add', '--gpu', '0', '--pid', '7', '--mem-mib', '2048')
        second = host.get()[1]
    finally:
        host.stop()
    used = 'gpuvirt_gpu_memory_used_bytes'
    assert _value(second, used) - _value(first, used) == 2048 * 1024 * 1024
    assert _samples(first) and first.count('# TYPE gpuvirt_gpu_memory_used_bytes gauge') == 1


def _gpm_mig_code(mode: str) -> str:
    # the simulator has no nvmlGpmMigSampleGet yet: a stand-in with the real binding's signature samples the instance's
    # parent GPU (values are not what is tested here; that each instance gets its series in each naming mode is)
    return PRELUDE + '''
calls = []
def mig_sample(device, gpu_instance_id, sample):
    calls.append(int(gpu_instance_id))
    return pynvml.nvmlGpmSampleGet(device, sample)
pynvml.nvmlGpmMigSampleGet = mig_sample
c = GpuCollector(hostname="h", pcie_interval=0.2, gpm_interval=0.2, metric_names=%r)
r = CollectorRegistry(auto_describe=False); r.register(c)
time.sleep(0.9)
print(sorted(set(calls)))
print(render(r).decode())
''' % mode


def test_gpm_per_mig_instance_in_both_naming_modes(tmp_path):
    host = SimExporter(str(tmp_path / 'gpusim'), ['h100-80gb-hbm3:2'])
    host.mig_sevenths([1])
    host.ctl('proc', 'add', '--gpu', '0', '--pid', '3', '--mem-mib', '1024')
    texts = {}
    for mode in ('gpuvirt', 'dcgm', 'both'):
        called, texts[mode] = _run(host, _gpm_mig_code(mode)).split('\n', 1)
        assert len(json.loads(called)) == 7, called  # one GPM sample stream per GPU instance
    for mode, text in texts.items():
        found = _samples(text)
        if mode in ('gpuvirt', 'both'):
            mig = [lab for n, lab, _v in found if n == 'gpuvirt_mig_graphics_activity_ratio']
            assert len(mig) == 7 and {lab['GPU_I_PROFILE'] for lab in mig} == {'1g.10gb'}
            assert len({lab['GPU_I_ID'] for lab in mig}) == 7 and {lab['gpu'] for lab in mig} == {'1'}
            assert all(0 <= v <= 1 for n, _l, v in found if n.endswith('_activity_ratio'))
            assert _value(text, 'gpuvirt_gpu_graphics_activity_ratio', gpu='0') is not None
        else:
            assert not [n for n, _l, _v in found if n.startswith('gpuvirt_mig_')]
        if mode in ('dcgm', 'both'):
            prof = [lab for n, lab, _v in found if n == 'DCGM_FI_PROF_GR_ENGINE_ACTIVE']
            assert len([lab for lab in prof if lab['gpu'] == '1' and lab.get('GPU_I_PROFILE') == '1g.10gb']) == 7
            assert len([lab for lab in prof if lab['gpu'] == '0' and 'GPU_I_ID' not in lab]) == 1
        else:
            assert not [n for n, _l, _v in found if n.startswith('DCGM_')]
        assert _value(text, 'gpuvirt_gpu_gpm_supported', gpu='1') == 1


def test_a_gpu_without_gpm_says_so_once_and_exports_no_activity(tmp_path):
    host = SimExporter(str(tmp_path / 'gpusim'), ['a40:1'])
    proc = subprocess.run([sys.executable, '-c', PRELUDE + '''
c = GpuCollector(hostname="h", pcie_interval=0, gpm_interval=0.1)
r = CollectorRegistry(auto_describe=False); r.register(c)
time.sleep(0.5)
print(render(r).decode())
'''], env=host.env, capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count('GPU 0 has no NVML GPM') == 1, proc.stderr  # five sampling rounds, one line
    assert _value(proc.stdout, 'gpuvirt_gpu_gpm_supported', gpu='0') == 0
    assert not [n for n, _l, _v in _samples(proc.stdout) if 'activity_ratio' in n or n.startswith('DCGM_FI_PROF')]


def test_a_gpu_lost_at_start_is_identified_when_it_returns(tmp_path):
    host = SimExporter(str(tmp_path / 'gpusim'), ['h100-80gb-hbm3:2'])
    host.mig_sevenths([0])
    uuid = host.state()['gpus'][0]['uuid']
    host.ctl('lose', '--gpu', '0')
    host.start()
    try:
        text = host.get()[1]
        assert _value(text, 'gpuvirt_gpu_up', gpu='0') == 0
        assert _value(text, 'gpuvirt_gpu_info', gpu='0', UUID='') == 1  # nothing known yet
        host.ctl('reset', '--gpu', '0', '--force')  # back on the bus (MIG stays on, its instances are gone)
        host.nvml('h = pynvml.nvmlDeviceGetHandleByIndex(0)\nfor _ in range(2):\n'
                  '    pynvml.nvmlGpuInstanceCreateComputeInstance(pynvml.nvmlDeviceCreateGpuInstance(h, %d), 0)\n' % H100_1G_PROFILE)
        deadline = time.monotonic() + 10  # the MIG layout is read in the background, every --pcie-interval (1 s here)
        while True:
            text = host.get()[1]
            if len([1 for n, lab, _v in _samples(text) if n == 'gpuvirt_mig_instance_info' and lab['gpu'] == '0']) == 2:
                break
            assert time.monotonic() < deadline, text
            time.sleep(0.1)
    finally:
        host.stop()
    assert _value(text, 'gpuvirt_gpu_up', gpu='0') == 1
    info = [lab for n, lab, _v in _samples(text) if n == 'gpuvirt_gpu_info' and lab['gpu'] == '0']
    assert len(info) == 1 and info[0]['UUID'] == uuid and info[0]['modelName'] == 'NVIDIA H100 80GB HBM3'
    assert info[0]['pci_bus_id'] != ''
    assert _value(text, 'gpuvirt_gpu_clock_max_hz', gpu='0', clock='sm') > 0
    mig = [lab for n, lab, _v in _samples(text) if n == 'gpuvirt_mig_instance_info' and lab['gpu'] == '0']
    assert len(mig) == 2 and {lab['GPU_I_PROFILE'] for lab in mig} == {'1g.10gb'} and {lab['UUID'] for lab in mig} == {uuid}


def test_gpu_up_is_0_when_every_call_fails_not_only_when_lost(tmp_path):
    host = SimExporter(str(tmp_path / 'gpusim'), ['h100-80gb-hbm3:2'])
    host.start()
    try:
        host.ctl('fault', 'set', '--gpu', '0', '--call', '*', '--error', 'NVML_ERROR_UNKNOWN')
        failing = host.get()[1]
        host.ctl('fault', 'clear', '--gpu', '0')
        healed = host.get()[1]
    finally:
        host.stop()
    assert _value(failing, 'gpuvirt_gpu_up', gpu='0') == 0 and _value(failing, 'gpuvirt_gpu_up', gpu='1') == 1
    assert _value(failing, 'gpuvirt_exporter_gpus_lost') == 1
    assert _value(failing, 'gpuvirt_gpu_temperature_celsius', gpu='0') is None
    assert _value(failing, 'gpuvirt_exporter_nvml_errors_total', call='nvmlDeviceGetTemperature') >= 1
    assert _value(healed, 'gpuvirt_gpu_up', gpu='0') == 1 and _value(healed, 'gpuvirt_exporter_gpus_lost') == 0


def test_the_slow_sampler_keeps_the_age_and_refuses_old__samples():
    sys.path.insert(0, EXPORTER_LIB)
    try:
        from gpuvirt_exporter.samplers import PeriodicSampler  # pylint: disable=import-outside-toplevel
    finally:
        sys.path.pop(0)
    gpu = type('G', (), {'index': 0})()
    sampler = PeriodicSampler(lambda g: {'energy': 5}, interval=0.1)
    assert sampler.max_age == 0.2
    sampler.gpus = [gpu]
    sampler.sample_once()
    values, age = sampler.fresh(0, time.monotonic())
    assert values == {'energy': 5} and 0 <= age < 0.1
    assert sampler.fresh(0, time.monotonic() + 0.3) is None and sampler.stale == 1
    assert sampler.fresh(1, time.monotonic()) is None and sampler.stale == 1  # no sample is not a stale one


# -- the real H200 (bench/bench_exporter.py --real, read-only under ../shared/tools/readonly-guard) -------------------
def _bench_rows(text: str) -> dict:
    rows = {}
    for line in text.splitlines():
        # the exporter's row is the one with the connection kept open, as Prometheus scrapes
        match = re.match(r'(exporter, connection kept open|nvidia-smi).*?p50\s+([\d.]+) ms\s+p99\s+([\d.]+) ms\s+CPU/scrape\s+([\d.]+) ms'
                         r'(?:\s+RSS\s+([\d.]+) MiB)?', line)
        if match:
            rows[match.group(1).split(',')[0]] = [float(g) if g else None for g in match.groups()[1:]]
    return rows


def test_the_real_h200_bench_run_parses_and_its_ratios_follow_from_its_rows():
    with open(os.path.join(FIXTURES, 'real-h200-bench.txt'), encoding='utf-8') as handle:
        text = handle.read()
    rows = _bench_rows(text)
    assert set(rows) == {'exporter', 'nvidia-smi'}
    exporter, smi = rows['exporter'], rows['nvidia-smi']
    ratio = re.search(r'p50 ([\d.]+)x\s+p99 ([\d.]+)x\s+CPU ([\d.]+)x', text)
    # the ratios are of the unrounded figures; the rows print 0.01 ms, about 1 % of a 0.5 ms p50
    assert abs(float(ratio.group(1)) / (smi[0] / exporter[0]) - 1) < 0.02 and abs(float(ratio.group(2)) / (smi[1] / exporter[1]) - 1) < 0.02
    assert 'guard log lines: 0' in text and 'rc=0' in text and '(1 GPUs)' in text
    assert exporter[0] < smi[0] and exporter[3] is not None


def test_the_real_h200_gpm_scrape_has_the_prof_series_in_both_names():
    with open(os.path.join(FIXTURES, 'real-h200-gpm-metrics.txt'), encoding='utf-8') as handle:
        found = _samples(handle.read())
    names = {n for n, _l, _v in found}
    assert {'DCGM_FI_PROF_GR_ENGINE_ACTIVE', 'DCGM_FI_PROF_PIPE_TENSOR_ACTIVE', 'DCGM_FI_PROF_DRAM_ACTIVE',
            'DCGM_FI_PROF_PCIE_TX_BYTES', 'DCGM_FI_PROF_PCIE_RX_BYTES'} <= names
    pairs = {'gpuvirt_gpu_graphics_activity_ratio': 'DCGM_FI_PROF_GR_ENGINE_ACTIVE',
             'gpuvirt_gpu_tensor_activity_ratio': 'DCGM_FI_PROF_PIPE_TENSOR_ACTIVE',
             'gpuvirt_gpu_dram_activity_ratio': 'DCGM_FI_PROF_DRAM_ACTIVE',
             'gpuvirt_gpu_gpm_pcie_tx_bytes_per_second': 'DCGM_FI_PROF_PCIE_TX_BYTES'}
    for ours, theirs in pairs.items():
        assert _one(found, ours) == _one(found, theirs), ours  # the same GPM sample under both names
    for name in pairs:
        if name.endswith('_ratio'):
            assert 0 <= _one(found, name) <= 1
    prof = [lab for n, lab, _v in found if n == 'DCGM_FI_PROF_GR_ENGINE_ACTIVE'][0]
    assert prof['modelName'] == 'NVIDIA H200' and prof['DCGM_FI_DRIVER_VERSION'] == '580.159.04' and 'GPU_I_ID' not in prof
    assert _one(found, 'gpuvirt_gpu_gpm_supported') == 1 and _one(found, 'gpuvirt_gpu_mig_mode') == 0
    assert _one(found, 'gpuvirt_exporter_stale_samples_total', sampler='gpm') == 0
    assert 0 <= _one(found, 'gpuvirt_gpu_slow_sample_age_seconds') <= 20  # the bench's --pcie-interval 10: at most 2 x 10 s


def _one(found, name, **labels):
    values = [v for n, lab, v in found if n == name and all(lab.get(k) == w for k, w in labels.items())]
    assert len(values) == 1, (name, values)
    return values[0]
