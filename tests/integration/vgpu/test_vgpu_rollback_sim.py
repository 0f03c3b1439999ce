# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vgpu_devices' rollback through a second fault (issue 15): real module runs against the emulated mdev sysfs, whose
writes fail where the simulator's sysfs faults say (`gpusimctl fault set --call 'sysfs:*' --error EIO --nth ...`).

The change: six A40-8Q become twelve A40-4Q (6 removals, 12 creations, 18 writes). For every write k:
- a transient fault: write k fails, and so does the rollback's first write; the rollback tries it again and the A40
  holds its six A40-8Q again, under their UUIDs;
- a permanent fault from write k on: nothing can be undone, and the result says exactly what the GPU lacks and holds.
"""
from __future__ import annotations

import pytest

from test_vgpu_devices_sim import SIX_8Q, host_fixture  # noqa: F401  pylint: disable=import-error,unused-import

TWELVE_4Q = [dict(SIX_8Q[0], type='A40-4Q', count=12)]
WRITES = 18


def _fault(host, nth: str) -> None:
    host.ctl('fault', 'set', '--call', 'sysfs:*', '--error', 'EIO', '--nth', nth)


@pytest.mark.parametrize('position', range(1, WRITES + 1))
def test_a_fault_at_any_write_and_at_the_first_rollback_write_ends_in_the_previous_devices(host, position):
    assert not host.apply(SIX_8Q).get('failed')
    before = host.devices()
    _fault(host, '%d,%d' % (position, position + 1))
    result = host.apply(TWELVE_4Q)
    assert result.get('failed') and result['failure']['step_number'] == position and 'EIO' in result['msg'], result.get('msg')
    rollback = result['rollback']
    assert rollback['restored'] is True and rollback['errors'] == [] and 'rolled back' in result['msg'], result['msg']
    assert host.devices() == before
    if position > 1:  # something to undo: its first write took two tries
        assert rollback['steps'][0]['tries'] == 2 and all('tries' not in s for s in rollback['steps'][1:])


@pytest.mark.parametrize('position', [1, 2, 6, 7, 12, 18])
def test_a_permanent_fault_from_a_write_on_is_reported_exactly(host, position):
    assert not host.apply(SIX_8Q).get('failed')
    before = {pair[0] for pair in host.devices()}
    _fault(host, '%d+' % position)
    result = host.apply(TWELVE_4Q)
    now = {pair[0] for pair in host.devices()}
    rollback = result['rollback']
    assert rollback['restored'] is (now == before)
    if now != before:
        assert 'ROLLBACK INCOMPLETE' in result['msg'] and '(3 tries)' in rollback['errors'][0]
        assert 'GPU 0 holds %s; before: %s' % (sorted(now), sorted(before)) in result['msg']
        for missing in sorted(before - now):
            assert '%s (A40-8Q)' % missing in result['msg'].split('missing: ')[1]
        if now - before:
            assert 'extra: ' in result['msg']
    # the device list in the result is what the GPU holds
    assert {d['uuid'] for d in result['devices'] if d['gpu'] == 0} == now
