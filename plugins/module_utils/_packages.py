# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""The package-manager seam: every apt-get, apt-cache, apt-mark and dpkg-query command, and the apt pin file.

``Apt`` observes (dpkg-query, apt-cache, apt-mark, the pin file) and applies what it is told, one call at a time. It
decides nothing: which packages count and what to do with them come from the caller (``_driver_apply``, planned by
``_driver``). Every command goes through the shared ``_commands.Runner``. On the RHEL family it only tells that dnf
is the package manager (``manager``, ``os_family``); the dnf and rpm commands are ``_dnf``'s.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _commands

APT_ENV = {'DEBIAN_FRONTEND': 'noninteractive', 'LC_ALL': 'C', 'APT_LISTCHANGES_FRONTEND': 'none'}
# Keep the admin's configuration files; never ask.
_DPKG_OPTIONS = ['-o', 'Dpkg::Options::=--force-confdef', '-o', 'Dpkg::Options::=--force-confold']


_REDHAT_IDS = ('rhel', 'centos', 'fedora', 'rocky', 'almalinux', 'ol', 'amzn')


def os_family(root: str = '/') -> str | None:
    """'redhat' where /etc/os-release names the RHEL family (ID or ID_LIKE), 'debian' for Debian and Ubuntu, else None."""
    try:
        with open(os.path.join(root, 'etc/os-release'), encoding='utf-8') as handle:
            text = handle.read()
    except OSError:
        return None
    ids = []
    for line in text.splitlines():
        key, _sep, value = line.partition('=')
        if key.strip() in ('ID', 'ID_LIKE'):
            ids += value.strip().strip('"\'').split()
    if any(i in _REDHAT_IDS for i in ids):
        return 'redhat'
    return 'debian' if any(i in ('debian', 'ubuntu') for i in ids) else None


def manager(which: Callable[[str], str | None], family: str | None = None) -> str | None:
    """'dnf' on the RHEL family where dnf is there (as Ansible's pkg_mgr fact decides: by the OS family, not by which
    tools happen to be installed), else 'apt' where apt-get is, else 'dnf' where dnf is, else None; `which` finds a
    command's path."""
    if family == 'redhat' and which('dnf') is not None:
        return 'dnf'
    if which('apt-get') is not None:
        return 'apt'
    return 'dnf' if which('dnf') is not None else None


def installer_files(paths, root: str = '/') -> list[str]:
    """Those of `paths` (absolute, as on the host) that exist under `root`: files another installer left."""
    return [path for path in paths if os.path.lexists(os.path.join(root, path.lstrip('/')))]


class Apt:
    def __init__(self, runner: _commands.Runner):
        self.runner = runner

    def run(self, argv: list[str], check: bool = True) -> tuple[int, str, str]:
        return self.runner.run(argv, APT_ENV, check)

    # ---- observe ----------------------------------------------------------------------------
    def installed(self, keep: Callable[[str], bool]) -> dict:
        """{name: {version, status (dpkg's two letters), installed}} for the packages dpkg knows whose name `keep`s."""
        _rc, out, _err = self.run(['dpkg-query', '-W', '-f', '${Package}\t${Version}\t${db:Status-Abbrev}\n'])
        result = {}
        for line in out.splitlines():
            parts = line.split('\t')
            if len(parts) < 3 or not keep(parts[0]):
                continue
            status = parts[2].strip()
            if status[1:2] in ('n', ''):
                continue
            result[parts[0]] = {'version': parts[1], 'status': status, 'installed': status[1:2] == 'i'}
        return result

    def held(self) -> list[str]:
        _rc, out, _err = self.run(['apt-mark', 'showhold'])
        return sorted(line.strip() for line in out.splitlines() if line.strip())

    def available(self, names: list[str]) -> dict:
        """{name: [package versions the configured repositories offer]} (apt-cache madison)."""
        result: dict[str, list[str]] = {name: [] for name in names}
        if not names:
            return result
        _rc, out, _err = self.run(['apt-cache', 'madison'] + list(names), check=False)
        for line in out.splitlines():
            parts = [p.strip() for p in line.split('|')]
            if len(parts) >= 3 and parts[0] in result and parts[1] not in result[parts[0]]:
                result[parts[0]].append(parts[1])
        return result

    @staticmethod
    def read_file(path: str) -> str | None:
        """An apt configuration file (the pin), or None where there is none."""
        try:
            return Path(path).read_text(encoding='utf-8')
        except OSError:
            return None

    def update_cache(self) -> None:
        self.run(['apt-get', 'update', '-q'])

    # ---- apply ------------------------------------------------------------------------------
    def hold(self, names: list[str]) -> None:
        if names:
            self.run(['apt-mark', 'hold'] + sorted(names))

    def unhold(self, names: list[str]) -> None:
        if names:
            self.run(['apt-mark', 'unhold'] + sorted(names))

    @staticmethod
    def write_file(path: str, content: str) -> None:
        tmp = path + '.tmp'
        with open(tmp, 'w', encoding='utf-8') as handle:
            handle.write(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)

    @staticmethod
    def remove_file(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def install(self, packages: dict, remove: list[str]) -> None:
        """One apt transaction: name=version for each package (name alone for None), name- for each removal."""
        args = ['%s=%s' % (name, version) if version else name for name, version in sorted(packages.items())]
        args += ['%s-' % name for name in remove]
        if not args:
            return
        self.run(['apt-get', 'install', '-y', '-q', '--no-install-recommends', '--allow-downgrades',
                  '--allow-change-held-packages'] + _DPKG_OPTIONS + args)
