# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Properties of nvidia_driver for generated arguments, valid, near-valid and hostile:

- the pure planner (`_driver`: whitelist, version resolution, policy, flavour, package names, plan) either answers or
  raises DriverError with a message; never another exception;
- the module (its `main`, the arguments through AnsibleModule) against a scripted apt/dpkg/systemd host either succeeds
  with the declared version installed or fails cleanly, and a failure, and any check-mode run, leaves the host as it
  was: dpkg status, holds, running units, the loaded module and the apt pin file.
"""
from __future__ import annotations

import copy
import os
import sys
import tempfile
from pathlib import Path
from unittest import mock

from ansible.module_utils.basic import AnsibleModule
from hypothesis import event, given
from hypothesis import strategies as st

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _driver, _driver_policy, _sysfs
from ansible_collections.gpuvirt.fleet.plugins.modules import nvidia_driver

from prop_support import assert_clean_failure, examples, hostile_strings, hostile_values, maybe, run_module, strings_in  # pylint: disable=import-error

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'plugins' / 'module_utils'))
from test_driver_apply import FakeHost  # noqa: E402  pylint: disable=import-error,wrong-import-position

VERSIONS = ['580.95.05', '580.159.04', '570.86.15', '550.54.15']
ARCHES = ['hopper', 'ampere', 'blackwell', 'volta', 'turing', 'pascal']


def _version():
    return maybe(st.sampled_from(VERSIONS), st.one_of(hostile_strings(), st.sampled_from(['580', '580.95', '5\u0668\u0660.1.2', '580.95.05.1',
                                                                                         '-580.1.1', '580.95.05\n', ' 580.95.05'])))


def _whitelist():
    entry = st.one_of(_version(), st.fixed_dictionaries({'branch': maybe(st.sampled_from(['580', '570']))},
                                                        optional={'versions': maybe(st.lists(_version(), max_size=3))}), hostile_values())
    return st.one_of(st.lists(entry, max_size=4), hostile_values())


def _policy():
    rules = st.fixed_dictionaries({}, optional={'flavors': maybe(st.lists(st.sampled_from(['open', 'proprietary']), max_size=2)),
                                                'recommended': maybe(st.sampled_from(['open', 'proprietary'])),
                                                'min_version': _version(), 'max_branch': maybe(st.sampled_from(['580', '570']))})
    return st.one_of(st.just({}), st.fixed_dictionaries({}, optional={'architectures': st.dictionaries(st.sampled_from(ARCHES), maybe(rules), max_size=2),
                                                                      'models': st.dictionaries(hostile_strings(), maybe(rules), max_size=1),
                                                                      'bogus': hostile_values()}),
                     hostile_values())


def _valid_args():
    return st.fixed_dictionaries({'version': st.sampled_from(VERSIONS[:3]), 'whitelist': st.lists(st.sampled_from(VERSIONS[:3]), min_size=1, max_size=3)},
                                 optional={'gpus': st.lists(st.sampled_from(ARCHES[:3]), min_size=1, max_size=2),
                                           'flavor': st.sampled_from(['auto', 'open', 'proprietary']), 'nvswitch': st.booleans(),
                                           'clients': st.lists(st.sampled_from(['nvidia-persistenced', 'nvidia-dcgm']), max_size=2)})


def _hostile_args():
    return st.fixed_dictionaries({'whitelist': _whitelist()}, optional={
        'version': _version(),
        'branch': maybe(st.sampled_from(['580', '570']), hostile_strings()),
        'flavor': maybe(st.sampled_from(['auto', 'open', 'proprietary'])),
        'gpus': maybe(st.lists(st.sampled_from(ARCHES), min_size=1, max_size=2), st.lists(hostile_values(), max_size=2)),
        'policy': _policy(),
        'source': maybe(st.sampled_from(['cuda', 'canonical'])),
        'kernel_modules': maybe(st.sampled_from(['dkms', 'precompiled'])),
        'kernel_flavour': maybe(st.sampled_from(['generic', 'aws', 'generic-hwe-24.04']), hostile_strings()),
        'nvswitch': maybe(st.booleans()),
        'reload': maybe(st.booleans()),
        'clients': maybe(st.lists(st.sampled_from(['nvidia-persistenced', 'nvidia-dcgm']), max_size=2), st.lists(hostile_strings(), max_size=2)),
    })


def _host_state(host: FakeHost, pref: str) -> tuple:
    pin = Path(pref).read_bytes() if os.path.exists(pref) else None
    return copy.deepcopy(host.installed), sorted(host.held), sorted(host.active), host.loaded, pin


def _run(host: FakeHost, args: dict, check_mode: bool, pref: str) -> dict:
    binaries = {'apt-get', 'apt-mark', 'apt-cache', 'dpkg-query', 'systemctl', 'modprobe'}
    with mock.patch.object(AnsibleModule, 'run_command', lambda _self, argv, **kw: host.run_command(argv, kw.get('environ_update'))), \
            mock.patch.object(AnsibleModule, 'get_bin_path', lambda _self, name, *a, **kw: '/usr/bin/' + name if name in binaries else None), \
            mock.patch.object(_driver, 'PREFERENCES_FILE', pref), mock.patch.object(_sysfs, 'read_driver_version_file', host.proc_version):
        return run_module(nvidia_driver.main, args, check_mode=check_mode)


@examples(80)
@given(args=st.one_of(_valid_args(), _hostile_args()), check_mode=st.booleans(), installed=st.sampled_from([None, '580.159.04-1', '570.86.15-1']))
def test_module_succeeds_installed_or_fails_cleanly(args, check_mode, installed):
    host = FakeHost(installed={'nvidia-open-580': installed} if installed else None, held=['nvidia-open-580'] if installed else (),
                    active=['nvidia-persistenced'], loaded=installed.split('-')[0] if installed else None,
                    offered=('580.95.05-1', '580.159.04-1', '570.86.15-1'))
    with tempfile.TemporaryDirectory() as tmp:
        pref = os.path.join(tmp, 'gpuvirt-nvidia-driver.pref')
        before = _host_state(host, pref)
        result = _run(host, args, check_mode, pref)
        if result.get('failed'):
            event('failed')
            assert_clean_failure(result, strings_in(args))
            assert not result.get('rolled_back'), 'a declaration refused only after a change: %s' % result['msg']
            assert _host_state(host, pref) == before, 'a refused declaration changed the host: %s' % result['msg']
            return
        event('succeeded')
        if check_mode:
            assert _host_state(host, pref) == before, 'check mode changed the host'
            return
        assert result.get('installed_version') == result.get('version'), result


@examples(150)
@given(whitelist=st.one_of(st.lists(st.sampled_from(VERSIONS), min_size=1), _whitelist()), version=st.one_of(st.none(), _version()),
       branch=st.one_of(st.none(), hostile_values(0)), policy=_policy(),
       gpus=st.one_of(st.lists(st.sampled_from(ARCHES), max_size=2), hostile_values()), flavor=maybe(st.sampled_from(['auto', 'open', 'proprietary'])))
def test_pure_planner_answers_or_raises_driver_error(whitelist, version, branch, policy, gpus, flavor):
    try:
        chosen = _driver.resolve_version(whitelist, version=version, branch=branch, available=VERSIONS)
        merged = _driver.merge_policy(_driver_policy.POLICY, policy)
        normalized = _driver.normalize_gpus(gpus)
        picked = _driver.choose_flavor(normalized, flavor, merged)
        _driver.check_supports(chosen, normalized, merged)
        names = _driver.package_names(chosen, picked)
    except _driver.DriverError as exc:
        event('refused')
        assert str(exc).strip()
        return
    event('planned')
    assert chosen in _driver.whitelisted(_driver.normalize_whitelist(whitelist))
    assert names
