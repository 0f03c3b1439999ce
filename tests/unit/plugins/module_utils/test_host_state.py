# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpuvirt.fleet.host_state's observation: every difference is seen and named (content, mode, a missing file, a unit
stopped, disabled or changed on disk, a package at another version), an unchanged declaration reads as in place, and
only the files given with content (and directories, absent files) are written, atomically, and only where they differ."""
from __future__ import annotations

import os
import pwd
import grp

import pytest

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _host_state as hs

ROOT_USER = pwd.getpwuid(os.getuid()).pw_name
ROOT_GROUP = grp.getgrgid(os.getgid()).gr_name
SHOW = """Id=gpuvirt-exporter.service
LoadState=loaded
UnitFileState=enabled
ActiveState=active
NeedDaemonReload=no

Id=gpuvirt-mig.service
LoadState=loaded
UnitFileState=disabled
ActiveState=inactive
NeedDaemonReload=yes
"""


def _systemctl(text=SHOW, rc=0):
    calls = []

    def run(argv):
        calls.append(argv)
        return rc, text, 'boom' if rc else ''
    return run, calls


def _file(tmp_path, name='a.py', content='print(1)\n', mode='0644'):
    return {'path': str(tmp_path / name), 'content': content, 'owner': ROOT_USER, 'group': ROOT_GROUP, 'mode': mode}


def test_files_are_written_once_and_then_in_place(tmp_path):
    files = [{'path': str(tmp_path / 'lib'), 'state': 'directory', 'mode': '0755'}, _file(tmp_path / 'lib'),
             {'path': str(tmp_path / 'old.conf'), 'state': 'absent'}]
    (tmp_path / 'old.conf').write_text('x')
    run, _calls = _systemctl()
    first = hs.observe({'files': files}, True, run)
    assert not first['in_place'] and first['written'] == [f['path'] for f in files]
    assert (tmp_path / 'lib' / 'a.py').read_text() == 'print(1)\n' and not (tmp_path / 'old.conf').exists()
    assert oct((tmp_path / 'lib' / 'a.py').stat().st_mode & 0o777) == '0o644'
    assert hs.observe({'files': files}, True, run) == {'differences': [], 'written': [], 'in_place': True}


def test_each_drift_is_named_and_observing_writes_nothing(tmp_path):
    entry = _file(tmp_path)
    run, _calls = _systemctl()
    hs.observe({'files': [entry]}, True, run)
    (tmp_path / 'a.py').write_text('print(2)\n')
    os.chmod(tmp_path / 'a.py', 0o600)
    observed = {**entry, 'checksum': hs.sha1_bytes(entry['content'].encode())}
    del observed['content']
    result = hs.observe({'files': [observed, {'path': str(tmp_path / 'gone'), 'state': 'present'}]}, False, run)
    assert result['differences'] == ['%s: content differs' % entry['path'], '%s: mode is 0600, not 0644' % entry['path'],
                                     '%s: does not exist' % (tmp_path / 'gone')]
    assert (tmp_path / 'a.py').read_text() == 'print(2)\n'  # observed only: a checksum cannot be written back
    fixed = hs.observe({'files': [entry]}, True, run)
    assert fixed['written'] == [entry['path']] and (tmp_path / 'a.py').read_text() == 'print(1)\n'
    assert oct((tmp_path / 'a.py').stat().st_mode & 0o777) == '0o644'


def test_units_stopped_disabled_or_changed_on_disk_are_differences():
    run, calls = _systemctl()
    result = hs.observe({'units': [{'name': 'gpuvirt-exporter', 'enabled': True, 'active': True},
                                   {'name': 'gpuvirt-mig.service', 'enabled': True},
                                   {'name': 'missing.service', 'active': True}]}, False, run)
    assert calls == [['show', '--property=Id,LoadState,UnitFileState,ActiveState,SubState,NeedDaemonReload', '--',
                      'gpuvirt-exporter.service', 'gpuvirt-mig.service', 'missing.service']]
    assert result['differences'] == ['unit gpuvirt-mig.service: its file changed on disk since systemd loaded it',
                                     'unit gpuvirt-mig.service: disabled, not enabled',
                                     'unit missing.service: not loaded (unknown)']
    failing, _calls = _systemctl(rc=1)
    assert hs.observe({'units': [{'name': 'x'}]}, False, failing)['differences'] == ['systemctl show failed (rc=1): boom']


def test_which_candidate_services_run_is_read_in_the_same_systemctl_call():
    shown = SHOW.replace('ActiveState=active\n', 'ActiveState=active\nSubState=running\n') + (
        '\nId=dcgm.service\nLoadState=loaded\nActiveState=inactive\nSubState=dead\n'
        '\nId=nvidia-persistenced.service\nLoadState=loaded\nActiveState=active\nSubState=running\n')
    run, calls = _systemctl(shown)
    result = hs.observe({'units': [{'name': 'gpuvirt-exporter', 'active': True}],
                         'running': ['nvidia-persistenced', 'dcgm', 'gpuvirt-exporter.service', 'not-there']}, False, run)
    assert len(calls) == 1 and calls[0][3:] == ['gpuvirt-exporter.service', 'nvidia-persistenced.service', 'dcgm.service',
                                                'not-there.service']
    assert result['running'] == ['nvidia-persistenced', 'gpuvirt-exporter.service'] and result['in_place']
    failing, _calls = _systemctl(rc=1)
    assert hs.observe({'running': ['dcgm']}, False, failing)['running'] is None  # not known: the caller asks otherwise


def test_a_pruned_directory_loses_the_files_no_entry_declares(tmp_path):
    code = tmp_path / 'code'
    code.mkdir()
    for name in ('kept.py', 'stale.py', 'notes.txt'):
        (code / name).write_text(name)
    (code / 'old_dir.py').mkdir()
    files = [{'path': str(code), 'state': 'directory', 'prune': '*.py'}, {'path': str(code / 'kept.py'), 'content': 'kept.py'},
             {'path': str(code / 'new.py'), 'content': 'new'}]
    run, _calls = _systemctl()
    observed = hs.observe({'files': files}, False, run)
    assert observed['differences'] == ['%s: does not exist' % (code / 'new.py'), '%s: not declared (matches *.py), not a regular file '
                                       '(not removed)' % (code / 'old_dir.py'), '%s: not declared (matches *.py)' % (code / 'stale.py')]
    assert (code / 'stale.py').exists()
    written = hs.observe({'files': files}, True, run)
    assert written['written'] == [str(code / 'new.py'), str(code / 'stale.py')]
    assert sorted(p.name for p in code.iterdir()) == ['kept.py', 'new.py', 'notes.txt', 'old_dir.py']
    with pytest.raises(hs.HostStateError, match='prune is for state=directory only'):
        hs.observe({'files': [{'path': str(code / 'kept.py'), 'prune': '*.py'}]}, True, run)
    with pytest.raises(hs.HostStateError, match='prune is a file name pattern'):
        hs.observe({'files': [{'path': str(code), 'state': 'directory', 'prune': '../*'}]}, True, run)


def test_accounts_are_created_or_fixed_before_the_files_only_where_asked(tmp_path):
    commands = []

    def run(argv):
        commands.append([os.path.basename(argv[0])] + argv[1:])
        return 0, '', ''
    systemctl, _calls = _systemctl()
    params = {'groups': ['no-such-group-20'],
              'users': [{'name': 'no-such-user-20', 'group': ROOT_GROUP, 'groups': [ROOT_GROUP], 'shell': '/usr/sbin/nologin',
                         'home': '/opt/x'},
                        {'name': ROOT_USER, 'group': ROOT_GROUP, 'shell': '/bin/no-such-shell', 'home': pwd.getpwnam(ROOT_USER).pw_dir}],
              'files': [_file(tmp_path)]}
    observed = hs.observe(params, True, systemctl, run)
    assert commands == [] and 'accounts' not in observed  # without write_accounts: observed only (the file is written)
    assert observed['written'] == [str(tmp_path / 'a.py')]
    assert 'user no-such-user-20: does not exist' in observed['differences']
    checked = hs.observe(dict(params, write_accounts=True), False, systemctl, run)
    assert commands == [] and checked['accounts'] == ['group no-such-group-20: does not exist', 'user no-such-user-20: does not exist',
                                                      'user %s: shell %s, not /bin/no-such-shell' % (ROOT_USER, pwd.getpwnam(ROOT_USER).pw_shell)]
    written = hs.observe(dict(params, write_accounts=True), True, systemctl, run)
    assert commands == [['groupadd', '--system', 'no-such-group-20'],
                        ['useradd', '--system', '--no-create-home', '--gid', ROOT_GROUP, '--groups', ROOT_GROUP, '--shell', '/usr/sbin/nologin',
                         '--home-dir', '/opt/x', 'no-such-user-20'],
                        ['usermod', '--shell', '/bin/no-such-shell', ROOT_USER]]
    assert written['accounts'] == ['group no-such-group-20 created', 'user no-such-user-20 created', 'user %s changed' % ROOT_USER]
    assert written['written'] == [] and not written['in_place']

    def failing(argv):
        return 9, '', 'useradd: cannot lock /etc/passwd'
    with pytest.raises(hs.HostStateError, match=r'user no-such-user-20 created failed \(rc=9\): useradd: cannot lock /etc/passwd'):
        hs.observe({'users': [{'name': 'no-such-user-20'}], 'write_accounts': True}, True, systemctl, failing)
    with pytest.raises(hs.HostStateError, match='user no-such-user-20: group no-such-group-21 does not exist'):
        hs.observe({'users': [{'name': 'no-such-user-20', 'groups': ['no-such-group-21']}], 'write_accounts': True}, True, systemctl, run)


def test_a_file_with_a_validate_command_replaces_the_old_one_only_where_the_command_accepts_it(tmp_path):
    import subprocess

    def run(argv):
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        return proc.returncode, proc.stdout, proc.stderr
    systemctl, _calls = _systemctl()
    entry = dict(_file(tmp_path, 'app.conf', 'answer: ok\n'), validate='grep -q ok %s')
    assert hs.observe({'files': [entry]}, True, systemctl, run)['written'] == [entry['path']]
    refused = dict(entry, content='answer: no\n')
    with pytest.raises(hs.HostStateError, match=r'app.conf: not written, grep -q ok %s refused it \(rc=1\)' % entry['path']):
        hs.observe({'files': [refused]}, True, systemctl, run)
    assert (tmp_path / 'app.conf').read_text() == 'answer: ok\n' and sorted(p.name for p in tmp_path.iterdir()) == ['app.conf']
    missing = dict(refused, validate='/nonexistent/promtool check config %s')
    with pytest.raises(hs.HostStateError, match='validate program /nonexistent/promtool is not installed'):
        hs.observe({'files': [missing]}, True, systemctl, run)
    assert hs.observe({'files': [dict(missing, validate_optional=True)]}, True, systemctl, run)['written'] == [entry['path']]
    assert (tmp_path / 'app.conf').read_text() == 'answer: no\n'
    with pytest.raises(hs.HostStateError, match='validate must contain %s'):
        hs.observe({'files': [dict(entry, validate='grep -q ok')]}, True, systemctl, run)


def _shown(**units):
    return {name: dict(zip(('LoadState', 'UnitFileState', 'ActiveState', 'NeedDaemonReload'), props.split())) for name, props in units.items()}


def test_units_are_brought_to_their_state_with_one_reload_and_restarted_only_as_asked():
    calls = []

    def systemctl(argv):
        calls.append(argv)
        return 0, '', ''
    exporter = {'name': 'gpuvirt-exporter', 'enabled': True, 'active': True, 'restart': 'on_change'}
    boot = {'name': 'gpuvirt-mig.service', 'enabled': True}
    # a fresh host: both unit files just written, neither known to systemd; the enable reloads systemd itself
    fresh = _shown(**{'gpuvirt-exporter.service': 'not-found disabled inactive no', 'gpuvirt-mig.service': 'not-found disabled inactive no'})
    written = ['/etc/systemd/system/gpuvirt-exporter.service', '/etc/systemd/system/gpuvirt-mig.service']
    assert hs.converge_units([exporter, boot], fresh, written, True, True, systemctl) == [
        'enable gpuvirt-exporter.service', 'enable gpuvirt-mig.service', 'start gpuvirt-exporter.service']
    assert calls == [['enable', 'gpuvirt-exporter.service'], ['enable', 'gpuvirt-mig.service'], ['start', 'gpuvirt-exporter.service']]
    # the unit file changed under a running, enabled unit: one reload, then the restart this change asks for
    calls.clear()
    running = _shown(**{'gpuvirt-exporter.service': 'loaded enabled active yes'})
    assert hs.converge_units([exporter], running, written[:1], True, True, systemctl) == ['daemon-reload', 'restart gpuvirt-exporter.service']
    # nothing written, nothing changed: nothing to do; restart=always restarts all the same; check mode runs nothing
    calls.clear()
    steady = _shown(**{'gpuvirt-exporter.service': 'loaded enabled active no'})
    assert hs.converge_units([exporter], steady, [], False, True, systemctl) == [] and calls == []
    assert hs.converge_units([dict(exporter, restart='always')], steady, [], False, False, systemctl) == ['restart gpuvirt-exporter.service']
    assert hs.converge_units([dict(exporter, restart='never')], steady, [], True, True, systemctl) == [] and calls == []
    stopped = _shown(**{'gpuvirt-exporter.service': 'loaded enabled active no'})
    assert hs.converge_units([{'name': 'gpuvirt-exporter', 'enabled': False, 'active': False}], stopped, [], False, True, systemctl) == [
        'disable gpuvirt-exporter.service', 'stop gpuvirt-exporter.service']

    def failing(argv):
        return 1, '', 'Job for gpuvirt-exporter.service failed because the control process exited with error code.'
    with pytest.raises(hs.HostStateError, match='systemctl start gpuvirt-exporter.service failed .rc=1.: Job for gpuvirt-exporter.service failed'):
        hs.converge_units([exporter], _shown(**{'gpuvirt-exporter.service': 'loaded enabled inactive no'}), [], False, True, failing)


def test_virtualenv_packages_are_compared_by_their_metadata(tmp_path):
    venv = tmp_path / 'venv'
    (venv / 'bin').mkdir(parents=True)
    (venv / 'bin' / 'python').write_text('')
    dist = venv / 'lib' / 'python3.11' / 'site-packages' / 'prometheus_client-0.26.0.dist-info'
    dist.mkdir(parents=True)
    (dist / 'METADATA').write_text('Metadata-Version: 2.1\nName: prometheus_client\nVersion: 0.26.0\n\nbody: Name: other\n')
    assert hs.package_differences(str(venv), ['prometheus-client==0.26.0']) == []
    assert hs.package_differences(str(venv), ['Prometheus.Client==0.27.0', 'bcrypt==5.0.0', 'pip>=24']) == [
        'virtualenv %s: Prometheus.Client is 0.26.0, not 0.27.0' % venv, 'virtualenv %s: bcrypt is not installed, not 5.0.0' % venv,
        "virtualenv %s: requirement 'pip>=24' is not pinned with ==, so it is not proven met" % venv]
    assert hs.package_differences(str(tmp_path / 'none'), []) == ['virtualenv %s: no bin/python' % (tmp_path / 'none')]


def test_accounts(tmp_path):
    assert hs.user_differences([{'name': ROOT_USER, 'group': ROOT_GROUP}]) == []
    assert hs.user_differences([{'name': 'no-such-user-20'}]) == ['user no-such-user-20: does not exist']
    assert hs.group_differences(['no-such-group-20']) == ['group no-such-group-20: does not exist']


@pytest.mark.parametrize('entry, words', [
    ({'path': 'relative'}, 'path must be absolute'),
    ({'path': '/x', 'state': 'directory', 'content': 'a'}, 'content, content_base64 and checksum are for state=file only'),
    ({'path': '/x', 'content': 'a', 'checksum': 'b'}, 'give one of content, content_base64 and checksum, not content and checksum'),
    ({'path': '/x', 'content_base64': 'AAE=', 'content': 'a'}, 'not content and content_base64'),
    ({'path': '/x', 'content_base64': 'not base64!'}, 'content_base64 is not base64'),
    ({'path': '/x', 'mode': 'rw'}, 'mode must be octal digits'),
])
def test_a_bad_entry_is_refused_by_name_before_anything_is_written(tmp_path, entry, words):
    good = _file(tmp_path)
    with pytest.raises(hs.HostStateError, match=words):
        hs.observe({'files': [good, entry]}, True, _systemctl()[0])
    assert not (tmp_path / 'a.py').exists()


def test_binary_files_are_written_from_base64_and_observed_by_checksum(tmp_path):
    import base64
    import hashlib
    data = bytes(range(256)) * 4  # not UTF-8: a wheel's bytes
    entry = dict(_file(tmp_path, 'pkg.whl'), content=None, content_base64=base64.b64encode(data).decode('ascii'))
    del entry['content']
    run, _calls = _systemctl()
    assert hs.observe({'files': [entry]}, True, run)['written'] == [entry['path']]
    assert (tmp_path / 'pkg.whl').read_bytes() == data
    observed = {k: v for k, v in entry.items() if k != 'content_base64'}
    observed['checksum'] = hashlib.sha1(data).hexdigest()
    assert hs.observe({'files': [observed]}, False, run)['in_place'] is True
    (tmp_path / 'pkg.whl').write_bytes(data[:-1])
    assert hs.observe({'files': [observed]}, False, run)['differences'] == ['%s: content differs' % entry['path']]
