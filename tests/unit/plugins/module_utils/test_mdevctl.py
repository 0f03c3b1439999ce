# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_mdevctl: the mdevctl definition files of a parent (what goes in them is decided in _vgpu_apply.persist)."""
from __future__ import annotations

import json

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _mdevctl

PF = '0000:18:00.0'


def test_mdevctl_definitions_are_read_written_and_removed_per_parent(tmp_path):
    directory = str(tmp_path / 'mdevctl.d')
    uuid = 'f3f7a1c4-0000-4000-8000-000000000001'
    assert _mdevctl.read_definitions(directory, PF) == {}
    text = _mdevctl.definition('nvidia-562')
    assert json.loads(text) == {'mdev_type': 'nvidia-562', 'start': 'auto', 'attrs': []}
    _mdevctl.write_definition(directory, PF, uuid, text)
    assert _mdevctl.definition_path(directory, PF, uuid) == str(tmp_path / 'mdevctl.d' / PF / uuid)
    assert _mdevctl.read_definitions(directory, PF) == {uuid: text}
    _mdevctl.remove_definition(directory, PF, uuid)
    assert _mdevctl.read_definitions(directory, PF) == {}
