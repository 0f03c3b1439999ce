# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vgpu_devices, unchanged, against a simulated vGPU host: real module runs (subprocesses), the NVML stand-in, and
the emulated mdev sysfs trees mounted with FUSE in a temporary directory (the module's sysfs_root).

What the host holds is read back from the simulator's state (NVML's view) and the emulated sysfs; the emulator's
write counter proves that a refused plan wrote nothing.
"""
from __future__ import annotations

import errno
import json
import os
import sys
import uuid
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from simhost import SIM_LIB, SimHost  # noqa: E402 pylint: disable=import-error,wrong-import-position

if SIM_LIB not in sys.path:
    sys.path.append(SIM_LIB)  # after site-packages: its pynvml stand-in must not shadow the real one here
from gpusim_sysfs.serve import served  # noqa: E402 pylint: disable=import-error,wrong-import-position

if not os.path.exists('/dev/fuse'):
    pytest.skip('no /dev/fuse', allow_module_level=True)
pytest.importorskip('mfusepy')

A40 = '0000:18:00.0'
T4 = '0000:2a:00.0'
HOSTNAME = 'vgpu-node'


class VgpuHost(SimHost):
    def __init__(self, root: str, sysfs: Path, mdevctl: Path):
        super().__init__(root)
        self.sysfs = sysfs
        self.mdevctl = mdevctl

    def apply(self, config=None, check_mode=False, diff=False, **extra) -> dict:
        args = dict(extra, hostname=HOSTNAME, sysfs_root=str(self.sysfs), mdevctl_dir=str(self.mdevctl))
        if config is not None:
            args['config'] = config
        return self.module('vgpu_devices', args, check_mode=check_mode, diff=diff)

    def devices(self, gpu: int = 0) -> list[tuple[str, int]]:
        """(uuid, type id) of one GPU's vGPU instances, as NVML sees them."""
        return sorted((v['uuid'], v['type_id']) for v in self.state()['gpus'][gpu]['vgpu_instances'])

    def writes(self) -> int:
        return sum(self.state().get('sysfs_writes', {}).values())


@pytest.fixture(name='host')
def host_fixture(tmp_path):
    host = VgpuHost(str(tmp_path / 'gpusim'), tmp_path / 'sys', tmp_path / 'mdevctl.d')
    host.ctl('init', '--hostname', HOSTNAME, '--gpu', 'a40', '--gpu', 't4', '--vgpu-host')
    host.sysfs.mkdir()
    with served(host.sysfs, host.root):
        yield host


SIX_8Q = [{'name': 'desktops', 'devices': {'model': 'NVIDIA A40'}, 'type': 'A40-8Q', 'count': 6}]


def test_apply_then_rerun_unchanged_with_stable_uuids(host):
    first = host.apply(SIX_8Q)
    assert first['changed'] and not first.get('failed'), first
    created = host.devices()
    assert len(created) == 6 and {pair[1] for pair in created} == {562}
    assert sorted(os.listdir(host.mdevctl / A40)) == sorted(pair[0] for pair in created)
    definition = json.loads((host.mdevctl / A40 / created[0][0]).read_text())
    assert definition == {'mdev_type': 'nvidia-562', 'start': 'auto', 'attrs': []}
    writes = host.writes()
    again = host.apply(SIX_8Q)
    assert not again['changed'] and again['steps'] == [] and host.writes() == writes
    assert host.devices() == created
    assert {d['uuid'] for d in again['devices']} == {pair[0] for pair in created}


def test_changed_count_touches_only_the_difference(host):
    host.apply(SIX_8Q)
    six = host.devices()
    writes = host.writes()
    fewer = host.apply([dict(SIX_8Q[0], count=4)])
    assert [s['action'] for s in fewer['steps']] == ['remove', 'remove']
    assert host.writes() == writes + 2
    assert set(host.devices()) < set(six) and len(host.devices()) == 4
    more = host.apply([dict(SIX_8Q[0], count=5)])
    assert [s['action'] for s in more['steps']] == ['create']
    assert set(host.devices()) < set(six)  # slot 4 gets its old UUID back


def test_uuids_survive_a_reboot_through_reapply(host):
    host.apply(SIX_8Q)
    before = host.devices()
    host.ctl('reboot')
    assert host.devices() == []
    assert host.apply(SIX_8Q)['changed']
    assert host.devices() == before


def test_check_mode_and_diff_write_nothing(host):
    result = host.apply(SIX_8Q, check_mode=True, diff=True)
    assert result['changed'] and len(result['steps']) == 6 and host.writes() == 0
    assert result['diff']['before'] == {'GPU 0': []} and len(result['diff']['after']['GPU 0']) == 6
    assert not host.mdevctl.exists()


@pytest.mark.parametrize('config, needle', [
    ([{'devices': [0], 'type': 'A40-8Q', 'count': 7}], 'exceed its capacity: at most 6'),
    ([{'devices': [0], 'type': 'A40-9Z', 'count': 1}], 'vGPU type A40-9Z is not supported by NVIDIA A40'),
    ([{'devices': [0], 'type': 'A40-8Q', 'count': 2}, {'devices': [0], 'type': 'A40-4Q', 'count': 2}],
     'allows one time-sliced vGPU type per GPU'),
    ([{'devices': [5], 'type': 'A40-8Q', 'count': 1}], 'GPU index 5 is not on this host'),
])
def test_refused_plans_write_nothing(host, config, needle):
    result = host.apply(config)
    assert result.get('failed') and needle in result['msg'] and 'nothing was changed' in result['msg'], result
    assert 'host %s' % HOSTNAME in result['msg']
    assert host.writes() == 0 and host.devices() == []


def test_type_change_on_a_homogeneous_gpu_replaces_all(host):
    host.apply(SIX_8Q)
    result = host.apply([{'devices': [0], 'type': 'NVIDIA A40-4Q', 'count': 12}])
    assert not result.get('failed'), result
    assert [s['action'] for s in result['steps']].count('remove') == 6
    assert len(host.devices()) == 12 and {pair[1] for pair in host.devices()} == {560}


def test_device_in_use_is_kept_unless_allowed(host):
    busy = str(uuid.uuid4())
    host.ctl('vgpu', 'add', '--gpu', '0', '--type', '562', '--uuid', busy, '--vm-id', 'vm-1')
    result = host.apply([{'devices': [0], 'type': 'A40-4Q', 'count': 1}])
    assert result.get('failed') and 'in use by a VM' in result['msg'] and busy in result['msg']
    assert host.writes() == 0
    # allowed: the kernel still says EBUSY, the message says what to do, and nothing is left half-done
    allowed = host.apply([{'devices': [0], 'type': 'A40-4Q', 'count': 1, 'allow_disruption': True}])
    assert allowed.get('failed') and 'EBUSY' in allowed['msg'] and 'shut the VM down' in allowed['msg']
    assert allowed['rollback']['restored'] and host.devices() == [(busy, 562)]


def test_foreign_device_of_the_declared_type_is_adopted_not_renamed(host):
    foreign = str(uuid.uuid4())
    host.ctl('vgpu', 'add', '--gpu', '0', '--type', '562', '--uuid', foreign)
    result = host.apply([dict(SIX_8Q[0], count=2)])
    assert [s['action'] for s in result['steps']] == ['create']
    assert foreign in [pair[0] for pair in host.devices()]


def test_failed_create_rolls_back(host):
    host.ctl('fault', 'set', '--call', 'sysfs:*', '--error', 'EEXIST', '--nth', '2')  # the kernel refuses the second create
    result = host.apply([{'devices': [0], 'type': 'A40-8Q', 'uuids': [str(uuid.uuid4()), str(uuid.uuid4())]}])
    assert result.get('failed') and 'EEXIST' in result['msg'], result
    assert result['failure']['errno'] == errno.errorcode[errno.EEXIST]
    assert result['rollback']['restored'] and host.devices() == []


def test_a_uuid_another_gpu_holds_is_refused_before_any_write(host):
    """Issue 15: UUIDs are unique across the host; this used to be created, refused with EEXIST and rolled back."""
    taken = str(uuid.uuid4())
    host.ctl('vgpu', 'add', '--gpu', '1', '--type', '230', '--uuid', taken)  # the T4 holds this UUID
    writes = host.writes()
    result = host.apply([{'devices': [0], 'type': 'A40-8Q', 'uuids': [str(uuid.uuid4()), taken]}])
    assert result.get('failed') and "device '%s' would be on GPUs 0, 1" % taken in result['msg'], result
    assert host.writes() == writes and host.devices() == [] and not result['applied']


NVIDIA_CONFIG = Path(__file__).resolve().parents[2] / 'unit' / 'fixtures' / 'nvidia' / 'vgpu-device-manager-config.yaml'


def test_the_gpu_operator_default_label_applies_on_the_a40_and_the_t4_and_a_rerun_is_unchanged(host):
    """The operator's `default` label: one entry per model, by device-filter; the entries for models this host lacks
    select no GPU and are skipped, as vgpu-device-manager skips them."""
    config = yaml.safe_load(NVIDIA_CONFIG.read_text(encoding='utf-8'))
    first = host.apply(vgpu_device_manager_config=config, vgpu_device_manager_label='default')
    assert first['changed'] and not first.get('failed'), first.get('msg')
    assert [pair[1] for pair in host.devices(0)] == [565, 565]  # A40-24Q
    assert [pair[1] for pair in host.devices(1)] == [233, 233]  # T4-8Q
    assert sorted(os.listdir(host.mdevctl)) == [A40, T4]
    writes = host.writes()
    again = host.apply(vgpu_device_manager_config=config, vgpu_device_manager_label='default')
    assert not again['changed'] and again['steps'] == [] and host.writes() == writes
    assert again['vgpu_device_manager'] == {'version': 'v1', 'vgpu-configs': {'default': [
        {'device-filter': '0x223510DE', 'devices': 'all', 'vgpu-devices': {'A40-24Q': 2}},
        {'device-filter': '0x1EB810DE', 'devices': 'all', 'vgpu-devices': {'T4-8Q': 2}}]}}
    # the export, applied as a config, holds: no step, no write
    exported = host.apply(vgpu_device_manager_config=again['vgpu_device_manager'], vgpu_device_manager_label='default')
    assert not exported['changed'] and exported['steps'] == [] and host.writes() == writes


def test_a_vgpu_device_manager_entry_that_cannot_be_applied_is_refused_before_any_write(host):
    config = {'version': 'v1', 'vgpu-configs': {'x': [
        {'device-filter': '0x223510DE', 'devices': 'all', 'vgpu-devices': {'A40-24Q': 2}},
        {'device-filter': ['0x1EB810DE'], 'devices': 'all', 'vgpu-devices': {'T4-8Q': 4}}]}}
    result = host.apply(vgpu_device_manager_config=config, vgpu_device_manager_label='x')
    assert result.get('failed') and result['errors'] == [
        "host %s: GPU 1 (%s): entry 'x[1] T4-8Q': 4 x T4-8Q exceed its capacity: at most 2 per GPU" % (
            HOSTNAME, host.state()['gpus'][1]['uuid'])]
    assert 'nothing was changed' in result['msg'] and host.writes() == 0 and host.devices(0) == host.devices(1) == []


def test_vgpu_device_manager_config(host):
    config = {'version': 'v1', 'vgpu-configs': {
        'A40-8Q': [{'devices': [0], 'vgpu-devices': {'A40-8Q': 3}}],
        'T4-4Q': [{'devices': 'all', 'vgpu-devices': {'T4-4Q': 4}}]}}
    result = host.apply(vgpu_device_manager_config=config, vgpu_device_manager_label='A40-8Q')
    assert result['changed'] and len(host.devices()) == 3
    bad = host.apply(vgpu_device_manager_config=config, vgpu_device_manager_label='nope')
    assert bad.get('failed') and "no label 'nope' in vgpu-configs" in bad['msg']


@pytest.mark.parametrize('check_mode', [True, False])
@pytest.mark.parametrize('second', [[0], 'all'])
def test_two_entries_of_one_type_on_one_gpu_are_refused_before_any_write(host, second, check_mode):
    """Issue 15: these passed check mode with duplicate UUIDs, and a real run created devices, hit EEXIST and rolled back."""
    writes = host.writes()
    result = host.apply([{'name': 'a', 'devices': [0], 'type': 'A40-8Q', 'count': 2},
                         {'name': 'b', 'devices': second, 'type': 'A40-8Q', 'count': 2}], check_mode=check_mode)
    assert result.get('failed') and "selected by entries 'a', 'b', which all declare vGPU type A40-8Q" in result['msg'], result
    assert 'host %s: GPU 0' % HOSTNAME in result['msg'] and not result['steps'] and not result['applied']
    assert host.writes() == writes and host.devices() == []
    assert not os.path.isdir(host.mdevctl) or not os.listdir(host.mdevctl)


@pytest.mark.parametrize('extra, needle', [
    ({'config': None}, 'config is null'),
    ({'config': [], 'sysfs_root': 'sys'}, "sysfs_root 'sys': expected an absolute path"),
    ({'config': [], 'mdevctl_dir': '/etc/../tmp'}, "mdevctl_dir '/etc/../tmp': expected a normalised absolute path"),
    ({'config': [{'name': 'huge', 'type': 'A40-1Q', 'count': 10 ** 8}]}, "entry 'huge': count 100000000 exceeds what any GPU allows"),
    ({'config': [{'name': 'x\n- forged\x1b[2J', 'devices': [9], 'type': 'A40-8Q', 'count': 1}]}, "entry 'x\\n- forged\\x1b[2J'"),
])
def test_hostile_options_fail_the_module_naming_the_entry_and_write_nothing(host, extra, needle):
    writes = host.writes()
    args = dict(hostname=HOSTNAME, sysfs_root=str(host.sysfs), mdevctl_dir=str(host.mdevctl))
    args.update(extra)
    result = host.module('vgpu_devices', args)
    assert result.get('failed') and needle in result['msg'] and '\x1b' not in result['msg'], result
    assert 'exception' not in result and host.writes() == writes and host.devices() == []


def test_the_apply_observes_the_boot_time_service_before_it_changes_anything(host, tmp_path):
    """observe (the vgpu role's one call on a rerun): host_state's reading of the boot-time files, taken before this
    call's own change, whatever the change; never written."""
    runner = tmp_path / 'gpuvirt-vgpu-apply'
    observe = {'files': [{'path': str(runner), 'content': 'apply\n', 'mode': '0644'}]}
    first = host.apply(SIX_8Q, observe=observe)
    assert first['changed'] and first['observed'] == {'in_place': False, 'differences': ['%s: does not exist' % runner]}
    assert not runner.exists()
    runner.write_text('apply\n')
    runner.chmod(0o644)
    again = host.apply(SIX_8Q, observe=observe)
    assert not again['changed'] and again['observed'] == {'in_place': True, 'differences': []}
    assert 'observed' not in host.apply(SIX_8Q)
