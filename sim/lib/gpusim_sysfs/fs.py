"""The mdev sysfs trees of a simulated vGPU host, as a FUSE filesystem mounted where /sys would be.

Paths (relative to the mount point):

* ``class/mdev_bus/<parent>/mdev_supported_types/<nvidia-ID>/{name,description,device_api,available_instances,create}``
  and ``.../devices/<uuid>`` (a link to the device);
* ``bus/mdev/devices/<uuid>/{remove,mdev_type}`` (``mdev_type`` links to the type directory).

Every answer is computed from the gpusim state (``GPUSIM_ROOT``), so NVML's active vGPUs and sysfs agree. Writes
behave as the kernel and the NVIDIA vGPU manager do: ``create`` takes a UUID (malformed: EINVAL; already used:
EEXIST; no capacity left for that type, or another type on a homogeneous GPU: ENOSPC); ``remove`` takes ``1``
(anything else: EINVAL; a VM holds the device: EBUSY). Every write to ``create`` or ``remove`` is counted in the
state's ``sysfs_writes`` (failed ones too), so a test can prove that nothing was attempted.

The parent of a GPU's vGPUs is its physical function (``0000:18:00.0``).

With ``sriov=True`` (``--sriov``) every vGPU-capable GPU whose model has SR-IOV VFs (``sriov_total_vfs``, the A40)
uses the SR-IOV vendor interface of vGPU 17+ instead, and leaves ``class/mdev_bus``:

* ``bus/pci/devices/<PF>/{sriov_totalvfs,sriov_numvfs,virtfn<N>}``: writing N to ``sriov_numvfs`` enables N VFs
  (more than the total: ERANGE; another non-zero count while VFs are enabled, or 0 while a VF holds a vGPU: EBUSY);
* ``bus/pci/devices/<VF>/{physfn,nvidia/creatable_vgpu_types,nvidia/current_vgpu_type}``: the VF of number N sits at
  devfn 4 + N of the PF's bus. ``creatable_vgpu_types`` lists "ID : Name" of the types creatable now on the VF (none
  while it holds a vGPU; one type only once a sibling holds one, as the homogeneous GPU allows);
  ``current_vgpu_type`` reads the type id or 0; writing an id creates a vGPU (not a number, or a type the GPU does not
  support: EINVAL; not creatable now: ENOSPC; the VF holds a vGPU already: EBUSY), writing 0 removes it (a VM holds
  it: EBUSY). Writes are counted as ``current_vgpu_type`` and ``sriov_numvfs`` in ``sysfs_writes``; the VF of a vGPU is
  kept in its instance (``vf``) so NVML's active vGPUs and the VFs agree.
"""
from __future__ import annotations

import errno
import re
import stat
import time
from typing import Any

import mfusepy as fuse

from gpusim import host, models, store
from gpusim.errors import SimError

_UUID_RE = re.compile(r'^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$')
TYPE_FILES = ('available_instances', 'create', 'description', 'device_api', 'name')


def parent_of(gpu: dict[str, Any]) -> str:
    """'00000000:18:00.0' (NVML's bus id) -> '0000:18:00.0' (the sysfs PCI address)."""
    bus = gpu['pci_bus_id']
    return bus[-12:].lower() if len(bus) > 12 else bus.lower()


def _type_dir(vtype: dict[str, Any]) -> str:
    return 'nvidia-%d' % vtype['id']


def vf_address(pf: str, number: int) -> str:
    """The address of VF `number` of a PF: devfn 4 + number on the PF's bus (0000:18:00.0 -> 0000:18:00.4, ...)."""
    devfn = 4 + number
    return '%s:%02x.%d' % (pf[:-5], devfn // 8, devfn % 8)


def numvfs(state: dict[str, Any], gpu: dict[str, Any]) -> int:
    """The VFs enabled on a GPU in this boot (a reboot disables them, as on a real host)."""
    vfs = gpu.get('sriov_vfs') or {}
    return vfs.get('count', 0) if vfs.get('boot_id') == state.get('boot_id') else 0


def count_write(state: dict[str, Any], what: str) -> int:
    """Count one write (failed ones too) and return the errno of an injected fault that fires on it (`gpusimctl fault
    set --call sysfs:<file>`), else 0: a faulted write changes nothing."""
    writes = state.setdefault('sysfs_writes', {})
    writes[what] = writes.get(what, 0) + 1
    return host.sysfs_fault(state, what) or 0


class MdevFs(fuse.Operations):
    """Read-mostly view of the state; the two write files change it in one state transaction each."""

    use_ns = True

    def __init__(self, root: str | None = None, sriov: bool = False):
        self.root = root
        self.sriov = sriov
        self.started = time.time_ns()

    # ---- the state, as the tree sees it
    def _state(self) -> dict[str, Any]:
        try:
            return store.load(self.root)
        except store.StateMissing:
            return {'gpus': []}

    def _parents(self, state: dict[str, Any]) -> dict[str, dict[str, Any]]:
        if not state.get('vgpu_host'):
            return {}
        return {parent_of(g): g for g in host.visible_gpus(state)
                if g.get('virtualization_mode') == host.VIRT_MODES['host-vgpu'] and models.vgpu_types(models.get(g['model']))
                and not self._is_sriov(g)}

    def _is_sriov(self, gpu: dict[str, Any]) -> bool:
        return self.sriov and bool(models.get(gpu['model']).get('sriov_total_vfs'))

    def _sriov_pfs(self, state: dict[str, Any]) -> dict[str, dict[str, Any]]:
        if not self.sriov or not state.get('vgpu_host'):
            return {}
        return {parent_of(g): g for g in host.visible_gpus(state)
                if g.get('virtualization_mode') == host.VIRT_MODES['host-vgpu'] and models.vgpu_types(models.get(g['model']))
                and self._is_sriov(g)}

    def _vfs(self, state: dict[str, Any]) -> dict[str, tuple[dict[str, Any], int]]:
        """Every enabled VF: address -> (its GPU, its number)."""
        result = {}
        for pf, gpu in self._sriov_pfs(state).items():
            for number in range(numvfs(state, gpu)):
                result[vf_address(pf, number)] = (gpu, number)
        return result

    @staticmethod
    def _types(gpu: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {_type_dir(t): t for t in models.vgpu_types(models.get(gpu['model']))}

    @staticmethod
    def _devices(state: dict[str, Any]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
        return {v['uuid'].lower(): (g, v) for g in state.get('gpus', []) for v in g.get('vgpu_instances', [])}

    def _resolve(self, path: str) -> tuple[str, Any]:
        """(kind, data) for a path, or ENOENT."""
        parts = [p for p in path.split('/') if p]
        state = self._state()
        dirs = {(): None, ('class',): None, ('class', 'mdev_bus'): None, ('bus',): None, ('bus', 'mdev'): None,
                ('bus', 'mdev', 'devices'): None}
        if tuple(parts) in dirs:
            return 'dir', (state, parts)
        if parts[:2] == ['class', 'mdev_bus']:
            return self._resolve_parent(state, parts[2:])
        if parts[:3] == ['bus', 'pci', 'devices'] or parts == ['bus', 'pci']:
            return self._resolve_pci(state, parts[3:], parts)
        if parts[:3] == ['bus', 'mdev', 'devices'] and len(parts) >= 4:
            found = self._devices(state).get(parts[3].lower())
            if found is not None:
                gpu, inst = found
                if len(parts) == 4:
                    return 'device', (state, gpu, inst)
                if len(parts) == 5 and parts[4] == 'remove':
                    return 'remove', (state, gpu, inst)
                if len(parts) == 5 and parts[4] == 'mdev_type':
                    return 'link', '../../../../class/mdev_bus/%s/mdev_supported_types/nvidia-%d' % (parent_of(gpu), inst['type_id'])
        raise fuse.FuseOSError(errno.ENOENT)

    def _resolve_pci(self, state: dict[str, Any], rest: list[str], parts: list[str]) -> tuple[str, Any]:
        if not self._sriov_pfs(state):
            raise fuse.FuseOSError(errno.ENOENT)
        if len(parts) <= 3:
            return 'dir', (state, parts)
        pfs, vfs = self._sriov_pfs(state), self._vfs(state)
        if rest[0] in pfs:
            gpu = pfs[rest[0]]
            if len(rest) == 1:
                return 'dir', (state, ['pf', gpu, rest[0]])
            if len(rest) == 2 and rest[1] in ('sriov_totalvfs', 'sriov_numvfs'):
                return 'pfattr', (state, gpu, rest[1])
            if len(rest) == 2 and rest[1].startswith('virtfn') and rest[1][6:].isdigit() and int(rest[1][6:]) < numvfs(state, gpu):
                return 'link', '../' + vf_address(rest[0], int(rest[1][6:]))
        elif rest[0] in vfs:
            gpu, number = vfs[rest[0]]
            if len(rest) == 1:
                return 'dir', (state, ['vf'])
            if len(rest) == 2 and rest[1] == 'physfn':
                return 'link', '../' + parent_of(gpu)
            if len(rest) == 2 and rest[1] == 'nvidia':
                return 'dir', (state, ['vfnvidia'])
            if len(rest) == 3 and rest[1] == 'nvidia' and rest[2] in ('creatable_vgpu_types', 'current_vgpu_type'):
                return 'vfattr', (state, gpu, number, rest[2])
        raise fuse.FuseOSError(errno.ENOENT)

    def _resolve_parent(self, state: dict[str, Any], rest: list[str]) -> tuple[str, Any]:
        parents = self._parents(state)
        if not rest:
            return 'dir', (state, ['class', 'mdev_bus'])
        gpu = parents.get(rest[0])
        if gpu is None:
            raise fuse.FuseOSError(errno.ENOENT)
        if len(rest) == 1 or (len(rest) == 2 and rest[1] == 'mdev_supported_types'):
            return 'dir', (state, ['parent', gpu] + rest[1:])
        if rest[1] != 'mdev_supported_types':
            raise fuse.FuseOSError(errno.ENOENT)
        vtype = self._types(gpu).get(rest[2])
        if vtype is None:
            raise fuse.FuseOSError(errno.ENOENT)
        if len(rest) == 3:
            return 'type', (state, gpu, vtype)
        if len(rest) == 4 and rest[3] in TYPE_FILES:
            return 'attr', (state, gpu, vtype, rest[3])
        if len(rest) == 4 and rest[3] == 'devices':
            return 'typedevs', (state, gpu, vtype)
        if len(rest) == 5 and rest[3] == 'devices':
            if any(v['uuid'].lower() == rest[4].lower() and v['type_id'] == vtype['id'] for v in gpu.get('vgpu_instances', [])):
                return 'link', '../../../../../../bus/mdev/devices/%s' % rest[4].lower()
        raise fuse.FuseOSError(errno.ENOENT)

    @staticmethod
    def _attr_text(gpu: dict[str, Any], vtype: dict[str, Any], name: str) -> str:
        if name == 'name':
            return vtype['name'] + '\n'
        if name == 'device_api':
            return 'vfio-pci\n'
        if name == 'description':
            return 'num_heads=4, frl_config=60, framebuffer=%dM, max_resolution=5120x2880, max_instance=%d\n' % (
                vtype['framebuffer_bytes'] // (1 << 20), vtype['max_instances'])
        if name == 'available_instances':
            used = sum(1 for v in gpu.get('vgpu_instances', []) if v['type_id'] == vtype['id'])
            room = vtype['max_instances'] - used if vtype['id'] in host.creatable_vgpu_types(gpu) else 0
            return '%d\n' % room
        return ''

    # ---- FUSE operations
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        kind, data = self._resolve(path)
        now = self.started
        attrs = {'st_uid': 0, 'st_gid': 0, 'st_atime': now, 'st_mtime': now, 'st_ctime': now, 'st_nlink': 1}
        if kind in ('dir', 'device', 'type', 'typedevs'):
            attrs.update(st_mode=stat.S_IFDIR | 0o755, st_nlink=2, st_size=0)
        elif kind == 'link':
            attrs.update(st_mode=stat.S_IFLNK | 0o777, st_size=len(data))
        elif (kind == 'pfattr' and data[2] == 'sriov_numvfs') or (kind == 'vfattr' and data[3] == 'current_vgpu_type'):
            attrs.update(st_mode=stat.S_IFREG | 0o644, st_size=4096)
        elif kind == 'remove' or (kind == 'attr' and data[3] == 'create'):
            attrs.update(st_mode=stat.S_IFREG | 0o200, st_size=4096)
        else:
            attrs.update(st_mode=stat.S_IFREG | 0o444, st_size=4096)
        return attrs

    def readdir(self, path: str, fh: int) -> list[str]:
        kind, data = self._resolve(path)
        names: list[str] = []
        if kind == 'dir':
            state, parts = data
            names = self._dir_names(state, parts)
        elif kind == 'type':
            names = list(TYPE_FILES) + ['devices']
        elif kind == 'typedevs':
            gpu, vtype = data[1], data[2]
            names = sorted(v['uuid'].lower() for v in gpu.get('vgpu_instances', []) if v['type_id'] == vtype['id'])
        elif kind == 'device':
            names = ['mdev_type', 'remove']
        else:
            raise fuse.FuseOSError(errno.ENOTDIR)
        return ['.', '..'] + names

    def _dir_names(self, state: dict[str, Any], parts: list[Any]) -> list[str]:
        table = {(): ['bus', 'class'], ('class',): ['mdev_bus'], ('bus',): ['mdev'] + (['pci'] if self._sriov_pfs(state) else []),
                 ('bus', 'mdev'): ['devices'], ('bus', 'pci'): ['devices'], ('vf',): ['nvidia', 'physfn'],
                 ('vfnvidia',): ['creatable_vgpu_types', 'current_vgpu_type']}
        if parts and parts[0] == 'pf':
            return ['sriov_numvfs', 'sriov_totalvfs'] + ['virtfn%d' % n for n in range(numvfs(state, parts[1]))]
        if parts == ['bus', 'pci', 'devices']:
            return sorted(list(self._sriov_pfs(state)) + list(self._vfs(state)))
        if parts and parts[0] == 'parent':
            return ['mdev_supported_types'] if len(parts) == 2 else sorted(self._types(parts[1]), key=lambda n: int(n.split('-')[1]))
        if parts == ['class', 'mdev_bus']:
            return sorted(self._parents(state))
        if parts == ['bus', 'mdev', 'devices']:
            return sorted(self._devices(state))
        return table.get(tuple(parts), [])

    def readlink(self, path: str) -> str:
        kind, data = self._resolve(path)
        if kind != 'link':
            raise fuse.FuseOSError(errno.EINVAL)
        return data

    def open(self, path: str, flags: int) -> int:
        self._resolve(path)
        return 0

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        self._resolve(path)
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        kind, data = self._resolve(path)
        if kind in ('pfattr', 'vfattr'):
            return self._sriov_text(kind, data).encode()[offset:offset + size]
        if kind != 'attr' or data[3] == 'create':
            raise fuse.FuseOSError(errno.EACCES if kind in ('attr', 'remove') else errno.EISDIR)
        gpu, vtype, name = data[1], data[2], data[3]
        return self._attr_text(gpu, vtype, name).encode()[offset:offset + size]

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        kind, found = self._resolve(path)
        text = data.decode('utf-8', 'replace').strip()
        if kind == 'pfattr' and found[2] == 'sriov_numvfs':
            self._set_numvfs(found[1]['index'], text)
        elif kind == 'vfattr' and found[3] == 'current_vgpu_type':
            self._set_vf_type(found[1]['index'], found[2], text)
        elif kind == 'attr' and found[3] == 'create':
            self._create(found[1], found[2], text)
        elif kind == 'remove':
            self._remove(found[2]['uuid'], text)
        else:
            raise fuse.FuseOSError(errno.EACCES)
        return len(data)

    def _create(self, gpu: dict[str, Any], vtype: dict[str, Any], text: str) -> None:
        code = 0
        with store.transaction(self.root) as state:
            code = count_write(state, 'create')
            if code:
                pass
            elif not _UUID_RE.match(text):
                code = errno.EINVAL
            elif text.lower() in self._devices(state):
                code = errno.EEXIST
            else:
                try:
                    host.add_vgpu(state, gpu['index'], vtype['id'], vgpu_uuid=text.lower())
                except SimError as exc:
                    code = errno.ENOSPC if 'cannot be created now' in str(exc) else errno.EINVAL
        if code:
            raise fuse.FuseOSError(code)

    def _remove(self, vgpu_uuid: str, text: str) -> None:
        code = 0
        with store.transaction(self.root) as state:
            code = count_write(state, 'remove')
            found = self._devices(state).get(vgpu_uuid.lower())
            if code:
                pass
            elif text != '1':
                code = errno.EINVAL
            elif found is None:
                code = errno.ENODEV
            elif found[1].get('vm_id'):
                code = errno.EBUSY
            else:
                host.remove_vgpu(state, found[1]['uuid'])
        if code:
            raise fuse.FuseOSError(code)

    # ---- the SR-IOV vendor interface
    @staticmethod
    def _vf_instance(gpu: dict[str, Any], number: int) -> dict[str, Any] | None:
        return next((v for v in gpu.get('vgpu_instances', []) if v.get('vf') == number), None)

    def _sriov_text(self, kind: str, data: tuple) -> str:
        if kind == 'pfattr':
            gpu, name = data[1], data[2]
            return '%d\n' % (models.get(gpu['model'])['sriov_total_vfs'] if name == 'sriov_totalvfs' else numvfs(data[0], gpu))
        gpu, number, name = data[1], data[2], data[3]
        inst = self._vf_instance(gpu, number)
        if name == 'current_vgpu_type':
            return '%d\n' % (inst['type_id'] if inst else 0)
        names = {t['id']: t['name'] for t in models.vgpu_types(models.get(gpu['model']))}
        lines = ['ID    : vGPU Name'] + ([] if inst else ['%-5d : %s' % (t, names[t]) for t in host.creatable_vgpu_types(gpu)])
        return '\n'.join(lines) + '\n'

    def _set_numvfs(self, index: int, text: str) -> None:
        code = 0
        with store.transaction(self.root) as state:
            code = count_write(state, 'sriov_numvfs')
            gpu = host.gpu(state, index)
            now = numvfs(state, gpu)
            if code:
                pass
            elif not text.isdigit():
                code = errno.EINVAL
            elif int(text) > models.get(gpu['model'])['sriov_total_vfs']:
                code = errno.ERANGE
            elif int(text) and now and int(text) != now:
                code = errno.EBUSY
            elif not int(text) and any('vf' in v for v in gpu.get('vgpu_instances', [])):
                code = errno.EBUSY
            else:
                gpu['sriov_vfs'] = {'count': int(text), 'boot_id': state.get('boot_id')}
        if code:
            raise fuse.FuseOSError(code)

    def _set_vf_type(self, index: int, number: int, text: str) -> None:
        code = 0
        with store.transaction(self.root) as state:
            code = count_write(state, 'current_vgpu_type')
            gpu = host.gpu(state, index)
            inst = self._vf_instance(gpu, number)
            if code:
                pass
            elif not text.isdigit():
                code = errno.EINVAL
            elif int(text) == 0:
                if inst is not None and inst.get('vm_id'):
                    code = errno.EBUSY
                elif inst is not None:
                    host.remove_vgpu(state, inst['uuid'])
            elif inst is not None:
                code = errno.EBUSY
            elif int(text) not in [t['id'] for t in models.vgpu_types(models.get(gpu['model']))]:
                code = errno.EINVAL
            else:
                try:
                    host.add_vgpu(state, index, int(text))['vf'] = number
                except SimError as exc:
                    code = errno.ENOSPC if 'cannot be created now' in str(exc) else errno.EINVAL
        if code:
            raise fuse.FuseOSError(code)


def mount(mountpoint: str, root: str | None = None, foreground: bool = True, sriov: bool = False) -> None:
    """Serve the trees at `mountpoint` until unmounted (blocks when foreground); `sriov`: see the module's doc."""
    # allow_other + default_permissions: readable by every user, as sysfs is; create and remove (0200) for root only.
    fuse.FUSE(MdevFs(root, sriov=sriov), mountpoint, foreground=foreground, nothreads=True, direct_io=True, allow_other=True,
              default_permissions=True, attr_timeout=0, entry_timeout=0, negative_timeout=0)
