# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The two shipped Grafana dashboards, read without a Prometheus: every panel query (its variables substituted as
Grafana would) is valid PromQL for promtool, selects hosts by the one label `instance`, uses only series the exporter
documents (the dcgm dashboard: only dcgm-exporter's default counters), and shows each series in its own unit.
tests/integration/monitoring/test_dashboards_fleet.py evaluates the same queries against a real Prometheus."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / 'tests' / 'integration' / 'monitoring'))
import grafana_queries as gq  # noqa: E402 pylint: disable=import-error,wrong-import-position

FILES = REPO / 'roles' / 'monitoring' / 'files'
GPUVIRT = gq.Dashboard.load(FILES / 'gpuvirt-dashboard.json')
DCGM = gq.Dashboard.load(FILES / 'gpuvirt-dcgm-dashboard.json')
COUNTERS = {c['name']: c for c in json.loads((REPO / 'tests' / 'unit' / 'exporter' / 'fixtures' / 'dcgm-default-counters.json').read_text())['counters']}
# dcgm-exporter's units (as DCGM delivers them) -> the Grafana unit id that shows them as they are
GRAFANA_UNIT = {'MHz': 'rotmhz', 'MiB': 'mbytes', 'W': 'watt', 'C': 'celsius', '%': 'percent', 'ratio': 'percentunit',
                'B/s': 'Bps', 'MB/s': 'MBs', 'count': 'short', 'rows': 'short', '0/1': 'none', 'xid': 'none'}
SELECTIONS = {'All': gq.ALL, 'one value': ['gpu-node.example-1'], 'two values': ['a', 'b']}


def _values(dashboard: gq.Dashboard, selected) -> dict:
    values = {}
    for var in dashboard.variables:
        if var.type == 'datasource':
            continue
        values[var.name] = gq.RawValue(var.all_value) if selected is gq.ALL else list(selected)
    return values


BUILTINS = gq.grafana_builtins(scrape_interval_s=15, interval_s=30, range_s=3600)


@pytest.mark.skipif(not shutil.which('promtool'), reason="promtool (Debian's prometheus package) is not installed")
@pytest.mark.parametrize('dashboard', [GPUVIRT, DCGM], ids=['gpuvirt', 'dcgm'])
@pytest.mark.parametrize('selection', list(SELECTIONS), ids=list(SELECTIONS))
def test_every_query_is_valid_promql_once_substituted(dashboard, selection, tmp_path):
    values = _values(dashboard, SELECTIONS[selection])
    rules = [{'record': 'dashboard:query_%d' % i, 'expr': gq.interpolate(t.expr, values, dashboard.variables, BUILTINS)}
             for i, t in enumerate(dashboard.targets)]
    path = tmp_path / 'queries.yml'
    path.write_text(json.dumps({'groups': [{'name': 'dashboard', 'rules': rules}]}))
    proc = subprocess.run(['promtool', 'check', 'rules', str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'SUCCESS: %d rules found' % len(rules) in proc.stdout


@pytest.mark.parametrize('dashboard, var', [(GPUVIRT, 'host'), (DCGM, 'instance')], ids=['gpuvirt', 'dcgm'])
def test_hosts_are_selected_by_instance_in_every_query(dashboard, var):
    """One label for the host everywhere, the one the variable lists: never Hostname/hostname, which follows the
    machines' own names (and changed case in dcgm-exporter 4.6)."""
    variable = dashboard.variable(var)
    assert gq.parse_variable_query(variable.query, var).label == 'instance'
    assert variable.multi and variable.include_all and variable.all_value == '.*'
    for target in dashboard.targets:
        for selector in gq.vector_selectors(target.expr):
            labels = {(m.label, m.op, m.value) for m in selector.matchers}
            assert ('instance', '=~', '$' + var) in labels, '%s: %s does not select the host' % (target.name, selector.text)
            assert not any(m.label.lower() == 'hostname' for m in selector.matchers), target.name
        assert not re.search(r'\{\{\s*[Hh]ostname\s*\}\}', target.legend), target.name


def test_the_dcgm_dashboard_uses_only_dcgm_exporter_names():
    names = {s.metric for t in DCGM.targets for s in gq.vector_selectors(t.expr)}
    names |= {s.metric for v in DCGM.variables if v.type == 'query'
              for s in gq.vector_selectors(gq.parse_variable_query(v.query).match)}
    assert names <= set(COUNTERS), sorted(names - set(COUNTERS))
    # every default counter NVML can source, and the driver label, is on a panel
    assert {n for n, c in COUNTERS.items() if c['type'] != 'label'} <= names, sorted(set(COUNTERS) - names)
    assert any('DCGM_FI_DRIVER_VERSION' in t.expr for t in DCGM.targets)


def test_the_dcgm_panels_show_each_counter_in_its_own_unit():
    """A panel that shows one counter as it is (an aggregation over its series, no arithmetic) has that counter's
    unit; the derived panels have the unit of what they compute."""
    derived = {'Framebuffer used (share)': 'percentunit', 'GPU instance framebuffer used (share)': 'percentunit',
               'Power from the energy counter': 'watt',  # mJ/s / 1000
               'Energy in the time range': 'kwatth',  # mJ / 3.6e9
               'PCIe replays (last hour)': 'short', 'GPUs': 'none', 'MIG GPU instances': 'none', 'Power draw': 'watt',
               'GPUs per driver version and model': 'none', 'GPU instances by profile': 'none'}
    plain = re.compile(r'^(?:max|sum) by \([^)]*\) \((DCGM_\w+)\{[^}]*\}\)$')
    checked = set()
    for target in DCGM.targets:
        found = plain.match(target.expr)
        if found:
            unit = GRAFANA_UNIT[COUNTERS[found.group(1)]['unit']]
            assert target.unit == unit, '%s: %s is in %s, the panel says %s' % (target.name, found.group(1), unit, target.unit)
        else:
            assert target.panel_title in derived, '%s: a derived query needs its unit stated here' % target.name
            assert target.unit == derived[target.panel_title], target.name
        checked.add(target.panel_title)
    assert checked >= set(derived)
    assert '/ 3600000000' in DCGM.panel_targets('Energy in the time range')[0].expr
    assert ') / 1000' in DCGM.panel_targets('Power from the energy counter')[0].expr


def test_the_gpuvirt_dashboard_uses_documented_series_and_units():
    documented = set(re.findall(r'`(gpuvirt_\w+)`', (REPO / 'docs' / 'metrics.md').read_text()))
    suffix_unit = {'_bytes': 'bytes', '_percent': 'percent', '_watts': 'watt', '_celsius': 'celsius', '_hz': 'hertz',
                   '_seconds': 's', '_bytes_per_second': 'Bps'}
    for target in GPUVIRT.targets:
        for selector in gq.vector_selectors(target.expr):
            assert selector.metric == 'up' or selector.metric in documented, '%s: %s' % (target.name, selector.metric)
        metric = gq.vector_selectors(target.expr)[0].metric
        if re.fullmatch(r'\w+\{[^}]*\}', target.expr):  # shown as it is
            unit = next((u for s, u in sorted(suffix_unit.items(), key=lambda i: -len(i[0])) if metric.endswith(s)), None)
            if unit:
                assert target.unit == unit, target.name


def test_the_vgpu_table_does_not_need_a_license_status():
    """The vGPU table lists each vGPU from gpuvirt_vgpu_info, with its license status where one is reported: a bare
    product with the license series (the old query) would be empty wherever NVML reports none."""
    (target,) = GPUVIRT.panel_targets('vGPU instances (type, VM, license)')
    assert target.instant
    assert re.search(r'\bor on\(instance, gpu, vgpu_id\) \(gpuvirt_vgpu_info\{[^}]*\} - 2\)$', target.expr), target.expr
