# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpu_settings, unchanged, against simulated hosts (module runs as subprocesses, NVML and nvidia-smi stand-ins): the
rollback sweep (a fault at each step of a plan that holds every kind of GPU step leaves every GPU as it was), check
mode, and the NVML errors a declaration meets (NOT_SUPPORTED where the model lacks a setting).

What the GPUs hold is read from the simulator's state, never from the module's report.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from simhost import MODULES, SimHost  # noqa: E402 pylint: disable=import-error,wrong-import-position

H200 = 'h200-141gb'
# The NVML call behind each GPU step (the reset goes through nvidia-smi).
NVML_CALL = {'set_ecc_mode': 'nvmlDeviceSetEccMode', 'set_compute_mode': 'nvmlDeviceSetComputeMode',
             'set_power_limit': 'nvmlDeviceSetPowerManagementLimit', 'set_applications_clocks': 'nvmlDeviceSetApplicationsClocks',
             'set_gpu_locked_clocks': 'nvmlDeviceSetGpuLockedClocks', 'set_memory_locked_clocks': 'nvmlDeviceSetMemoryLockedClocks'}
PREVIOUS = [{'devices': [0], 'power_limit': 600, 'gpu_locked_clocks': {'min': 1000, 'max': 1200}},
            {'devices': [1], 'applications_clocks': {'memory': 2201, 'graphics': 1410}, 'compute_mode': 'prohibited'}]
DECLARED = [{'devices': [0], 'ecc': False, 'power_limit': '50%', 'compute_mode': 'exclusive_process',
             'gpu_locked_clocks': {'min': 1500, 'max': 1980}, 'memory_locked_clocks': {'min': 2201, 'max': 3201}},
            {'devices': [1], 'applications_clocks': 'default', 'compute_mode': 'default', 'power_limit': '300 W'}]
ACTIONS = ['set_ecc_mode', 'reset_gpu', 'set_compute_mode', 'set_power_limit', 'set_gpu_locked_clocks', 'set_memory_locked_clocks',
           'set_compute_mode', 'set_power_limit', 'set_applications_clocks']


def held(host: SimHost) -> list[tuple]:
    """Per GPU, from the simulator's state: ECC (current, pending), compute mode, power limit, application and locked clocks
    (a setting never set is its default, as NVML reports it: 700 W, 3201/1980 MHz)."""
    return [((g['ecc']['current'], g['ecc']['pending']), g.get('compute_mode', 0), g.get('power_limit_mw', 700000),
             g.get('applications_clocks') or {'graphics': 1980, 'mem': 3201}, g.get('locked_clocks')) for g in host.state()['gpus']]


def _module(host: SimHost, args: dict, check_mode: bool) -> dict:
    """gpu_settings as Ansible runs it, in a PID namespace of its own where we are root: the simulated GPUs are held by
    nobody, whatever else runs on this machine (fleet hosts' exporters show in its /proc with /dev/nvidia0 open)."""
    isolate = ['unshare', '--pid', '--fork', '--mount-proc'] if os.geteuid() == 0 and shutil.which('unshare') else []
    payload = json.dumps({'ANSIBLE_MODULE_ARGS': dict(args, _ansible_check_mode=check_mode)})
    proc = subprocess.run(isolate + [sys.executable, os.path.join(MODULES, 'gpu_settings.py')], input=payload, capture_output=True, text=True,
                          env=host.env, check=False)
    try:
        return json.loads(proc.stdout)
    except ValueError as exc:
        raise AssertionError('gpu_settings printed no JSON result: %s %s' % (proc.stdout, proc.stderr)) from exc


def _run(host: SimHost, config, record: str, check_mode: bool = False, expect_failure: bool = False) -> dict:
    result = _module(host, {'config': config, 'state_file': record}, check_mode)
    assert bool(result.get('failed')) == expect_failure, result.get('msg') or result
    return result


@pytest.fixture(name='sweep', scope='module')
def sweep_fixture(tmp_path_factory):
    """A host in PREVIOUS (state and locked-clock record saved), and the plan to DECLARED."""
    root = tmp_path_factory.mktemp('previous')
    host = SimHost(str(root / 'gpusim'))
    host.ctl('init', '--hostname', 'node1', '--gpu', H200 + ':2')
    record = str(root / 'record.json')
    _run(host, PREVIOUS, record)
    plan = _run(host, DECLARED, record, check_mode=True)
    return host, record, held(host), plan['steps']


def test_check_mode_changes_nothing_and_plans_every_kind_of_step(sweep):
    host, _record, previous, steps = sweep
    assert [s['action'] for s in steps] == ACTIONS
    assert held(host) == previous
    assert previous[0] == ((1, 1), 0, 600000, {'graphics': 1980, 'mem': 3201}, {'gpu': [1000, 1200]})


def _clone(sweep, tmp_path) -> tuple[SimHost, str]:
    host, record, _previous, _steps = sweep
    clone = SimHost(str(tmp_path / 'gpusim'))
    os.makedirs(clone.root)
    shutil.copy(os.path.join(host.root, 'state.json'), os.path.join(clone.root, 'state.json'))
    shutil.copy(record, str(tmp_path / 'record.json'))
    return clone, str(tmp_path / 'record.json')


@pytest.mark.parametrize('position', range(len(ACTIONS)))
def test_a_fault_at_any_step_rolls_every_gpu_back(sweep, tmp_path, position):
    host, record = _clone(sweep, tmp_path)
    steps = sweep[3]
    step = steps[position]
    if step['action'] == 'reset_gpu':
        fake = tmp_path / 'bin'
        fake.mkdir()
        (fake / 'nvidia-smi').write_text('#!/bin/sh\necho "Unable to reset GPU $3: Unknown Error"\nexit 255\n')
        (fake / 'nvidia-smi').chmod(0o755)
        host.env['PATH'] = str(fake) + os.pathsep + host.env['PATH']
    else:
        nth = sum(1 for s in steps[:position + 1] if s['action'] == step['action'] and s['gpu'] == step['gpu'])
        host.ctl('fault', 'set', '--gpu', str(step['gpu']), '--call', NVML_CALL[step['action']], '--error', 'NVML_ERROR_UNKNOWN', '--nth', str(nth))
    result = _run(host, DECLARED, record, expect_failure=True)
    assert result['failure']['step_number'] == position + 1 and result['failure']['step']['action'] == ACTIONS[position]
    assert result['rollback']['restored'] is True, result['msg']
    assert 'rolled back' in result['msg']
    host.ctl('fault', 'clear')
    assert held(host) == sweep[2]
    # the record still says which clocks are locked: a run of the previous declaration has nothing to do
    assert _run(host, PREVIOUS, record, check_mode=True)['steps'] == []


def test_a_model_without_clock_control_is_refused_naming_the_setting(tmp_path):
    host = SimHost(str(tmp_path / 'gpusim'))
    host.ctl('init', '--hostname', 'node1', '--gpu', 'a100-sxm4-40gb:1')
    result = _run(host, [{'name': 'bench', 'devices': 'all', 'gpu_locked_clocks': 1200, 'power_limit': 300}], str(tmp_path / 'r.json'),
                  expect_failure=True)
    assert "entry 'bench': gpu_locked_clocks: this GPU does not support clock control" in result['msg']
    assert host.mutations() == 0


def test_a_declaration_refused_by_shape_names_the_entry_and_changes_nothing(tmp_path):
    host = SimHost(str(tmp_path / 'gpusim'))
    host.ctl('init', '--hostname', 'node1', '--gpu', H200 + ':1')
    bad = [{'name': 'x', 'devices': 'all', 'power_limit': 'lots', 'gpu_locked_clocks': {'min': 1500, 'max': 1400},
            'applications_clocks': {'memory': 3201, 'graphics': 1980}}]
    result = _run(host, bad, str(tmp_path / 'r.json'), expect_failure=True)
    assert "entry 'x': power_limit must be watts" in result['msg']
    assert 'min 1500 MHz is above max 1400 MHz' in result['msg']
    assert host.mutations() == 0


def test_persistence_off_without_the_daemon_is_turned_off_gpu_by_gpu_and_rolled_back_on_a_fault(tmp_path):
    """Persistence mode set on the GPUs themselves (nvidia-smi -pm 1) where no nvidia-persistenced is installed: the
    plan turns it off with nvmlDeviceSetPersistenceMode per GPU (stopping a daemon would not), a rerun has nothing to
    do, and a fault on the second GPU turns the first one back on."""
    host = SimHost(str(tmp_path / 'gpusim'))
    host.ctl('init', '--hostname', 'node1', '--gpu', H200 + ':2')
    host.nvml('for i in range(2):\n    pynvml.nvmlDeviceSetPersistenceMode(pynvml.nvmlDeviceGetHandleByIndex(i), 1)')
    assert [g['persistence'] for g in host.state()['gpus']] == [1, 1]
    record, off = str(tmp_path / 'r.json'), [{'devices': 'all', 'persistence': False}]
    plan = _run(host, off, record, check_mode=True)
    assert [(s['action'], s['gpu']) for s in plan['steps']] == [('set_persistence_mode', 0), ('set_persistence_mode', 1)]
    host.ctl('fault', 'set', '--gpu', '1', '--call', 'nvmlDeviceSetPersistenceMode', '--error', 'NVML_ERROR_UNKNOWN', '--nth', '1')
    failed = _run(host, off, record, expect_failure=True)
    assert failed['rollback']['restored'] is True, failed['msg']
    assert [g['persistence'] for g in host.state()['gpus']] == [1, 1]
    host.ctl('fault', 'clear')
    done = _run(host, off, record)
    assert done['changed'] and [g['persistence'] for g in host.state()['gpus']] == [0, 0]
    assert _run(host, off, record, check_mode=True)['steps'] == []
    # on: the supported way is the daemon, which this host does not have: refused, nothing changed
    refused = _run(host, [{'devices': 'all', 'persistence': True}], record, expect_failure=True)
    assert 'needs the nvidia-persistenced service, which is not installed' in refused['msg']
    assert [g['persistence'] for g in host.state()['gpus']] == [0, 0]


def test_the_plan_observes_the_boot_time_service_in_the_same_call(tmp_path):
    """observe (the gpu_settings role's one call on a rerun): host_state's reading of the boot-time files, never
    written, beside the plan; an entry it cannot observe fails the call naming it."""
    host = SimHost(str(tmp_path / 'gpusim'))
    host.ctl('init', '--hostname', 'settings-node', '--gpu', H200 + ':2')
    settings = tmp_path / 'gpu-settings.json'
    observe = {'files': [{'path': str(settings), 'content': '{}\n', 'mode': '0644'}]}
    plan = _module(host, {'config': DECLARED, 'state_file': str(tmp_path / 'record.json'), 'observe': observe}, True)
    assert not plan.get('failed') and plan['steps'], plan
    assert plan['observed'] == {'in_place': False, 'differences': ['%s: does not exist' % settings]} and not settings.exists()
    settings.write_text('{}\n')
    settings.chmod(0o644)
    plan = _module(host, {'config': DECLARED, 'state_file': str(tmp_path / 'record.json'), 'observe': observe}, True)
    assert plan['observed'] == {'in_place': True, 'differences': []}
    bad = _module(host, {'config': DECLARED, 'state_file': str(tmp_path / 'record.json'),
                         'observe': {'files': [{'path': str(settings), 'content': 'unseen-content', 'checksum': '0' * 40}]}}, True)
    assert bad.get('failed') and bad['msg'].startswith('observe: ') and str(settings) in bad['msg'], bad
