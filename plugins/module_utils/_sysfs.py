# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""The sysfs and procfs seam: every file this collection reads or writes under /sys and /proc is here."""

from __future__ import annotations

import os

PROC_DRIVER_VERSION = '/proc/driver/nvidia/version'
PCI_DEVICES = '/sys/bus/pci/devices'


def _read(path: str) -> str | None:
    try:
        with open(path, encoding='utf-8') as handle:
            return handle.read()
    except OSError:
        return None


def read_driver_version_file() -> str | None:
    """The loaded kernel module's banner, or None when no NVIDIA module is loaded."""
    return _read(PROC_DRIVER_VERSION)


def read_sriov(pci_address: str) -> dict:
    """SR-IOV VF counts of a PCI function (sysfs address such as 0000:18:00.0); None where absent."""
    result = {}
    for key, name in (('total_vfs', 'sriov_totalvfs'), ('num_vfs', 'sriov_numvfs')):
        raw = _read(os.path.join(PCI_DEVICES, pci_address, name))
        result[key] = int(raw.strip()) if raw and raw.strip().isdigit() else None
    return result
