# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The execution environment files: the collection's own declaration (meta/execution-environment.yml) in the shape
ansible-builder reads from an installed collection, the standalone EE definition of this collection's image, and the CI
samples, which run this collection's playbooks by FQCN inside that image.

`make ee-check` runs ansible-builder itself (create and introspect); these tests pin the rules it cannot see."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
STANDALONE = REPO / 'execution-environment'
CI_SAMPLES = [REPO / 'docs' / 'ci' / 'gitlab-ci.yml', REPO / 'docs' / 'ci' / 'github-actions-rollout.yml']
PIN = re.compile(r'^([A-Za-z0-9_.\-\[\]]+)==([A-Za-z0-9_.+\-]+)$')
REQUIREMENT = re.compile(r'^([A-Za-z0-9_.\-]+)(\[[\w,]+\])?\s*((?:[<>!~=]=?|===)\s*[\w.*+\-]+(?:\s*,\s*(?:[<>!~=]=?)\s*[\w.*+\-]+)*)?$')


def _lines(path: Path) -> list[str]:
    return [line.split('#', 1)[0].strip() for line in path.read_text(encoding='utf-8').splitlines() if line.split('#', 1)[0].strip()]


def _galaxy() -> dict:
    return yaml.safe_load((REPO / 'galaxy.yml').read_text(encoding='utf-8'))


@pytest.fixture(scope='module', name='meta_ee')
def meta_ee_fixture() -> dict:
    return yaml.safe_load((REPO / 'meta' / 'execution-environment.yml').read_text(encoding='utf-8'))


@pytest.fixture(scope='module', name='standalone')
def standalone_fixture() -> dict:
    return yaml.safe_load((STANDALONE / 'execution-environment.yml').read_text(encoding='utf-8'))


def test_the_collection_declares_files_relative_to_its_root_that_the_tarball_ships(meta_ee):
    deps = meta_ee['dependencies']
    assert set(deps) <= {'python', 'system'}, 'ansible-builder reads only python and system from a collection'
    ignored = {str(p).rstrip('/') for p in _galaxy()['build_ignore']}
    for key in ('python', 'system'):
        path = deps[key]
        assert not Path(path).is_absolute() and '..' not in Path(path).parts, path
        assert (REPO / path).is_file(), '%s: %s is read from the collection root and does not exist there' % (key, path)
        assert not any(path == i or path.startswith(i + '/') for i in ignored), '%s is left out of the Galaxy build' % path


def test_what_the_collection_declares_are_ranges_not_pins(meta_ee):
    lines = _lines(REPO / meta_ee['dependencies']['python'])
    assert any(line.startswith('nvidia-ml-py') for line in lines)
    for line in lines:
        assert REQUIREMENT.match(line), '%r is not a plain requirement' % line
        assert '==' not in line, '%r pins an exact version: an EE that lists the collection chooses those' % line


def test_the_declared_nvml_floor_admits_the_controller_pin(meta_ee):
    floor = [line for line in _lines(REPO / meta_ee['dependencies']['python']) if line.startswith('nvidia-ml-py')][0]
    minimum = tuple(int(x) for x in floor.split('>=')[1].split(',')[0].split('.'))
    pinned = [PIN.match(line) for line in _lines(REPO / 'requirements' / 'controller.txt')]
    version = [m.group(2) for m in pinned if m and m.group(1) == 'nvidia-ml-py'][0]
    assert tuple(int(x) for x in version.split('.')) >= minimum


def test_the_bindep_file_names_the_ssh_client(meta_ee):
    text = (REPO / meta_ee['dependencies']['system']).read_text(encoding='utf-8')
    assert 'openssh-clients [platform:rpm]' in text and 'openssh-client [platform:dpkg]' in text


def test_the_standalone_ee_is_v3_outside_meta_with_its_files(standalone):
    assert standalone['version'] == 3
    assert standalone['images']['base_image']['name']
    assert (STANDALONE / standalone['dependencies']['galaxy']).is_file()
    assert set(standalone) <= {'version', 'images', 'dependencies', 'additional_build_files', 'additional_build_steps', 'options',
                               'build_arg_defaults'}
    assert 'execution-environment' in _galaxy()['build_ignore'], 'the standalone definition needs a checkout: not in the tarball'


def test_the_standalone_ee_pins_the_controllers_ansible_core(standalone):
    controller = {m.group(1): m.group(2) for m in map(PIN.match, _lines(REPO / 'requirements' / 'controller.txt')) if m}
    core = PIN.match(standalone['dependencies']['ansible_core']['package_pip'])
    assert core and core.group(2) == controller['ansible-core']
    assert PIN.match(standalone['dependencies']['ansible_runner']['package_pip'])


def test_the_standalone_ee_installs_this_collections_version(standalone):
    tarball = 'gpuvirt-fleet-%s.tar.gz' % _galaxy()['version']
    assert standalone['additional_build_files'][0]['src'].endswith(tarball)
    collections = yaml.safe_load((STANDALONE / standalone['dependencies']['galaxy']).read_text(encoding='utf-8'))['collections']
    assert [c['name'].rsplit('/', 1)[-1] for c in collections] == [tarball]
    assert standalone['options']['tags'] == ['gpuvirt-fleet-ee:%s' % _galaxy()['version']]


@pytest.mark.parametrize('path', CI_SAMPLES, ids=lambda p: p.name)
def test_the_ci_sample_runs_this_collections_playbooks_by_fqcn_in_this_ee(path):
    data = yaml.safe_load(path.read_text(encoding='utf-8'))
    assert isinstance(data, dict) and data
    text = path.read_text(encoding='utf-8')
    assert 'playbooks/' not in text, 'the inventory repository has no playbooks/ of this collection: run them by FQCN'
    playbooks = set(re.findall(r'gpuvirt\.fleet\.([a-z_]+)', text))
    assert {'site', 'rollout', 'report'} <= playbooks
    for playbook in playbooks:
        assert (REPO / 'playbooks' / ('%s.yml' % playbook)).is_file(), playbook
    assert 'rollout-summary.json' in text and '--check' in text and 'ansible-lint' in text
    assert set(re.findall(r'gpuvirt-fleet-ee:([\w.]+)', text)) == {_galaxy()['version']}
