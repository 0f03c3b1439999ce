# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The exporter against the NVML simulator, over HTTP as Prometheus scrapes it."""
from __future__ import annotations

import concurrent.futures
import os
import ssl
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from exporter_support import SimExporter, samples  # noqa: E402  pylint: disable=wrong-import-position

GPU_LABELS = {'gpu', 'UUID', 'pci_bus_id', 'device', 'modelName', 'Hostname'}


def _value(text: str, name: str, **labels) -> float | None:
    for sample_name, sample_labels, value in samples(text):
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items()):
            return value
    return None


@pytest.fixture(name='h100')
def h100_fixture(tmp_path):
    host = SimExporter(str(tmp_path / 'gpusim'), ['h100-80gb-hbm3:2'])
    host.mig_sevenths([1])
    host.start()
    yield host
    host.stop()


def test_gpu_series_carry_dcgm_compatible_labels(h100):
    status, text = h100.get()
    assert status == 200
    state = h100.state()
    for index, gpu in enumerate(state['gpus']):
        labels = {'gpu': str(index), 'UUID': gpu['uuid'], 'pci_bus_id': gpu['pci_bus_id'], 'device': 'nvidia%d' % index,
                  'modelName': 'NVIDIA H100 80GB HBM3', 'Hostname': 'exp-host'}
        assert _value(text, 'gpuvirt_gpu_up', **labels) == 1
        # NVML reports no device utilization on a GPU in MIG mode (GPU 1 here): the series is absent there, present on GPU 0
        assert (_value(text, 'gpuvirt_gpu_utilization_percent', **labels) is None) == (index == 1)
        for name in ('gpuvirt_gpu_memory_used_bytes', 'gpuvirt_gpu_memory_free_bytes',
                     'gpuvirt_gpu_memory_total_bytes', 'gpuvirt_gpu_temperature_celsius', 'gpuvirt_gpu_power_watts',
                     'gpuvirt_gpu_energy_joules_total', 'gpuvirt_gpu_clocks_event_reasons', 'gpuvirt_gpu_ecc_errors_total',
                     'gpuvirt_gpu_remapped_rows', 'gpuvirt_gpu_mig_mode'):
            assert _value(text, name, **labels) is not None, name
        assert _value(text, 'gpuvirt_gpu_clock_hz', clock='sm', **labels) > 0
    assert _value(text, 'gpuvirt_gpu_clocks_event_reason', gpu='0', reason='gpu_idle') == 1
    assert _value(text, 'gpuvirt_driver_info', driver_version='580.159.04', cuda_version='13.0') == 1
    assert _value(text, 'gpuvirt_exporter_gpus') == 2 and _value(text, 'gpuvirt_exporter_gpus_lost') == 0
    for name, labels, _v in samples(text):
        if name.startswith('gpuvirt_gpu_'):
            assert GPU_LABELS <= set(labels), name


def test_pcie_throughput_comes_from_the_background_sampler_with_its_age(h100):
    import time  # pylint: disable=import-outside-toplevel
    time.sleep(1.2)
    _status, text = h100.get()
    assert _value(text, 'gpuvirt_gpu_pcie_throughput_bytes_per_second', gpu='0', direction='tx') is not None
    assert 0 <= _value(text, 'gpuvirt_gpu_pcie_sample_age_seconds', gpu='0') < 5


def test_mig_instances_report_profile_placement_and_memory(h100):
    _status, text = h100.get()
    infos = [labels for name, labels, _v in samples(text) if name == 'gpuvirt_mig_instance_info']
    assert len(infos) == 7 and {i['gpu'] for i in infos} == {'1'}
    assert {i['GPU_I_PROFILE'] for i in infos} == {'1g.10gb'}
    assert sorted(int(i['placement_start']) for i in infos) == list(range(7))
    gi = infos[0]['GPU_I_ID']
    assert _value(text, 'gpuvirt_mig_memory_total_bytes', gpu='1', GPU_I_ID=gi) > 9e9
    assert _value(text, 'gpuvirt_mig_memory_used_bytes', gpu='1', GPU_I_ID=gi) is not None
    assert _value(text, 'gpuvirt_gpu_mig_mode', gpu='1') == 1 and _value(text, 'gpuvirt_gpu_mig_mode', gpu='0') == 0


def test_a_lost_gpu_is_marked_down_and_the_endpoint_still_answers(h100):
    h100.ctl('lose', '--gpu', '0')
    status, text = h100.get()
    assert status == 200
    assert _value(text, 'gpuvirt_gpu_up', gpu='0') == 0
    assert _value(text, 'gpuvirt_gpu_temperature_celsius', gpu='0') is None
    assert _value(text, 'gpuvirt_gpu_up', gpu='1') == 1 and _value(text, 'gpuvirt_gpu_temperature_celsius', gpu='1') is not None
    assert _value(text, 'gpuvirt_exporter_gpus_lost') == 1


def test_an_injected_nvml_error_is_counted_and_drops_only_that_series(h100):
    h100.ctl('fault', 'set', '--gpu', '0', '--call', 'nvmlDeviceGetTemperature', '--error', 'NVML_ERROR_UNKNOWN')
    h100.get()
    status, text = h100.get()
    assert status == 200
    assert _value(text, 'gpuvirt_exporter_nvml_errors_total', call='nvmlDeviceGetTemperature') >= 2
    assert _value(text, 'gpuvirt_gpu_temperature_celsius', gpu='0') is None
    assert _value(text, 'gpuvirt_gpu_power_watts', gpu='0') is not None
    assert _value(text, 'gpuvirt_gpu_up', gpu='0') == 1


def test_200_concurrent_scrapes_all_succeed(h100):
    with concurrent.futures.ThreadPoolExecutor(200) as pool:
        results = list(pool.map(lambda _i: h100.get(), range(200)))
    assert [status for status, _text in results] == [200] * 200
    assert all('gpuvirt_gpu_up' in text for _status, text in results)
    _status, text = h100.get()
    assert _value(text, 'gpuvirt_exporter_nvml_errors_total') is None


def test_vgpu_instances_report_type_vm_and_framebuffer(tmp_path):
    host = SimExporter(str(tmp_path / 'gpusim'), ['a40:1'], vgpu_host=True)
    host.ctl('vgpu', 'add', '--gpu', '0', '--type', '558', '--vm-id', 'vm-42')
    host.start()
    try:
        _status, text = host.get()
    finally:
        host.stop()
    infos = [labels for name, labels, _v in samples(text) if name == 'gpuvirt_vgpu_info']
    assert len(infos) == 1
    assert infos[0]['vgpu_type'] == 'NVIDIA A40-2Q' and infos[0]['vm_id'] == 'vm-42' and infos[0]['vgpu_uuid']
    assert _value(text, 'gpuvirt_vgpu_framebuffer_used_bytes', vgpu_id=infos[0]['vgpu_id']) is not None
    assert _value(text, 'gpuvirt_vgpu_framebuffer_total_bytes', vgpu_id=infos[0]['vgpu_id']) == 2 * 1024 ** 3
    assert _value(text, 'gpuvirt_gpu_vgpu_instances', gpu='0') == 1


def test_basic_auth_and_tls_from_the_web_config(tmp_path):
    bcrypt = pytest.importorskip('bcrypt')
    cert, key = tmp_path / 'cert.pem', tmp_path / 'key.pem'
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
                    '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', str(key), '-out', str(cert)],
                   check=True, capture_output=True)
    hashed = bcrypt.hashpw(b's3cret', bcrypt.gensalt(rounds=4)).decode()
    config = tmp_path / 'web.yml'
    config.write_text('# managed\n{"tls_server_config": {"cert_file": "%s", "key_file": "%s"}, "basic_auth_users": {"prometheus": "%s"}}'
                      % (cert, key, hashed))
    host = SimExporter(str(tmp_path / 'gpusim'), ['h100-80gb-hbm3:1'])
    host.scheme = 'https'
    host.start('--web.config.file', str(config))
    context = ssl.create_default_context(cafile=str(cert))
    try:
        assert host.get(context=context)[0] == 401
        assert host.get(auth=('prometheus', 'wrong'), context=context)[0] == 401
        assert host.get(auth=('nobody', 's3cret'), context=context)[0] == 401
        status, text = host.get(auth=('prometheus', 's3cret'), context=context)
        assert status == 200 and 'gpuvirt_gpu_up' in text
        assert host.get(auth=('prometheus', 's3cret'), context=context)[0] == 200
    finally:
        host.stop()


def test_a_web_config_with_a_plain_password_is_refused(tmp_path):
    config = tmp_path / 'web.yml'
    config.write_text('{"basic_auth_users": {"prometheus": "plain"}}')
    host = SimExporter(str(tmp_path / 'gpusim'), ['h100-80gb-hbm3:1'])
    proc = subprocess.run([sys.executable, '-m', 'gpuvirt_exporter', '--web.config.file', str(config), '--web.listen-address', '127.0.0.1:0'],
                          env=host.env, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2 and 'not a bcrypt hash' in proc.stderr


def test_device_utilization_follows_the_mig_mode_at_run_time(tmp_path):
    """NVML answers no device utilization while MIG is on: the exporter does not ask then, and asks again once MIG is
    off (nothing remembered as unsupported from the MIG time)."""
    host = SimExporter(str(tmp_path / 'gpusim'), ['h100-80gb-hbm3:1'])
    host.nvml('pynvml.nvmlDeviceSetMigMode(pynvml.nvmlDeviceGetHandleByIndex(0), 1)\n')
    host.ctl('reset', '--gpu', '0')
    host.start()
    try:
        text = host.get()[1]
        assert _value(text, 'gpuvirt_gpu_mig_mode', gpu='0') == 1
        assert _value(text, 'gpuvirt_gpu_utilization_percent', gpu='0') is None
        host.nvml('pynvml.nvmlDeviceSetMigMode(pynvml.nvmlDeviceGetHandleByIndex(0), 0)\n')
        host.ctl('reset', '--gpu', '0', '--force')  # the exporter holds the GPU: a reset behind its back
        deadline = time.monotonic() + 10  # the MIG mode is read in the background every --pcie-interval (1 s here)
        while time.monotonic() < deadline and _value(host.get()[1], 'gpuvirt_gpu_mig_mode', gpu='0') != 0:
            time.sleep(0.2)
        text = host.get()[1]
        assert _value(text, 'gpuvirt_gpu_mig_mode', gpu='0') == 0
        assert _value(text, 'gpuvirt_gpu_utilization_percent', gpu='0') is not None
        assert 'nvmlDeviceGetUtilizationRates' not in text.split('gpuvirt_exporter_nvml_errors_total', 1)[-1]
    finally:
        host.stop()
