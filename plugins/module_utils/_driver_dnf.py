# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""The RHEL-family (dnf, rpm) run of nvidia_driver: observe, plan, apply, verify, and roll back on failure.

Called by ``_driver_apply`` once the whitelist, the policy and the flavour are checked (``declared``). It decides
through ``_driver_rpm`` (the pure planner) and touches the host through ``_dnf`` (rpm, dnf, the versionlock list, the
module state) and, as on Debian, ``_services`` (clients, kernel modules) and ``_sysfs`` (the loaded module).

Order of a change: stop the clients, unload the modules, enable the module stream (streams layout), write the lock,
install every package in one dnf transaction at its exact version, load the modules, start the clients. A failed
command, or a failed install scriptlet of a driver package, rolls back: the previous module stream, lock and packages
are put back, the modules loaded and the clients started again.
"""

from __future__ import annotations

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _commands, _dnf, _driver, _driver_rpm, _facts, _sysfs

_OUTPUT_TAIL = 4000


class DnfDriver:
    """One run on an RPM host; `run` is the caller's run (params, result, check mode, services, kernel modules)."""

    def __init__(self, run, runner: _commands.Runner, failure):
        self.run = run
        self.params = run.params
        self.result = run.result
        self.dnf = _dnf.Dnf(runner)
        self.failure = failure  # the exception class that ends the run as a failure: failure(msg, **extra)
        self.outcome = {'reload_failed': None, 'unloaded': False, 'clients_not_started': []}

    def installed(self) -> dict:
        return self.dnf.installed(_driver_rpm.is_driver_package)

    def observe(self) -> dict:
        return {
            'installed': self.installed(),
            'lock': self.dnf.read_lock(),
            'module': self.dnf.module_state(_driver_rpm.MODULE),
            'loaded': _facts.kernel_module(_sysfs.read_driver_version_file(self.run.modules.proc_root)),
            'active_clients': self.run.services.active(self.params['clients']),
        }

    def layout(self) -> str:
        wanted = self.params['dnf_layout']
        if wanted != 'auto':
            return wanted
        return 'streams' if self.dnf.has_module(_driver_rpm.MODULE) else 'versionlock'

    def desired(self, declared: dict, available: dict) -> dict:
        p = self.params
        if p['source'] != 'cuda':
            raise _driver.DriverError('source %s: on the RHEL family the packages come from the CUDA repository (source cuda)' % p['source'])
        if p['kernel_modules'] != 'dkms':
            raise _driver.DriverError('kernel_modules precompiled: on the RHEL family this module installs the DKMS kernel modules')
        flavor = declared['flavor']
        meta = _driver_rpm.package_names('%s.0' % (p['branch'] or '000'), flavor)[0]
        offered = {_driver_rpm.driver_version_of(evr) for evr in available.get(meta, [])}
        if p['branch'] is not None:
            version = _driver.resolve_version(p['whitelist'], branch=str(p['branch']).strip(), available=offered)
        else:
            version = _driver.resolve_version(p['whitelist'], version=p['version'])
        _driver.check_supports(version, declared['gpus'], declared['policy'])
        return {'version': version, 'flavor': flavor, 'layout': self.layout(), 'nvswitch': p['nvswitch'],
                'reload': p['reload'], 'clients': p['clients']}

    def apply(self, steps: list) -> dict:
        outcome = self.outcome
        for step in steps:
            action = step['action']
            if action == 'stop_clients':
                self.run.services.stop(step['units'])
            elif action == 'unload_modules':
                outcome['reload_failed'] = self.run.modules.unload(step['modules'])
                outcome['unloaded'] = outcome['reload_failed'] is None
            elif action == 'module_enable':
                self.dnf.module_enable(step['module'], step['stream'], step['reset'])
            elif action == 'module_restore':
                self.dnf.module_restore(step['module'], step['stream'], step['state'])
            elif action == 'lock':
                self.dnf.write_lock(step['content'])
            elif action == 'install':
                self.dnf.install(step['packages'], step['remove'], _driver_rpm.failed_scriptlets)
            elif action == 'load_modules':
                if outcome['reload_failed'] is None:
                    outcome['reload_failed'] = self.run.modules.load(step['modules'])
            elif action == 'start_clients':
                outcome['clients_not_started'] = self.run.services.start(step['units'])
        return outcome

    def rollback(self, before: dict, error: _commands.CommandError, steps: list):
        undo = _driver_rpm.rollback_plan(before, self.installed())
        try:
            self.apply(undo)
        except _commands.CommandError as exc:
            raise self.failure('install failed (%s) and so did the rollback (%s); driver packages now: %s'
                               % (error, exc, self.installed()), rolled_back=False,
                               output=getattr(exc, 'output', '')[-_OUTPUT_TAIL:]) from exc
        finally:
            if self.outcome['unloaded']:
                self.run.modules.load(list(_driver.MODULES_LOAD))
            stopped = [s['units'] for s in steps if s['action'] == 'stop_clients']
            if stopped:
                self.run.services.start(stopped[0])
        restored = {n: i['evr'] for n, i in sorted(self.installed().items())}
        return self.failure('install failed: %s. Rolled back: the previous driver packages are installed again (%s)'
                            % (error, ', '.join('%s=%s' % kv for kv in restored.items()) or 'none'),
                            rolled_back=True, packages=restored, output=getattr(error, 'output', '')[-_OUTPUT_TAIL:])

    def execute(self, declared: dict) -> None:
        if not self.dnf.versionlock_plugin():
            raise self.failure('refused, nothing changed: the dnf versionlock plugin is not installed '
                               '(dnf install python3-dnf-plugin-versionlock); the driver version cannot be kept without it')
        try:
            if self.params['update_cache'] and not self.run.module.check_mode:
                self.dnf.makecache()
            available = self.dnf.available(_driver_rpm.is_driver_package)
            desired = self.desired(declared, available)
            current = dict(self.observe(), available=available)
            planned = _driver_rpm.plan(current, desired)
        except _driver.DriverError as exc:
            raise self.failure('refused, nothing changed: %s' % exc) from exc
        except _commands.CommandError as exc:
            raise self.failure(str(exc), output=getattr(exc, 'output', '')[-_OUTPUT_TAIL:]) from exc
        self.result.update(version=planned['version'], flavor=planned['flavor'], plan=planned['steps'], changed=planned['changed'],
                           packages=planned['after'], installed_version=_driver_rpm.installed_driver_version(current['installed']),
                           loaded=current['loaded'], reboot_required=planned['reboot_required'], reboot_reason=planned['reason'],
                           before=planned['before'], after=planned['after'], layout=desired['layout'], stream=planned['stream'],
                           package_managed=bool(current['installed']))
        if self.run.module.check_mode or not planned['changed']:
            return
        try:
            outcome = self.apply(planned['steps'])
        except _commands.CommandError as exc:
            raise self.rollback(current, exc, planned['steps']) from exc
        self.verify(desired, planned, outcome)

    def verify(self, desired: dict, planned: dict, outcome: dict) -> None:
        observed = self.observe()
        problems = _driver_rpm.verify(observed, desired, planned)
        packages = {n: i['evr'] for n, i in sorted(observed['installed'].items())}
        loaded = observed['loaded']
        reason = _driver.loaded_mismatch(loaded, desired['version'], desired['flavor'])
        if reason and outcome['reload_failed']:
            reason += '; the modules could not be reloaded: %s' % outcome['reload_failed']
        if outcome['clients_not_started']:
            self.result['warnings'].append('GPU clients that did not start again: %s' % ', '.join(outcome['clients_not_started']))
        self.result.update(packages=packages, installed_version=_driver_rpm.installed_driver_version(observed['installed']),
                           loaded=loaded, reboot_required=reason is not None, reboot_reason=reason, after=packages,
                           package_managed=True)
        if problems:
            raise self.failure('the driver packages differ from the plan after the install: %s' % '; '.join(problems))
