# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Render the monitoring role's alert rules on the controller and run promtool on them.

Used by the pytest module beside it and by `make rules` (`python tests/unit/monitoring_rules/promtool_rules.py DIR`):
1. gpuvirt.fleet.monitoring runs on localhost (ansible-playbook, this checkout as the collection) and writes the
   scrape configuration and the rules file into DIR, both validated by promtool in the role itself;
2. `promtool check rules` on the rendered file;
3. `promtool test rules` on the unit tests of promtool/*.yml, and on one test generated from the role's XID class
   table (every XID of the table, and XIDs it lacks, under both name sets). The test files carry no rule_files and
   may leave out exp_annotations: the copies in DIR name the rendered file, and each expected alert gets the
   annotations of its rule with every {{ $labels.NAME }} taken from its exp_labels (a label the alert lacks is an
   error, so an annotation naming a missing label fails).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
TEST_DIR = HERE / 'promtool'
ROLE = REPO / 'roles' / 'monitoring'
RULES_NAME = 'gpuvirt-alerts.yml'
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name('ansible-playbook')
LABEL_REF = re.compile(r'\{\{\s*\$labels\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}')
GENERATED = 'generated_xid_table_test.yml'


def promtool() -> str:
    path = shutil.which('promtool')
    if not path:
        raise RuntimeError("promtool is not installed: install Debian's prometheus package (make deps)")
    return path


def render_role(outdir: Path, variables: dict | None = None, hosts: dict | None = None) -> subprocess.CompletedProcess:
    """Run gpuvirt.fleet.monitoring on localhost; its configuration and rules land in outdir."""
    outdir.mkdir(parents=True, exist_ok=True)
    inventory = {'all': {'children': {'gpu_hosts': {'hosts': hosts if hosts is not None else {
        'gpu-a': {'ansible_host': '192.0.2.10'}, 'gpu-b': {'ansible_host': '192.0.2.11', 'exporter_port': 9946}}}}}}
    (outdir / 'inventory.yml').write_text(yaml.safe_dump(inventory), encoding='utf-8')
    play = [{'name': 'Render the monitoring files', 'hosts': 'localhost', 'connection': 'local', 'gather_facts': False,
             'tasks': [{'name': 'Run the monitoring role', 'ansible.builtin.include_role': {'name': 'gpuvirt.fleet.monitoring'}}]}]
    (outdir / 'render.yml').write_text(yaml.safe_dump(play, sort_keys=False), encoding='utf-8')
    extra = dict({'monitoring_prometheus_config': str(outdir / 'prometheus.yml'),
                  'monitoring_dashboard_dir': str(outdir / 'grafana'),
                  'ansible_python_interpreter': sys.executable}, **(variables or {}))
    (outdir / 'vars.json').write_text(json.dumps(extra), encoding='utf-8')
    env = dict(os.environ, ANSIBLE_NOCOLOR='1', ANSIBLE_LOCALHOST_WARNING='False', ANSIBLE_COLLECTIONS_PATH=str(REPO / '.build'),
               ANSIBLE_CONFIG=str(REPO / 'ansible.cfg'))
    link = REPO / '.build' / 'ansible_collections' / 'gpuvirt' / 'fleet'
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to('../../..')
    return subprocess.run([str(ANSIBLE_PLAYBOOK), '-i', str(outdir / 'inventory.yml'), '-e', '@%s' % (outdir / 'vars.json'),
                           str(outdir / 'render.yml')], capture_output=True, text=True, cwd=outdir, env=env, timeout=300, check=False)


def load_rules(rules_file: Path) -> dict[str, dict]:
    """alert name -> its rule, from a rendered rules file."""
    groups = yaml.safe_load(rules_file.read_text(encoding='utf-8'))['groups']
    return {rule['alert']: rule for group in groups for rule in group['rules'] if 'alert' in rule}


def expand(template: str, labels: dict, where: str) -> str:
    """A Prometheus annotation template with only {{ $labels.NAME }} in it, filled from labels."""
    def label(match: re.Match) -> str:
        if match.group(1) not in labels:
            raise ValueError('%s: the annotation names label %s, which the expected alert lacks' % (where, match.group(1)))
        return str(labels[match.group(1)])
    text = LABEL_REF.sub(label, template)
    if '{{' in text:
        raise ValueError('%s: the annotation uses more than {{ $labels.NAME }}: %s' % (where, template))
    return text


def prepare(test: dict, rules_file: Path, rules: dict[str, dict], where: str) -> dict:
    """A copy of a promtool test file that names the rendered rules and carries the expected annotations."""
    test = dict(test, rule_files=[str(rules_file)])
    for group in test.get('tests', []):
        for case in group.get('alert_rule_test', []):
            name = case['alertname']
            if name not in rules:
                raise ValueError('%s: no alert %s in %s' % (where, name, rules_file))
            for alert in case.get('exp_alerts') or []:
                if 'exp_annotations' not in alert:
                    labels = dict(alert.get('exp_labels') or {}, alertname=name)
                    alert['exp_annotations'] = {key: expand(value, labels, '%s %s' % (where, name))
                                                for key, value in rules[name].get('annotations', {}).items()}
    return test


def xid_table() -> list[dict]:
    return yaml.safe_load((ROLE / 'vars' / 'main.yml').read_text(encoding='utf-8'))['__monitoring_xid_classes']


def generated_xid_test(extra_xids=(171, 999)) -> dict:
    """Every XID of the class table, and XIDs it lacks, appear at minute 50 on their own GPU, once under the gpuvirt
    names (host g-gpuvirt) and once under dcgm-exporter's (host g-dcgm); at minute 55 each class alert fires for
    exactly its XIDs on both hosts, and 40 minutes later none fires."""
    unclassified = yaml.safe_load((ROLE / 'vars' / 'main.yml').read_text(encoding='utf-8'))['__monitoring_xid_unclassified']
    classes = [(c['alert'], c['severity'], c['class'], [x['xid'] for x in c['xids']]) for c in xid_table()]
    classes.append((unclassified['alert'], unclassified['severity'], 'unclassified', list(extra_xids)))
    series = [{'series': 'up{job="vgpu_metrics",instance="%s"}' % host, 'values': '1+0x100'} for host in ('g-gpuvirt', 'g-dcgm')]
    cases_at_55, cases_at_95 = [], []
    for alert, severity, cls, xids in classes:
        expected = []
        for xid in xids:
            gpu = dict(gpu=str(xid), UUID='GPU-%04d' % xid)
            series.append({'series': 'gpuvirt_gpu_xid_errors_total{job="vgpu_metrics",instance="g-gpuvirt",gpu="%(gpu)s",UUID="%(UUID)s",xid="%(xid)s"}'
                           % dict(gpu, xid=xid), 'values': '_x50 1x50'})
            series.append({'series': 'DCGM_FI_DEV_XID_ERRORS{job="vgpu_metrics",instance="g-dcgm",gpu="%(gpu)s",UUID="%(UUID)s",err_code="%(xid)s",'
                                     'err_msg="generated"}' % dict(gpu, xid=xid), 'values': '_x50 %dx50' % xid})
            for host in ('g-gpuvirt', 'g-dcgm'):
                expected.append({'exp_labels': dict(gpu, instance=host, xid=str(xid), severity=severity, xid_class=cls)})
        cases_at_55.append({'eval_time': '55m', 'alertname': alert, 'exp_alerts': expected})
        cases_at_95.append({'eval_time': '95m', 'alertname': alert, 'exp_alerts': []})
    return {'evaluation_interval': '1m', 'tests': [{'name': 'gpuvirt and dcgm: every XID of the class table fires its class alert',
                                                    'interval': '1m', 'input_series': series,
                                                    'alert_rule_test': cases_at_55 + cases_at_95}]}


def unit_test_files() -> list[Path]:
    return sorted(TEST_DIR.glob('*_test.yml'))


def prepare_all(rules_file: Path, outdir: Path) -> list[Path]:
    """The prepared copies of every test file, and the generated XID table test, in outdir."""
    rules = load_rules(rules_file)
    written = []
    sources = [(path.name, yaml.safe_load(path.read_text(encoding='utf-8'))) for path in unit_test_files()]
    sources.append((GENERATED, generated_xid_test()))
    for name, test in sources:
        target = outdir / name
        target.write_text(yaml.safe_dump(prepare(test, rules_file, rules, name), sort_keys=False, width=200), encoding='utf-8')
        written.append(target)
    return written


def check_rules(rules_file: Path) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), 'check', 'rules', str(rules_file)], capture_output=True, text=True, timeout=120, check=False)


def run_test_rules(files: list[Path]) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), 'test', 'rules'] + [str(path) for path in files], capture_output=True, text=True,
                          timeout=300, check=False)


def main(argv: list[str]) -> int:
    outdir = Path(argv[1] if len(argv) > 1 else REPO / '.build' / 'rules').resolve()
    if outdir.exists():
        shutil.rmtree(outdir)
    proc = render_role(outdir)
    if proc.returncode != 0:
        print(proc.stdout[-4000:] + proc.stderr[-2000:])
        print('rules: gpuvirt.fleet.monitoring did not render')
        return 1
    rules_file = outdir / RULES_NAME
    status = 0
    tests = outdir / 'tests'
    tests.mkdir()
    for step, proc in (('check', check_rules(rules_file)), ('test', run_test_rules(prepare_all(rules_file, tests)))):
        print(proc.stdout + proc.stderr, end='')
        if proc.returncode != 0:
            print('rules: promtool %s rules failed' % step)
            status = 1
    if status == 0:
        print('rules: promtool check and test rules passed (%s, %d alerts)' % (rules_file, len(load_rules(rules_file))))
    return status


if __name__ == '__main__':
    sys.exit(main(sys.argv))
