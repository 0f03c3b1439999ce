# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Declaration validation: every mistake is refused before any step, naming the host, the GPU and the entry."""
from __future__ import annotations

import re

import pytest

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _mig

from mig_support import model_gpu  # pylint: disable=import-error

HOST = 'gpu-node-1'


def _host() -> list[dict]:
    """Two H100s (MIG on, empty), an A30 (MIG on) and a T4 (no MIG)."""
    return [model_gpu('h100-80gb-hbm3', 0), model_gpu('h100-80gb-hbm3', 1), model_gpu('a30', 2), model_gpu('t4', 3)]


def _errors(declaration) -> list[str]:
    with pytest.raises(_mig.MigPlanError) as info:
        _mig.plan_host(HOST, _host(), declaration)
    assert str(info.value).count('\n- ') == len(info.value.errors)
    return info.value.errors


H100 = 'NVIDIA H100 80GB HBM3'
# (case, declaration, GPU the error must name (None: an entry-level error), entry label, words the reason must hold)
CASES = [
    ('not a list', {'devices': 'all'}, None, None, 'gpu_mig must be a list'),
    ('entry not a mapping', ['all'], None, '1', 'must be a mapping'),
    ('unknown entry key', [{'devices': [0], 'enable': True}], None, '1', 'unknown key(s) enable'),
    ('name not a string', [{'name': 5, 'devices': [0]}], None, '1', 'name must be a non-empty string'),
    ('devices missing', [{'name': 'x', 'enabled': True}], None, "'x'", 'devices is required'),
    ('enabled not a bool', [{'devices': [0], 'enabled': 'yes'}], None, '1', 'enabled must be true or false'),
    ('allow_disruption not a bool', [{'devices': [0], 'allow_disruption': 1}], None, '1', 'allow_disruption must be true or false'),
    ('selector word', [{'devices': 'some'}], None, '1', "devices must be 'all'"),
    ('selector index not an int', [{'devices': ['0']}], None, '1', 'GPU indexes as non-negative integers'),
    ('selector unknown key', [{'devices': {'serial': 'x'}}], None, '1', 'unknown key(s) serial'),
    ('index not on host', [{'name': 'big', 'devices': [0, 7]}], None, "'big'", 'GPU index 7 is not on this host'),
    ('uuid not on host', [{'devices': {'uuids': ['GPU-nope']}}], None, '1', 'no GPU with uuid GPU-nope'),
    ('model matches nothing', [{'devices': {'model': 'NVIDIA B200'}}], None, '1', 'matches no GPU on this host'),
    ('device id malformed', [{'devices': {'device_id': 'h100'}}], None, '1', 'is not a PCI device id'),
    ('device and index disagree', [{'devices': {'indexes': [2], 'model': H100}}], None, '1', 'matches no GPU'),
    ('overlapping selectors', [{'devices': [0]}, {'name': 'b', 'devices': {'model': H100}}], 0, None, "selected by entries 1, 'b'"),
    ('instances without MIG', [{'devices': [0], 'enabled': False, 'instances': [{'profile': '1g.10gb'}]}], None, '1', 'instances need MIG mode'),
    ('instances not a list', [{'devices': [0], 'instances': {'profile': '1g.10gb'}}], None, '1', 'instances must be a list'),
    ('instance unknown key', [{'devices': [0], 'instances': [{'profile': '1g.10gb', 'size': 1}]}], None, '1', 'instances[0]: unknown key(s) size'),
    ('instance without profile', [{'devices': [0], 'instances': [{'count': 2}]}], None, '1', 'instances[0]: profile must be'),
    ('start not an int', [{'devices': [0], 'instances': [{'profile': '3g.40gb', 'start': '4'}]}], None, '1', 'start must be a non-negative integer'),
    ('count zero', [{'devices': [0], 'instances': [{'profile': '3g.40gb', 'count': 0}]}], None, '1', 'count must be a positive integer'),
    ('count with start', [{'devices': [0], 'instances': [{'profile': '1g.10gb', 'start': 0, 'count': 2}]}], None, '1',
     'count must be 1 when start is given'),
    ('compute instances not a list', [{'devices': [0], 'instances': [{'profile': '3g.40gb', 'compute_instances': '1c'}]}], None, '1',
     'compute_instances must be a list'),
    ('profile of another GPU', [{'devices': [0], 'instances': [{'profile': '1g.6gb'}]}], 0, '1',
     'instances[0]: profile 1g.6gb is not offered by this GPU'),
    ('start not a placement', [{'devices': [1], 'instances': [{'profile': '1g.10gb'}, {'profile': '3g.40gb', 'start': 2}]}], 1, '1',
     'instances[1]: 3g.40gb cannot start at 2 (starts: 0, 4)'),
    ('count above the limit', [{'devices': [0], 'instances': [{'profile': '1g.10gb', 'count': 5}, {'profile': '1g.10gb', 'count': 3}]}], 0, '1',
     '8 instances of 1g.10gb declared, this GPU allows 7'),
    ('two +me on one GPU', [{'devices': [0], 'instances': [{'profile': '1g.10gb+me', 'count': 2}]}], 0, '1',
     '2 instances of 1g.10gb+me declared, this GPU allows 1'),
    ('+me profiles share the media engine', [{'devices': [2], 'instances': [{'profile': '1g.6gb+me'}, {'profile': '2g.12gb+me'}]}], 2, '1',
     "each need the GPU's optical-flow/media engine"),
    ('compute slices exhausted', [{'devices': [0], 'instances': [{'profile': '4g.40gb'}, {'profile': '3g.40gb'}, {'profile': '1g.10gb'}]}],
     0, '1', 'the instances need 8 compute slices, this GPU has 7'),
    ('compute instances overflow', [{'devices': [0], 'instances': [{'profile': '3g.40gb', 'compute_instances': ['2c', '2c']}]}], 0, '1',
     'compute instances [2c, 2c] do not fit a 3g.40gb GPU instance'),
    ('compute instance size not offered', [{'devices': [0], 'instances': [{'profile': '4g.40gb', 'compute_instances': ['3c']}]}], 0, '1',
     '4g.40gb offers compute instances of 1c, 2c, 4c compute slices, not 3'),
    ('compute instance of another profile', [{'devices': [0], 'instances': [{'profile': '3g.40gb', 'compute_instances': ['1c.4g.40gb']}]}],
     0, '1', "'1c.4g.40gb' is not a compute instance of 3g.40gb"),
    ('4g beside a 3g pinned at 0', [{'devices': [0], 'instances': [{'profile': '4g.40gb'}, {'profile': '3g.40gb', 'start': 0}]}], 0, '1',
     'cannot be placed without overlap'),
    ('two 3g and a 1g.20gb', [{'devices': [0], 'instances': [{'profile': '3g.40gb', 'count': 2}, {'profile': '1g.20gb'}]}], 0, '1',
     'use 10 memory slices'),
    ('MIG on a GPU without MIG', [{'name': 't4', 'devices': [3], 'enabled': True}], 3, "'t4'", 'Tesla T4 does not support MIG'),
]


@pytest.mark.parametrize('declaration, gpu, entry, reason', [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_declaration_error_names_host_gpu_entry_and_reason(declaration, gpu, entry, reason):
    errors = _errors(declaration)
    matching = [e for e in errors if reason in e]
    assert matching, errors
    message = matching[0]
    assert message.startswith('host %s: ' % HOST)
    if gpu is not None:
        assert 'GPU %d (GPU-' % gpu in message and _host()[gpu]['uuid'] in message
    else:
        assert not re.match(r'host \S+: GPU \d+ \(', message)
    if entry is not None:
        assert 'entry %s: ' % entry in message


def test_every_problem_of_a_host_is_reported_together():
    errors = _errors([
        {'name': 'a', 'devices': [0], 'instances': [{'profile': '1g.6gb'}]},
        {'name': 'b', 'devices': [1], 'instances': [{'profile': '3g.40gb', 'start': 1}]},
        {'name': 'c', 'devices': [9]},
        {'name': 'd', 'devices': [2], 'colour': 'red'},
    ])
    assert len(errors) == 4
    assert [e.split('entry ')[1].split(':')[0] for e in errors] == ["'d'", "'c'", "'a'", "'b'"]  # shape, selection, then per-GPU checks


def test_a_profile_is_checked_against_each_selected_gpu_own_profiles():
    """2g.12gb exists on the A30 only: the same entry is refused on both H100s and accepted on the A30."""
    errors = _errors([{'devices': [0, 1, 2], 'instances': [{'profile': '2g.12gb'}]}])
    assert len(errors) == 2 and all('profile 2g.12gb is not offered' in e for e in errors)
    assert {int(e.split('GPU ')[1].split(' ')[0]) for e in errors} == {0, 1}
    assert _mig.plan_host(HOST, _host(), [{'devices': [2], 'instances': [{'profile': '2g.12gb'}]}]).changed


def test_disabling_mig_on_every_gpu_is_fine_even_where_there_is_no_mig():
    plan = _mig.plan_host(HOST, _host(), [{'devices': 'all', 'enabled': False}])
    assert {s['action'] for s in plan.steps} == {'set_mig_mode', 'reset_gpu'}
    assert {s['gpu'] for s in plan.steps} == {0, 1, 2}


def test_a_lost_gpu_cannot_be_planned():
    gpus = _host()
    gpus[1].update(status='lost', error='GPU is lost')
    with pytest.raises(_mig.MigPlanError) as info:
        _mig.plan_host(HOST, gpus, [{'devices': [1], 'enabled': True}])
    errors = info.value.errors
    assert len(errors) == 1 and 'GPU 1 (' in errors[0] and 'the GPU is lost (GPU is lost)' in errors[0]


def test_device_id_selectors_accept_both_spellings_and_check_the_vendor():
    for device_id in ('0x2330', '2330', '0x233010DE', ['0x20b7', '0x233010de']):
        plan = _mig.plan_host(HOST, _host(), [{'devices': {'device_id': device_id}, 'enabled': False}])
        assert {g.index for g in plan.gpus} >= {0, 1}
    assert 'matches no GPU' in _errors([{'devices': {'device_id': '0x23301234'}}])[0]


def test_validate_lists_the_errors_without_raising():
    assert not _mig.validate(HOST, _host(), [{'devices': [0], 'instances': [{'profile': '7g.80gb'}]}])
    assert len(_mig.validate(HOST, _host(), [{'devices': [0], 'instances': [{'profile': '7g.80gb', 'count': 2}]}])) == 1


def test_no_declaration_is_no_plan():
    for declaration in (None, []):
        plan = _mig.plan_host(HOST, _host(), declaration)
        assert not plan.changed and plan.steps == [] and plan.gpus == []
