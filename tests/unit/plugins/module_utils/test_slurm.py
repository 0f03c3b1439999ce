# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_slurm: the GRES a node's GPUs give, gres.conf and slurm.conf edits, scontrol parsing; _slurm_apply's node actions
with a scripted scontrol/squeue."""
from __future__ import annotations

import pytest

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _commands, _facts, _slurm, _slurm_apply

H100 = 'NVIDIA H100 80GB HBM3'


def whole(index, name=H100):
    gpu = _facts.new_gpu(index)
    gpu['name'] = name
    gpu['mig']['capable'] = True
    gpu['mig']['current'] = False
    return gpu


def mig(index, instances):
    """A MIG GPU with (gi id, profile, profile id, [(ci id, ci slices)]) instances."""
    gpu = whole(index)
    gpu['mig']['current'] = True
    gpu['mig']['profiles'] = [{'id': 9, 'name': '3g.40gb', 'slices': 3}, {'id': 19, 'name': '1g.10gb', 'slices': 1}]
    gpu['mig']['gpu_instances'] = [
        {'id': gi, 'profile': prof, 'profile_id': pid, 'placement': None,
         'compute_instances': [{'id': ci, 'slices': slices, 'profile_id': 0, 'placement': None} for ci, slices in cis]}
        for gi, prof, pid, cis in instances]
    return gpu


def caps(gpu_minor, *gis):
    """cap_path -> minor for GI/CI pairs, with the minors the driver gives (3 + 135*gpu + 9*gi, CI = GI + 1 + ci)."""
    found = {}
    for gi, cis in gis:
        base = 3 + 135 * gpu_minor + 9 * gi
        found[_slurm.cap_path(gpu_minor, gi)] = base
        for ci in cis:
            found[_slurm.cap_path(gpu_minor, gi, ci)] = base + 1 + ci
    return found


def test_a_mig_gpu_gives_one_device_per_compute_instance_and_no_whole_gpu():
    gpus = [mig(0, [(1, '3g.40gb', 9, [(0, 3)]), (11, '1g.10gb', 19, [(0, 1)])]), whole(1)]
    devs, warnings = _slurm.devices(gpus, {0: 0, 1: 1}, caps(0, (1, [0]), (11, [0])), {})
    assert warnings == []
    assert [(d['type'], d['files']) for d in devs] == [
        ('3g.40gb', ['/dev/nvidia0', '/dev/nvidia-caps/nvidia-cap12', '/dev/nvidia-caps/nvidia-cap13']),
        ('1g.10gb', ['/dev/nvidia0', '/dev/nvidia-caps/nvidia-cap102', '/dev/nvidia-caps/nvidia-cap103']),
        ('nvidia_h100_80gb_hbm3', ['/dev/nvidia1'])]
    assert _slurm.gres_string(devs) == 'gpu:3g.40gb:1,gpu:1g.10gb:1,gpu:nvidia_h100_80gb_hbm3:1'
    assert _slurm.gres_lines('n1', devs)[1:-1] == [
        'NodeName=n1 AutoDetect=off Name=gpu Type=3g.40gb MultipleFiles=/dev/nvidia0,/dev/nvidia-caps/nvidia-cap12,/dev/nvidia-caps/nvidia-cap13',
        'NodeName=n1 AutoDetect=off Name=gpu Type=1g.10gb MultipleFiles=/dev/nvidia0,/dev/nvidia-caps/nvidia-cap102,/dev/nvidia-caps/nvidia-cap103',
        'NodeName=n1 AutoDetect=off Name=gpu Type=nvidia_h100_80gb_hbm3 File=/dev/nvidia1']


def test_the_gpu_minor_not_the_index_names_the_device_files():
    devs, _w = _slurm.devices([mig(0, [(2, '3g.40gb', 9, [(0, 3)])]), whole(1)], {0: 4, 1: 7}, caps(4, (2, [0])), {})
    assert devs[0]['files'] == ['/dev/nvidia4', '/dev/nvidia-caps/nvidia-cap561', '/dev/nvidia-caps/nvidia-cap562']
    assert devs[1]['files'] == ['/dev/nvidia7']


def test_compute_instances_smaller_than_their_gpu_instance_are_named_by_slices():
    devs, _w = _slurm.devices([mig(0, [(1, '3g.40gb', 9, [(0, 1), (1, 2)])])], {0: 0}, caps(0, (1, [0, 1])), {})
    assert [d['type'] for d in devs] == ['1c.3g.40gb', '2c.3g.40gb']
    assert _slurm.gres_string(devs) == 'gpu:1c.3g.40gb:1,gpu:2c.3g.40gb:1'


def test_a_gpu_instance_without_compute_instance_gives_a_warning_and_no_device():
    devs, warnings = _slurm.devices([mig(0, [(1, '3g.40gb', 9, [])])], {0: 0}, caps(0, (1, [])), {})
    assert devs == [] and 'GPU instance 1' in warnings[0]
    assert _slurm.gres_string(devs) == ''


def test_a_missing_cap_minor_is_an_error_naming_the_file():
    with pytest.raises(_slurm.SlurmError, match='gpu0/mig/gi1/ci0/access'):
        _slurm.devices([mig(0, [(1, '3g.40gb', 9, [(0, 3)])])], {0: 0}, {_slurm.cap_path(0, 1): 12}, {})


def test_a_lost_gpu_is_an_error():
    gpu = whole(0)
    _facts.mark_lost(gpu, 'GPU is lost')
    with pytest.raises(_slurm.SlurmError, match='GPU 0 is lost'):
        _slurm.devices([gpu], {0: 0}, {}, {})


def test_whole_gpu_types_follow_the_rule_or_the_mapping():
    assert _slurm.whole_gpu_type(H100, {}) == 'nvidia_h100_80gb_hbm3'
    assert _slurm.whole_gpu_type('NVIDIA A100-SXM4-40GB', {}) == 'nvidia_a100-sxm4-40gb'
    assert _slurm.whole_gpu_type(H100, {H100: 'h100'}) == 'h100'
    assert _slurm.validate_types({H100: 'h 100'})[0].startswith("gpu_types['NVIDIA H100 80GB HBM3'] = 'h 100'")
    assert _slurm.validate_types({H100: 'h100'}) == []
    assert _slurm.validate_types(['h100'])


def test_device_minor_files_parse():
    assert _slurm.parse_device_minor('Model: \t\t NVIDIA H100\nIRQ:   \t\t 42\nDevice Minor: \t 3\n') == 3


GRES_CONF = '''# site gres.conf
AutoDetect=off
NodeName=other Name=gpu Type=a100 File=/dev/nvidia[0-3]
NodeName=n1 Name=gpu Type=old File=/dev/nvidia0
NodeName=n1 Name=mps Count=100
NodeName=n1 Name=gpu Type=old File=/dev/nvidia1
NodeName=n[2-3] Name=gpu Type=t4 File=/dev/nvidia0
'''


def test_gres_conf_merge_replaces_only_the_nodes_gpu_lines_and_is_stable():
    block = _slurm.gres_lines('n1', [{'type': 'h100', 'files': ['/dev/nvidia0']}])
    merged = _slurm.merge_gres_conf(GRES_CONF, 'n1', block)
    assert merged == ('# site gres.conf\nAutoDetect=off\nNodeName=other Name=gpu Type=a100 File=/dev/nvidia[0-3]\n'
                      + '\n'.join(block) + '\nNodeName=n1 Name=mps Count=100\nNodeName=n[2-3] Name=gpu Type=t4 File=/dev/nvidia0\n')
    assert _slurm.merge_gres_conf(merged, 'n1', block) == merged
    other = _slurm.gres_lines('n1', [])
    assert _slurm.merge_gres_conf(merged, 'n1', other).count('Type=h100') == 0
    assert _slurm.merge_gres_conf('', 'n1', block) == '\n'.join(block) + '\n'


@pytest.mark.parametrize('text, needle', [
    ('NodeName=n[1-4] Name=gpu File=/dev/nvidia0\n', 'line 1'),
    ('x=1\nName=gpu File=/dev/nvidia0\n', 'line 2'),
])
def test_gres_conf_lines_that_also_apply_to_the_node_are_errors(text, needle):
    with pytest.raises(_slurm.SlurmError, match=needle):
        _slurm.merge_gres_conf(text, 'n1', _slurm.gres_lines('n1', []))


SLURM_CONF = '''ClusterName=c  # comment
GresTypes=gpu,mps
NodeName=DEFAULT CPUs=8
NodeName=n1 NodeAddr=10.0.0.1 CPUs=64 Gres=gpu:h100:8 State=UNKNOWN   # the GPU node
NodeName=n10 CPUs=2
PartitionName=p Nodes=n1,n10
'''


def test_set_node_gres_changes_only_that_token():
    new = _slurm.set_node_gres(SLURM_CONF, 'n1', 'gpu:3g.40gb:2,gpu:h100:7')
    assert new == SLURM_CONF.replace('Gres=gpu:h100:8', 'Gres=gpu:3g.40gb:2,gpu:h100:7')
    assert _slurm.set_node_gres(new, 'n1', 'gpu:3g.40gb:2,gpu:h100:7') == new
    added = _slurm.set_node_gres(SLURM_CONF, 'n10', 'gpu:t4:1')
    assert added == SLURM_CONF.replace('NodeName=n10 CPUs=2', 'NodeName=n10 CPUs=2 Gres=gpu:t4:1')
    removed = _slurm.set_node_gres(SLURM_CONF, 'n1', '')
    assert 'Gres' not in removed.splitlines()[3] and removed.splitlines()[3].endswith('# the GPU node')
    assert _slurm.set_node_gres(SLURM_CONF.rstrip('\n'), 'n10', 'gpu:t4:1').endswith('PartitionName=p Nodes=n1,n10')


@pytest.mark.parametrize('text, node, needle', [
    ('GresTypes=gpu\nNodeName=gpu[01-04] CPUs=2\n', 'gpu03', r'gpu03 is in a host range \(line 2 NodeName=gpu\[01-04\]\)'),
    ('GresTypes=gpu\nNodeName=a CPUs=2\n', 'b', 'no NodeName=b line'),
    ('GresTypes=gpu\nNodeName=a\nNodeName=a\n', 'a', '2 NodeName=a lines'),
    ('NodeName=a CPUs=2\n', 'a', 'GresTypes'),
    ('GresTypes=gpu\nNodeName=a CPUs=2 \\\n  Gres=gpu:1\n', 'a', 'continues'),
])
def test_set_node_gres_errors_name_the_problem(text, node, needle):
    with pytest.raises(_slurm.SlurmError, match=needle):
        _slurm.set_node_gres(text, node, 'gpu:x:1')


def test_hostlists_expand():
    assert _slurm.expand_hostlist('gpu[01-03,07],cpu1') == ['gpu01', 'gpu02', 'gpu03', 'gpu07', 'cpu1']
    assert _slurm.expand_hostlist('n[1-2]x[1-2]') == ['n1x1', 'n1x2', 'n2x1', 'n2x2']


SHOW = ('NodeName=n1 Arch=x86_64 CoresPerSocket=1 CPUAlloc=0 Gres=gpu:3g.40gb:1(S:0),gpu:h100:1 NodeAddr=127.0.0.1 '
        'State=IDLE+DRAIN ThreadsPerCore=1 Partitions=gpu Reason=gpuvirt.fleet: GPU reconfiguration [root@2026-12-04T18:29:54]')


def test_show_node_parses_state_flags_reason_and_gres():
    node = _slurm.parse_show_node(SHOW)
    assert node['state'] == 'IDLE+DRAIN' and node['flags'] == ['DRAIN'] and node['base_state'] == 'IDLE'
    assert node['reason'] == 'gpuvirt.fleet: GPU reconfiguration [root@2026-12-04T18:29:54]'
    assert _slurm.gres_counts(node['gres']) == {'gpu:3g.40gb': 1, 'gpu:h100': 1}
    assert not _slurm.usable(node) and _slurm.usable(node, allow_drain=True) and _slurm.registered(node)
    assert _slurm.parse_show_node('Node n9 not found') is None


@pytest.mark.parametrize('state, usable, registered', [
    ('IDLE', True, True), ('MIXED', True, True), ('ALLOCATED', True, True), ('IDLE+DRAIN+INVALID_REG', False, True),
    ('DOWN+NOT_RESPONDING', False, False), ('UNKNOWN+DRAIN', False, False), ('IDLE*', False, False), ('DOWN', False, True),
])
def test_usable_states(state, usable, registered):
    node = _slurm.parse_show_node('NodeName=n1 Gres=(null) State=%s Partitions=p' % state)
    assert (_slurm.usable(node), _slurm.registered(node)) == (usable, registered)
    assert node['gres'] == ''


# ---- node actions against a scripted scontrol ---------------------------------------------------------------------

class FakeSlurm:
    """scontrol/squeue: `states` are returned by show in turn (the last repeats); jobs end after `jobs_for` polls."""

    def __init__(self, states, jobs=(), jobs_for=0, refuse=False):
        self.states, self.jobs, self.jobs_for, self.refuse = list(states), list(jobs), jobs_for, refuse
        self.updates = []

    def __call__(self, argv, environ_update=None):
        if argv[1:3] == ['show', 'node']:
            state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
            return 0, 'NodeName=n1 Gres=%s State=%s Reason=x\n' % state, ''
        if argv[0] == 'squeue':
            self.jobs_for -= 1
            return 0, '\n'.join(self.jobs) + '\n' if self.jobs_for >= 0 else '', ''
        self.updates.append(argv[2:])
        return (1, '', 'slurm_update error: Invalid node state specified') if self.refuse else (0, '', '')


class Module:
    check_mode = False


def params(action, **extra):
    base = {'name': 'n1', 'action': action, 'reason': 'r', 'timeout': 1, 'poll_interval': 0.01, 'expected_gres': None,
            'keep_drained': False, 'scontrol': 'scontrol', 'squeue': 'squeue'}
    return dict(base, **extra)


def test_drain_waits_for_the_jobs_then_reports_whether_drained_before():
    fake = FakeSlurm([('gpu:h100:2', 'MIXED')], jobs=['17'], jobs_for=3)
    result = _slurm_apply.node_action(Module(), _commands.Runner(fake), params('drain'))
    assert not result['failed'] and result['changed'] and result['drained_before'] is False and result['jobs'] == []
    assert fake.updates == [['nodename=n1', 'state=drain', 'reason=r']]
    again = _slurm_apply.node_action(Module(), _commands.Runner(FakeSlurm([('gpu:h100:2', 'IDLE+DRAIN')])), params('drain'))
    assert again['drained_before'] is True and not again['changed']
    ours = _slurm_apply.node_action(Module(), _commands.Runner(FakeSlurm([('gpu:h100:2', 'IDLE+DRAIN')])), params('drain', reason='x'))
    assert ours['drained_before'] is False, 'a drain with our own reason (an earlier failed run) is ours to resume'


def test_drain_timeout_fails_naming_node_timeout_and_jobs():
    fake = FakeSlurm([('gpu:h100:2', 'MIXED')], jobs=['17', '18'], jobs_for=10 ** 6)
    result = _slurm_apply.node_action(Module(), _commands.Runner(fake), params('drain', timeout=0))
    assert result['failed'] and result['msg'] == 'node n1 still runs jobs 17, 18 after the drain timeout of 0s'


def test_resume_waits_for_a_valid_registration_before_resuming():
    fake = FakeSlurm([('gpu:h100:2', 'UNKNOWN+DRAIN'), ('gpu:h100:2', 'IDLE+DRAIN+INVALID_REG'), ('gpu:1g.10gb:2', 'IDLE+DRAIN'),
                      ('gpu:1g.10gb:2', 'IDLE')])
    result = _slurm_apply.node_action(Module(), _commands.Runner(fake), params('resume', expected_gres='gpu:1g.10gb:2', timeout=5))
    assert not result['failed'] and result['changed'] and fake.updates == [['nodename=n1', 'state=resume']]


def test_resume_fails_naming_state_and_reason_when_the_node_stays_invalid():
    fake = FakeSlurm([('gpu:h100:2', 'IDLE+DRAIN+INVALID_REG')])
    result = _slurm_apply.node_action(Module(), _commands.Runner(fake), params('resume', timeout=0))
    assert result['failed'] and 'state IDLE+DRAIN+INVALID_REG, reason x' in result['msg'] and fake.updates == []


def test_a_node_drained_by_somebody_else_is_never_resumed():
    fake = FakeSlurm([('gpu:1g.10gb:2', 'IDLE+DRAIN')])
    result = _slurm_apply.node_action(Module(), _commands.Runner(fake), params('resume', keep_drained=True, expected_gres='gpu:1g.10gb:2'))
    assert not result['failed'] and not result['changed'] and fake.updates == []


def test_wait_fails_when_the_gres_differs():
    fake = FakeSlurm([('gpu:h100:2', 'IDLE')])
    result = _slurm_apply.node_action(Module(), _commands.Runner(fake), params('wait', expected_gres='gpu:1g.10gb:2', timeout=0))
    assert result['failed'] and result['msg'] == 'node n1 reports Gres=gpu:h100:2, the GPUs give Gres=gpu:1g.10gb:2'


# ---- the /proc reads of the seam ------------------------------------------------------------------------------------

def test_cap_minors_and_gpu_minors_are_read_from_the_driver_tree(tmp_path):
    from ansible_collections.gpuvirt.fleet.plugins.module_utils import _slurm_host
    caps_root = tmp_path / 'capabilities'
    (caps_root / 'gpu2' / 'mig' / 'gi1' / 'ci0').mkdir(parents=True)
    (caps_root / 'mig').mkdir()
    (caps_root / 'mig' / 'config').write_text('DeviceFileMinor: 1\n')
    (caps_root / 'gpu2' / 'mig' / 'gi1' / 'access').write_text('DeviceFileMinor: 282\nDeviceFileMode: 292\nDeviceFileModify: 1\n')
    (caps_root / 'gpu2' / 'mig' / 'gi1' / 'ci0' / 'access').write_text('DeviceFileMinor: 283\nDeviceFileMode: 292\nDeviceFileModify: 1\n')
    assert _slurm_host.cap_minors(str(caps_root)) == {'gpu2/mig/gi1/access': 282, 'gpu2/mig/gi1/ci0/access': 283}
    gpus = [whole(0), whole(1), whole(2)]
    gpus[0]['minor_number'] = 5
    gpus[1]['pci']['bus_id'] = '00000000:1B:00.0'
    (tmp_path / 'gpus' / '0000:1b:00.0').mkdir(parents=True)
    (tmp_path / 'gpus' / '0000:1b:00.0' / 'information').write_text('Model: \t\t NVIDIA H100\nDevice Minor: \t 3\n')
    minors, warnings = _slurm_host.gpu_minors(gpus, str(tmp_path / 'gpus'))
    assert minors == {0: 5, 1: 3, 2: 2}
    assert len(warnings) == 1 and warnings[0].startswith('GPU 2: no Device Minor')
