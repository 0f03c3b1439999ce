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
    assert calls == [['show', '--property=Id,LoadState,UnitFileState,ActiveState,NeedDaemonReload', '--',
                      'gpuvirt-exporter.service', 'gpuvirt-mig.service', 'missing.service']]
    assert result['differences'] == ['unit gpuvirt-mig.service: its file changed on disk since systemd loaded it',
                                     'unit gpuvirt-mig.service: disabled, not enabled',
                                     'unit missing.service: not loaded (unknown)']
    failing, _calls = _systemctl(rc=1)
    assert hs.observe({'units': [{'name': 'x'}]}, False, failing)['differences'] == ['systemctl show failed (rc=1): boom']


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
