# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""mig_layout, unchanged, against simulated hosts: real module runs (subprocesses), NVML and nvidia-smi stand-ins.

What the GPUs hold is read back through gpu_facts (and, behind the scenes, from the simulator's state: instance
creation uids, counts of mutating NVML calls and of GPU resets), never from the module's own report.
"""
from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from simhost import REPO, SIM_LIB, SimHost  # noqa: E402 pylint: disable=import-error,wrong-import-position

H100 = 'h100-80gb-hbm3'
SEVEN_1G = [{'profile': '1g.10gb', 'count': 7}]
# The NVML function behind each instance step (resets go through nvidia-smi).
NVML_CALL = {
    'destroy_compute_instance': 'nvmlComputeInstanceDestroy',
    'destroy_gpu_instance': 'nvmlGpuInstanceDestroy',
    'set_mig_mode': 'nvmlDeviceSetMigMode',
    'create_gpu_instance': 'nvmlDeviceCreateGpuInstanceWithPlacement',
    'create_compute_instance': 'nvmlGpuInstanceCreateComputeInstanceWithPlacement',
}


@pytest.fixture(name='host')
def host_fixture(tmp_path):
    return SimHost(str(tmp_path / 'gpusim'))


def _init(host: SimHost, *gpus: str) -> None:
    args = ['init', '--hostname', 'mig-node']
    for spec in gpus:
        args += ['--gpu', spec]
    host.ctl(*args)


def _apply(host: SimHost, config=None, check_mode: bool = False, diff: bool = False, expect_failure: bool = False, **args) -> dict:
    if config is not None:
        args['config'] = config
    result = host.module('mig_layout', args, check_mode=check_mode, diff=diff)
    assert bool(result.get('failed')) == expect_failure, result.get('msg') or result
    return result


def layouts(host: SimHost) -> list[tuple]:
    """Per GPU, as gpu_facts reads it: (current, pending, ((profile, start, ((ci slices, ci start), ...)), ...))."""
    result = []
    for gpu in host.facts('nvml')['gpus']:
        mig = gpu['mig']
        instances = tuple(sorted((g['profile'], g['placement']['start'],
                                  tuple(sorted((c['slices'], c['placement']['start']) for c in g['compute_instances'])))
                                 for g in mig['gpu_instances']))
        result.append((mig['current'], mig['pending'], instances))
    return result


def _uids(host: SimHost, index: int) -> dict[int, tuple]:
    """GPU instance start -> (GI id, GI creation uid, [(CI id, CI creation uid)]): a recreated instance gets new uids."""
    gpu = host.state()['gpus'][index]
    return {g['start']: (g['id'], g['uid'], [(c['id'], c['uid']) for c in g['compute_instances']]) for g in gpu['gpu_instances']}


def _counts(host: SimHost) -> dict[str, int]:
    return dict(host.state().get('nvml_mutations', {}))


# ---------------------------------------------------------------------------------------------------------
# Apply, idempotence, minimal changes


def test_a_layout_is_applied_and_a_rerun_changes_nothing(host):
    _init(host, H100 + ':2')
    config = [{'name': 'split', 'devices': [0], 'instances': [{'profile': '3g.40gb', 'start': 4, 'compute_instances': ['1c', '2c']},
                                                              {'profile': '2g.20gb'}, {'profile': '1g.10gb', 'count': 2}]}]
    first = _apply(host, config)
    assert first['changed'] is True and first['reboot_required'] == [] and first['deferred'] == []
    assert layouts(host)[0] == (True, True, (('1g.10gb', 2, ((1, 0),)), ('1g.10gb', 3, ((1, 0),)), ('2g.20gb', 0, ((2, 0),)),
                                             ('3g.40gb', 4, ((1, 2), (2, 0)))))
    assert layouts(host)[1] == (False, False, ())
    mutations, resets = host.mutations(), host.resets()
    second = _apply(host, config)
    assert second['changed'] is False and second['steps'] == [] and second['applied'] == []
    assert host.mutations() == mutations and host.resets() == resets
    assert second['declaration'] == first['declaration']
    assert _apply(host, second['declaration'])['changed'] is False  # the export is itself a declaration that holds


def test_the_plan_observes_the_boot_time_service_in_the_same_call_and_writes_nothing(host, tmp_path):
    """observe: what host_state with write_files=false reports for the files and units, read before the plan, in the
    one call the mig role makes on a rerun."""
    _init(host, H100 + ':1')
    config = [{'devices': 'all', 'instances': SEVEN_1G}]
    _apply(host, config)
    runner = tmp_path / 'gpuvirt-mig'
    runner.write_text('#!/bin/sh\n')
    fake = tmp_path / 'bin'
    fake.mkdir()
    shown = 'Id=gpuvirt-mig.service\\nLoadState=loaded\\nUnitFileState=disabled\\nActiveState=inactive\\nNeedDaemonReload=no\\n'
    (fake / 'systemctl').write_text('#!/bin/sh\nprintf "%s"\n' % shown)
    (fake / 'systemctl').chmod(0o755)
    host.env['PATH'] = str(fake) + os.pathsep + host.env['PATH']
    observe = {'files': [{'path': str(runner), 'content': '#!/bin/sh\napply\n', 'mode': '0755'},
                         {'path': str(tmp_path / 'mig.json'), 'checksum': '0' * 40}],
               'units': [{'name': 'gpuvirt-mig.service', 'enabled': True}]}
    plan = _apply(host, config, check_mode=True, observe=observe)
    assert plan['changed'] is False and plan['steps'] == []
    assert plan['observed']['in_place'] is False
    assert sorted(plan['observed']['differences']) == sorted([
        '%s: content differs' % runner, '%s: mode is 0644, not 0755' % runner, '%s: does not exist' % (tmp_path / 'mig.json'),
        'unit gpuvirt-mig.service: disabled, not enabled'])
    assert runner.read_text() == '#!/bin/sh\n' and not (tmp_path / 'mig.json').exists()  # observed, never written
    runner.write_text('#!/bin/sh\napply\n')
    runner.chmod(0o755)
    (fake / 'systemctl').write_text('#!/bin/sh\nprintf "Id=gpuvirt-mig.service\\nLoadState=loaded\\nUnitFileState=enabled\\n"\n')
    observe['files'].pop()
    assert _apply(host, config, check_mode=True, observe=observe)['observed'] == {'in_place': True, 'differences': []}
    # a plan with steps observes as well, and an entry it cannot observe is refused naming it
    planned = _apply(host, [{'devices': 'all', 'instances': [{'profile': '7g.80gb'}]}], check_mode=True, observe=observe)
    assert planned['steps'] and planned['observed']['in_place'] is True
    bad = _apply(host, config, check_mode=True, observe={'files': [{'path': 'relative/file', 'checksum': '0' * 40}]},
                 expect_failure=True)
    assert bad['msg'].startswith('observe: ') and 'relative/file' in bad['msg']


def test_changing_one_of_seven_instances_recreates_only_that_one(host):
    _init(host, H100 + ':1')
    _apply(host, [{'devices': 'all', 'instances': SEVEN_1G}])
    before, counts = _uids(host, 0), _counts(host)
    result = _apply(host, [{'devices': 'all', 'instances': [{'profile': '1g.10gb', 'count': 6}, {'profile': '1g.10gb+me'}]}])
    assert [s['action'] for s in result['applied']] == [
        'destroy_compute_instance', 'destroy_gpu_instance', 'create_gpu_instance', 'create_compute_instance']
    after = _uids(host, 0)
    changed = [start for start in before if before[start] != after[start]]
    assert len(changed) == 1 and len(after) == 7
    kept = [start for start in before if start not in changed]
    assert [after[start] for start in kept] == [before[start] for start in kept]  # six keep ids and creation uids
    assert layouts(host)[0][2][changed[0]][0] == '1g.10gb+me'
    delta = {call: n - counts.get(call, 0) for call, n in _counts(host).items() if n != counts.get(call, 0)}
    assert delta == {'nvmlComputeInstanceDestroy': 1, 'nvmlGpuInstanceDestroy': 1,
                     'nvmlDeviceCreateGpuInstanceWithPlacement': 1, 'nvmlGpuInstanceCreateComputeInstanceWithPlacement': 1}


def test_a_mode_change_on_one_gpu_resets_no_other_gpu(host):
    _init(host, H100 + ':4')
    _apply(host, [{'devices': [0, 1], 'instances': [{'profile': '7g.80gb'}]}])
    assert host.resets() == [1, 1, 0, 0]
    result = _apply(host, [{'devices': [0, 1], 'instances': [{'profile': '3g.40gb', 'count': 2}]}, {'devices': [3], 'enabled': True}])
    assert host.resets() == [1, 1, 0, 1]  # GPUs 0 and 1 changed instances only; GPU 3 changed mode
    assert [(s['action'], s['gpu']) for s in result['applied'] if s['action'] in ('set_mig_mode', 'reset_gpu')] == [
        ('set_mig_mode', 3), ('reset_gpu', 3)]
    assert [layout[:2] for layout in layouts(host)] == [(True, True), (True, True), (False, False), (True, True)]
    _apply(host, [{'devices': [1], 'enabled': False}])
    assert host.resets() == [1, 2, 0, 1]
    assert layouts(host)[1] == (False, False, ())


# ---------------------------------------------------------------------------------------------------------
# Refusals: nothing is touched


INFEASIBLE = {
    'unknown profile': ([{'devices': [0], 'instances': [{'profile': '5g.50gb'}]}], 'not offered by this GPU'),
    'too many of a profile': ([{'devices': [0], 'instances': [{'profile': '1g.10gb', 'count': 4}, {'profile': '1g.10gb', 'count': 4}]}],
                              'this GPU allows 7'),
    'too many compute slices': ([{'devices': [0], 'instances': [{'profile': '4g.40gb'}, {'profile': '2g.20gb', 'count': 2}]}],
                                'compute slices'),
    'illegal start': ([{'devices': [0], 'instances': [{'profile': '3g.40gb', 'start': 2}]}], 'cannot start at 2'),
    'legal by counts, 9 memory slices': ([{'devices': [0], 'instances': [{'profile': '3g.40gb', 'count': 2}, {'profile': '1g.10gb'}]}],
                                         'cannot be placed'),
    'legal by counts, 3g at 0 blocks the 4g': ([{'devices': [0], 'instances': [{'profile': '3g.40gb', 'start': 0}, {'profile': '4g.40gb'}]}],
                                               'cannot be placed'),
    'two media engines': ([{'devices': [0], 'instances': [{'profile': '1g.10gb+me'}, {'profile': '7g.80gb'}]}], 'media engine'),
    'compute instances that do not fit': ([{'devices': [0], 'instances': [{'profile': '3g.40gb', 'compute_instances': ['2c', '2c']}]}],
                                          'do not fit'),
    'overlapping selectors': ([{'devices': 'all', 'enabled': True}, {'devices': [1], 'enabled': False}], 'one entry only'),
    'selector matching nothing': ([{'devices': {'model': 'NVIDIA A100-SXM4-40GB'}, 'enabled': True}], 'matches no GPU'),
    'a GPU index that is not there': ([{'devices': [5], 'enabled': True}], 'not on this host'),
}


@pytest.fixture(name='busy_state', scope='module')
def busy_state_fixture(tmp_path_factory):
    """The state file of a 2-GPU host with instances on both GPUs (a naive tool would wipe them), built once."""
    host = SimHost(str(tmp_path_factory.mktemp('busy') / 'gpusim'))
    _init(host, H100 + ':2')
    _apply(host, [{'devices': 'all', 'instances': [{'profile': '4g.40gb'}, {'profile': '1g.10gb', 'count': 3}]}])
    return os.path.join(host.root, 'state.json')


def _clone(state_file: str, tmp_path) -> SimHost:
    """A host whose state starts as a copy of `state_file`."""
    host = SimHost(str(tmp_path / 'clone'))
    os.makedirs(host.root)
    shutil.copy(state_file, os.path.join(host.root, 'state.json'))
    return host


@pytest.mark.parametrize('case', sorted(INFEASIBLE))
def test_an_infeasible_declaration_is_refused_with_zero_nvml_mutations(busy_state, tmp_path, case):
    host = _clone(busy_state, tmp_path)
    before, mutations, resets = layouts(host), host.mutations(), host.resets()
    assert mutations > 0 and all(layout[2] for layout in before)
    config, reason = INFEASIBLE[case]
    for check_mode in (True, False):
        result = _apply(host, config, check_mode=check_mode, expect_failure=True)
        assert reason in result['msg'] and 'host %s' % socket.gethostname() in result['msg'], result['msg']
        assert 'nothing was changed' in result['msg'] and result['errors']
        assert result.get('applied') == [] and result['changed'] is False
    assert host.mutations() == mutations and host.resets() == resets
    assert layouts(host) == before


def test_errors_name_the_host_gpu_and_entry(host):
    _init(host, H100 + ':1')
    result = _apply(host, [{'name': 'training', 'devices': [0], 'instances': [{'profile': '3g.40gb', 'count': 2}, {'profile': '1g.10gb'}]}],
                    expect_failure=True)
    uuid = host.facts()['gpus'][0]['uuid']
    assert "host %s: GPU 0 (%s): entry 'training':" % (socket.gethostname(), uuid) in result['msg']


def test_a_gpu_with_running_processes_is_refused_naming_the_pids_unless_disruption_is_allowed(host):
    _init(host, H100 + ':1')
    _apply(host, [{'devices': 'all', 'instances': SEVEN_1G}])
    gi_at_6 = _uids(host, 0)[6][0]
    host.ctl('proc', 'add', '--gpu', '0', '--pid', '4242', '--mem-mib', '512', '--gi', str(gi_at_6), '--ci', '0')
    before, mutations = layouts(host), host.mutations()
    wipe = [{'devices': 'all', 'instances': [{'profile': '7g.80gb'}]}]
    refused = _apply(host, wipe, expect_failure=True)
    assert '4242' in refused['msg'] and 'allow_disruption' in refused['msg']
    assert host.mutations() == mutations and layouts(host) == before
    # an instance the process does not use can still change: the planner keeps the used one
    minor = _apply(host, [{'devices': 'all', 'instances': [{'profile': '1g.10gb', 'count': 6}, {'profile': '1g.10gb+me'}]}])
    assert minor['changed'] and all(s.get('gpu_instance_id') != gi_at_6 for s in minor['applied'])
    # allowed: the steps are attempted; NVML refuses to destroy what the process uses, and the GPU is rolled back
    before = layouts(host)
    allowed = _apply(host, [dict(wipe[0], allow_disruption=True)], expect_failure=True)
    assert 'In use' in allowed['msg'] and '4242' in allowed['msg'] and allowed['rollback']['restored'] is True
    assert host.mutations() > mutations and layouts(host) == before


# ---------------------------------------------------------------------------------------------------------
# Faults: previous or declared layout, never a third


FAULT_PREVIOUS = [{'devices': [0], 'instances': [{'profile': '3g.40gb', 'start': 0, 'compute_instances': ['1c', '1c', '1c']},
                                                 {'profile': '2g.20gb', 'start': 4}, {'profile': '1g.10gb', 'start': 6}]},
                  {'devices': [1], 'enabled': False}]
FAULT_DECLARED = [{'devices': [0], 'instances': [{'profile': '3g.40gb', 'start': 0, 'compute_instances': ['1c', '2c']},
                                                 {'profile': '1g.10gb', 'start': 4}, {'profile': '1g.10gb', 'start': 5},
                                                 {'profile': '1g.10gb', 'start': 6}]},
                  {'devices': [1], 'instances': [{'profile': '4g.40gb'}, {'profile': '3g.40gb'}]}]
FAULT_ACTIONS = (['destroy_compute_instance'] * 2 + ['destroy_compute_instance', 'destroy_gpu_instance', 'create_gpu_instance',
                                                     'create_gpu_instance', 'create_compute_instance', 'create_compute_instance',
                                                     'create_compute_instance']
                 + ['set_mig_mode', 'reset_gpu', 'create_gpu_instance', 'create_gpu_instance', 'create_compute_instance',
                    'create_compute_instance'])


@pytest.fixture(name='fault_host', scope='module')
def fault_host_fixture(tmp_path_factory):
    """A host in FAULT_PREVIOUS, with the layouts of both states and the plan between them (built once)."""
    host = SimHost(str(tmp_path_factory.mktemp('fault') / 'gpusim'))
    _init(host, H100 + ':2')
    _apply(host, FAULT_PREVIOUS)
    previous = layouts(host)
    plan = _apply(host, FAULT_DECLARED, check_mode=True)
    saved = os.path.join(os.path.dirname(host.root), 'previous.json')
    shutil.copy(os.path.join(host.root, 'state.json'), saved)
    declared_host = SimHost(str(tmp_path_factory.mktemp('declared') / 'gpusim'))
    _init(declared_host, H100 + ':2')
    _apply(declared_host, FAULT_DECLARED)
    return host, saved, previous, layouts(declared_host), plan['steps']


def test_the_fault_scenario_exercises_every_kind_of_step(fault_host):
    steps = fault_host[4]
    assert [s['action'] for s in steps] == FAULT_ACTIONS
    assert sorted({(s['action'], s['gpu']) for s in steps}) == sorted({(a, 0) for a in FAULT_ACTIONS[:9]} | {(a, 1) for a in FAULT_ACTIONS[9:]})


def _fail_step(host: SimHost, tmp_path, steps: list[dict], position: int) -> None:
    """Make the planned step at `position` fail: an nth-call NVML fault, or an nvidia-smi whose reset is refused."""
    step = steps[position]
    if step['action'] == 'reset_gpu':
        fake = tmp_path / 'bin'
        fake.mkdir()
        (fake / 'nvidia-smi').write_text('#!/bin/sh\necho "GPU $3 is currently in use by another process."\nexit 255\n')
        (fake / 'nvidia-smi').chmod(0o755)
        host.env['PATH'] = str(fake) + os.pathsep + host.env['PATH']
        return
    nth = sum(1 for s in steps[:position + 1] if s['action'] == step['action'])
    host.ctl('fault', 'set', '--call', NVML_CALL[step['action']], '--error', 'NVML_ERROR_UNKNOWN', '--nth', str(nth))


@pytest.mark.parametrize('position', range(len(FAULT_ACTIONS)))
def test_a_fault_at_any_step_leaves_every_gpu_in_its_previous_or_declared_layout(fault_host, tmp_path, position):
    shared, saved, previous, declared, steps = fault_host
    host = _clone(saved, tmp_path)
    assert layouts(host) == previous
    _fail_step(host, tmp_path, steps, position)
    result = _apply(host, FAULT_DECLARED, expect_failure=True)
    now = layouts(host)
    assert all(layout in (previous[i], declared[i]) for i, layout in enumerate(now)), (now, previous, declared)
    # this module promises more: a rollback to the previous layout, and a report of what failed
    assert now == previous and result['rollback']['restored'] is True and result['rollback']['errors'] == []
    assert result['failure']['step_number'] == position + 1 and result['failure']['step']['action'] == FAULT_ACTIONS[position]
    assert 'step %d of %d' % (position + 1, len(steps)) in result['msg'] and 'rolled back' in result['msg']
    assert shared.root != host.root


# ---------------------------------------------------------------------------------------------------------
# Check mode, diff, resets that need a reboot


def test_check_mode_changes_nothing_and_returns_the_plan(host):
    _init(host, H100 + ':2')
    _apply(host, [{'devices': [0], 'instances': SEVEN_1G}])
    before, mutations, resets = layouts(host), host.mutations(), host.resets()
    config = [{'devices': [0], 'instances': [{'profile': '4g.40gb'}, {'profile': '1g.10gb', 'count': 3}]}, {'devices': [1], 'enabled': True}]
    result = _apply(host, config, check_mode=True, diff=True)
    assert result['changed'] is True and result['applied'] == []
    assert [(s['action'], s['gpu']) for s in result['steps']] == (
        [('destroy_compute_instance', 0)] * 4 + [('destroy_gpu_instance', 0)] * 4 + [('create_gpu_instance', 0), ('create_compute_instance', 0)]
        + [('set_mig_mode', 1), ('reset_gpu', 1)])
    assert host.mutations() == mutations and host.resets() == resets and layouts(host) == before
    assert result['diff']['before']['GPU 1'] == {'devices': [1], 'enabled': False}
    assert result['diff']['after']['GPU 1'] == {'devices': [1], 'enabled': True, 'instances': []}
    assert result['diff']['after']['GPU 0']['instances'][0] == {'profile': '4g.40gb', 'start': 0}
    applied = _apply(host, config)
    assert [s['action'] for s in applied['applied']] == [s['action'] for s in result['steps']]


def test_a_gpu_that_cannot_be_reset_waits_for_a_reboot_without_instance_steps(host):
    _init(host, H100 + ':2')
    host.ctl('fault', 'set', '--gpu', '1', '--call', 'reset', '--error', 'NVML_ERROR_RESET_REQUIRED')
    config = [{'devices': 'all', 'instances': [{'profile': '3g.40gb', 'count': 2}]}]
    result = _apply(host, config)
    assert result['changed'] is True
    assert [(r['gpu'], 'not supported' in r['reason']) for r in result['reboot_required']] == [(1, True)]
    assert [(d['gpu'], [s['action'] for s in d['steps']]) for d in result['deferred']] == [(1, ['create_gpu_instance'] * 2 + ['create_compute_instance'] * 2)]
    assert [(s['action'], s['gpu']) for s in result['applied'] if s['gpu'] == 1] == [('set_mig_mode', 1)]
    assert host.state()['gpus'][1]['gpu_instances'] == [] and host.resets() == [1, 0]
    assert layouts(host)[1] == (False, True, ())
    rerun = _apply(host, config)  # still pending: nothing to do until the reboot
    assert rerun['changed'] is False and [r['gpu'] for r in rerun['reboot_required']] == [1]
    host.ctl('reboot')
    after_boot = _apply(host, config)  # what the boot-time service does
    assert after_boot['changed'] is True and after_boot['reboot_required'] == []
    assert [layout[2] for layout in layouts(host)] == [(('3g.40gb', 0, ((3, 0),)), ('3g.40gb', 4, ((3, 0),)))] * 2


def test_reset_never_leaves_mode_changes_for_the_reboot(host):
    _init(host, H100 + ':2')
    result = _apply(host, [{'devices': 'all', 'instances': [{'profile': '7g.80gb'}]}], reset='never')
    assert [r['gpu'] for r in result['reboot_required']] == [0, 1] and host.resets() == [0, 0]
    assert [s['action'] for s in result['applied']] == ['set_mig_mode', 'set_mig_mode']
    assert [layout[:2] for layout in layouts(host)] == [(False, True), (False, True)]


# ---------------------------------------------------------------------------------------------------------
# mig-parted interop and export


MIG_PARTED = {'version': 'v1', 'mig-configs': {
    'all-disabled': [{'devices': 'all', 'mig-enabled': False}],
    'custom': [{'devices': [0], 'mig-enabled': True, 'mig-devices': {'2g.20gb': 1, '1c.3g.40gb': 3, '1g.10gb': 2}},
               {'devices': [1], 'mig-enabled': True, 'mig-devices': {'7g.80gb': 1}}],
}}
NATIVE = [{'devices': [0], 'instances': [{'profile': '3g.40gb', 'compute_instances': ['1c', '1c', '1c']}, {'profile': '2g.20gb'},
                                         {'profile': '1g.10gb', 'count': 2}]},
          {'devices': [1], 'instances': [{'profile': '7g.80gb'}]}]


def test_a_mig_parted_config_gives_the_layout_of_the_equivalent_declaration_and_exports_round_trip(tmp_path):
    parted, native = SimHost(str(tmp_path / 'a')), SimHost(str(tmp_path / 'b'))
    for host in (parted, native):
        _init(host, H100 + ':2')
    result = _apply(parted, mig_parted_config=MIG_PARTED, mig_parted_label='custom')
    _apply(native, NATIVE)
    assert layouts(parted) == layouts(native)
    # export round trip: mig-parted's format applies to itself without a change, and the native export rebuilds the host
    assert result['mig_parted']['mig-configs']['custom'] == [
        {'devices': [0], 'mig-enabled': True, 'mig-devices': {'1c.3g.40gb': 3, '1g.10gb': 2, '2g.20gb': 1}},
        {'devices': [1], 'mig-enabled': True, 'mig-devices': {'7g.80gb': 1}}]
    assert _apply(parted, mig_parted_config=result['mig_parted'], mig_parted_label='custom')['changed'] is False
    assert _apply(native, mig_parted_config=result['mig_parted'], mig_parted_label='custom')['changed'] is False
    fresh = SimHost(str(tmp_path / 'c'))
    _init(fresh, H100 + ':2')
    _apply(fresh, result['declaration'])
    assert layouts(fresh) == layouts(parted)
    _apply(parted, mig_parted_config=MIG_PARTED, mig_parted_label='all-disabled')
    assert layouts(parted) == [(False, False, ())] * 2


NVIDIA_CONFIG = os.path.join(REPO, 'tests', 'unit', 'fixtures', 'nvidia', 'mig-parted-config.yaml')
MODELS_DIR = os.path.join(SIM_LIB, 'gpusim', 'models')
EVERY_MODEL = sorted(name[:-5] for name in os.listdir(MODELS_DIR) if name.endswith('.json'))
# all-balanced of the fixture, per MIG-capable model: the counts each GPU must hold
BALANCED = {
    'NVIDIA A100-SXM4-40GB': {'1g.5gb': 2, '2g.10gb': 1, '3g.20gb': 1},
    'NVIDIA A100-SXM4-80GB': {'1g.10gb': 2, '2g.20gb': 1, '3g.40gb': 1},
    'NVIDIA A30': {'1g.6gb': 2, '2g.12gb': 1},
    'NVIDIA H100 80GB HBM3': {'1g.10gb': 2, '2g.20gb': 1, '3g.40gb': 1},
    'NVIDIA H200': {'1g.18gb': 2, '2g.35gb': 1, '3g.71gb': 1},
}


def _mig_parted_counts(gpu: dict) -> dict | None:
    """What mig-parted counts on a GPU, read back through gpu_facts: None when MIG is off."""
    if not gpu['mig']['current']:
        return None
    sizes = {p['name']: p['slices'] for p in gpu['mig']['profiles']}
    counts: dict = {}
    for gi in gpu['mig']['gpu_instances']:
        for ci in gi['compute_instances']:
            key = gi['profile'] if ci['slices'] == sizes[gi['profile']] else '%dc.%s' % (ci['slices'], gi['profile'])
            counts[key] = counts.get(key, 0) + 1
    return counts


def test_a_multi_model_mig_parted_label_applies_on_every_model_it_names_and_a_rerun_is_unchanged(host):
    """NVIDIA's flagship all-balanced, in the shape of the GPU operator's config: one entry per model by device-filter.
    On a host with every simulated model each MIG-capable GPU gets its model's entry; the entries for models absent
    here, and the GPUs that are not MIG-capable (A40, T4, V100), are skipped."""
    assert len(EVERY_MODEL) == 8
    # the proprietary kernel module, which drives the V100 too (the open one binds Turing and newer only)
    host.ctl('init', '--hostname', 'mig-node', '--flavor', 'proprietary', *[arg for key in EVERY_MODEL for arg in ('--gpu', key)])
    with open(NVIDIA_CONFIG, encoding='utf-8') as handle:
        config = yaml.safe_load(handle)
    first = _apply(host, mig_parted_config=config, mig_parted_label='all-balanced')
    assert first['changed'] is True and first['reboot_required'] == []
    gpus = host.facts('nvml')['gpus']
    assert {g['name']: _mig_parted_counts(g) for g in gpus if g['mig']['capable']} == BALANCED
    assert [g['name'] for g in gpus if not g['mig']['capable']] == ['NVIDIA A40', 'Tesla T4', 'Tesla V100-SXM2-32GB']
    assert [host.resets()[g['index']] for g in gpus if not g['mig']['capable']] == [0, 0, 0]
    mutations, resets = host.mutations(), host.resets()
    again = _apply(host, mig_parted_config=config, mig_parted_label='all-balanced')
    assert again['changed'] is False and again['steps'] == [] and host.mutations() == mutations and host.resets() == resets
    # the export names each model by its device-filter, and applies to this host without a change
    exported = again['mig_parted']['mig-configs']['all-balanced']
    assert [(e['device-filter'], e['devices']) for e in exported] == [  # GPUs of one state share an entry, as mig-parted exports
        ('0x20B010DE', 'all'), (['0x20B210DE', '0x233010DE'], 'all'), ('0x20B710DE', 'all'),
        (['0x1DB510DE', '0x1EB810DE', '0x223510DE'], 'all'), ('0x233510DE', 'all')]
    assert [e['mig-enabled'] for e in exported] == [True, True, True, False, True]
    assert _apply(host, mig_parted_config=again['mig_parted'], mig_parted_label='all-balanced')['changed'] is False
    assert host.mutations() == mutations
    # another multi-model label moves every model it names, and only those
    moved = _apply(host, mig_parted_config=config, mig_parted_label='all-1g.10gb')
    assert sorted({s['gpu'] for s in moved['applied']}) == [g['index'] for g in gpus if g['name'] in (
        'NVIDIA A100-SXM4-40GB', 'NVIDIA A100-SXM4-80GB', 'NVIDIA H100 80GB HBM3')]
    after = {g['name']: _mig_parted_counts(g) for g in host.facts('nvml')['gpus'] if g['mig']['capable']}
    assert after == dict(BALANCED, **{'NVIDIA A100-SXM4-40GB': {'1g.10gb': 4}, 'NVIDIA A100-SXM4-80GB': {'1g.10gb': 7},
                                      'NVIDIA H100 80GB HBM3': {'1g.10gb': 7}})


def test_a_mig_parted_label_that_selects_a_gpu_it_cannot_serve_is_refused_with_zero_mutations(host):
    """all-1g.5gb (devices: all) on a host with an H100: mig-parted refuses the profile the model lacks; so does this,
    before any change, naming the entry and the GPU."""
    _init(host, 'a100-sxm4-40gb:1', H100 + ':1')
    with open(NVIDIA_CONFIG, encoding='utf-8') as handle:
        config = yaml.safe_load(handle)
    result = _apply(host, mig_parted_config=config, mig_parted_label='all-1g.5gb', expect_failure=True)
    assert len(result['errors']) == 1 and "GPU 1 (" in result['errors'][0] and "entry 'all-1g.5gb[0]'" in result['errors'][0]
    assert 'profile 1g.5gb is not offered by this GPU' in result['errors'][0] and 'nothing was changed' in result['msg']
    assert host.mutations() == 0 and host.resets() == [0, 0]


def test_a_bad_mig_parted_config_is_refused_with_zero_mutations(host):
    _init(host, H100 + ':1')
    result = _apply(host, mig_parted_config=MIG_PARTED, mig_parted_label='missing', expect_failure=True)
    assert "no label 'missing'" in result['msg'] and host.mutations() == 0


def test_export_changes_nothing_and_reports_both_formats(host):
    _init(host, H100 + ':2')
    _apply(host, NATIVE)
    with open(os.path.join(host.root, 'state.json'), 'rb') as handle:
        state = handle.read()
    result = _apply(host, export=True, mig_parted_label='snapshot')
    assert result['changed'] is False and result['steps'] == []
    with open(os.path.join(host.root, 'state.json'), 'rb') as handle:
        assert handle.read() == state
    assert result['declaration'][0]['instances'] == [{'profile': '2g.20gb', 'start': 0}, {'profile': '1g.10gb', 'start': 2},
                                                     {'profile': '1g.10gb', 'start': 3},
                                                     {'profile': '3g.40gb', 'start': 4, 'compute_instances': ['1c', '1c', '1c']}]
    assert set(result['mig_parted']['mig-configs']) == {'snapshot'}
    assert _apply(host, result['declaration'])['changed'] is False
    assert 'takes no declaration' in _apply(host, NATIVE, export=True, expect_failure=True)['msg']


def test_without_pynvml_the_module_fails_naming_the_library(host, tmp_path):
    _init(host, H100 + ':1')
    shadow = tmp_path / 'no-pynvml'
    shadow.mkdir()
    (shadow / 'pynvml.py').write_text("raise ImportError('No module named pynvml')\n")
    result = host.module('mig_layout', {'config': NATIVE[:1]}, extra_path=str(shadow))
    assert result['failed'] and 'nvidia-ml-py' in result['msg']
