# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpuvirt.fleet.declaration_drift's file: one kind merged in or removed, the others kept, a bad file refused by name."""
from __future__ import annotations

import pytest

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _drift_file as df


def test_merge_keeps_other_kinds_and_reports_the_previous_drift(tmp_path):
    path = str(tmp_path / 'state' / 'drift.json')
    assert df.read(path) == {}
    new, was = df.merge({}, 'mig', False, 10)
    assert (new, was) == ({'mig': {'drift': False, 'checked': 10}}, None)
    df.write(path, dict(new, other={'drift': True, 'checked': 5}))
    new, was = df.merge(df.read(path), 'mig', True, 11)
    assert was is False and new == {'mig': {'drift': True, 'checked': 11}, 'other': {'drift': True, 'checked': 5}}
    assert df.merge(df.read(path), 'vgpu', None, None) == (None, None)  # nothing declared, no entry: nothing to write
    assert df.merge(df.read(path), 'mig', None, None) == ({'other': {'drift': True, 'checked': 5}}, False)


@pytest.mark.parametrize('text', ['{"mig": {"drift": tru', '[1, 2]'])
def test_a_file_that_is_not_a_json_object_is_named(tmp_path, text):
    path = tmp_path / 'drift.json'
    path.write_text(text)
    with pytest.raises(df.DriftFileError, match='%s is not a JSON object' % path):
        df.read(str(path))
    assert path.read_text() == text


def _module(args):
    from ansible_collections.gpuvirt.fleet.plugins.modules import declaration_drift
    from tests.unit.properties.prop_support import run_module
    return run_module(declaration_drift.main, args)


def test_entries_write_several_kinds_in_one_call_and_keep_the_others(tmp_path):
    path = tmp_path / 'drift.json'
    df.write(str(path), {'mig': {'drift': True, 'checked': 5}, 'vgpu': {'drift': False, 'checked': 5}, 'other': {'drift': True, 'checked': 1}})
    result = _module({'path': str(path), 'entries': {'mig': {'drift': False, 'checked': 9}, 'vgpu': None, 'settings': None}})
    assert result['changed'] is True and result['written'] is True
    assert result['previous'] == {'mig': True, 'vgpu': False, 'settings': None}
    assert df.read(str(path)) == {'mig': {'drift': False, 'checked': 9}, 'other': {'drift': True, 'checked': 1}}
    again = _module({'path': str(path), 'entries': {'mig': {'drift': False, 'checked': 10}, 'vgpu': None}})
    assert again['changed'] is False and df.read(str(path))['mig'] == {'drift': False, 'checked': 10}  # the heartbeat moves on


def test_a_bad_entry_is_named_and_the_file_is_left_as_it_was(tmp_path):
    path = tmp_path / 'drift.json'
    df.write(str(path), {'mig': {'drift': True, 'checked': 5}})
    before = path.read_text()
    result = _module({'path': str(path), 'entries': {'mig': {'drift': False, 'checked': 9}, 'vgpu': {'drift': 'maybe', 'checked': 9}}})
    assert result['failed'] and 'entries.vgpu' in result['msg']
    result = _module({'path': str(path), 'entries': {'mig': {'drift': False, 'checked': 'soon'}}})
    assert result['failed'] and 'entries.mig.checked' in result['msg']
    assert path.read_text() == before
    assert _module({'path': str(path), 'kind': 'mig', 'entries': {'mig': None}})['failed']
