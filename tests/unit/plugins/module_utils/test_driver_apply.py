# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The driver orchestrator and its seams against a scripted host: which commands run, in which order, and what the
module returns (the fleet test runs the same paths with real apt and dpkg)."""
from __future__ import annotations

import copy

import pytest

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _commands, _driver, _driver_apply, _results, _services, _sysfs
from ansible_collections.gpuvirt.fleet.plugins.modules import nvidia_driver

OPEN = 'NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  %s  Release Build  (dvs-builder@U16)  Thu Sep 25 2025\n'
WANTED = ['libnvidia-nscq-580', 'nvidia-fabricmanager-580', 'nvidia-open-580']


class FakeHost:
    """apt, dpkg, systemd and the kernel-module loader of one host, answering the commands the seams run."""

    def __init__(self, installed=None, held=(), active=(), loaded=None, offered=('580.95.05-1', '580.159.04-1'), fail=()):
        self.installed = {name: [version, 'ii'] for name, version in (installed or {}).items()}
        self.held = set(held)
        self.active = set(active)
        self.loaded = loaded  # the driver version the kernel module has, or None
        self.offered = list(offered)
        self.fail = list(fail)  # command prefixes that fail, each once
        self.environ = []

    def proc_version(self, *_args, **_kwargs):
        return OPEN % self.loaded if self.loaded else None

    def run_command(self, argv, environ_update=None):
        self.environ.append((argv[0], dict(environ_update or {})))
        line = ' '.join(argv)
        for prefix in self.fail:
            if line.startswith(prefix):
                self.fail.remove(prefix)
                return 100, '', 'E: %s refused' % argv[0]
        return getattr(self, '_' + argv[0].replace('-', '_'))(argv)

    def _dpkg_query(self, _argv):
        return 0, ''.join('%s\t%s\t%s\n' % (n, v, s) for n, (v, s) in sorted(self.installed.items())) + 'bash\t5.2\tii\n', ''

    def _apt_mark(self, argv):
        if argv[1] == 'showhold':
            return 0, ''.join(n + '\n' for n in sorted(self.held)), ''
        (self.held.update if argv[1] == 'hold' else self.held.difference_update)(argv[2:])
        return 0, '', ''

    def _apt_cache(self, argv):
        return 0, ''.join('%s | %s | http://mirror stable/main amd64 Packages\n' % (n, v) for n in argv[2:] for v in self.offered), ''

    def _apt_get(self, argv):
        for arg in argv[2:] if argv[1] == 'install' else []:
            if arg.startswith('-') or arg.startswith('Dpkg::'):
                continue
            if arg.endswith('-'):
                self.installed.pop(arg[:-1], None)
            else:
                name, _sep, version = arg.partition('=')
                self.installed[name] = [version or self.offered[-1], 'ii']
        return 0, '', ''

    def _systemctl(self, argv):
        unit = argv[-1]
        if argv[1] == 'is-active':
            return (0 if unit in self.active else 3), '', ''
        (self.active.add if argv[1] == 'start' else self.active.discard)(unit)
        return 0, '', ''

    def _modprobe(self, argv):
        if argv[1] == '-r':
            self.loaded = None
        elif argv[1] == 'nvidia':
            self.loaded = _driver.upstream(self.installed['nvidia-open-580'][0]) if 'nvidia-open-580' in self.installed else None
        return 0, '', ''


class Exit(Exception):
    pass


class FakeModule:
    """What the module code uses of AnsibleModule; the result is copied when it is returned, as Ansible prints it."""

    def __init__(self, host, check_mode=False, diff=False, binaries=('apt-get',), **params):
        self.params = dict({name: spec.get('default') for name, spec in nvidia_driver.ARGUMENT_SPEC.items()}, **params)
        self.check_mode = check_mode
        self._diff = diff
        self.binaries = binaries
        self.run_command = host.run_command
        self.warnings = []
        self.out = None

    def get_bin_path(self, name):
        return '/usr/bin/' + name if name in self.binaries else None

    def warn(self, text):
        self.warnings.append(text)

    def exit_json(self, **kwargs):
        self.out = dict(copy.deepcopy(kwargs), **({'warnings': self.warnings} if self.warnings else {}))
        raise Exit()

    def fail_json(self, **kwargs):
        self.exit_json(failed=True, **kwargs)


BASE = {'version': '580.95.05', 'whitelist': ['580.95.05', {'branch': '580', 'versions': ['580.159.04']}], 'gpus': ['hopper'],
        'nvswitch': True, 'flavor': 'open'}


def run(host, monkeypatch, tmp_path, **kwargs):
    monkeypatch.setattr(_driver, 'PREFERENCES_FILE', str(tmp_path / 'gpuvirt-nvidia-driver.pref'))
    monkeypatch.setattr(_sysfs, 'read_driver_version_file', host.proc_version)
    (tmp_path / 'modules').write_text(''.join('%s 1 0 - Live 0x0\n' % m for m in ('nvidia_uvm', 'nvidia') if host.loaded))
    options = dict(BASE)
    options.update(kwargs)
    module = FakeModule(host, **options)
    with pytest.raises(Exit):
        _results.finish(module, _driver_apply.apply_driver(module, proc_root=str(tmp_path)), _driver_apply.diff)
    return module.out


def commands(out):
    return [c['cmd'].split(' -o ')[0] for c in out['commands'] if not c['cmd'].startswith(('dpkg-query', 'apt-mark showhold', 'apt-cache'))]


def test_install_stops_clients_reloads_and_verifies(monkeypatch, tmp_path):
    host = FakeHost(installed={'nvidia-open-580': '580.159.04-1'}, held=['nvidia-open-580'], active=['nvidia-persistenced'],
                    loaded='580.159.04')
    out = run(host, monkeypatch, tmp_path, clients=['nvidia-persistenced', 'nvidia-dcgm'], diff=True)
    assert [s['action'] for s in out['plan']] == ['stop_clients', 'unload_modules', 'unhold', 'pin', 'install', 'hold', 'load_modules',
                                                  'start_clients']
    assert commands(out) == [
        'systemctl is-active --quiet nvidia-persistenced', 'systemctl is-active --quiet nvidia-dcgm', 'systemctl stop nvidia-persistenced',
        'modprobe -r nvidia_uvm nvidia', 'apt-mark unhold nvidia-open-580',
        'apt-get install -y -q --no-install-recommends --allow-downgrades --allow-change-held-packages',
        'apt-mark hold libnvidia-nscq-580 nvidia-fabricmanager-580 nvidia-open-580', 'modprobe nvidia', 'modprobe nvidia_uvm',
        'modprobe nvidia_modeset', 'systemctl start nvidia-persistenced', 'systemctl is-active --quiet nvidia-persistenced',
        'systemctl is-active --quiet nvidia-dcgm']
    assert out['changed'] and 'failed' not in out and 'msg' not in out and 'warnings' not in out
    assert out['packages'] == {name: '580.95.05-1' for name in WANTED}
    assert out['loaded'] == {'loaded': True, 'flavor': 'open', 'version': '580.95.05'}
    assert (out['installed_version'], out['reboot_required'], out['reboot_reason']) == ('580.95.05', False, None)
    assert out['diff'] == {'before': {'packages': {'nvidia-open-580': '580.159.04-1'}},
                           'after': {'packages': {name: '580.95.05-1' for name in WANTED}}}
    assert set(host.held) == set(WANTED) and host.active == {'nvidia-persistenced'}
    assert '580.95.05' in (tmp_path / 'gpuvirt-nvidia-driver.pref').read_text()
    # apt runs non-interactive; systemctl and modprobe in the C locale
    apt, c_locale = (('APT_LISTCHANGES_FRONTEND', 'none'), ('DEBIAN_FRONTEND', 'noninteractive'), ('LC_ALL', 'C')), (('LC_ALL', 'C'),)
    assert {(name, tuple(sorted(env.items()))) for name, env in host.environ} == {
        ('dpkg-query', apt), ('apt-mark', apt), ('apt-cache', apt), ('apt-get', apt), ('systemctl', c_locale), ('modprobe', c_locale)}


def test_rerun_changes_nothing_and_check_mode_only_plans(monkeypatch, tmp_path):
    host = FakeHost(loaded=None)
    planned = run(host, monkeypatch, tmp_path, check_mode=True, diff=True)
    assert planned['changed'] and host.installed == {} and not (tmp_path / 'gpuvirt-nvidia-driver.pref').exists()
    assert planned['diff'] == {'before': {'packages': {}}, 'after': {'packages': {name: '580.95.05-1' for name in WANTED}}}
    assert planned['reboot_required'] is False and planned['reboot_reason'] is None and planned['installed_version'] is None
    run(host, monkeypatch, tmp_path)
    again = run(host, monkeypatch, tmp_path)
    assert not again['changed'] and again['plan'] == [] and again['reboot_required'] is False


def test_failed_install_rolls_back_packages_pin_holds_modules_and_clients(monkeypatch, tmp_path):
    host = FakeHost(installed={'nvidia-open-580': '580.159.04-1'}, held=['nvidia-open-580'], active=['dcgm'], loaded='580.159.04',
                    fail=['apt-get install -y -q --no-install-recommends --allow-downgrades --allow-change-held-packages -o '
                          'Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold libnvidia'])
    (tmp_path / 'gpuvirt-nvidia-driver.pref').write_text('old pin\n')
    out = run(host, monkeypatch, tmp_path, clients=['dcgm'])
    assert out['failed'] and out['rolled_back'] is True and out['output'] == 'E: apt-get refused'
    assert out['msg'].startswith('install failed: apt-get install -y -q ')
    assert out['msg'].endswith('(rc=100): E: apt-get refused. Rolled back: the previous driver packages are installed again '
                               '(nvidia-open-580=580.159.04-1)')
    assert out['packages'] == {'nvidia-open-580': '580.159.04-1'} == {n: v for n, (v, _s) in host.installed.items()}
    assert host.held == {'nvidia-open-580'} and host.active == {'dcgm'} and host.loaded == '580.159.04'
    assert (tmp_path / 'gpuvirt-nvidia-driver.pref').read_text() == 'old pin\n'
    install = 'apt-get install -y -q --no-install-recommends --allow-downgrades --allow-change-held-packages'
    assert commands(out) == ['systemctl is-active --quiet dcgm', 'systemctl stop dcgm', 'modprobe -r nvidia_uvm nvidia',
                             'apt-mark unhold nvidia-open-580', install,  # the failed install
                             'apt-mark unhold nvidia-open-580', install, 'apt-mark hold nvidia-open-580',  # the rollback
                             'modprobe nvidia', 'modprobe nvidia_uvm', 'modprobe nvidia_modeset', 'systemctl start dcgm']


def test_a_failed_rollback_says_what_the_host_has(monkeypatch, tmp_path):
    install = 'apt-get install -y -q --no-install-recommends'
    host = FakeHost(installed={'nvidia-open-580': '580.159.04-1'}, loaded=None, fail=[install, install])
    out = run(host, monkeypatch, tmp_path)
    assert out['failed'] and out['rolled_back'] is False
    assert out['msg'].startswith('install failed (apt-get install ') and ' and so did the rollback (apt-get install ' in out['msg']
    assert out['msg'].endswith("; driver packages now: {'nvidia-open-580': {'version': '580.159.04-1', 'status': 'ii', 'installed': True}}")


def test_refusal_changes_nothing(monkeypatch, tmp_path):
    host = FakeHost()
    out = run(host, monkeypatch, tmp_path, version='580.159.05', diff=True)
    assert out == {'changed': False, 'failed': True, 'plan': [], 'commands': [],
                   'msg': 'refused, nothing changed: driver version 580.159.05 is not whitelisted (whitelisted: 580.95.05, 580.159.04)'}


def test_a_failed_observation_fails_with_its_output(monkeypatch, tmp_path):
    out = run(FakeHost(fail=['apt-mark showhold']), monkeypatch, tmp_path)
    assert out['failed'] and out['msg'] == 'apt-mark showhold failed (rc=100): E: apt-mark refused' and out['output'] == 'E: apt-mark refused'


def test_clients_that_do_not_start_warn_and_a_failed_unload_needs_a_reboot(monkeypatch, tmp_path):
    host = FakeHost(installed={'nvidia-open-580': '580.159.04-1'}, active=['dcgm'], loaded='580.159.04', fail=['modprobe -r', 'systemctl start'])
    out = run(host, monkeypatch, tmp_path, clients=['dcgm'])
    assert out['warnings'] == ['GPU clients that did not start again: dcgm']
    assert out['reboot_required'] and out['reboot_reason'] == ('loaded kernel module 580.159.04 (open) differs from the installed driver '
                                                               '580.95.05 (open); the modules could not be reloaded: E: modprobe refused')
    assert 'modprobe nvidia' not in commands(out)


def test_verify_mismatch_fails(monkeypatch, tmp_path):
    host = FakeHost(loaded=None)
    host.offered = ['580.95.05-1']
    monkeypatch.setattr(host, '_apt_get', lambda argv: (0, '', ''))
    out = run(host, monkeypatch, tmp_path, diff=True)
    assert out['failed'] and out['msg'].startswith('the driver packages differ from the plan after the install: nvidia-open-580 is not installed')
    assert out['diff']['after'] == {'packages': {}} and out['packages'] == {}


def test_branch_resolves_to_the_newest_offered_after_the_cache_update(monkeypatch, tmp_path):
    host = FakeHost()
    out = run(host, monkeypatch, tmp_path, version=None, branch='580', update_cache=True, check_mode=True)
    assert out['version'] == '580.159.04'
    assert commands(out) == []  # check mode: no apt-get update
    out = run(host, monkeypatch, tmp_path, version=None, branch='580', update_cache=True)
    assert commands(out)[0] == 'apt-get update -q' and out['version'] == '580.159.04'


def test_rhel_family_refuses_a_version_not_whitelisted_before_any_command(monkeypatch, tmp_path):
    out = run(FakeHost(), monkeypatch, tmp_path, binaries=('dnf',), version='580.159.05')
    assert out['failed'] and out['commands'] == []
    assert out['msg'].startswith('refused, nothing changed: driver version 580.159.05 is not whitelisted')


def test_no_package_manager(monkeypatch, tmp_path):
    out = run(FakeHost(), monkeypatch, tmp_path, binaries=())
    assert out == {'changed': False, 'failed': True, 'plan': [], 'commands': [],
                   'msg': 'neither apt-get nor dnf found: this module supports Debian, Ubuntu and the RHEL family'}


def test_kernel_modules_read_the_given_proc_root(tmp_path):
    host = FakeHost()
    modules = _services.KernelModules(_commands.Runner(host.run_command), str(tmp_path))
    assert modules.loaded() is None
    assert modules.unload(['nvidia_uvm', 'nvidia']) is None and host.environ[-1][0] == 'modprobe'  # unknown: unload all
    (tmp_path / 'modules').write_text('nvidia 1 0 - Live 0x0\nxfs 2 0 - Live 0x0\n')
    assert modules.loaded() == {'nvidia', 'xfs'}
    runner = _commands.Runner(host.run_command)
    assert _services.KernelModules(runner, str(tmp_path)).unload(['nvidia_uvm', 'nvidia']) is None
    assert runner.log == [{'cmd': 'modprobe -r nvidia', 'rc': 0}]
