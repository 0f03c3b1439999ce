# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""The mdevctl seam: every mdevctl definition file this collection reads, writes or removes is here.

mdevctl keeps one JSON file per mediated device, `<directory>/<parent>/<uuid>` (parent: the PCI address such as
0000:18:00.0), and with `start: auto` creates the device at boot. Which definitions a parent should hold is decided
by the caller (_vgpu_apply); this file only knows the format and the files.
"""

from __future__ import annotations

import json
import os

DEFINITIONS_DIR = '/etc/mdevctl.d'


def definition(type_id: str) -> str:
    """The text of the definition of a device of mdev type `type_id` (nvidia-562) that mdevctl starts at boot."""
    return json.dumps({'mdev_type': type_id, 'start': 'auto', 'attrs': []}, indent=2, sort_keys=True) + '\n'


def definition_path(directory: str, parent: str, uuid: str) -> str:
    return os.path.join(directory, parent, uuid)


def read_definitions(directory: str, parent: str) -> dict[str, str]:
    """UUID -> text of every definition of a parent; none when its folder does not exist."""
    folder = os.path.join(directory, parent)
    found = {}
    for name in (os.listdir(folder) if os.path.isdir(folder) else []):
        with open(os.path.join(folder, name), encoding='utf-8') as handle:
            found[name] = handle.read()
    return found


def write_definition(directory: str, parent: str, uuid: str, text: str) -> None:
    os.makedirs(os.path.join(directory, parent), mode=0o755, exist_ok=True)
    with open(definition_path(directory, parent, uuid), 'w', encoding='utf-8') as handle:
        handle.write(text)


def remove_definition(directory: str, parent: str, uuid: str) -> None:
    os.unlink(definition_path(directory, parent, uuid))
