# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pure driver planner: whitelist, policy, package names, plans. Each case is a decision an operator relies on."""
from __future__ import annotations

import pytest

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _driver
from ansible_collections.gpuvirt.fleet.plugins.module_utils._driver_policy import POLICY

WHITELIST = ['580.95.05', {'branch': '580', 'versions': ['580.159.04']}, {'branch': '570', 'versions': ['570.195.03', '570.172.08']}]


# ---- whitelist and desired version ---------------------------------------------------------
@pytest.mark.parametrize('kwargs, expected', [
    ({'version': '580.95.05'}, '580.95.05'),
    ({'version': '580.159.04'}, '580.159.04'),
    ({'branch': '580'}, '580.159.04'),
    ({'branch': '570'}, '570.195.03'),
    ({'branch': '580', 'available': {'580.95.05', '580.105.08'}}, '580.95.05'),
    ({'branch': 580}, '580.159.04'),
])
def test_resolve_whitelisted(kwargs, expected):
    assert _driver.resolve_version(WHITELIST, **kwargs) == expected


@pytest.mark.parametrize('entries, kwargs, message', [
    (WHITELIST, {'version': '575.57.08'}, 'driver version 575.57.08 is not whitelisted'),
    (WHITELIST, {'branch': '590'}, 'driver branch 590 is not whitelisted'),
    (WHITELIST, {'version': '580.95.05', 'available': {'580.159.04'}}, 'does not offer it'),
    (WHITELIST, {'branch': '570', 'available': {'570.86.15'}}, 'no whitelisted version of branch 570'),
    (WHITELIST, {}, 'exactly one of version'),
    (WHITELIST, {'version': '580.95.05', 'branch': '580'}, 'exactly one of version'),
    (WHITELIST, {'version': 'latest'}, "version 'latest'"),
    (['580.95.05', 'banana'], {'version': '580.95.05'}, 'whitelist entry 2'),
    ([{'branch': '580', 'versions': ['570.195.03']}], {'branch': '580'}, 'whitelist entry 1: version 570.195.03 is not of branch 580'),
    ([{'branch': '580'}], {'branch': '580'}, 'whitelist entry 1 (branch 580): versions must be a non-empty list'),
    ([{'branch': '580', 'versions': ['580.95.05'], 'latest': True}], {'branch': '580'}, 'unknown key(s) latest'),
    ('580.95.05', {'version': '580.95.05'}, 'expected a list'),
])
def test_refusals_name_the_offending_entry(entries, kwargs, message):
    with pytest.raises(_driver.DriverError, match=None) as info:
        _driver.resolve_version(entries, **kwargs)
    assert message in str(info.value)


def test_upstream_version_of_packages():
    assert _driver.upstream('580.95.05-1') == '580.95.05'
    assert _driver.upstream('580.95.05-0ubuntu0.24.04.1') == '580.95.05'
    assert _driver.upstream('1:580.95.05-1') == '580.95.05'


# ---- policy --------------------------------------------------------------------------------
H100 = {'index': 0, 'name': 'NVIDIA H100 80GB HBM3', 'architecture': 'hopper'}
V100 = {'index': 1, 'name': 'Tesla V100-SXM2-32GB', 'architecture': 'volta'}
B200 = {'index': 0, 'name': 'NVIDIA B200', 'architecture': 'blackwell'}
GH200 = {'index': 0, 'name': 'NVIDIA GH200 480GB', 'architecture': 'hopper'}
H200 = {'index': 0, 'name': 'NVIDIA H200', 'architecture': 'hopper'}
T4 = {'index': 2, 'name': 'Tesla T4', 'architecture': 'turing'}


@pytest.mark.parametrize('gpus, requested, expected', [
    ([H100], 'auto', 'open'),
    ([T4, H100], 'auto', 'open'),
    ([V100], 'auto', 'proprietary'),
    ([H100, V100], 'auto', 'proprietary'),  # a mix of old and new: proprietary
    ([B200], 'auto', 'open'),
    ([GH200], 'auto', 'open'),
    ([H100], 'proprietary', 'proprietary'),
    ([], 'open', 'open'),
    (['ampere'], 'auto', 'open'),
])
def test_flavor_from_gpus(gpus, requested, expected):
    assert _driver.choose_flavor(_driver.normalize_gpus(gpus), requested, POLICY) == expected


@pytest.mark.parametrize('gpus, requested, message', [
    ([B200], 'proprietary', 'flavor proprietary cannot drive GPU 0 (NVIDIA B200, blackwell): it needs open kernel modules'),
    ([GH200], 'proprietary', 'GPU 0 (NVIDIA GH200 480GB, hopper)'),
    ([V100], 'open', 'flavor open cannot drive GPU 1 (Tesla V100-SXM2-32GB, volta)'),
    ([B200, V100], 'auto', 'no kernel-module flavour drives every GPU'),
    ([], 'auto', 'flavor auto needs the GPUs'),
    ([{'index': 0, 'architecture': 'rubin'}], 'auto', "no entry for architecture 'rubin'"),
])
def test_flavor_conflicts_are_errors(gpus, requested, message):
    with pytest.raises(_driver.DriverError) as info:
        _driver.choose_flavor(_driver.normalize_gpus(gpus), requested, POLICY)
    assert message in str(info.value)


@pytest.mark.parametrize('version, gpus, message', [
    ('590.44.01', [V100], 'driver 590.44.01 cannot drive GPU 1 (Tesla V100-SXM2-32GB, volta): the last branch that supports it is 580'),
    ('570.124.06', [B200], 'driver 570.124.06 cannot drive GPU 0 (NVIDIA B200, blackwell): it needs 570.133.20 or newer'),
    ('535.230.02', [H200], 'it needs 550 or newer'),
    ('520.61.05', [H100], 'it needs 525 or newer'),
])
def test_version_that_cannot_drive_the_gpus(version, gpus, message):
    with pytest.raises(_driver.DriverError) as info:
        _driver.check_supports(version, _driver.normalize_gpus(gpus), POLICY)
    assert message in str(info.value)


@pytest.mark.parametrize('version, gpus', [
    ('580.159.04', [V100, H100]), ('570.133.20', [B200]), ('525.60.13', [H100]), ('550.54.15', [H200]),
])
def test_version_that_drives_the_gpus(version, gpus):
    _driver.check_supports(version, _driver.normalize_gpus(gpus), POLICY)


def test_policy_overrides_from_inventory_merge_per_entry():
    policy = _driver.merge_policy(POLICY, {'architectures': {'hopper': {'min_version': '580'}}})
    assert policy['architectures']['hopper']['flavors'] == ['open', 'proprietary']
    with pytest.raises(_driver.DriverError, match='needs 580 or newer'):
        _driver.check_supports('570.195.03', [H100], policy)
    assert POLICY['architectures']['hopper']['min_version'] == '525'  # the data file is untouched


def test_lost_gpus_do_not_vote():
    assert _driver.normalize_gpus([dict(V100, status='lost'), dict(H100, status='ok')]) == [H100]


# ---- package names -------------------------------------------------------------------------
def _names(*args, **kwargs):
    return [(p['name'], p['version']) for p in _driver.package_names(*args, **kwargs)]


@pytest.mark.parametrize('args, kwargs, expected', [
    (('580.95.05', 'open'), {}, [('nvidia-open-580', 'driver')]),
    (('580.95.05', 'proprietary'), {}, [('cuda-drivers-580', 'driver')]),
    (('590.44.01', 'open'), {}, [('nvidia-driver-pinning-590', None), ('nvidia-open', 'driver')]),
    (('590.44.01', 'proprietary'), {}, [('nvidia-driver-pinning-590', None), ('cuda-drivers', 'driver')]),
    (('580.95.05', 'open'), {'nvswitch': True},
     [('nvidia-open-580', 'driver'), ('nvidia-fabricmanager-580', 'driver'), ('libnvidia-nscq-580', 'driver')]),
    (('570.195.03', 'open'), {'nvswitch': True, 'nvlink5': True},
     [('nvidia-open-570', 'driver'), ('nvidia-fabricmanager-570', 'driver'), ('libnvidia-nscq-570', 'driver'), ('nvlsm', None)]),
    (('580.95.05', 'open'), {'source': 'canonical'}, [('nvidia-driver-580-server-open', 'driver')]),
    (('580.95.05', 'proprietary'), {'source': 'canonical', 'server': False}, [('nvidia-driver-580', 'driver')]),
    (('580.95.05', 'open'), {'source': 'canonical', 'kernel_modules': 'precompiled'},
     [('nvidia-headless-no-dkms-580-server-open', 'driver'), ('nvidia-utils-580-server', 'driver'),
      ('linux-modules-nvidia-580-server-open-generic', None)]),
])
def test_package_names(args, kwargs, expected):
    assert _names(*args, **kwargs) == expected


def test_precompiled_needs_canonical():
    with pytest.raises(_driver.DriverError, match='precompiled'):
        _driver.package_names('580.95.05', 'open', kernel_modules='precompiled')


def test_pin_makes_the_driver_version_the_only_candidate():
    text = _driver.apt_preferences('580.95.05')
    assert 'Pin: version 580.95.05-*\n' in text and 'Pin-Priority: 1001\n' in text and 'nvidia-*' in text


# ---- plans ---------------------------------------------------------------------------------
def _pkg(version, status='ii'):
    return {'version': version, 'status': status, 'installed': status[1] == 'i'}


AVAILABLE = {
    'nvidia-open-580': ['580.159.04-1', '580.95.05-1'],
    'cuda-drivers-580': ['580.159.04-1', '580.95.05-1'],
    'nvidia-fabricmanager-580': ['580.159.04-1', '580.95.05-1'],
    'libnvidia-nscq-580': ['580.159.04-1', '580.95.05-1'],
    'nvidia-driver-580-open': ['580.159.04-1', '580.95.05-1'],
    'nvidia-dkms-580-open': ['580.159.04-1', '580.95.05-1'],
    'libnvidia-compute-580': ['580.159.04-1', '580.95.05-1'],
}
INSTALLED_95 = {
    'nvidia-open-580': _pkg('580.95.05-1'), 'nvidia-driver-580-open': _pkg('580.95.05-1'),
    'nvidia-dkms-580-open': _pkg('580.95.05-1'), 'libnvidia-compute-580': _pkg('580.95.05-1'),
    'nvidia-fabricmanager-580': _pkg('580.95.05-1'), 'libnvidia-nscq-580': _pkg('580.95.05-1'),
}
LOADED_95 = {'loaded': True, 'version': '580.95.05', 'flavor': 'open'}


def _desired(version='580.95.05', flavor='open', nvswitch=True, reload=True, clients=()):
    return {'version': version, 'flavor': flavor, 'packages': _driver.package_names(version, flavor, nvswitch=nvswitch),
            'reload': reload, 'clients': list(clients)}


def _current(installed=None, held=None, preferences=None, loaded=None, active=()):
    return {'installed': installed or {}, 'held': held or [], 'preferences': preferences, 'available': AVAILABLE,
            'loaded': loaded or {'loaded': False, 'version': None, 'flavor': None}, 'active_clients': list(active)}


def _actions(result):
    return [s['action'] for s in result['steps']]


def test_fresh_install_plan_order():
    result = _driver.plan(_current(active=['nvidia-persistenced']), _desired(clients=['nvidia-persistenced', 'dcgm']))
    assert _actions(result) == ['stop_clients', 'pin', 'install', 'hold', 'load_modules', 'start_clients']
    install = result['steps'][2]
    assert install['packages'] == {'nvidia-open-580': '580.95.05-1', 'nvidia-fabricmanager-580': '580.95.05-1',
                                   'libnvidia-nscq-580': '580.95.05-1'}
    assert result['steps'][0]['units'] == ['nvidia-persistenced']  # only the running clients are stopped
    assert result['changed'] and result['before'] == {}


def test_installed_pinned_held_and_loaded_is_no_change():
    names = sorted(INSTALLED_95)
    result = _driver.plan(_current(INSTALLED_95, names, _driver.apt_preferences('580.95.05'), LOADED_95), _desired())
    assert result['steps'] == [] and not result['changed'] and not result['reboot_required']


def test_upgrade_unloads_unholds_pins_installs_holds_reloads():
    names = sorted(INSTALLED_95)
    result = _driver.plan(_current(INSTALLED_95, names, _driver.apt_preferences('580.95.05'), LOADED_95), _desired('580.159.04'))
    assert _actions(result) == ['unload_modules', 'unhold', 'pin', 'install', 'hold', 'load_modules']
    assert result['steps'][2]['content'] == _driver.apt_preferences('580.159.04')
    # Fabric manager and NSCQ move with the driver, in the same transaction.
    assert result['install'] == {n: '580.159.04-1' for n in INSTALLED_95}
    assert result['after']['nvidia-fabricmanager-580'] == '580.159.04-1'


def test_downgrade_names_every_installed_driver_package():
    # The metas depend with ">=" and no upper bound: apt would keep the newer dependencies if they were not named.
    installed = {n: _pkg('580.159.04-1') for n in INSTALLED_95}
    result = _driver.plan(_current(installed, sorted(installed), _driver.apt_preferences('580.159.04')), _desired('580.95.05'))
    assert result['install'] == {n: '580.95.05-1' for n in INSTALLED_95}


def test_verify_finds_a_dependency_left_at_another_version():
    installed = dict(INSTALLED_95, **{'nvidia-dkms-580-open': _pkg('580.159.04-1')})
    observed = {'installed': installed, 'held': sorted(installed), 'preferences': _driver.apt_preferences('580.95.05')}
    assert _driver.verify(observed, _desired(), {'remove': []}) == ['nvidia-dkms-580-open is at 580.159.04-1, not 580.95.05']


def test_flavour_switch_removes_the_other_meta_package_in_the_same_transaction():
    result = _driver.plan(_current(INSTALLED_95, [], None, LOADED_95), _desired(flavor='proprietary'))
    assert result['remove'] == ['nvidia-driver-580-open', 'nvidia-open-580']
    assert result['install']['cuda-drivers-580'] == '580.95.05-1'


def test_branch_change_removes_the_old_branch_metas():
    installed = {'nvidia-open-570': _pkg('570.195.03-1'), 'nvidia-fabricmanager-570': _pkg('570.195.03-1'),
                 'libnvidia-compute-570': _pkg('570.195.03-1')}
    result = _driver.plan(_current(installed), _desired())
    assert result['remove'] == ['nvidia-fabricmanager-570', 'nvidia-open-570']


def test_missing_hold_or_pin_alone_is_repaired_without_reinstalling():
    result = _driver.plan(_current(INSTALLED_95, [], _driver.apt_preferences('580.95.05'), LOADED_95), _desired())
    assert _actions(result) == ['hold'] and result['steps'][0]['packages'] == sorted(INSTALLED_95)
    result = _driver.plan(_current(INSTALLED_95, sorted(INSTALLED_95), None, LOADED_95), _desired())
    assert _actions(result) == ['pin']


def test_installed_but_old_module_loaded_reports_reboot_without_change():
    loaded = {'loaded': True, 'version': '580.95.05', 'flavor': 'open'}
    installed = {n: _pkg('580.159.04-1') for n in INSTALLED_95}
    result = _driver.plan(_current(installed, sorted(installed), _driver.apt_preferences('580.159.04'), loaded), _desired('580.159.04'))
    assert not result['changed'] and result['reboot_required'] and '580.95.05 (open) differs' in result['reason']


def test_half_configured_package_is_repaired():
    installed = dict(INSTALLED_95, **{'nvidia-dkms-580-open': _pkg('580.95.05-1', 'iF')})
    result = _driver.plan(_current(installed, sorted(installed), _driver.apt_preferences('580.95.05'), LOADED_95), _desired())
    assert 'install' in _actions(result) and result['steps'][_actions(result).index('install')]['repair'] == ['nvidia-dkms-580-open']


def test_version_the_repository_does_not_offer_is_an_error():
    with pytest.raises(_driver.DriverError, match='nvidia-open-580 at driver version 580.105.08 is not offered'):
        _driver.plan(_current(), _desired('580.105.08', nvswitch=False))


def test_reload_off_reports_reboot_required():
    result = _driver.plan(_current(), _desired(reload=False))
    assert 'load_modules' not in _actions(result) and result['reboot_required']


def test_rollback_restores_packages_pin_and_holds():
    after = dict({n: _pkg('580.159.04-1') for n in INSTALLED_95}, **{'nvidia-dkms-580-open': _pkg('580.159.04-1', 'iF')},
                 **{'libnvidia-gl-580': _pkg('580.159.04-1', 'iU')})
    steps = _driver.rollback_plan(INSTALLED_95, sorted(INSTALLED_95), _driver.apt_preferences('580.95.05'), after)
    assert [s['action'] for s in steps] == ['unhold', 'pin', 'install', 'hold']
    assert steps[1]['content'] == _driver.apt_preferences('580.95.05')
    assert steps[2]['packages'] == {n: '580.95.05-1' for n in INSTALLED_95}
    assert steps[2]['remove'] == ['libnvidia-gl-580']


def test_rollback_of_a_first_install_removes_everything_and_the_pin():
    after = {'nvidia-open-580': _pkg('580.95.05-1', 'iU'), 'nvidia-dkms-580-open': _pkg('580.95.05-1', 'iF')}
    steps = _driver.rollback_plan({}, [], None, after)
    assert [s['action'] for s in steps] == ['unhold', 'unpin', 'install']
    assert steps[2] == {'action': 'install', 'packages': {}, 'remove': ['nvidia-dkms-580-open', 'nvidia-open-580'], 'repair': []}


def test_verify_finds_fabric_manager_off_by_one_patch():
    installed = dict(INSTALLED_95, **{'nvidia-fabricmanager-580': _pkg('580.82.07-1')})
    observed = {'installed': installed, 'held': sorted(installed), 'preferences': _driver.apt_preferences('580.95.05')}
    problems = _driver.verify(observed, _desired(), {'remove': []})
    assert problems == ['nvidia-fabricmanager-580 is at 580.82.07-1, not 580.95.05']


def test_installed_driver_version():
    assert _driver.installed_driver_version(INSTALLED_95) == '580.95.05'
    assert _driver.installed_driver_version({}) is None
    mixed = dict(INSTALLED_95, **{'libnvidia-compute-580': _pkg('580.159.04-1')})
    assert _driver.installed_driver_version(mixed) == 'mixed:580.95.05,580.159.04'
