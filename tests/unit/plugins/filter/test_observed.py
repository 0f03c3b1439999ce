# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpuvirt.fleet.observed and the gpuvirt.fleet.file_state lookup: what a role writes and what it observes name the
same files with the same checksum (SHA-1 of the bytes host_state writes), text and binary alike."""
from __future__ import annotations

import base64
import hashlib

import pytest
from ansible.errors import AnsibleError

from ansible_collections.gpuvirt.fleet.plugins.filter.observed import observed
import yaml
from ansible import constants as C

from ansible_collections.gpuvirt.fleet.plugins.lookup import file_state

NAME = 'gpuvirt.fleet.file_state'
C.config.initialize_plugin_configuration_definitions('lookup', NAME, yaml.safe_load(file_state.DOCUMENTATION)['options'])


def _lookup(*terms, **options):
    """The lookup with its options defined as Ansible defines them, from its DOCUMENTATION."""
    plugin = file_state.LookupModule()
    plugin._load_name = NAME  # pylint: disable=protected-access
    return plugin.run(list(terms), variables={}, **options)


def test_the_lookup_and_the_filter_agree_on_text_and_binary_files(tmp_path):
    (tmp_path / 'b.py').write_text('print("é")\n', encoding='utf-8')
    (tmp_path / 'a.py').write_text('x = 1\n')
    (tmp_path / 'w.whl').write_bytes(bytes(range(256)))
    text = _lookup(str(tmp_path / '*.py'), dest='/opt/lib/')
    assert [e['path'] for e in text] == ['/opt/lib/a.py', '/opt/lib/b.py']
    assert text[1] == {'path': '/opt/lib/b.py', 'content': 'print("é")\n', 'owner': 'root', 'group': 'root', 'mode': '0644'}
    sums = _lookup(str(tmp_path / '*.py'), dest='/opt/lib', checksum=True, mode='0600')
    assert observed(text) == [dict(e, mode='0644') for e in sums]
    assert sums[1]['checksum'] == hashlib.sha1('print("é")\n'.encode('utf-8')).hexdigest() and sums[1]['mode'] == '0600'
    binary = _lookup(str(tmp_path / 'w.whl'), dest='/opt/wheels', base64=True)
    assert base64.b64decode(binary[0]['content_base64']) == bytes(range(256))
    assert observed(binary) == _lookup(str(tmp_path / 'w.whl'), dest='/opt/wheels', checksum=True)
    assert observed([{'path': '/d', 'state': 'directory'}]) == [{'path': '/d', 'state': 'directory'}]


def test_bad_input_is_named(tmp_path):
    with pytest.raises(AnsibleError, match='matches no file'):
        _lookup(str(tmp_path / '*.whl'), dest='/x')
    (tmp_path / 'w.bin').write_bytes(b'\xff\xfe\x00')
    with pytest.raises(AnsibleError, match='is not UTF-8 text'):
        _lookup(str(tmp_path / 'w.bin'), dest='/x')
    with pytest.raises(AnsibleError, match=r'entry 1 \(/b\): content_base64 is not base64'):
        observed([{'path': '/a'}, {'path': '/b', 'content_base64': '!!'}])
    with pytest.raises(AnsibleError, match='entry 0 is not a mapping'):
        observed(['/a'])
