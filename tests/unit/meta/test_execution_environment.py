# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The execution environment definition pins what requirements/controller.txt pins, and the CI samples are valid YAML
that run playbooks this collection has."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
META = REPO / 'meta'
CI_SAMPLES = [REPO / 'docs' / 'ci' / 'gitlab-ci.yml', REPO / 'docs' / 'ci' / 'github-actions-rollout.yml']
PIN = re.compile(r'^([A-Za-z0-9_.\-\[\]]+)==([A-Za-z0-9_.+\-]+)$')


def _requirements(path: Path) -> dict[str, str]:
    """name (lower case) -> pinned version; any requirement that is not pinned with == fails."""
    pins = {}
    for line in path.read_text(encoding='utf-8').splitlines():
        line = line.split('#', 1)[0].strip()
        if not line:
            continue
        match = PIN.match(line)
        assert match, '%s: %r is not pinned with ==' % (path.name, line)
        pins[match.group(1).lower()] = match.group(2)
    return pins


@pytest.fixture(scope='module', name='ee')
def ee_fixture() -> dict:
    return yaml.safe_load((META / 'execution-environment.yml').read_text(encoding='utf-8'))


def test_the_ee_is_ansible_builder_v3_with_its_dependency_files(ee):
    assert ee['version'] == 3
    assert ee['images']['base_image']['name']
    deps = ee['dependencies']
    for key in ('python', 'system', 'galaxy'):
        assert (META / deps[key]).is_file(), deps[key]
    assert set(ee) <= {'version', 'images', 'dependencies', 'additional_build_files', 'additional_build_steps', 'options', 'build_arg_defaults'}


def test_every_python_requirement_is_pinned_as_on_the_controller(ee):
    controller = _requirements(REPO / 'requirements' / 'controller.txt')
    ee_pins = _requirements(META / ee['dependencies']['python'])
    assert 'nvidia-ml-py' in ee_pins
    for name, version in ee_pins.items():
        assert controller.get(name) == version, '%s==%s in the EE, %s in requirements/controller.txt' % (name, version, controller.get(name))
    for key in ('ansible_core', 'ansible_runner'):
        assert PIN.match(ee['dependencies'][key]['package_pip']), key
    core = PIN.match(ee['dependencies']['ansible_core']['package_pip'])
    assert controller['ansible-core'] == core.group(2)


def test_the_ee_installs_this_collections_version(ee):
    version = yaml.safe_load((REPO / 'galaxy.yml').read_text(encoding='utf-8'))['version']
    tarball = 'gpuvirt-fleet-%s.tar.gz' % version
    assert ee['additional_build_files'][0]['src'].endswith(tarball)
    collections = yaml.safe_load((META / ee['dependencies']['galaxy']).read_text(encoding='utf-8'))['collections']
    assert [c['name'].rsplit('/', 1)[-1] for c in collections] == [tarball]


def test_the_bindep_file_names_the_ssh_client(ee):
    text = (META / ee['dependencies']['system']).read_text(encoding='utf-8')
    assert 'openssh-clients [platform:rpm]' in text and 'openssh-client [platform:dpkg]' in text


@pytest.mark.parametrize('path', CI_SAMPLES, ids=lambda p: p.name)
def test_the_ci_sample_is_yaml_and_runs_playbooks_that_exist(path):
    data = yaml.safe_load(path.read_text(encoding='utf-8'))
    assert isinstance(data, dict) and data
    text = path.read_text(encoding='utf-8')
    playbooks = set(re.findall(r'playbooks/[\w\-]+\.yml', text))
    assert {'playbooks/site.yml', 'playbooks/rollout.yml', 'playbooks/report.yml'} <= playbooks
    for playbook in playbooks:
        assert (REPO / playbook).is_file(), playbook
    assert 'rollout-summary.json' in text and '--check' in text and 'ansible-lint' in text
    assert (REPO / data.get('variables', data.get('env', {}))['INVENTORY']).is_file()
