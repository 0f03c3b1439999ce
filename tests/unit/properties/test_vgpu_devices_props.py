# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Properties of vgpu_devices on a simulated vGPU host (an A40 and a T4, the mdev sysfs trees emulated with FUSE), for
generated declarations in both input formats (native and vgpu-device-manager), valid, near-valid and hostile:

- the module either succeeds with a verified state (a re-run in check mode plans no step) or fails cleanly;
- a failure, and any check-mode run, leaves the host byte for byte as it was: the state file (vGPU instances, the
  count of every sysfs write and NVML mutation) and the mdevctl definitions.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.gpuvirt.fleet.plugins.modules import vgpu_devices

from prop_support import (  # pylint: disable=import-error
    examples, hostile_strings, hostile_values, maybe, run_and_check, run_module, simulated)

TYPES = ['A40-8Q', 'A40-24Q', 'NVIDIA A40-4Q', 'nvidia-562', 'T4-8Q', 'T4-4Q', 'A40-4C']
UUIDS = ['5a0c3d2e-9a4b-4a7e-8b1e-1c2d3e4f5a6b', '5a0c3d2e-9a4b-4a7e-8b1e-1c2d3e4f5a6c']


class Host:
    def __init__(self, base: str):
        self.root = os.path.join(base, 'gpusim')
        self.sysfs = os.path.join(base, 'sys')
        self.mdevctl = os.path.join(base, 'mdevctl.d')
        self.path = os.path.join(self.root, 'state.json')
        self.snapshot = b''

    def read(self) -> tuple:
        with open(self.path, 'rb') as handle:
            state = handle.read()
        files = {}
        for top, _dirs, names in os.walk(self.mdevctl):
            for name in names:
                with open(os.path.join(top, name), 'rb') as handle:
                    files[os.path.relpath(os.path.join(top, name), self.mdevctl)] = handle.read()
        return state, files

    def restore(self) -> None:
        shutil.rmtree(self.mdevctl, ignore_errors=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix='.restore.')
        with os.fdopen(fd, 'wb') as handle:
            handle.write(self.snapshot)
        os.replace(tmp, self.path)


@pytest.fixture(name='host', scope='module')
def host_fixture():
    if not os.path.exists('/dev/fuse'):
        pytest.skip('no /dev/fuse')
    pytest.importorskip('mfusepy')
    from gpusim import cli as sim_cli  # pylint: disable=import-error,import-outside-toplevel
    from gpusim_sysfs.serve import served  # pylint: disable=import-error,import-outside-toplevel
    base = tempfile.mkdtemp(prefix='vgpu-props-')
    host = Host(base)
    assert sim_cli.main(['--root', host.root, 'init', '--hostname', 'vgpu-node', '--gpu', 'a40', '--gpu', 't4', '--vgpu-host']) == 0
    os.mkdir(host.sysfs)
    with open(host.path, 'rb') as handle:
        host.snapshot = handle.read()
    with served(host.sysfs, host.root), simulated(host.root):
        yield host
    shutil.rmtree(base, ignore_errors=True)


def _devices():
    good = st.sampled_from(['all', [0], [1], {'model': 'NVIDIA A40'}, {'indexes': [0]}, {'device_id': '0x2235'}])
    near = st.sampled_from([[], [0, 0], [5], [-1], '0', {'colour': 'red'}, {'uuids': ['GPU-nope']}, None, [True]])
    return st.one_of(good, near, hostile_values())


def _valid_entry():
    return st.fixed_dictionaries({'type': st.sampled_from(TYPES[:4]), 'devices': st.sampled_from([[0], {'model': 'NVIDIA A40'}])},
                                 optional={'count': st.integers(0, 3), 'name': st.sampled_from(['desk', 'calc'])})


def _entry():
    return st.fixed_dictionaries({'type': maybe(st.sampled_from(TYPES), hostile_strings())}, optional={
        'devices': _devices(),
        'name': maybe(st.sampled_from(['desk', 'calc']), hostile_strings()),
        'count': maybe(st.integers(0, 8), st.one_of(st.integers(-2 ** 65, 2 ** 65), st.sampled_from([10 ** 8, 2 ** 31]))),
        'uuids': maybe(st.lists(st.sampled_from(UUIDS), max_size=3), st.lists(hostile_strings(), max_size=2)),
        'allow_disruption': maybe(st.booleans()),
    })


def _manager_config():
    entry = st.fixed_dictionaries({'devices': maybe(st.sampled_from(['all', [0], [1]]))}, optional={
        'device-filter': maybe(st.sampled_from(['0x223510DE', '0x1EB810DE', ['0x223510DE', '0x1EB810DE']]), hostile_strings()),
        'vgpu-devices': maybe(st.dictionaries(maybe(st.sampled_from(TYPES), hostile_strings()), maybe(st.integers(0, 4)), max_size=2)),
    })
    return st.one_of(st.fixed_dictionaries({'version': maybe(st.just('v1')),
                                            'vgpu-configs': st.dictionaries(st.sampled_from(['default', 'A40-8Q']), st.lists(entry, max_size=3),
                                                                            max_size=2)}),
                     hostile_values())


def _check(host: Host, args: dict, check_mode: bool) -> None:
    result = run_and_check(host, vgpu_devices.main, args, check_mode)
    if result is None:
        return
    again = run_module(vgpu_devices.main, args, check_mode=True)
    assert not again.get('failed') and again['changed'] is False and again['steps'] == [], (args, again)


def _paths(host: Host):
    return st.fixed_dictionaries({}, optional={
        'sysfs_root': st.sampled_from([host.sysfs, host.sysfs + '/', host.sysfs + '/../sys', 'sys', '/nonexistent', '', '\n']),
        'mdevctl_dir': st.sampled_from([host.mdevctl, 'mdevctl.d', host.mdevctl + '/../mdevctl.d', '']),
    })


@examples(60)
@given(data=st.data(), config=st.one_of(st.lists(_valid_entry(), min_size=1, max_size=2), st.lists(_entry(), min_size=1, max_size=3), st.none(),
                                        hostile_values()),
       check_mode=st.booleans(), odd_paths=st.booleans())
def test_native_declarations_succeed_verified_or_fail_cleanly(host, data, config, check_mode, odd_paths):
    args = {'config': config, 'hostname': 'vgpu-node', 'sysfs_root': host.sysfs, 'mdevctl_dir': host.mdevctl}
    if odd_paths:
        args.update(data.draw(_paths(host)))
    _check(host, args, check_mode)


@examples(40)
@given(config=_manager_config(), label=maybe(st.sampled_from(['default', 'A40-8Q', 'missing'])), check_mode=st.booleans(), also_native=st.booleans())
def test_vgpu_device_manager_configs_succeed_verified_or_fail_cleanly(host, config, label, check_mode, also_native):
    args = {'vgpu_device_manager_config': config, 'vgpu_device_manager_label': label, 'hostname': 'vgpu-node',
            'sysfs_root': host.sysfs, 'mdevctl_dir': host.mdevctl}
    if also_native:
        args['config'] = [{'type': 'A40-8Q', 'devices': [0], 'count': 1}]
    _check(host, args, check_mode)
