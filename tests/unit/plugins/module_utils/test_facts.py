# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure shaping of GPU observations: each case is something gpu_facts users read."""
from __future__ import annotations

import pytest

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _facts

OPEN_BANNER = ('NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  (nixbld@)  \n'
               'GCC version:  gcc version 15.3.0 (GCC) \n')  # read off the real H100 host
PROPRIETARY_BANNER = ('NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.230.02  Thu Jan  9 22:39:35 UTC 2025\n'
                      'GCC version:  gcc version 12.2.0 (Debian 12.2.0-14) \n')


@pytest.mark.parametrize('banner, expected', [
    (OPEN_BANNER, {'loaded': True, 'flavor': 'open', 'version': '580.159.04'}),
    (PROPRIETARY_BANNER, {'loaded': True, 'flavor': 'proprietary', 'version': '535.230.02'}),
    (None, {'loaded': False, 'flavor': None, 'version': None}),
    ('something else entirely\n', {'loaded': True, 'flavor': 'unknown', 'version': None}),
])
def test_kernel_module_flavour_from_proc_banner(banner, expected):
    assert _facts.kernel_module(banner) == expected


def test_pci_ids_split_like_lspci():
    # NVML's pciDeviceId/pciSubSystemId of the real H100: 0x233010DE / 0x16C110DE
    assert _facts.pci_ids(590352606, 381751518) == {
        'vendor_id': '0x10de', 'device_id': '0x2330', 'subsystem_vendor_id': '0x10de', 'subsystem_id': '0x16c1'}
    assert _facts.pci_ids_from_smi('233010DE', '16C110DE') == _facts.pci_ids(590352606, 381751518)


@pytest.mark.parametrize('bus_id, address', [('00000000:00:06.0', '0000:00:06.0'), ('00000000:B5:00.0', '0000:b5:00.0')])
def test_sysfs_address_from_nvml_bus_id(bus_id, address):
    assert _facts.sysfs_pci_address(bus_id) == address


@pytest.mark.parametrize('value, text', [(13000, '13.0'), (12080, '12.8'), (None, None)])
def test_cuda_version(value, text):
    assert _facts.cuda_version(value) == text


def test_architecture_names():
    assert _facts.architecture_name(9) == 'hopper'
    assert _facts.architecture_name(5) == 'volta'
    assert _facts.architecture_name(99) == 'unknown'
    assert _facts.architecture_from_smi('Ampere') == 'ampere'


def test_profile_name_drops_the_mig_prefix_and_keeps_media_extension():
    assert _facts.mig_profile_name('MIG 1g.10gb+me') == '1g.10gb+me'
    assert _facts.mig_profile_name(b'MIG 3g.40gb') == '3g.40gb'


def test_summary_line_names_models_driver_and_mig_state():
    gpus = [_facts.new_gpu(i) for i in range(2)]
    for gpu in gpus:
        gpu.update(name='NVIDIA A100-SXM4-80GB')
        gpu['mig'].update(capable=True, current=False, pending=True)
    host = _facts.new_host('nvml')
    host.update(driver_loaded=True, driver_version='580.159.04', cuda_version='13.0')
    line = _facts.summary_line(_facts.finish_host(host, gpus, OPEN_BANNER), gpus)
    assert line == ('2x NVIDIA A100-SXM4-80GB | driver 580.159.04 (open modules) | CUDA 13.0 | '
                    'MIG on 0/2 (0 GPU instances, 2 pending a reset) | via nvml')


def test_summary_line_without_driver_says_why():
    host = _facts.new_host('nvml')
    host['driver_error'] = 'Driver Not Loaded'
    assert _facts.summary_line(host, []) == 'no GPUs visible (Driver Not Loaded)'


def test_summary_line_flags_lost_gpus():
    gpus = [_facts.new_gpu(0)]
    _facts.mark_lost(gpus[0], 'GPU is lost')
    host = _facts.new_host('nvml')
    host['driver_loaded'] = True
    assert '1 GPU(s) LOST' in _facts.summary_line(_facts.finish_host(host, gpus, None), gpus)


def test_layout_lines_show_each_gpu_instance_at_its_placement_with_compute_instances():
    gpus = [_facts.new_gpu(i) for i in range(4)]
    for gpu in gpus[:3]:
        gpu.update(name='NVIDIA H100 80GB HBM3')
        gpu['mig'].update(capable=True, current=True, pending=True)
    gpus[0]['mig']['gpu_instances'] = [
        {'id': 2, 'profile': '3g.40gb', 'placement': {'start': 4, 'size': 4}, 'compute_instances': [{'id': 0, 'slices': 3}]},
        {'id': 1, 'profile': '3g.40gb', 'placement': {'start': 0, 'size': 4},
         'compute_instances': [{'id': 0, 'slices': 2}, {'id': 1, 'slices': 1}]},
    ]
    gpus[1]['mig']['pending'] = False
    gpus[2]['mig'].update(current=False)
    gpus[3].update(name='NVIDIA A40')
    gpus[3]['vgpu']['virtualization_mode'] = 'host_vgpu'
    assert _facts.layout_lines(gpus) == [
        'GPU 0 NVIDIA H100 80GB HBM3: MIG 3g.40gb@0 [2c 1c], 3g.40gb@4 [3c]',
        'GPU 1 NVIDIA H100 80GB HBM3: MIG on, no instances (off after reset)',
        'GPU 2 NVIDIA H100 80GB HBM3: MIG off (on after reset)',
        'GPU 3 NVIDIA A40: vGPU: no vGPU devices',
    ]
