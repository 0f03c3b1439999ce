# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pure parts of the apply side: the rollback plan, layouts, step texts, and the nvidia-smi reset seam."""
from __future__ import annotations

import pytest

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _mig, _mig_apply, _smi

from mig_support import apply_on_sim, model_gpu  # pylint: disable=import-error

H100, A30 = 'h100-80gb-hbm3', 'a30'

# (model, GPU before, declaration): plans whose every prefix is a state a failure can leave behind
SCENARIOS = {
    'one of seven 1g changes': (H100, dict(instances=tuple(('1g.10gb', s) for s in range(7))),
                                [{'devices': 'all', 'instances': [{'profile': '1g.10gb', 'count': 6}, {'profile': '1g.10gb+me'}]}]),
    'compute instances regrouped': (H100, dict(instances=(('3g.40gb', 0, [1, 1, 1]), ('2g.20gb', 4), ('1g.10gb', 6))),
                                    [{'devices': 'all', 'instances': [{'profile': '3g.40gb', 'start': 0, 'compute_instances': ['1c', '2c']},
                                                                      {'profile': '1g.10gb', 'count': 3}]}]),
    'MIG enabled with instances': (H100, dict(current=False), [{'devices': 'all', 'instances': [{'profile': '4g.40gb'}, {'profile': '3g.40gb'}]}]),
    'MIG disabled': (H100, dict(instances=(('7g.80gb', 0, [2, 2, 2, 1]),)), [{'devices': 'all', 'enabled': False}]),
    'wipe and rebuild': (A30, dict(instances=(('2g.12gb', 0), ('1g.6gb', 2), ('1g.6gb', 3))),
                         [{'devices': 'all', 'instances': [{'profile': '4g.24gb', 'compute_instances': ['1c', '1c', '2c']}]}]),
    'pending mode restored': (H100, dict(current=False, pending=True), [{'devices': 'all', 'enabled': False}]),
}


def _placements(gpu: dict) -> tuple:
    return _mig_apply.layout(gpu)


@pytest.mark.parametrize('name', sorted(SCENARIOS))
def test_restore_steps_bring_back_the_previous_layout_from_every_point_of_a_plan(name):
    key, spec, declaration = SCENARIOS[name]
    before = model_gpu(key, **spec)
    steps = _mig.plan_host('node1', [before], declaration).steps
    assert steps, 'the scenario must change something'
    for done in range(len(steps) + 1):
        now = apply_on_sim([before], steps[:done], {0: key})[0]
        restore = _mig_apply.restore_steps(before, now)
        back = apply_on_sim([now], restore, {0: key})[0]
        assert _placements(back) == _placements(before), (done, restore)
        assert _mig_apply.restore_steps(before, back) == []


def test_restore_leaves_the_instances_both_layouts_share_alone():
    before = model_gpu(H100, instances=tuple(('1g.10gb', s) for s in range(7)))
    now = model_gpu(H100, instances=tuple(('1g.10gb', s) for s in range(6)) + (('1g.10gb+me', 6),))
    steps = _mig_apply.restore_steps(before, now)
    assert [(s['action'], s.get('gpu_instance_start', s.get('start'))) for s in steps] == [
        ('destroy_compute_instance', None), ('destroy_gpu_instance', 6), ('create_gpu_instance', 6), ('create_compute_instance', 6)]
    assert steps[0]['gpu_instance_id'] == 13 and steps[1]['profile'] == '1g.10gb+me' and steps[2]['profile'] == '1g.10gb'


def test_restore_puts_compute_instances_back_at_their_placements():
    before = model_gpu(H100, instances=(('3g.40gb', 4, [(1, 2)]),))  # one 1c at start 2, where first fit would not put it
    now = model_gpu(H100, instances=(('3g.40gb', 4, [(1, 0)]),))
    steps = _mig_apply.restore_steps(before, now)
    assert [(s['action'], s.get('start')) for s in steps] == [('destroy_compute_instance', None), ('create_compute_instance', 2)]
    assert steps[1]['gpu_instance_id'] == 2  # the kept GPU instance, found by id
    back = apply_on_sim([now], steps, {0: H100})[0]
    assert _mig_apply.layout(back) == _mig_apply.layout(before) != _mig_apply.layout(now)


def test_a_mode_restore_resets_then_recreates_every_previous_instance():
    before = model_gpu(H100, instances=(('7g.80gb', 0),))
    now = model_gpu(H100, current=False, pending=False)
    steps = _mig_apply.restore_steps(before, now)
    assert [s['action'] for s in steps] == ['set_mig_mode', 'reset_gpu', 'create_gpu_instance', 'create_compute_instance']
    assert steps[0]['enabled'] is True and steps[1]['bus_id'] == before['pci']['bus_id']


def test_layout_tells_apart_what_verify_would_call_equal():
    one = model_gpu(H100, instances=(('3g.40gb', 4, [(1, 0)]),))
    other = model_gpu(H100, instances=(('3g.40gb', 4, [(1, 1)]),))
    assert _mig.verify([{'gpu': 0, 'uuid': one['uuid'], 'enabled': True, 'instances': [
        {'profile': '3g.40gb', 'start': 4, 'compute_instances': [1]}]}], [other]) == []
    assert _mig_apply.layout(one) != _mig_apply.layout(other)
    assert _mig_apply.layout(model_gpu(H100, current=True, pending=False)) != _mig_apply.layout(model_gpu(H100))


def test_describe_layout_says_mode_and_instances():
    gpu = model_gpu(H100, instances=(('3g.40gb', 4, [2, 1]), ('1g.10gb', 0)))
    assert _mig_apply.describe_layout(gpu) == 'MIG enabled (pending enabled): 1g.10gb at 0 [1c at 0], 3g.40gb at 4 [1c at 2, 2c at 0]'
    assert _mig_apply.describe_layout(model_gpu(H100, current=False)) == 'MIG disabled (pending disabled): no GPU instances'


def test_every_step_has_words():
    gpu = model_gpu(H100, instances=(('3g.40gb', 4),))
    plan = _mig.plan_host('n', [gpu], [{'devices': 'all', 'enabled': False}])
    texts = [_mig_apply.step_text(s) for s in plan.steps]
    assert texts == ['destroy compute instance 0 (3c.3g.40gb) of GPU instance 2', 'destroy GPU instance 2 (3g.40gb at 4)',
                     'set MIG mode disabled', 'reset the GPU (nvidia-smi -r)']
    create = _mig.plan_host('n', [model_gpu(H100)], [{'devices': 'all', 'instances': [{'profile': '2g.20gb', 'start': 2}]}]).steps
    assert [_mig_apply.step_text(s) for s in create] == ['create GPU instance 2g.20gb at 2',
                                                         'create compute instance 2c.2g.20gb at 0 in the 2g.20gb at 2']


# ---------------------------------------------------------------------------------------------------------
# The nvidia-smi reset seam


class _Recorder:
    """A run_command callable answering with a canned (rc, out, err) and remembering the calls."""

    def __init__(self, rc: int, out: str = '', err: str = ''):
        self.answer = (rc, out, err)
        self.calls: list[list[str]] = []

    def __call__(self, argv):
        self.calls.append(list(argv))
        return self.answer


def test_reset_runs_nvidia_smi_r_for_one_gpu():
    runner = _Recorder(0, 'GPU 00000000:18:00.0 was successfully reset.\n')
    assert 'successfully reset' in _smi.SmiRunner(runner, '/usr/bin/nvidia-smi').reset('00000000:18:00.0')
    assert runner.calls == [['/usr/bin/nvidia-smi', '-r', '-i', '00000000:18:00.0']]


@pytest.mark.parametrize('output, rc', [
    ('\nResetting GPU 00000000:00:04.0 is not supported.\n', 3),
    ('GPU 00000000:18:00.0 cannot be reset in this environment.\n', 3),
    ('Unable to reset GPU 00000000:18:00.0: a reboot is required.\n', 255),
])
def test_a_reset_the_tool_calls_impossible_is_reported_as_such(output, rc):
    with pytest.raises(_smi.SmiResetImpossible) as info:
        _smi.SmiRunner(_Recorder(rc, output), 'nvidia-smi').reset('0')
    assert output.strip() in str(info.value)


def test_a_gpu_in_use_is_a_reset_failure_not_a_reason_to_wait_for_a_reboot():
    output = ('GPU 00000000:18:00.0 is currently in use by another process.\n\n1 device is currently being used by one or more other '
              'processes. Please first kill all processes using this device, or reboot the system.\n')
    with pytest.raises(_smi.SmiError) as info:
        _smi.SmiRunner(_Recorder(255, output), 'nvidia-smi').reset('0')
    assert not isinstance(info.value, _smi.SmiResetImpossible) and 'rc=255' in str(info.value)


def test_smi_runner_takes_an_ansible_module_or_a_plain_callable():
    class FakeModule:
        def __init__(self):
            self.calls = []

        def run_command(self, argv, environ_update=None):
            self.calls.append((argv, environ_update))
            return 0, '<xml/>', ''

    module = FakeModule()
    assert _smi.SmiRunner(module, 'nvidia-smi').query() == '<xml/>'
    assert module.calls == [(['nvidia-smi', '-q', '-x'], {'LC_ALL': 'C'})]
    plain = _Recorder(0, '<xml/>')
    assert _smi.SmiRunner(plain, 'nvidia-smi').query() == '<xml/>' and plain.calls == [['nvidia-smi', '-q', '-x']]


def test_the_default_run_command_reports_a_missing_program():
    rc, out, err = _smi.run_command(['/nonexistent/nvidia-smi', '-L'])
    assert rc == 127 and out == '' and 'nonexistent' in err
    assert _smi.run_command(['sh', '-c', 'echo $LC_ALL'])[1].strip() == 'C'
