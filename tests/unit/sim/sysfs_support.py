# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared helpers of the emulated sysfs tests (mdev and SR-IOV): kernel-style writes and the host's state."""
from __future__ import annotations

import json
import os

import pytest


def write(path, text):
    # one write(2), as the collection's sysfs seam does (a buffered file would retry a failed write on close)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def errno_of(path, text):
    """The errno a write is refused with (it must be refused)."""
    with pytest.raises(OSError) as info:
        write(path, text)
    return info.value.errno


def state(simhost):
    with open(simhost.root / 'state.json', encoding='utf-8') as handle:
        return json.load(handle)
