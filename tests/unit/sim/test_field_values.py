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
