# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""The package-manager seam: every apt, dpkg, apt-mark, systemctl and modprobe command the driver module runs.

``Apt`` observes (dpkg-query, apt-cache, apt-mark, the pin file) and applies one planned step at a time. It decides
nothing: the steps come from ``_driver.plan``. Every command goes through ``Apt.run``.
"""

from __future__ import annotations

import os
import re

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _driver

APT_ENV = {'DEBIAN_FRONTEND': 'noninteractive', 'LC_ALL': 'C', 'APT_LISTCHANGES_FRONTEND': 'none'}
# Keep the admin's configuration files; never ask.
_DPKG_OPTIONS = ['-o', 'Dpkg::Options::=--force-confdef', '-o', 'Dpkg::Options::=--force-confold']


class PackageError(Exception):
    """A command failed; ``output`` carries its stdout and stderr."""

    def __init__(self, msg: str, output: str = ''):
        super().__init__(msg)
        self.output = output


class Apt:
    def __init__(self, module):
        self.module = module
        self.log: list[dict] = []

    def run(self, argv: list[str], check: bool = True) -> tuple[int, str, str]:
        """The only door to the host's commands."""
        rc, out, err = self.module.run_command(argv, environ_update=APT_ENV)
        self.log.append({'cmd': ' '.join(argv), 'rc': rc})
        if check and rc != 0:
            lines = (err or out or '').strip().splitlines()
            raise PackageError('%s failed (rc=%d): %s' % (' '.join(argv), rc, lines[-1] if lines else 'no output'),
                               output=(out or '') + (err or ''))
        return rc, out, err

    # ---- observe ----------------------------------------------------------------------------
    def installed(self) -> dict:
        """{name: {version, status (dpkg's two letters), installed}} for the driver's packages dpkg knows."""
        _rc, out, _err = self.run(['dpkg-query', '-W', '-f', '${Package}\t${Version}\t${db:Status-Abbrev}\n'])
        result = {}
        for line in out.splitlines():
            parts = line.split('\t')
            if len(parts) < 3 or not _driver.is_driver_package(parts[0]):
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
        try:
            with open(path, encoding='utf-8') as handle:
                return handle.read()
        except OSError:
            return None

    def active_units(self, units: list[str]) -> list[str]:
        active = []
        for unit in units:
            rc, _out, _err = self.run(['systemctl', 'is-active', '--quiet', unit], check=False)
            if rc == 0:
                active.append(unit)
        return active

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

    def stop_units(self, units: list[str]) -> None:
        for unit in units:
            self.run(['systemctl', 'stop', unit])

    def start_units(self, units: list[str]) -> list[str]:
        """Start each unit; returns those that did not start (reported, not fatal)."""
        failed = []
        for unit in units:
            rc, _out, _err = self.run(['systemctl', 'start', unit], check=False)
            if rc != 0:
                failed.append(unit)
        return failed

    def unload_modules(self, modules: list[str]) -> str | None:
        """modprobe -r in dependency order; None on success, else why not (module in use, no permission)."""
        loaded = self._loaded_modules()
        present = [m for m in modules if m in loaded] if loaded is not None else list(modules)
        if not present:
            return None
        rc, out, err = self.run(['modprobe', '-r'] + present, check=False)
        return None if rc == 0 else (err or out).strip() or 'modprobe -r failed (rc=%d)' % rc

    def load_modules(self, modules: list[str]) -> str | None:
        for name in modules:
            rc, out, err = self.run(['modprobe', name], check=False)
            if rc != 0:
                return (err or out).strip() or 'modprobe %s failed (rc=%d)' % (name, rc)
        return None

    def _loaded_modules(self) -> set | None:
        text = self.read_file('/proc/modules')
        if text is None:
            return None
        return {re.split(r'\s+', line, maxsplit=1)[0] for line in text.splitlines() if line}
