# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""Pure helpers that shape GPU observations into the facts gpu_facts returns.

Nothing here imports pynvml, runs a command or reads a file: the seams (_nvml, _smi, _sysfs)
observe, and both backends build their answer with these functions so that the NVML path and the
nvidia-smi fallback give the same facts for the same GPU.
"""

from __future__ import annotations

import re

MIB = 1024 * 1024

# NVML_DEVICE_ARCH_* values (nvml.h) to the names NVIDIA uses in nvidia-smi's product_architecture.
ARCHITECTURES = {
    2: 'kepler',
    3: 'maxwell',
    4: 'pascal',
    5: 'volta',
    6: 'turing',
    7: 'ampere',
    8: 'ada',
    9: 'hopper',
    10: 'blackwell',
    13: 'rubin',
}

# NVML_GPU_VIRTUALIZATION_MODE_* values and the strings nvidia-smi -q -x prints for them.
VIRTUALIZATION_MODES = {0: 'none', 1: 'passthrough', 2: 'vgpu', 3: 'host_vgpu', 4: 'host_vsga'}
SMI_VIRTUALIZATION_MODES = {
    'none': 'none',
    'pass-through': 'passthrough',
    'vgpu': 'vgpu',
    'host vgpu': 'host_vgpu',
    'host vsga': 'host_vsga',
}
HOST_VGPU_MODES = {0: 'non_sriov', 1: 'sriov'}
# NVML_COMPUTEMODE_* values and the names gpu_settings declares them by.
COMPUTE_MODES = {0: 'default', 1: 'exclusive_thread', 2: 'prohibited', 3: 'exclusive_process'}
SMI_HOST_VGPU_MODES = {'non sr-iov': 'non_sriov', 'sr-iov': 'sriov'}

# The value NVML puts in gpuInstanceId/computeInstanceId of a process that runs outside MIG.
NVML_VALUE_NOT_AVAILABLE_UINT = 0xFFFFFFFF


def text(value) -> str:
    """NVML strings arrive as str or bytes depending on the binding's version."""
    if isinstance(value, bytes):
        return value.decode('utf-8', errors='replace').rstrip('\x00')
    return str(value)


def architecture_name(arch_enum: int | None) -> str | None:
    if arch_enum is None:
        return None
    return ARCHITECTURES.get(int(arch_enum), 'unknown')


def architecture_from_smi(value: str | None) -> str | None:
    if value is None:
        return None
    name = value.strip().lower()
    return name if name in ARCHITECTURES.values() else 'unknown'


def pci_ids(pci_device_id: int, pci_subsystem_id: int) -> dict:
    """Split NVML's 32-bit PCI ids (device << 16 | vendor) into the hex strings lspci shows."""
    return {
        'vendor_id': '0x%04x' % (pci_device_id & 0xFFFF),
        'device_id': '0x%04x' % (pci_device_id >> 16),
        'subsystem_vendor_id': '0x%04x' % (pci_subsystem_id & 0xFFFF),
        'subsystem_id': '0x%04x' % (pci_subsystem_id >> 16),
    }


def pci_ids_from_smi(device_id_hex: str, subsystem_id_hex: str) -> dict:
    """nvidia-smi prints the same 32-bit ids as 8 hex digits, e.g. 233010DE."""
    return pci_ids(int(device_id_hex, 16), int(subsystem_id_hex, 16))


def sysfs_pci_address(bus_id: str) -> str:
    """NVML's bus id has an 8-digit domain (00000000:18:00.0); sysfs names use 4 digits, lower case."""
    domain, rest = bus_id.strip().lower().split(':', 1)
    return '%04x:%s' % (int(domain, 16), rest)


def compute_capability(major: int, minor: int) -> str:
    return '%d.%d' % (major, minor)


def mib(value_bytes: int | None) -> int | None:
    if value_bytes is None:
        return None
    return int(value_bytes) // MIB


def cuda_version(cuda_int: int | None) -> str | None:
    """NVML gives the CUDA driver version as 1000*major + 10*minor (13000 -> 13.0)."""
    if cuda_int is None:
        return None
    return '%d.%d' % (cuda_int // 1000, (cuda_int % 1000) // 10)


def mig_profile_name(raw_name: str) -> str:
    """NVML and nvidia-smi name GPU-instance profiles 'MIG 1g.10gb'; declarations use '1g.10gb'."""
    name = text(raw_name).strip()
    return name[4:] if name.startswith('MIG ') else name


_KERNEL_MODULE_RE = re.compile(r'NVRM version:\s+NVIDIA UNIX\s+(?P<kind>.*?Kernel Module)\s+(?:for \S+\s+)?(?P<version>\d+\.\d+(?:\.\d+)?)')


def kernel_module(proc_version_text: str | None) -> dict:
    """Parse /proc/driver/nvidia/version: which kernel module flavour is loaded, and its version.

    The open modules say 'NVIDIA UNIX Open Kernel Module for x86_64  580.159.04', the proprietary
    ones 'NVIDIA UNIX x86_64 Kernel Module  580.159.04'.
    """
    if not proc_version_text:
        return {'loaded': False, 'flavor': None, 'version': None}
    match = _KERNEL_MODULE_RE.search(proc_version_text)
    if not match:
        return {'loaded': True, 'flavor': 'unknown', 'version': None}
    flavor = 'open' if 'Open Kernel Module' in match.group('kind') else 'proprietary'
    return {'loaded': True, 'flavor': flavor, 'version': match.group('version')}


def new_gpu(index: int) -> dict:
    """The shape every GPU entry has, whatever the backend; fields start unknown (None)."""
    return {
        'index': index,
        'uuid': None,
        'name': None,
        'minor_number': None,
        'status': 'ok',
        'error': None,
        'pci': {'bus_id': None, 'vendor_id': None, 'device_id': None, 'subsystem_vendor_id': None, 'subsystem_id': None},
        'architecture': None,
        'compute_capability': None,
        'memory': {'total_mib': None, 'used_mib': None, 'free_mib': None, 'reserved_mib': None},
        'persistence_mode': None,
        'ecc': {'current': None, 'pending': None},
        'mig': {'capable': False, 'current': None, 'pending': None, 'profiles': [], 'gpu_instances': []},
        'vgpu': {'virtualization_mode': None, 'host_mode': None, 'supported_types': [], 'creatable_types': [], 'active': []},
        'sriov': {'total_vfs': None, 'num_vfs': None},
        'settings': new_settings(),
        'processes': [],
        'unsupported': [],
        'errors': {},
    }


def new_settings() -> dict:
    """The settings gpu_settings declares, as NVML reports them (persistence and ECC are the GPU's own keys). Power in
    milliwatts (nvmlDeviceGetPowerManagementLimit, ...Default..., ...Constraints, nvmlDeviceGetEnforcedPowerLimit),
    clocks in MHz; `supported_clocks` lists, per supported memory clock, the graphics clocks supported with it. NVML
    has no call that reads locked clocks back."""
    return {
        'compute_mode': None,
        'power_limit': {'limit_mw': None, 'default_mw': None, 'min_mw': None, 'max_mw': None, 'enforced_mw': None},
        'applications_clocks': {'graphics_mhz': None, 'memory_mhz': None},
        'default_applications_clocks': {'graphics_mhz': None, 'memory_mhz': None},
        'supported_clocks': [],
    }


def mark_unsupported(gpu: dict, field: str) -> None:
    if field not in gpu['unsupported']:
        gpu['unsupported'].append(field)


def mark_error(gpu: dict, field: str, message: str) -> None:
    gpu['errors'][field] = message


def mark_lost(gpu: dict, message: str) -> None:
    gpu['status'] = 'lost'
    gpu['error'] = message


def mig_profile(profile_id: int, name: str, slices: int, instances: int, memory_mib: int,
                placements: list[dict], **engines) -> dict:
    """One GPU-instance profile as the GPU reports it.

    `slices` counts compute slices; `memory_slices` is the placement size (memory slices), which
    differs from `slices` for profiles such as 1g.20gb (1 compute slice, 2 memory slices).
    """
    sizes = {p['size'] for p in placements}
    return {
        'id': profile_id,
        'name': mig_profile_name(name),
        'slices': slices,
        'memory_slices': sizes.pop() if len(sizes) == 1 else None,
        'instances': instances,
        'memory_mib': memory_mib,
        'placements': sorted(placements, key=lambda p: p['start']),
        'multiprocessors': engines.get('multiprocessors'),
        'copy_engines': engines.get('copy_engines'),
        'decoders': engines.get('decoders'),
        'encoders': engines.get('encoders'),
        'jpegs': engines.get('jpegs'),
        'ofas': engines.get('ofas'),
    }


def host_summary(gpus: list[dict]) -> dict:
    """Count GPUs per model name, the view an operator checks first."""
    models: dict[str, int] = {}
    for gpu in gpus:
        name = gpu.get('name') or 'unknown'
        models[name] = models.get(name, 0) + 1
    return models


def new_host(backend: str) -> dict:
    return {
        'driver_loaded': False,
        'driver_error': None,
        'driver_version': None,
        'cuda_version': None,
        'nvml_version': None,
        'kernel_module': {'loaded': False, 'flavor': None, 'version': None},
        'backend': backend,
        'gpu_count': 0,
        'models': {},
        'mig_enabled_gpus': 0,
        'lost_gpus': 0,
    }


def finish_host(host: dict, gpus: list[dict], proc_version_text: str | None) -> dict:
    host['kernel_module'] = kernel_module(proc_version_text)
    host['gpu_count'] = len(gpus)
    host['models'] = host_summary(gpus)
    host['mig_enabled_gpus'] = sum(1 for g in gpus if g['mig']['current'])
    host['lost_gpus'] = sum(1 for g in gpus if g['status'] == 'lost')
    return host


def summary_line(host: dict, gpus: list[dict]) -> str:
    """One readable line per host: models, driver, kernel modules, MIG and vGPU state."""
    if not host.get('driver_loaded'):
        reason = host.get('driver_error') or 'no NVIDIA driver'
        return 'no GPUs visible (%s)' % reason
    models = ', '.join('%dx %s' % (count, name) for name, count in sorted(host.get('models', {}).items()))
    module = host.get('kernel_module') or {}
    parts = [
        models or 'no GPUs',
        'driver %s (%s modules)' % (host.get('driver_version'), module.get('flavor') or 'unknown'),
        'CUDA %s' % host.get('cuda_version'),
    ]
    capable = [g for g in gpus if g['mig']['capable']]
    if capable:
        pending = sum(1 for g in capable if g['mig']['pending'] != g['mig']['current'])
        instances = sum(len(g['mig']['gpu_instances']) for g in capable)
        parts.append('MIG on %d/%d (%d GPU instances%s)' % (
            host.get('mig_enabled_gpus', 0), len(capable), instances, ', %d pending a reset' % pending if pending else ''))
    vgpu_hosts = [g for g in gpus if g['vgpu']['virtualization_mode'] == 'host_vgpu']
    if vgpu_hosts:
        parts.append('vGPU host: %d GPUs, %d active vGPUs' % (len(vgpu_hosts), sum(len(g['vgpu']['active']) for g in vgpu_hosts)))
    if host.get('lost_gpus'):
        parts.append('%d GPU(s) LOST' % host['lost_gpus'])
    parts.append('via %s' % host.get('backend'))
    return ' | '.join(parts)


def sort_profiles(profiles: list[dict]) -> list[dict]:
    """Smallest first, the order nvidia-smi lists them in: by compute slices, memory slices, then name."""
    return sorted(profiles, key=lambda p: (p['slices'] or 0, p['memory_slices'] or 0, p['name']))


def layout_lines(gpus: list[dict]) -> list[str]:
    """One line per GPU: its MIG layout as profile@start [compute instances], or its vGPU devices."""
    lines = []
    for gpu in gpus:
        head = 'GPU %d %s' % (gpu['index'], gpu.get('name') or '')
        if gpu['status'] != 'ok':
            lines.append('%s: %s (%s)' % (head, gpu['status'].upper(), gpu.get('error')))
            continue
        mig = gpu['mig']
        if mig['capable']:
            if not mig['current']:
                state = 'MIG off' + (' (on after reset)' if mig['pending'] else '')
            elif not mig['gpu_instances']:
                state = 'MIG on, no instances' + ('' if mig['pending'] else ' (off after reset)')
            else:
                state = 'MIG ' + ', '.join(_instance_text(gi) for gi in sorted(
                    mig['gpu_instances'], key=lambda g: (g['placement'] or {}).get('start', 0)))
        elif gpu['vgpu']['virtualization_mode'] == 'host_vgpu':
            active = [v['type'] for v in gpu['vgpu']['active']]
            state = 'vGPU: ' + (', '.join(active) if active else 'no vGPU devices')
        else:
            state = 'no MIG'
        lines.append('%s: %s' % (head, state))
    return lines


def _instance_text(gi: dict) -> str:
    where = '@%d' % gi['placement']['start'] if gi.get('placement') else ''
    cis = ' '.join('%sc' % ci['slices'] for ci in gi['compute_instances'] if ci.get('slices'))
    return '%s%s%s' % (gi.get('profile') or 'GI %s' % gi['id'], where, ' [%s]' % cis if cis else '')
