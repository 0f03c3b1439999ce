# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_cdi: a CDI spec parses (JSON, PyYAML, or the collection's own reader of the toolkit's YAML, which agree), a broken
or foreign file is refused naming it, and a spec is compared with what NVML reports: exact match, a MIG layout change
(stale and missing devices named), a GPU gone, a device plugin's view of a lost GPU."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _cdi, _sysfs

FIXTURES = Path(__file__).resolve().parents[2] / 'fixtures' / 'cdi'
SPEC_TEXT = (FIXTURES / 'h100x2-mig.yaml').read_text()
GPU0 = 'GPU-c80a3fcc-5153-573f-b1f1-1a2f301477fb'
GPU1 = 'GPU-0e430d08-868b-563d-a7cb-fac1e914b163'
# The driver's capability minors of the fixture's host: GPU 0 holds GPU instances 3 and 9, one compute instance each.
CAPS = {'gpu0/gi3': 30, 'gpu0/gi3/ci0': 31, 'gpu0/gi9': 84, 'gpu0/gi9/ci0': 85}


def gpu(index, uuid, instances=None, mig=True, status='ok'):
    return {'index': index, 'uuid': uuid, 'minor_number': None, 'status': status,
            'mig': {'current': mig, 'gpu_instances': [
                {'id': gi, 'profile': profile, 'compute_instances': [{'id': ci} for ci in cis]}
                for gi, profile, cis in instances or []]}}


def observed(gpus, caps=None):
    return _cdi.observed_devices(gpus, CAPS if caps is None else caps)


NOW = [gpu(0, GPU0, [(3, '3g.40gb', [0]), (9, '1g.10gb', [0])]), gpu(1, GPU1, mig=False)]


def test_the_own_yaml_reader_agrees_with_pyyaml_and_json():
    ours = _cdi.parse(SPEC_TEXT, 'nvidia.yaml')
    assert ours == yaml.safe_load(SPEC_TEXT)
    assert _cdi.parse(json.dumps(ours), 'nvidia.json') == ours
    assert _cdi.parse(SPEC_TEXT, 'nvidia.yaml', yaml.safe_load) == ours
    assert _cdi.device_names(ours)[:3] == ['0', GPU0, '1']


def test_the_reader_takes_flow_lists_quotes_comments_and_indented_sequences():
    text = ("# written by hand\ncdiVersion: '0.5.0'\nkind: nvidia.com/gpu\ndevices:\n  - name: \"0:0\"  \n"
            "    containerEdits:\n      deviceNodes: [] # none\n      env: [A=1, B=2]\n")
    assert _cdi.parse(text, 'x.yaml') == {'cdiVersion': '0.5.0', 'kind': 'nvidia.com/gpu', 'devices': [
        {'name': '0:0', 'containerEdits': {'deviceNodes': [], 'env': ['A=1', 'B=2']}}]}


@pytest.mark.parametrize('text, reason', [
    ('cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- name: "0"\n   containerEdits: {}\n', 'does not parse'),
    ('{"cdiVersion": "0.5.0", "kind": "nvidia.com/gpu", "devices": [}', 'does not parse'),
    ('cdiVersion: 0.5.0\nkind: gpu\ndevices: []\n', 'kind "gpu" is not vendor.com/class'),
    ('cdiVersion: five\nkind: nvidia.com/gpu\ndevices: []\n', 'cdiVersion "five"'),
    ('cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- name: _x\n  containerEdits: {}\n', 'no valid name'),
    ('cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- name: a\n', 'device a has no containerEdits'),
    ('cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- name: a\n  containerEdits: {devices: 1}\n', 'does not parse'),
    ('cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- name: a\n  containerEdits:\n    envs: []\n',
     'unknown containerEdits field envs'),
    ('- just\n- a list\n', 'not a mapping'),
])
def test_a_broken_spec_is_refused_naming_the_file(text, reason):
    with pytest.raises(_cdi.CdiError) as err:
        _cdi.parse(text, '/etc/cdi/nvidia.yaml')
    assert str(err.value).startswith('/etc/cdi/nvidia.yaml ')
    assert reason in str(err.value)


def test_a_spec_of_the_current_devices_matches():
    result = _cdi.compare(_cdi.parse(SPEC_TEXT, 'x'), observed(NOW))
    assert result == {'missing': [], 'stale': [], 'matches': True}


def test_a_spec_from_before_a_mig_change_names_stale_and_missing_devices():
    # GPU instance 9 was destroyed, GPU instance 1 (a 4g) made in its place; the driver lists the new one's minors
    now = [gpu(0, GPU0, [(1, '4g.40gb', [0]), (3, '3g.40gb', [0])]), gpu(1, GPU1, mig=False)]
    caps = {'gpu0/gi1': 12, 'gpu0/gi1/ci0': 13, 'gpu0/gi3': 30, 'gpu0/gi3/ci0': 31}
    result = _cdi.compare(_cdi.parse(SPEC_TEXT, 'x'), observed(now, caps))
    assert result['matches'] is False
    assert result['missing'] == ['MIG device of GPU 0 (%s): GPU instance 1, compute instance 0 (4g.40gb)' % GPU0]
    assert result['stale'] == ['0:1 (no such MIG device now)', 'MIG-98ebc00f-d261-5384-a2f8-1559d5917735 (no such MIG device now)']


def test_mig_disabled_makes_every_mig_device_stale_and_a_new_gpu_missing():
    now = [gpu(0, GPU0, mig=False), gpu(1, GPU1, mig=False), gpu(2, 'GPU-new')]
    result = _cdi.compare(_cdi.parse(SPEC_TEXT, 'x'), observed(now, {}))
    assert result['missing'] == ['GPU 2 (GPU-new)']
    assert [s.split()[0] for s in result['stale']] == [
        '0:0', 'MIG-dc34bd17-17d4-56ec-8cae-40aae1e4214c', '0:1', 'MIG-98ebc00f-d261-5384-a2f8-1559d5917735']


def test_a_gpu_in_another_slot_and_a_spec_without_all():
    spec = _cdi.parse(SPEC_TEXT, 'x')
    spec['devices'] = [d for d in spec['devices'] if d['name'] != 'all']
    now = [gpu(0, GPU1, mig=False), gpu(1, GPU0, [(3, '3g.40gb', [0]), (9, '1g.10gb', [0])])]
    result = _cdi.compare(spec, observed(now))
    assert result['missing'] == ['all']  # both UUIDs are there, with their own nodes
    assert result['stale'] == ['0 (its device node is not /dev/nvidia1)', '1 (its device node is not /dev/nvidia0)']


def test_a_gpu_whose_node_changed_is_stale_and_a_lost_gpu_is_not_compared():
    now = copy.deepcopy(NOW)
    now[1]['minor_number'] = 7
    result = _cdi.compare(_cdi.parse(SPEC_TEXT, 'x'), observed(now))
    assert result['stale'] == [GPU1 + ' (its device node is not /dev/nvidia7)', '1 (its device node is not /dev/nvidia7)']
    now[1]['status'] = 'lost'
    assert _cdi.compare(_cdi.parse(SPEC_TEXT, 'x'), observed(now))['stale'] == ['1 (no such GPU now)', GPU1 + ' (no such GPU now)']


def test_cap_minors_are_read_from_the_driver_tree(tmp_path):
    access = tmp_path / 'gpu0' / 'mig' / 'gi3' / 'ci0'
    access.mkdir(parents=True)
    (access / 'access').write_text('DeviceFileMinor: 31\nDeviceFileMode: 292\nDeviceFileModify: 1\n')
    (access.parent / 'access').write_text('DeviceFileMinor: 30\nDeviceFileMode: 292\nDeviceFileModify: 1\n')
    (tmp_path / 'gpu0' / 'mig' / 'gi4').mkdir()
    (tmp_path / 'gpu0' / 'mig' / 'gi4' / 'access').write_text('garbage')
    assert _sysfs.read_mig_capabilities(str(tmp_path)) == {'gpu0/mig/gi3/access': 30, 'gpu0/mig/gi3/ci0/access': 31}
    assert _sysfs.read_mig_capability_minors(str(tmp_path)) == {'gpu0/gi3': 30, 'gpu0/gi3/ci0': 31}


def test_verification_reports_what_gpu_cdi_fails_on_as_a_result():
    """gpu_facts' cdi option: the same comparison as gpu_cdi, its failures as matches=false with the reason."""
    assert _cdi.verification(SPEC_TEXT, '/etc/cdi/nvidia.yaml', observed(NOW)) == {
        'toolkit_installed': True, 'spec_path': '/etc/cdi/nvidia.yaml', 'matches': True, 'missing': [], 'stale': [], 'msg': '',
        'devices': _cdi.device_names(_cdi.parse(SPEC_TEXT, 'x')), 'cdi_version': _cdi.parse(SPEC_TEXT, 'x')['cdiVersion']}
    now = [gpu(0, GPU0, [(3, '3g.40gb', [0])]), gpu(1, GPU1, mig=False)]
    stale = _cdi.verification(SPEC_TEXT, '/etc/cdi/nvidia.yaml', observed(now, {'gpu0/gi3': 30, 'gpu0/gi3/ci0': 31}), yaml.safe_load)
    assert stale['matches'] is False and stale['missing'] == []
    assert stale['msg'] == ('the CDI spec /etc/cdi/nvidia.yaml does not match the devices NVML reports: stale: '
                            '0:1 (no such MIG device now), MIG-98ebc00f-d261-5384-a2f8-1559d5917735 (no such MIG device now)')
    missing = _cdi.verification(None, '/etc/cdi/nvidia.yaml', observed(NOW))
    assert (missing['matches'], missing['msg']) == (False, '/etc/cdi/nvidia.yaml does not exist: no CDI spec to verify')
    broken = _cdi.verification('cdiVersion: [', '/etc/cdi/nvidia.yaml', observed(NOW))
    assert broken['matches'] is False and '/etc/cdi/nvidia.yaml' in broken['msg'], broken
