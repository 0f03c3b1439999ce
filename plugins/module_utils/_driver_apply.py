# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""Bring this host's NVIDIA driver to a whitelisted version: observe, plan, apply, verify, and roll back on failure.

The implementation behind the `gpuvirt.fleet.nvidia_driver` module. It decides through `_driver` (the pure planner)
and touches the host only through the seams: `_packages` (apt, dpkg, the pin file), `_services` (systemctl,
modprobe, /proc/modules) and `_sysfs` (/proc/driver/nvidia/version).

1. observe: the driver packages dpkg knows, the holds, the pin, what the repositories offer, the loaded kernel
   module and the running GPU clients;
2. plan: `_driver.plan` from the whitelisted, policy-checked desired state (a refusal changes nothing; in check
   mode the plan is the answer);
3. apply: each step through its seam, in order (stop clients, unload modules, unhold, pin, install, hold, load
   modules, start clients);
4. verify: observe again and `_driver.verify`; whether the loaded module is the installed driver decides
   `reboot_required`.

A failed command during apply rolls back (`_driver.rollback_plan`): the previous packages, pin and holds are put
back, the modules loaded and the clients started again, and the result says so (`rolled_back`), or says that the
rollback failed too and which packages the host has now. On the RHEL family (dnf, rpm) `_driver_dnf` observes, plans
(`_driver_rpm`), applies and rolls back instead, after the same whitelist, policy and flavour checks.
"""

from __future__ import annotations

from ansible_collections.gpuvirt.fleet.plugins.module_utils import (_commands, _driver, _driver_dnf, _driver_origin, _facts, _inputs, _packages,
                                                                    _services, _sysfs)
from ansible_collections.gpuvirt.fleet.plugins.module_utils._driver_policy import POLICY

_OUTPUT_TAIL = 4000


class _Failed(Exception):
    """Ends the run as a failure with `msg`; `extra` are added to the result."""

    def __init__(self, msg: str, **extra):
        super().__init__(msg)
        self.msg = msg
        self.extra = extra


def _output(exc: Exception) -> str:
    return getattr(exc, 'output', '')[-_OUTPUT_TAIL:]


def _versions(installed: dict) -> dict:
    return {name: info['version'] for name, info in sorted(installed.items()) if info['installed']}


def diff(result: dict) -> dict | None:
    """The driver packages before and after, for --diff; None where nothing was planned (a refusal)."""
    if 'before' not in result:
        return None
    return {'before': {'packages': result['before']}, 'after': {'packages': result['after']}}


class _Run:
    """One run: `module` gives the parameters, check mode, run_command and get_bin_path (and serves GPU discovery)."""

    def __init__(self, module, result: dict, proc_root: str, root: str = '/'):
        self.module = module
        self.root = root
        self.params = module.params
        self.result = result
        runner = _commands.Runner(module.run_command)
        self.runner = runner
        result['commands'] = runner.log
        self.apt = _packages.Apt(runner)
        self.services = _services.Services(runner)
        self.modules = _services.KernelModules(runner, proc_root)
        self.outcome = {'reload_failed': None, 'unloaded': False, 'clients_not_started': []}

    def installed(self) -> dict:
        return self.apt.installed(_driver.is_driver_package)

    # ---- observe ------------------------------------------------------------------------------
    def gpus(self) -> list:
        if self.params['gpus'] is not None:
            return _driver.normalize_gpus(self.params['gpus'])
        from ansible_collections.gpuvirt.fleet.plugins.module_utils import _discovery  # only when asked to discover
        try:
            _host, found = _discovery.discover(self.module)
        except _discovery.DiscoveryError as exc:
            self.result['warnings'].append('GPU discovery failed (%s); the policy check sees no GPUs' % exc)
            return []
        return _driver.normalize_gpus(found)

    def observe(self, names: list) -> dict:
        installed = self.installed()
        if names:
            names = sorted(set(names) | {n for n, i in installed.items() if i['installed'] and _driver.carries_driver_version(n)})
        return {
            'installed': installed,
            'held': self.apt.held(),
            'preferences': self.apt.read_file(_driver.PREFERENCES_FILE),
            'available': self.apt.available(names),
            'loaded': _facts.kernel_module(_sysfs.read_driver_version_file(self.modules.proc_root)),
            'active_clients': self.services.active(self.params['clients']),
        }

    def origin(self) -> tuple[dict, dict]:
        """The loaded module and where it came from (dpkg, the runfile installer's files, the driver mounts)."""
        loaded = _facts.kernel_module(_sysfs.read_driver_version_file(self.modules.proc_root))
        found = _driver_origin.origin(loaded, self.installed(), _packages.installer_files(_driver_origin.RUNFILE_FILES, self.root),
                                      _sysfs.read_mounts(self.modules.proc_root))
        return loaded, found

    # ---- plan ---------------------------------------------------------------------------------
    def declared(self) -> dict:
        """What the declaration says before the repository is asked: whitelist, policy, GPUs and flavour checked."""
        p = self.params
        policy = _driver.merge_policy(POLICY, p['policy'])
        gpus = self.gpus()
        whitelist = _driver.normalize_whitelist(p['whitelist'])  # a malformed whitelist is refused before anything else
        flavor = _driver.choose_flavor(gpus, p['flavor'], policy)
        _driver.resolve_version(p['whitelist'], version=p['version'], branch=p['branch'])  # a version or branch not whitelisted
        return {'policy': policy, 'gpus': gpus, 'whitelist': whitelist, 'flavor': flavor,
                'version': None if p['version'] is None else str(p['version']).strip(),
                'branch': None if p['branch'] is None else str(p['branch']).strip()}

    def complies(self, declared: dict) -> bool:
        """Decide on a driver the package manager did not install; True where the run ends here (it complies)."""
        loaded, found = self.origin()
        self.result.update(source=found['source'], package_managed=found['package_managed'])
        if found['package_managed'] or found['source'] == 'none':
            return False
        verdict = _driver_origin.decide(found, loaded, declared, self.params['adopt'])
        if verdict is None:
            warning = _driver_origin.adopt_warning(found)
            if warning and not self.module.check_mode:
                self.result['warnings'].append(warning)
            return False
        _driver.check_supports(loaded['version'], declared['gpus'], declared['policy'])
        self.result.update(msg=verdict['msg'], version=loaded['version'], flavor=declared['flavor'], loaded=loaded, packages={},
                           installed_version=None, reboot_required=False, reboot_reason=None)
        return True

    def desired(self, declared: dict) -> dict:
        p = self.params
        policy, gpus, flavor = declared['policy'], declared['gpus'], declared['flavor']
        if p['branch'] is not None:
            branch = str(p['branch']).strip()
            _driver.resolve_version(p['whitelist'], branch=branch)  # refuse a branch that is not whitelisted
            probe = self.package_names('%s.0' % branch, flavor, gpus)
            self.update_cache()
            driver_pkg = [x['name'] for x in probe if x['version'] == 'driver'][0]
            offered = {_driver.upstream(v) for v in self.apt.available([driver_pkg])[driver_pkg]}
            version = _driver.resolve_version(p['whitelist'], branch=branch, available=offered)
        else:
            version = _driver.resolve_version(p['whitelist'], version=p['version'])
            self.update_cache()
        _driver.check_supports(version, gpus, policy)
        return {'version': version, 'flavor': flavor, 'packages': self.package_names(version, flavor, gpus),
                'reload': p['reload'], 'clients': p['clients'], 'gpus': gpus}

    def package_names(self, version, flavor, gpus) -> list:
        p = self.params
        return _driver.package_names(version, flavor, source=p['source'], nvswitch=p['nvswitch'], server=p['canonical_server'],
                                     kernel_modules=p['kernel_modules'], kernel_flavour=p['kernel_flavour'],
                                     nvlink5=any(g['architecture'] == 'blackwell' for g in gpus))

    def update_cache(self):
        if self.params['update_cache'] and not self.module.check_mode:
            self.apt.update_cache()

    # ---- apply --------------------------------------------------------------------------------
    def apply(self, steps: list) -> dict:
        """Run the steps; returns (and keeps in self.outcome) what happened to the modules and clients."""
        outcome = self.outcome
        for step in steps:
            action = step['action']
            if action == 'stop_clients':
                self.services.stop(step['units'])
            elif action == 'unload_modules':
                outcome['reload_failed'] = self.modules.unload(step['modules'])
                outcome['unloaded'] = outcome['reload_failed'] is None
            elif action == 'unhold':
                self.apt.unhold(step['packages'])
            elif action == 'pin':
                self.apt.write_file(step['path'], step['content'])
            elif action == 'unpin':
                self.apt.remove_file(step['path'])
            elif action == 'install':
                self.apt.install(dict(step['packages'], **{n: None for n in step.get('repair', []) if n not in step['packages']}),
                                 step['remove'])
            elif action == 'hold':
                installed = self.installed()
                self.apt.hold(sorted(set(n for n in step['packages'] if n in installed)
                                     | {n for n, i in installed.items() if i['installed']}))
            elif action == 'load_modules':
                if outcome['reload_failed'] is None:
                    outcome['reload_failed'] = self.modules.load(step['modules'])
            elif action == 'start_clients':
                outcome['clients_not_started'] = self.services.start(step['units'])
        return outcome

    def rollback(self, before: dict, error: _commands.CommandError, steps: list) -> _Failed:
        """Put the packages, pin and holds of `before` back, load the modules and start the clients again; the failure
        to end the run with (raised here where the rollback failed too)."""
        undo = _driver.rollback_plan(before['installed'], before['held'], before['preferences'], self.installed())
        try:
            self.apply(undo)
        except _commands.CommandError as exc:
            raise _Failed('install failed (%s) and so did the rollback (%s); driver packages now: %s'
                          % (error, exc, self.installed()), rolled_back=False, output=_output(exc)) from exc
        finally:
            if self.outcome['unloaded']:
                self.modules.load(list(_driver.MODULES_LOAD))
            stopped = [s['units'] for s in steps if s['action'] == 'stop_clients']
            if stopped:
                self.services.start(stopped[0])
        restored = _versions(self.installed())
        return _Failed('install failed: %s. Rolled back: the previous driver packages are installed again (%s)'
                       % (error, ', '.join('%s=%s' % kv for kv in restored.items()) or 'none'),
                       rolled_back=True, packages=restored, output=_output(error))

    # ---- one run ------------------------------------------------------------------------------
    def run(self) -> None:
        problems = _inputs.driver(self.params)  # the validation pass, before anything is observed
        if problems:
            raise _Failed('refused, nothing changed: %s' % '; '.join(problems))
        found = _packages.manager(self.module.get_bin_path, _packages.os_family(self.root))
        if found is None:
            raise _Failed('neither apt-get nor dnf found: this module supports Debian, Ubuntu and the RHEL family')
        if found == 'dnf':
            try:
                declared = self.declared()  # whitelist, policy and flavour: refused before anything is observed
            except _driver.DriverError as exc:
                raise _Failed('refused, nothing changed: %s' % exc) from exc
            _driver_dnf.DnfDriver(self, self.runner, _Failed).execute(declared)
            return
        try:
            declared = self.declared()
            if self.complies(declared):
                return
            desired = self.desired(declared)
            current = self.observe([x['name'] for x in desired['packages']])
            planned = _driver.plan(current, desired)
        except _driver.DriverError as exc:
            raise _Failed('refused, nothing changed: %s' % exc) from exc
        except _commands.CommandError as exc:
            raise _Failed(str(exc), output=_output(exc)) from exc
        self.result.update(version=planned['version'], flavor=planned['flavor'], plan=planned['steps'], changed=planned['changed'],
                           packages=planned['after'], installed_version=_driver.installed_driver_version(current['installed']),
                           loaded=current['loaded'], reboot_required=planned['reboot_required'], reboot_reason=planned['reason'],
                           before=planned['before'], after=planned['after'])
        if self.module.check_mode or not planned['changed']:
            return
        try:
            outcome = self.apply(planned['steps'])
        except _commands.CommandError as exc:
            raise self.rollback(current, exc, planned['steps']) from exc
        self.verify(desired, planned, outcome)
        self.result['package_managed'] = True

    def verify(self, desired: dict, planned: dict, outcome: dict) -> None:
        observed = self.observe([])
        problems = _driver.verify(observed, desired, planned)
        packages = _versions(observed['installed'])
        loaded = observed['loaded']
        reason = _driver.loaded_mismatch(loaded, desired['version'], desired['flavor'])
        if reason and outcome['reload_failed']:
            reason += '; the modules could not be reloaded: %s' % outcome['reload_failed']
        if outcome['clients_not_started']:
            self.result['warnings'].append('GPU clients that did not start again: %s' % ', '.join(outcome['clients_not_started']))
        self.result.update(packages=packages, installed_version=_driver.installed_driver_version(observed['installed']),
                           loaded=loaded, reboot_required=reason is not None, reboot_reason=reason, after=packages)
        if problems:
            raise _Failed('the driver packages differ from the plan after the install: %s' % '; '.join(problems))


def apply_driver(module, proc_root: str = _services.PROC, root: str = '/') -> dict:
    """Bring the driver to what `module.params` declare (nvidia_driver's options); changes nothing in check mode.

    Returns a result for `_results.finish` (with `diff`): changed, failed, msg, warnings, plan, commands, and after a
    plan version, flavor, packages, installed_version, loaded, reboot_required, reboot_reason and before/after (the
    driver packages, for diff); on a failed install also rolled_back and output (the failed command's output). On apt
    hosts also source and package_managed (`_driver_origin`); `root` is where the host's files are (the runfile's).
    """
    result = {'changed': False, 'failed': False, 'msg': '', 'warnings': [], 'plan': []}
    try:
        _Run(module, result, proc_root, root).run()
    except _Failed as exc:
        result.update(exc.extra, failed=True, msg=exc.msg)
    return result
