# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The dashboard, the docs and the roles' argument specs agree with what the exporter exposes and defaults to."""
from __future__ import annotations

import json
import os
import re
import sys

import pytest
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from exporter_support import REPO, SimExporter, samples  # noqa: E402  pylint: disable=wrong-import-position

COLLECTOR = os.path.join(REPO, 'roles', 'exporter', 'files', 'gpuvirt_exporter', 'collector.py')
DASHBOARD = os.path.join(REPO, 'roles', 'monitoring', 'files', 'gpuvirt-dashboard.json')
METRICS_DOC = os.path.join(REPO, 'docs', 'metrics.md')
PROMQL_WORDS = {'rate', 'increase', 'on', 'group_left', 'group_right', 'by', 'sum', 'max', 'min', 'avg', 'count', 'without', 'and',
                'or', 'unless', 'ignoring', 'bool', 'offset', 'topk', 'bottomk', 'time', 'vector', 'absent', 'changes', 'resets',
                'max_over_time', 'min_over_time', 'avg_over_time', 'last_over_time', 'clamp_min', 'clamp_max', 'label_replace',
                'label_values'}
PROMETHEUS_OWN = {'up'}


def exposed_names() -> set[str]:
    """Every metric name the collector can expose (a counter family X is exposed as X_total)."""
    with open(COLLECTOR, encoding='utf-8') as handle:
        source = handle.read()
    names = set()
    for kind, name in re.findall(r"(?:fam|ent|own)\.(gauge|counter)(?:_by)?\(\s*'([a-z_]+)'", source):
        names.add(name + '_total' if kind == 'counter' else name)
    # names built with a format string in the collector
    names |= {'gpuvirt_gpu_encoder_utilization_percent', 'gpuvirt_gpu_decoder_utilization_percent',
              'gpuvirt_gpu_memory_used_bytes', 'gpuvirt_gpu_memory_free_bytes', 'gpuvirt_gpu_memory_total_bytes'}
    # the GPM series under gpuvirt names, per GPU and per MIG instance (dcgm.GPM_GPUVIRT)
    with open(os.path.join(os.path.dirname(COLLECTOR), 'dcgm.py'), encoding='utf-8') as handle:
        suffixes = re.findall(r"^    \d+: \('([a-z_]+)', ", handle.read(), re.M)
    assert suffixes
    names |= {'gpuvirt_%s_%s' % (scope, suffix) for scope in ('gpu', 'mig') for suffix in suffixes}
    names -= {'gpuvirt_gpu_', 'gpuvirt_mig_'}
    # dcgm-exporter's names (exporter_metric_names: dcgm or both), bare, counters included, as dcgm.py declares them
    with open(os.path.join(os.path.dirname(COLLECTOR), 'dcgm.py'), encoding='utf-8') as handle:
        names |= set(re.findall(r"^    '(DCGM_FI_[A-Z_]+)': '", handle.read(), re.M))
    return names


def scraped_names(text: str) -> set[str]:
    """Metric names of an exposition (prometheus_client's parser adds _total to dcgm's bare counter names: dropped)."""
    return {name[:-len('_total')] if name.startswith('DCGM_') and name.endswith('_total') else name
            for name, _labels, _value in samples(text)}


def queried_names(expr: str) -> set[str]:
    expr = re.sub(r'\{[^}]*\}', '', expr)
    expr = re.sub(r'label_values\(([A-Za-z_:][A-Za-z0-9_:]*),[^)]*\)', r'\1', expr)
    expr = re.sub(r'\[[^\]]*\]', '', expr)
    words = set(re.findall(r'[a-zA-Z_:][a-zA-Z0-9_:]*', expr))
    words -= PROMQL_WORDS
    # label names inside on(...) / by(...) clauses
    for clause in re.findall(r'(?:on|by|without|ignoring|group_left|group_right)\s*\(([^)]*)\)', expr):
        words -= set(re.findall(r'[a-zA-Z_]+', clause))
    return words


def dashboard_exprs() -> list[str]:
    with open(DASHBOARD, encoding='utf-8') as handle:
        dashboard = json.load(handle)
    exprs = []
    for panel in dashboard['panels']:
        exprs += [t['expr'] for t in panel.get('targets', [])]
    exprs += [v['definition'] for v in dashboard['templating']['list'] if 'definition' in v]
    return exprs


def test_every_dashboard_query_names_a_metric_the_exporter_exposes():
    exposed = exposed_names() | PROMETHEUS_OWN
    exprs = dashboard_exprs()
    assert len(exprs) > 15
    for expr in exprs:
        names = queried_names(expr)
        assert names, expr
        assert names <= exposed, '%s: %s' % (expr, names - exposed)


def test_the_dashboard_has_gpu_mig_and_vgpu_panels():
    with open(DASHBOARD, encoding='utf-8') as handle:
        rows = [p['title'] for p in json.load(handle)['panels'] if p['type'] == 'row']
    assert {'GPU', 'MIG', 'vGPU'} <= set(rows)


def test_every_exposed_metric_is_documented():
    with open(METRICS_DOC, encoding='utf-8') as handle:
        doc = handle.read()
    missing = sorted(n for n in exposed_names() if '`%s`' % n not in doc)
    assert not missing


def test_a_scrape_exposes_only_names_the_collector_declares(tmp_path):
    host = SimExporter(str(tmp_path / 'gpusim'), ['h100-80gb-hbm3:1'])
    host.mig_sevenths([0])
    host.start()
    try:
        _status, text = host.get()
    finally:
        host.stop()
    names = scraped_names(text)
    assert names <= exposed_names(), names - exposed_names()
    assert 'DCGM_FI_DEV_FB_USED' in names and 'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION' in names
    assert 'gpuvirt_mig_memory_used_bytes' in names


@pytest.mark.parametrize('role', ['exporter', 'monitoring'])
def test_argument_specs_match_the_defaults(role):
    base = os.path.join(REPO, 'roles', role)
    with open(os.path.join(base, 'defaults', 'main.yml'), encoding='utf-8') as handle:
        defaults = yaml.safe_load(handle)
    with open(os.path.join(base, 'meta', 'argument_specs.yml'), encoding='utf-8') as handle:
        options = yaml.safe_load(handle)['argument_specs']['main']['options']
    assert set(defaults) == set(options)
    for key, value in defaults.items():
        assert options[key].get('default') == value, key


def test_the_real_h100_capture_parses_and_carries_the_gpu_labels():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'real-h100-metrics.txt')
    with open(path, encoding='utf-8') as handle:
        text = handle.read()
    found = samples(text)
    up = [labels for name, labels, _v in found if name == 'gpuvirt_gpu_up']
    assert up and up[0]['modelName'] == 'NVIDIA H100 80GB HBM3'
    assert {name for name, _l, _v in found} <= exposed_names() | {'gpuvirt_exporter_nvml_errors_total'}
