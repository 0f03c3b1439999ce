# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""The RPM package-manager seam: every rpm and dnf command, the versionlock list and the module state file.

``Dnf`` observes (rpm -qa, dnf repoquery, dnf module list, /etc/dnf/modules.d, the versionlock list) and applies what
it is told (dnf module reset/enable, the lock file, one dnf install transaction). It decides nothing: which packages
count and what to do with them come from ``_driver_dnf``, planned by ``_driver_rpm``. Every command goes through the
shared ``_commands.Runner``.
"""

from __future__ import annotations

import configparser
import os

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _commands, _sysfs

DNF_ENV = {'LC_ALL': 'C', 'LANG': 'C'}
VERSIONLOCK_CONF = '/etc/dnf/plugins/versionlock.conf'
DEFAULT_LOCKLIST = '/etc/dnf/plugins/versionlock.list'
MODULES_DIR = '/etc/dnf/modules.d'
_RPM_QF = '%{NAME}\\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\\t%{ARCH}\\n'
_REPO_QF = '%{name}\t%{epoch}:%{version}-%{release}\t%{arch}'
# What dnf is asked about: the driver packages of NVIDIA's repository.
DRIVER_GLOBS = ['*nvidia*', 'cuda-drivers*']


def locklist_path(conf_text: str | None) -> str:
    """The versionlock plugin's list file (locklist in its [main] section), or the default."""
    parser = configparser.ConfigParser()
    try:
        parser.read_string(conf_text or '')
    except configparser.Error:
        return DEFAULT_LOCKLIST
    return parser.get('main', 'locklist', fallback=DEFAULT_LOCKLIST).strip() or DEFAULT_LOCKLIST


def parse_module_file(text: str | None) -> dict | None:
    """{stream, state} from /etc/dnf/modules.d/<name>.module (INI, dnf writes it on module enable/reset)."""
    if not text:
        return None
    parser = configparser.ConfigParser()
    try:
        parser.read_string(text)
    except configparser.Error:
        return None
    for section in parser.sections():
        return {'stream': parser.get(section, 'stream', fallback='') or None, 'state': parser.get(section, 'state', fallback='') or None}
    return None


class Dnf:
    def __init__(self, runner: _commands.Runner):
        self.runner = runner

    def run(self, argv: list[str], check: bool = True) -> tuple[int, str, str]:
        return self.runner.run(argv, DNF_ENV, check)

    # ---- observe ----------------------------------------------------------------------------
    def installed(self, keep) -> dict:
        """{name: {evr, arch}} of the installed packages whose name `keep`s (rpm -qa)."""
        _rc, out, _err = self.run(['rpm', '-qa', '--qf', _RPM_QF])
        result = {}
        for line in out.splitlines():
            parts = line.split('\t')
            if len(parts) == 3 and keep(parts[0]):
                result[parts[0]] = {'evr': parts[1], 'arch': parts[2]}
        return result

    def available(self, keep) -> dict:
        """{name: [epoch:version-release]} that the enabled repositories offer, every module stream included and no
        lock applied (what could be installed once the plan's stream and lock are in place)."""
        _rc, out, _err = self.run(['dnf', '-q', 'repoquery', '--disable-modular-filtering', '--disableplugin=versionlock',
                                   '--qf', _REPO_QF] + DRIVER_GLOBS)
        result: dict[str, list[str]] = {}
        for line in out.splitlines():
            parts = line.strip().split('\t')
            if len(parts) == 3 and keep(parts[0]) and parts[1] not in result.setdefault(parts[0], []):
                result[parts[0]].append(parts[1])
        return result

    def has_module(self, name: str) -> bool:
        """The repositories carry module metadata for `name` (dnf module list)."""
        rc, out, _err = self.run(['dnf', '-q', 'module', 'list', name], check=False)
        return rc == 0 and any(line.split()[:1] == [name] for line in out.splitlines())

    @staticmethod
    def module_state(name: str) -> dict | None:
        return parse_module_file(_sysfs.read_text(os.path.join(MODULES_DIR, name + '.module')))

    @staticmethod
    def locklist() -> str:
        return locklist_path(_sysfs.read_text(VERSIONLOCK_CONF))

    def read_lock(self) -> str | None:
        return _sysfs.read_text(self.locklist())

    def versionlock_plugin(self) -> bool:
        """The versionlock plugin is there (dnf-plugins-core / python3-dnf-plugin-versionlock)."""
        return _sysfs.read_text(VERSIONLOCK_CONF) is not None

    def makecache(self) -> None:
        self.run(['dnf', '-q', 'makecache'])

    # ---- apply ------------------------------------------------------------------------------
    def module_enable(self, name: str, stream: str, reset: bool) -> None:
        if reset:
            self.run(['dnf', '-y', '-q', 'module', 'reset', name])
        self.run(['dnf', '-y', '-q', 'module', 'enable', '%s:%s' % (name, stream)])

    def module_restore(self, name: str, stream: str | None, state: str | None) -> None:
        """Back to a previous module state: reset, then enable (or disable) the stream it had."""
        self.run(['dnf', '-y', '-q', 'module', 'reset', name])
        if state == 'enabled' and stream:
            self.run(['dnf', '-y', '-q', 'module', 'enable', '%s:%s' % (name, stream)])
        elif state == 'disabled':
            self.run(['dnf', '-y', '-q', 'module', 'disable', name])

    def write_lock(self, content: str | None) -> None:
        path = self.locklist()
        tmp = path + '.tmp'
        with open(tmp, 'w', encoding='utf-8') as handle:
            handle.write(content or '')
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)

    def install(self, packages: dict, remove: list[str], failed_scriptlets) -> None:
        """One dnf transaction: each package at its exact epoch:version-release (up or down), `remove` erased with
        --allowerasing where they conflict, else in a second step. A failed install scriptlet of a driver package
        (dnf itself exits 0) raises CommandError like a failed command."""
        if packages:
            argv = ['dnf', '-y', 'install', '--allowerasing'] + ['%s-%s' % (n, evr) for n, evr in sorted(packages.items())]
            _rc, out, err = self.run(argv)
            failed = failed_scriptlets(out + err)
            if failed:
                raise _commands.CommandError('%s: the install scriptlet of %s failed' % (' '.join(argv[:3]), ', '.join(failed)),
                                             output=out + err)
        left = [n for n in remove if n in self.installed(lambda name: name in remove)]
        if left:
            self.run(['dnf', '-y', 'remove', '--noautoremove'] + sorted(left))
