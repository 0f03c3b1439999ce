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
