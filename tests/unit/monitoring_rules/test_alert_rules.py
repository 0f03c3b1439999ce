# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The alert rules of gpuvirt.fleet.monitoring, rendered by the role on the controller (ansible-playbook on localhost):

- the role writes the rules beside the scrape configuration and lists them in its rule_files, and promtool accepts
  both (`promtool check config` reads the referenced rules too);
- `promtool check rules` and `promtool test rules` pass: the unit tests of promtool/*.yml and the test generated from
  the XID class table (promtool_rules.py); a wrong expectation makes promtool fail, so the harness can fail;
- every alert is tested firing and not firing under each name set it reads (gpuvirt_*, DCGM_FI_*), and once with both
  sets scraped (it must fire once); every alert has a severity, a summary, a description and a runbook;
- the XID class table puts each XID in one class, names its source, and is what the rendered expressions match;
- docs/alerts.md lists every alert with its severity and every XID class with its XIDs;
- variables: other jobs, labels and windows reach the rules; rules turned off leave no rule_files and no file;
  a relative rules path or a malformed duration is refused, naming it, before anything is written.

promtool comes from Debian's prometheus package (`make deps`); without it these tests fail rather than skip.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from promtool_rules import (  # noqa: E402 pylint: disable=wrong-import-position
    ANSIBLE_PLAYBOOK, REPO, RULES_NAME, check_rules, load_rules, prepare, prepare_all, promtool, render_role, run_test_rules, unit_test_files,
    xid_table)

DOC = REPO / 'docs' / 'alerts.md'
SEVERITIES = {'critical', 'warning', 'info'}
# The name sets each alert reads: both exporter name sets, the gpuvirt names only (no dcgm-exporter counterpart),
# or none (Prometheus' own up).
GPUVIRT_ONLY = {'GpuLost', 'GpuExporterNvmlDown', 'GpuExporterNvmlErrors', 'GpuDeclarationDrift', 'GpuDeclarationNotChecked',
                'GpuDeclarationFileUnreadable'}
ANY = {'GpuExporterDown'}

pytestmark = pytest.mark.skipif(not ANSIBLE_PLAYBOOK.exists(), reason='needs ansible-playbook beside the Python running the tests')


def _sets(alert: str) -> list[str]:
    if alert in ANY:
        return ['any']
    return ['gpuvirt'] if alert in GPUVIRT_ONLY else ['gpuvirt', 'dcgm', 'both']


@pytest.fixture(name='rendered', scope='module')
def rendered_fixture(tmp_path_factory):
    outdir = tmp_path_factory.mktemp('monitoring')
    proc = render_role(outdir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return outdir


@pytest.fixture(name='rules', scope='module')
def rules_fixture(rendered):
    return load_rules(rendered / RULES_NAME)


def test_the_role_writes_the_rules_beside_the_config_and_lists_them_in_rule_files(rendered):
    config = yaml.safe_load((rendered / 'prometheus.yml').read_text(encoding='utf-8'))
    assert config['rule_files'] == [str(rendered / RULES_NAME)]
    targets = [target for static in config['scrape_configs'][0]['static_configs'] for target in static['targets']]
    assert targets == ['192.0.2.10:9945', '192.0.2.11:9946']
    proc = subprocess.run([promtool(), 'check', 'config', str(rendered / 'prometheus.yml')], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'SUCCESS: 1 rule files found' in proc.stdout + proc.stderr


def test_promtool_check_rules_passes(rendered, rules):
    proc = check_rules(rendered / RULES_NAME)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'SUCCESS: %d rules found' % len(rules) in proc.stdout
    assert len(rules) == 20


def test_promtool_test_rules_passes(rendered, tmp_path):
    files = prepare_all(rendered / RULES_NAME, tmp_path)
    assert len(files) == len(unit_test_files()) + 1 >= 4
    proc = run_test_rules(files)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.stdout.count('SUCCESS') == len(files)


def test_a_wrong_expectation_makes_promtool_fail(rendered, tmp_path):
    files = prepare_all(rendered / RULES_NAME, tmp_path)
    xid = next(path for path in files if path.name == 'xid_test.yml')
    test = yaml.safe_load(xid.read_text(encoding='utf-8'))
    firing = next(case for case in test['tests'][0]['alert_rule_test'] if case['exp_alerts'])
    firing['exp_alerts'][0]['exp_labels']['gpu'] = '99'
    xid.write_text(yaml.safe_dump(test), encoding='utf-8')
    proc = run_test_rules([xid])
    assert proc.returncode != 0
    assert 'FAILED' in proc.stdout + proc.stderr


def test_every_alert_has_a_severity_summary_description_and_runbook(rules):
    for name, rule in rules.items():
        assert rule['labels']['severity'] in SEVERITIES, name
        for key in ('summary', 'description', 'runbook'):
            assert len(rule['annotations'].get(key, '').strip()) > 20, (name, key)


def _cases() -> list[tuple[str, str, bool]]:
    """(name set, alert name, fires) for every alert_rule_test of the promtool test files."""
    cases = []
    for path in unit_test_files():
        for group in yaml.safe_load(path.read_text(encoding='utf-8'))['tests']:
            name_set = group['name'].split(':')[0]
            assert name_set in ('gpuvirt', 'dcgm', 'both', 'any'), group['name']
            for case in group['alert_rule_test']:
                cases.append((name_set, case['alertname'], bool(case.get('exp_alerts'))))
    return cases


def test_every_alert_is_tested_firing_and_not_firing_under_each_name_set_it_reads(rules):
    cases = set(_cases())
    missing = []
    for alert in rules:
        for name_set in _sets(alert):
            wanted = [True] if name_set == 'both' else [True, False]
            missing += ['%s %s %s' % (name_set, alert, 'firing' if fires else 'not firing')
                        for fires in wanted if (name_set, alert, fires) not in cases]
    assert missing == []
    assert {alert for _set, alert, _fires in cases} <= set(rules)


def test_each_alert_reads_the_name_sets_it_is_tested_for(rules):
    for name, rule in rules.items():
        reads = {'gpuvirt'} if 'gpuvirt_' in rule['expr'] else set()
        reads |= {'dcgm'} if 'DCGM_FI_' in rule['expr'] else set()
        assert reads == set(_sets(name)) - {'both', 'any'}, name


def test_the_xid_class_table_puts_each_xid_in_one_class_and_names_its_source():
    source = yaml.safe_load((REPO / 'roles' / 'monitoring' / 'vars' / 'main.yml').read_text(encoding='utf-8'))['__monitoring_xid_source']
    assert 'docs.nvidia.com/deploy/xid-errors' in source and '7f70ce9684be0c9d98a367770341ccc1d8bca4465cebe42dab7e23d57df5d5a5' in source
    xids = [entry['xid'] for cls in xid_table() for entry in cls['xids']]
    assert len(xids) == len(set(xids))
    assert {cls['class'] for cls in xid_table()} == {'reboot', 'reset', 'vm_restart', 'inspect', 'support', 'application'}
    by_class = {cls['class']: {entry['xid'] for entry in cls['xids']} for cls in xid_table()}
    # the catalog's immediate actions: 79 reboots the node, 48/95 reset the GPU, 13/31/43 are the application's
    assert by_class['reboot'] == {79}
    assert {48, 62, 64, 74, 95, 119, 120, 140} <= by_class['reset']
    assert {13, 31, 43, 45, 63} <= by_class['application']


def test_the_rendered_expressions_match_the_table(rules):
    known = []
    for cls in xid_table():
        codes = '|'.join(str(entry['xid']) for entry in cls['xids'])
        known += [str(entry['xid']) for entry in cls['xids']]
        expr = rules[cls['alert']]['expr']
        assert 'xid=~"%s"' % codes in expr and 'err_code=~"%s"' % codes in expr
        assert rules[cls['alert']]['labels'] == {'severity': cls['severity'], 'xid_class': cls['class']}
    assert 'xid!~"0|%s"' % '|'.join(known) in rules['GpuXidUnclassified']['expr']


def test_docs_list_every_alert_and_xid_class(rules):
    doc = DOC.read_text(encoding='utf-8')
    for name, rule in rules.items():
        row = re.search(r'^\| `%s` \|.*$' % name, doc, flags=re.MULTILINE)
        assert row, name
        assert '`%s`' % rule['labels']['severity'] in row.group(0), name
    for cls in xid_table():
        row = re.search(r'^\| `%s` \|.*$' % cls['class'], doc, flags=re.MULTILINE)
        assert row, cls['class']
        assert set(re.findall(r'\b\d+\b', row.group(0))) >= {str(entry['xid']) for entry in cls['xids']}, cls['class']


def test_other_jobs_labels_and_windows_reach_the_rules_and_turned_off_rules_go(tmp_path):
    variables = {'monitoring_alert_exporter_jobs': ['vgpu_metrics', 'dcgm-exporter'], 'monitoring_alert_labels': {'team': 'gpu-infra'},
                 'monitoring_alert_event_window': '1h', 'monitoring_alert_drift_max_age_seconds': 3600}
    proc = render_role(tmp_path, variables)
    assert proc.returncode == 0, proc.stdout[-3000:]
    rules = load_rules(tmp_path / RULES_NAME)
    assert rules['GpuExporterDown']['expr'] == 'up{job=~"vgpu_metrics|dcgm-exporter"} == 0'
    assert all(rule['labels']['team'] == 'gpu-infra' for rule in rules.values())
    assert 'increase(gpuvirt_gpu_xid_errors_total{xid=~"79"}[1h])' in rules['GpuXidRebootRequired']['expr']
    assert rules['GpuDeclarationNotChecked']['expr'].endswith('> 3600')
    assert check_rules(tmp_path / RULES_NAME).returncode == 0

    proc = render_role(tmp_path, dict(variables, monitoring_alert_rules=False))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert not (tmp_path / RULES_NAME).exists()
    assert 'rule_files' not in yaml.safe_load((tmp_path / 'prometheus.yml').read_text(encoding='utf-8'))


@pytest.mark.parametrize('variables, message', [
    ({'monitoring_rules_file': 'rules/gpuvirt-alerts.yml'}, 'monitoring_rules_file must be an absolute path, not rules/gpuvirt-alerts.yml'),
    ({'monitoring_alert_slowdown_for': '10 minutes'}, 'not a Prometheus duration (like 30m or 1h30m): monitoring_alert_slowdown_for=10 minutes'),
])
def test_bad_variables_are_refused_by_name_before_anything_is_written(tmp_path, variables, message):
    proc = render_role(tmp_path, variables)
    assert proc.returncode != 0
    assert message in proc.stdout
    assert not (tmp_path / 'prometheus.yml').exists() and not (tmp_path / RULES_NAME).exists()


def test_a_configuration_promtool_refuses_is_not_written_and_the_old_one_stays(tmp_path):
    proc = render_role(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    before = (tmp_path / 'prometheus.yml').read_text(encoding='utf-8')
    proc = render_role(tmp_path, {'monitoring_scrape_interval': 'every minute'})
    assert proc.returncode != 0
    assert '%s: not written, %s check config %s refused it' % (tmp_path / 'prometheus.yml', promtool(), tmp_path / 'prometheus.yml') in proc.stdout
    assert (tmp_path / 'prometheus.yml').read_text(encoding='utf-8') == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith('.host_state-')]


def _series(name: str, labels: dict) -> str:
    return '%s{%s}' % (name, ','.join('%s=%s' % (key, json.dumps(value)) for key, value in sorted(labels.items())))


def test_the_exporters_own_output_fires_exactly_the_lost_gpu_and_the_drift(rendered, tmp_path):
    """The simulated exporter (both name sets, a MIG GPU, a drift file) is scraped healthy, then with GPU 0 lost; its
    samples, as Prometheus would store them, fire GpuLost once for GPU 0 and the declared drift, and nothing else."""
    sys.path.insert(0, str(REPO / 'tests' / 'unit' / 'exporter'))
    from exporter_support import SimExporter, samples  # pylint: disable=import-outside-toplevel,import-error
    drift = tmp_path / 'drift.json'
    drift.write_text(json.dumps({'mig': {'drift': True, 'checked': 0}}))
    host = SimExporter(str(tmp_path / 'gpusim'), ['h100-80gb-hbm3:2'])
    host.mig_sevenths([1])
    host.start('--metric-names', 'both', '--drift-file', str(drift))
    try:
        healthy = samples(host.get()[1])
        host.ctl('lose', '--gpu', '0')
        lost = samples(host.get()[1])
    finally:
        host.stop()
    names = {name for name, _labels, _value in healthy}
    assert {'gpuvirt_gpu_up', 'gpuvirt_gpu_info', 'DCGM_FI_DEV_GPU_TEMP', 'DCGM_FI_DEV_FB_USED', 'gpuvirt_declaration_drift'} <= names
    uuid = next(labels['UUID'] for name, labels, _v in healthy if name == 'gpuvirt_gpu_info' and labels['gpu'] == '0')
    target = {'job': 'vgpu_metrics', 'instance': 'sim-host'}
    before = {_series(name, dict(labels, **target)): value for name, labels, value in healthy}
    after = {_series(name, dict(labels, **target)): value for name, labels, value in lost}
    series = [{'series': _series('up', target), 'values': '1x60'}]
    for key in sorted(set(before) | set(after)):
        first = '%r+0x29' % before[key] if key in before else '_x30'
        series.append({'series': key, 'values': first + (' %r+0x30' % after[key] if key in after else '')})
    rules = load_rules(rendered / RULES_NAME)
    firing_at_45 = {'GpuLost': [{'exp_labels': {'severity': 'critical', 'instance': 'sim-host', 'gpu': '0', 'UUID': uuid}}],
                    'GpuDeclarationDrift': [{'exp_labels': {'severity': 'warning', 'instance': 'sim-host', 'kind': 'mig'}}]}
    cases = [{'eval_time': '20m', 'alertname': name, 'exp_alerts': firing_at_45['GpuDeclarationDrift'] if name == 'GpuDeclarationDrift' else []}
             for name in rules]
    cases += [{'eval_time': '45m', 'alertname': name, 'exp_alerts': firing_at_45.get(name, [])} for name in rules]
    test = {'evaluation_interval': '1m', 'tests': [{'name': 'both: the exporter healthy, then GPU 0 lost', 'interval': '1m',
                                                    'input_series': series, 'alert_rule_test': cases}]}
    path = tmp_path / 'exporter_output_test.yml'
    path.write_text(yaml.safe_dump(prepare(test, rendered / RULES_NAME, rules, path.name), sort_keys=False, width=400), encoding='utf-8')
    proc = run_test_rules([path])
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
