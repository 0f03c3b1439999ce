# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The dashboard query helper of the monitoring fleet test (tests/integration/monitoring/grafana_queries.py): panel
targets, variable queries and their interpolation as Grafana does it, and the series selectors of PromQL expressions."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'integration' / 'monitoring'))
import grafana_queries as gq  # noqa: E402 pylint: disable=import-error,wrong-import-position


def _names(expr):
    return [(s.metric, tuple((m.label, m.op, m.value) for m in s.matchers)) for s in gq.vector_selectors(expr)]


@pytest.mark.parametrize('expr, expected', [
    ('up', [('up', ())]),
    ('gpuvirt_gpu_up{instance=~"$host"} == 0', [('gpuvirt_gpu_up', (('instance', '=~', '$host'),))]),
    ('rate(x_total{a="b", c!~"d|e"}[5m])', [('x_total', (('a', '=', 'b'), ('c', '!~', 'd|e')))]),
    ('sum by (instance, reason) (y{reason!="gpu_idle"})', [('y', (('reason', '!=', 'gpu_idle'),))]),
    ('sum(y) without (gpu)', [('y', ())]),
    ('count without(gpu) (y)', [('y', ())]),
    ('a * on(instance, gpu, vgpu_id) group_left(vgpu_type) b', [('a', ()), ('b', ())]),
    ('a or on(x) (b - 2)', [('a', ()), ('b', ())]),
    ('topk(3, a) / ignoring(le) b', [('a', ()), ('b', ())]),
    ('label_replace(a{x="{not a brace}"}, "dst", "$1", "src", "(.*)")', [('a', (('x', '=', '{not a brace}'),))]),
    ('{__name__=~"DCGM_.*", gpu="0"}', [(None, (('__name__', '=~', 'DCGM_.*'), ('gpu', '=', '0')))]),
    ('{__name__="DCGM_FI_DEV_GPU_UTIL"}', [('DCGM_FI_DEV_GPU_UTIL', (('__name__', '=', 'DCGM_FI_DEV_GPU_UTIL'),))]),
    ('a offset 5m + b @ 1700000000', [('a', ()), ('b', ())]),
    ('max_over_time(a[10m:1m])', [('a', ())]),
    ('increase(a[1h]) / 3.6e9 > bool 1e-3', [('a', ())]),
    ('count_values("v", a) and b unless c', [('a', ()), ('b', ()), ('c', ())]),
    ('histogram_quantile(0.9, sum by (le) (rate(h_bucket[5m])))', [('h_bucket', ())]),
    ('job:rate:sum{job="x"} # a comment {y}', [('job:rate:sum', (('job', '=', 'x'),))]),
    ('rate(a{i=~"$host"}[$__rate_interval]) * [[scale]] + ${offset}', [('a', (('i', '=~', '$host'),))]),
    ("a{x='single \\' quoted'}", [('a', (('x', '=', "single ' quoted"),))]),
])
def test_vector_selectors(expr, expected):
    assert _names(expr) == expected


def test_selector_text_is_the_selector_as_written():
    selectors = gq.vector_selectors('rate(x{a="b"}[5m]) * on(gpu) y')
    assert [s.text for s in selectors] == ['x{a="b"}', 'y']


@pytest.mark.parametrize('expr, message', [
    ('rate(x[5m]', 'unbalanced ('),
    ('x{a="b"', 'unterminated label matchers'),
    ('x{a=b}', 'bad label matcher'),
    ('sum(x) by (gpu', 'unterminated label list after by'),
    ('{}', 'empty selector'),
    ('x ; y', 'cannot read PromQL'),
])
def test_bad_promql_is_named(expr, message):
    with pytest.raises(gq.DashboardError, match=message.replace('(', r'\(')):
        gq.vector_selectors(expr)


@pytest.mark.parametrize('query, expected', [
    ('label_values(up{job="vgpu_metrics"}, instance)', gq.VariableQuery('label_values', 'instance', 'up{job="vgpu_metrics"}')),
    ('label_values(DCGM_FI_DEV_FB_USED{instance=~"$instance"},gpu)',
     gq.VariableQuery('label_values', 'gpu', 'DCGM_FI_DEV_FB_USED{instance=~"$instance"}')),
    ('label_values(instance)', gq.VariableQuery('label_values', 'instance', '')),
    ('metrics(DCGM_.*)', gq.VariableQuery('metrics', '', 'DCGM_.*')),
    ('query_result(count by (a) (b))', gq.VariableQuery('query_result', '', 'count by (a) (b)')),
    ('label_names()', gq.VariableQuery('label_names', '', '')),
])
def test_variable_queries(query, expected):
    assert gq.parse_variable_query(query) == expected


def test_an_unknown_variable_query_names_the_variable():
    with pytest.raises(gq.DashboardError, match="variable 'host'"):
        gq.parse_variable_query('up', 'host')


MULTI = gq.Variable('host', 'query', multi=True, include_all=True)
SINGLE = gq.Variable('job', 'query')


@pytest.mark.parametrize('expr, values, expected', [
    # one value of a multi-value variable: regex-escaped for the =~ it goes into
    ('a{instance=~"$host"}', {'host': ['gpu.a-1']}, 'a{instance=~"gpu\\\\.a-1"}'),
    # several: an alternation
    ('a{instance=~"$host"}', {'host': ['h1', 'h2']}, 'a{instance=~"(h1|h2)"}'),
    # "All" with an allValue: the allValue as it is
    ('a{instance=~"${host}"}', {'host': gq.RawValue('.*')}, 'a{instance=~".*"}'),
    # the other syntaxes and explicit formats
    ('a{instance=~"[[host]]"}', {'host': ['h1', 'h2']}, 'a{instance=~"(h1|h2)"}'),
    ('a{instance=~"${host:pipe}"}', {'host': ['h1', 'h2']}, 'a{instance=~"h1|h2"}'),
    ('a{instance="${host:raw}"}', {'host': ['h.1']}, 'a{instance="h.1"}'),
    # a plain variable (neither multi nor include-all): no regex escape
    ('a{job="$job"}', {'job': ['vgpu.metrics']}, 'a{job="vgpu.metrics"}'),
])
def test_interpolation_as_grafana_does(expr, values, expected):
    assert gq.interpolate(expr, values, [MULTI, SINGLE]) == expected


def test_builtins_and_an_unknown_variable():
    builtins = gq.grafana_builtins(scrape_interval_s=1, interval_s=2, range_s=3600)
    assert builtins['__rate_interval'] == '4s'  # max(2 + 1, 4 x 1)
    assert gq.grafana_builtins(15, 30, 60)['__rate_interval'] == '60s'  # max(30 + 15, 4 x 15)
    assert gq.interpolate('rate(a[$__rate_interval]) / $__range_s', {}, builtins=builtins) == 'rate(a[4s]) / 3600'
    with pytest.raises(gq.DashboardError, match=r'\$gpu has no value'):
        gq.interpolate('a{gpu=~"$gpu"}', {'host': ['x']}, [MULTI])


class FakePrometheus:
    """label_values over a fixed set of series (exact-match selectors only), recording what was asked."""

    def __init__(self, series):
        self.series = series
        self.asked = []

    def label_values(self, label, match=''):
        self.asked.append((label, match))
        matchers = gq.vector_selectors(match)[0] if match else None
        out = set()
        for labels in self.series:
            if matchers and (labels['__name__'] != matchers.metric or any(
                    not re.fullmatch(m.value, labels.get(m.label, '')) for m in matchers.matchers)):
                continue
            if label in labels:
                out.add(labels[label])
        return sorted(out)

    def label_names(self, match=''):
        return sorted({k for labels in self.series for k in labels})

    def instant(self, expr):
        return [{'metric': {'__name__': 'a', 'x': '1'}, 'value': [1700000000.5, '3']}]


DASHBOARD = {
    'title': 'test',
    'templating': {'list': [
        {'name': 'datasource', 'type': 'datasource', 'query': 'prometheus'},
        {'name': 'instance', 'type': 'query', 'query': {'query': 'label_values(m, instance)', 'refId': 'x'},
         'multi': True, 'includeAll': True, 'allValue': '.*'},
        {'name': 'gpu', 'type': 'query', 'query': 'label_values(m{instance=~"$instance"}, gpu)', 'multi': True, 'includeAll': True},
        {'name': 'model', 'type': 'query', 'query': 'label_values(m, modelName)', 'regex': '/NVIDIA (\\S+)/'},
    ]},
    'panels': [
        {'type': 'row', 'title': 'GPU', 'id': 1, 'collapsed': True, 'panels': [
            {'type': 'timeseries', 'title': 'Util', 'id': 2, 'fieldConfig': {'defaults': {'unit': 'percent'}},
             'targets': [{'refId': 'A', 'expr': 'm{instance=~"$instance", gpu=~"$gpu"}'},
                         {'refId': 'B', 'expr': 'hidden', 'hide': True}]}]},
        {'type': 'table', 'title': 'Table', 'id': 3, 'targets': [{'refId': 'A', 'expr': 'n', 'instant': True, 'format': 'table'}]},
        {'type': 'text', 'title': 'Notes', 'id': 4},
    ],
}
SERIES = [{'__name__': 'm', 'instance': 'a', 'gpu': '0', 'modelName': 'NVIDIA H100 80GB HBM3'},
          {'__name__': 'm', 'instance': 'a', 'gpu': '1', 'modelName': 'NVIDIA H100 80GB HBM3'},
          {'__name__': 'm', 'instance': 'b', 'gpu': '0', 'modelName': 'NVIDIA A40'}]


def test_targets_of_nested_panels_without_hidden_ones():
    dash = gq.Dashboard.from_json(DASHBOARD)
    assert [(t.panel_title, t.ref_id, t.instant, t.unit) for t in dash.targets] == [('Util', 'A', False, 'percent'), ('Table', 'A', True, None)]
    assert [v.name for v in dash.variables] == ['datasource', 'instance', 'gpu', 'model']
    assert dash.variable('instance').all_value == '.*' and dash.variable('gpu').all_value is None
    with pytest.raises(gq.DashboardError, match="no panel titled 'Nope'"):
        dash.panel_targets('Nope')


def test_a_target_without_expression_is_named(tmp_path):
    raw = json.loads(json.dumps(DASHBOARD))
    raw['panels'][1]['targets'][0]['expr'] = ''
    with pytest.raises(gq.DashboardError, match="panel 'Table' target A has no expression"):
        gq.Dashboard.from_json(raw)
    path = tmp_path / 'broken.json'
    path.write_text('{')
    with pytest.raises(gq.DashboardError, match='broken.json: not a readable JSON dashboard'):
        gq.Dashboard.load(path)


def test_chained_variables_resolve_in_order():
    dash = gq.Dashboard.from_json(DASHBOARD)
    api = FakePrometheus(SERIES)
    values, options = gq.resolve_variables(dash, api)
    assert options == {'instance': ['a', 'b'], 'gpu': ['0', '1'], 'model': ['A40', 'H100']}
    assert isinstance(values['instance'], gq.RawValue) and values['gpu'] == ['0', '1'] and values['model'] == ['A40']
    # the gpu variable's own query saw the instance variable's "All" value
    assert ('gpu', 'm{instance=~".*"}') in api.asked
    expr = gq.interpolate(dash.targets[0].expr, values, dash.variables)
    assert expr == 'm{instance=~".*", gpu=~"(0|1)"}'

    values, options = gq.resolve_variables(dash, api, {'instance': ['b']})
    assert options['gpu'] == ['0'] and ('gpu', 'm{instance=~"b"}') in api.asked
    assert gq.interpolate(dash.targets[0].expr, values, dash.variables) == 'm{instance=~"b", gpu=~"0"}'


def test_a_selection_that_is_not_an_option_is_refused():
    dash = gq.Dashboard.from_json(DASHBOARD)
    with pytest.raises(gq.DashboardError, match=r"variable 'instance': \['c'\] not among its options \['a', 'b'\]"):
        gq.resolve_variables(dash, FakePrometheus(SERIES), {'instance': ['c']})
    with pytest.raises(gq.DashboardError, match="variable 'model' has no \"All\" option"):
        gq.resolve_variables(dash, FakePrometheus(SERIES), {'model': gq.ALL})


def test_query_result_options_are_grafana_text_lines():
    var = gq.Variable('v', 'query', query='query_result(a)', regex='/x="([^"]+)"/')
    assert gq.variable_options(var, FakePrometheus(SERIES), {}) == ['1']


def test_data_selector_drops_variable_matchers_and_adds_the_scope():
    (sel,) = gq.vector_selectors('rate(a{instance=~"$host", gpu=~"[[gpu]]", reason!="gpu_idle"}[5m])')
    assert gq.data_selector(sel) == 'a{reason!="gpu_idle"}'
    assert gq.data_selector(sel, {'instance': 'mon\\-a40'}) == 'a{reason!="gpu_idle", instance=~"mon\\\\-a40"}'
    (sel,) = gq.vector_selectors('{__name__="b", x=~"$x"}')
    assert gq.data_selector(sel) == '{__name__="b"}'
    assert gq.data_selector(gq.vector_selectors('c{x=~"$x"}')[0]) == 'c'


class ScopedPrometheus(FakePrometheus):
    """Series of two scrape targets whose machines call themselves otherwise (Hostname != instance)."""

    def __init__(self):
        super().__init__([{'__name__': 'gpu_util', 'instance': 'inv-a', 'Hostname': 'node-7', 'gpu': '0'},
                          {'__name__': 'scrape_seconds', 'instance': 'inv-a'}])
        self.queries = []

    def instant(self, expr):
        self.queries.append(expr)
        found = re.fullmatch(r'count\((\w+)\{?(.*?)\}?\)', expr)
        if found:  # count(selector): series of that name (and instance) exist
            name, rest = found.groups()
            inst = re.search(r'instance=~"([^"]*)"', rest)
            return [{'value': [0, '1']}] if any(s['__name__'] == name and (not inst or re.fullmatch(inst.group(1).replace('\\\\', '\\'), s['instance']))
                                                for s in self.series) else []
        name = re.match(r'\w+', expr).group(0)
        inst = re.search(r'instance=~"([^"]*)"', expr)
        return [s for s in self.series if s['__name__'] == name and (not inst or re.fullmatch(inst.group(1), s['instance']))]

    def range(self, expr, seconds, step):
        return self.instant(expr)


def _host_dashboard(variable_query):
    return gq.Dashboard.from_json({'templating': {'list': [
        {'name': 'host', 'type': 'query', 'query': variable_query, 'multi': True, 'includeAll': True, 'allValue': '.*'}]},
        'panels': [{'type': 'timeseries', 'title': 'Scrape', 'id': 1, 'targets': [{'refId': 'A', 'expr': 'scrape_seconds{instance=~"$host"}'}]},
                   {'type': 'timeseries', 'title': 'Util', 'id': 2, 'targets': [{'refId': 'A', 'expr': 'gpu_util{instance=~"$host"}'}]}]})


def test_a_host_variable_built_from_hostname_but_filtering_instance_is_caught():
    """The old dashboard's bug: the options are machine names, the panels filter instance, so a selected host shows
    nothing although its series exist; the evaluation scopes "data exists" by the selected host's scrape target."""
    api = ScopedPrometheus()
    dash = _host_dashboard('label_values(gpu_util, Hostname)')
    results = gq.evaluate(dash, api, {'host': ['node-7']})
    assert [(r.target.panel_title, r.empty_with_data) for r in results] == [('Scrape', True), ('Util', True)]
    assert results[0].data == ['scrape_seconds{instance=~"inv\\\\-a"}']
    # selected by the label the panels filter: every panel shows the host
    dash = _host_dashboard('label_values(scrape_seconds, instance)')
    results = gq.evaluate(dash, api, {'host': ['inv-a']})
    assert [(r.series, r.empty_with_data) for r in results] == [(1, False), (1, False)]
    # "All": the allValue, and data exists unscoped
    results = gq.evaluate(dash, api)
    assert [r.expr for r in results] == ['scrape_seconds{instance=~".*"}', 'gpu_util{instance=~".*"}']
    assert not any(r.empty_with_data or r.no_data for r in results)
