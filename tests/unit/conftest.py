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


import pytest  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture(autouse=True, scope='session')
def _this_machine_holds_no_simulated_gpu():
    """The unit tests' simulated GPUs are held by nobody on this machine: reading the machine's own /proc and /sys
    for holders (fleet hosts' daemons run in namespaces, but this /proc shows them) would make the tests depend on what
    else runs here. Only the default roots are answered empty; a test that passes its own root reads it."""
    from ansible_collections.gpuvirt.fleet.plugins.module_utils import _sysfs  # pylint: disable=import-outside-toplevel
    holders, live = _sysfs.read_device_holders, _sysfs.module_live

    def read_device_holders(root=_sysfs.PROCFS):
        return [] if root == _sysfs.PROCFS else holders(root)

    def module_live(name, root=_sysfs.SYSFS):
        return False if root == _sysfs.SYSFS else live(name, root)

    _sysfs.read_device_holders, _sysfs.module_live = read_device_holders, module_live
    yield
    _sysfs.read_device_holders, _sysfs.module_live = holders, live
