# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.gpuvirt.fleet.plugins.filter.gpu_summary import FilterModule
from ansible_collections.gpuvirt.fleet.plugins.module_utils import _facts


def test_filter_is_registered_and_summarises_facts():
    host = _facts.new_host('nvidia-smi')
    host['driver_error'] = 'no NVIDIA driver'
    assert FilterModule().filters()['gpu_summary']({'gpu_host': host, 'gpus': []}) == 'no GPUs visible (no NVIDIA driver)'


@pytest.mark.parametrize('bad', [None, {}, {'gpus': []}, 'text'])
def test_filter_rejects_input_that_is_not_gpu_facts(bad):
    with pytest.raises(AnsibleFilterError, match='gpu_facts'):
        FilterModule().filters()['gpu_summary'](bad)


def test_layout_option_adds_one_indented_line_per_gpu():
    gpu = _facts.new_gpu(0)
    gpu['name'] = 'Tesla V100-SXM2-32GB'
    host = _facts.finish_host(dict(_facts.new_host('nvml'), driver_loaded=True, driver_version='580.159.04', cuda_version='13.0'),
                              [gpu], None)
    lines = FilterModule().filters()['gpu_summary']({'gpu_host': host, 'gpus': [gpu]}, layout=True)
    assert lines[0].startswith('1x Tesla V100-SXM2-32GB | driver 580.159.04')
    assert lines[1:] == ['  GPU 0 Tesla V100-SXM2-32GB: no MIG']
