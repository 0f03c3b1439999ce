# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""The services and kernel-modules seam: every systemctl and modprobe command.

``Services`` asks systemd which units run and stops and starts them; ``KernelModules`` reads which kernel modules
are loaded (``<proc_root>/modules``, read through the ``_sysfs`` seam) and unloads and loads them. They decide nothing: which units and modules, and
when, come from the caller. Every command goes through the shared ``_commands.Runner``.
"""

from __future__ import annotations

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _commands, _sysfs

ENV = {'LC_ALL': 'C'}
PROC = _sysfs.PROCFS


class Services:
    def __init__(self, runner: _commands.Runner):
        self.runner = runner

    def active(self, units: list[str]) -> list[str]:
        """The units of `units` that run now (systemctl is-active)."""
        return [unit for unit in units if self.runner.run(['systemctl', 'is-active', '--quiet', unit], ENV, check=False)[0] == 0]

    def stop(self, units: list[str]) -> None:
        """Stop each unit; a unit that does not stop raises _commands.CommandError."""
        for unit in units:
            self.runner.run(['systemctl', 'stop', unit], ENV)

    def start(self, units: list[str]) -> list[str]:
        """Start each unit; returns those that did not start (reported, not fatal)."""
        return [unit for unit in units if self.runner.run(['systemctl', 'start', unit], ENV, check=False)[0] != 0]


class KernelModules:
    def __init__(self, runner: _commands.Runner, proc_root: str = PROC):
        self.runner = runner
        self.proc_root = proc_root

    def loaded(self) -> set | None:
        """The names of the loaded kernel modules, or None where <proc_root>/modules cannot be read."""
        return _sysfs.read_loaded_modules(self.proc_root)

    def unload(self, modules: list[str]) -> str | None:
        """modprobe -r those of `modules` that are loaded, in the order given; None on success, else why not (module in
        use, no permission)."""
        loaded = self.loaded()
        present = [m for m in modules if m in loaded] if loaded is not None else list(modules)
        if not present:
            return None
        rc, out, err = self.runner.run(['modprobe', '-r'] + present, ENV, check=False)
        return None if rc == 0 else (err or out).strip() or 'modprobe -r failed (rc=%d)' % rc

    def load(self, modules: list[str]) -> str | None:
        """modprobe each module in order; None on success, else why the first that failed did not load."""
        for name in modules:
            rc, out, err = self.runner.run(['modprobe', name], ENV, check=False)
            if rc != 0:
                return (err or out).strip() or 'modprobe %s failed (rc=%d)' % (name, rc)
        return None
