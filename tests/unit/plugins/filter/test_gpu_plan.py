# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The gpu_plan filter: a thin wrapper over _capacity.plan, failing with AnsibleFilterError."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.gpuvirt.fleet.plugins.filter.gpu_plan import FilterModule
from ansible_collections.gpuvirt.fleet.plugins.module_utils import _facts, _mig

MODEL = Path(__file__).resolve().parents[4] / 'sim' / 'lib' / 'gpusim' / 'models' / 'a100-sxm4-80gb.json'


def a100(index: int = 0) -> dict:
    model = json.loads(MODEL.read_text(encoding='utf-8'))
    gpu = _facts.new_gpu(index)
    gpu.update(uuid='GPU-a100-%d' % index, name=model['name'])
    gpu['mig'].update(capable=True, current=False, pending=False)
    for raw in model['mig']['gpu_instance_profiles']:
        placements = [{'start': s, 'size': raw['placements']['size']} for s in raw['placements']['starts']]
        gpu['mig']['profiles'].append(_facts.mig_profile(raw['id'], raw['name'], raw['sliceCount'], raw['instanceCount'],
                                                         raw['memorySizeMB'], placements, ofas=raw['ofaCount']))
    return gpu


def gpu_plan(*args, **kwargs):
    return FilterModule().filters()['gpu_plan'](*args, **kwargs)


def test_filter_plans_the_a100_sample_from_hostvars_shaped_input():
    fleet = {'gpu1': {'ansible_facts': {'gpus': [a100()]}}}
    result = gpu_plan(fleet, [{'tenant': 'inference', 'memory_gb': 15, 'count': 4, 'isolation': 'mig'}])
    declaration = result['hosts']['gpu1']['gpu_mig']
    assert declaration[0]['instances'] == [{'profile': '1g.20gb', 'count': 4}]
    assert not _mig.validate('gpu1', [a100()], declaration)
    assert (result['gpus_used'], result['lower_bound']) == (1, 1)


def test_filter_passes_headroom_and_names_the_shortfall():
    with pytest.raises(AnsibleFilterError) as info:
        gpu_plan({'gpu1': [a100()]}, [{'tenant': 'inference', 'memory_gb': 15, 'count': 4}], headroom_percent=10)
    assert "tenant 'inference'" in str(info.value) and '1 of 4' in str(info.value) and '15 GB more memory' in str(info.value)


@pytest.mark.parametrize('fleet, demands, needle', [
    ({'gpu1': [a100()]}, 'text', 'gpu_demands must be a list'),
    ('text', [], 'mapping of host'),
    ({'gpu1': [{'mig': {}}]}, [{'tenant': 'x', 'memory_gb': 1}], 'malformed GPU facts'),
])
def test_filter_rejects_bad_input(fleet, demands, needle):
    with pytest.raises(AnsibleFilterError, match=needle):
        gpu_plan(fleet, demands)
