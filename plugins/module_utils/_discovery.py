# -*- coding: utf-8 -*-
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils is PRIVATE and should only be used by this collection. Breaking changes can occur any time.

"""GPU discovery: choose a backend (NVML, else nvidia-smi), observe, and return host and GPU facts."""

from __future__ import annotations

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _facts, _nvml, _smi, _sysfs

BACKENDS = ('auto', 'nvml', 'nvidia-smi')


class DiscoveryError(Exception):
    def __init__(self, msg: str, exception: str | None = None):
        super().__init__(msg)
        self.exception = exception


def discover(module, backend: str = 'auto') -> tuple[dict, list[dict]]:
    """Observe the host's GPUs. A host without a loaded NVIDIA driver is an answer, not an error."""
    proc_version = _sysfs.read_driver_version_file()
    if backend == 'nvml' or (backend == 'auto' and _nvml.HAS_PYNVML):
        if not _nvml.HAS_PYNVML:
            raise DiscoveryError(missing_required_lib(_nvml.PYNVML_PACKAGE), _nvml.PYNVML_IMPORT_ERROR)
        host, gpus = _from_nvml()
    else:
        smi_path = module.get_bin_path('nvidia-smi')
        if smi_path is None:
            if backend == 'nvidia-smi' or proc_version:
                # A loaded driver we cannot talk to is a broken host, not a GPU-less one.
                raise DiscoveryError('The NVIDIA driver is loaded but neither pynvml nor nvidia-smi is available. %s'
                                     % missing_required_lib(_nvml.PYNVML_PACKAGE), _nvml.PYNVML_IMPORT_ERROR)
            host, gpus = _facts.new_host('none'), []
        else:
            try:
                host, gpus = _from_smi(_smi.SmiRunner(module, smi_path))
            except _smi.SmiError as exc:
                raise DiscoveryError(str(exc)) from exc
    for gpu in gpus:
        if gpu['pci']['bus_id']:
            gpu['sriov'] = _sysfs.read_sriov(_facts.sysfs_pci_address(gpu['pci']['bus_id']))
    return _facts.finish_host(host, gpus, proc_version), gpus


def _from_nvml() -> tuple[dict, list[dict]]:
    host = _facts.new_host('nvml')
    try:
        with _nvml.NvmlSession():
            system = _nvml.read_system()
            gpus = [_nvml.read_gpu(index) for index in range(system['count'])]
    except _nvml.DriverUnavailable as exc:
        host['driver_error'] = str(exc)
        return host, []
    host.update(driver_loaded=True, driver_version=system['driver_version'],
                nvml_version=system['nvml_version'], cuda_version=system['cuda_version'])
    return host, gpus


def _from_smi(runner: _smi.SmiRunner) -> tuple[dict, list[dict]]:
    try:
        host, gpus = _smi.parse_query_xml(runner.query())
    except _smi.SmiDriverUnavailable as exc:
        host = _facts.new_host('nvidia-smi')
        host['driver_error'] = str(exc)
        return host, []
    if any(g['mig']['capable'] for g in gpus):
        lgip, lgipp = runner.mig_profiles()
        profiles = _smi.parse_lgip(lgip, _smi.parse_lgipp(lgipp))
        for gpu in gpus:
            if gpu['mig']['capable']:
                gpu['mig']['profiles'] = _facts.sort_profiles(profiles.get(gpu['index'], []))
    return host, gpus
