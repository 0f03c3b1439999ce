# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""The sysfs and procfs seam: every file this collection reads or writes under /sys and /proc is here.

Every function takes the root it reads or writes under: `root`, where procfs (/proc) or sysfs (/sys) is mounted on a
host; another path where a container sees the host's, or a test serves an emulated tree.
"""

from __future__ import annotations

import os
import re

PROCFS = '/proc'
SYSFS = '/sys'
DRIVER_VERSION = 'driver/nvidia/version'
PCI_DEVICES = 'bus/pci/devices'
MDEV_BUS = 'class/mdev_bus'
MDEV_DEVICES = 'bus/mdev/devices'


def read_text(path: str) -> str | None:
    """A file's text, or None where it cannot be read (absent, gone, not ours)."""
    try:
        with open(path, encoding='utf-8') as handle:
            return handle.read()
    except OSError:
        return None


def read_driver_version_file(root: str = PROCFS) -> str | None:
    """The loaded kernel module's banner, or None when no NVIDIA module is loaded."""
    return read_text(os.path.join(root, DRIVER_VERSION))


def read_loaded_modules(root: str = PROCFS) -> set | None:
    """The names of the loaded kernel modules (<root>/modules), or None where that cannot be read."""
    text = read_text(os.path.join(root, 'modules'))
    return None if text is None else {line.split(None, 1)[0] for line in text.splitlines() if line.strip()}


_NVIDIA_NODE = re.compile(r'^/dev/nvidia(\d+)$')
_UNIT = re.compile(r'/([^/\n]+\.(?:service|scope))(?:/|$)', re.MULTILINE)


def _proc_text(path: str, limit: int = 4096) -> str | None:
    try:
        with open(path, 'rb') as f:
            return f.read(limit).decode('utf-8', 'replace')
    except OSError:  # the process ended, or is not ours to read
        return None


def read_device_holders(root: str = PROCFS) -> list[dict]:
    """Every process with a GPU device node (/dev/nvidia<minor>) open, as fuser/lsof find them: [{pid, comm, command,
    unit, minors}] from <root>/<pid>/fd, comm, cmdline and cgroup (unit: the systemd unit it runs in, or None). A process
    that ends while it is read is left out."""
    holders = []
    for name in _listdir(root):
        if not name.isdigit():
            continue
        base = os.path.join(root, name)
        minors = set()
        for fd in _listdir(os.path.join(base, 'fd')):
            try:
                match = _NVIDIA_NODE.match(os.readlink(os.path.join(base, 'fd', fd)))
            except OSError:
                continue
            if match:
                minors.add(int(match.group(1)))
        if not minors:
            continue
        comm = (_proc_text(os.path.join(base, 'comm')) or '').strip()
        command = ' '.join(part for part in (_proc_text(os.path.join(base, 'cmdline')) or '').split('\0') if part)
        units = _UNIT.findall(_proc_text(os.path.join(base, 'cgroup')) or '')
        holders.append({'pid': int(name), 'comm': comm, 'command': command[:200] or comm,
                        'unit': units[0] if units else None, 'minors': sorted(minors)})
    return sorted(holders, key=lambda h: h['pid'])


def module_live(name: str, root: str = SYSFS) -> bool:
    """Whether the kernel module `name` is loaded: <root>/module/<name>/initstate reads "live"."""
    return (read_text(os.path.join(root, 'module', name, 'initstate')) or '').strip() == 'live'


MIG_CAPABILITIES = '/proc/driver/nvidia/capabilities'
_CAP_MINOR = re.compile(r'^DeviceFileMinor:\s*(\d+)\s*$', re.MULTILINE)


def read_mig_capabilities(root: str = MIG_CAPABILITIES) -> dict:
    """The /dev/nvidia-caps minor of every GPU and compute instance capability the driver lists now, by path under
    `root` ('gpu<minor>/mig/gi<g>/access', 'gpu<minor>/mig/gi<g>/ci<c>/access'), from each file's DeviceFileMinor."""
    paths = []
    for gpu in (name for name in _listdir(root) if name.startswith('gpu')):
        base = os.path.join(gpu, 'mig')
        for gi in (name for name in _listdir(os.path.join(root, base)) if name.startswith('gi')):
            paths.append(os.path.join(base, gi, 'access'))
            paths += [os.path.join(base, gi, ci, 'access') for ci in _listdir(os.path.join(root, base, gi)) if ci.startswith('ci')]
    found = {}
    for rel in paths:
        match = _CAP_MINOR.search(read_text(os.path.join(root, rel)) or '')
        if match:
            found[rel] = int(match.group(1))
    return found


def read_mig_capability_minors(root: str = MIG_CAPABILITIES) -> dict:
    """read_mig_capabilities keyed the way the CDI comparison names them: 'gpu<minor>/gi<g>[/ci<c>]' -> minor."""
    return {os.path.dirname(path).replace('/mig/', '/', 1): minor for path, minor in read_mig_capabilities(root).items()}


def read_mounts(root: str = PROCFS) -> list[dict]:
    """The mounts <root>/mounts lists, each {source, target, fstype, options} (octal escapes such as \\040 decoded)."""
    text = read_text(os.path.join(root, 'mounts')) or ''
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4:
            source, target = (re.sub(r'\\([0-7]{3})', lambda m: chr(int(m.group(1), 8)), p) for p in parts[:2])
            mounts.append({'source': source, 'target': target, 'fstype': parts[2], 'options': parts[3]})
    return mounts


def read_sriov(pci_address: str, root: str = SYSFS) -> dict:
    """SR-IOV VF counts of a PCI function (sysfs address such as 0000:18:00.0); None where absent."""
    result = {}
    for key, name in (('total_vfs', 'sriov_totalvfs'), ('num_vfs', 'sriov_numvfs')):
        raw = read_text(os.path.join(root, PCI_DEVICES, pci_address, name))
        result[key] = int(raw.strip()) if raw and raw.strip().isdigit() else None
    return result


# ---------------------------------------------------------------------------------------------------------
# mdev (mediated devices): the vGPU types each parent offers, the devices it holds, create and remove.


class SysfsWriteError(Exception):
    """A write the kernel refused: `errno` and the `path` written, for the caller to explain."""

    def __init__(self, path: str, code: int | None, text: str):
        super().__init__('%s: %s' % (path, text))
        self.path = path
        self.errno = code
        self.text = text


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def root_exists(root: str = SYSFS) -> bool:
    """Whether sysfs is mounted (or emulated) at `root`: a directory with a bus/ (or class/) tree."""
    return os.path.isdir(root) and (os.path.isdir(os.path.join(root, 'bus')) or os.path.isdir(os.path.join(root, 'class')))


def _write(path: str, text: str) -> None:
    """One write(2), unbuffered: a sysfs store answers each write, and a buffered file would repeat a refused one."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as exc:
        raise SysfsWriteError(path, exc.errno, exc.strerror or str(exc)) from exc
    try:
        os.write(fd, text.encode('utf-8'))
    except OSError as exc:
        raise SysfsWriteError(path, exc.errno, exc.strerror or str(exc)) from exc
    finally:
        os.close(fd)


def list_mdev_parents(root: str = SYSFS) -> list[str]:
    """The PCI addresses (0000:18:00.0) that can host mediated devices."""
    return _listdir(os.path.join(root, MDEV_BUS))


def read_mdev_types(parent: str, root: str = SYSFS) -> list[dict]:
    """Each type a parent offers: type_id (nvidia-562), name, description, device_api, available_instances and the
    UUIDs of its devices."""
    base = os.path.join(root, MDEV_BUS, parent, 'mdev_supported_types')
    result = []
    for type_id in _listdir(base):
        path = os.path.join(base, type_id)
        available = (read_text(os.path.join(path, 'available_instances')) or '').strip()
        result.append({
            'type_id': type_id,
            'name': (read_text(os.path.join(path, 'name')) or type_id).strip(),
            'description': (read_text(os.path.join(path, 'description')) or '').strip(),
            'device_api': (read_text(os.path.join(path, 'device_api')) or '').strip(),
            'available_instances': int(available) if available.isdigit() else 0,
            'devices': [u.lower() for u in _listdir(os.path.join(path, 'devices'))],
        })
    return result


def list_mdev_devices(root: str = SYSFS) -> list[str]:
    """Every mediated device's UUID on the host."""
    return [u.lower() for u in _listdir(os.path.join(root, MDEV_DEVICES))]


def create_mdev(parent: str, type_id: str, uuid: str, root: str = SYSFS) -> None:
    """Write the UUID to the type's `create`; raises SysfsWriteError with the kernel's errno."""
    _write(os.path.join(root, MDEV_BUS, parent, 'mdev_supported_types', type_id, 'create'), uuid + '\n')


def remove_mdev(uuid: str, root: str = SYSFS) -> None:
    """Write 1 to the device's `remove`; raises SysfsWriteError (EBUSY while a VM holds it)."""
    _write(os.path.join(root, MDEV_DEVICES, uuid, 'remove'), '1\n')


# ---------------------------------------------------------------------------------------------------------
# SR-IOV vendor interface (vGPU 17+ on Ada, Hopper and newer): each VF of a GPU holds at most one vGPU;
# `<VF>/nvidia/creatable_vgpu_types` lists "ID : Name" of the types creatable on it now, and
# `<VF>/nvidia/current_vgpu_type` holds the type id (0: none); writing an id creates, writing 0 removes.

def list_vfs(pf_address: str, root: str = SYSFS) -> list[str]:
    """The VFs of a physical function in VF order (virtfn0, virtfn1, ...), as sysfs addresses."""
    base = os.path.join(root, PCI_DEVICES, pf_address)
    numbered = []
    for name in _listdir(base):
        if name.startswith('virtfn') and name[6:].isdigit():
            numbered.append((int(name[6:]), os.path.basename(os.readlink(os.path.join(base, name)))))
    return [pair[1] for pair in sorted(numbered)]


def parse_creatable_types(text: str) -> list[tuple[int, str]]:
    """'ID    : vGPU Name' lines (a header line first on real drivers) -> [(id, name)]."""
    result = []
    for line in text.splitlines():
        key, sep, name = line.partition(':')
        if sep and key.strip().isdigit():
            result.append((int(key.strip()), name.strip()))
    return result


def is_sriov_vgpu(vf_address: str, root: str = SYSFS) -> bool:
    """Whether a VF offers the vendor vGPU interface."""
    return os.path.exists(os.path.join(root, PCI_DEVICES, vf_address, 'nvidia', 'creatable_vgpu_types'))


def read_vf_vgpu(vf_address: str, root: str = SYSFS) -> dict:
    """A VF's vGPU state: creatable [(id, name)] now and current type id (0: none)."""
    base = os.path.join(root, PCI_DEVICES, vf_address, 'nvidia')
    current = (read_text(os.path.join(base, 'current_vgpu_type')) or '').strip()
    return {'vf': vf_address, 'creatable': parse_creatable_types(read_text(os.path.join(base, 'creatable_vgpu_types')) or ''),
            'current': int(current) if current.isdigit() else 0}


def set_vf_vgpu_type(vf_address: str, type_id: int, root: str = SYSFS) -> None:
    """Write a type id to create the VF's vGPU, 0 to remove it; raises SysfsWriteError (EINVAL, ENOSPC, EBUSY)."""
    _write(os.path.join(root, PCI_DEVICES, vf_address, 'nvidia', 'current_vgpu_type'), '%d\n' % type_id)
