# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Prometheus collector: per-GPU, per-MIG-instance and per-vGPU series read from NVML.

What never changes while the exporter runs (identity, max clocks, MIG profiles, vGPU type names) is read once, and again
when a GPU that was lost at start answers. A scrape makes no NVML call: it formats what background threads read, each
value with its age. The calls NVML answers in microseconds (utilization, memory, temperature, power, clocks, vGPUs) are
read every --sample-interval (0: in the scrape itself) and served never older than twice that (else the GPU is down for
that scrape, and the stale read counted). Calls the driver answers slowly (PCIe throughput 21 ms, energy and field
values 3 ms, the PCIe replay counter, MIG and ECC mode 0.2 ms each on an H200; MIG layout and per-instance memory), and
what changes only when set or on a memory error (the GPU settings, ECC and remapped-row counters), run in another
background thread every --pcie-interval and are served with their age, never older than twice that interval (else
dropped and counted). The text is built from header and label prefixes rendered once (exposition.py). XID events arrive
through an NVML event set in another thread. A scrape never starts a process, and a failing call or a lost GPU drops
only the series it feeds (and is counted); a GPU that answers no call at all is down.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import threading
import time

import pynvml

from gpuvirt_exporter import __version__, nvml_mig
from gpuvirt_exporter.dcgm import GPM_GPUVIRT, NAME_MODES, DcgmSeries, Reading
from gpuvirt_exporter.exposition import Families, TextCache
from gpuvirt_exporter.nvml import GpuLost, Nvml, text
from gpuvirt_exporter.samplers import DcgmSampler, PeriodicSampler

# The GPM metrics' gpuvirt series names per GPU and per GPU instance, made once.
_GPM_GPU = [(metric_id, 'gpuvirt_gpu_' + suffix, factor, doc) for metric_id, (suffix, factor, doc) in GPM_GPUVIRT.items()]
_GPM_MIG = [(metric_id, 'gpuvirt_mig_' + suffix, factor, doc) for metric_id, (suffix, factor, doc) in GPM_GPUVIRT.items()]
GPU_LABELS = ['gpu', 'UUID', 'pci_bus_id', 'device', 'modelName', 'Hostname']
MIG_LABELS = GPU_LABELS + ['GPU_I_ID', 'GPU_I_PROFILE']
VGPU_LABELS = GPU_LABELS + ['vgpu_id', 'vgpu_uuid']

CLOCKS = {'graphics': 0, 'sm': 1, 'mem': 2, 'video': 3}
CLOCK_EVENT_REASONS = {
    'gpu_idle': 0x1, 'applications_clocks_setting': 0x2, 'sw_power_cap': 0x4, 'hw_slowdown': 0x8,
    'sync_boost': 0x10, 'sw_thermal_slowdown': 0x20, 'hw_thermal_slowdown': 0x40, 'hw_power_brake_slowdown': 0x80,
    'display_clock_setting': 0x100,
}
XID_EVENT = 0x8  # nvmlEventTypeXidCriticalError
NVML_FI_DEV_MEMORY_TEMP = 82
DRIFT_KINDS = ('mig', 'vgpu', 'settings')
# the gpuvirt_* series kept when only dcgm names are asked for: the exporter's own, the GPU's NVML answer, the health
# gates' XID baseline (tasks/scrape.yml) and the declaration drift
KEPT_IN_DCGM_MODE = ('gpuvirt_exporter_', 'gpuvirt_gpu_up', 'gpuvirt_gpu_xid_events', 'gpuvirt_declaration_',
                     'gpuvirt_gpu_gpm_supported')


class Gpu:
    """What is read once per GPU: handle, labels, max clocks, MIG profiles."""

    def __init__(self, index: int, handle, labels: list[str]):
        self.index = index
        self.handle = handle
        self.labels = labels
        self.scope = str(index)
        self.max_clocks: dict[str, int] = {}
        self.mig_profiles: dict[int, tuple[str, int]] = {}
        self.identified = False  # UUID read: False while the GPU was lost (or erring) since the exporter started
        self.gi_ids: tuple[int, ...] = ()  # GPU instance ids from the last MIG read (the GPM sampler samples each)
        self.mig_enabled = False  # MIG mode at the last read (identity, then every background sample)


class XidWatcher(threading.Thread):
    """Counts XID critical-error events per GPU through an NVML event set, where NVML offers events."""

    def __init__(self, nvml: Nvml):
        super().__init__(name='xid-watcher', daemon=True)
        self.nvml = nvml
        self.counts: dict[tuple[int, int], int] = {}
        self.last: dict[int, int] = {}  # GPU index -> the last XID seen (dcgm's DCGM_FI_DEV_XID_ERRORS)
        self.watched: set[int] = set()
        self.supported = False
        self.stopping = threading.Event()
        self._event_set = None

    def setup(self, gpus: list[Gpu]) -> None:
        self._event_set = self.nvml.call('system', 'nvmlEventSetCreate')
        if self._event_set is None:
            return
        for gpu in gpus:
            if gpu.handle is None:
                continue  # lost at start: not watched
            try:
                self.nvml.call(gpu.scope, 'nvmlDeviceRegisterEvents', gpu.handle, XID_EVENT, self._event_set, default=False)
            except GpuLost:
                continue
            if self.nvml.supported(gpu.scope, 'nvmlDeviceRegisterEvents'):
                self.watched.add(gpu.index)
        self.supported = bool(self.watched)

    def run(self) -> None:
        if not self.supported:
            return
        by_handle = {}
        while not self.stopping.is_set():
            try:
                data = pynvml.nvmlEventSetWait_v2(self._event_set, 1000)
            except pynvml.NVMLError_Timeout:
                continue
            except pynvml.NVMLError:
                self.nvml.count_error('nvmlEventSetWait_v2')
                self.stopping.wait(1.0)
                continue
            key = ctypes.cast(data.device, ctypes.c_void_p).value
            if key not in by_handle:
                by_handle[key] = self.nvml.call('system', 'nvmlDeviceGetIndex', data.device, default=-1)
            self.record(by_handle[key], int(data.eventData))

    def record(self, index: int, xid: int) -> None:
        """One XID event on the GPU of that index."""
        self.counts[(index, xid)] = self.counts.get((index, xid), 0) + 1
        self.last[index] = xid


class GpuCollector:
    """A prometheus_client custom collector over NVML (register it with a CollectorRegistry)."""

    def __init__(self, hostname: str | None = None, pcie_interval: float = 10.0, events: bool = True,  # pylint: disable=too-many-arguments
                 metric_names: str = 'both', host_label: str = 'Hostname', drift_file: str | None = None,
                 gpm_interval: float = 30.0, sample_interval: float = 1.0):
        if metric_names not in NAME_MODES:
            raise ValueError('metric names %r: expected one of %s' % (metric_names, ', '.join(NAME_MODES)))
        self.gpuvirt_names = metric_names in ('gpuvirt', 'both')
        self.dcgm = DcgmSeries(host_label) if metric_names in ('dcgm', 'both') else None
        self.drift_file = drift_file
        self.drift_errors = 0
        self.nvml = Nvml()
        self.hostname = hostname or socket.gethostname()
        self.gpus: list[Gpu] = []
        self.system: dict[str, str] = {}
        self.vgpu_types: dict[int, tuple[str, int]] = {}
        self.pcie_enabled = pcie_interval > 0
        # the slow calls: in the background every pcie_interval; with pcie_interval 0, read in the scrape itself
        self.slow = PeriodicSampler(self._read_slow, pcie_interval) if pcie_interval > 0 else None
        # the fast calls (utilization, memory, temperature, power, clocks, vGPUs): in the background every
        # sample_interval, so that a scrape only formats; with sample_interval 0, read in the scrape itself
        self.fast = PeriodicSampler(self._read_fast, sample_interval, name='fast-sampler') if sample_interval > 0 else None
        self.sampler = DcgmSampler(self.nvml, gpm_interval) if gpm_interval > 0 else None
        self.gpm_max_age = 2 * gpm_interval
        self.stale_gpm = 0
        self.text = TextCache()
        self.events = events
        self.xid: XidWatcher | None = None
        self._lock = threading.Lock()
        self._next_init = 0.0
        self.start()

    # -- life cycle ------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Open NVML once and read what does not change; retried at most every 30 s by scrapes while it fails."""
        if not self.nvml.init():
            self._next_init = time.monotonic() + 30
            return
        self._discover()
        if self.fast is not None:
            self.fast.gpus = self.gpus
            self.fast.sample_once()  # the first scrape already has the values
            if not self.fast.is_alive():
                self.fast.start()
        if self.slow is not None:
            self.slow.gpus = self.gpus
            self.slow.sample_once()  # the first scrape already has the slow values
            if not self.slow.is_alive():
                self.slow.start()
        if self.sampler is not None:
            self.sampler.gpus = self.gpus
            if not self.sampler.is_alive():
                self.sampler.start()
        if self.events and self.xid is None:
            self.xid = XidWatcher(self.nvml)
            self.xid.setup(self.gpus)
            self.xid.start()

    def stop(self) -> None:
        if self.fast is not None:
            self.fast.stopping.set()
        if self.slow is not None:
            self.slow.stopping.set()
        if self.sampler is not None:
            self.sampler.stopping.set()
        if self.xid is not None:
            self.xid.stopping.set()

    def _discover(self) -> None:
        n = self.nvml
        self.system = {
            'driver_version': text(n.call('system', 'nvmlSystemGetDriverVersion', default='')),
            'nvml_version': text(n.call('system', 'nvmlSystemGetNVMLVersion', default='')),
            'cuda_version': _cuda_version(n.call('system', 'nvmlSystemGetCudaDriverVersion_v2', default=0)),
        }
        gpus = []
        for index in range(n.call('system', 'nvmlDeviceGetCount', default=0)):
            gpu = Gpu(index, None, [])
            self._identify(gpu)
            gpus.append(gpu)
        self.gpus = gpus

    def _identify(self, gpu: Gpu) -> None:
        """Identity, max clocks and MIG profiles; partial while the GPU is lost or errs, read again at a later scrape."""
        n, scope, index = self.nvml, gpu.scope, gpu.index
        ident = {'uuid': '', 'bus': '', 'minor': index, 'name': ''}
        try:
            if gpu.handle is None:
                gpu.handle = n.call(scope, 'nvmlDeviceGetHandleByIndex', index, remember=False)
            handle = gpu.handle
            if handle is None:
                raise GpuLost('no handle')
            ident['uuid'] = text(n.call(scope, 'nvmlDeviceGetUUID', handle, default=''))
            pci = n.call(scope, 'nvmlDeviceGetPciInfo_v3', handle)
            ident['bus'] = text(pci.busId) if pci is not None else ''
            ident['minor'] = n.call(scope, 'nvmlDeviceGetMinorNumber', handle, default=index)
            ident['name'] = text(n.call(scope, 'nvmlDeviceGetName', handle, default=''))
            for clock, kind in CLOCKS.items():
                value = n.call(scope, 'nvmlDeviceGetMaxClockInfo', handle, kind, remember=False)
                if value is not None:
                    gpu.max_clocks[clock] = value
            mode = n.call(scope, 'nvmlDeviceGetMigMode', handle, remember=False)
            if mode is not None:
                gpu.mig_enabled = bool(mode[0])
                gpu.mig_profiles = self._mig_profiles(scope, handle)
        except GpuLost:
            pass  # identity stays partial; the GPU reports down at each scrape, and is identified again when it answers
        gpu.identified = bool(ident['uuid'])
        gpu.labels = [str(index), ident['uuid'], ident['bus'], 'nvidia%s' % ident['minor'], ident['name'], self.hostname]

    def _mig_profiles(self, scope: str, handle) -> dict[int, tuple[str, int]]:
        profiles = {}
        try:
            for info in nvml_mig.gpu_instance_profiles(pynvml, handle):
                # NVML names a profile 'MIG 1g.10gb'; dcgm-exporter's GPU_I_PROFILE is '1g.10gb'
                name = text(getattr(info, 'name', '') or '').replace('MIG ', '', 1)
                name = name or '%dg.%dgb' % (info.sliceCount, round(info.memorySizeMB / 1024))
                profiles[int(info.id)] = (name, int(info.memorySizeMB) * 1024 * 1024)
        except pynvml.NVMLError_GpuIsLost as exc:
            raise GpuLost(text(exc)) from exc
        return profiles

    # -- prometheus_client interface ---------------------------------------------------------------------------
    def describe(self):
        return []  # unchecked collector: registering it does not scrape

    def collect(self):
        started = time.perf_counter()
        fam = Families(self.text, self.gpuvirt_names, KEPT_IN_DCGM_MODE)
        with self._lock:
            if not self.nvml.initialized and time.monotonic() >= self._next_init:
                self.start()
            lost = 0
            if self.nvml.initialized:
                fam.gauge('gpuvirt_driver_info', 'NVIDIA driver, NVML and CUDA driver versions (value 1).',
                          ['driver_version', 'nvml_version', 'cuda_version', 'Hostname'],
                          [self.system['driver_version'], self.system['nvml_version'], self.system['cuda_version'],
                           self.hostname], 1)
                for gpu in self.gpus:
                    lost += not self._collect_gpu(fam, gpu)
            self._drift(fam)
            self._self_metrics(fam, lost, time.perf_counter() - started)
        return fam.collect()

    # -- one GPU ----------------------------------------------------------------------------------------------
    def _collect_gpu(self, fam: Families, gpu: Gpu) -> bool:
        age = None
        if self.fast is None:
            values = self._read_fast(gpu)  # identifies a GPU lost until now first
        else:
            found = self.fast.fresh(gpu.index, time.monotonic())
            # no read that young (a sampler thread stuck in a call): down, as a GPU that does not answer
            values, age = (({'up': 0}, None) if found is None else found)
        labels = gpu.labels
        own = fam.entity(GPU_LABELS, labels)  # the GPU's gpuvirt series find their cached text by one small key
        own.gauge('gpuvirt_gpu_info', 'GPU identity (value 1).', 1)
        own.gauge('gpuvirt_gpu_sample_age_seconds', 'Age of the values read in the background every --sample-interval '
                  '(utilization, memory, temperature, power, clocks, vGPUs), at most 2 x --sample-interval.', age)
        up = values['up']
        own.gauge('gpuvirt_gpu_up', '1 when the GPU answers NVML, 0 when it is lost or answers no call.', up)
        if not up:
            return False
        reading = Reading(own=own)
        self._telemetry(fam, gpu, reading, values['telemetry'])
        self._slow_values(fam, gpu, reading)
        self._vgpus(fam, gpu, reading, values['vgpus'])
        self._background(fam, gpu, reading)
        if self.dcgm is not None:
            self.dcgm.add(fam, labels, self.system['driver_version'], reading)
        return True

    # -- the fast calls (background every --sample-interval, or in the scrape) -----------------------------------
    def _read_fast(self, gpu: Gpu) -> dict:
        """up (0: lost, or every call failed whatever the error), and the values NVML answers in microseconds."""
        n = self.nvml
        if not gpu.identified:
            self._identify(gpu)
            if gpu.identified and self.slow is not None:
                self.slow.sample_gpu(gpu)  # its MIG layout and slow values now, not at the next interval
        answered, failed = n.tally()
        try:
            if gpu.handle is None:
                raise GpuLost('no handle')
            values = {'telemetry': self._read_telemetry(gpu), 'vgpus': self._read_vgpus(gpu)}
        except GpuLost:
            return {'up': 0}
        now_answered, now_failed = n.tally()
        values['up'] = 0 if now_answered == answered and now_failed > failed else 1
        return values

    def _read_telemetry(self, gpu: Gpu) -> tuple:
        n, s, h = self.nvml, gpu.scope, gpu.handle
        # NVML does not report device utilization on a GPU in MIG mode (nvml.h), as dcgm-exporter leaves GPU_UTIL blank
        # there: not asked then, and not remembered as unsupported, since the mode can change
        util = None if gpu.mig_enabled else n.call(s, 'nvmlDeviceGetUtilizationRates', h, remember=False)
        encoder = n.call(s, 'nvmlDeviceGetEncoderUtilization', h)
        decoder = n.call(s, 'nvmlDeviceGetDecoderUtilization', h)
        return (None if util is None else (util.gpu, util.memory), None if encoder is None else encoder[0],
                None if decoder is None else decoder[0], self._memory(gpu), n.call(s, 'nvmlDeviceGetTemperature', h, 0),
                n.call(s, 'nvmlDeviceGetPowerUsage', h), [n.call(s, 'nvmlDeviceGetClockInfo', h, kind) for kind in CLOCKS.values()],
                n.call(s, 'nvmlDeviceGetPerformanceState', h), n.call(s, 'nvmlDeviceGetCurrentClocksEventReasons', h))

    def _telemetry(self, fam: Families, gpu: Gpu, rd: Reading, values: tuple) -> None:
        lab, own = gpu.labels, rd.own
        util, encoder, decoder, mem, temp, power, clocks, pstate, reasons = values
        if util is not None:
            rd.util_gpu, rd.util_memory = util
            own.gauge('gpuvirt_gpu_utilization_percent', 'GPU (SM) utilization over the last sample period.', util[0])
            own.gauge('gpuvirt_gpu_memory_utilization_percent', 'Memory controller utilization over the last sample period.', util[1])
        if encoder is not None:
            rd.encoder = encoder
            own.gauge('gpuvirt_gpu_encoder_utilization_percent', 'Encoder utilization.', encoder)
        if decoder is not None:
            rd.decoder = decoder
            own.gauge('gpuvirt_gpu_decoder_utilization_percent', 'Decoder utilization.', decoder)
        if mem is not None:
            free, used, total, dcgm_used, reserved = mem
            rd.fb = (free, dcgm_used, reserved)
            for key, value in (('used', used), ('free', free), ('total', total)):
                own.gauge('gpuvirt_gpu_memory_%s_bytes' % key, 'Framebuffer memory %s.' % key, value)
        rd.gpu_temp_c = temp
        own.gauge('gpuvirt_gpu_temperature_celsius', 'GPU core temperature.', temp)
        rd.power_mw = power
        own.gauge('gpuvirt_gpu_power_watts', 'Power draw.', None if power is None else power / 1000)
        rd.sm_clock_mhz, rd.mem_clock_mhz = clocks[1], clocks[2]
        for clock, value in zip(CLOCKS, clocks):
            own.gauge_by('gpuvirt_gpu_clock_hz', 'Current clock frequency.', 'clock', clock, None if value is None else value * 1e6)
            if clock in gpu.max_clocks:
                own.gauge_by('gpuvirt_gpu_clock_max_hz', 'Maximum clock frequency.', 'clock', clock, gpu.max_clocks[clock] * 1e6)
        own.gauge('gpuvirt_gpu_performance_state', 'Performance state (0 = P0, highest performance).', pstate)
        if reasons is not None:
            own.gauge('gpuvirt_gpu_clocks_event_reasons', 'Clock event (throttle) reasons, the NVML bit mask.', reasons)
            for name, bit in CLOCK_EVENT_REASONS.items():
                own.gauge_by('gpuvirt_gpu_clocks_event_reason', 'Whether a clock event (throttle) reason is active (1) or not (0).',
                             'reason', name, 1 if reasons & bit else 0)

    def _memory(self, gpu: Gpu):
        """(free, used as nvmlDeviceGetMemoryInfo reports it: total - free, total, used without the reserved memory
        (dcgm's FB_USED), reserved or None), in one call: the v2 structure where the driver has it."""
        n, s, h = self.nvml, gpu.scope, gpu.handle
        mem = n.run(s, 'nvmlDeviceGetMemoryInfo_v2', lambda: pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2))
        if mem is not None:
            return mem.free, mem.total - mem.free, mem.total, mem.used, mem.reserved
        mem = n.call(s, 'nvmlDeviceGetMemoryInfo', h)
        return None if mem is None else (mem.free, mem.used, mem.total, mem.used, None)

    # -- the slow calls (background) ----------------------------------------------------------------------------
    def _read_slow(self, gpu: Gpu) -> dict:
        """The reads the driver answers slowly, for one GPU; GpuLost propagates."""
        n, s, h = self.nvml, gpu.scope, gpu.handle
        if h is None or not gpu.identified:
            raise GpuLost('not identified')
        out = {'energy': n.call(s, 'nvmlDeviceGetTotalEnergyConsumption', h),
               'link_gen': n.call(s, 'nvmlDeviceGetCurrPcieLinkGeneration', h),
               'link_width': n.call(s, 'nvmlDeviceGetCurrPcieLinkWidth', h),
               'replays': n.call(s, 'nvmlDeviceGetPcieReplayCounter', h)}
        if self.pcie_enabled:
            tx = n.call(s, 'nvmlDeviceGetPcieThroughput', h, 0)
            rx = n.call(s, 'nvmlDeviceGetPcieThroughput', h, 1)
            out['pcie'] = (tx, rx) if tx is not None and rx is not None else None
        if self.dcgm is not None:
            values = n.call(s, 'nvmlDeviceGetFieldValues', h, [NVML_FI_DEV_MEMORY_TEMP])
            out['memory_temp'] = field_value(values[0]) if values else None
            features = n.call(s, 'nvmlDeviceGetGridLicensableFeatures_v4', h)
            out['licensed'] = None if features is None else vgpu_licensed(features)
        out['mig'] = self._read_mig(gpu)
        out['settings'] = self._read_settings(gpu)
        out['health'] = self._read_health(gpu)
        gpu.gi_ids = tuple(sorted(out['mig'][1])) if out['mig'] is not None else ()
        gpu.mig_enabled = bool(out['mig'] is not None and out['mig'][0])
        return out

    def _slow_values(self, fam: Families, gpu: Gpu, rd: Reading) -> None:
        lab, own = gpu.labels, rd.own
        if self.slow is None:
            values, age = self._read_slow(gpu), 0.0
        else:
            found = self.slow.fresh(gpu.index, time.monotonic())
            if found is None:
                return  # none yet, or too old: dropped (and counted stale)
            values, age = found
        own.gauge('gpuvirt_gpu_slow_sample_age_seconds',
                  'Age of the values read in the background (energy, PCIe link and replays, MIG), at most 2 x --pcie-interval.', age)
        energy = rd.energy_mj = values['energy']
        own.counter('gpuvirt_gpu_energy_joules', 'Energy consumed since the driver was loaded.',
                    None if energy is None else energy / 1000)
        own.gauge('gpuvirt_gpu_pcie_link_generation', 'Current PCIe link generation.', values['link_gen'])
        own.gauge('gpuvirt_gpu_pcie_link_width', 'Current PCIe link width (lanes).', values['link_width'])
        rd.replays = values['replays']
        own.counter('gpuvirt_gpu_pcie_replays', 'PCIe replay counter.', rd.replays)
        rd.memory_temp_c = values.get('memory_temp')
        rd.vgpu_licensed = values.get('licensed')
        pcie = values.get('pcie')
        if pcie is not None:
            for direction, kbps in (('tx', pcie[0]), ('rx', pcie[1])):
                own.gauge_by('gpuvirt_gpu_pcie_throughput_bytes_per_second', 'PCIe throughput, sampled in the background.', 'direction', direction, kbps * 1024)
            own.gauge('gpuvirt_gpu_pcie_sample_age_seconds', 'Age of the PCIe throughput sample.', age)
        self._mig(fam, gpu, rd, values['mig'])
        self._settings(fam, gpu, rd, values.get('settings'))
        self._gpu_health(fam, gpu, rd, values.get('health'))

    def _read_settings(self, gpu: Gpu) -> dict:
        """The settings gpu_settings declares, current and pending (ECC), as NVML reports them (background: they change
        only when set, and the ECC mode is a slow call)."""
        n, s, h = self.nvml, gpu.scope, gpu.handle
        return {'ecc': n.call(s, 'nvmlDeviceGetEccMode', h), 'persistence': n.call(s, 'nvmlDeviceGetPersistenceMode', h),
                'compute': n.call(s, 'nvmlDeviceGetComputeMode', h),
                'default_limit': n.call(s, 'nvmlDeviceGetPowerManagementDefaultLimit', h),
                'enforced_limit': n.call(s, 'nvmlDeviceGetEnforcedPowerLimit', h),
                'app_clocks': {clock: n.call(s, 'nvmlDeviceGetApplicationsClock', h, kind) for clock, kind in (('graphics', 0), ('mem', 2))}}

    def _settings(self, fam: Families, gpu: Gpu, rd: Reading, values: dict | None) -> None:
        if values is None:
            return
        lab, own, ecc = gpu.labels, rd.own, values['ecc']
        for i, state in enumerate(('current', 'pending')):
            own.gauge_by('gpuvirt_gpu_ecc_mode', 'ECC mode: 1 enabled, 0 disabled; pending takes effect at the next GPU reset.', 'state',
                         state, None if ecc is None else int(ecc[i]))
        own.gauge('gpuvirt_gpu_persistence_mode', 'Persistence mode: 1 on, 0 off.', values['persistence'])
        own.gauge('gpuvirt_gpu_compute_mode', 'Compute mode, the NVML value (0 default, 2 prohibited, 3 exclusive process).', values['compute'])
        limit = values['enforced_limit']
        own.gauge('gpuvirt_gpu_power_limit_watts', 'Enforced power limit (read in the background: it changes when set).',
                  None if limit is None else limit / 1000)
        default = values['default_limit']
        own.gauge('gpuvirt_gpu_power_limit_default_watts', 'Default power limit.',
                  None if default is None else default / 1000)
        for clock, value in values['app_clocks'].items():
            own.gauge_by('gpuvirt_gpu_applications_clock_hz', 'Application clock.', 'clock', clock, None if value is None else value * 1e6)

    def _read_health(self, gpu: Gpu) -> dict:
        """Memory error counters (background: they change only with an error, and alerting on them tolerates the
        sampler's interval, as it does dcgm-exporter's 30 s collection)."""
        n, s, h = self.nvml, gpu.scope, gpu.handle
        # aggregate (lifetime) counters, NVML_AGGREGATE_ECC = 1
        ecc = {kind: n.call(s, 'nvmlDeviceGetTotalEccErrors', h, error_type, 1) for kind, error_type in (('corrected', 0), ('uncorrected', 1))}
        pages = {cause: n.call(s, 'nvmlDeviceGetRetiredPages', h, source) for cause, source in (('multiple_single_bit', 0), ('double_bit', 1))}
        return {'ecc': ecc, 'retired': {cause: None if found is None else len(found) for cause, found in pages.items()},
                'rows': n.call(s, 'nvmlDeviceGetRemappedRows', h)}

    def _gpu_health(self, fam: Families, gpu: Gpu, rd: Reading, values: dict | None) -> None:
        if values is None:
            return
        lab, own = gpu.labels, rd.own
        for kind, count in values['ecc'].items():
            own.counter_by('gpuvirt_gpu_ecc_errors', 'ECC errors over the GPU lifetime.', 'error_type', kind, count)
        for cause, count in values['retired'].items():
            own.gauge_by('gpuvirt_gpu_retired_pages', 'Retired framebuffer pages (pre-Ampere GPUs; Hopper remaps rows instead).', 'cause', cause, count)
        rows = rd.rows = values['rows']
        if rows is not None:
            corr, unc, pending, failure = rows
            own.gauge_by('gpuvirt_gpu_remapped_rows', 'Rows remapped after memory errors.', 'error_type', 'corrected', corr)
            own.gauge_by('gpuvirt_gpu_remapped_rows', 'Rows remapped after memory errors.', 'error_type', 'uncorrected', unc)
            own.gauge('gpuvirt_gpu_row_remap_pending', '1 when a row remap waits for a GPU reset.', 1 if pending else 0)
            own.gauge('gpuvirt_gpu_row_remap_failure', '1 when a row remap failed.', 1 if failure else 0)

    def _background(self, fam: Families, gpu: Gpu, rd: Reading) -> None:
        lab, own = gpu.labels, rd.own
        if self.sampler is not None:
            self._gpm(fam, gpu, rd)
        if self.xid is not None:
            rd.last_xid = self.xid.last.get(gpu.index)
        if self.xid is not None and gpu.index in self.xid.watched:
            counts = {xid: c for (index, xid), c in list(self.xid.counts.items()) if index == gpu.index}
            own.counter('gpuvirt_gpu_xid_events', 'XID critical error events since the exporter started (all XIDs).', sum(counts.values()))
            for xid, count in sorted(counts.items()):
                own.counter_by('gpuvirt_gpu_xid_errors', 'XID critical error events since the exporter started, by XID.', 'xid', str(xid), count)

    # -- GPM (background) ---------------------------------------------------------------------------------------
    def _gpm(self, fam: Families, gpu: Gpu, rd: Reading) -> None:
        """GPM values no older than 2 x --gpm-interval, per GPU and (rd.instances, filled by _mig) per GPU instance."""
        sampler, lab, own, index = self.sampler, gpu.labels, rd.own, gpu.index
        supported = sampler.supported.get(index)
        if supported is not None:
            own.gauge('gpuvirt_gpu_gpm_supported', '1 when NVML GPM (Hopper and newer) feeds the activity and PROF_* series.', 1 if supported else 0)
        if not supported:
            return
        now = time.monotonic()
        taken = sampler.taken.get(index)
        if taken is not None and now - taken <= self.gpm_max_age:
            rd.nvlink_mbps = sampler.nvlink.get(index)
            rd.gpm = sampler.gpm.get(index, {})
        elif taken is not None:
            self.stale_gpm += 1
        for metric_id, name, factor, doc in _GPM_GPU:
            if metric_id in rd.gpm:
                own.gauge(name, doc, rd.gpm[metric_id] * factor)
        for gi_id, profile, _memory, gpm in rd.instances:
            taken = sampler.mig_taken.get((index, gi_id))
            if taken is None:
                continue
            if now - taken > self.gpm_max_age:
                self.stale_gpm += 1
                continue
            gpm.update(sampler.gpm_mig.get((index, gi_id), {}))
            ent = rd.entities.get(gi_id) or fam.entity(MIG_LABELS, lab + [str(gi_id), profile])
            for metric_id, name, factor, doc in _GPM_MIG:
                if metric_id in gpm:
                    ent.gauge(name, doc, gpm[metric_id] * factor)

    # -- MIG ----------------------------------------------------------------------------------------------------
    def _read_mig(self, gpu: Gpu):
        """(mode, {GPU instance id: (profile, memory, placement start, size)}, {id: (used, total, util)}) or None."""
        n, s, h = self.nvml, gpu.scope, gpu.handle
        mode = n.call(s, 'nvmlDeviceGetMigMode', h)
        if mode is None:
            return None
        instances = {}
        if not mode[0]:
            return mode[0], instances, {}
        for profile_id, (profile, memory) in gpu.mig_profiles.items():
            for gi in n.run(s, 'nvmlDeviceGetGpuInstances', nvml_mig.gpu_instances, pynvml, h, profile_id, default=[], remember=False):
                info = n.call(s, 'nvmlGpuInstanceGetInfo', gi, remember=False)
                if info is not None:
                    instances[int(info.id)] = (profile, memory, info.placement.start, info.placement.size)
        return mode[0], instances, self._mig_memory_used(gpu)

    def _mig(self, fam: Families, gpu: Gpu, rd: Reading, mig) -> None:
        lab, own = gpu.labels, rd.own
        if mig is None:
            return
        mode, instances, used = mig
        own.gauge('gpuvirt_gpu_mig_mode', 'MIG mode: 1 enabled, 0 disabled (current mode).', mode)
        for gi_id, (profile, memory, start, size) in sorted(instances.items()):
            mlab = lab + [str(gi_id), profile]
            fam.gauge('gpuvirt_mig_instance_info', 'A MIG GPU instance and its placement (value 1).',
                      MIG_LABELS + ['placement_start', 'placement_size'], mlab + [str(start), str(size)], 1)
            ent = rd.entities[gi_id] = fam.entity(MIG_LABELS, mlab)  # its series find their cached text by one small key
            total = used.get(gi_id, (None, memory))[1]
            ent.gauge('gpuvirt_mig_memory_total_bytes', 'Memory of the GPU instance.', total)
            ent.gauge('gpuvirt_mig_memory_used_bytes', 'Memory used in the GPU instance (from its MIG devices).', used.get(gi_id, (0, memory))[0])
            rd.instances.append((gi_id, profile, (total - used[gi_id][0], used[gi_id][0]) if gi_id in used else None, {}))
            if gi_id in used and used[gi_id][2] is not None:
                ent.gauge('gpuvirt_mig_utilization_percent', 'GPU instance utilization, where NVML offers it.', used[gi_id][2])

    def _mig_memory_used(self, gpu: Gpu) -> dict[int, tuple[int, int, int | None]]:
        """GPU instance id -> (used, total, utilization or None), read through the MIG device handles."""
        n, s = self.nvml, gpu.scope
        found = {}
        for index in range(n.call(s, 'nvmlDeviceGetMaxMigDeviceCount', gpu.handle, default=0, remember=False)):
            mig = n.call(s, 'nvmlDeviceGetMigDeviceHandleByIndex', gpu.handle, index, remember=False)
            if mig is None:
                continue
            gi_id = n.call(s, 'nvmlDeviceGetGpuInstanceId', mig, remember=False)
            if gi_id is None or gi_id in found:
                continue
            mem = n.call(s, 'nvmlDeviceGetMemoryInfo', mig, remember=False)
            util = n.call('mig', 'nvmlDeviceGetUtilizationRates', mig)
            if mem is not None:
                found[int(gi_id)] = (mem.used, mem.total, None if util is None else util.gpu)
        return found

    # -- vGPU ---------------------------------------------------------------------------------------------------
    def _read_vgpus(self, gpu: Gpu) -> list | None:
        """None without vGPU support, else per active vGPU instance: (instance, UUID, type id, type name, type framebuffer,
        VM id, framebuffer used, license status, {engine: utilization})."""
        n, s, h = self.nvml, gpu.scope, gpu.handle
        active = n.call(s, 'nvmlDeviceGetActiveVgpus', h)
        if active is None:
            return None
        samples = self._vgpu_utilization(gpu) if active else {}
        found = []
        for instance in active:
            instance = int(instance)
            uuid = n.call('vgpu', 'nvmlVgpuInstanceGetUUID', instance, remember=False)
            if uuid is None:
                continue  # gone since it was listed
            vm_id = n.call('vgpu', 'nvmlVgpuInstanceGetVmID', instance, remember=False)
            type_id = n.call('vgpu', 'nvmlVgpuInstanceGetType', instance, remember=False)
            found.append((instance, text(uuid), type_id, *self._vgpu_type(type_id), text(vm_id[0]) if vm_id else '',
                          n.call('vgpu', 'nvmlVgpuInstanceGetFbUsage', instance, remember=False),
                          n.call('vgpu', 'nvmlVgpuInstanceGetLicenseStatus', instance), samples.get(instance, {})))
        return found

    def _vgpus(self, fam: Families, gpu: Gpu, rd: Reading, active: list | None) -> None:
        lab, own = gpu.labels, rd.own
        if active is None:
            return
        own.gauge('gpuvirt_gpu_vgpu_instances', 'Active vGPU instances on the GPU.', len(active))
        for instance, uuid, type_id, type_name, framebuffer, vm_id, fb_used, licensed, utilization in active:
            vlab = lab + [str(instance), uuid]
            fam.gauge('gpuvirt_vgpu_info', 'A vGPU instance: its type and the VM it belongs to (value 1).',
                      VGPU_LABELS + ['vgpu_type', 'vgpu_type_id', 'vm_id'], vlab + [type_name, str(type_id), vm_id], 1)
            fam.gauge('gpuvirt_vgpu_framebuffer_used_bytes', 'Framebuffer used by the vGPU instance.', VGPU_LABELS, vlab, fb_used)
            fam.gauge('gpuvirt_vgpu_framebuffer_total_bytes', 'Framebuffer of the vGPU type.', VGPU_LABELS, vlab, framebuffer)
            fam.gauge('gpuvirt_vgpu_license_status', 'vGPU license: 1 licensed, 0 not licensed (guest driver report).',
                      VGPU_LABELS, vlab, licensed)
            for engine, value in utilization.items():
                fam.gauge('gpuvirt_vgpu_utilization_percent', 'vGPU utilization from the latest NVML sample, by engine.',
                          VGPU_LABELS + ['engine'], vlab + [engine], value)

    def _vgpu_type(self, type_id) -> tuple[str, int | None]:
        if type_id is None:
            return '', None
        if type_id not in self.vgpu_types:
            name = self.nvml.call('vgpu', 'nvmlVgpuTypeGetName', type_id)
            if name is None:
                return str(type_id), None
            self.vgpu_types[type_id] = (text(name), self.nvml.call('vgpu', 'nvmlVgpuTypeGetFramebufferSize', type_id))
        return self.vgpu_types[type_id]

    def _vgpu_utilization(self, gpu: Gpu) -> dict[int, dict[str, int]]:
        samples = self.nvml.call(gpu.scope, 'nvmlDeviceGetVgpuUtilization', gpu.handle, 0) or []
        latest: dict[int, tuple[int, dict[str, int]]] = {}
        for sample in samples:
            instance, stamp = int(sample.vgpuInstance), int(sample.timeStamp)
            if instance not in latest or stamp >= latest[instance][0]:
                latest[instance] = (stamp, {'sm': sample.smUtil.uiVal, 'memory': sample.memUtil.uiVal,
                                            'encoder': sample.encUtil.uiVal, 'decoder': sample.decUtil.uiVal})
        return {instance: values for instance, (_stamp, values) in latest.items()}

    # -- declared versus actual (written by the roles) -------------------------------------------------------------
    def _drift(self, fam: Families) -> None:
        """gpuvirt_declaration_drift{kind} and its check time from the roles' drift file; an unreadable file counts an error."""
        if not self.drift_file:
            return
        try:
            with open(self.drift_file, encoding='utf-8') as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            self.drift_errors += 1
            return
        if not isinstance(data, dict):
            self.drift_errors += 1
            return
        for kind in DRIFT_KINDS:
            entry = data.get(kind)
            if entry is None:
                continue
            if (not isinstance(entry, dict) or not isinstance(entry.get('drift'), bool)
                    or not isinstance(entry.get('checked'), (int, float)) or isinstance(entry.get('checked'), bool)):
                self.drift_errors += 1
                continue
            fam.gauge('gpuvirt_declaration_drift', '1 when the GPUs differ from the declared MIG/vGPU layout, 0 when they match.',
                      ['kind'], [kind], 1 if entry['drift'] else 0)
            fam.gauge('gpuvirt_declaration_checked_timestamp_seconds', 'When the roles last compared the GPUs with the declaration.',
                      ['kind'], [kind], float(entry['checked']))

    # -- self ---------------------------------------------------------------------------------------------------
    def _self_metrics(self, fam: Families, lost: int, duration: float) -> None:
        fam.gauge('gpuvirt_exporter_build_info', 'Exporter version (value 1).', ['version'], [__version__], 1)
        if os.environ.get('INVOCATION_ID'):  # systemd's id of this start of the unit: the health gates' XID baseline reads it here
            fam.gauge('gpuvirt_exporter_invocation_info', "The systemd unit's invocation id of this exporter process (value 1).",
                      ['invocation_id'], [os.environ['INVOCATION_ID']], 1)
        fam.gauge('gpuvirt_exporter_nvml_up', '1 when NVML is initialized, 0 when it failed to start (no driver).', [], [],
                  1 if self.nvml.initialized else 0)
        fam.gauge('gpuvirt_exporter_gpus', 'GPUs the exporter watches.', [], [], len(self.gpus))
        fam.gauge('gpuvirt_exporter_gpus_lost', 'GPUs that did not answer in this scrape (lost).', [], [], lost)
        fam.gauge('gpuvirt_exporter_xid_events_supported', '1 when XID events are watched through an NVML event set.', [], [],
                  1 if self.xid is not None and self.xid.supported else 0)
        fam.gauge('gpuvirt_exporter_scrape_duration_seconds',
                  'Time this scrape took to build its answer (NVML reads included only where a sampler interval is 0).', [], [], duration)
        for name, sampler in (('fast', self.fast), ('slow', self.slow)):
            if sampler is None:
                continue
            fam.counter('gpuvirt_exporter_sample_rounds', 'Rounds of a background sampler over all GPUs, by sampler.',
                        ['sampler'], [name], sampler.rounds)
            fam.gauge('gpuvirt_exporter_sample_duration_seconds', "Time the sampler's last round over all GPUs took, by sampler.",
                      ['sampler'], [name], sampler.duration)
            fam.counter('gpuvirt_exporter_stale_samples', 'Background samples too old to serve (their series dropped), by sampler.',
                        ['sampler'], [name], sampler.stale)
        fam.counter('gpuvirt_exporter_stale_samples', 'Background samples too old to serve (their series dropped), by sampler.',
                    ['sampler'], ['gpm'], self.stale_gpm if self.sampler is not None else None)
        for call, count in sorted(self.nvml.errors.items()):
            fam.counter('gpuvirt_exporter_nvml_errors', 'Failed NVML calls (other than not supported), by function.', ['call'], [call],
                        count)
        if self.drift_file:
            fam.counter('gpuvirt_exporter_drift_file_errors', 'Reads of the drift file that failed (unreadable, not JSON, bad entry).',
                        [], [], self.drift_errors)


def _cuda_version(value) -> str:
    value = int(value or 0)
    return '%d.%d' % (value // 1000, value % 1000 // 10) if value else ''


def field_value(value):
    """The value of one nvmlFieldValue_t, None unless NVML answered it (nvmlReturn 0)."""
    if int(value.nvmlReturn) != 0:
        return None
    member = {0: 'dVal', 1: 'uiVal', 2: 'ulVal', 3: 'ullVal', 4: 'sllVal', 5: 'siVal'}.get(int(value.valueType))
    return None if member is None else getattr(value.value, member)


def vgpu_licensed(features) -> int:
    """DCGM's vGPU license status: 1 when the vGPU licensable feature's state is above 0, else (or no GRID licensing) 0."""
    if not features.isGridLicenseSupported:
        return 0
    for index in range(min(int(features.licensableFeaturesCount), len(features.gridLicensableFeatures))):
        feature = features.gridLicensableFeatures[index]
        if int(feature.featureCode) == 1 and int(feature.featureState) > 0:  # NVML_GRID_LICENSE_FEATURE_CODE_VGPU
            return 1
    return 0
