# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Background samples for the dcgm names: NVML GPM metrics (DCGM_FI_PROF_*) and the NVLink throughput rate.

Both are differences between two samples taken an interval apart, as DCGM computes them, so they are never read in a
scrape: every interval this thread takes one sample per GPU and keeps the values computed against the previous one.
GPM (GPU Performance Monitoring) is NVML's own source of DCGM's profiling counters on Hopper and newer GPUs
(nvmlGpmQueryDeviceSupport); a GPU or binding without it simply has no PROF series.
"""

from __future__ import annotations

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
        self.stopping = threading.Event()
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
                self._nvlink(gpu)
            except GpuLost:
                self.gpm.pop(gpu.index, None)
                self.nvlink.pop(gpu.index, None)
                self._gpm_taken.discard(gpu.index)
                self._nvlink_last.pop(gpu.index, None)

    # -- GPM ---------------------------------------------------------------------------------------------------
    def _gpm(self, gpu) -> None:
        n, s, h = self.nvml, gpu.scope, gpu.handle
        if gpu.index not in self._gpm_samples:
            if gpu.index in self._gpm_unsupported:
                return
            support = n.call(s, 'nvmlGpmQueryDeviceSupport', h)
            if support is None or not support.isSupportedDevice:
                self._gpm_unsupported.add(gpu.index)
                return
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
