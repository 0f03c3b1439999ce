# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hostile input (issue 15): each class of input the modules used to take as given, now refused by the one validation
pass before anything is observed or planned, with a message that names the host, GPU and entry and quotes the value
safely. The simulator tests (tests/integration/vgpu/test_vgpu_hostile_sim.py) prove that nothing was written."""
from __future__ import annotations

import time

import pytest

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _inputs, _mig, _mig_apply, _mig_parted, _vgpu, _vgpu_apply

from mig_support import model_gpu  # pylint: disable=import-error
from test_driver_apply import FakeHost, commands, run as run_driver  # pylint: disable=import-error,wrong-import-order
from test_vgpu_plan import a40  # pylint: disable=import-error,wrong-import-order

ESCAPE = 'evil\n- host x: GPU 0: entry 1: forged\x1b[31m\u202e'


def no_raw_controls(text: str) -> None:
    """No control character, escape or bidi override copied raw; lines only where the message lists its errors."""
    assert '\x1b' not in text and '\u202e' not in text and 'forged\n' not in text
    assert all(line.startswith(('- ', 'MIG plan', 'vGPU plan')) or not line for line in text.split('\n')[1:]), text


def refusal(func, *args, **kwargs) -> dict:
    """An orchestrator's refusal made before any NVML session or sysfs read (none is open in these tests)."""
    result = func(*args, **kwargs)
    assert result['failed'] and 'nothing was changed' in result['msg'] and 'exception' not in result, result
    assert not result['applied'] and not result['steps']
    return result


# ---- one quoting helper -----------------------------------------------------------------------------------


def test_quote_escapes_control_characters_and_cuts_long_values():
    shown = _inputs.quote(ESCAPE)
    assert '\n' not in shown and '\x1b' not in shown and '\u202e' not in shown
    assert '\\n' in shown and '\\x1b' in shown and '\\u202e' in shown
    assert len(_inputs.quote('x' * 10 ** 6)) <= _inputs.MAX_SHOWN + 2 and len(_inputs.quote(list(range(10 ** 5)))) < 100
    assert _inputs.printable('a\nb\x1b') == 'a\\nb\\x1b'


def test_an_entry_name_with_a_newline_and_escapes_is_quoted_in_every_line():
    with pytest.raises(_mig.MigPlanError) as caught:
        _mig.plan_host('h', [model_gpu('h100-80gb-hbm3')], [{'name': ESCAPE, 'devices': [7], 'instances': []}])
    assert all('\n' not in line and '\x1b' not in line for line in caught.value.errors)
    assert "entry 'evil\\n- host x: GPU 0: entry 1: forged\\x1b[31m\\u202e'" in caught.value.errors[0]
    no_raw_controls(str(caught.value))


def test_a_vgpu_type_with_control_characters_is_refused_quoted():
    with pytest.raises(_vgpu.VgpuPlanError) as caught:
        _vgpu.plan_host('h', [a40()], [{'name': 'x', 'type': 'A40-8Q\n- forged', 'count': 1}])
    assert "entry 'x': type must name a vGPU type" in str(caught.value) and "'A40-8Q\\n- forged'" in str(caught.value)
    no_raw_controls(str(caught.value))


# ---- config: null is not an empty declaration -------------------------------------------------------------


def test_mig_config_null_is_refused_like_a_missing_config():
    result = refusal(_mig_apply.apply_declaration, 'h', None, run_command=None)
    assert 'config is null' in result['msg'] and 'host h' in result['msg']


def test_vgpu_config_null_is_refused_like_a_missing_config():
    result = refusal(_vgpu_apply.apply_declaration, 'h', None, sysfs_root='/sys', mdevctl_dir=None)
    assert 'config is null' in result['msg']


# ---- paths ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('option, value', [('sysfs_root', 'sys'), ('sysfs_root', '/sys/../etc'), ('sysfs_root', '/sys/./x'),
                                           ('mdevctl_dir', 'etc/mdevctl.d'), ('mdevctl_dir', '/etc/../tmp/m')])
def test_relative_or_dotted_paths_are_refused(option, value):
    args = dict({'sysfs_root': '/sys', 'mdevctl_dir': '/etc/mdevctl.d'}, **{option: value})
    result = refusal(_vgpu_apply.apply_declaration, 'h', [], **args)
    assert '%s %s: expected' % (option, _inputs.quote(value)) in result['msg']


def test_a_sysfs_root_that_does_not_exist_is_reported_as_such(tmp_path):
    missing = str(tmp_path / 'no-sysfs')
    result = refusal(_vgpu_apply.apply_declaration, 'h', [], sysfs_root=missing, mdevctl_dir=None)
    assert 'host h: sysfs_root %s does not exist' % _inputs.quote(missing) in result['msg'] and 'vGPU types' not in result['msg']


# ---- counts bounded by what any GPU allows, refused at once ------------------------------------------------


@pytest.mark.parametrize('entry', [
    {'name': 'huge', 'devices': 'all', 'instances': [{'profile': '1g.10gb', 'count': 10 ** 8}]},
    {'name': 'huge', 'devices': 'all', 'mig_devices': {'1g.10gb': 10 ** 8}},
    {'name': 'huge', 'devices': 'all', 'instances': [{'profile': '1g.10gb'}] * 10 ** 6},
])
def test_an_absurd_mig_count_is_refused_at_once_naming_the_entry(entry):
    started = time.monotonic()
    result = refusal(_mig_apply.apply_declaration, 'h', [entry], run_command=None)
    assert time.monotonic() - started < 2
    assert "entry 'huge'" in result['msg'] and ('exceeds what any GPU allows' in result['msg'] or 'a GPU holds at most 7' in result['msg'])


def test_an_absurd_mig_parted_count_is_refused_naming_the_entry():
    config = {'version': 'v1', 'mig-configs': {'big': [{'devices': 'all', 'mig-enabled': True, 'mig-devices': {'1g.10gb': 10 ** 8}}]}}
    with pytest.raises(_mig.MigPlanError, match=r"big.*exceeds what any GPU allows \(at most 7\)"):
        _mig_parted.parse_mig_parted(config, 'big')


def test_an_absurd_vgpu_count_is_refused_naming_the_entry():
    result = refusal(_vgpu_apply.apply_declaration, 'h', [{'name': 'huge', 'type': 'A40-1Q', 'count': 10 ** 8}], sysfs_root='/sys',
                     mdevctl_dir=None)
    assert "host h: entry 'huge': count 100000000 exceeds what any GPU allows (at most 64)" in result['msg']


# ---- cross-entry rules -------------------------------------------------------------------------------------


@pytest.mark.parametrize('devices', [([0], [0]), ('all', [0]), ({'model': 'NVIDIA A40'}, 'all')])
def test_two_vgpu_entries_of_one_type_on_one_gpu_are_refused(devices):
    declaration = [{'name': 'a', 'devices': devices[0], 'type': 'A40-8Q', 'count': 2}, {'name': 'b', 'devices': devices[1], 'type': 'A40-8Q', 'count': 2}]
    with pytest.raises(_vgpu.VgpuPlanError) as caught:
        _vgpu.plan_host('h', [a40(0), a40(1)], declaration)
    assert "host h: GPU 0 (GPU-0): selected by entries 'a', 'b', which all declare vGPU type A40-8Q" in str(caught.value)


def test_entries_of_different_types_still_share_a_heterogeneous_gpu():
    plan = _vgpu.plan_host('h', [a40(homogeneous=False)], [{'devices': [0], 'type': 'A40-8Q', 'count': 1}, {'devices': [0], 'type': 'A40-4Q', 'count': 1}])
    assert len({s['device'] for s in plan.steps}) == 2


def test_explicit_uuids_on_two_gpus_are_refused():
    uuid = 'aaaaaaaa-0000-4000-8000-000000000001'
    with pytest.raises(_vgpu.VgpuPlanError, match="entry 'u': explicit uuids name one device each, but the entry selects GPUs 0, 1"):
        _vgpu.plan_host('h', [a40(0), a40(1)], [{'name': 'u', 'type': 'A40-8Q', 'uuids': [uuid]}])


def test_a_declared_uuid_held_by_another_gpu_is_refused():
    uuid = 'aaaaaaaa-0000-4000-8000-000000000001'
    held = a40(1, devices=[_vgpu.Device(uuid, 'NVIDIA A40-8Q')])
    with pytest.raises(_vgpu.VgpuPlanError, match="device '%s' would be on GPUs 0, 1" % uuid):
        _vgpu.plan_host('h', [a40(0), held], [{'devices': [0], 'type': 'A40-8Q', 'uuids': [uuid]}])


# ---- nvidia_driver: grammars and policy ---------------------------------------------------------------------


@pytest.mark.parametrize('options, needle', [
    ({'kernel_flavour': 'generic; rm -rf /'}, "kernel_flavour 'generic; rm -rf /': expected a kernel flavour"),
    ({'kernel_flavour': 'generic\n- forged'}, "kernel_flavour 'generic\\n- forged'"),
    ({'clients': ['nvidia-persistenced', 'x; reboot']}, "clients entry 2 'x; reboot': expected a systemd unit name"),
    ({'clients': ['--now']}, "clients entry 1 '--now': expected a systemd unit name"),
    ({'version': '\u0665\u0668\u0660.95.05'}, 'expected a driver version such as 580.95.05 (ASCII digits)'),
    ({'version': '\uff15\uff18\uff10.95.05'}, 'expected a driver version such as 580.95.05 (ASCII digits)'),
    ({'version': None, 'branch': '5\u0668\u0660'}, 'expected a branch number such as 580 (three ASCII digits)'),
    ({'policy': {'architecture': {}}}, "policy: unknown key 'architecture' (known: format, architectures, models)"),
    ({'policy': {'architectures': {'hopper': {'flavors': []}}}}, "policy.architectures.'hopper'.flavors []: expected a non-empty list"),
    ({'policy': {'architectures': {'hopper': {'min_version': 'new'}}}}, "policy.architectures.'hopper'.min_version 'new': expected a version"),
    ({'policy': {'architectures': {'hopper': {'max_branch': 'x'}}}}, "policy.architectures.'hopper'.max_branch 'x': expected a branch"),
    ({'policy': {'architectures': {'hopper': 'open'}}}, "policy.architectures.'hopper': expected a mapping, got str 'open'"),
    ({'policy': {'architectures': 'hopper'}}, "policy.architectures: expected a mapping, got str 'hopper'"),
    ({'policy': {'architectures': {'hopper': {'flavours': ['open']}}}}, "policy.architectures.'hopper': unknown key 'flavours'"),
])
def test_nvidia_driver_refuses_malformed_options_before_running_anything(monkeypatch, tmp_path, options, needle):
    host = FakeHost(installed={'nvidia-open-580': '580.95.05-1'}, loaded='580.95.05')
    out = run_driver(host, monkeypatch, tmp_path, **options)
    assert out.get('failed') and out['msg'].startswith('refused, nothing changed: ') and 'exception' not in out, out
    assert needle in out['msg'], out['msg']
    assert not out.get('commands') and not commands(out) if out.get('commands') is not None else True
    assert host.installed == {'nvidia-open-580': ['580.95.05-1', 'ii']}
    no_raw_controls(out['msg'])
