# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The playbooks' one variable scheme (docs/variables.md): every playbook setting is a gpuvirt_* name read in
playbooks/vars/settings.yml, where the new name wins over its deprecated old name, which wins over the default; the
playbooks read no old name anywhere else; the first play warns about old names; the docs and the changelog fragment
name every one of them. The settings are resolved by ansible-playbook itself, on localhost.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
PLAYBOOKS = REPO / 'playbooks'
SETTINGS = PLAYBOOKS / 'vars' / 'settings.yml'
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name('ansible-playbook')
RENAMED = yaml.safe_load(SETTINGS.read_text(encoding='utf-8'))['__gpuvirt_renamed']
# the playbook settings among the renamed names (the rest are the exporter role's variables)
PLAYBOOK_RENAMED = {old: new for old, new in RENAMED.items() if new.startswith('gpuvirt_')}

pytestmark = pytest.mark.skipif(not ANSIBLE_PLAYBOOK.exists(), reason='needs ansible-playbook beside the Python running the tests')


def _play(tmp_path: Path, tasks: list, variables: dict, vars_files: list[str]) -> subprocess.CompletedProcess:
    playbook = tmp_path / 'play.yml'
    playbook.write_text(yaml.safe_dump([{'name': 'Settings', 'hosts': 'localhost', 'gather_facts': False, 'vars_files': vars_files,
                                         'tasks': tasks}]))
    varfile = tmp_path / 'vars.json'
    varfile.write_text(json.dumps(dict(variables, ansible_python_interpreter=sys.executable)))
    env = dict(os.environ, ANSIBLE_NOCOLOR='1', ANSIBLE_LOCALHOST_WARNING='False', ANSIBLE_INVENTORY_UNPARSED_WARNING='False',
               ANSIBLE_COLLECTIONS_PATH=str(REPO / '.build'))
    env.pop('ANSIBLE_CONFIG', None)
    return subprocess.run([str(ANSIBLE_PLAYBOOK), '-i', 'localhost,', '-c', 'local', '-e', '@%s' % varfile, str(playbook)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120, check=False)


def _resolved(tmp_path: Path, names: list[str], variables: dict, vars_files: list[str] | None = None) -> dict:
    """What each of `names` resolves to in a play that loads settings.yml (and `vars_files`), with `variables` set."""
    out = tmp_path / 'resolved.json'
    tasks = [{'name': 'Write the resolved settings', 'ansible.builtin.copy': {
        'content': '{{ %s | to_json }}' % ('{%s}' % ', '.join("'%s': %s" % (name, name) for name in names)),
        'dest': str(out), 'mode': '0644'}}]
    proc = _play(tmp_path, tasks, variables, [str(SETTINGS)] + (vars_files or []))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return json.loads(out.read_text())


def _expected(values: dict, cwd: Path) -> dict:
    """The plan's output directory is made absolute (against the directory ansible-playbook runs in), as before."""
    return dict(values, __gpuvirt_plan_output_dir=str(cwd / values['__gpuvirt_plan_output_dir']))


def test_a_setting_is_its_new_name_else_its_old_name_else_the_default(tmp_path):
    internal = ['__' + new for new in PLAYBOOK_RENAMED.values()]
    defaults = _resolved(tmp_path, internal, {})
    assert defaults['__gpuvirt_rollout_batch'] == '25%' and defaults['__gpuvirt_rollout_canary_count'] == 1
    assert defaults['__gpuvirt_rollout_summary_path'] == str(tmp_path / 'gpuvirt-output' / 'rollout-summary.json')
    assert defaults['__gpuvirt_report_output'] == str(tmp_path / 'gpuvirt-output' / 'fleet-report.html')
    assert defaults['__gpuvirt_rollout_slurm_node'] == 'localhost'  # the short host name
    old_only = _resolved(tmp_path, internal, {old: 'old-%s' % old for old in PLAYBOOK_RENAMED})
    assert old_only == _expected({'__' + new: 'old-%s' % old for old, new in PLAYBOOK_RENAMED.items()}, tmp_path)
    both = _resolved(tmp_path, internal, dict({old: 'old' for old in PLAYBOOK_RENAMED}, **{new: 'new-%s' % new for new in PLAYBOOK_RENAMED.values()}))
    assert both == _expected({'__' + new: 'new-%s' % new for new in PLAYBOOK_RENAMED.values()}, tmp_path)
    assert not {'old', 'new'} & {value for value in defaults.values() if isinstance(value, str)}


def test_the_exporter_roles_scrape_variables_default_to_their_old_names(tmp_path):
    exporter_renamed = {old: new for old, new in RENAMED.items() if not new.startswith('gpuvirt_')}
    assert exporter_renamed and all(new.startswith('exporter_scrape_') for new in exporter_renamed.values())
    defaults_file = [str(REPO / 'roles' / 'exporter' / 'defaults' / 'main.yml')]
    resolved = _resolved(tmp_path, list(exporter_renamed.values()), {'rollout_exporter_url': 'https://old/metrics', 'rollout_exporter_retries': 9},
                         defaults_file)
    assert resolved == {'exporter_scrape_url': 'https://old/metrics', 'exporter_scrape_username': '', 'exporter_scrape_password': '',
                        'exporter_scrape_validate_certs': False, 'exporter_scrape_retries': 9}


@pytest.mark.parametrize('variables, url', [
    ({}, 'http://127.0.0.1:9945/metrics'),
    ({'exporter_listen_address': '::', 'exporter_port': 9100}, 'http://127.0.0.1:9100/metrics'),
    ({'exporter_listen_address': 'fd00::5'}, 'http://[fd00::5]:9945/metrics'),
    ({'exporter_listen_address': '10.0.0.5', 'exporter_tls_cert_file': '/etc/gpuvirt/tls.pem'}, 'https://10.0.0.5:9945/metrics'),
    ({'exporter_scrape_url': 'https://node7:9945/metrics', 'exporter_scrape_username': 'prom'}, 'https://node7:9945/metrics'),
])
def test_the_exporter_role_says_where_the_host_reads_its_exporter(tmp_path, variables, url):
    """The scrape_request entry point: what gpu_facts' exporter option reads for the XID baseline (an IPv6 listen
    address in brackets, a wildcard read on loopback, https with the role's TLS certificate)."""
    out = tmp_path / 'request.json'
    tasks = [{'name': 'Ask', 'ansible.builtin.import_role': {'name': 'gpuvirt.fleet.exporter', 'tasks_from': 'scrape_request',
                                                             'rolespec_validate': False}},
             {'name': 'Write', 'ansible.builtin.copy': {'content': '{{ exporter_scrape_request | to_json }}', 'dest': str(out), 'mode': '0644'}}]
    proc = _play(tmp_path, tasks, variables, [])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    request = json.loads(out.read_text())
    assert request == {'url': url, 'username': variables.get('exporter_scrape_username', ''), 'password': '',
                       'validate_certs': False, 'timeout': 10}


def _warning(tmp_path: Path, variables: dict) -> str:
    tasks = [{'name': 'Warn', 'ansible.builtin.import_tasks': str(PLAYBOOKS / 'tasks' / 'deprecated_names.yml')}]
    proc = _play(tmp_path, tasks, variables, [str(SETTINGS)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return proc.stdout


def test_old_names_are_named_with_their_replacement_in_a_deprecation_warning(tmp_path):
    assert 'DEPRECATION' not in _warning(tmp_path, {'gpuvirt_rollout_batch': 2, 'gpuvirt_report_output': 'x.html'})
    out = _warning(tmp_path, {'rollout_batch': 2, 'report_output': 'x.html', 'rollout_exporter_url': 'http://x', 'rollout_canary': 'a group'})
    assert '[DEPRECATION WARNING] localhost: rollout_batch is deprecated, use gpuvirt_rollout_batch;' in out
    assert 'report_output is deprecated, use gpuvirt_report_output' in out
    assert 'rollout_exporter_url is deprecated, use exporter_scrape_url' in out
    assert 'rollout_canary is' not in out


def _yaml_files() -> list[Path]:
    return sorted(path for path in PLAYBOOKS.rglob('*.yml') if path != SETTINGS)


@pytest.mark.parametrize('path', _yaml_files(), ids=lambda path: str(path.relative_to(PLAYBOOKS)))
def test_the_playbooks_read_no_old_name_outside_the_settings_file(path):
    old = re.compile(r'(?<![\w.])(%s)(?!\w)' % '|'.join(sorted(RENAMED, key=len, reverse=True)))
    found = [line.strip() for line in path.read_text(encoding='utf-8').splitlines() if old.search(line)]
    assert found == []


def test_every_setting_the_playbooks_read_comes_from_the_settings_file_or_is_documented():
    settings = set(yaml.safe_load(SETTINGS.read_text(encoding='utf-8')))
    used = set()
    for path in _yaml_files():
        used |= set(re.findall(r'(?<![\w.])(__gpuvirt_(?:gate|rollout|report|plan|output|monitoring)_\w+)', path.read_text(encoding='utf-8')))
    prefixes = ('__gpuvirt_gate_', '__gpuvirt_report_', '__gpuvirt_plan_', '__gpuvirt_output', '__gpuvirt_monitoring')
    internal = {name for name in used if name.startswith(prefixes) or name[2:] in PLAYBOOK_RENAMED.values()}
    assert internal - settings == set()
    doc = (REPO / 'docs' / 'variables.md').read_text(encoding='utf-8')
    for name in settings - {'__gpuvirt_renamed'}:
        assert '`%s`' % name[2:] in doc, name[2:]


def test_the_docs_and_the_changelog_name_every_old_name_and_its_replacement():
    doc = (REPO / 'docs' / 'variables.md').read_text(encoding='utf-8')
    # the deprecations as released (changelogs/changelog.yaml), and any fragment not released yet
    releases = yaml.safe_load((REPO / 'changelogs' / 'changelog.yaml').read_text(encoding='utf-8'))['releases']
    notes = [item for release in releases.values() for item in release.get('changes', {}).get('deprecated_features', [])]
    for path in sorted((REPO / 'changelogs' / 'fragments').glob('*.yml')):
        notes += yaml.safe_load(path.read_text(encoding='utf-8')).get('deprecated_features', [])
    deprecated = ' '.join(' '.join(note.split()) for note in notes)
    for old, new in PLAYBOOK_RENAMED.items():
        assert re.search(r'\| `%s` \|.*\| `%s` \|$' % (new, old), doc, flags=re.MULTILINE), old
        assert re.search(r'(?<!\w)%s(?!\w)' % old, deprecated), old
    for old, new in RENAMED.items():
        assert new in doc and old in deprecated, old
        # the fragment names each replacement, or its family where the new name is the old one with gpuvirt_ in front
        assert new in deprecated or (new == 'gpuvirt_' + old and 'gpuvirt_%s_*' % old.split('_')[0] in deprecated), new
