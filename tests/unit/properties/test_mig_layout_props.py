# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Properties of mig_layout on a simulated host of two H100s (GPU 0 holds a layout, GPU 1 has MIG off), for generated
declarations in both input formats, valid, near-valid and hostile:

- the module either succeeds with a verified state (a re-run in check mode plans no step) or fails cleanly (a module
  failure with a message about the input, no traceback, no 'unexpected error', no raw control character);
- a failure, and any check-mode run, leaves the simulated host byte for byte as it was (the state file holds the GPUs,
  their instances and creation uids, and the count of every mutating NVML call).
"""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.gpuvirt.fleet.plugins.modules import mig_layout

from prop_support import (  # pylint: disable=import-error
    examples, hostile_strings, hostile_values, maybe, run_and_check, run_module, simulated)

H100 = 'h100-80gb-hbm3'
PROFILES = ['1g.10gb', '1g.10gb+me', '1g.20gb', '2g.20gb', '3g.40gb', '4g.40gb', '7g.80gb']
CI_PROFILES = ['1c', '2c', '3c', '4c', '7c', '1c.3g.40gb', '2c.3g.40gb']
START_LAYOUT = [{'name': 'seed', 'devices': [0], 'instances': [{'profile': '3g.40gb', 'start': 4}, {'profile': '2g.20gb'}]}]


class Host:
    """One simulated host, set up once per test module; `restore` puts its state file back before each example."""

    def __init__(self, root: str):
        self.root = root
        self.path = os.path.join(root, 'state.json')
        self.snapshot = b''

    def read(self) -> bytes:
        with open(self.path, 'rb') as handle:
            return handle.read()

    def restore(self) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix='.restore.')
        with os.fdopen(fd, 'wb') as handle:
            handle.write(self.snapshot)
        os.replace(tmp, self.path)  # a new inode: the stand-in's stat-keyed cache reloads it


@pytest.fixture(name='host', scope='module')
def host_fixture():
    from gpusim import cli as sim_cli  # pylint: disable=import-error,import-outside-toplevel
    base = tempfile.mkdtemp(prefix='mig-props-')
    host = Host(os.path.join(base, 'gpusim'))
    assert sim_cli.main(['--root', host.root, 'init', '--hostname', 'node1', '--gpu', H100 + ':2']) == 0
    with simulated(host.root):
        seeded = run_module(mig_layout.main, {'config': START_LAYOUT})
        assert seeded.get('changed') and not seeded.get('failed'), seeded
        host.snapshot = host.read()
        yield host
    shutil.rmtree(base, ignore_errors=True)


def _devices():
    good = st.sampled_from(['all', [0], [1], [0, 1], {'indexes': [1]}, {'model': 'NVIDIA H100 80GB HBM3'}, {'device_id': '0x2330'}])
    near = st.sampled_from([[], [0, 0], [2], [-1], '0', 0, True, {'indexes': [0], 'model': 'NVIDIA A40'}, {'uuids': ['GPU-nope']},
                            {'colour': 'red'}, ['all'], None, 'ALL', [0.5], [2 ** 64]])
    return st.one_of(good, near, hostile_values())


def _valid_instance():
    return st.fixed_dictionaries({'profile': st.sampled_from(PROFILES)}, optional={
        'start': st.sampled_from([0, 4, 6]), 'count': st.integers(1, 3), 'compute_instances': st.lists(st.sampled_from(CI_PROFILES[:2]), max_size=2)})


def _instance():
    return st.fixed_dictionaries({'profile': maybe(st.sampled_from(PROFILES), hostile_strings())}, optional={
        'start': maybe(st.sampled_from([0, 1, 2, 3, 4, 5, 6]), st.integers(-2 ** 65, 2 ** 65)),
        'count': maybe(st.integers(0, 8), st.one_of(st.integers(-2 ** 65, 2 ** 65), st.sampled_from([10 ** 8, 2 ** 31]))),
        'compute_instances': maybe(st.lists(st.sampled_from(CI_PROFILES), max_size=3), st.lists(hostile_strings(), max_size=2)),
    })


def _valid_entry():
    return st.fixed_dictionaries({'devices': st.sampled_from([[0], [1], 'all', {'indexes': [1]}])}, optional={
        'name': st.sampled_from(['train', 'infer']), 'enabled': st.booleans(), 'allow_disruption': st.booleans(),
        'instances': st.lists(_valid_instance(), max_size=2)})


def _mig_devices():
    keys = st.one_of(st.sampled_from(PROFILES + ['1c.3g.40gb', '2c.3g.40gb', '1c.7g.80gb']), hostile_strings())
    return st.dictionaries(keys, maybe(st.integers(0, 7), st.integers(-2 ** 65, 2 ** 65)), max_size=3)


def _entry():
    return st.fixed_dictionaries({'devices': _devices()}, optional={
        'name': maybe(st.sampled_from(['train', 'infer', 'x']), hostile_strings()),
        'enabled': maybe(st.booleans()),
        'allow_disruption': maybe(st.booleans()),
        'instances': maybe(st.lists(_instance(), max_size=4)),
        'mig_devices': _mig_devices(),
    })


def _mig_parted_entry():
    return st.fixed_dictionaries({'devices': maybe(st.sampled_from(['all', [0], [1], [0, 1]]))}, optional={
        'device-filter': maybe(st.sampled_from(['0x233010DE', ['0x233010DE', '0x20B010DE'], '0x1EB810DE']), hostile_strings()),
        'mig-enabled': maybe(st.booleans()),
        'mig-devices': maybe(_mig_devices()),
    })


def _mig_parted_config():
    entries = st.lists(_mig_parted_entry(), max_size=3)
    return st.one_of(
        st.fixed_dictionaries({'version': maybe(st.just('v1')),
                               'mig-configs': st.dictionaries(st.sampled_from(['a', 'b', 'all-1g']), entries, max_size=2)}),
        hostile_values())


def _check(host: Host, args: dict, check_mode: bool) -> None:
    result = run_and_check(host, mig_layout.main, args, check_mode)
    if result is None:
        return
    if result.get('deferred') or result.get('reboot_required'):
        return  # a mode change waits for a reset or reboot: nothing more to verify now
    again = run_module(mig_layout.main, args, check_mode=True)
    assert not again.get('failed') and again['changed'] is False and again['steps'] == [], (args, again)


@examples(60)
@given(config=st.one_of(st.lists(_valid_entry(), min_size=1, max_size=2), st.lists(_entry(), min_size=1, max_size=3), st.none(), hostile_values()),
       check_mode=st.booleans(), reset=maybe(st.sampled_from(['auto', 'never'])))
def test_native_declarations_succeed_verified_or_fail_cleanly(host, config, check_mode, reset):
    with simulated(host.root):
        _check(host, {'config': config, 'reset': reset}, check_mode)


@examples(40)
@given(config=_mig_parted_config(), label=maybe(st.sampled_from(['a', 'b', 'all-1g', 'missing'])), check_mode=st.booleans(),
       also_native=st.booleans())
def test_mig_parted_configs_succeed_verified_or_fail_cleanly(host, config, label, check_mode, also_native):
    args = {'mig_parted_config': config, 'mig_parted_label': label}
    if also_native:
        args['config'] = START_LAYOUT  # conflicting formats: refused
    with simulated(host.root):
        _check(host, args, check_mode)


@examples(15)
@given(args=st.dictionaries(st.sampled_from(['config', 'mig_parted_config', 'mig_parted_label', 'reset', 'export', 'bogus']),
                            hostile_values(), max_size=4))
def test_any_top_level_arguments_fail_cleanly_or_hold(host, args):
    with simulated(host.root):
        _check(host, args, check_mode=False)
