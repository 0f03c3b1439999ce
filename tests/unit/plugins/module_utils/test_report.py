# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet report: slice grid, drift judged by the planners, summary, escaping, self-containedness, the filter.

The facts are gpu_facts-shaped: MIG GPUs from the simulator's model data (mig_support.model_gpu), the real H100
capture, and an A40 vGPU host built from the A40 model's vGPU types.
"""
from __future__ import annotations

import copy
import json
import re

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.gpuvirt.fleet.plugins.filter.fleet_report_html import FilterModule
from ansible_collections.gpuvirt.fleet.plugins.module_utils import _facts, _mig, _report, _report_html, _vgpu
from mig_support import load_model, model_gpu, real_h100_gpus  # pylint: disable=import-error

PROC_OPEN = 'NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  (dvs-builder@U22)'
PROC_PROPRIETARY = 'NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.159.04  Release Build  (dvs-builder@U22)'
HALVES = [('3g.40gb', 0), ('3g.40gb', 4)]
SEVENTHS = [('1g.10gb', s) for s in range(7)]
H100_MIG = [{'name': 'h100-halves', 'devices': [0, 1, 2, 3], 'instances': [{'profile': '3g.40gb', 'start': 0}, {'profile': '3g.40gb', 'start': 4}]},
            {'name': 'h100-sevenths', 'devices': [4, 5, 6, 7], 'instances': [{'profile': '1g.10gb', 'count': 7}]}]
A40_VGPU = [{'name': 'a40-desktops', 'devices': {'model': 'NVIDIA A40'}, 'type': 'A40-8Q', 'count': 6}]


def gpu_host(gpus, proc=PROC_OPEN, version='580.159.04'):
    host = dict(_facts.new_host('nvml'), driver_loaded=True, driver_version=version, cuda_version='13.0')
    return _facts.finish_host(host, gpus, proc)


def entry(name, gpus, proc=PROC_OPEN, **declared):
    return dict({'host': name, 'reachable': True, 'error': None, 'gpu_host': gpu_host(gpus, proc), 'gpus': gpus}, **declared)


def h100_gpus(layouts):
    gpus = []
    for index, layout in enumerate(layouts):
        gpu = model_gpu('h100-80gb-hbm3', index, current=layout is not None, instances=tuple(layout or ()))
        gpu.update(architecture='hopper', memory={'total_mib': 81559, 'used_mib': 0, 'free_mib': 81079, 'reserved_mib': 480})
        gpus.append(gpu)
    return gpus


def a40_gpu(index, devices=()):
    """An A40 in host vGPU mode with `devices` as (type short name, uuid) active vGPUs."""
    model = load_model('a40')
    gpu = model_gpu('a40', index)
    gpu.update(architecture='ampere', memory={'total_mib': 46068, 'used_mib': 0, 'free_mib': 45000, 'reserved_mib': 500})
    held = {device[0] for device in devices}
    gpu['vgpu'] = {
        'virtualization_mode': 'host_vgpu', 'host_mode': 'non_sriov',
        'supported_types': [{'id': t['id'], 'name': t['name'], 'framebuffer_mib': t['framebuffer_bytes'] // 2 ** 20,
                             'max_instances': t['max_instances']} for t in model['vgpu']['types']],
        'creatable_types': [t['name'] for t in model['vgpu']['types'] if not held or _vgpu.short_name(t['name']) in held],
        'active': [{'instance': 100 + n, 'type': 'NVIDIA ' + t, 'uuid': u, 'vm_id': None} for n, (t, u) in enumerate(devices)],
    }
    return gpu


def uuids(prefix, count):
    return ['%s-0000-4000-8000-%012d' % (prefix, n) for n in range(count)]


def demo_hosts():
    """8x H100 with mixed layouts matching H100_MIG; an A40 vGPU host; an A100 host with drift; an unreachable one."""
    h100 = entry('gpu-h100-01', h100_gpus([HALVES] * 4 + [SEVENTHS] * 4), gpu_mig=H100_MIG, driver_version='580.159.04')
    a40 = entry('gpu-a40-01', [a40_gpu(0, [('A40-8Q', u) for u in uuids('aaaaaaaa', 6)]),
                               a40_gpu(1, [('A40-8Q', u) for u in uuids('bbbbbbbb', 6)])], PROC_PROPRIETARY, gpu_vgpu=A40_VGPU)
    a100 = [model_gpu('a100-sxm4-80gb', 0, instances=(('4g.40gb', 0), ('3g.40gb', 4, [2, 1]))), model_gpu('a100-sxm4-80gb', 1, current=False)]
    drift = entry('gpu-a100-01', a100, driver_version='580.95.05',
                  gpu_mig=[{'name': 'a100-sevenths', 'devices': 'all', 'instances': [{'profile': '1g.10gb', 'count': 7}]}])
    down = {'host': 'gpu-down-01', 'reachable': False, 'error': 'Failed to connect to the host via ssh: Connection refused'}
    return [h100, a40, drift, down]


def blocks(html, **attrs):
    """The <rect class="gi"> (or ci) elements of the page as attribute dicts, filtered by attrs."""
    found = []
    for match in re.finditer(r'<rect ([^>]*)/>', html):
        values = dict(re.findall(r'([\w-]+)="([^"]*)"', match.group(1)))
        if all(values.get(k.replace('_', '-')) == str(v) for k, v in attrs.items()):
            found.append(values)
    return found


# ---- the slice grid
def test_grid_places_h100_halves_on_memory_and_compute_columns():
    grid = _report_html.mig_grid(h100_gpus([HALVES])[0])
    assert grid['memory_slices'] == 8 and grid['compute_slices'] == 7
    assert [(b['profile'], b['memory'], b['compute']) for b in grid['blocks']] == [('3g.40gb', (0, 3), (0, 2)), ('3g.40gb', (4, 7), (4, 6))]
    assert grid['blocks'][1]['color'] == _report_html.PROFILE_COLORS[3]


def test_grid_compute_instances_and_memory_heavy_profiles():
    gpu = model_gpu('a100-sxm4-80gb', 0, instances=(('1g.20gb', 6), ('3g.40gb', 0, [2, 1])))
    grid = _report_html.mig_grid(gpu)
    by_profile = {b['profile']: b for b in grid['blocks']}
    assert by_profile['1g.20gb']['memory'] == (6, 7) and by_profile['1g.20gb']['compute'] == (6, 6)
    assert [(c['slices'], c['start'], c['end']) for c in by_profile['3g.40gb']['compute_instances']] == [(2, 0, 1), (1, 2, 2)]


def test_grid_of_a_gpu_without_instances_still_has_its_columns():
    grid = _report_html.mig_grid(real_h100_gpus()[0])
    assert (grid['memory_slices'], grid['compute_slices'], grid['blocks']) == (8, 7, [])


def test_html_draws_3g_at_start_4_over_columns_4_to_6_and_memory_4_to_7():
    html = _report_html.render_html(demo_hosts())
    compute = blocks(html, data_gpu=0, data_profile='3g.40gb', data_row='compute', data_start=4)
    memory = blocks(html, data_gpu=0, data_profile='3g.40gb', data_row='memory', data_start=4)
    assert len(compute) == 2 and {b['data-end'] for b in compute} == {'6'}  # gpu-h100-01 GPU 0 and gpu-a100-01 GPU 0
    assert {b['data-end'] for b in memory} == {'7'}
    # geometry: x = label width + column * cell width, width spans three cells
    block = compute[0]
    assert float(block['x']) == _report_html.LABEL_W + 4 * _report_html.CELL_W + 1
    assert float(block['width']) == 3 * _report_html.CELL_W - 2
    assert block['fill'] == _report_html.PROFILE_COLORS[3]
    sevenths = blocks(html, data_gpu=5, data_profile='1g.10gb', data_row='memory')
    assert sorted(int(b['data-start']) for b in sevenths) == list(range(7))
    assert '>3g.40gb</text>' in html and '>1g.10gb</text>' in html


# ---- drift, judged by the planners
def test_hosts_matching_their_declarations_have_no_drift():
    h100, a40 = demo_hosts()[:2]
    assert _report.host_drift(h100) == []
    assert _report.host_drift(a40) == []


def test_drift_lists_mig_and_driver_differences():
    drift = _report.host_drift(demo_hosts()[2])
    assert 'driver: 580.159.04 loaded, 580.95.05 declared' in drift
    assert 'MIG: GPU 0 (GPU-a100-sxm4-80gb-0000): missing GPU instance 7 x 1g.10gb [1c] at 0, 1, 2, 3, 4, 5, 6' in drift
    assert 'MIG: GPU 0 (GPU-a100-sxm4-80gb-0000): unexpected GPU instance 4g.40gb [4c] at 0' in drift
    assert 'MIG: GPU 0 (GPU-a100-sxm4-80gb-0000): unexpected GPU instance 3g.40gb [2c, 1c] at 4' in drift
    assert any(d.startswith('MIG: GPU 1 (GPU-a100-sxm4-80gb-0001): current MIG mode is False, wanted True') for d in drift)
    assert drift[-1].startswith('MIG: ') and 'planned step(s) would converge it' in drift[-1]


def test_vgpu_drift_counts_missing_and_unexpected_devices():
    a40 = demo_hosts()[1]
    a40['gpus'][1] = a40_gpu(1, [('A40-8Q', u) for u in uuids('bbbbbbbb', 4)])
    drift = _report.host_drift(a40)
    assert drift == ['vGPU: GPU 1: 2 x A40-8Q missing']
    a40['gpus'][0] = a40_gpu(0, [('A40-4Q', u) for u in uuids('cccccccc', 2)])
    drift = _report.host_drift(a40)
    assert drift[:2] == ['vGPU: GPU 0: 6 x A40-8Q missing', 'vGPU: GPU 1: 2 x A40-8Q missing']
    assert 'vGPU: GPU 0: unexpected A40-4Q device cccccccc-0000-4000-8000-000000000000' in drift and len(drift) == 4


def test_unmeetable_declaration_is_drift_naming_the_entry():
    h100 = demo_hosts()[0]
    h100['gpu_mig'] = [{'name': 'too-big', 'devices': [0], 'instances': [{'profile': '7g.80gb'}, {'profile': '1g.10gb'}]}]
    drift = _report.host_drift(h100)
    assert drift and all(d.startswith('MIG: the declaration cannot be met: ') for d in drift)
    assert "entry 'too-big'" in drift[0] and not drift[0].startswith('MIG: the declaration cannot be met: host ')


def test_condense_groups_instances_and_keeps_other_lines():
    def missing(start):
        return _mig.Mismatch(0, 'u', '1', 'gpu_instance', _mig.InstanceState('1g.10gb', start, (1,)), None)
    mismatches = [missing(2), _mig.Mismatch(0, 'u', '1', 'pending_mode', True, False), missing(0)]
    assert [str(m) for m in mismatches] == ['GPU 0 (u): missing GPU instance 1g.10gb at 2 with compute instances [1c]',
                                            'GPU 0 (u): pending MIG mode is False, wanted True',
                                            'GPU 0 (u): missing GPU instance 1g.10gb at 0 with compute instances [1c]']
    assert _report.condense(mismatches) == ['GPU 0 (u): missing GPU instance 2 x 1g.10gb [1c] at 0, 2', 'GPU 0 (u): pending MIG mode is False, wanted True']


def test_the_drift_analysis_reads_verify_s_structures_not_its_sentences(monkeypatch):
    host = demo_hosts()[2]
    before = _report.host_drift(host)
    states = [h['state'] for h in _report.analyse(demo_hosts())['hosts']]
    reworded = dict(_mig.MESSAGES, missing_instance='no {wanted} here', unexpected_instance='{found} is not declared',
                    current_mode='MIG is {found} now, the plan says {wanted}', pending_mode='MIG will be {found}, the plan says {wanted}')
    monkeypatch.setattr(_mig, 'MESSAGES', reworded)
    plan = _mig.plan_host('h', host['gpus'], host['gpu_mig'])
    assert 'GPU 0 (GPU-a100-sxm4-80gb-0000): no 1g.10gb at 0 with compute instances [1c] here' in _mig.verify(plan.desired, host['gpus'])
    after = _report.host_drift(host)
    # the grouped GPU instances come from the mismatches' fields, so the analysis is the same; the mode lines say what verify says
    modes = 'MIG: GPU 1 (GPU-a100-sxm4-80gb-0001): '
    assert [d for d in after if not d.startswith(modes)] == [d for d in before if not d.startswith(modes)]
    assert 'MIG: GPU 0 (GPU-a100-sxm4-80gb-0000): missing GPU instance 7 x 1g.10gb [1c] at 0, 1, 2, 3, 4, 5, 6' in after
    assert 'MIG: GPU 1 (GPU-a100-sxm4-80gb-0001): MIG is False now, the plan says True' in after and len(after) == len(before)
    assert [h['state'] for h in _report.analyse(demo_hosts())['hosts']] == states and 'drift' in states
    assert 'missing GPU instance 7 x 1g.10gb [1c] at 0, 1, 2, 3, 4, 5, 6' in _report_html.render_html(demo_hosts())


def test_long_drift_lists_are_cut_in_the_page():
    hosts = demo_hosts()
    hosts[0]['driver_version'] = '570.1.2'
    hosts[0]['gpu_mig'] = [{'devices': [i], 'instances': [{'profile': '7g.80gb'}]} for i in range(8)]
    html = _report_html.render_html(hosts)
    assert len(_report.host_drift(hosts[0])) > _report_html.DRIFT_LINES and '<li class="muted">and ' in html


def test_driver_branch_and_flavor_drift():
    h100 = demo_hosts()[0]
    assert _report.host_drift(dict(h100, driver_version='', driver_branch='580')) == []
    assert _report.host_drift(dict(h100, driver_version='', driver_branch='570')) == ['driver: 580.159.04 loaded, branch 570 declared']
    assert _report.host_drift(dict(h100, driver_flavor='proprietary')) == ['driver: open kernel modules loaded, proprietary declared']
    assert _report.host_drift(dict(h100, driver_flavor='auto')) == []


def test_summary_counts_the_fleet():
    summary = _report.analyse(demo_hosts())['summary']
    assert summary['hosts'] == 4 and summary['reachable'] == 3
    assert summary['unreachable'] == ['gpu-down-01'] and summary['drift'] == ['gpu-a100-01']
    assert summary['models'] == {'NVIDIA A100-SXM4-80GB': 2, 'NVIDIA A40': 2, 'NVIDIA H100 80GB HBM3': 8}
    assert summary['gpus'] == 12 and summary['mig_gpus'] == 9
    assert summary['mig_instances'] == 4 * 2 + 4 * 7 + 2 and summary['vgpus'] == 12


# ---- the page
def test_page_shows_hosts_gpus_vgpus_drift_and_unreachable():
    html = _report_html.render_html(demo_hosts(), generated='2026-11-25T01:00:00Z')
    for needle in ('gpu-h100-01', 'NVIDIA H100 80GB HBM3', '00000000:18:00.0', 'hopper', '79.6 GiB', 'driver 580.159.04 (open kernel modules)',
                   'A40-8Q', 'aaaaaaaa-0000-4000-8000-000000000005', '0000:19:00.0', '<td>non_sriov</td>', 'proprietary kernel modules',
                   'Connection refused', 'generated 2026-11-25T01:00:00Z'):
        assert needle in html, needle
    assert re.search(r'<section class="host drift" id="host-gpu-a100-01"[^>]*>.*<ul class="drift"><li>driver: 580.159.04 loaded, 580.95.05 declared</li>',
                     html, re.S)
    assert '<section class="host ok" id="host-gpu-h100-01"' in html and '<section class="host unreachable" id="host-gpu-down-01"' in html
    assert '<div class="num">38</div><div class="lbl">MIG GPU instances</div>' in html
    assert '<div class="card bad"><div class="num">1</div><div class="lbl">hosts with drift</div>' in html
    assert html.index('Fleet summary') < html.index('id="host-gpu-a100-01"') < html.index('id="host-gpu-h100-01"')


def test_page_is_self_contained():
    html = _report_html.render_html(demo_hosts())
    lowered = html.lower()
    assert 'http://' not in lowered and 'https://' not in lowered
    assert '<script' not in lowered and '<link' not in lowered and '<img' not in lowered and '@import' not in lowered
    assert 'url(' not in lowered and '@font-face' not in lowered
    assert lowered.startswith('<!doctype html>') and '<style>' in lowered and '<svg class="mig"' in lowered


def test_every_text_is_escaped():
    evil = entry('<script>alert(1)</script>', h100_gpus([HALVES]))
    evil['gpus'][0]['name'] = 'GPU "quoted" & <b>bold</b>'
    evil['gpus'][0]['mig']['gpu_instances'][0]['profile'] = '3g.40gb"><script>x()</script>'
    down = {'host': 'down<img src=x onerror=alert(1)>', 'reachable': False, 'error': '<script>boom</script>'}
    html = _report_html.render_html([evil, down], title='<i>fleet</i>')
    assert '<script' not in html.lower() and '<img' not in html and '<b>bold' not in html and '<i>fleet' not in html
    assert '&lt;script&gt;alert(1)&lt;/script&gt;' in html
    assert 'GPU &quot;quoted&quot; &amp; &lt;b&gt;bold&lt;/b&gt;' in html
    assert 'data-profile="3g.40gb&quot;&gt;&lt;script&gt;x()&lt;/script&gt;"' in html


def test_lost_gpu_and_no_driver_hosts_render():
    gpus = h100_gpus([HALVES, None])
    _facts.mark_lost(gpus[1], 'GPU has fallen off the bus')
    nodriver = {'host': 'gpu-nodriver', 'reachable': True, 'gpus': [],
                'gpu_host': dict(_facts.new_host('nvidia-smi'), driver_error='Driver Not Loaded')}
    html = _report_html.render_html([entry('gpu-lost', gpus), nodriver])
    assert 'GPU has fallen off the bus' in html and 'No GPUs visible.' in html and 'Driver Not Loaded' in html
    assert _report.analyse([entry('gpu-lost', gpus)])['summary']['lost_gpus'] == 1


def test_a_host_whose_facts_failed_is_told_apart_from_an_unreachable_one():
    failed = {'host': 'gpu-broken', 'reachable': True, 'error': 'MODULE FAILURE: pynvml raised NVMLError_Unknown', 'gpu_host': None}
    model = _report.analyse(demo_hosts() + [failed])
    assert model['summary']['failed'] == ['gpu-broken'] and model['summary']['unreachable'] == ['gpu-down-01']
    html = _report_html.render_html(demo_hosts() + [failed])
    assert '<section class="host failed" id="host-gpu-broken"' in html and 'NVMLError_Unknown' in html
    assert '<div class="card bad"><div class="num">1</div><div class="lbl">hosts without GPU facts</div>' in html


def test_real_h100_capture_renders():
    gpus = real_h100_gpus()
    html = _report_html.render_html([entry('h100-real', gpus)])
    assert 'GPU-37351963-330b-689c-94bd-a0c83dd665f1' not in html  # the GPU UUID is not a column; vGPU UUIDs are
    assert '00000000:00:06.0' in html and 'MIG off' in html and blocks(html, data_row='memory', **{'class': 'slice'})


# ---- the filter
def test_filter_renders_and_validates_input():
    render = FilterModule().filters()['fleet_report_html']
    html = render(copy.deepcopy(demo_hosts()), title='Lab', generated='now')
    assert '<title>Lab</title>' in html and 'gpu-a40-01' in html
    with pytest.raises(AnsibleFilterError, match='list of host entries'):
        render({'host': 'x'})
    with pytest.raises(AnsibleFilterError, match='entry 1 has no host name'):
        render([{'gpus': []}])


def test_filter_input_survives_a_json_round_trip():
    """What Ansible hands the filter is plain JSON data (tuples become lists)."""
    hosts = json.loads(json.dumps(demo_hosts()))
    assert FilterModule().filters()['fleet_report_html'](hosts) == _report_html.render_html(demo_hosts())
