# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A loaded driver the package manager did not install (a runfile install, a read-only driver mount in a cloud VM):
where it came from, and the decision (comply, refuse, adopt), pure and through the orchestrator on a scripted host."""
from __future__ import annotations

import pytest

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _driver, _driver_apply, _driver_origin, _results, _sysfs
from test_driver_apply import OPEN, Exit, FakeHost, FakeModule  # pylint: disable=import-error

# The real H200 VM (2026-12-04): the driver is a read-only squashfs at /usr/local/nvidia, no package carries it.
H200_MOUNTS = ('overlay / overlay rw,relatime 0 0\n'
               'proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n'
               'tmpfs /proc/driver/nvidia/gpus/0000:00:05.0 tmpfs ro,nosuid 0 0\n'
               'devtmpfs /dev/nvidia0 devtmpfs ro,nosuid 0 0\n'
               '/dev/vdb /usr/local/nvidia squashfs ro,nosuid,nodev,relatime,errors=continue 0 0\n')
LOADED = {'loaded': True, 'version': '580.159.04', 'flavor': 'open'}
WHITELIST = ['580.95.05', {'branch': '580', 'versions': ['580.159.04']}]


def declared(version='580.159.04', branch=None, flavor='open'):
    return {'version': version, 'branch': branch, 'flavor': flavor, 'whitelist': _driver.normalize_whitelist(WHITELIST)}


# ---- observation and origin (pure) ---------------------------------------------------------
def test_read_mounts_decodes_escapes(tmp_path):
    (tmp_path / 'mounts').write_text(H200_MOUNTS + '/dev/sdb /mnt/nvidia\\040driver ext4 ro 0 0\n')
    mounts = _sysfs.read_mounts(str(tmp_path))
    assert mounts[4] == {'source': '/dev/vdb', 'target': '/usr/local/nvidia', 'fstype': 'squashfs',
                         'options': 'ro,nosuid,nodev,relatime,errors=continue'}
    assert mounts[5]['target'] == '/mnt/nvidia driver'
    assert _sysfs.read_mounts(str(tmp_path / 'absent')) == []


def test_driver_mounts_skip_the_kernel_and_device_trees(tmp_path):
    (tmp_path / 'mounts').write_text(H200_MOUNTS)
    assert _driver_origin.driver_mounts(_sysfs.read_mounts(str(tmp_path))) == ['/usr/local/nvidia (squashfs, read-only)']


@pytest.mark.parametrize('installed, files, mounts, source, managed', [
    ({'nvidia-open-580': {'version': '580.95.05-1', 'status': 'ii', 'installed': True}}, ['/usr/bin/nvidia-installer'], [], 'package', True),
    ({'nvidia-open-580': {'version': '580.95.05-1', 'status': 'rc', 'installed': False}}, [], [], 'unknown', False),
    ({'nvidia-modprobe': {'version': '580.95.05-1', 'status': 'ii', 'installed': True}}, [], [], 'unknown', False),
    ({}, ['/var/log/nvidia-installer.log'], [], 'runfile', False),
    ({}, [], [{'target': '/usr/local/nvidia', 'fstype': 'squashfs', 'options': 'ro'}], 'mount', False),
    ({}, [], [{'target': '/run/nvidia/driver', 'fstype': 'overlay', 'options': 'rw'}], 'mount', False),
])
def test_origin(installed, files, mounts, source, managed):
    found = _driver_origin.origin(LOADED, installed, files, mounts)
    assert (found['source'], found['package_managed']) == (source, managed)


def test_no_driver_and_no_package_is_none():
    assert _driver_origin.origin({'loaded': False}, {}, ['/usr/bin/nvidia-installer'], []) == {
        'source': 'none', 'package_managed': False, 'evidence': []}


# ---- the decision (pure) ---------------------------------------------------------------------
MOUNTED = _driver_origin.origin(LOADED, {}, [], [{'target': '/usr/local/nvidia', 'fstype': 'squashfs', 'options': 'ro'}])
RUNFILE = _driver_origin.origin(LOADED, {}, ['/usr/bin/nvidia-installer'], [])


@pytest.mark.parametrize('wanted', [declared(), declared(version=None, branch='580')])
def test_the_declared_driver_complies_but_is_not_package_managed(wanted):
    verdict = _driver_origin.decide(MOUNTED, LOADED, wanted, adopt=False)
    assert verdict['complies'] and verdict['msg'].startswith('the loaded driver 580.159.04 (open) complies with the whitelist')
    assert 'not installed by the package manager (source: mount: /usr/local/nvidia (squashfs, read-only))' in verdict['msg']
    assert verdict['msg'].endswith('Set adopt to replace it with the whitelisted packages')


@pytest.mark.parametrize('wanted', [declared(version='580.95.05'), declared(flavor='proprietary'), declared(version=None, branch='570')])
def test_another_declared_driver_is_refused_naming_the_loaded_one(wanted):
    with pytest.raises(_driver.DriverError) as raised:
        _driver_origin.decide(RUNFILE, LOADED, wanted, adopt=False)
    assert str(raised.value).startswith('the loaded driver 580.159.04 (open) was not installed by the package manager '
                                        '(source: runfile: /usr/bin/nvidia-installer) and is not the declared driver')


def test_adopt_and_package_managed_hosts_plan_as_usual():
    assert _driver_origin.decide(RUNFILE, LOADED, declared(version='580.95.05'), adopt=True) is None
    package = _driver_origin.origin(LOADED, {'nvidia-open-580': {'version': '580.95.05-1', 'status': 'ii'}}, [], [])
    assert _driver_origin.decide(package, LOADED, declared(version='580.95.05'), adopt=False) is None
    assert 'do not run nvidia-uninstall' in _driver_origin.adopt_warning(RUNFILE).lower()
    assert 'must be turned off' in _driver_origin.adopt_warning(MOUNTED)


# ---- through the orchestrator, on a scripted host ----------------------------------------------
def run(host, monkeypatch, tmp_path, **kwargs):
    monkeypatch.setattr(_driver, 'PREFERENCES_FILE', str(tmp_path / 'gpuvirt-nvidia-driver.pref'))
    monkeypatch.setattr(_sysfs, 'read_driver_version_file', host.proc_version)
    (tmp_path / 'modules').write_text('nvidia 1 0 - Live 0x0\n' if host.loaded else '')
    options = {'version': '580.159.04', 'whitelist': WHITELIST, 'gpus': ['hopper'], 'flavor': 'open', **kwargs}
    module = FakeModule(host, **options)
    with pytest.raises(Exit):
        _results.finish(module, _driver_apply.apply_driver(module, proc_root=str(tmp_path), root=str(tmp_path / 'root')), _driver_apply.diff)
    return module.out


def mounted_host(tmp_path, offered=()):
    (tmp_path / 'mounts').write_text(H200_MOUNTS)
    return FakeHost(loaded='580.159.04', offered=offered)


def runfile_host(tmp_path, loaded='580.159.04'):
    (tmp_path / 'root' / 'var' / 'log').mkdir(parents=True)
    (tmp_path / 'root' / 'var' / 'log' / 'nvidia-installer.log').write_text('nvidia-installer log\n')
    return FakeHost(loaded=loaded)


def changes(out):
    return [c['cmd'] for c in out['commands'] if c['cmd'].startswith(('apt-get', 'apt-mark hold', 'apt-mark unhold', 'modprobe', 'systemctl'))]


def test_compliant_mount_host_is_ok_unchanged_and_asks_no_repository(monkeypatch, tmp_path):
    assert OPEN  # the scripted host renders the open module's banner
    out = run(mounted_host(tmp_path), monkeypatch, tmp_path, diff=True)
    assert not out['changed'] and 'failed' not in out and out['plan'] == []
    assert (out['source'], out['package_managed'], out['version'], out['loaded']['version']) == ('mount', False, '580.159.04', '580.159.04')
    assert 'complies with the whitelist' in out['msg'] and '/usr/local/nvidia (squashfs, read-only)' in out['msg']
    assert [c['cmd'] for c in out['commands']] == ['dpkg-query -W -f ${Package}\t${Version}\t${db:Status-Abbrev}\n']
    assert 'diff' not in out


def test_another_version_on_a_runfile_host_is_refused_and_nothing_changes(monkeypatch, tmp_path):
    host = runfile_host(tmp_path)
    out = run(host, monkeypatch, tmp_path, version='580.95.05')
    assert out['failed'] and not out['changed'] and out['source'] == 'runfile' and out['package_managed'] is False
    assert out['msg'] == ('refused, nothing changed: the loaded driver 580.159.04 (open) was not installed by the package manager '
                          '(source: runfile: /var/log/nvidia-installer.log) and is not the declared driver (580.95.05, open); '
                          'set adopt to replace it with the whitelisted packages')
    assert changes(out) == [] and host.installed == {}


def test_adopt_plans_in_check_mode_and_installs_the_whitelisted_packages(monkeypatch, tmp_path):
    host = runfile_host(tmp_path)
    planned = run(host, monkeypatch, tmp_path, version='580.95.05', adopt=True, check_mode=True)
    assert planned['changed'] and 'install' in [s['action'] for s in planned['plan']] and changes(planned) == []
    assert planned['package_managed'] is False and planned['source'] == 'runfile' and 'warnings' not in planned
    out = run(host, monkeypatch, tmp_path, version='580.95.05', adopt=True)
    assert out['changed'] and not out.get('failed') and out['package_managed'] is True and out['source'] == 'runfile'
    assert out['packages'] == {'nvidia-open-580': '580.95.05-1'} and host.loaded == '580.95.05'
    assert any('adopted a runfile install' in w for w in out['warnings'])
    again = run(host, monkeypatch, tmp_path, version='580.95.05')
    assert not again['changed'] and again['source'] == 'package' and again['package_managed'] is True
