# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every role's README.md is in step with its meta/argument_specs.yml and defaults/main.yml.

The README is hand-written; nothing is generated. Its "## Role variables" section holds one Markdown table with the
columns Variable, Type, Choices, Default and Description, one row per option of the argument spec:
- Variable: the name as a code span;
- Type: the spec's type (``str`` where the spec names none), ``list of <elements>`` where it has elements;
- Choices: the spec's choices as comma-separated code spans, empty where it has none;
- Default: one code span holding the default as YAML (a pipe written ``\\|``), the spec's default or else
  defaults/main.yml's value; ``*unset*`` where neither has one;
- Description: prose, not empty.
The "## Example playbook" section holds a YAML play that runs the role by its FQCN with ``become: true`` and only
variables the spec accepts; "## Requirements" says what the role needs on the host.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

REPO = Path(__file__).resolve().parents[3]
ROLES = sorted(path for path in (REPO / 'roles').iterdir() if path.is_dir())
COLUMNS = ['Variable', 'Type', 'Choices', 'Default', 'Description']
UNSET = '*unset*'
REQUIRED_SECTIONS = ('Requirements', 'Role variables', 'Example playbook')
CODE = re.compile(r'^`([^`]+)`$')
SEPARATOR = re.compile(r'^\|(\s*:?-+:?\s*\|)+$')


def _sections(text: str) -> dict[str, str]:
    """Second-level heading -> the text under it (up to the next heading of level 1 or 2)."""
    sections: dict[str, str] = {}
    name = None
    in_fence = False
    for line in text.splitlines():
        if line.startswith('```'):
            in_fence = not in_fence
        if not in_fence and re.match(r'^#{1,2} ', line):
            name = line[3:].strip() if line.startswith('## ') else None
            if name is not None:
                sections[name] = ''
            continue
        if name is not None:
            sections[name] += line + '\n'
    return sections


def _cells(line: str) -> list[str]:
    """The cells of a table row; a pipe inside a cell is written \\|."""
    inner = line.strip()[1:-1]
    return [cell.strip().replace('\\|', '|') for cell in re.split(r'(?<!\\)\|', inner)]


def _canonical(value) -> str:
    """One spelling per value, so that 1 and true, or "10" and 10, never compare equal."""
    return json.dumps(value, sort_keys=True)


def _yaml_code(cell: str, what: str):
    match = CODE.match(cell)
    if not match:
        raise ValueError('%s %r is not one code span' % (what, cell))
    return yaml.safe_load(match.group(1))


def parse_variables(text: str) -> dict[str, dict]:
    """name -> {'type', 'choices', 'default', 'description'} from the README's variables table."""
    section = _sections(text).get('Role variables')
    if section is None:
        raise ValueError('no "## Role variables" section')
    rows = [line.strip() for line in section.splitlines() if line.strip().startswith('|')]
    if not rows or _cells(rows[0]) != COLUMNS:
        raise ValueError('the variables table does not start with the columns %s' % ' | '.join(COLUMNS))
    if len(rows) < 2 or not SEPARATOR.match(rows[1]):
        raise ValueError('the variables table has no separator row')
    found: dict[str, dict] = {}
    for row in rows[2:]:
        cells = _cells(row)
        if len(cells) != len(COLUMNS):
            raise ValueError('row %r has %d cells, not %d' % (row, len(cells), len(COLUMNS)))
        name_cell, type_cell, choices_cell, default_cell, description = cells
        match = CODE.match(name_cell)
        if not match:
            raise ValueError('variable %r is not a code span' % name_cell)
        name = match.group(1)
        if name in found:
            raise ValueError('%s is documented twice' % name)
        choices = [_yaml_code(item.strip(), 'choice') for item in choices_cell.split(',')] if choices_cell else []
        found[name] = {
            'type': type_cell,
            'choices': choices,
            'default': UNSET if default_cell == UNSET else _yaml_code(default_cell, 'default of %s' % name),
            'description': description,
        }
    return found


def _load_yaml(path: Path):
    return yaml.safe_load(path.read_text(encoding='utf-8'))


def _spec_options(role: Path) -> dict[str, dict]:
    return _load_yaml(role / 'meta' / 'argument_specs.yml')['argument_specs']['main']['options']


def _role_defaults(role: Path) -> dict:
    path = role / 'defaults' / 'main.yml'
    return (_load_yaml(path) or {}) if path.is_file() else {}


def _expected_type(option: dict) -> str:
    kind = option.get('type', 'str')
    return '%s of %s' % (kind, option['elements']) if 'elements' in option else kind


def _example_plays(section: str) -> list:
    blocks = re.findall(r'^```ya?ml\n(.*?)^```', section, flags=re.MULTILINE | re.DOTALL)
    plays = []
    for block in blocks:
        plays.extend(yaml.safe_load(block) or [])
    return plays


def _role_entries(play: dict, fqcn: str) -> list[dict]:
    """The role's uses in a play: roles: entries, and include_role/import_role tasks (their vars)."""
    uses = []
    for entry in play.get('roles') or []:
        if entry == fqcn:
            uses.append({})
        elif isinstance(entry, dict) and fqcn in (entry.get('role'), entry.get('name')):
            params = {key: value for key, value in entry.items() if key not in ('role', 'name', 'vars', 'tags', 'when')}
            uses.append(dict(params, **(entry.get('vars') or {})))
    for task in (play.get('pre_tasks') or []) + (play.get('tasks') or []) + (play.get('post_tasks') or []):
        for action in ('ansible.builtin.include_role', 'ansible.builtin.import_role'):
            if isinstance(task.get(action), dict) and task[action].get('name') == fqcn:
                uses.append(dict(task.get('vars') or {}))
    return uses


def _example_problems(role: Path, section: str | None, options: dict[str, dict]) -> list[str]:
    fqcn = 'gpuvirt.fleet.%s' % role.name
    if section is None:
        return ['no "## Example playbook" section']
    try:
        plays = _example_plays(section)
    except yaml.YAMLError as error:
        return ['the example playbook is not YAML: %s' % error]
    problems = []
    uses = [(play, use) for play in plays if isinstance(play, dict) for use in _role_entries(play, fqcn)]
    if not uses:
        problems.append('no example play runs %s' % fqcn)
    for play, use in uses:
        if play.get('become') is not True:
            problems.append('the example play %r does not set become: true' % play.get('name'))
        given = {**(play.get('vars') or {}), **use}
        given = {key: value for key, value in given.items() if key in options or not key.startswith('ansible_')}
        # Templated values are resolved at run time; the spec validates them there.
        literal = {key: value for key, value in given.items() if '{{' not in json.dumps(value)}
        result = ArgumentSpecValidator(options).validate(literal)
        problems.extend('example play: %s' % message for message in result.error_messages)
        problems.extend('example play sets %s, which the argument spec lacks' % key for key in sorted(set(given) - set(options) - set(literal)))
    return problems


def readme_problems(role: Path) -> list[str]:
    """What keeps the role's README.md from matching its argument spec and defaults; empty when it matches."""
    readme = role / 'README.md'
    if not readme.is_file():
        return ['%s has no README.md' % role.name]
    text = readme.read_text(encoding='utf-8')
    problems = []
    if not text.startswith('# gpuvirt.fleet.%s\n' % role.name):
        problems.append('the README does not start with "# gpuvirt.fleet.%s"' % role.name)
    sections = _sections(text)
    problems.extend('no "## %s" section' % name for name in REQUIRED_SECTIONS if not sections.get(name, '').strip())
    try:
        documented = parse_variables(text)
    except ValueError as error:
        return problems + [str(error)]
    options = _spec_options(role)
    defaults = _role_defaults(role)
    problems.extend('%s is in the argument spec but not in the README' % name for name in sorted(set(options) - set(documented)))
    problems.extend('%s is in the README but not in the argument spec' % name for name in sorted(set(documented) - set(options)))
    problems.extend('%s is in defaults/main.yml but not in the argument spec' % name for name in sorted(set(defaults) - set(options)))
    for name in sorted(set(options) & set(documented)):
        option, row = options[name], documented[name]
        if row['type'] != _expected_type(option):
            problems.append('%s: type %r in the README, %r in the spec' % (name, row['type'], _expected_type(option)))
        if _canonical(row['choices']) != _canonical(option.get('choices', [])):
            problems.append('%s: choices %s in the README, %s in the spec' % (name, row['choices'], option.get('choices', [])))
        wanted = [('the argument spec', option['default'])] if 'default' in option else []
        wanted += [('defaults/main.yml', defaults[name])] if name in defaults else []
        for source, value in wanted:
            if row['default'] == UNSET or _canonical(row['default']) != _canonical(value):
                problems.append('%s: default %r in the README, %r in %s' % (name, row['default'], value, source))
        if not wanted and row['default'] != UNSET:
            problems.append('%s: default %r in the README, but neither the spec nor defaults/main.yml has one' % (name, row['default']))
        if not row['description']:
            problems.append('%s has no description' % name)
    problems.extend(_example_problems(role, sections.get('Example playbook'), options))
    return problems


def test_the_roles_are_the_five_concerns():
    assert {role.name for role in ROLES} >= {'driver', 'exporter', 'mig', 'monitoring', 'vgpu'}


@pytest.mark.parametrize('role', ROLES, ids=lambda role: role.name)
def test_the_role_readme_matches_its_argument_spec_and_defaults(role):
    assert (role / 'meta' / 'argument_specs.yml').is_file()
    assert readme_problems(role) == []


@pytest.mark.parametrize('role', ROLES, ids=lambda role: role.name)
def test_the_role_readme_documents_every_option_of_the_spec(role):
    assert set(parse_variables((role / 'README.md').read_text(encoding='utf-8'))) == set(_spec_options(role))


# A README that falls behind its role must fail: each case breaks a copy of a real role one way.

def _copy_role(tmp_path: Path, name: str) -> Path:
    copy = tmp_path / name
    shutil.copytree(REPO / 'roles' / name, copy, ignore=shutil.ignore_patterns('files', 'templates', 'tasks', 'handlers'))
    return copy


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding='utf-8')
    assert old in text, old
    path.write_text(text.replace(old, new, 1), encoding='utf-8')


def _drop_row(path: Path, name: str) -> None:
    lines = path.read_text(encoding='utf-8').splitlines(keepends=True)
    kept = [line for line in lines if not line.startswith('| `%s` |' % name)]
    assert len(kept) == len(lines) - 1
    path.write_text(''.join(kept), encoding='utf-8')


def test_a_missing_readme_fails(tmp_path):
    role = _copy_role(tmp_path, 'driver')
    (role / 'README.md').unlink()
    assert readme_problems(role) == ['driver has no README.md']


def test_an_option_added_to_the_spec_but_not_the_readme_fails(tmp_path):
    role = _copy_role(tmp_path, 'exporter')
    spec = _load_yaml(role / 'meta' / 'argument_specs.yml')
    spec['argument_specs']['main']['options']['exporter_new_option'] = {'description': 'x', 'type': 'bool', 'default': False}
    (role / 'meta' / 'argument_specs.yml').write_text(yaml.safe_dump(spec), encoding='utf-8')
    assert readme_problems(role) == ['exporter_new_option is in the argument spec but not in the README']


def test_a_row_missing_from_the_readme_fails(tmp_path):
    role = _copy_role(tmp_path, 'mig')
    _drop_row(role / 'README.md', 'mig_reset')
    assert readme_problems(role) == ['mig_reset is in the argument spec but not in the README']


def test_a_variable_the_spec_lacks_fails(tmp_path):
    role = _copy_role(tmp_path, 'vgpu')
    _edit(role / 'README.md', '| `vgpu_persist` |', '| `vgpu_persistence` |')
    assert readme_problems(role) == [
        'vgpu_persist is in the argument spec but not in the README',
        'vgpu_persistence is in the README but not in the argument spec',
    ]


def test_a_stale_default_fails(tmp_path):
    role = _copy_role(tmp_path, 'exporter')
    _edit(role / 'meta' / 'argument_specs.yml', 'default: 9945', 'default: 9946')
    _edit(role / 'defaults' / 'main.yml', 'exporter_port: 9945', 'exporter_port: 9946')
    assert readme_problems(role) == [
        'exporter_port: default 9945 in the README, 9946 in the argument spec',
        'exporter_port: default 9945 in the README, 9946 in defaults/main.yml',
    ]


def test_a_default_of_another_type_fails(tmp_path):
    role = _copy_role(tmp_path, 'driver')
    _edit(role / 'README.md', '| `driver_verify` | bool |  | `true` |', '| `driver_verify` | bool |  | `1` |')
    assert readme_problems(role) == ["driver_verify: default 1 in the README, True in the argument spec",
                                     "driver_verify: default 1 in the README, True in defaults/main.yml"]


def test_a_default_only_defaults_main_has_is_checked(tmp_path):
    role = _copy_role(tmp_path, 'vgpu')
    _edit(role / 'defaults' / 'main.yml', 'vgpu_hostname: "{{ inventory_hostname }}"', 'vgpu_hostname: "{{ ansible_fqdn }}"')
    assert readme_problems(role) == ["vgpu_hostname: default '{{ inventory_hostname }}' in the README, '{{ ansible_fqdn }}' in defaults/main.yml"]


def test_stale_choices_and_types_fail(tmp_path):
    role = _copy_role(tmp_path, 'driver')
    _edit(role / 'meta' / 'argument_specs.yml', 'choices: [auto, open, proprietary]', 'choices: [auto, open]')
    _edit(role / 'meta' / 'argument_specs.yml', 'type: int\n        default: 900', 'type: float\n        default: 900')
    assert readme_problems(role) == [
        "driver_flavor: choices ['auto', 'open', 'proprietary'] in the README, ['auto', 'open'] in the spec",
        "driver_reboot_timeout: type 'int' in the README, 'float' in the spec",
    ]


def test_an_example_without_become_or_with_an_unknown_variable_fails(tmp_path):
    role = _copy_role(tmp_path, 'monitoring')
    _edit(role / 'README.md', '  become: true\n', '')
    _edit(role / 'README.md', '        monitoring_scheme: https\n', '        monitoring_scheme: https\n        monitoring_colour: blue\n')
    problems = readme_problems(role)
    assert len(problems) == 2, problems
    assert problems[0].startswith('the example play ') and problems[0].endswith('does not set become: true')
    assert problems[1].startswith('example play: monitoring_colour. Supported parameters include: ')


def test_an_example_with_a_value_the_spec_refuses_fails(tmp_path):
    role = _copy_role(tmp_path, 'monitoring')
    _edit(role / 'README.md', '        monitoring_scheme: https\n', '        monitoring_scheme: ftp\n')
    assert readme_problems(role) == ['example play: value of monitoring_scheme must be one of: http, https, got: ftp']


def test_an_example_that_does_not_run_the_role_by_fqcn_fails(tmp_path):
    role = _copy_role(tmp_path, 'mig')
    _edit(role / 'README.md', 'role: gpuvirt.fleet.mig', 'role: mig')
    assert readme_problems(role) == ['no example play runs gpuvirt.fleet.mig']


def test_a_table_that_cannot_be_read_fails(tmp_path):
    role = _copy_role(tmp_path, 'mig')
    _edit(role / 'README.md', '| Variable | Type | Choices | Default | Description |', '| Name | Type | Choices | Default | Description |')
    assert readme_problems(role) == ['the variables table does not start with the columns Variable | Type | Choices | Default | Description']
