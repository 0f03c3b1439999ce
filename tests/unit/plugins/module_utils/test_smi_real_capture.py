# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The nvidia-smi parsers on answers read off a real H100, checked against what NVML said on the same GPU."""
from __future__ import annotations

import json
import os

import pytest

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _facts, _smi

CAPTURE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'fixtures', 'real-h100')


def _smi_output(name: str) -> str:
    """The capture files start with '# nvidia-smi ARGS' and end with '# rc=N'; the rest is what nvidia-smi printed."""
    with open(os.path.join(CAPTURE, name), encoding='utf-8') as handle:
        lines = handle.read().splitlines(keepends=True)
    assert lines[0].startswith('# nvidia-smi') and lines[-1].strip() == '# rc=0'
    return ''.join(lines[1:-1])


def _module_facts(backend: str) -> dict:
    with open(os.path.join(CAPTURE, 'gpu_facts-%s.json' % backend), encoding='utf-8') as handle:
        return json.load(handle)['ansible_facts']


@pytest.fixture(name='parsed')
def parsed_fixture():
    host, gpus = _smi.parse_query_xml(_smi_output('smi-q-x.txt'))
    profiles = _smi.parse_lgip(_smi_output('smi-mig-lgip.txt'), _smi.parse_lgipp(_smi_output('smi-mig-lgipp.txt')))
    for gpu in gpus:
        gpu['mig']['profiles'] = profiles.get(gpu['index'], [])
    return host, gpus


@pytest.fixture(name='nvml')
def nvml_fixture():
    return _module_facts('nvml')


def test_xml_gives_host_driver_and_cuda(parsed):
    host, gpus = parsed
    assert host['driver_version'] == '580.159.04'
    assert host['cuda_version'] == '13.0'
    assert host['driver_loaded'] is True
    assert len(gpus) == 1


def test_xml_gives_identity_memory_and_modes(parsed):
    gpu = parsed[1][0]
    assert gpu['name'] == 'NVIDIA H100 80GB HBM3'
    assert gpu['uuid'] == 'GPU-37351963-330b-689c-94bd-a0c83dd665f1'
    assert gpu['pci'] == {'bus_id': '00000000:00:06.0', 'vendor_id': '0x10de', 'device_id': '0x2330',
                          'subsystem_vendor_id': '0x10de', 'subsystem_id': '0x16c1'}
    assert gpu['architecture'] == 'hopper'
    assert gpu['memory'] == {'total_mib': 81559, 'used_mib': 0, 'free_mib': 81079, 'reserved_mib': 480}
    assert gpu['persistence_mode'] is True
    assert gpu['ecc'] == {'current': True, 'pending': True}
    assert (gpu['mig']['capable'], gpu['mig']['current'], gpu['mig']['pending']) == (True, False, False)
    assert gpu['vgpu']['virtualization_mode'] == 'passthrough'
    assert gpu['processes'] == []


def test_lgip_and_lgipp_give_every_profile_with_placements(parsed):
    profiles = {p['name']: p for p in parsed[1][0]['mig']['profiles']}
    assert list(profiles) == ['1g.10gb', '1g.10gb+me', '1g.20gb', '2g.20gb', '3g.40gb', '4g.40gb', '7g.80gb']
    assert profiles['1g.20gb']['id'] == 15 and profiles['1g.20gb']['slices'] == 1 and profiles['1g.20gb']['memory_slices'] == 2
    assert [p['start'] for p in profiles['3g.40gb']['placements']] == [0, 4]
    assert profiles['7g.80gb']['placements'] == [{'start': 0, 'size': 8}]
    assert profiles['1g.10gb+me']['instances'] == 1 and len(profiles['1g.10gb+me']['placements']) == 7
    assert profiles['7g.80gb']['copy_engines'] == 8 and profiles['7g.80gb']['ofas'] == 1


def test_fallback_equals_nvml_on_the_real_gpu_where_nvidia_smi_carries_the_field(parsed, nvml):
    """The same H100, read once through NVML and once through nvidia-smi by gpu_facts: the shared fields agree."""
    smi_gpu, nvml_gpu = parsed[1][0], nvml['gpus'][0]
    smi_gpu['mig']['profiles'] = _facts.sort_profiles(smi_gpu['mig']['profiles'])
    nvml_gpu['mig']['profiles'] = _facts.sort_profiles(nvml_gpu['mig']['profiles'])
    for field in ('index', 'uuid', 'name', 'status', 'pci', 'architecture', 'memory', 'persistence_mode', 'ecc', 'processes'):
        assert smi_gpu[field] == nvml_gpu[field], field
    for field in ('capable', 'current', 'pending', 'gpu_instances'):
        assert smi_gpu['mig'][field] == nvml_gpu['mig'][field], field
    assert smi_gpu['vgpu']['virtualization_mode'] == nvml_gpu['vgpu']['virtualization_mode']
    assert len(smi_gpu['mig']['profiles']) == len(nvml_gpu['mig']['profiles'])
    for smi_p, nvml_p in zip(smi_gpu['mig']['profiles'], nvml_gpu['mig']['profiles']):
        exact = {k: v for k, v in nvml_p.items() if k != 'memory_mib'}
        assert {k: v for k, v in smi_p.items() if k != 'memory_mib'} == exact, nvml_p['name']
        # nvidia-smi prints GiB with two decimals: the MiB figure it allows is within 0.01 GiB.
        assert abs(smi_p['memory_mib'] - nvml_p['memory_mib']) <= 10.24, nvml_p['name']


def test_module_fallback_run_on_the_real_gpu_matches_the_parser(parsed):
    """What gpu_facts returned with backend=nvidia-smi on the H100 is what the parsers make of the raw answers."""
    module = _module_facts('nvidia-smi')
    gpu = dict(parsed[1][0], sriov={'total_vfs': None, 'num_vfs': None})
    # The capture predates minor_number (0.4.0); the parser reads it from the same XML (<minor_number>0</minor_number>).
    assert gpu.pop('minor_number') == 0
    # It predates settings too (0.6.0), which the nvidia-smi backend leaves unread (NVML only).
    assert gpu.pop('settings') == _facts.new_settings()
    assert module['gpus'] == [gpu]
    assert module['gpu_host']['backend'] == 'nvidia-smi'
    assert module['gpu_host']['kernel_module'] == {'loaded': True, 'flavor': 'open', 'version': '580.159.04'}


def test_nvml_run_on_the_real_gpu_reports_unsupported_fields_not_errors(nvml):
    gpu = nvml['gpus'][0]
    assert gpu['compute_capability'] == '9.0'
    assert gpu['errors'] == {}
    assert 'vgpu.host_mode' in gpu['unsupported'] and 'vgpu.supported_types' in gpu['unsupported']
    assert nvml['gpu_host']['nvml_version'] == '13.580.159.04'


def test_driver_unreachable_message_is_recognised():
    assert _smi.DRIVER_UNREACHABLE in ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
                                       "Make sure that the latest NVIDIA driver is installed and running.")


def test_lost_gpu_in_xml_is_listed_with_its_error():
    xml = ('<?xml version="1.0" ?><nvidia_smi_log><driver_version>580.159.04</driver_version><cuda_version>13.0</cuda_version>'
           '<gpu id="00000000:18:00.0"><product_name>Unknown Error</product_name></gpu></nvidia_smi_log>')
    _host, gpus = _smi.parse_query_xml(xml)
    assert gpus[0]['status'] == 'lost'
    assert '00000000:18:00.0' in gpus[0]['error']
    assert _facts.finish_host(_host, gpus, None)['lost_gpus'] == 1
