"""Field values (memory temperature, energy, remapped rows) and GRID licensing: shapes of nvidia-ml-py, values of the captures."""
# pylint: disable=redefined-outer-name  # pytest fixtures are parameters by design
from __future__ import annotations

import pytest


@pytest.fixture
def gpus(nvml, simhost):
    simhost.init("h100-80gb-hbm3", "a40")
    nvml.nvmlInit()
    return [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(2)]


def test_memory_temperature_is_the_captured_reading_and_absent_where_not_captured(nvml, gpus):
    h100, a40 = gpus
    (value,) = nvml.nvmlDeviceGetFieldValues(h100, [nvml.NVML_FI_DEV_MEMORY_TEMP])
    assert (value.nvmlReturn, value.valueType, value.value.uiVal) == (nvml.NVML_SUCCESS, nvml.NVML_VALUE_TYPE_UNSIGNED_INT, 43)
    (value,) = nvml.nvmlDeviceGetFieldValues(a40, [nvml.NVML_FI_DEV_MEMORY_TEMP])
    assert value.nvmlReturn == nvml.NVML_ERROR_NOT_SUPPORTED


def test_energy_and_remapped_rows_fields_agree_with_their_getters(nvml, gpus):
    h100 = gpus[0]
    fields = [nvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION, nvml.NVML_FI_DEV_REMAPPED_COR, nvml.NVML_FI_DEV_REMAPPED_FAILURE,
              (139, 0xFFFFFFFF)]
    energy, corrected, failure, nvlink = nvml.nvmlDeviceGetFieldValues(h100, fields)
    assert abs(energy.value.ullVal - nvml.nvmlDeviceGetTotalEnergyConsumption(h100)) < 1_000_000  # mJ, read a moment apart
    assert (corrected.value.ullVal, failure.value.ullVal) == (0, 0) and corrected.nvmlReturn == nvml.NVML_SUCCESS
    assert nvlink.nvmlReturn == nvml.NVML_ERROR_NOT_SUPPORTED and nvlink.scopeId == 0xFFFFFFFF  # no NVLink modelled


def test_a_passthrough_gpu_has_no_grid_licensing(nvml, gpus):
    features = nvml.nvmlDeviceGetGridLicensableFeatures_v4(gpus[0])
    assert (features.isGridLicenseSupported, features.licensableFeaturesCount) == (0, 0)


def test_gpm_on_hopper_rates_two_samples_and_older_gpus_have_none(nvml, simhost, gpus):
    h100, a40 = gpus
    assert nvml.nvmlGpmQueryDeviceSupport(h100).isSupportedDevice == 1
    assert nvml.nvmlGpmQueryDeviceSupport(a40).isSupportedDevice == 0
    with pytest.raises(nvml.NVMLError_NotSupported):
        nvml.nvmlGpmSampleGet(a40, nvml.nvmlGpmSampleAlloc())
    simhost.ok("proc", "add", "--gpu", "0", "--pid", "3", "--mem-mib", "4096")
    first, second = nvml.nvmlGpmSampleAlloc(), nvml.nvmlGpmSampleAlloc()
    nvml.nvmlGpmSampleGet(h100, first)
    nvml.nvmlGpmSampleGet(h100, second)
    request = nvml.c_nvmlGpmMetricsGet_t()
    request.version, request.numMetrics, request.sample1, request.sample2 = nvml.NVML_GPM_METRICS_GET_VERSION, 4, first, second
    for index, metric in enumerate((nvml.NVML_GPM_METRIC_GRAPHICS_UTIL, nvml.NVML_GPM_METRIC_DRAM_BW_UTIL,
                                    nvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC, 999)):
        request.metrics[index].metricId = metric
    nvml.nvmlGpmMetricsGet(request)
    util = nvml.nvmlDeviceGetUtilizationRates(h100)
    assert [request.metrics[i].value for i in range(2)] == [util.gpu, util.memory]
    assert request.metrics[2].value == nvml.nvmlDeviceGetPcieThroughput(h100, 0) * 1024 / 2 ** 20
    assert request.metrics[3].nvmlReturn == nvml.NVML_ERROR_INVALID_ARGUMENT  # an unknown id, as on the real H200
    nvml.nvmlGpmSampleFree(first)
    nvml.nvmlGpmSampleFree(second)
