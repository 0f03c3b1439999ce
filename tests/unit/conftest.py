# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Make `ansible_collections.gpuvirt.fleet` importable when pytest runs straight from a checkout."""
from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _collections_root() -> str:
    parts = REPO.split(os.sep)
    if len(parts) > 3 and parts[-3] == 'ansible_collections':
        return os.sep.join(parts[:-3])  # already laid out as ansible_collections/gpuvirt/fleet
    link = os.path.join(REPO, '.build', 'ansible_collections', 'gpuvirt', 'fleet')
    if not os.path.exists(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink('../../..', link)
    return os.path.join(REPO, '.build')


if _collections_root() not in sys.path:
    sys.path.insert(0, _collections_root())
