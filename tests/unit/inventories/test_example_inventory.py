# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""inventories/example: every declaration passes the pure planners on the simulator's model of its hardware, the
driver version is whitelisted, the rollout settings are sane, and the AMD MI250 sample is never targeted."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _mig, _vgpu

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / 'inventories' / 'example'
sys.path.insert(0, str(REPO / 'tests' / 'unit' / 'plugins' / 'module_utils'))

from mig_support import load_model, model_gpu  # noqa: E402  pylint: disable=import-error,wrong-import-position

# hardware group -> (simulator model, GPUs per host)
MODELS = {'h100_sxm': ('h100-80gb-hbm3', 8), 'a100_80gb': ('a100-sxm4-80gb', 8), 'a40_vgpu': ('a40', 4)}


def _group_vars(group: str) -> dict:
    path = EXAMPLE / 'group_vars' / ('%s.yml' % group)
    return yaml.safe_load(path.read_text(encoding='utf-8')) or {} if path.exists() else {}


@pytest.fixture(scope='module', name='inventory')
def inventory_fixture() -> InventoryManager:
    return InventoryManager(loader=DataLoader(), sources=[str(EXAMPLE / 'hosts.yml')])


def _a40_view(index: int) -> _vgpu.GpuView:
    model = load_model('a40')
    types = [_vgpu.VgpuType('nvidia-%d' % t['id'], t['name'], t['max_instances'], t['max_instances']) for t in model['vgpu']['types']]
    return _vgpu.GpuView(index=index, uuid='GPU-a40-%d' % index, name=model['name'], bus_id='00000000:%02X:00.0' % (0x18 + index),
                         parent='0000:%02x:00.0' % (0x18 + index), types=types, homogeneous=not model['vgpu']['heterogeneous'],
                         pci={'device_id': '0x%04x' % model['pci_device_id'], 'vendor_id': '0x10de'})


@pytest.mark.parametrize('group', ['h100_sxm', 'a100_80gb'])
def test_mig_declarations_plan_on_the_model_of_their_hardware(group):
    key, count = MODELS[group]
    gpus = [model_gpu(key, index, current=False) for index in range(count)]
    declaration = _group_vars(group)['gpu_mig']
    assert _mig.validate('example-' + group, gpus, declaration) == []
    plan = _mig.plan_host('example-' + group, gpus, declaration)
    assert plan.steps, 'a fresh GPU needs steps to reach the declaration'


def test_the_a100_sample_is_four_instances_of_about_20_gb_per_gpu():
    declaration = _group_vars('a100_80gb')['gpu_mig']
    assert declaration == [{'name': 'a100-quarters', 'devices': 'all', 'enabled': True, 'instances': [{'profile': '1g.20gb', 'count': 4}]}]
    profile = next(p for p in load_model('a100-sxm4-80gb')['mig']['gpu_instance_profiles'] if p['name'] == 'MIG 1g.20gb')
    assert profile['instanceCount'] == 4 and 15000 < profile['memorySizeMB'] < 21000


def test_the_vgpu_declaration_plans_on_the_a40_model():
    key, count = MODELS['a40_vgpu']
    assert key == 'a40'
    plan = _vgpu.plan_host('example-a40', [_a40_view(i) for i in range(count)], _group_vars('a40_vgpu')['gpu_vgpu'])
    assert len([s for s in plan.steps if s['action'] == 'create']) == 6 * count


def test_every_hardware_group_is_a_gpu_host_group_and_has_hosts(inventory):
    gpu_hosts = set(inventory.groups['gpu_hosts'].get_hosts())
    for group in ('h100_sxm', 'a100_80gb', 'a40_vgpu', 'l40s'):
        hosts = inventory.groups[group].get_hosts()
        assert hosts and set(hosts) <= gpu_hosts, group
    assert len(gpu_hosts) == 14


def test_canaries_cover_every_hardware_group(inventory):
    canaries = {h.name for h in inventory.groups['rollout_canary'].get_hosts()}
    for group in ('h100_sxm', 'a100_80gb', 'a40_vgpu', 'l40s'):
        assert canaries & {h.name for h in inventory.groups[group].get_hosts()}, group


def test_the_driver_version_is_whitelisted_and_rollout_settings_are_sane():
    settings = _group_vars('all')
    allowed = {v for entry in settings['driver_whitelist'] for v in entry['versions']}
    assert settings['driver_version'] in allowed
    assert 0 <= settings['gpuvirt_rollout_max_fail_percentage'] <= 100
    assert str(settings['gpuvirt_rollout_batch']).rstrip('%').isdigit()
    for key in ('gpuvirt_rollout_drain_tasks', 'gpuvirt_rollout_undrain_tasks'):
        path = settings[key].replace('{{ playbook_dir }}', str(REPO / 'playbooks'))
        assert Path(path).is_file(), path


def test_amd_mi250_is_documentation_only(inventory):
    assert inventory.groups['amd_mi250'].get_hosts() == []
    assert 'amd_mi250' not in [g.name for g in inventory.groups['gpu_hosts'].child_groups]
    sample = _group_vars('amd_mi250')
    assert set(sample) == {'amd_mi250_design_sample'}  # nothing a role reads: no gpu_mig, gpu_vgpu, driver_* ...
    expected = {'gpu': 'AMD Instinct MI250', 'partitions': 8, 'framebuffer_gb': 8, 'managed_by_gpuvirt_fleet': False}
    assert sample['amd_mi250_design_sample'] == expected
    readme = (EXAMPLE / 'README.md').read_text(encoding='utf-8')
    assert 'NVIDIA only' in readme and 'MI250' in readme
