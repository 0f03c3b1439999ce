# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""dcgm-exporter's default counters under dcgm-exporter's own names, types, units and labels.

The collector reads NVML once per scrape into a Reading per GPU; this module turns a Reading into DCGM_FI_* series (added
to the scrape's exposition.Families) the way
dcgm-exporter 4.5.3 renders them: units as DCGM delivers them (clocks MHz, framebuffer MiB, energy mJ, power W, GPM
ratios 0-1 and bytes/s), the driver version as the label DCGM_FI_DRIVER_VERSION on every series, the last XID as a gauge
with err_code/err_msg, one entity per MIG GPU instance (labels GPU_I_PROFILE, GPU_I_ID) on a GPU with MIG instances,
and bare counter names (no _total). Values DCGM would report blank (not supported, failed) give no series.
"""

from __future__ import annotations

from gpuvirt_exporter.xid_text import xid_text

MIB = 1024 * 1024
HOST_LABEL_CHOICES = ('Hostname', 'hostname', 'both')
NAME_MODES = ('gpuvirt', 'dcgm', 'both')
# GPM metric ids (NVML_GPM_METRIC_*) -> (dcgm name, factor): GPM utilizations are 0-100 %, DCGM's ratios 0-1; GPM PCIe
# rates are MiB/s, DCGM's bytes/s.
GPM_METRICS = {
    1: ('DCGM_FI_PROF_GR_ENGINE_ACTIVE', 0.01),
    5: ('DCGM_FI_PROF_PIPE_TENSOR_ACTIVE', 0.01),
    10: ('DCGM_FI_PROF_DRAM_ACTIVE', 0.01),
    20: ('DCGM_FI_PROF_PCIE_TX_BYTES', MIB),
    21: ('DCGM_FI_PROF_PCIE_RX_BYTES', MIB),
}
# the same GPM metrics under gpuvirt names, per GPU (gpuvirt_gpu_<x>) and per MIG instance (gpuvirt_mig_<x>), as ratios
# 0-1 (activities) or bytes/s; (suffix, factor, help)
GPM_GPUVIRT = {
    1: ('graphics_activity_ratio', 0.01, 'Ratio of time the graphics engine is active (NVML GPM).'),
    5: ('tensor_activity_ratio', 0.01, 'Ratio of cycles a tensor pipe is active (NVML GPM).'),
    10: ('dram_activity_ratio', 0.01, 'Ratio of cycles the device memory interface is active (NVML GPM).'),
    20: ('gpm_pcie_tx_bytes_per_second', MIB, 'PCIe data transmitted, headers included (NVML GPM).'),
    21: ('gpm_pcie_rx_bytes_per_second', MIB, 'PCIe data received, headers included (NVML GPM).'),
}
HELP = {
    'DCGM_FI_DEV_SM_CLOCK': 'SM clock frequency (in MHz).',
    'DCGM_FI_DEV_MEM_CLOCK': 'Memory clock frequency (in MHz).',
    'DCGM_FI_DEV_MEMORY_TEMP': 'Memory temperature (in C).',
    'DCGM_FI_DEV_GPU_TEMP': 'GPU temperature (in C).',
    'DCGM_FI_DEV_POWER_USAGE': 'Power draw (in W).',
    'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION': 'Total energy consumption since the driver was loaded (in mJ).',
    'DCGM_FI_DEV_PCIE_REPLAY_COUNTER': 'Total number of PCIe retries.',
    'DCGM_FI_DEV_GPU_UTIL': 'GPU utilization (in %).',
    'DCGM_FI_DEV_MEM_COPY_UTIL': 'Memory utilization (in %).',
    'DCGM_FI_DEV_ENC_UTIL': 'Encoder utilization (in %).',
    'DCGM_FI_DEV_DEC_UTIL': 'Decoder utilization (in %).',
    'DCGM_FI_DEV_XID_ERRORS': 'Value of the last XID error encountered.',
    'DCGM_FI_DEV_FB_FREE': 'Frame buffer memory free (in MiB).',
    'DCGM_FI_DEV_FB_USED': 'Frame buffer memory used (in MiB).',
    'DCGM_FI_DEV_FB_RESERVED': 'Frame buffer memory reserved (in MiB).',
    'DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL': 'NVLink throughput, all links, both directions (in MB/s).',
    'DCGM_FI_DEV_VGPU_LICENSE_STATUS': 'vGPU License status',
    'DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS': 'Number of remapped rows for uncorrectable errors',
    'DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS': 'Number of remapped rows for correctable errors',
    'DCGM_FI_DEV_ROW_REMAP_FAILURE': 'Whether remapping of rows has failed',
    'DCGM_FI_PROF_GR_ENGINE_ACTIVE': 'Ratio of time the graphics engine is active (NVML GPM).',
    'DCGM_FI_PROF_PIPE_TENSOR_ACTIVE': 'Ratio of cycles the tensor (HMMA) pipe is active (NVML GPM).',
    'DCGM_FI_PROF_DRAM_ACTIVE': 'Ratio of cycles the device memory interface is active sending or receiving data (NVML GPM).',
    'DCGM_FI_PROF_PCIE_TX_BYTES': 'The rate of data transmitted over the PCIe bus, headers included, in bytes per second (NVML GPM).',
    'DCGM_FI_PROF_PCIE_RX_BYTES': 'The rate of data received over the PCIe bus, headers included, in bytes per second (NVML GPM).',
}
COUNTERS = {'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION', 'DCGM_FI_DEV_PCIE_REPLAY_COUNTER', 'DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL',
            'DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS', 'DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS'}


class Reading:  # pylint: disable=too-many-instance-attributes,too-few-public-methods
    """What one scrape read of one GPU, in NVML's units (None: not read, not supported or failed).

    sm_clock_mhz, mem_clock_mhz, gpu_temp_c, memory_temp_c, power_mw, energy_mj, replays, util_gpu, util_memory, encoder,
    decoder, vgpu_licensed, last_xid, nvlink_mbps: numbers; fb: (free, used, reserved or None) bytes; rows:
    nvmlDeviceGetRemappedRows (corrected, uncorrected, pending, failure); gpm: GPM metric id -> value in GPM's unit;
    instances: [(GPU_I_ID, GPU_I_PROFILE, (free, used) bytes or None, gpm dict)]; entities: GPU_I_ID -> its gpuvirt_mig_*
    label set (exposition.Entity), this scrape; own: the GPU's gpuvirt label set (exposition.Entity). (A plain class:
    dataclasses would cost the exporter 1.6 MiB to import.)
    """

    __slots__ = ('sm_clock_mhz', 'mem_clock_mhz', 'gpu_temp_c', 'memory_temp_c', 'power_mw', 'energy_mj', 'replays', 'util_gpu',
                 'util_memory', 'encoder', 'decoder', 'fb', 'vgpu_licensed', 'rows', 'last_xid', 'nvlink_mbps', 'gpm', 'instances',
                 'entities', 'own')

    def __init__(self, **values):
        for name in self.__slots__:
            setattr(self, name, None)
        self.gpm: dict = {}
        self.instances: list = []
        self.entities: dict = {}
        for name, value in values.items():
            setattr(self, name, value)


class DcgmSeries:
    """Adds a GPU's dcgm-exporter series to a scrape's families."""

    def __init__(self, host_label: str = 'Hostname'):
        if host_label not in HOST_LABEL_CHOICES:
            raise ValueError('host label %r: expected one of %s' % (host_label, ', '.join(HOST_LABEL_CHOICES)))
        self.host_keys = ['Hostname', 'hostname'] if host_label == 'both' else [host_label]

    def gpu_labels(self, gpu_labels: list[str], driver_version: str) -> tuple[list[str], list[str]]:
        """gpu, UUID, pci_bus_id, device, modelName, the host label(s), DCGM_FI_DRIVER_VERSION (from the gpuvirt labels)."""
        base, host = gpu_labels[:5], gpu_labels[5]
        keys = ['gpu', 'UUID', 'pci_bus_id', 'device', 'modelName'] + self.host_keys + ['DCGM_FI_DRIVER_VERSION']
        return keys, base + [host] * len(self.host_keys) + [driver_version]

    def add(self, families, gpu_labels: list[str], driver_version: str, reading: Reading) -> None:
        keys, values = self.gpu_labels(gpu_labels, driver_version)
        # the GPU-wide series, made once per GPU and repeated for each of its MIG instances (as dcgm-exporter does)
        r = reading
        before = _series((('DCGM_FI_DEV_SM_CLOCK', r.sm_clock_mhz), ('DCGM_FI_DEV_MEM_CLOCK', r.mem_clock_mhz),
                          ('DCGM_FI_DEV_MEMORY_TEMP', _temperature(r.memory_temp_c)), ('DCGM_FI_DEV_GPU_TEMP', _temperature(r.gpu_temp_c)),
                          ('DCGM_FI_DEV_POWER_USAGE', None if r.power_mw is None else r.power_mw / 1000),
                          ('DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION', r.energy_mj), ('DCGM_FI_DEV_PCIE_REPLAY_COUNTER', r.replays),
                          ('DCGM_FI_DEV_GPU_UTIL', r.util_gpu), ('DCGM_FI_DEV_MEM_COPY_UTIL', r.util_memory),
                          ('DCGM_FI_DEV_ENC_UTIL', r.encoder), ('DCGM_FI_DEV_DEC_UTIL', r.decoder)))
        after = _series((('DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL', r.nvlink_mbps), ('DCGM_FI_DEV_VGPU_LICENSE_STATUS', r.vgpu_licensed))
                        + ((('DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS', r.rows[1]), ('DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS', r.rows[0]),
                            ('DCGM_FI_DEV_ROW_REMAP_FAILURE', 1 if r.rows[3] else 0)) if r.rows is not None else ()))
        if not reading.instances:
            self._entity(families, keys, values, reading, before, after, reading.fb, reading.gpm)
            return
        # a GPU in MIG mode: the GPU-wide series once per GPU instance (same value, one join per series), each
        # instance's memory and GPM series
        keys = keys + ['GPU_I_PROFILE', 'GPU_I_ID']
        entities = [families.entity(keys, values + [profile, str(gi_id)]) for gi_id, profile, _memory, _gpm in reading.instances]
        numbers = tuple(entity.number for entity in entities)
        for name, doc, kind, value in before:
            families.block(name, doc, kind, entities, numbers, value)
        for entity, (_gi_id, _profile, memory, _gpm) in zip(entities, reading.instances):
            if memory is not None:
                entity.add_many((('DCGM_FI_DEV_FB_FREE', HELP['DCGM_FI_DEV_FB_FREE'], 'gauge', memory[0] // MIB),
                                 ('DCGM_FI_DEV_FB_USED', HELP['DCGM_FI_DEV_FB_USED'], 'gauge', memory[1] // MIB)), True)
        for name, doc, kind, value in after:
            families.block(name, doc, kind, entities, numbers, value)
        for entity, (_gi_id, _profile, _memory, gpm) in zip(entities, reading.instances):
            entity.add_many([(name, doc, 'gauge', gpm[metric_id] * factor) for metric_id, name, doc, factor in _GPM_SERIES
                             if metric_id in gpm], True)
        if reading.last_xid is not None:
            for entity in entities:
                self._xid(families, list(entity.keys), list(entity.values), reading.last_xid)

    def _entity(self, families, keys, values, r: Reading, before, after, fb, gpm) -> None:  # pylint: disable=too-many-arguments
        """The series of a GPU without MIG instances."""
        series = list(before)
        if fb is not None:
            series.append(('DCGM_FI_DEV_FB_FREE', HELP['DCGM_FI_DEV_FB_FREE'], 'gauge', fb[0] // MIB))
            series.append(('DCGM_FI_DEV_FB_USED', HELP['DCGM_FI_DEV_FB_USED'], 'gauge', fb[1] // MIB))
            if fb[2] is not None:
                series.append(('DCGM_FI_DEV_FB_RESERVED', HELP['DCGM_FI_DEV_FB_RESERVED'], 'gauge', fb[2] // MIB))
        series += after
        series += [(name, doc, 'gauge', gpm[metric_id] * factor) for metric_id, name, doc, factor in _GPM_SERIES if metric_id in gpm]
        families.entity(keys, values).add_many(series, True)  # its series find their cached text by one small key
        if r.last_xid is not None:
            self._xid(families, keys, values, r.last_xid)

    @staticmethod
    def _xid(families, keys: list, values: list, xid: int) -> None:
        families.add('DCGM_FI_DEV_XID_ERRORS', HELP['DCGM_FI_DEV_XID_ERRORS'], 'gauge', keys + ['err_code', 'err_msg'],
                     values + [str(xid), xid_text(xid)], xid, True)


def _series(pairs) -> list[tuple]:
    """(name, HELP, kind, value) of each (name, value) whose value was read."""
    return [(name, HELP[name], 'counter' if name in COUNTERS else 'gauge', value) for name, value in pairs if value is not None]


def _temperature(value):
    # DCGM drops temperature readings above 200 C as errors
    return None if value is None or value > 200 else value


# The GPM metrics' dcgm series: (metric id, name, HELP, factor), made once.
_GPM_SERIES = [(metric_id, name, HELP[name], factor) for metric_id, (name, factor) in GPM_METRICS.items()]
