# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pure GPU settings planner: what it refuses (naming the entry and the bounds), what it plans, and the fleet
report's drift from it. The GPU facts are an H200 as gpu_facts reports it (constraints and clocks of the real H200,
shared fixtures/real/h200-141gb)."""
from __future__ import annotations

import copy

import pytest

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _facts, _report, _settings

GRAPHICS = list(range(1980, 344, -15))


def h200(index: int, **changes) -> dict:
    gpu = _facts.new_gpu(index)
    gpu.update(uuid='GPU-%d' % index, name='NVIDIA H200', persistence_mode=True, ecc={'current': True, 'pending': True})
    gpu['pci'].update(bus_id='00000000:%02X:00.0' % (0x18 + index), device_id='0x2335', vendor_id='0x10de')
    gpu['settings'].update(compute_mode='default', supported_clocks=[{'memory_mhz': 3201, 'graphics_mhz': GRAPHICS},
                                                                     {'memory_mhz': 2201, 'graphics_mhz': GRAPHICS}])
    gpu['settings']['power_limit'].update(limit_mw=700000, default_mw=700000, min_mw=200000, max_mw=700000, enforced_mw=700000)
    gpu['settings']['applications_clocks'] = {'graphics_mhz': 1980, 'memory_mhz': 3201}
    gpu['settings']['default_applications_clocks'] = {'graphics_mhz': 1980, 'memory_mhz': 3201}
    for key, value in changes.items():
        gpu['settings'][key] = value
    return gpu


def refused(declaration, gpus=None, **kwargs) -> list[str]:
    with pytest.raises(_settings.SettingsPlanError) as info:
        _settings.plan_host('h1', gpus or [h200(0), h200(1)], declaration, **kwargs)
    return info.value.errors


def test_a_power_limit_outside_the_constraints_names_the_entry_and_both_bounds():
    errors = refused([{'name': 'cap', 'devices': [0], 'power_limit': 150}, {'devices': [1], 'power_limit': '110%'}])
    assert errors == [
        "host h1: GPU 0 (GPU-0): entry 'cap': power_limit 150 W is outside the GPU's power limit constraints: minimum 200 W, "
        "maximum 700 W (nvmlDeviceGetPowerManagementLimitConstraints)",
        "host h1: GPU 1 (GPU-1): entry 2: power_limit 110% (770 W of the 700 W default) is outside the GPU's power limit "
        "constraints: minimum 200 W, maximum 700 W (nvmlDeviceGetPowerManagementLimitConstraints)"]


@pytest.mark.parametrize('entry, message', [
    ({'devices': 'all', 'gpu_locked_clocks': {'min': 300, 'max': 1500}},
     'gpu_locked_clocks 300..1500 MHz is outside the supported graphics clocks: 345..1980 MHz'),
    ({'devices': 'all', 'memory_locked_clocks': 5000}, 'memory_locked_clocks 5000..5000 MHz is outside the supported memory clocks: 2201..3201 MHz'),
    ({'devices': 'all', 'applications_clocks': {'memory': 2201, 'graphics': 1001}},
     'applications_clocks: graphics 1001 MHz is not supported with memory 2201 MHz (supported: 345..1980 MHz in 15 MHz steps)'),
    ({'devices': 'all', 'compute_mode': 'exclusive_thread'}, 'compute_mode must be one of default, exclusive_process, prohibited'),
    ({'devices': 'all', 'ecc': 'yes'}, 'ecc must be true or false'),
    ({'devices': 'all'}, 'declares no setting'),
    ({'devices': 'all', 'applications_clocks': 'default', 'gpu_locked_clocks': 1500, 'memory_locked_clocks': 'default'}, None),
    ({'devices': 'all', 'gpu_locked_clocks': 1500, 'applications_clocks': {'memory': 3201, 'graphics': 1980}}, 'exclude each other'),
    ({'devices': [5], 'power_limit': 300}, 'GPU index 5 is not on this host'),
])
def test_bad_entries_are_refused_naming_the_problem(entry, message):
    if message is None:
        assert _settings.plan_host('h1', [h200(0)], [entry]).steps  # a valid mix: unlock app clocks, lock the GPU clock
        return
    assert any(message in e for e in refused([entry])), refused([entry])


def test_one_entry_per_gpu_and_one_persistence_per_host():
    errors = refused([{'name': 'a', 'devices': 'all', 'persistence': True}, {'name': 'b', 'devices': [1], 'persistence': False}])
    assert any("selected by entries 'a', 'b'" in e for e in errors)
    assert any('persistence is host-wide' in e for e in errors)
    assert any('not installed' in e for e in refused([{'devices': 'all', 'persistence': True}], service={'loaded': False}))


def test_an_unsupported_setting_is_refused():
    gpu = h200(0, supported_clocks=[], compute_mode=None)
    gpu['ecc'] = {'current': None, 'pending': None}
    gpu['settings']['power_limit'] = _facts.new_settings()['power_limit']
    errors = refused([{'devices': 'all', 'ecc': True, 'compute_mode': 'default', 'power_limit': 300, 'gpu_locked_clocks': 1500}], [gpu])
    assert [e.split(': ', 3)[-1].split(':')[0] for e in errors] == ['ecc', 'compute_mode', 'power_limit', 'gpu_locked_clocks']


def test_the_plan_orders_ecc_reset_persistence_then_the_rest_and_assumes_defaults_after_a_reset():
    gpus = [h200(0, power_limit=dict(h200(0)['settings']['power_limit'], limit_mw=400000)), h200(1)]
    gpus[1]['persistence_mode'] = False
    plan = _settings.plan_host('h1', gpus, [{'devices': [0], 'ecc': False, 'power_limit': 400, 'persistence': True},
                                            {'devices': [1], 'power_limit': '50%', 'persistence': True}],
                               service={'loaded': True, 'active': False, 'enabled': False})
    assert [(s['action'], s['gpu']) for s in plan.steps] == [
        ('set_ecc_mode', 0), ('reset_gpu', 0), ('set_persistence', None), ('set_power_limit', 0), ('set_power_limit', 1)]
    assert plan.steps[3]['value'] == 400000 and plan.steps[4]['value'] == 350000  # GPU 0 had 400 W, but the reset loses it
    never = _settings.plan_host('h1', gpus, [{'devices': [0], 'ecc': False, 'power_limit': 400}], reset_possible={0: False})
    assert [s['action'] for s in never.steps] == ['set_ecc_mode'] and never.reboot_required[0]['gpu'] == 0
    assert never.after[0]['ecc'] == 'enabled (pending disabled until a reboot)'


def test_locked_clocks_come_from_the_record():
    declaration = [{'devices': [0], 'gpu_locked_clocks': {'min': 1500, 'max': 1500}}]
    assert [s['action'] for s in _settings.plan_host('h1', [h200(0)], declaration).steps] == ['set_gpu_locked_clocks']
    assert _settings.plan_host('h1', [h200(0)], declaration, locked={'GPU-0': {'gpu': [1500, 1500]}}).steps == []


def test_the_report_shows_settings_drift_but_not_locked_clocks():
    gpus = [h200(0), h200(1)]
    entry = {'host': 'h1', 'gpus': gpus, 'gpu_host': {}, 'gpu_settings': [
        {'devices': [0], 'power_limit': 500, 'gpu_locked_clocks': 1500}, {'devices': [1], 'compute_mode': 'default'}]}
    assert _report.host_drift(entry) == ['settings: GPU 0: set power_limit to 500 W (was 700 W)']
    matching = copy.deepcopy(entry)
    matching['gpus'][0]['settings']['power_limit']['limit_mw'] = 500000
    assert _report.host_drift(matching) == []
