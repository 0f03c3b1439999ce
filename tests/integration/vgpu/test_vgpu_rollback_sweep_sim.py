# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The wide vGPU rollback sweep of issue 15 (opt-in: marker `sweep`, `make sweep`; not in `make test`).

Three vgpu_devices changes, real module runs against the emulated sysfs (mdev, and SR-IOV VFs): a count change on
two GPUs, a type change, and a change of the VFs' types. For every sysfs write k of the forward apply, write k fails,
and then, for every write j of that rollback (one at a time), the j-th rollback write fails once too: the rollback
must try it again and the host must hold exactly its previous devices (UUIDs, types, VFs, mdevctl definitions), the
result saying `restored`. test_vgpu_rollback_sim.py (in `make test`) checks the first rollback write of one change.
"""
from __future__ import annotations

import os

import pytest

from test_vgpu_devices_sim import SIX_8Q, VgpuHost, served  # pylint: disable=import-error
from test_vgpu_rollback_sim import TWELVE_4Q, _fault  # pylint: disable=import-error
from test_vgpu_sriov_sim import FOUR_8Q, HOSTNAME as SRIOV_HOSTNAME, SriovHost  # pylint: disable=import-error

pytestmark = pytest.mark.sweep

A40_4Q = {'name': 'desktops', 'devices': {'model': 'NVIDIA A40'}, 'type': 'A40-4Q'}
T4_2Q = {'name': 'kiosks', 'devices': [1], 'type': 'T4-2Q'}
# name: (SR-IOV host, previous declaration, declared change)
SCENARIOS = {
    'mdev-count-two-gpus': (False, [dict(A40_4Q, count=9), dict(T4_2Q, count=2)], [dict(A40_4Q, count=4), dict(T4_2Q, count=8)]),
    'mdev-type-8q-to-4q': (False, SIX_8Q, TWELVE_4Q),
    'sriov-vf-types-8q-to-4q': (True, FOUR_8Q, [dict(FOUR_8Q[0], type='A40-4Q', count=12)]),
}


@pytest.fixture(name='vgpu_host')
def vgpu_host_fixture(tmp_path, request):
    """The hosts of test_vgpu_devices_sim.py (mdev) and test_vgpu_sriov_sim.py (SR-IOV, its twelve VFs enabled)."""
    sriov = SCENARIOS[request.node.callspec.params['name']][0]
    cls, hostname = (SriovHost, SRIOV_HOSTNAME) if sriov else (VgpuHost, 'vgpu-node')
    host = cls(str(tmp_path / 'gpusim'), tmp_path / 'sys', tmp_path / 'mdevctl.d')
    host.ctl('init', '--hostname', hostname, '--gpu', 'a40', '--gpu', 't4', '--vgpu-host')
    host.sysfs.mkdir()
    with served(host.sysfs, host.root, sriov=sriov):
        if sriov:
            host.enable_vfs()
        yield host


def _held(host) -> list:
    """What the host holds: each GPU's vGPUs as NVML sees them, an mdev by its UUID and type, a VF's vGPU by its VF and
    type (writing a VF's current_vgpu_type cannot choose the UUID: the driver gives each new vGPU its own), and the
    mdevctl definitions."""
    gpus = [sorted((None if v.get('vf') is not None else v['uuid'], v.get('vf'), v['type_id']) for v in gpu['vgpu_instances'])
            for gpu in host.state()['gpus']]
    definitions = sorted(os.path.join(d, f) for d, _dirs, files in os.walk(host.mdevctl) for f in files) if host.mdevctl.exists() else []
    return [gpus, definitions]


def _writes(host) -> int:
    return sum(host.state().get('sysfs_writes', {}).values())


def sweep(host, previous: list[dict], declared: list[dict]) -> tuple[int, int, list[str]]:
    """Every forward write k failing, with every rollback write j failing once: (forward positions, rollback
    positions checked, what went wrong where)."""
    assert not host.apply(previous).get('failed')
    before = _held(host)
    planned = host.apply(declared, check_mode=True)
    assert not planned.get('failed') and planned['steps'], planned.get('msg')
    checked, failures = 0, []
    for position in range(1, len(planned['steps']) + 1):
        host.ctl('fault', 'clear')
        writes = _writes(host)
        _fault(host, str(position))
        result = host.apply(declared)
        calls = _writes(host) - writes - position
        if not result.get('failed') or result['failure']['step_number'] != position or not result['rollback']['restored'] or _held(host) != before:
            failures.append('write %d alone: %s' % (position, result.get('msg')))
            break  # the host is no longer in its previous state
        for j in range(1, calls + 1):
            host.ctl('fault', 'clear')
            _fault(host, '%d,%d' % (position, position + j))
            result = host.apply(declared)
            checked += 1
            rollback = result.get('rollback') or {}
            retried = [s.get('tries', 1) for s in rollback.get('steps', [])].count(2)
            if (result.get('failure', {}).get('step_number') != position or rollback.get('restored') is not True or rollback.get('errors')
                    or retried != 1 or _held(host) != before):
                failures.append('write %d, rollback write %d: restored=%s retried=%d: %s' % (position, j, rollback.get('restored'), retried, result.get('msg')))
                if _held(host) != before:
                    return position, checked, failures
    return len(planned['steps']), checked, failures


@pytest.mark.parametrize('name', sorted(SCENARIOS))
def test_a_transient_fault_at_every_rollback_write_of_every_write_ends_in_the_previous_devices(vgpu_host, record_property, name):
    _sriov, previous, declared = SCENARIOS[name]
    forward, rollback, failures = sweep(vgpu_host, previous, declared)
    record_property('sweep', {'scenario': 'vgpu ' + name, 'forward': forward, 'rollback': rollback, 'failures': len(failures)})
    assert not failures, '\n'.join(failures)
