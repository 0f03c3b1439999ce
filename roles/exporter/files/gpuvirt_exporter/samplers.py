# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Background samples: NVML GPM metrics (DCGM_FI_PROF_*, gpuvirt_*_activity_ratio), NVLink throughput, and the calls the
driver answers slowly (PeriodicSampler, fed by the collector).

Both are differences between two samples taken an interval apart, as DCGM computes them, so they are never read in a
scrape: every interval this thread takes one sample per GPU and keeps the values computed against the previous one.
GPM (GPU Performance Monitoring) is NVML's own source of DCGM's profiling counters on Hopper and newer GPUs
(nvmlGpmQueryDeviceSupport); a GPU or binding without it simply has no PROF series. On a GPU in MIG mode each GPU
instance is sampled too (nvmlGpmMigSampleGet), for the per-instance series. Every value keeps the monotonic time it was
taken at, so that a scrape serves nothing older than its limit.
"""

from __future__ import annotations

import sys
import threading
import time

import pynvml

from gpuvirt_exporter.dcgm import GPM_METRICS
from gpuvirt_exporter.nvml import GpuLost

NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX = 138
NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX = 139
ALL_LINKS = 0xFFFFFFFF


class DcgmSampler(threading.Thread):
    """Every interval: a GPM sample and the NVLink data counters of each GPU; values from the last two samples."""

    def __init__(self, nvml, interval: float):
        super().__init__(name='dcgm-sampler', daemon=True)
        self.nvml = nvml
        self.interval = interval
        self.gpus: list = []
        self.gpm: dict[int, dict[int, float]] = {}  # GPU index -> GPM metric id -> value (GPM's unit)
        self.nvlink: dict[int, float] = {}  # GPU index -> MB/s, all links, both directions
        self.taken: dict[int, float] = {}  # GPU index -> monotonic time of the sample behind gpm/nvlink
        self.gpm_mig: dict[tuple[int, int], dict[int, float]] = {}  # (GPU index, GPU instance id) -> metric id -> value
        self.mig_taken: dict[tuple[int, int], float] = {}
        self.supported: dict[int, bool] = {}  # GPU index -> GPM supported (Hopper and newer)
        self.stopping = threading.Event()
        self._mig_samples: dict[tuple[int, int], list] = {}
        self._mig_taken: set[tuple[int, int]] = set()
        self._gpm_samples: dict[int, list] = {}  # GPU index -> [previous, current] NVML sample buffers
        self._gpm_taken: set[int] = set()
        self._gpm_unsupported: set[int] = set()
        self._nvlink_last: dict[int, tuple[int, float]] = {}

    def run(self) -> None:
        while not self.stopping.is_set():
            self.sample_once()
            self.stopping.wait(self.interval)

    def sample_once(self) -> None:
        for gpu in list(self.gpus):
            try:
                self._gpm(gpu)
                self._gpm_mig(gpu)
                self._nvlink(gpu)
                self.taken[gpu.index] = time.monotonic()
            except GpuLost:
                self.gpm.pop(gpu.index, None)
                self.nvlink.pop(gpu.index, None)
                self._gpm_taken.discard(gpu.index)
                self._nvlink_last.pop(gpu.index, None)
                for key in [k for k in self._mig_taken if k[0] == gpu.index]:
                    self._mig_taken.discard(key)
                    self.gpm_mig.pop(key, None)

    # -- GPM ---------------------------------------------------------------------------------------------------
    def _gpm(self, gpu) -> None:
        n, s, h = self.nvml, gpu.scope, gpu.handle
        if gpu.index not in self._gpm_samples:
            if gpu.index in self._gpm_unsupported:
                return
            support = n.call(s, 'nvmlGpmQueryDeviceSupport', h)
            if support is None or not support.isSupportedDevice:
                self._gpm_unsupported.add(gpu.index)
                if self.supported.get(gpu.index) is not False:
                    print('gpuvirt-exporter: GPU %s has no NVML GPM (it needs Hopper or newer): no PROF_* or activity series for it'
                          % gpu.index, file=sys.stderr, flush=True)
                self.supported[gpu.index] = False
                return
            self.supported[gpu.index] = True
            first, second = n.call(s, 'nvmlGpmSampleAlloc'), n.call(s, 'nvmlGpmSampleAlloc')
            if first is None or second is None:
                return
            self._gpm_samples[gpu.index] = [first, second]
        buffers = self._gpm_samples[gpu.index]
        if n.call(s, 'nvmlGpmSampleGet', h, buffers[1], remember=False) is None:
            self._gpm_taken.discard(gpu.index)
            return
        if gpu.index in self._gpm_taken:
            values = n.run(s, 'nvmlGpmMetricsGet', _metrics_get, buffers[0], buffers[1], remember=False)
            if values is not None:
                self.gpm[gpu.index] = values
        self._gpm_taken.add(gpu.index)
        buffers.reverse()  # the current sample becomes the previous one

    def _gpm_mig(self, gpu) -> None:
        """One GPM sample per GPU instance of a GPU in MIG mode (gpu.gi_ids, set by the collector from its MIG reads)."""
        if not self.supported.get(gpu.index):
            return
        n, s, h = self.nvml, gpu.scope, gpu.handle
        current = {(gpu.index, gi) for gi in getattr(gpu, 'gi_ids', ())}
        for key in [k for k in self._mig_samples if k[0] == gpu.index and k not in current]:
            for buffer in self._mig_samples.pop(key):
                n.call(s, 'nvmlGpmSampleFree', buffer)
            self._mig_taken.discard(key)
            self.gpm_mig.pop(key, None)
            self.mig_taken.pop(key, None)
        if not n.supported(s, 'nvmlGpmMigSampleGet'):
            return
        for key in sorted(current):
            if key not in self._mig_samples:
                first, second = n.call(s, 'nvmlGpmSampleAlloc'), n.call(s, 'nvmlGpmSampleAlloc')
                if first is None or second is None:
                    return
                self._mig_samples[key] = [first, second]
            buffers = self._mig_samples[key]
            if n.call(s, 'nvmlGpmMigSampleGet', h, key[1], buffers[1], remember=True) is None:
                self._mig_taken.discard(key)
                continue
            if key in self._mig_taken:
                values = n.run(s, 'nvmlGpmMetricsGet', _metrics_get, buffers[0], buffers[1], remember=False)
                if values is not None:
                    self.gpm_mig[key] = values
                    self.mig_taken[key] = time.monotonic()
            self._mig_taken.add(key)
            buffers.reverse()

    # -- NVLink ------------------------------------------------------------------------------------------------
    def _nvlink(self, gpu) -> None:
        n, s, h = self.nvml, gpu.scope, gpu.handle
        values = n.call(s, 'nvmlDeviceGetFieldValues', h, [(NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, ALL_LINKS),
                                                           (NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, ALL_LINKS)])
        if not values or any(int(v.nvmlReturn) != 0 for v in values):
            return
        total_kib = sum(int(v.value.ullVal) for v in values)
        now = time.monotonic()
        last = self._nvlink_last.get(gpu.index)
        self._nvlink_last[gpu.index] = (total_kib, now)
        if last is not None and now > last[1] and total_kib >= last[0]:
            # DCGM: the KiB counters' change per second, divided by 1000
            self.nvlink[gpu.index] = (total_kib - last[0]) / (now - last[1]) / 1000


def _metrics_get(previous, current) -> dict[int, float]:
    request = pynvml.c_nvmlGpmMetricsGet_t()
    request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
    request.numMetrics = len(GPM_METRICS)
    request.sample1 = previous
    request.sample2 = current
    for index, metric_id in enumerate(GPM_METRICS):
        request.metrics[index].metricId = metric_id
    pynvml.nvmlGpmMetricsGet(request)
    return {int(request.metrics[i].metricId): float(request.metrics[i].value)
            for i in range(len(GPM_METRICS)) if int(request.metrics[i].nvmlReturn) == 0}


class PeriodicSampler(threading.Thread):
    """Every interval, read(gpu) for each GPU; its dict is kept with the monotonic time its read began at.

    The collector passes the reads of each GPU's values (the fast ones every --sample-interval, the ones the driver
    answers slowly every --pcie-interval), so a scrape only looks them up: fresh() gives a sample no older than max_age,
    else None (and counts it stale).
    """

    def __init__(self, read, interval: float, max_age: float | None = None, name: str = 'slow-sampler'):
        super().__init__(name=name, daemon=True)
        self.read = read
        self.interval = interval
        self.max_age = max_age if max_age is not None else 2 * interval
        self.gpus: list = []
        self.samples: dict[int, tuple[dict, float]] = {}
        self.stale = 0
        self.rounds = 0  # rounds over all GPUs completed
        self.duration = 0.0  # seconds the last round took
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            self.sample_once()

    def sample_once(self) -> None:
        started = time.monotonic()
        for gpu in list(self.gpus):
            self.sample_gpu(gpu)
        self.duration = time.monotonic() - started
        self.rounds += 1

    def sample_gpu(self, gpu) -> None:
        started = time.monotonic()  # a value's age counts from before it was read
        try:
            values = self.read(gpu)
        except GpuLost:
            self.samples.pop(gpu.index, None)
            return
        self.samples[gpu.index] = (values, started)

    def fresh(self, index: int, now: float) -> tuple[dict, float] | None:
        """(values, age in seconds) of the GPU's last sample, None when there is none or it is older than max_age."""
        sample = self.samples.get(index)
        if sample is None:
            return None
        age = now - sample[1]
        if age > self.max_age:
            self.stale += 1
            return None
        return sample[0], age
