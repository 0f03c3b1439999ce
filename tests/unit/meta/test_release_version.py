# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One version: galaxy.yml's is the newest release of the changelog, and every version_added of a plugin or return
value names a version the changelog has released (so nothing claims to come from a version that never shipped)."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
VERSION_ADDED = re.compile(r'^\s*version_added:\s*[\'"]?([0-9.]+)[\'"]?\s*$', re.MULTILINE)


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split('.'))


def _released() -> list[str]:
    changes = yaml.safe_load((REPO / 'changelogs' / 'changelog.yaml').read_text(encoding='utf-8'))
    return sorted(changes['releases'], key=_key)


def test_galaxy_version_is_the_newest_release_of_the_changelog():
    version = yaml.safe_load((REPO / 'galaxy.yml').read_text(encoding='utf-8'))['version']
    assert _released()[-1] == version
    assert 'v%s' % version in (REPO / 'CHANGELOG.rst').read_text(encoding='utf-8')


def test_every_version_added_names_a_released_version():
    released = set(_released())
    found = {}
    for path in sorted((REPO / 'plugins').rglob('*.py')):
        for version in VERSION_ADDED.findall(path.read_text(encoding='utf-8')):
            found.setdefault(version, []).append(path.relative_to(REPO).as_posix())
    assert found, 'no version_added found: the pattern is broken'
    unreleased = {v: paths for v, paths in found.items() if v not in released}
    assert not unreleased, 'version_added names versions the changelog never released: %s' % unreleased
