# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""The nvidia-smi seam (the fallback when pynvml is absent) and pure parsers of what nvidia-smi prints.

`SmiRunner` is the only code that runs nvidia-smi; the `parse_*` functions turn its output into the
same facts the NVML path builds (see _facts), as far as the output carries them. It also resets GPUs
(`nvidia-smi -r`), which NVML has no public call for. Nothing here imports Ansible: a boot-time service runs
it with `run_command` below instead of AnsibleModule.run_command.
"""

from __future__ import annotations

import os
import re
import subprocess
import xml.etree.ElementTree as ET

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _facts

# What nvidia-smi prints when the kernel driver is not loaded, and when the driver's NVML library is not installed.
DRIVER_UNREACHABLE = "couldn't communicate with the NVIDIA driver"
LIBRARY_MISSING = "couldn't find libnvidia-ml.so"


# What nvidia-smi -r prints when a reset cannot be done here at all (pass-through VMs, some clouds, GPUs that need
# a reboot); a GPU that is merely in use is a different failure ("is currently in use by another process").
_RESET_IMPOSSIBLE = re.compile(r'is not supported|cannot be reset|reboot', re.IGNORECASE)
_IN_USE = re.compile(r'in use', re.IGNORECASE)


class SmiError(Exception):
    def __init__(self, msg: str, output: str = ''):
        super().__init__(msg)
        self.output = output


class SmiDriverUnavailable(SmiError):
    pass


class SmiResetImpossible(SmiError):
    """nvidia-smi says this GPU cannot be reset here: a pending MIG mode waits for a reboot."""


def run_command(argv: list[str]) -> tuple[int, str, str]:
    """Run a command without a shell, in the C locale: the runner for callers without an AnsibleModule."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=dict(os.environ, LC_ALL='C'))
    except OSError as exc:
        return 127, '', str(exc)
    return proc.returncode, proc.stdout, proc.stderr


class SmiRunner:
    """Runs nvidia-smi (no shell) through `runner`: an AnsibleModule (its run_command, in the C locale) or any
    callable `run_command(argv) -> (rc, out, err)` such as the one above."""

    def __init__(self, runner, path: str):
        self.runner = runner
        self.path = path

    def _run(self, argv: list[str]) -> tuple[int, str, str]:
        method = getattr(self.runner, 'run_command', None)
        if method is not None:
            return method(argv, environ_update={'LC_ALL': 'C'})
        return self.runner(argv)

    def run(self, *args: str) -> str:
        rc, out, err = self._run([self.path] + list(args))
        if rc != 0:
            message = (out + err).strip()
            if DRIVER_UNREACHABLE in message or LIBRARY_MISSING in message:
                raise SmiDriverUnavailable(message, message)
            raise SmiError('%s %s failed (rc=%d): %s' % (self.path, ' '.join(args), rc, message), message)
        return out

    def query(self) -> str:
        return self.run('-q', '-x')

    def mig_profiles(self) -> tuple[str, str]:
        return self.run('mig', '-lgip'), self.run('mig', '-lgipp')

    def reset(self, gpu: str) -> str:
        """`nvidia-smi -r -i GPU` (index, UUID or PCI bus id): pending MIG mode becomes current.

        Raises SmiResetImpossible where the tool says the GPU cannot be reset here, SmiError for any other failure
        (such as a process still holding the GPU); returns what the tool printed.
        """
        try:
            return self.run('-r', '-i', gpu)
        except SmiDriverUnavailable:
            raise
        except SmiError as exc:
            if _RESET_IMPOSSIBLE.search(exc.output) and not _IN_USE.search(exc.output):
                raise SmiResetImpossible(str(exc), exc.output) from exc
            raise


def _find(elem, path: str) -> str | None:
    node = elem.find(path)
    if node is None or node.text is None:
        return None
    value = node.text.strip()
    return None if value in ('N/A', '') else value


def _enabled(value: str | None) -> bool | None:
    if value is None:
        return None
    return value.strip().lower() == 'enabled'


def _mib(value: str | None) -> int | None:
    """'81559 MiB' -> 81559."""
    if value is None:
        return None
    match = re.match(r'(\d+)\s*MiB', value)
    return int(match.group(1)) if match else None


def parse_query_xml(xml_text: str) -> tuple[dict, list[dict]]:
    """Parse `nvidia-smi -q -x` into (host facts, GPU facts)."""
    root = ET.fromstring(xml_text)
    host = _facts.new_host('nvidia-smi')
    host['driver_loaded'] = True
    host['driver_version'] = _find(root, 'driver_version')
    host['cuda_version'] = _find(root, 'cuda_version')
    gpus = []
    for index, elem in enumerate(root.findall('gpu')):
        gpus.append(_parse_gpu(index, elem))
    return host, gpus


def _parse_gpu(index: int, elem) -> dict:
    gpu = _facts.new_gpu(index)
    gpu['name'] = _find(elem, 'product_name')
    gpu['uuid'] = _find(elem, 'uuid')
    minor = _find(elem, 'minor_number')
    gpu['minor_number'] = int(minor) if minor is not None and minor.isdigit() else None
    bus_id = _find(elem, 'pci/pci_bus_id') or elem.get('id')
    device_id, subsystem_id = _find(elem, 'pci/pci_device_id'), _find(elem, 'pci/pci_sub_system_id')
    gpu['pci'] = {'bus_id': bus_id, 'vendor_id': None, 'device_id': None, 'subsystem_vendor_id': None, 'subsystem_id': None}
    if device_id and subsystem_id:
        gpu['pci'].update(_facts.pci_ids_from_smi(device_id, subsystem_id))
    if gpu['name'] is None or gpu['uuid'] is None:
        # nvidia-smi prints a GPU it cannot reach with its bus id and little else.
        _facts.mark_lost(gpu, 'nvidia-smi reports no identity for GPU %s' % bus_id)
        return gpu
    gpu['architecture'] = _facts.architecture_from_smi(_find(elem, 'product_architecture'))
    gpu['memory'] = {
        'total_mib': _mib(_find(elem, 'fb_memory_usage/total')),
        'used_mib': _mib(_find(elem, 'fb_memory_usage/used')),
        'free_mib': _mib(_find(elem, 'fb_memory_usage/free')),
        'reserved_mib': _mib(_find(elem, 'fb_memory_usage/reserved')),
    }
    gpu['persistence_mode'] = _enabled(_find(elem, 'persistence_mode'))
    gpu['ecc'] = {'current': _enabled(_find(elem, 'ecc_mode/current_ecc')), 'pending': _enabled(_find(elem, 'ecc_mode/pending_ecc'))}
    current, pending = _find(elem, 'mig_mode/current_mig'), _find(elem, 'mig_mode/pending_mig')
    if current is not None:
        gpu['mig'].update(capable=True, current=_enabled(current), pending=_enabled(pending))
        gpu['mig']['gpu_instances'] = _parse_mig_devices(elem)
    else:
        _facts.mark_unsupported(gpu, 'mig')
    mode = _find(elem, 'gpu_virtualization_mode/virtualization_mode')
    host_mode = _find(elem, 'gpu_virtualization_mode/host_vgpu_mode')
    gpu['vgpu']['virtualization_mode'] = _facts.SMI_VIRTUALIZATION_MODES.get(mode.lower(), 'unknown') if mode else None
    gpu['vgpu']['host_mode'] = _facts.SMI_HOST_VGPU_MODES.get(host_mode.lower(), 'unknown') if host_mode else None
    for proc in elem.findall('processes/process_info'):
        if (_find(proc, 'type') or 'C') not in ('C', 'M', 'C+G'):
            continue
        gi, ci = _find(proc, 'gpu_instance_id'), _find(proc, 'compute_instance_id')
        gpu['processes'].append({
            'pid': int(_find(proc, 'pid')),
            'used_memory_mib': _mib(_find(proc, 'used_memory')),
            'gpu_instance_id': int(gi) if gi is not None else None,
            'compute_instance_id': int(ci) if ci is not None else None,
        })
    return gpu


def _parse_mig_devices(elem) -> list[dict]:
    """The XML lists MIG devices (one per compute instance) by GPU- and compute-instance id."""
    instances: dict[int, dict] = {}
    for dev in elem.findall('mig_devices/mig_device'):
        gi_id = int(_find(dev, 'gpu_instance_id'))
        entry = instances.setdefault(gi_id, {'id': gi_id, 'profile_id': None, 'profile': None, 'placement': None, 'compute_instances': []})
        ci_id = _find(dev, 'compute_instance_id')
        if ci_id is not None:
            entry['compute_instances'].append({'id': int(ci_id), 'profile_id': None, 'slices': None, 'placement': None})
    return [instances[k] for k in sorted(instances)]


_LGIP_ROW = re.compile(
    r'^\|\s*(?P<gpu>\d+)\s+MIG\s+(?P<name>\S+)\s+(?P<id>\d+)\s+(?P<free>\d+)/(?P<total>\d+)\s+(?P<gib>[\d.]+)\s+'
    r'(?P<p2p>\w+)\s+(?P<sm>\d+)\s+(?P<dec>\d+)\s+(?P<enc>\d+)\s*\|$')
_LGIP_ROW2 = re.compile(r'^\|\s+(?P<ce>\d+)\s+(?P<jpeg>\d+)\s+(?P<ofa>\d+)\s*\|$')
_LGIPP_ROW = re.compile(r'^GPU\s+(?P<gpu>\d+)\s+Profile ID\s+(?P<id>\d+)\s+Placements?\s*:\s*\{(?P<starts>[\d,]*)\}:(?P<size>\d+)')
_SLICES = re.compile(r'^(\d+)g\.')


def parse_lgipp(text: str) -> dict[tuple[int, int], list[dict]]:
    """`nvidia-smi mig -lgipp` -> {(gpu index, profile id): [{'start', 'size'}]}."""
    result = {}
    for line in text.splitlines():
        match = _LGIPP_ROW.match(line.strip())
        if match:
            size = int(match.group('size'))
            starts = [int(s) for s in match.group('starts').split(',') if s != '']
            result[(int(match.group('gpu')), int(match.group('id')))] = [{'start': s, 'size': size} for s in starts]
    return result


def parse_lgip(text: str, placements: dict[tuple[int, int], list[dict]]) -> dict[int, list[dict]]:
    """`nvidia-smi mig -lgip` (plus the -lgipp placements) -> {gpu index: [profile facts]}.

    nvidia-smi prints memory in GiB with two decimals, so memory_mib here is accurate to about
    10 MiB only; the NVML path reports the exact value.
    """
    result: dict[int, list[dict]] = {}
    lines = [line.strip() for line in text.splitlines()]
    for pos, line in enumerate(lines):
        match = _LGIP_ROW.match(line)
        if not match:
            continue
        engines = _LGIP_ROW2.match(lines[pos + 1]) if pos + 1 < len(lines) else None
        gpu, profile_id, name = int(match.group('gpu')), int(match.group('id')), match.group('name')
        slices = _SLICES.match(name)
        result.setdefault(gpu, []).append(_facts.mig_profile(
            profile_id, name, int(slices.group(1)) if slices else None, int(match.group('total')),
            int(round(float(match.group('gib')) * 1024)), placements.get((gpu, profile_id), []),
            multiprocessors=int(match.group('sm')), decoders=int(match.group('dec')), encoders=int(match.group('enc')),
            copy_engines=int(engines.group('ce')) if engines else None,
            jpegs=int(engines.group('jpeg')) if engines else None,
            ofas=int(engines.group('ofa')) if engines else None))
    return result
