"""GPM in the NVML stand-in: the sample semantics of the real API (two samples, a rate over the interval between
them), per GPU and per MIG GPU instance, checked against what a real H200 answered (tests/unit/fixtures/real-h200-gpm)."""
# pylint: disable=redefined-outer-name  # pytest fixtures are parameters by design
from __future__ import annotations

import inspect
import json
import math
import time
from pathlib import Path

import pytest

REAL = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "real-h200-gpm" / "gpm-probe.json").read_text())
SECOND = 1_000_000_000
GPM_FUNCTIONS = ("nvmlGpmQueryDeviceSupport", "nvmlGpmSampleAlloc", "nvmlGpmSampleFree", "nvmlGpmSampleGet",
                 "nvmlGpmMigSampleGet", "nvmlGpmMetricsGet")
PROFILE_3G, PROFILE_1G = 9, 19


class Clock:
    """time.time_ns for the stand-in and the state store: moves only when told."""

    def __init__(self):
        self.now = 1_800_000_000 * SECOND

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += int(seconds * SECOND)


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(time, "time_ns", fake)
    return fake


@pytest.fixture
def gpus(nvml, simhost, clock):
    simhost.init("h200-141gb", "a40", "t4")
    nvml.nvmlInit()
    return [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(3)]


@pytest.fixture
def mig_h200(nvml, simhost, clock):
    """An H200 with MIG on, a 3g.71gb instance and a 1g.18gb instance."""
    simhost.init("h200-141gb")
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    nvml.nvmlDeviceSetMigMode(handle, nvml.NVML_DEVICE_MIG_ENABLE)
    simhost.ok("reset", "--gpu", "0")
    big = nvml.nvmlGpuInstanceGetInfo(nvml.nvmlDeviceCreateGpuInstance(handle, PROFILE_3G)).id
    small = nvml.nvmlGpuInstanceGetInfo(nvml.nvmlDeviceCreateGpuInstance(handle, PROFILE_1G)).id
    return handle, big, small


def _request(nvml, first, second, ids):
    request = nvml.c_nvmlGpmMetricsGet_t()
    request.version, request.numMetrics, request.sample1, request.sample2 = nvml.NVML_GPM_METRICS_GET_VERSION, len(ids), first, second
    for index, metric_id in enumerate(ids):
        request.metrics[index].metricId = metric_id
    return request


def _rates(nvml, first, second, ids):
    request = nvml.nvmlGpmMetricsGet(_request(nvml, first, second, ids))
    return {ids[i]: (request.metrics[i].nvmlReturn, request.metrics[i].value) for i in range(len(ids))}


def _code(nvml, func, *args):
    with pytest.raises(nvml.NVMLError) as info:
        func(*args)
    return info.value.value


def test_the_gpm_calls_have_nvidia_ml_py_signatures_and_constants(nvml, real_pynvml):
    for name in GPM_FUNCTIONS:
        assert inspect.signature(getattr(nvml, name)) == inspect.signature(getattr(real_pynvml, name)), name
    for name in dir(nvml):
        if name.startswith("NVML_GPM_"):
            assert getattr(nvml, name) == getattr(real_pynvml, name), name
    assert [f[0] for f in nvml.c_nvmlGpmMetricsGet_t._fields_] == [f[0] for f in real_pynvml.c_nvmlGpmMetricsGet_t._fields_]
    assert [f[0] for f in nvml.c_nvmlGpmMetric_t._fields_] == [f[0] for f in real_pynvml.c_nvmlGpmMetric_t._fields_]


def test_only_hopper_and_newer_support_gpm(nvml, gpus):
    h200, a40, t4 = gpus
    assert REAL["support"] == {"error": None, "isSupportedDevice": 1}
    assert nvml.nvmlGpmQueryDeviceSupport(h200).isSupportedDevice == 1
    for old in (a40, t4):
        assert nvml.nvmlGpmQueryDeviceSupport(old).isSupportedDevice == 0
        sample = nvml.nvmlGpmSampleAlloc()
        assert _code(nvml, nvml.nvmlGpmSampleGet, old, sample) == nvml.NVML_ERROR_NOT_SUPPORTED
        assert _code(nvml, nvml.nvmlGpmMigSampleGet, old, 1, sample) == nvml.NVML_ERROR_NOT_SUPPORTED
        nvml.nvmlGpmSampleFree(sample)


def test_two_samples_are_needed_as_on_the_real_h200(nvml, gpus, clock):
    h200 = gpus[0]
    first, second, third = (nvml.nvmlGpmSampleAlloc() for _unused in range(3))
    # neither taken: the call succeeds, every metric says UNINITIALIZED (real: metrics_untaken_samples)
    real = REAL["metrics_untaken_samples"]
    assert real["error"] is None and {m["ret"] for m in real["metrics"].values()} == {nvml.NVML_ERROR_UNINITIALIZED}
    assert {ret for ret, _unused in _rates(nvml, first, second, [1, 2]).values()} == {nvml.NVML_ERROR_UNINITIALIZED}
    nvml.nvmlGpmSampleGet(h200, first)
    # one taken, or the same sample twice: INVALID_ARGUMENT (real: metrics_one_taken_one_untaken, metrics_same_sample_twice)
    for real_case, pair in (("metrics_one_taken_one_untaken", (first, second)), ("metrics_same_sample_twice", (first, first))):
        assert REAL[real_case]["error"] == nvml.NVML_ERROR_INVALID_ARGUMENT
        assert _code(nvml, nvml.nvmlGpmMetricsGet, _request(nvml, *pair, [1, 2])) == nvml.NVML_ERROR_INVALID_ARGUMENT
    clock.advance(1)
    nvml.nvmlGpmSampleGet(h200, second)
    assert _rates(nvml, first, second, [1])[1] == (nvml.NVML_SUCCESS, 0.0)
    # samples in reverse order: success with meaningless values (real: NaN and -9.2e15 MiB/s)
    assert REAL["metrics_reversed_order"]["error"] is None and math.isnan(REAL["metrics_reversed_order"]["metrics"]["10"]["value"])
    assert all(ret == nvml.NVML_SUCCESS and math.isnan(value) for ret, value in _rates(nvml, second, first, [1, 10]).values())
    nvml.nvmlGpmSampleFree(third)
    assert _code(nvml, nvml.nvmlGpmSampleGet, h200, third) == nvml.NVML_ERROR_INVALID_ARGUMENT  # a freed sample


def test_the_rate_is_the_mean_over_the_interval_between_the_samples(nvml, simhost, gpus, clock):
    h200 = gpus[0]
    first, second, third = (nvml.nvmlGpmSampleAlloc() for _unused in range(3))
    nvml.nvmlGpmSampleGet(h200, first)  # idle: the H200 model's 0 % (captured)
    clock.advance(1)
    simhost.ok("proc", "add", "--gpu", "0", "--pid", "7", "--mem-mib", "1024")  # busy from here: 95 % SM, 40 % DRAM
    clock.advance(3)
    nvml.nvmlGpmSampleGet(h200, second)
    ids = [nvml.NVML_GPM_METRIC_GRAPHICS_UTIL, nvml.NVML_GPM_METRIC_SM_UTIL, nvml.NVML_GPM_METRIC_DRAM_BW_UTIL,
           nvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL]
    assert _rates(nvml, first, second, ids) == {1: (0, 95 * 3 / 4), 2: (0, 95 * 3 / 4), 10: (0, 40 * 3 / 4), 5: (0, 0.0)}
    clock.advance(2)
    simhost.ok("proc", "clear", "--gpu", "0")
    nvml.nvmlGpmSampleGet(h200, third)
    assert _rates(nvml, second, third, ids) == {1: (0, 95.0), 2: (0, 95.0), 10: (0, 40.0), 5: (0, 0.0)}
    # the busy interval is over: between two idle samples the rates are the idle ones again
    nvml.nvmlGpmSampleGet(h200, first)
    clock.advance(1)
    nvml.nvmlGpmSampleGet(h200, second)
    assert _rates(nvml, first, second, ids) == {1: (0, 0.0), 2: (0, 0.0), 10: (0, 0.0), 5: (0, 0.0)}


def test_pcie_rates_are_mib_per_second_of_the_captured_figures(nvml, gpus, clock):
    h200 = gpus[0]
    first, second = nvml.nvmlGpmSampleAlloc(), nvml.nvmlGpmSampleAlloc()
    nvml.nvmlGpmSampleGet(h200, first)
    clock.advance(0.5)
    nvml.nvmlGpmSampleGet(h200, second)
    rates = _rates(nvml, first, second, [nvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC, nvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC])
    tx_kb = nvml.nvmlDeviceGetPcieThroughput(h200, nvml.NVML_PCIE_UTIL_TX_BYTES)
    rx_kb = nvml.nvmlDeviceGetPcieThroughput(h200, nvml.NVML_PCIE_UTIL_RX_BYTES)
    assert rates == {20: (0, tx_kb * 1024 / 2 ** 20), 21: (0, rx_kb * 1024 / 2 ** 20)}


def test_metric_ids_names_units_and_limits_are_the_real_h200s(nvml, gpus, clock):
    h200 = gpus[0]
    first, second = nvml.nvmlGpmSampleAlloc(), nvml.nvmlGpmSampleAlloc()
    nvml.nvmlGpmSampleGet(h200, first)
    clock.advance(1)
    nvml.nvmlGpmSampleGet(h200, second)
    for chunk_start in range(0, len(REAL["metrics_over_1s"]), 100):
        chunk = sorted(REAL["metrics_over_1s"], key=int)[chunk_start:chunk_start + 100]
        request = nvml.nvmlGpmMetricsGet(_request(nvml, first, second, [int(k) for k in chunk]))
        for index, key in enumerate(chunk):
            real, ours = REAL["metrics_over_1s"][key], request.metrics[index]
            assert ours.nvmlReturn == real["ret"], key
            if real["ret"] == 0:
                assert (ours.metricInfo.shortName.decode(), ours.metricInfo.unit.decode()) == (real["name"], real["unit"]), key
    for count, error in REAL["metrics_count_limit"].items():  # more than 210 metrics in one call: INVALID_ARGUMENT
        if int(count) <= nvml.NVML_GPM_METRIC_MAX:
            request = _request(nvml, first, second, [1] * int(count))
            if error is None:
                nvml.nvmlGpmMetricsGet(request)
            else:
                assert _code(nvml, nvml.nvmlGpmMetricsGet, request) == error, count


def test_mig_samples_need_mig_and_an_existing_instance(nvml, gpus, mig_h200):
    assert REAL["mig_sample_get_gi0_mig_disabled"]["error"] == nvml.NVML_ERROR_INVALID_ARGUMENT  # real, MIG disabled
    handle, big, _unused = mig_h200
    sample = nvml.nvmlGpmSampleAlloc()
    assert _code(nvml, nvml.nvmlGpmMigSampleGet, handle, 99, sample) == nvml.NVML_ERROR_INVALID_ARGUMENT
    nvml.nvmlGpmMigSampleGet(handle, big, sample)


def test_mig_disabled_gpu_refuses_instance_samples(nvml, gpus):
    sample = nvml.nvmlGpmSampleAlloc()
    assert _code(nvml, nvml.nvmlGpmMigSampleGet, gpus[0], 0, sample) == nvml.NVML_ERROR_INVALID_ARGUMENT


def test_each_mig_instance_has_its_own_activity_and_the_gpu_the_sm_weighted_sum(nvml, simhost, mig_h200, clock):
    handle, big, small = mig_h200
    gi = nvml.nvmlDeviceGetGpuInstanceById(handle, big)
    ci = nvml.nvmlComputeInstanceGetInfo(nvml.nvmlGpuInstanceCreateComputeInstance(gi, 2)).id  # 3c: the whole 3g
    simhost.ok("proc", "add", "--gpu", "0", "--pid", "11", "--mem-mib", "1024", "--gi", str(big), "--ci", str(ci))
    samples = {unit: (nvml.nvmlGpmSampleAlloc(), nvml.nvmlGpmSampleAlloc()) for unit in ("gpu", big, small)}
    take = {"gpu": lambda s: nvml.nvmlGpmSampleGet(handle, s)}
    take.update({gi: (lambda s, gi=gi: nvml.nvmlGpmMigSampleGet(handle, gi, s)) for gi in (big, small)})
    for unit, (first, _unused) in samples.items():
        take[unit](first)
    clock.advance(2)
    for unit, (_unused, second) in samples.items():
        take[unit](second)
    ids = [nvml.NVML_GPM_METRIC_SM_UTIL, nvml.NVML_GPM_METRIC_DRAM_BW_UTIL, nvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC]
    busy, idle, whole = (_rates(nvml, *samples[unit], ids) for unit in (big, small, "gpu"))
    assert busy[2] == (0, 95.0) and busy[10] == (0, 40.0)
    assert idle[2] == (0, 0.0) and idle[10] == (0, 0.0)
    # PCIe is the whole GPU's: an instance sample has no PCIe figure
    assert busy[20][0] == idle[20][0] == nvml.NVML_ERROR_NOT_SUPPORTED and whole[20][0] == nvml.NVML_SUCCESS
    # the GPU: 60 of 132 SMs busy at 95 %
    assert whole[2][0] == 0 and whole[2][1] == pytest.approx(95 * 60 / 132, abs=1e-6)
    # samples of different instances do not mix
    request = _request(nvml, samples[big][0], samples[small][1], ids)
    assert _code(nvml, nvml.nvmlGpmMetricsGet, request) == nvml.NVML_ERROR_INVALID_ARGUMENT
