# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpu_facts, unchanged, against simulated hosts: the stand-in pynvml and nvidia-smi are installed the way the
real ones are (pynvml importable, nvidia-smi on PATH), and the module cannot tell the difference.

Each simulated model's facts are checked against the model's data file, and the nvidia-smi fallback against
the NVML path for the same host.
"""
from __future__ import annotations

import glob
import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from simhost import REPO, SIM_LIB, SimHost  # noqa: E402 pylint: disable=import-error,wrong-import-position

MODELS = {os.path.basename(p)[:-5]: p for p in sorted(glob.glob(os.path.join(SIM_LIB, 'gpusim', 'models', '*.json')))}
ARCH = {5: 'volta', 6: 'turing', 7: 'ampere', 8: 'ada', 9: 'hopper', 10: 'blackwell'}
MIB = 1024 * 1024


@pytest.fixture(name='host')
def host_fixture(tmp_path):
    return SimHost(str(tmp_path / 'gpusim'))


@pytest.fixture(name='no_pynvml')
def no_pynvml_fixture(tmp_path):
    """A Python path where `import pynvml` fails, as on a host without nvidia-ml-py."""
    shadow = tmp_path / 'no-pynvml'
    shadow.mkdir()
    (shadow / 'pynvml.py').write_text("raise ImportError('No module named pynvml')\n")
    return str(shadow)


def _load_model(key: str) -> dict:
    with open(MODELS[key], encoding='utf-8') as handle:
        return json.load(handle)


def _init_args(key: str, count: int) -> list[str]:
    """The open kernel modules drive Turing and newer only: a Volta host runs the proprietary ones."""
    flavor = 'proprietary' if _load_model(key)['architecture'] < 6 else 'open'
    return ['init', '--hostname', 'node-' + key, '--gpu', '%s:%d' % (key, count), '--flavor', flavor]


def test_every_required_model_is_simulated():
    assert {'a100-sxm4-40gb', 'a100-sxm4-80gb', 'h100-80gb-hbm3', 'h200-141gb', 'a30', 'a40', 't4', 'v100-sxm2-32gb'} <= set(MODELS)


@pytest.mark.parametrize('key', sorted(MODELS))
def test_facts_of_each_simulated_model_match_its_model_data(host, key):
    model = _load_model(key)
    host.ctl(*_init_args(key, 2))
    facts = host.facts('nvml')
    assert facts['gpu_host']['backend'] == 'nvml' and facts['gpu_host']['driver_loaded'] is True
    assert facts['gpu_host']['gpu_count'] == 2 and facts['gpu_host']['models'] == {model['name']: 2}
    assert len({g['uuid'] for g in facts['gpus']}) == 2 and len({g['pci']['bus_id'] for g in facts['gpus']}) == 2
    for index, gpu in enumerate(facts['gpus']):
        assert gpu['index'] == index and gpu['status'] == 'ok' and gpu['errors'] == {}
        assert gpu['name'] == model['name']
        assert gpu['pci']['device_id'] == '0x%04x' % model['pci_device_id']
        assert gpu['pci']['subsystem_id'] == '0x%04x' % model['pci_subsystem_id']
        assert gpu['architecture'] == ARCH[model['architecture']]
        assert gpu['compute_capability'] == '%d.%d' % tuple(model['compute_capability'])
        assert gpu['memory']['total_mib'] == model['memory_total_bytes'] // MIB
        assert gpu['memory']['reserved_mib'] == model['memory_reserved_bytes'] // MIB
        assert gpu['mig']['capable'] is bool(model['mig'])
        if model['mig']:
            expected = sorted((p['id'], p['name'][4:], p['sliceCount'], p['instanceCount'], p['memorySizeMB'],
                               tuple(p['placements']['starts']), p['placements']['size'])
                              for p in model['mig']['gpu_instance_profiles'])
            got = sorted((p['id'], p['name'], p['slices'], p['instances'], p['memory_mib'],
                          tuple(pl['start'] for pl in p['placements']), p['memory_slices']) for p in gpu['mig']['profiles'])
            assert got == expected
        else:
            assert gpu['mig']['profiles'] == [] and 'mig' in gpu['unsupported']


@pytest.mark.parametrize('key', sorted(MODELS))
def test_nvidia_smi_fallback_gives_the_same_facts_as_nvml(host, key):
    host.ctl(*_init_args(key, 2))
    nvml, smi = host.facts('nvml'), host.facts('nvidia-smi')
    assert smi['gpu_host']['backend'] == 'nvidia-smi'
    for field in ('driver_loaded', 'driver_version', 'cuda_version', 'gpu_count', 'models'):
        assert smi['gpu_host'][field] == nvml['gpu_host'][field], field
    for smi_gpu, nvml_gpu in zip(smi['gpus'], nvml['gpus']):
        for field in ('index', 'uuid', 'name', 'status', 'pci', 'architecture', 'persistence_mode', 'ecc', 'processes'):
            assert smi_gpu[field] == nvml_gpu[field], field
        # nvidia-smi rounds MiB where NVML's bytes are divided down: the real H200 reads Free 143156 / Reserved 616 MiB
        # in nvidia-smi -q and 143155 / 615 through NVML (../shared/fixtures/real/h200-141gb)
        assert set(smi_gpu['memory']) == set(nvml_gpu['memory'])
        for name, value in nvml_gpu['memory'].items():
            assert abs(smi_gpu['memory'][name] - value) <= 1, ('memory', name, smi_gpu['memory'][name], value)
        for field in ('capable', 'current', 'pending'):
            assert smi_gpu['mig'][field] == nvml_gpu['mig'][field], field
        assert smi_gpu['vgpu']['virtualization_mode'] == nvml_gpu['vgpu']['virtualization_mode']
        assert [p['name'] for p in smi_gpu['mig']['profiles']] == [p['name'] for p in nvml_gpu['mig']['profiles']]
        for smi_p, nvml_p in zip(smi_gpu['mig']['profiles'], nvml_gpu['mig']['profiles']):
            assert {k: v for k, v in smi_p.items() if k != 'memory_mib'} == {k: v for k, v in nvml_p.items() if k != 'memory_mib'}
            assert abs(smi_p['memory_mib'] - nvml_p['memory_mib']) <= 10.24


def test_existing_mig_instances_are_reported_with_placement_and_compute_instances(host):
    host.ctl('init', '--hostname', 'mig-node', '--gpu', 'h100-80gb-hbm3:1')
    host.nvml('h = pynvml.nvmlDeviceGetHandleByIndex(0)\npynvml.nvmlDeviceSetMigMode(h, 1)\n')
    host.ctl('reset', '--gpu', '0')
    host.nvml('''
h = pynvml.nvmlDeviceGetHandleByIndex(0)
p3 = pynvml.nvmlDeviceGetGpuInstanceProfileInfo(h, pynvml.NVML_GPU_INSTANCE_PROFILE_3_SLICE)
p1 = pynvml.nvmlDeviceGetGpuInstanceProfileInfo(h, pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE)
place = pynvml.c_nvmlGpuInstancePlacement_t()
place.start, place.size = 4, 4
gi = pynvml.nvmlDeviceCreateGpuInstanceWithPlacement(h, p3.id, place)
ci = pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, pynvml.NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE,
                                                         pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
pynvml.nvmlGpuInstanceCreateComputeInstance(gi, ci.id)
pynvml.nvmlGpuInstanceCreateComputeInstance(gi, ci.id)
place.start, place.size = 0, 1
pynvml.nvmlDeviceCreateGpuInstanceWithPlacement(h, p1.id, place)
''')
    gpu = host.facts('nvml')['gpus'][0]
    assert gpu['mig']['current'] is True and gpu['mig']['pending'] is True
    instances = sorted(gpu['mig']['gpu_instances'], key=lambda g: g['placement']['start'])
    assert [(g['profile'], g['placement']) for g in instances] == [('1g.10gb', {'start': 0, 'size': 1}), ('3g.40gb', {'start': 4, 'size': 4})]
    assert [c['slices'] for c in instances[1]['compute_instances']] == [1, 1]
    assert instances[0]['compute_instances'] == []
    # nvidia-smi -q -x lists MIG devices, i.e. compute instances: a GPU instance without one is not in the XML.
    smi_gpu = host.facts('nvidia-smi')['gpus'][0]
    assert [(g['id'], [c['id'] for c in g['compute_instances']]) for g in smi_gpu['mig']['gpu_instances']] == \
        [(instances[1]['id'], [c['id'] for c in instances[1]['compute_instances']])]
    assert host.facts('nvml')['gpu_host']['mig_enabled_gpus'] == 1


def test_pending_mig_mode_is_reported_until_reset(host):
    host.ctl('init', '--hostname', 'a100-node', '--gpu', 'a100-sxm4-80gb:2')
    host.nvml('pynvml.nvmlDeviceSetMigMode(pynvml.nvmlDeviceGetHandleByIndex(1), 1)\n')
    gpus = host.facts('nvml')['gpus']
    assert [(g['mig']['current'], g['mig']['pending']) for g in gpus] == [(False, False), (False, True)]


def test_running_processes_are_listed_per_gpu(host):
    host.ctl('init', '--hostname', 'busy', '--gpu', 'a100-sxm4-40gb:2')
    host.ctl('proc', 'add', '--gpu', '1', '--pid', '4242', '--mem-mib', '2048')
    for backend in ('nvml', 'nvidia-smi'):
        gpus = host.facts(backend)['gpus']
        assert gpus[0]['processes'] == []
        assert [(p['pid'], p['used_memory_mib']) for p in gpus[1]['processes']] == [(4242, 2048)], backend


def test_a_lost_gpu_is_listed_with_its_error_and_the_others_still_report(host):
    host.ctl('init', '--hostname', 'lossy', '--gpu', 'h100-80gb-hbm3:4')
    host.ctl('lose', '--gpu', '2')
    facts = host.facts('nvml')
    assert [g['status'] for g in facts['gpus']] == ['ok', 'ok', 'lost', 'ok']
    assert 'lost' in facts['gpus'][2]['error'].lower()
    assert facts['gpu_host']['lost_gpus'] == 1
    assert all(g['name'] == 'NVIDIA H100 80GB HBM3' for i, g in enumerate(facts['gpus']) if i != 2)


def test_an_unsupported_call_marks_the_field_unsupported_not_a_failure(host):
    host.ctl('init', '--hostname', 'quirky', '--gpu', 'a30:1')
    host.ctl('fault', 'set', '--gpu', '0', '--call', 'nvmlDeviceGetEccMode', '--error', 'NVML_ERROR_NOT_SUPPORTED')
    gpu = host.facts('nvml')['gpus'][0]
    assert gpu['ecc'] == {'current': None, 'pending': None} and 'ecc' in gpu['unsupported']
    assert gpu['status'] == 'ok' and gpu['name'] == 'NVIDIA A30'


def test_a_failing_call_is_reported_in_errors_and_the_rest_is_read(host):
    host.ctl('init', '--hostname', 'flaky', '--gpu', 't4:2')
    host.ctl('fault', 'set', '--gpu', 'all', '--call', 'nvmlDeviceGetPersistenceMode', '--error', 'NVML_ERROR_UNKNOWN')
    for gpu in host.facts('nvml')['gpus']:
        assert gpu['persistence_mode'] is None
        assert gpu['errors'] == {'persistence_mode': 'nvmlDeviceGetPersistenceMode: Unknown Error'}
        assert gpu['name'] == 'Tesla T4' and gpu['architecture'] == 'turing'


@pytest.mark.parametrize('flag, message', [('--driver-not-loaded', 'Driver Not Loaded'), ('--no-driver', 'NVML Shared Library Not Found')])
def test_a_host_without_a_working_driver_reports_no_gpus_without_failing(host, flag, message):
    host.ctl('init', '--hostname', 'bare', '--gpu', 'h100-80gb-hbm3:1', flag)
    facts = host.facts('nvml')
    assert facts['gpus'] == [] and facts['gpu_host']['driver_loaded'] is False
    assert facts['gpu_host']['driver_error'] == message
    smi = host.facts('nvidia-smi')
    assert smi['gpus'] == [] and smi['gpu_host']['driver_loaded'] is False and smi['gpu_host']['driver_error']


def test_vgpu_host_reports_supported_types_and_host_mode(host):
    host.ctl('init', '--hostname', 'vgpu-node', '--gpu', 'a40:2', '--vgpu-host')
    model = _load_model('a40')
    gpu = host.facts('nvml')['gpus'][0]
    assert gpu['vgpu']['virtualization_mode'] == 'host_vgpu'
    assert gpu['vgpu']['host_mode'] == 'sriov'
    assert [t['name'] for t in gpu['vgpu']['supported_types']] == [t['name'] for t in model['vgpu']['types']]
    eight_q = next(t for t in gpu['vgpu']['supported_types'] if t['name'].endswith('A40-8Q'))
    assert eight_q['framebuffer_mib'] == 8192
    assert gpu['vgpu']['creatable_types'] and set(gpu['vgpu']['creatable_types']) <= {t['name'] for t in model['vgpu']['types']}


def test_without_pynvml_auto_falls_back_to_nvidia_smi(host, no_pynvml):
    host.ctl('init', '--hostname', 'smi-only', '--gpu', 'a100-sxm4-80gb:1')
    facts = host.facts('auto', extra_path=no_pynvml)
    assert facts['gpu_host']['backend'] == 'nvidia-smi'
    assert facts['gpus'][0]['name'] == 'NVIDIA A100-SXM4-80GB'


def test_without_pynvml_backend_nvml_fails_naming_the_missing_library(host, no_pynvml):
    host.ctl('init', '--hostname', 'smi-only', '--gpu', 'a100-sxm4-80gb:1')
    result = host.facts('nvml', extra_path=no_pynvml, expect_failure=True)
    assert 'nvidia-ml-py' in result['msg']


def test_without_pynvml_and_without_nvidia_smi_the_host_has_no_gpus(tmp_path, no_pynvml):
    bare = SimHost(str(tmp_path / 'none'))
    bare.env['PATH'] = os.pathsep.join(p for p in os.environ['PATH'].split(os.pathsep) if not os.path.exists(os.path.join(p, 'nvidia-smi')))
    facts = bare.facts('auto', extra_path=no_pynvml)
    assert facts['gpus'] == []
    assert (facts['gpu_host']['backend'], facts['gpu_host']['driver_loaded'], facts['gpu_host']['gpu_count']) == ('none', False, 0)


def test_a_failing_nvidia_smi_is_a_clear_module_failure(tmp_path, no_pynvml):
    broken_bin = tmp_path / 'bin'
    broken_bin.mkdir()
    smi = broken_bin / 'nvidia-smi'
    smi.write_text('#!/bin/sh\necho "Unable to determine the device handle for GPU0000:18:00.0: Unknown Error" >&2\nexit 15\n')
    smi.chmod(0o755)
    host = SimHost(str(tmp_path / 'state'))
    host.env['PATH'] = str(broken_bin) + os.pathsep + os.environ['PATH']
    result = host.facts('nvidia-smi', extra_path=no_pynvml, expect_failure=True)
    assert 'rc=15' in result['msg'] and 'Unknown Error' in result['msg']


REAL_CAPTURE = os.path.join(REPO, 'tests', 'unit', 'fixtures', 'real-h100')


@pytest.mark.parametrize('backend', ['nvml', 'nvidia-smi'])
def test_simulated_h100_gives_the_facts_the_real_h100_gave(host, backend):
    """gpu_facts on the real H100 (tests/unit/fixtures/real-h100) and on a simulated H100 given the real GPU's
    identity: every field is equal except SR-IOV, which each machine's own /sys answers."""
    with open(os.path.join(REAL_CAPTURE, 'gpu_facts-%s.json' % backend), encoding='utf-8') as handle:
        real = json.load(handle)['ansible_facts']
    gpu = real['gpus'][0]
    host.ctl('init', '--hostname', 'h100-twin', '--gpu', 'h100-80gb-hbm3:1',
             '--uuid', '0=' + gpu['uuid'], '--pci', '0=' + gpu['pci']['bus_id'])
    sim = host.facts(backend)
    for key in ('sriov',):
        gpu.pop(key)
        sim['gpus'][0].pop(key)
    # The capture predates minor_number (0.4.0); the real H100's nvidia-smi -q -x says <minor_number>0</minor_number>.
    assert 'minor_number' not in gpu and sim['gpus'][0].pop('minor_number') == 0
    # The capture predates settings (0.6.0); the real H100 reported these constraints and clocks (shared fixtures/real).
    settings = sim['gpus'][0].pop('settings')
    if backend == 'nvidia-smi':
        assert settings['power_limit']['limit_mw'] is None and settings['supported_clocks'] == []  # read through NVML only
        settings = None
    assert settings is None or settings['power_limit'] == {'limit_mw': 700000, 'default_mw': 700000, 'min_mw': 200000, 'max_mw': 700000, 'enforced_mw': 700000}
    assert settings is None or [t['memory_mhz'] for t in settings['supported_clocks']] == [2619, 1593]
    assert settings is None or settings['default_applications_clocks'] == {'graphics_mhz': 1980, 'memory_mhz': 2619}
    real['gpus'][0]['mig']['profiles'] = sorted(gpu['mig']['profiles'], key=lambda p: p['id'])
    sim['gpus'][0]['mig']['profiles'] = sorted(sim['gpus'][0]['mig']['profiles'], key=lambda p: p['id'])
    assert sim['gpus'] == real['gpus']
    # The real host runs the open kernel modules 580.159.04; the simulated host has no /proc/driver/nvidia here.
    for key in ('driver_loaded', 'driver_version', 'cuda_version', 'nvml_version', 'backend', 'gpu_count', 'models',
                'mig_enabled_gpus', 'lost_gpus'):
        assert sim['gpu_host'][key] == real['gpu_host'][key], key
