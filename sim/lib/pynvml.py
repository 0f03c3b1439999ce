"""Simulated NVML: a stand-in for nvidia-ml-py's ``pynvml`` module.

Production code imports it as ``import pynvml`` and cannot tell it from the real bindings for
the calls implemented here: same function names and signatures, same constants, same ctypes
structure classes and the same ``NVMLError_*`` exception classes.  Instead of calling
libnvidia-ml.so it answers from the host's simulator state on disk (``$GPUSIM_ROOT``, see
``gpusim.store``), which other processes (``gpusimctl``, another NVML client) may change at
any time: every call looks at the current state.

Written from scratch against the published NVML API; names, constant values and structure
field names follow nvidia-ml-py 13.x.
"""
# pylint: disable=invalid-name,too-many-lines,too-few-public-methods,redefined-builtin,unused-argument
from __future__ import annotations

import copy as _copy
import ctypes
import os
import sys
import threading
import time
import uuid as _uuid
# the real module does "from ctypes import *", so callers may use pynvml.c_uint, pynvml.byref, ...
from ctypes import (POINTER, Structure, Union, addressof, byref, c_char, c_char_p, c_double, c_float, c_int,  # noqa: F401 pylint: disable=unused-import
                    c_int64, c_long, c_longlong, c_short, c_size_t, c_ubyte, c_uint, c_uint8, c_uint16, c_uint32, c_uint64, c_ulong,
                    c_ulonglong, c_ushort, c_void_p, cast, create_string_buffer, pointer, sizeof)

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    # loaded by file path (tests): make the gpusim package beside this file importable without
    # shadowing anything else on sys.path (such as the real pynvml)
    sys.path.append(_HERE)

# pylint: disable=wrong-import-position
from gpusim import gpm as _gpm  # noqa: E402
from gpusim import host as _host  # noqa: E402
from gpusim import mig as _mig  # noqa: E402
from gpusim import models as _models  # noqa: E402
from gpusim import sessions as _sessions  # noqa: E402
from gpusim import settings as _settings  # noqa: E402
from gpusim import store as _store  # noqa: E402
from gpusim.errors import ERROR_STRINGS as _LIB_ERROR_STRINGS  # noqa: E402
from gpusim.errors import SimError as _SimError  # noqa: E402
from gpusim.errors import (NVML_ERROR_ALREADY_INITIALIZED, NVML_ERROR_ARGUMENT_VERSION_MISMATCH, NVML_ERROR_CORRUPTED_INFOROM,  # noqa: E402,F401
                           NVML_ERROR_DEPRECATED, NVML_ERROR_DRIVER_NOT_LOADED, NVML_ERROR_FREQ_NOT_SUPPORTED,
                           NVML_ERROR_FUNCTION_NOT_FOUND, NVML_ERROR_GPU_IS_LOST, NVML_ERROR_GPU_NOT_FOUND, NVML_ERROR_IN_USE,
                           NVML_ERROR_INSUFFICIENT_POWER, NVML_ERROR_INSUFFICIENT_RESOURCES, NVML_ERROR_INSUFFICIENT_SIZE,
                           NVML_ERROR_INVALID_ARGUMENT, NVML_ERROR_INVALID_STATE, NVML_ERROR_IRQ_ISSUE,
                           NVML_ERROR_LIB_RM_VERSION_MISMATCH, NVML_ERROR_LIBRARY_NOT_FOUND, NVML_ERROR_MEMORY, NVML_ERROR_NO_DATA,
                           NVML_ERROR_NO_PERMISSION, NVML_ERROR_NOT_FOUND, NVML_ERROR_NOT_READY, NVML_ERROR_NOT_SUPPORTED,
                           NVML_ERROR_OPERATING_SYSTEM, NVML_ERROR_RESET_REQUIRED, NVML_ERROR_RESET_TYPE_NOT_SUPPORTED,
                           NVML_ERROR_TIMEOUT, NVML_ERROR_UNINITIALIZED, NVML_ERROR_UNKNOWN, NVML_ERROR_VGPU_ECC_NOT_SUPPORTED,
                           NVML_SUCCESS)
# pylint: enable=wrong-import-position

SIMULATED = True  # not in nvidia-ml-py; lets a test harness assert which module it imported

# ------------------------------------------------------------------------------------------------
# Constants (values as in nvidia-ml-py 13.x)
# ------------------------------------------------------------------------------------------------
NVML_FEATURE_DISABLED = 0
NVML_FEATURE_ENABLED = 1

NVML_BRAND_UNKNOWN = 0
NVML_BRAND_QUADRO = 1
NVML_BRAND_TESLA = 2
NVML_BRAND_NVS = 3
NVML_BRAND_GRID = 4
NVML_BRAND_GEFORCE = 5
NVML_BRAND_TITAN = 6
NVML_BRAND_NVIDIA_VAPPS = 7
NVML_BRAND_NVIDIA_VPC = 8
NVML_BRAND_NVIDIA_VCS = 9
NVML_BRAND_NVIDIA_VWS = 10
NVML_BRAND_NVIDIA_CLOUD_GAMING = 11
NVML_BRAND_NVIDIA_VGAMING = NVML_BRAND_NVIDIA_CLOUD_GAMING
NVML_BRAND_QUADRO_RTX = 12
NVML_BRAND_NVIDIA_RTX = 13
NVML_BRAND_NVIDIA = 14
NVML_BRAND_GEFORCE_RTX = 15
NVML_BRAND_TITAN_RTX = 16
NVML_BRAND_COUNT = 20

NVML_TEMPERATURE_THRESHOLD_SHUTDOWN = 0
NVML_TEMPERATURE_THRESHOLD_SLOWDOWN = 1
NVML_TEMPERATURE_THRESHOLD_MEM_MAX = 2
NVML_TEMPERATURE_THRESHOLD_GPU_MAX = 3

NVML_TEMPERATURE_GPU = 0
NVML_TEMPERATURE_COUNT = 2

NVML_COMPUTEMODE_DEFAULT = 0
NVML_COMPUTEMODE_EXCLUSIVE_THREAD = 1
NVML_COMPUTEMODE_PROHIBITED = 2
NVML_COMPUTEMODE_EXCLUSIVE_PROCESS = 3
NVML_COMPUTEMODE_COUNT = 4

NVML_MEMORY_LOCATION_L1_CACHE = 0
NVML_MEMORY_LOCATION_L2_CACHE = 1
NVML_MEMORY_LOCATION_DEVICE_MEMORY = 2
NVML_MEMORY_LOCATION_DRAM = 2
NVML_MEMORY_LOCATION_REGISTER_FILE = 3
NVML_MEMORY_LOCATION_TEXTURE_MEMORY = 4
NVML_MEMORY_LOCATION_TEXTURE_SHM = 5
NVML_MEMORY_LOCATION_CBU = 6
NVML_MEMORY_LOCATION_SRAM = 7
NVML_MEMORY_LOCATION_COUNT = 8

NVML_SINGLE_BIT_ECC = 0
NVML_DOUBLE_BIT_ECC = 1
NVML_VOLATILE_ECC = 0
NVML_AGGREGATE_ECC = 1
NVML_ECC_COUNTER_TYPE_COUNT = 2
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_MEMORY_ERROR_TYPE_COUNT = 2

NVML_CLOCK_GRAPHICS = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_CLOCK_VIDEO = 3
NVML_CLOCK_COUNT = 4

NVML_CLOCK_ID_CURRENT = 0
NVML_CLOCK_ID_APP_CLOCK_TARGET = 1
NVML_CLOCK_ID_APP_CLOCK_DEFAULT = 2
NVML_CLOCK_ID_CUSTOMER_BOOST_MAX = 3
NVML_CLOCK_ID_COUNT = 4

NVML_PSTATE_0 = 0
NVML_PSTATE_1 = 1
NVML_PSTATE_2 = 2
NVML_PSTATE_8 = 8
NVML_PSTATE_12 = 12
NVML_PSTATE_15 = 15
NVML_PSTATE_UNKNOWN = 32

NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS = 0
NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR = 1
NVML_PAGE_RETIREMENT_CAUSE_COUNT = 2

NVML_PCIE_UTIL_TX_BYTES = 0
NVML_PCIE_UTIL_RX_BYTES = 1
NVML_PCIE_UTIL_COUNT = 2

NVML_DEVICE_ARCH_KEPLER = 2
NVML_DEVICE_ARCH_MAXWELL = 3
NVML_DEVICE_ARCH_PASCAL = 4
NVML_DEVICE_ARCH_VOLTA = 5
NVML_DEVICE_ARCH_TURING = 6
NVML_DEVICE_ARCH_AMPERE = 7
NVML_DEVICE_ARCH_ADA = 8
NVML_DEVICE_ARCH_HOPPER = 9
NVML_DEVICE_ARCH_BLACKWELL = 10
NVML_DEVICE_ARCH_UNKNOWN = 0xffffffff

NVML_INIT_FLAG_NO_GPUS = 1 << 0
NVML_INIT_FLAG_NO_ATTACH = 1 << 1
NVML_INIT_FLAG_FORCE_INIT = 1 << 2

NVML_DEVICE_INFOROM_VERSION_BUFFER_SIZE = 16
NVML_DEVICE_UUID_BUFFER_SIZE = 80
NVML_DEVICE_UUID_V2_BUFFER_SIZE = 96
NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE = 80
NVML_SYSTEM_NVML_VERSION_BUFFER_SIZE = 80
NVML_DEVICE_NAME_BUFFER_SIZE = 64
NVML_DEVICE_NAME_V2_BUFFER_SIZE = 96
NVML_DEVICE_SERIAL_BUFFER_SIZE = 30
NVML_DEVICE_PART_NUMBER_BUFFER_SIZE = 80
NVML_DEVICE_GPU_PART_NUMBER_BUFFER_SIZE = 80
NVML_DEVICE_VBIOS_VERSION_BUFFER_SIZE = 32
NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE = 32
NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE = 16
NVML_GRID_LICENSE_BUFFER_SIZE = 128
NVML_GSP_FIRMWARE_VERSION_BUF_SIZE = 0x40

NVML_VALUE_NOT_AVAILABLE_ulonglong = c_ulonglong(-1)
NVML_VALUE_NOT_AVAILABLE_uint = c_uint(-1)

NVML_GPU_VIRTUALIZATION_MODE_NONE = 0
NVML_GPU_VIRTUALIZATION_MODE_PASSTHROUGH = 1
NVML_GPU_VIRTUALIZATION_MODE_VGPU = 2
NVML_GPU_VIRTUALIZATION_MODE_HOST_VGPU = 3
NVML_GPU_VIRTUALIZATION_MODE_HOST_VSGA = 4

NVML_VGPU_VM_ID_DOMAIN_ID = 0
NVML_VGPU_VM_ID_UUID = 1

NVML_HOST_VGPU_MODE_NON_SRIOV = 0
NVML_HOST_VGPU_MODE_SRIOV = 1

NVML_DEVICE_MIG_DISABLE = 0x0
NVML_DEVICE_MIG_ENABLE = 0x1

NVML_GPU_INSTANCE_PROFILE_1_SLICE = 0x0
NVML_GPU_INSTANCE_PROFILE_2_SLICE = 0x1
NVML_GPU_INSTANCE_PROFILE_3_SLICE = 0x2
NVML_GPU_INSTANCE_PROFILE_4_SLICE = 0x3
NVML_GPU_INSTANCE_PROFILE_7_SLICE = 0x4
NVML_GPU_INSTANCE_PROFILE_8_SLICE = 0x5
NVML_GPU_INSTANCE_PROFILE_6_SLICE = 0x6
NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1 = 0x7
NVML_GPU_INSTANCE_PROFILE_2_SLICE_REV1 = 0x8
NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2 = 0x9
NVML_GPU_INSTANCE_PROFILE_1_SLICE_GFX = 0xA
NVML_GPU_INSTANCE_PROFILE_2_SLICE_GFX = 0xB
NVML_GPU_INSTANCE_PROFILE_4_SLICE_GFX = 0xC
NVML_GPU_INSTANCE_PROFILE_1_SLICE_NO_ME = 0xD
NVML_GPU_INSTANCE_PROFILE_2_SLICE_NO_ME = 0xE
NVML_GPU_INSTANCE_PROFILE_1_SLICE_ALL_ME = 0xF
NVML_GPU_INSTANCE_PROFILE_2_SLICE_ALL_ME = 0x10
NVML_GPU_INSTANCE_PROFILE_3_SLICE_GFX = 0x11
NVML_GPU_INSTANCE_PROFILE_COUNT = 0x12

NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE = 0x0
NVML_COMPUTE_INSTANCE_PROFILE_2_SLICE = 0x1
NVML_COMPUTE_INSTANCE_PROFILE_3_SLICE = 0x2
NVML_COMPUTE_INSTANCE_PROFILE_4_SLICE = 0x3
NVML_COMPUTE_INSTANCE_PROFILE_7_SLICE = 0x4
NVML_COMPUTE_INSTANCE_PROFILE_8_SLICE = 0x5
NVML_COMPUTE_INSTANCE_PROFILE_6_SLICE = 0x6
NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE_REV1 = 0x7
NVML_COMPUTE_INSTANCE_PROFILE_7_SLICE_NVL = 0x8
NVML_COMPUTE_INSTANCE_PROFILE_COUNT = 0x9
NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED = 0x0
NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_COUNT = 0x1

NVML_PROCESS_MODE_COMPUTE = 0
NVML_PROCESS_MODE_GRAPHICS = 1

nvmlMemory_v2 = 0x02000028
nvmlGpuInstanceProfileInfo_v2 = 0x02000098
nvmlComputeInstanceProfileInfo_v2 = 0x02000088

nvmlEventTypeSingleBitEccError = 0x0000000000000001
nvmlEventTypeDoubleBitEccError = 0x0000000000000002
nvmlEventTypePState = 0x0000000000000004
nvmlEventTypeXidCriticalError = 0x0000000000000008
nvmlEventTypeClock = 0x0000000000000010
nvmlEventTypePowerSourceChange = 0x0000000000000080
nvmlEventTypeNone = 0x0000000000000000

nvmlClocksEventReasonGpuIdle = 0x0000000000000001
nvmlClocksEventReasonApplicationsClocksSetting = 0x0000000000000002
nvmlClocksEventReasonSwPowerCap = 0x0000000000000004
nvmlClocksEventReasonHwSlowdown = 0x0000000000000008
nvmlClocksEventReasonSyncBoost = 0x0000000000000010
nvmlClocksEventReasonSwThermalSlowdown = 0x0000000000000020
nvmlClocksEventReasonHwThermalSlowdown = 0x0000000000000040
nvmlClocksEventReasonHwPowerBrakeSlowdown = 0x0000000000000080
nvmlClocksEventReasonDisplayClockSetting = 0x0000000000000100
nvmlClocksEventReasonNone = 0x0000000000000000
nvmlClocksThrottleReasonGpuIdle = nvmlClocksEventReasonGpuIdle
nvmlClocksThrottleReasonNone = nvmlClocksEventReasonNone

# ctypes aliases of enum types used in signatures below
_nvmlEnableState_t = c_uint
_nvmlBrandType_t = c_uint
_nvmlReturn_t = c_uint
_nvmlVgpuTypeId_t = c_uint
_nvmlVgpuInstance_t = c_uint


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------
class NVMLLibraryMismatchError(Exception):
    """Raised by the real bindings when an unversioned function is missing from the library."""


class NVMLError(Exception):
    """Base of all NVML errors; ``NVMLError(code)`` returns an instance of the matching subclass."""

    _valClassMapping: dict[int, type] = {}
    # The texts the Python bindings know without asking the library.
    _errcode_to_string = {code: _LIB_ERROR_STRINGS[code] for code in (
        NVML_ERROR_UNINITIALIZED, NVML_ERROR_INVALID_ARGUMENT, NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_NO_PERMISSION,
        NVML_ERROR_ALREADY_INITIALIZED, NVML_ERROR_NOT_FOUND, NVML_ERROR_INSUFFICIENT_SIZE, NVML_ERROR_INSUFFICIENT_POWER,
        NVML_ERROR_DRIVER_NOT_LOADED, NVML_ERROR_TIMEOUT, NVML_ERROR_IRQ_ISSUE, NVML_ERROR_LIBRARY_NOT_FOUND,
        NVML_ERROR_FUNCTION_NOT_FOUND, NVML_ERROR_CORRUPTED_INFOROM, NVML_ERROR_GPU_IS_LOST, NVML_ERROR_RESET_REQUIRED,
        NVML_ERROR_OPERATING_SYSTEM, NVML_ERROR_LIB_RM_VERSION_MISMATCH, NVML_ERROR_MEMORY, NVML_ERROR_UNKNOWN)}
    _code = NVML_ERROR_UNKNOWN
    value: int

    def __new__(cls, *args):
        # NVMLError(code) picks the subclass for the code; NVMLError_Xxx() carries its own code
        if cls is NVMLError:
            value = args[0] if args else None
            target = NVMLError._valClassMapping.get(value, NVMLError)
        else:
            value, target = cls._code, cls
        obj = Exception.__new__(target)
        obj.value = value
        return obj

    def __str__(self):
        if self.value in NVMLError._errcode_to_string:
            return NVMLError._errcode_to_string[self.value]
        try:
            text = nvmlErrorString(self.value)
        except NVMLError:
            return "NVML Error with code %d" % self.value
        NVMLError._errcode_to_string[self.value] = text
        return text

    def __eq__(self, other):
        return isinstance(other, NVMLError) and self.value == other.value

    __hash__ = None  # type: ignore[assignment]


class NVMLError_Uninitialized(NVMLError):
    _code = NVML_ERROR_UNINITIALIZED


class NVMLError_InvalidArgument(NVMLError):
    _code = NVML_ERROR_INVALID_ARGUMENT


class NVMLError_NotSupported(NVMLError):
    _code = NVML_ERROR_NOT_SUPPORTED


class NVMLError_NoPermission(NVMLError):
    _code = NVML_ERROR_NO_PERMISSION


class NVMLError_AlreadyInitialized(NVMLError):
    _code = NVML_ERROR_ALREADY_INITIALIZED


class NVMLError_NotFound(NVMLError):
    _code = NVML_ERROR_NOT_FOUND


class NVMLError_InsufficientSize(NVMLError):
    _code = NVML_ERROR_INSUFFICIENT_SIZE


class NVMLError_InsufficientPower(NVMLError):
    _code = NVML_ERROR_INSUFFICIENT_POWER


class NVMLError_DriverNotLoaded(NVMLError):
    _code = NVML_ERROR_DRIVER_NOT_LOADED


class NVMLError_Timeout(NVMLError):
    _code = NVML_ERROR_TIMEOUT


class NVMLError_IrqIssue(NVMLError):
    _code = NVML_ERROR_IRQ_ISSUE


class NVMLError_LibraryNotFound(NVMLError):
    _code = NVML_ERROR_LIBRARY_NOT_FOUND


class NVMLError_FunctionNotFound(NVMLError):
    _code = NVML_ERROR_FUNCTION_NOT_FOUND


class NVMLError_CorruptedInforom(NVMLError):
    _code = NVML_ERROR_CORRUPTED_INFOROM


class NVMLError_GpuIsLost(NVMLError):
    _code = NVML_ERROR_GPU_IS_LOST


class NVMLError_ResetRequired(NVMLError):
    _code = NVML_ERROR_RESET_REQUIRED


class NVMLError_OperatingSystem(NVMLError):
    _code = NVML_ERROR_OPERATING_SYSTEM


class NVMLError_LibRmVersionMismatch(NVMLError):
    _code = NVML_ERROR_LIB_RM_VERSION_MISMATCH


class NVMLError_InUse(NVMLError):
    _code = NVML_ERROR_IN_USE


class NVMLError_Memory(NVMLError):
    _code = NVML_ERROR_MEMORY


class NVMLError_NoData(NVMLError):
    _code = NVML_ERROR_NO_DATA


class NVMLError_VgpuEccNotSupported(NVMLError):
    _code = NVML_ERROR_VGPU_ECC_NOT_SUPPORTED


class NVMLError_InsufficientResources(NVMLError):
    _code = NVML_ERROR_INSUFFICIENT_RESOURCES


class NVMLError_FreqNotSupported(NVMLError):
    _code = NVML_ERROR_FREQ_NOT_SUPPORTED


class NVMLError_ArgumentVersionMismatch(NVMLError):
    _code = NVML_ERROR_ARGUMENT_VERSION_MISMATCH


class NVMLError_Deprecated(NVMLError):
    _code = NVML_ERROR_DEPRECATED


class NVMLError_NotReady(NVMLError):
    _code = NVML_ERROR_NOT_READY


class NVMLError_GpuNotFound(NVMLError):
    _code = NVML_ERROR_GPU_NOT_FOUND


class NVMLError_InvalidState(NVMLError):
    _code = NVML_ERROR_INVALID_STATE


class NVMLError_ResetTypeNotSupported(NVMLError):
    _code = NVML_ERROR_RESET_TYPE_NOT_SUPPORTED


class NVMLError_Unknown(NVMLError):
    _code = NVML_ERROR_UNKNOWN


for _cls in list(globals().values()):
    if isinstance(_cls, type) and issubclass(_cls, NVMLError) and _cls is not NVMLError:
        NVMLError._valClassMapping[_cls._code] = _cls  # pylint: disable=protected-access
del _cls


def nvmlExceptionClass(nvmlErrorCode):
    if nvmlErrorCode not in NVMLError._valClassMapping:  # pylint: disable=protected-access
        raise ValueError('nvmlErrorCode %s is not valid' % nvmlErrorCode)
    return NVMLError._valClassMapping[nvmlErrorCode]  # pylint: disable=protected-access


# ------------------------------------------------------------------------------------------------
# Structures
# ------------------------------------------------------------------------------------------------
class nvmlFriendlyObject:
    """Plain attribute bag, as returned for process lists."""

    def __init__(self, dictionary):
        for key, value in dictionary.items():
            setattr(self, key, value)

    def __str__(self):
        return str(self.__dict__)


def nvmlStructToFriendlyObject(struct):
    values = {}
    for field in struct._fields_:
        value = getattr(struct, field[0])
        values[field[0]] = value.decode() if isinstance(value, bytes) else value
    return nvmlFriendlyObject(values)


class _PrintableStructure(Structure):
    """Structure whose char arrays read back as str and whose str() lists the fields."""

    _fmt_: dict[str, str] = {}

    def __str__(self):
        parts = []
        for field in self._fields_:
            name = field[0]
            fmt = self._fmt_.get(name, self._fmt_.get("<default>", "%s"))
            parts.append(("%s: " + fmt) % (name, getattr(self, name)))
        return "%s(%s)" % (self.__class__.__name__, ", ".join(parts))

    def __getattribute__(self, name):
        value = super().__getattribute__(name)
        return value.decode() if isinstance(value, bytes) else value

    def __setattr__(self, name, value):
        super().__setattr__(name, value.encode() if isinstance(value, str) else value)


class struct_c_nvmlDevice_t(Structure):
    pass  # opaque handle


c_nvmlDevice_t = POINTER(struct_c_nvmlDevice_t)


class nvmlPciInfo_v2_t(_PrintableStructure):
    _fields_ = [
        ('busId', c_char * NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE),
        ('domain', c_uint),
        ('bus', c_uint),
        ('device', c_uint),
        ('pciDeviceId', c_uint),
        ('pciSubSystemId', c_uint),
        ('reserved0', c_uint),
        ('reserved1', c_uint),
        ('reserved2', c_uint),
        ('reserved3', c_uint),
    ]
    _fmt_ = {'domain': "0x%04X", 'bus': "0x%02X", 'device': "0x%02X", 'pciDeviceId': "0x%08X", 'pciSubSystemId': "0x%08X"}


class nvmlPciInfo_t(_PrintableStructure):
    _fields_ = [
        ('busIdLegacy', c_char * NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE),
        ('domain', c_uint),
        ('bus', c_uint),
        ('device', c_uint),
        ('pciDeviceId', c_uint),
        ('pciSubSystemId', c_uint),
        ('busId', c_char * NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE),
    ]
    _fmt_ = {'domain': "0x%08X", 'bus': "0x%02X", 'device': "0x%02X", 'pciDeviceId': "0x%08X", 'pciSubSystemId': "0x%08X"}


class c_nvmlMemory_t(_PrintableStructure):
    _fields_ = [
        ('total', c_ulonglong),
        ('free', c_ulonglong),
        ('used', c_ulonglong),
    ]
    _fmt_ = {'<default>': "%d B"}


class c_nvmlMemory_v2_t(_PrintableStructure):
    _fields_ = [
        ('version', c_uint),
        ('total', c_ulonglong),
        ('reserved', c_ulonglong),
        ('free', c_ulonglong),
        ('used', c_ulonglong),
    ]
    _fmt_ = {'<default>': "%d B"}


class c_nvmlBAR1Memory_t(_PrintableStructure):
    _fields_ = [
        ('bar1Total', c_ulonglong),
        ('bar1Free', c_ulonglong),
        ('bar1Used', c_ulonglong),
    ]
    _fmt_ = {'<default>': "%d B"}


class c_nvmlProcessInfo_v2_t(_PrintableStructure):
    _fields_ = [
        ('pid', c_uint),
        ('usedGpuMemory', c_ulonglong),
        ('gpuInstanceId', c_uint),
        ('computeInstanceId', c_uint),
    ]
    _fmt_ = {'usedGpuMemory': "%d B"}


c_nvmlProcessInfo_v3_t = c_nvmlProcessInfo_v2_t
c_nvmlProcessInfo_t = c_nvmlProcessInfo_v3_t


class c_nvmlEccErrorCounts_t(_PrintableStructure):
    _fields_ = [
        ('l1Cache', c_ulonglong),
        ('l2Cache', c_ulonglong),
        ('deviceMemory', c_ulonglong),
        ('registerFile', c_ulonglong),
    ]


class c_nvmlUtilization_t(_PrintableStructure):
    _fields_ = [
        ('gpu', c_uint),
        ('memory', c_uint),
    ]
    _fmt_ = {'<default>': "%d %%"}


class c_nvmlGpuInstancePlacement_t(Structure):
    _fields_ = [("start", c_uint),
                ("size", c_uint)]


class c_nvmlGpuInstanceProfileInfo_t(Structure):
    _fields_ = [("id", c_uint),
                ("isP2pSupported", c_uint),
                ("sliceCount", c_uint),
                ("instanceCount", c_uint),
                ("multiprocessorCount", c_uint),
                ("copyEngineCount", c_uint),
                ("decoderCount", c_uint),
                ("encoderCount", c_uint),
                ("jpegCount", c_uint),
                ("ofaCount", c_uint),
                ("memorySizeMB", c_ulonglong)]


class c_nvmlGpuInstanceProfileInfo_v2_t(_PrintableStructure):
    _fields_ = [("version", c_uint),
                ("id", c_uint),
                ("isP2pSupported", c_uint),
                ("sliceCount", c_uint),
                ("instanceCount", c_uint),
                ("multiprocessorCount", c_uint),
                ("copyEngineCount", c_uint),
                ("decoderCount", c_uint),
                ("encoderCount", c_uint),
                ("jpegCount", c_uint),
                ("ofaCount", c_uint),
                ("memorySizeMB", c_ulonglong),
                ("name", c_char * NVML_DEVICE_NAME_V2_BUFFER_SIZE)]

    def __init__(self):
        super().__init__(version=nvmlGpuInstanceProfileInfo_v2)


class c_nvmlGpuInstanceInfo_t(Structure):
    _fields_ = [("device", c_nvmlDevice_t),
                ("id", c_uint),
                ("profileId", c_uint),
                ("placement", c_nvmlGpuInstancePlacement_t)]


class struct_c_nvmlGpuInstance_t(Structure):
    pass  # opaque handle


c_nvmlGpuInstance_t = POINTER(struct_c_nvmlGpuInstance_t)


class c_nvmlComputeInstancePlacement_t(Structure):
    _fields_ = [("start", c_uint),
                ("size", c_uint)]


class c_nvmlComputeInstanceProfileInfo_t(Structure):
    _fields_ = [("id", c_uint),
                ("sliceCount", c_uint),
                ("instanceCount", c_uint),
                ("multiprocessorCount", c_uint),
                ("sharedCopyEngineCount", c_uint),
                ("sharedDecoderCount", c_uint),
                ("sharedEncoderCount", c_uint),
                ("sharedJpegCount", c_uint),
                ("sharedOfaCount", c_uint)]


class c_nvmlComputeInstanceProfileInfo_v2_t(_PrintableStructure):
    _fields_ = [("version", c_uint),
                ("id", c_uint),
                ("sliceCount", c_uint),
                ("instanceCount", c_uint),
                ("multiprocessorCount", c_uint),
                ("sharedCopyEngineCount", c_uint),
                ("sharedDecoderCount", c_uint),
                ("sharedEncoderCount", c_uint),
                ("sharedJpegCount", c_uint),
                ("sharedOfaCount", c_uint),
                ("name", c_char * NVML_DEVICE_NAME_V2_BUFFER_SIZE)]

    def __init__(self):
        super().__init__(version=nvmlComputeInstanceProfileInfo_v2)


class struct_c_nvmlComputeInstance_t(Structure):
    pass  # opaque handle


c_nvmlComputeInstance_t = POINTER(struct_c_nvmlComputeInstance_t)


class c_nvmlComputeInstanceInfo_t(Structure):
    _fields_ = [("device", c_nvmlDevice_t),
                ("gpuInstance", c_nvmlGpuInstance_t),
                ("id", c_uint),
                ("profileId", c_uint),
                ("placement", c_nvmlComputeInstancePlacement_t)]


class c_nvmlDeviceAttributes(Structure):
    _fields_ = [("multiprocessorCount", c_uint),
                ("sharedCopyEngineCount", c_uint),
                ("sharedDecoderCount", c_uint),
                ("sharedEncoderCount", c_uint),
                ("sharedJpegCount", c_uint),
                ("sharedOfaCount", c_uint),
                ("gpuInstanceSliceCount", c_uint),
                ("computeInstanceSliceCount", c_uint),
                ("memorySizeMB", c_ulonglong)]


# ------------------------------------------------------------------------------------------------
# Library life cycle and the state behind every call
# ------------------------------------------------------------------------------------------------
_lock = threading.RLock()
_refcount = 0
_lib_loaded = False  # the real bindings keep libnvidia-ml loaded after the first nvmlInit
_session = None  # this process's NVML session (gpusim.sessions.Session) while _refcount > 0

# Opaque handles carry (kind, GPU state index, GI uid, CI uid) in the pointer value; they are
# never dereferenced.  uids are unique per GPU, so a handle to a destroyed instance stays invalid.
_TAG = 0x5A
_KIND_DEVICE, _KIND_MIG_DEVICE, _KIND_GPU_INSTANCE, _KIND_COMPUTE_INSTANCE = 1, 2, 3, 4
_UID_BITS = 22
_UID_MASK = (1 << _UID_BITS) - 1


def _raise(code):
    raise NVMLError(code)


def _encode(ptr_type, kind, index, gi_uid=0, ci_uid=0):
    value = (_TAG << 56) | (kind << 52) | (index << 44) | ((gi_uid & _UID_MASK) << _UID_BITS) | (ci_uid & _UID_MASK)
    return cast(c_void_p(value), ptr_type)


def _decode(handle, kinds):
    """(kind, index, gi_uid, ci_uid) of a handle made by _encode; INVALID_ARGUMENT otherwise."""
    try:
        value = cast(handle, c_void_p).value
    except (ctypes.ArgumentError, TypeError):
        value = None
    if not value or (value >> 56) != _TAG:
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    kind = (value >> 52) & 0xF
    if kind not in kinds:
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    return kind, (value >> 44) & 0xFF, (value >> _UID_BITS) & _UID_MASK, value & _UID_MASK


def _load_state():
    try:
        return _store.load()
    except _store.StateMissing:
        return None


def _driver_present(state):
    return state is not None and state.get("driver", {}).get("installed", False)


def _ready(names):
    """The current host state for a call; raises what NVML raises before touching a device."""
    if _refcount <= 0:
        _raise(NVML_ERROR_UNINITIALIZED)
    state = _load_state()
    if not _driver_present(state) or not state["driver"].get("loaded", False):
        _raise(NVML_ERROR_DRIVER_NOT_LOADED)
    code = _host.fault_for(state, None, names)
    if code:
        _raise(code)
    return state


class _Dev:
    """A resolved device handle: the state, the GPU entry, its model, and GI/CI for MIG objects."""

    __slots__ = ("state", "gpu", "model", "gi", "ci", "kind")

    def __init__(self, state, gpu, kind, gi=None, ci=None):
        self.state = state
        self.gpu = gpu
        self.model = _models.get(gpu["model"])
        self.kind = kind
        self.gi = gi
        self.ci = ci

    @property
    def is_mig(self):
        return self.kind == _KIND_MIG_DEVICE


def _names(name):
    return (name,) if isinstance(name, str) else tuple(name)


_view = (None, [], {})  # the state dict last seen, its visible GPUs, and those by state index


def _views(state):
    # store.load() hands back the same dict while the file is unchanged: compute the views once per
    # version; the tuple is replaced whole, so concurrent threads never see a half-updated view
    global _view  # pylint: disable=global-statement
    view = _view
    if view[0] is not state:
        visible = _host.visible_gpus(state)
        view = (state, visible, {g["index"]: g for g in visible})
        _view = view
    return view


def _visible(state):
    return _views(state)[1]


def _gpu_entry(state, index):
    entry = _views(state)[2].get(index)
    if entry is None:
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    return entry


def _find_uid(gpu, gi_uid, ci_uid=0):
    for inst in gpu.get("gpu_instances", []):
        if inst["uid"] == gi_uid:
            if not ci_uid:
                return inst, None
            for ci in inst["compute_instances"]:
                if ci["uid"] == ci_uid:
                    return inst, ci
    return _raise(NVML_ERROR_INVALID_ARGUMENT)


def _resolve(state, handle, names, kinds):
    kind, index, gi_uid, ci_uid = _decode(handle, kinds)
    gpu = _gpu_entry(state, index)
    if gpu.get("lost"):
        _raise(NVML_ERROR_GPU_IS_LOST)
    code = _host.fault_for(state, gpu, names)
    if code:
        _raise(code)
    if kind == _KIND_DEVICE:
        return _Dev(state, gpu, kind)
    inst, ci = _find_uid(gpu, gi_uid, ci_uid)
    return _Dev(state, gpu, kind, inst, ci)


def _dev(handle, name, mig_ok=False):
    """Resolve a device (or MIG device) handle for the call ``name``."""
    names = _names(name)
    state = _ready(names)
    dev = _resolve(state, handle, names, (_KIND_DEVICE, _KIND_MIG_DEVICE))
    if dev.is_mig and not mig_ok:
        _raise(NVML_ERROR_NOT_SUPPORTED)
    return dev


def _gpu_instance(handle, name):
    names = _names(name)
    return _resolve(_ready(names), handle, names, (_KIND_GPU_INSTANCE,))


def _compute_instance(handle, name):
    names = _names(name)
    return _resolve(_ready(names), handle, names, (_KIND_COMPUTE_INSTANCE,))


def _device_handle(gpu):
    return _encode(c_nvmlDevice_t, _KIND_DEVICE, gpu["index"])


def _gi_handle(gpu, inst):
    return _encode(c_nvmlGpuInstance_t, _KIND_GPU_INSTANCE, gpu["index"], inst["uid"])


def _ci_handle(gpu, inst, ci):
    return _encode(c_nvmlComputeInstance_t, _KIND_COMPUTE_INSTANCE, gpu["index"], inst["uid"], ci["uid"])


def _mig_device_handle(gpu, inst, ci):
    return _encode(c_nvmlDevice_t, _KIND_MIG_DEVICE, gpu["index"], inst["uid"], ci["uid"])


def _mutate(handle, name, kinds, action):
    """Run ``action(dev)`` on a fresh copy of the state under the exclusive lock and save it.

    Every call that reaches a GPU is counted in ``state["nvml_mutations"]`` (failed ones too, so a test can prove
    that nothing tried to change a GPU), and an nth-call fault (``gpusimctl fault set --nth``) fires here. A call
    that fails leaves the GPU as it was; only the count is saved.
    """
    names = _names(name)
    _ready(names)
    index = _decode(handle, kinds)[1]
    try:
        with _store.transaction() as state:
            outcome = _mutate_locked(state, handle, index, names, kinds, action)
    except PermissionError as exc:
        raise NVMLError(NVML_ERROR_NO_PERMISSION) from exc
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def _mutate_locked(state, handle, index, names, kinds, action):
    """The result of ``action``, or the NVMLError to raise once the count is saved (never raises it here)."""
    entry = next((g for g in state.get("gpus", []) if g["index"] == index), None)
    code = _host.count_mutation(state, entry, names[0])
    if code:
        return NVMLError(code)
    try:
        dev = _resolve(state, handle, names, kinds)
    except NVMLError as exc:
        return exc
    before = _copy.deepcopy(dev.gpu)
    try:
        return action(dev)
    except (NVMLError, _SimError) as exc:
        dev.gpu.clear()
        dev.gpu.update(before)
        if isinstance(exc, NVMLError):
            return exc
        error = NVMLError(exc.code)
        error.__cause__ = exc
        if getattr(exc, "holders", None):
            error.holders = exc.holders  # a stand-in extra: what holds the GPU ("pid 123 (nvidia-persiste)", ...)
        return error


def _require_mig_enabled(dev):
    if not _models.mig(dev.model) or not dev.gpu["mig"]["current"]:
        _raise(NVML_ERROR_NOT_SUPPORTED)


def _sim(func, *args):
    """Call a gpusim function, turning SimError into the matching NVMLError."""
    try:
        return func(*args)
    except _SimError as exc:
        raise NVMLError(exc.code) from exc


# ---- raw reference helpers (the caller's ctypes buffers) ---------------------------------------
def _ref_target(ref, elem_type):
    """(address, capacity or None) of the buffer behind a ctypes array, pointer or byref()."""
    obj = getattr(ref, "_obj", None)  # byref(x) -> x
    if obj is not None:
        ref = obj
    if isinstance(ref, ctypes.Array):
        return addressof(ref), sizeof(ref) // sizeof(elem_type)
    if isinstance(ref, ctypes._Pointer):  # pylint: disable=protected-access
        return cast(ref, c_void_p).value, None
    if isinstance(ref, (Structure, ctypes._SimpleCData)):  # pylint: disable=protected-access
        return addressof(ref), sizeof(ref) // sizeof(elem_type)
    return _raise(NVML_ERROR_INVALID_ARGUMENT)


def _uint_ref(ref):
    """The c_uint behind byref(c_uint), pointer(c_uint) or a c_uint."""
    obj = getattr(ref, "_obj", None)
    if obj is not None:
        ref = obj
    if isinstance(ref, ctypes._Pointer):  # pylint: disable=protected-access
        ref = ref.contents
    if isinstance(ref, c_uint):
        return ref
    return _raise(NVML_ERROR_INVALID_ARGUMENT)


def _fill(ref, elem_type, values):
    """Write ``values`` into the caller's buffer; INSUFFICIENT_SIZE when it is known to be too small."""
    address, capacity = _ref_target(ref, elem_type)
    if not address:
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    if capacity is not None and capacity < len(values):
        _raise(NVML_ERROR_INSUFFICIENT_SIZE)
    target = cast(c_void_p(address), POINTER(elem_type))
    for i, value in enumerate(values):
        target[i] = value


def _struct_arg(arg, struct_type):
    obj = getattr(arg, "_obj", None)
    if obj is not None:
        arg = obj
    if isinstance(arg, ctypes._Pointer):  # pylint: disable=protected-access
        arg = arg.contents
    if not isinstance(arg, Structure):
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    return arg


def _bytes_or_str(value):
    return value.decode() if isinstance(value, bytes) else str(value)


# ------------------------------------------------------------------------------------------------
# Initialisation and system queries
# ------------------------------------------------------------------------------------------------
def _load_library():
    global _lib_loaded  # pylint: disable=global-statement
    if not _driver_present(_load_state()):
        _raise(NVML_ERROR_LIBRARY_NOT_FOUND)
    _lib_loaded = True


def nvmlInitWithFlags(flags):
    global _refcount  # pylint: disable=global-statement
    _load_library()
    state = _load_state()
    code = _host.fault_for(state, None, ("nvmlInitWithFlags", "nvmlInit"))
    if code:
        _raise(code)
    if not state["driver"].get("loaded", False):
        _raise(NVML_ERROR_DRIVER_NOT_LOADED)
    if _host.version_mismatch(state["driver"]):
        # this library (the installed packages) is not the loaded kernel module's: "RM has detected an NVML/RM
        # version mismatch." until the modules are reloaded or the host reboots. The library's own version rides on
        # the error (a stand-in extra) so that nvidia-smi can print "NVML library version: X" as the real one does.
        error = NVMLError(NVML_ERROR_LIB_RM_VERSION_MISMATCH)
        error.library_version = _host.installed_version(state["driver"])
        raise error
    if state["gpus"] and not _visible(state) and not flags & NVML_INIT_FLAG_NO_GPUS:
        # e.g. open kernel modules on a host with only pre-Turing GPUs: nvidia.ko does not load
        _raise(NVML_ERROR_DRIVER_NOT_LOADED)
    global _session  # pylint: disable=global-statement
    with _lock:
        _refcount += 1
        if _refcount == 1:
            # the first init opens the session: the process holds the GPUs (device nodes open, as libnvidia-ml
            # keeps them) until the matching last nvmlShutdown; NO_ATTACH opens only the control node
            minors = [] if flags & NVML_INIT_FLAG_NO_ATTACH else [int(g.get("minor", g["index"])) for g in _visible(state)]
            _session = _sessions.Session(_store.root_dir(), minors, attach=bool(minors))


def nvmlInit():
    nvmlInitWithFlags(0)


def nvmlShutdown():
    global _refcount  # pylint: disable=global-statement
    if not _lib_loaded:
        _raise(NVML_ERROR_UNINITIALIZED)
    with _lock:
        if _refcount <= 0:
            _raise(NVML_ERROR_UNINITIALIZED)
        _refcount -= 1
        if _refcount == 0:
            _end_session()


def _end_session():
    global _session  # pylint: disable=global-statement
    if _session is not None:
        _session.close()
        _session = None


def nvmlErrorString(result):
    if not _lib_loaded:
        _raise(NVML_ERROR_UNINITIALIZED)
    return _LIB_ERROR_STRINGS.get(result, "Unknown Error")


def nvmlSystemGetDriverVersion():
    return _ready(("nvmlSystemGetDriverVersion",))["driver"]["version"]


def nvmlSystemGetNVMLVersion():
    driver = _ready(("nvmlSystemGetNVMLVersion",))["driver"]
    return "%d.%s" % (int(driver.get("cuda_version", 13000)) // 1000, driver["version"])


def nvmlSystemGetCudaDriverVersion():
    return int(_ready(("nvmlSystemGetCudaDriverVersion",))["driver"].get("cuda_version", 13000))


def nvmlSystemGetCudaDriverVersion_v2():
    return int(_ready(("nvmlSystemGetCudaDriverVersion_v2",))["driver"].get("cuda_version", 13000))


def nvmlSystemGetProcessName(pid):
    state = _ready(("nvmlSystemGetProcessName",))
    for gpu in state["gpus"]:
        for proc in gpu.get("processes", []):
            if proc["pid"] == pid and proc.get("name"):
                return proc["name"]
    try:
        with open("/proc/%d/cmdline" % int(pid), "rb") as handle:
            name = handle.read().split(b"\0")[0].decode(errors="replace")
    except OSError:
        name = ""
    if not name:
        _raise(NVML_ERROR_NOT_FOUND)
    return name


def nvmlDeviceGetCount():
    return len(_visible(_ready(("nvmlDeviceGetCount", "nvmlDeviceGetCount_v2"))))


def nvmlDeviceGetHandleByIndex(index):
    state = _ready(("nvmlDeviceGetHandleByIndex", "nvmlDeviceGetHandleByIndex_v2"))
    gpus = _visible(state)
    if not isinstance(index, int) or not 0 <= index < len(gpus):
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    return _device_handle(gpus[index])


def _handle_for(gpu):
    if gpu.get("lost"):
        _raise(NVML_ERROR_GPU_IS_LOST)
    return _device_handle(gpu)


def _mig_uuid(gpu, inst, ci):
    return "MIG-" + str(_uuid.uuid5(_uuid.NAMESPACE_URL, "%s/gi%d/ci%d" % (gpu["uuid"], inst["id"], ci["id"])))


def nvmlDeviceGetHandleByUUID(uuid):
    state = _ready(("nvmlDeviceGetHandleByUUID",))
    wanted = _bytes_or_str(uuid)
    for gpu in _visible(state):
        if gpu["uuid"] == wanted:
            return _handle_for(gpu)
        for inst, ci in _mig.mig_devices(gpu):
            if _mig_uuid(gpu, inst, ci) == wanted:
                return _mig_device_handle(gpu, inst, ci)
    return _raise(NVML_ERROR_NOT_FOUND)


def _parse_bus_id(text):
    """(domain, bus, device, function) of '0000:18:00.0', '00000000:18:00.0' or '18:00.0'."""
    text = _bytes_or_str(text).strip().lower()
    parts = text.split(":")
    try:
        if len(parts) == 2:
            parts = ["0"] + parts
        domain, bus = int(parts[0], 16), int(parts[1], 16)
        dev, _dot, func = parts[2].partition(".")
        return domain, bus, int(dev, 16), int(func or "0", 16)
    except (ValueError, IndexError):
        return None


def nvmlDeviceGetHandleByPciBusId(pciBusId):
    state = _ready(("nvmlDeviceGetHandleByPciBusId", "nvmlDeviceGetHandleByPciBusId_v2"))
    wanted = _parse_bus_id(pciBusId)
    if wanted is None:
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    for gpu in _visible(state):
        if _parse_bus_id(gpu["pci_bus_id"]) == wanted:
            return _handle_for(gpu)
    return _raise(NVML_ERROR_NOT_FOUND)


def nvmlDeviceGetHandleBySerial(serial):
    state = _ready(("nvmlDeviceGetHandleBySerial",))
    for gpu in _visible(state):
        if gpu["serial"] == _bytes_or_str(serial):
            return _handle_for(gpu)
    return _raise(NVML_ERROR_NOT_FOUND)


# ------------------------------------------------------------------------------------------------
# Device identity
# ------------------------------------------------------------------------------------------------
def nvmlDeviceGetIndex(handle):
    dev = _dev(handle, "nvmlDeviceGetIndex")
    return [g["index"] for g in _visible(dev.state)].index(dev.gpu["index"])


def _mig_ci_info(dev):
    return _mig.ci_profile(dev.model, dev.gi, dev.ci["profile_id"])


def nvmlDeviceGetName(handle):
    dev = _dev(handle, "nvmlDeviceGetName", mig_ok=True)
    if dev.is_mig:
        return "%s %s" % (dev.model["name"], _mig_ci_info(dev)["name"])
    return dev.model["name"]


def nvmlDeviceGetUUID(handle):
    dev = _dev(handle, "nvmlDeviceGetUUID", mig_ok=True)
    if dev.is_mig:
        return _mig_uuid(dev.gpu, dev.gi, dev.ci)
    return dev.gpu["uuid"]


def nvmlDeviceGetSerial(handle):
    return _dev(handle, "nvmlDeviceGetSerial").gpu["serial"]


def nvmlDeviceGetMinorNumber(handle):
    return int(_dev(handle, "nvmlDeviceGetMinorNumber").gpu["minor"])


def nvmlDeviceGetBrand(handle):
    return int(_dev(handle, "nvmlDeviceGetBrand").model["brand"])


def nvmlDeviceGetVbiosVersion(handle):
    return _dev(handle, "nvmlDeviceGetVbiosVersion").model["vbios_version"]


def nvmlDeviceGetBoardPartNumber(handle):
    return _dev(handle, "nvmlDeviceGetBoardPartNumber").model["board_part_number"]


def nvmlDeviceGetInforomImageVersion(handle):
    return _dev(handle, "nvmlDeviceGetInforomImageVersion").model["inforom_image_version"]


def _pci_info(dev, struct):
    domain, bus, device, func = _parse_bus_id(dev.gpu["pci_bus_id"])
    model = dev.model
    struct.domain = domain
    struct.bus = bus
    struct.device = device
    struct.pciDeviceId = (model["pci_device_id"] << 16) | model["pci_vendor_id"]
    struct.pciSubSystemId = (model["pci_subsystem_id"] << 16) | model["pci_subsystem_vendor_id"]
    legacy = "%04x:%02x:%02x.%x" % (domain, bus, device, func)
    full = "%08x:%02x:%02x.%x" % (domain, bus, device, func)
    return legacy.upper(), full.upper()


def nvmlDeviceGetPciInfo_v3(handle):
    dev = _dev(handle, ("nvmlDeviceGetPciInfo_v3", "nvmlDeviceGetPciInfo"), mig_ok=True)
    info = nvmlPciInfo_t()
    legacy, full = _pci_info(dev, info)
    info.busIdLegacy = legacy
    info.busId = full
    return info


def nvmlDeviceGetPciInfo(handle):
    return nvmlDeviceGetPciInfo_v3(handle)


def nvmlDeviceGetArchitecture(device):
    return int(_dev(device, "nvmlDeviceGetArchitecture", mig_ok=True).model["architecture"])


def nvmlDeviceGetCudaComputeCapability(handle):
    major, minor = _dev(handle, "nvmlDeviceGetCudaComputeCapability", mig_ok=True).model["compute_capability"]
    return (major, minor)


def nvmlDeviceGetBoardId(handle):
    dev = _dev(handle, "nvmlDeviceGetBoardId")
    bus, device = _parse_bus_id(dev.gpu["pci_bus_id"])[1:3]
    return (bus << 8) | device


def nvmlDeviceGetMultiGpuBoard(handle):
    return int(_dev(handle, "nvmlDeviceGetMultiGpuBoard").model.get("multi_gpu_board", 0))


def nvmlDeviceGetSupportedEventTypes(handle):
    return int(_dev(handle, "nvmlDeviceGetSupportedEventTypes").model.get("supported_event_types", 0))


def nvmlDeviceGetNumaNodeId(handle):
    dev = _dev(handle, "nvmlDeviceGetNumaNodeId")
    node = dev.model.get("numa_node")
    if node is None:
        _raise(NVML_ERROR_NOT_SUPPORTED)
    return int(node)


# ------------------------------------------------------------------------------------------------
# Memory, processes
# ------------------------------------------------------------------------------------------------
def _vgpu_fb(dev):
    sizes = {t["id"]: t["framebuffer_bytes"] for t in _models.vgpu_types(dev.model)}
    return sum(sizes.get(v["type_id"], 0) for v in dev.gpu.get("vgpu_instances", []))


def _processes(dev):
    procs = dev.gpu.get("processes", [])
    if dev.is_mig:
        procs = [p for p in procs if p.get("gi") == dev.gi["id"] and p.get("ci") == dev.ci["id"]]
    return procs


def nvmlDeviceGetMemoryInfo(handle, version=None):
    dev = _dev(handle, ("nvmlDeviceGetMemoryInfo", "nvmlDeviceGetMemoryInfo_v2"), mig_ok=True)
    if dev.is_mig:
        total = _models.gi_profile_by_id(dev.model, dev.gi["profile_id"])["memorySizeMB"] << 20
        reserved = 0
        used = sum(p["used_memory"] for p in dev.gpu.get("processes", []) if p.get("gi") == dev.gi["id"])
    else:
        total = dev.model["memory_total_bytes"]
        reserved = dev.model["memory_reserved_bytes"]
        used = sum(p["used_memory"] for p in dev.gpu.get("processes", [])) + _vgpu_fb(dev)
    if not version:
        mem = c_nvmlMemory_t()
        mem.total = total
        mem.used = min(total, reserved + used)
        mem.free = total - mem.used
        return mem
    if version != nvmlMemory_v2:
        _raise(NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
    mem2 = c_nvmlMemory_v2_t()
    mem2.version = version
    mem2.total = total
    mem2.reserved = reserved
    mem2.used = min(total - reserved, used)
    mem2.free = total - reserved - mem2.used
    return mem2


def nvmlDeviceGetBAR1MemoryInfo(handle):
    dev = _dev(handle, "nvmlDeviceGetBAR1MemoryInfo")
    bar1 = c_nvmlBAR1Memory_t()
    bar1.bar1Total = dev.model["bar1"]["total_bytes"]
    bar1.bar1Used = dev.model["bar1"]["used_bytes"]
    bar1.bar1Free = bar1.bar1Total - bar1.bar1Used
    return bar1


def _process_list(handle, kind, names):
    dev = _dev(handle, names, mig_ok=True)
    result = []
    for proc in _processes(dev):
        if proc.get("type", "compute") != kind:
            continue
        result.append(nvmlFriendlyObject({
            "pid": proc["pid"],
            "usedGpuMemory": proc["used_memory"],
            "gpuInstanceId": 0xFFFFFFFF if proc.get("gi") is None else proc["gi"],
            "computeInstanceId": 0xFFFFFFFF if proc.get("ci") is None else proc["ci"],
        }))
    return result


def nvmlDeviceGetComputeRunningProcesses_v3(handle):
    return _process_list(handle, "compute", ("nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetComputeRunningProcesses"))


def nvmlDeviceGetComputeRunningProcesses(handle):
    return nvmlDeviceGetComputeRunningProcesses_v3(handle)


def nvmlDeviceGetGraphicsRunningProcesses_v3(handle):
    return _process_list(handle, "graphics", ("nvmlDeviceGetGraphicsRunningProcesses_v3", "nvmlDeviceGetGraphicsRunningProcesses"))


def nvmlDeviceGetGraphicsRunningProcesses(handle):
    return nvmlDeviceGetGraphicsRunningProcesses_v3(handle)


# ------------------------------------------------------------------------------------------------
# Modes
# ------------------------------------------------------------------------------------------------
def nvmlDeviceGetPersistenceMode(handle):
    return int(_dev(handle, "nvmlDeviceGetPersistenceMode").gpu["persistence"])


def nvmlDeviceGetEccMode(handle):
    dev = _dev(handle, "nvmlDeviceGetEccMode")
    if not _settings.ecc_supported(dev.model):
        _raise(NVML_ERROR_NOT_SUPPORTED)
    ecc = dev.gpu["ecc"]
    return [int(ecc["current"]), int(ecc["pending"])]


def nvmlDeviceGetComputeMode(handle):
    dev = _dev(handle, "nvmlDeviceGetComputeMode")
    return _settings.compute_mode(dev.gpu, dev.model)


def _setter(handle, name, change):
    """A setting's setter: root only (NO_PERMISSION otherwise, as the driver answers; the call is still counted), then
    ``change(dev)`` on the state (gpusim.settings), under the state lock."""
    def action(dev):
        if os.geteuid() != 0:
            _raise(NVML_ERROR_NO_PERMISSION)
        return _sim(change, dev)
    _mutate(handle, name, (_KIND_DEVICE,), action)


def nvmlDeviceSetEccMode(handle, mode):
    _setter(handle, "nvmlDeviceSetEccMode", lambda dev: _settings.set_ecc_mode(dev.gpu, dev.model, mode))


def nvmlDeviceSetPersistenceMode(handle, mode):
    _setter(handle, "nvmlDeviceSetPersistenceMode", lambda dev: _settings.set_gpu_persistence(dev.gpu, mode))


def nvmlDeviceSetComputeMode(handle, mode):
    _setter(handle, "nvmlDeviceSetComputeMode", lambda dev: _settings.set_compute_mode(dev.gpu, mode))


def nvmlDeviceSetPowerManagementLimit(handle, limit):
    _setter(handle, "nvmlDeviceSetPowerManagementLimit", lambda dev: _settings.set_power_limit(dev.gpu, dev.model, limit))


def nvmlDeviceSetApplicationsClocks(handle, maxMemClockMHz, maxGraphicsClockMHz):
    _setter(handle, "nvmlDeviceSetApplicationsClocks",
            lambda dev: _settings.set_applications_clocks(dev.gpu, dev.model, maxMemClockMHz, maxGraphicsClockMHz))


def nvmlDeviceResetApplicationsClocks(handle):
    _setter(handle, "nvmlDeviceResetApplicationsClocks", lambda dev: _settings.reset_applications_clocks(dev.gpu, dev.model))


def nvmlDeviceSetGpuLockedClocks(handle, minGpuClockMHz, maxGpuClockMHz):
    _setter(handle, "nvmlDeviceSetGpuLockedClocks",
            lambda dev: _settings.set_locked_clocks(dev.gpu, dev.model, "gpu", minGpuClockMHz, maxGpuClockMHz))


def nvmlDeviceResetGpuLockedClocks(handle):
    _setter(handle, "nvmlDeviceResetGpuLockedClocks", lambda dev: _settings.reset_locked_clocks(dev.gpu, dev.model, "gpu"))


def nvmlDeviceSetMemoryLockedClocks(handle, minMemClockMHz, maxMemClockMHz):
    _setter(handle, "nvmlDeviceSetMemoryLockedClocks",
            lambda dev: _settings.set_locked_clocks(dev.gpu, dev.model, "memory", minMemClockMHz, maxMemClockMHz))


def nvmlDeviceResetMemoryLockedClocks(handle):
    _setter(handle, "nvmlDeviceResetMemoryLockedClocks", lambda dev: _settings.reset_locked_clocks(dev.gpu, dev.model, "memory"))


def nvmlDeviceGetSupportedMemoryClocks(handle):
    return _sim(_settings.memory_clocks, _dev(handle, "nvmlDeviceGetSupportedMemoryClocks").model)


def nvmlDeviceGetSupportedGraphicsClocks(handle, memoryClockMHz):
    return _sim(_settings.graphics_clocks, _dev(handle, "nvmlDeviceGetSupportedGraphicsClocks").model, memoryClockMHz)


def nvmlDeviceGetVirtualizationMode(handle):
    return int(_dev(handle, "nvmlDeviceGetVirtualizationMode").gpu["virtualization_mode"])


def nvmlDeviceGetGspFirmwareMode(handle, isEnabled=c_uint(), defaultMode=c_uint()):  # pylint: disable=dangerous-default-value
    dev = _dev(handle, "nvmlDeviceGetGspFirmwareMode")
    enabled = 1 if dev.model.get("gsp_firmware") else 0
    is_reference = type(isEnabled) is not c_uint  # pylint: disable=unidiomatic-typecheck
    _uint_ref(isEnabled).value = enabled
    _uint_ref(defaultMode).value = enabled
    return NVML_SUCCESS if is_reference else [enabled, enabled]


def nvmlDeviceGetGspFirmwareVersion(handle, version=None):
    dev = _dev(handle, "nvmlDeviceGetGspFirmwareVersion")
    if not dev.model.get("gsp_firmware"):
        _raise(NVML_ERROR_NOT_SUPPORTED)
    text = dev.state["driver"]["version"].encode()
    if version is None:
        return text  # the real binding returns the raw char array value (bytes)
    target = getattr(version, "_obj", version)
    ctypes.memmove(addressof(target), text + b"\0", min(len(text) + 1, sizeof(target)))
    return NVML_SUCCESS


def nvmlDeviceGetMigMode(device):
    dev = _dev(device, "nvmlDeviceGetMigMode")
    if not _models.mig(dev.model):
        _raise(NVML_ERROR_NOT_SUPPORTED)
    return [int(dev.gpu["mig"]["current"]), int(dev.gpu["mig"]["pending"])]


def nvmlDeviceSetMigMode(device, mode):
    # every other process's NVML session holds the GPU (read only here: the warm path never looks at sessions)
    return _mutate(device, "nvmlDeviceSetMigMode", (_KIND_DEVICE,),
                   lambda dev: _host.set_mig_mode(dev.gpu, mode, dev.state, _sessions.others(_store.root_dir())))


def nvmlDeviceGetMaxMigDeviceCount(device):
    dev = _dev(device, "nvmlDeviceGetMaxMigDeviceCount")
    section = _models.mig(dev.model)
    if not section:
        _raise(NVML_ERROR_NOT_SUPPORTED)
    return int(section["max_mig_devices"]) if dev.gpu["mig"]["current"] else 0


def nvmlDeviceGetMigDeviceHandleByIndex(device, index):
    dev = _dev(device, "nvmlDeviceGetMigDeviceHandleByIndex")
    if not _models.mig(dev.model):
        _raise(NVML_ERROR_NOT_SUPPORTED)
    devices = _mig.mig_devices(dev.gpu) if dev.gpu["mig"]["current"] else []
    if not isinstance(index, int) or not 0 <= index < len(devices):
        _raise(NVML_ERROR_NOT_FOUND)
    inst, ci = devices[index]
    return _mig_device_handle(dev.gpu, inst, ci)


def nvmlDeviceIsMigDeviceHandle(device):
    dev = _dev(device, "nvmlDeviceIsMigDeviceHandle", mig_ok=True)
    return c_uint(1 if dev.is_mig else 0)


def nvmlDeviceGetGpuInstanceId(device):
    dev = _dev(device, "nvmlDeviceGetGpuInstanceId", mig_ok=True)
    if not dev.is_mig:
        _raise(NVML_ERROR_NOT_SUPPORTED)
    return int(dev.gi["id"])


def nvmlDeviceGetComputeInstanceId(device):
    dev = _dev(device, "nvmlDeviceGetComputeInstanceId", mig_ok=True)
    if not dev.is_mig:
        _raise(NVML_ERROR_NOT_SUPPORTED)
    return int(dev.ci["id"])


def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(migDevice):
    dev = _dev(migDevice, "nvmlDeviceGetDeviceHandleFromMigDeviceHandle", mig_ok=True)
    if not dev.is_mig:
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    return _device_handle(dev.gpu)


def nvmlDeviceGetAttributes_v2(device):
    dev = _dev(device, ("nvmlDeviceGetAttributes_v2", "nvmlDeviceGetAttributes"), mig_ok=True)
    if not dev.is_mig:
        _raise(NVML_ERROR_NOT_SUPPORTED)
    gprof = _models.gi_profile_by_id(dev.model, dev.gi["profile_id"])
    info = _mig_ci_info(dev)
    attrs = c_nvmlDeviceAttributes()
    attrs.multiprocessorCount = info["multiprocessorCount"]
    attrs.sharedCopyEngineCount = info["sharedCopyEngineCount"]
    attrs.sharedDecoderCount = info["sharedDecoderCount"]
    attrs.sharedEncoderCount = info["sharedEncoderCount"]
    attrs.sharedJpegCount = info["sharedJpegCount"]
    attrs.sharedOfaCount = info["sharedOfaCount"]
    attrs.gpuInstanceSliceCount = gprof["sliceCount"]
    attrs.computeInstanceSliceCount = info["sliceCount"]
    attrs.memorySizeMB = gprof["memorySizeMB"]
    return attrs


def nvmlDeviceGetAttributes(device):
    return nvmlDeviceGetAttributes_v2(device)


# ------------------------------------------------------------------------------------------------
# GPU instances
# ------------------------------------------------------------------------------------------------
def _gi_profile_struct(prof, version):
    if version == 2:
        info = c_nvmlGpuInstanceProfileInfo_v2_t()
        info.name = prof["name"]
    else:
        info = c_nvmlGpuInstanceProfileInfo_t()
    for field in ("id", "isP2pSupported", "sliceCount", "instanceCount", "multiprocessorCount", "copyEngineCount",
                  "decoderCount", "encoderCount", "jpegCount", "ofaCount", "memorySizeMB"):
        setattr(info, field, prof[field])
    return info


def nvmlDeviceGetGpuInstanceProfileInfo(device, profile, version=2):
    if version not in (1, 2):
        _raise(NVML_ERROR_FUNCTION_NOT_FOUND)
    dev = _dev(device, ("nvmlDeviceGetGpuInstanceProfileInfo", "nvmlDeviceGetGpuInstanceProfileInfoV"))
    section = _models.mig(dev.model)
    if not section:
        _raise(NVML_ERROR_NOT_SUPPORTED)
    if not isinstance(profile, int) or not 0 <= profile < NVML_GPU_INSTANCE_PROFILE_COUNT:
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    prof = _models.gi_profile_by_enum(dev.model, profile)
    if prof is None:
        _raise(NVML_ERROR_NOT_SUPPORTED)
    return _gi_profile_struct(prof, version)


nvmlDeviceGetGpuInstanceProfileInfoV = nvmlDeviceGetGpuInstanceProfileInfo


def nvmlDeviceGetGpuInstanceProfileInfoById(device, profileId):
    dev = _dev(device, ("nvmlDeviceGetGpuInstanceProfileInfoById", "nvmlDeviceGetGpuInstanceProfileInfoByIdV"))
    return _gi_profile_struct(_sim(_mig.gi_profile, dev.model, profileId), 2)


nvmlDeviceGetGpuInstanceProfileInfoByIdV = nvmlDeviceGetGpuInstanceProfileInfoById


def nvmlDeviceGetGpuInstanceRemainingCapacity(device, profileId):
    dev = _dev(device, "nvmlDeviceGetGpuInstanceRemainingCapacity")
    prof = _sim(_mig.gi_profile, dev.model, profileId)
    return _mig.remaining_capacity(dev.gpu, dev.model, prof)


def nvmlDeviceGetGpuInstancePossiblePlacements(device, profileId, placementsRef, countRef):
    dev = _dev(device, ("nvmlDeviceGetGpuInstancePossiblePlacements", "nvmlDeviceGetGpuInstancePossiblePlacements_v2"))
    prof = _sim(_mig.gi_profile, dev.model, profileId)
    count = _uint_ref(countRef)
    starts = sorted(prof["placements"]["starts"])
    if placementsRef is not None:
        _fill(placementsRef, c_nvmlGpuInstancePlacement_t,
              [c_nvmlGpuInstancePlacement_t(start, prof["placements"]["size"]) for start in starts])
    count.value = len(starts)
    return NVML_SUCCESS


def _create_gi(dev, profile_id, start):
    _require_mig_enabled(dev)
    inst = _mig.create_gi(dev.gpu, dev.model, profile_id, start)
    return _gi_handle(dev.gpu, inst)


def nvmlDeviceCreateGpuInstance(device, profileId):
    return _mutate(device, "nvmlDeviceCreateGpuInstance", (_KIND_DEVICE,), lambda dev: _create_gi(dev, profileId, None))


def nvmlDeviceCreateGpuInstanceWithPlacement(device, profileId, placement):
    where = _struct_arg(placement, c_nvmlGpuInstancePlacement_t)
    start, size = int(where.start), int(where.size)

    def action(dev):
        prof = _mig.gi_profile(dev.model, profileId)
        if size != prof["placements"]["size"]:
            raise _SimError(NVML_ERROR_INVALID_ARGUMENT, "placement size %d does not match profile" % size)
        return _create_gi(dev, profileId, start)
    return _mutate(device, "nvmlDeviceCreateGpuInstanceWithPlacement", (_KIND_DEVICE,), action)


def nvmlGpuInstanceDestroy(gpuInstance):
    def action(dev):
        _mig.destroy_gi(dev.gpu, dev.gi["id"])
        return NVML_SUCCESS
    return _mutate(gpuInstance, "nvmlGpuInstanceDestroy", (_KIND_GPU_INSTANCE,), action)


def nvmlDeviceGetGpuInstances(device, profileId, gpuInstancesRef, countRef):
    dev = _dev(device, "nvmlDeviceGetGpuInstances")
    _require_mig_enabled(dev)
    _sim(_mig.gi_profile, dev.model, profileId)
    count = _uint_ref(countRef)
    if gpuInstancesRef is None:
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    found = [inst for inst in dev.gpu.get("gpu_instances", []) if inst["profile_id"] == profileId]
    _fill(gpuInstancesRef, c_nvmlGpuInstance_t, [_gi_handle(dev.gpu, inst) for inst in found])
    count.value = len(found)
    return NVML_SUCCESS


def nvmlDeviceGetGpuInstanceById(device, gpuInstanceId):
    dev = _dev(device, "nvmlDeviceGetGpuInstanceById")
    _require_mig_enabled(dev)
    return _gi_handle(dev.gpu, _sim(_mig.find_gi, dev.gpu, gpuInstanceId))


def nvmlGpuInstanceGetInfo(gpuInstance):
    dev = _gpu_instance(gpuInstance, "nvmlGpuInstanceGetInfo")
    info = c_nvmlGpuInstanceInfo_t()
    info.device = _device_handle(dev.gpu)
    info.id = dev.gi["id"]
    info.profileId = dev.gi["profile_id"]
    info.placement = c_nvmlGpuInstancePlacement_t(dev.gi["start"], dev.gi["size"])
    return info


# ------------------------------------------------------------------------------------------------
# Compute instances
# ------------------------------------------------------------------------------------------------
def _ci_profile_by_enum(dev, profile):
    gprof = _models.gi_profile_by_id(dev.model, dev.gi["profile_id"])
    for cprof in _models.ci_profiles_for(dev.model, gprof):
        if cprof["enum"] == profile:
            return _models.ci_profile_info(dev.model, gprof, cprof)
    return _raise(NVML_ERROR_NOT_SUPPORTED)


def nvmlGpuInstanceGetComputeInstanceProfileInfo(device, profile, engProfile, version=2):
    if version not in (1, 2):
        _raise(NVML_ERROR_FUNCTION_NOT_FOUND)
    dev = _gpu_instance(device, ("nvmlGpuInstanceGetComputeInstanceProfileInfo", "nvmlGpuInstanceGetComputeInstanceProfileInfoV"))
    if not 0 <= profile < NVML_COMPUTE_INSTANCE_PROFILE_COUNT or engProfile != NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED:
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    prof = _ci_profile_by_enum(dev, profile)
    if version == 2:
        info = c_nvmlComputeInstanceProfileInfo_v2_t()
        info.name = prof["name"]
    else:
        info = c_nvmlComputeInstanceProfileInfo_t()
    for field in ("id", "sliceCount", "instanceCount", "multiprocessorCount", "sharedCopyEngineCount", "sharedDecoderCount",
                  "sharedEncoderCount", "sharedJpegCount", "sharedOfaCount"):
        setattr(info, field, prof[field])
    return info


nvmlGpuInstanceGetComputeInstanceProfileInfoV = nvmlGpuInstanceGetComputeInstanceProfileInfo


def nvmlGpuInstanceGetComputeInstanceRemainingCapacity(gpuInstance, profileId):
    dev = _gpu_instance(gpuInstance, "nvmlGpuInstanceGetComputeInstanceRemainingCapacity")
    return _sim(_mig.ci_remaining_capacity, dev.model, dev.gi, profileId)


def nvmlGpuInstanceGetComputeInstancePossiblePlacements(gpuInstance, profileId, placementsRef, countRef):
    dev = _gpu_instance(gpuInstance, "nvmlGpuInstanceGetComputeInstancePossiblePlacements")
    info = _sim(_mig.ci_profile, dev.model, dev.gi, profileId)
    count = _uint_ref(countRef)
    starts = sorted(info["placements"]["starts"])
    if placementsRef is not None:
        _fill(placementsRef, c_nvmlComputeInstancePlacement_t,
              [c_nvmlComputeInstancePlacement_t(start, info["placements"]["size"]) for start in starts])
    count.value = len(starts)
    return NVML_SUCCESS


def _create_ci(dev, profile_id, start):
    ci = _mig.create_ci(dev.gpu, dev.model, dev.gi, profile_id, start)
    return _ci_handle(dev.gpu, dev.gi, ci)


def nvmlGpuInstanceCreateComputeInstance(gpuInstance, profileId):
    return _mutate(gpuInstance, "nvmlGpuInstanceCreateComputeInstance", (_KIND_GPU_INSTANCE,),
                   lambda dev: _create_ci(dev, profileId, None))


def nvmlGpuInstanceCreateComputeInstanceWithPlacement(gpuInstance, profileId, placement):
    where = _struct_arg(placement, c_nvmlComputeInstancePlacement_t)
    start, size = int(where.start), int(where.size)

    def action(dev):
        info = _mig.ci_profile(dev.model, dev.gi, profileId)
        if size != info["placements"]["size"]:
            raise _SimError(NVML_ERROR_INVALID_ARGUMENT, "placement size %d does not match profile" % size)
        return _create_ci(dev, profileId, start)
    return _mutate(gpuInstance, "nvmlGpuInstanceCreateComputeInstanceWithPlacement", (_KIND_GPU_INSTANCE,), action)


def nvmlComputeInstanceDestroy(computeInstance):
    def action(dev):
        _mig.destroy_ci(dev.gpu, dev.gi, dev.ci["id"])
        return NVML_SUCCESS
    return _mutate(computeInstance, "nvmlComputeInstanceDestroy", (_KIND_COMPUTE_INSTANCE,), action)


def nvmlGpuInstanceGetComputeInstances(gpuInstance, profileId, computeInstancesRef, countRef):
    dev = _gpu_instance(gpuInstance, "nvmlGpuInstanceGetComputeInstances")
    _sim(_mig.ci_profile, dev.model, dev.gi, profileId)
    count = _uint_ref(countRef)
    if computeInstancesRef is None:
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    found = [ci for ci in dev.gi["compute_instances"] if ci["profile_id"] == profileId]
    _fill(computeInstancesRef, c_nvmlComputeInstance_t, [_ci_handle(dev.gpu, dev.gi, ci) for ci in found])
    count.value = len(found)
    return NVML_SUCCESS


def nvmlGpuInstanceGetComputeInstanceById(gpuInstance, computeInstanceId):
    dev = _gpu_instance(gpuInstance, "nvmlGpuInstanceGetComputeInstanceById")
    return _ci_handle(dev.gpu, dev.gi, _sim(_mig.find_ci, dev.gi, computeInstanceId))


def nvmlComputeInstanceGetInfo_v2(computeInstance):
    dev = _compute_instance(computeInstance, ("nvmlComputeInstanceGetInfo_v2", "nvmlComputeInstanceGetInfo"))
    info = c_nvmlComputeInstanceInfo_t()
    info.device = _device_handle(dev.gpu)
    info.gpuInstance = _gi_handle(dev.gpu, dev.gi)
    info.id = dev.ci["id"]
    info.profileId = dev.ci["profile_id"]
    info.placement = c_nvmlComputeInstancePlacement_t(dev.ci["start"], dev.ci["size"])
    return info


def nvmlComputeInstanceGetInfo(computeInstance):
    return nvmlComputeInstanceGetInfo_v2(computeInstance)


# ------------------------------------------------------------------------------------------------
# vGPU (host side)
# ------------------------------------------------------------------------------------------------
def _vgpu_dev(handle, name):
    dev = _dev(handle, name)
    if not dev.state.get("vgpu_host") or not _models.vgpu_types(dev.model):
        _raise(NVML_ERROR_NOT_SUPPORTED)
    return dev


def nvmlDeviceGetHostVgpuMode(handle):
    return int(_vgpu_dev(handle, "nvmlDeviceGetHostVgpuMode").model["vgpu"]["host_vgpu_mode"])


def nvmlDeviceGetSupportedVgpus(handle):
    dev = _vgpu_dev(handle, "nvmlDeviceGetSupportedVgpus")
    return [t["id"] for t in _models.vgpu_types(dev.model)]


def nvmlDeviceGetCreatableVgpus(handle):
    dev = _vgpu_dev(handle, "nvmlDeviceGetCreatableVgpus")
    if dev.gpu["mig"]["current"]:
        return []
    return _host.creatable_vgpu_types(dev.gpu)


def nvmlDeviceGetActiveVgpus(handle):
    dev = _vgpu_dev(handle, "nvmlDeviceGetActiveVgpus")
    return [v["id"] for v in dev.gpu.get("vgpu_instances", [])]


def _vgpu_type(vgpuTypeId, name):
    state = _ready((name,))
    if not state.get("vgpu_host"):
        _raise(NVML_ERROR_NOT_SUPPORTED)
    found = _models.vgpu_type(vgpuTypeId)
    if found is None:
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    return found[1]


def nvmlVgpuTypeGetName(vgpuTypeId):
    return _vgpu_type(vgpuTypeId, "nvmlVgpuTypeGetName")["name"]


def nvmlVgpuTypeGetClass(vgpuTypeId):
    return _vgpu_type(vgpuTypeId, "nvmlVgpuTypeGetClass")["class"]


def nvmlVgpuTypeGetFramebufferSize(vgpuTypeId):
    return int(_vgpu_type(vgpuTypeId, "nvmlVgpuTypeGetFramebufferSize")["framebuffer_bytes"])


def nvmlVgpuTypeGetMaxInstances(handle, vgpuTypeId):
    dev = _vgpu_dev(handle, "nvmlVgpuTypeGetMaxInstances")
    for vtype in _models.vgpu_types(dev.model):
        if vtype["id"] == vgpuTypeId:
            return int(vtype["max_instances"])
    return _raise(NVML_ERROR_INVALID_ARGUMENT)


def _vgpu_instance(vgpuInstance, name):
    state = _ready((name,))
    if not state.get("vgpu_host"):
        _raise(NVML_ERROR_NOT_SUPPORTED)
    for gpu in _visible(state):
        for inst in gpu.get("vgpu_instances", []):
            if inst["id"] == vgpuInstance:
                if gpu.get("lost"):
                    _raise(NVML_ERROR_GPU_IS_LOST)
                return inst
    return _raise(NVML_ERROR_NOT_FOUND)


def nvmlVgpuInstanceGetType(vgpuInstance):
    return int(_vgpu_instance(vgpuInstance, "nvmlVgpuInstanceGetType")["type_id"])


def nvmlVgpuInstanceGetUUID(vgpuInstance):
    return _vgpu_instance(vgpuInstance, "nvmlVgpuInstanceGetUUID")["uuid"]


def nvmlVgpuInstanceGetMdevUUID(vgpuInstance):
    return _vgpu_instance(vgpuInstance, "nvmlVgpuInstanceGetMdevUUID")["uuid"]


def nvmlVgpuInstanceGetVmID(vgpuInstance):
    inst = _vgpu_instance(vgpuInstance, "nvmlVgpuInstanceGetVmID")
    return (inst.get("vm_id", ""), NVML_VGPU_VM_ID_UUID)


def nvmlVgpuInstanceGetFbUsage(vgpuInstance):
    return int(_vgpu_instance(vgpuInstance, "nvmlVgpuInstanceGetFbUsage").get("fb_usage", 0))


# ------------------------------------------------------------------------------------------------
# Telemetry (static values from the model; busy GPUs get plausible load figures)
# ------------------------------------------------------------------------------------------------
def _metric(dev, key, default):
    return dev.gpu.get("metrics", {}).get(key, default)


def _busy(dev):
    return bool(dev.gpu.get("processes"))


def _utilization(dev):
    util = dev.model["utilization"]
    gpu_util, mem_util = (95, 40) if _busy(dev) else (util["gpu"], util["memory"])
    return _metric(dev, "utilization_gpu", gpu_util), _metric(dev, "utilization_memory", mem_util)


def nvmlDeviceGetUtilizationRates(handle):
    dev = _dev(handle, "nvmlDeviceGetUtilizationRates")
    if _models.mig(dev.model) and dev.gpu["mig"]["current"]:
        # nvml.h: "On MIG-enabled GPUs, querying device utilization rates is not currently supported."
        _raise(NVML_ERROR_NOT_SUPPORTED)
    util = c_nvmlUtilization_t()
    util.gpu, util.memory = _utilization(dev)
    return util


def nvmlDeviceGetEncoderUtilization(handle):
    dev = _dev(handle, "nvmlDeviceGetEncoderUtilization")
    util = dev.model["utilization"]
    return [_metric(dev, "utilization_encoder", util["encoder"]), util["sampling_period_us"]]


def nvmlDeviceGetDecoderUtilization(handle):
    dev = _dev(handle, "nvmlDeviceGetDecoderUtilization")
    util = dev.model["utilization"]
    return [_metric(dev, "utilization_decoder", util["decoder"]), util["sampling_period_us"]]


def _power_usage(dev):
    power = dev.model["power"]
    gpu_util = _utilization(dev)[0]
    idle = power["usage_mw"]
    return int(_metric(dev, "power_usage_mw", idle + (power["enforced_limit_mw"] - idle) * gpu_util * 0.8 / 100))


def nvmlDeviceGetTemperature(handle, sensor):
    dev = _dev(handle, "nvmlDeviceGetTemperature")
    if sensor != NVML_TEMPERATURE_GPU:
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    return int(_metric(dev, "temperature_c", dev.model["temperature_c"] + _utilization(dev)[0] * 30 // 100))


def nvmlDeviceGetPowerUsage(handle):
    return _power_usage(_dev(handle, "nvmlDeviceGetPowerUsage"))


def nvmlDeviceGetTotalEnergyConsumption(handle):
    dev = _dev(handle, "nvmlDeviceGetTotalEnergyConsumption")
    elapsed = max(0.0, time.time() - float(dev.state.get("boot_time", 0)))
    # mW x s = mJ; counted from the model's starting value at boot
    return int(dev.model.get("energy_start_mj", 0) + elapsed * _power_usage(dev))


def nvmlDeviceGetEnforcedPowerLimit(handle):
    dev = _dev(handle, "nvmlDeviceGetEnforcedPowerLimit")
    return _settings.power_limit(dev.gpu, dev.model)


def nvmlDeviceGetPowerManagementLimit(handle):
    dev = _dev(handle, "nvmlDeviceGetPowerManagementLimit")
    return _settings.power_limit(dev.gpu, dev.model)


def nvmlDeviceGetPowerManagementDefaultLimit(handle):
    return int(_dev(handle, "nvmlDeviceGetPowerManagementDefaultLimit").model["power"]["default_limit_mw"])


def nvmlDeviceGetPowerManagementLimitConstraints(handle):
    return list(_sim(_settings.power_constraints, _dev(handle, "nvmlDeviceGetPowerManagementLimitConstraints").model))


_CLOCK_KEYS = {NVML_CLOCK_GRAPHICS: "graphics", NVML_CLOCK_SM: "sm", NVML_CLOCK_MEM: "mem", NVML_CLOCK_VIDEO: "video"}


def _clock(dev, kind, type):
    if type not in _CLOCK_KEYS:
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    return int(dev.model["clocks_mhz"][kind][_CLOCK_KEYS[type]])


def nvmlDeviceGetClockInfo(handle, type):
    dev = _dev(handle, "nvmlDeviceGetClockInfo")
    return _settings.clamp_clock(dev.gpu, _CLOCK_KEYS.get(type, ""), _clock(dev, "current", type))


def nvmlDeviceGetMaxClockInfo(handle, type):
    return _clock(_dev(handle, "nvmlDeviceGetMaxClockInfo"), "max", type)


def _app_clock(clocks, type):
    if type not in (NVML_CLOCK_GRAPHICS, NVML_CLOCK_SM, NVML_CLOCK_MEM):
        _raise(NVML_ERROR_NOT_SUPPORTED if type == NVML_CLOCK_VIDEO else NVML_ERROR_INVALID_ARGUMENT)
    return int(clocks["mem" if type == NVML_CLOCK_MEM else "graphics"])


def nvmlDeviceGetApplicationsClock(handle, type):
    dev = _dev(handle, "nvmlDeviceGetApplicationsClock")
    return _app_clock(_settings.applications_clocks(dev.gpu, dev.model), type)


def nvmlDeviceGetDefaultApplicationsClock(handle, type):
    return _app_clock(_settings.default_applications_clocks(_dev(handle, "nvmlDeviceGetDefaultApplicationsClock").model), type)


def nvmlDeviceGetPerformanceState(handle):
    dev = _dev(handle, "nvmlDeviceGetPerformanceState")
    return int(_metric(dev, "performance_state", dev.model.get("performance_state", 0)))


def nvmlDeviceGetPowerState(handle):
    return nvmlDeviceGetPerformanceState(handle)


def _event_reasons(dev):
    idle = dev.model.get("clocks_event_reasons", nvmlClocksEventReasonGpuIdle)
    return int(_metric(dev, "clocks_event_reasons", nvmlClocksEventReasonNone if _busy(dev) else idle))


def nvmlDeviceGetCurrentClocksEventReasons(handle):
    return _event_reasons(_dev(handle, "nvmlDeviceGetCurrentClocksEventReasons"))


def nvmlDeviceGetCurrentClocksThrottleReasons(handle):
    return _event_reasons(_dev(handle, "nvmlDeviceGetCurrentClocksThrottleReasons"))


def nvmlDeviceGetFanSpeed(handle):
    dev = _dev(handle, "nvmlDeviceGetFanSpeed")
    if not dev.model.get("fan_supported"):
        _raise(NVML_ERROR_NOT_SUPPORTED)
    return int(_metric(dev, "fan_speed", 30))


def nvmlDeviceGetPcieThroughput(device, counter):
    dev = _dev(device, "nvmlDeviceGetPcieThroughput")
    if counter == NVML_PCIE_UTIL_TX_BYTES:
        return int(_metric(dev, "pcie_tx_kbps", dev.model["pcie"]["tx_kbps"]))
    if counter == NVML_PCIE_UTIL_RX_BYTES:
        return int(_metric(dev, "pcie_rx_kbps", dev.model["pcie"]["rx_kbps"]))
    return _raise(NVML_ERROR_INVALID_ARGUMENT)


def nvmlDeviceGetCurrPcieLinkGeneration(handle):
    return int(_dev(handle, "nvmlDeviceGetCurrPcieLinkGeneration").model["pcie"]["cur_gen"])


def nvmlDeviceGetCurrPcieLinkWidth(handle):
    return int(_dev(handle, "nvmlDeviceGetCurrPcieLinkWidth").model["pcie"]["cur_width"])


def nvmlDeviceGetMaxPcieLinkGeneration(handle):
    return int(_dev(handle, "nvmlDeviceGetMaxPcieLinkGeneration").model["pcie"]["max_gen"])


def nvmlDeviceGetMaxPcieLinkWidth(handle):
    return int(_dev(handle, "nvmlDeviceGetMaxPcieLinkWidth").model["pcie"]["max_width"])


def nvmlDeviceGetPcieReplayCounter(handle):
    dev = _dev(handle, "nvmlDeviceGetPcieReplayCounter")
    return int(_metric(dev, "pcie_replay_counter", dev.model["pcie"].get("replay_counter", 0)))


def nvmlDeviceGetTotalEccErrors(handle, errorType, counterType):
    dev = _dev(handle, "nvmlDeviceGetTotalEccErrors")
    if errorType not in (0, 1) or counterType not in (0, 1):
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    if not dev.gpu["ecc"]["current"]:
        _raise(NVML_ERROR_NOT_SUPPORTED)
    return int(_metric(dev, "ecc_errors", dev.model.get("ecc_errors", {}).get("total", 0)))


def nvmlDeviceGetRetiredPages(device, sourceFilter):
    dev = _dev(device, "nvmlDeviceGetRetiredPages")
    if not dev.model.get("retired_pages_supported"):
        _raise(NVML_ERROR_NOT_SUPPORTED)
    if sourceFilter not in (0, 1):
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    return []


def nvmlDeviceGetRemappedRows(device):
    dev = _dev(device, "nvmlDeviceGetRemappedRows")
    rows = dev.model.get("remapped_rows")
    if rows is None:
        _raise(NVML_ERROR_NOT_SUPPORTED)
    corr, unc, pending, failure = _metric(dev, "remapped_rows", rows)
    return (corr, unc, pending, failure)


# ------------------------------------------------------------------------------------------------
# Field values and GRID licensing (read-only getters)
# ------------------------------------------------------------------------------------------------
NVML_FI_DEV_MEMORY_TEMP = 82
NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION = 83
NVML_FI_DEV_REMAPPED_COR = 142
NVML_FI_DEV_REMAPPED_UNC = 143
NVML_FI_DEV_REMAPPED_PENDING = 144
NVML_FI_DEV_REMAPPED_FAILURE = 145
NVML_VALUE_TYPE_DOUBLE = 0
NVML_VALUE_TYPE_UNSIGNED_INT = 1
NVML_VALUE_TYPE_UNSIGNED_LONG = 2
NVML_VALUE_TYPE_UNSIGNED_LONG_LONG = 3
NVML_VALUE_TYPE_SIGNED_LONG_LONG = 4
NVML_VALUE_TYPE_SIGNED_INT = 5
NVML_GRID_LICENSE_FEATURE_CODE_VGPU = 1
NVML_GRID_LICENSE_FEATURE_MAX_COUNT = 3

# Memory (HBM) temperature, NVML field 82, read on the real GPUs (nvidia-smi -q "Memory Current Temp" of
# fixtures/real/h100-80gb-hbm3 and fixtures/real/h200-141gb; the field answered 40 on a live H200, driver 580.159.04).
# Models without a capture answer NotSupported, as GDDR boards do.
_MEMORY_TEMP_C = {"h100-80gb-hbm3": 43, "h200-141gb": 38}


class c_nvmlValue_t(Union):
    _fields_ = [
        ('dVal', c_double),
        ('uiVal', c_uint),
        ('ulVal', c_ulong),
        ('ullVal', c_ulonglong),
        ('sllVal', c_longlong),
        ('siVal', c_int),
        ('usVal', c_ushort),
    ]


class c_nvmlFieldValue_t(_PrintableStructure):
    _fields_ = [
        ('fieldId', c_uint),
        ('scopeId', c_uint),
        ('timestamp', c_longlong),
        ('latencyUsec', c_longlong),
        ('valueType', c_uint),
        ('nvmlReturn', c_uint),
        ('value', c_nvmlValue_t),
    ]


def _field(dev, field_id):
    """(return code, value type, value) of one field; NotSupported for fields the simulator does not model."""
    if field_id == NVML_FI_DEV_MEMORY_TEMP and dev.gpu["model"] in _MEMORY_TEMP_C:
        return NVML_SUCCESS, NVML_VALUE_TYPE_UNSIGNED_INT, int(_metric(dev, "memory_temperature_c", _MEMORY_TEMP_C[dev.gpu["model"]]))
    if field_id == NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION:
        return NVML_SUCCESS, NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, nvmlDeviceGetTotalEnergyConsumption(_device_handle(dev.gpu))
    rows = dev.model.get("remapped_rows")
    remap = {NVML_FI_DEV_REMAPPED_COR: 0, NVML_FI_DEV_REMAPPED_UNC: 1, NVML_FI_DEV_REMAPPED_PENDING: 2, NVML_FI_DEV_REMAPPED_FAILURE: 3}
    if field_id in remap and rows is not None:
        return NVML_SUCCESS, NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, int(_metric(dev, "remapped_rows", rows)[remap[field_id]])
    return NVML_ERROR_NOT_SUPPORTED, NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, 0


def nvmlDeviceGetFieldValues(handle, fieldIds):
    dev = _dev(handle, "nvmlDeviceGetFieldValues")
    values = (c_nvmlFieldValue_t * len(fieldIds))()
    stamp = int(time.time() * 1e6)
    for index, field_id in enumerate(fieldIds):
        field_id, scope = field_id if isinstance(field_id, tuple) else (field_id, 0)
        code, value_type, value = _field(dev, int(field_id))
        entry = values[index]
        entry.fieldId, entry.scopeId, entry.timestamp = int(field_id), int(scope), stamp
        entry.valueType, entry.nvmlReturn = value_type, code
        if value_type == NVML_VALUE_TYPE_UNSIGNED_INT:
            entry.value.uiVal = value
        else:
            entry.value.ullVal = value
    return values


class c_nvmlGridLicenseExpiry_t(_PrintableStructure):
    _fields_ = [
        ('year', c_uint),
        ('month', c_ushort),
        ('day', c_ushort),
        ('hour', c_ushort),
        ('min', c_ushort),
        ('sec', c_ushort),
        ('status', c_uint8),
    ]


class c_nvmlGridLicensableFeature_v4_t(_PrintableStructure):
    _fields_ = [
        ('featureCode', c_uint),
        ('featureState', c_uint),
        ('licenseInfo', c_char * NVML_GRID_LICENSE_BUFFER_SIZE),
        ('productName', c_char * NVML_GRID_LICENSE_BUFFER_SIZE),
        ('featureEnabled', c_uint),
        ('licenseExpiry', c_nvmlGridLicenseExpiry_t),
    ]


class c_nvmlGridLicensableFeatures_v4_t(_PrintableStructure):
    _fields_ = [
        ('isGridLicenseSupported', c_int),
        ('licensableFeaturesCount', c_uint),
        ('gridLicensableFeatures', c_nvmlGridLicensableFeature_v4_t * NVML_GRID_LICENSE_FEATURE_MAX_COUNT),
    ]


def nvmlDeviceGetGridLicensableFeatures_v4(handle):
    """No GRID licensing on a bare-metal or passthrough GPU: a live H200 (driver 580.159.04) answered
    isGridLicenseSupported 0 with no features (tests/unit/exporter/fixtures/real-h200-nvml-dcgm-probe.json)."""
    _dev(handle, "nvmlDeviceGetGridLicensableFeatures_v4")
    return c_nvmlGridLicensableFeatures_v4_t()


def nvmlDeviceGetGridLicensableFeatures(handle):
    return nvmlDeviceGetGridLicensableFeatures_v4(handle)


# ------------------------------------------------------------------------------------------------
# GPM (GPU Performance Monitoring, Hopper and newer): read-only samples and metrics
# ------------------------------------------------------------------------------------------------
# As on a real H200 (tests/unit/fixtures/real-h200-gpm, driver 580.159.04): a sample snapshots counters with its time;
# nvmlGpmMetricsGet gives each metric's rate over the interval between two samples. Measured there and reproduced:
# two untaken samples -> success with every metric's nvmlReturn UNINITIALIZED; one untaken, or the same sample twice
# -> INVALID_ARGUMENT; more than 210 metrics -> INVALID_ARGUMENT; an id it does not know -> that metric's nvmlReturn
# INVALID_ARGUMENT; samples in reverse order -> success with meaningless values (real: NaN and -9.2e15; here NaN);
# nvmlGpmMigSampleGet on a GPU without MIG enabled -> INVALID_ARGUMENT. The counters are gpusim.gpm's: per GPU and
# per MIG GPU instance, from the simulated utilisation and PCIe figures, integrated over time.
NVML_GPM_METRIC_GRAPHICS_UTIL = 1
NVML_GPM_METRIC_SM_UTIL = 2
NVML_GPM_METRIC_SM_OCCUPANCY = 3
NVML_GPM_METRIC_INTEGER_UTIL = 4
NVML_GPM_METRIC_ANY_TENSOR_UTIL = 5
NVML_GPM_METRIC_DFMA_TENSOR_UTIL = 6
NVML_GPM_METRIC_HMMA_TENSOR_UTIL = 7
NVML_GPM_METRIC_IMMA_TENSOR_UTIL = 9
NVML_GPM_METRIC_DRAM_BW_UTIL = 10
NVML_GPM_METRIC_FP64_UTIL = 11
NVML_GPM_METRIC_FP32_UTIL = 12
NVML_GPM_METRIC_FP16_UTIL = 13
NVML_GPM_METRIC_PCIE_TX_PER_SEC = 20
NVML_GPM_METRIC_PCIE_RX_PER_SEC = 21
NVML_GPM_METRIC_NVDEC_0_UTIL = 30
NVML_GPM_METRIC_NVJPG_0_UTIL = 40
NVML_GPM_METRIC_NVOFA_0_UTIL = 50
NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC = 60
NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC = 61
NVML_GPM_METRIC_MAX = 477
NVML_GPM_METRICS_GET_VERSION = 1
NVML_GPM_SUPPORT_VERSION = 1


class struct_c_nvmlGpmSample_t(Structure):
    # opaque in NVML; here a key into _gpm_samples
    _fields_ = [('key', c_uint)]


c_nvmlGpmSample_t = POINTER(struct_c_nvmlGpmSample_t)


class c_metricInfo_t(Structure):
    _fields_ = [
        ("shortName", c_char_p),
        ("longName", c_char_p),
        ("unit", c_char_p),
    ]


class c_nvmlGpmMetric_t(_PrintableStructure):
    _fields_ = [
        ('metricId', c_uint),
        ('nvmlReturn', c_uint),
        ('value', c_double),
        ('metricInfo', c_metricInfo_t)
    ]


class c_nvmlGpmMetricsGet_t(_PrintableStructure):
    _fields_ = [
        ('version', c_uint),
        ('numMetrics', c_uint),
        ('sample1', c_nvmlGpmSample_t),
        ('sample2', c_nvmlGpmSample_t),
        ('metrics', c_nvmlGpmMetric_t * NVML_GPM_METRIC_MAX)
    ]


class c_nvmlGpmSupport_t(_PrintableStructure):
    _fields_ = [
        ('version', c_uint),
        ('isSupportedDevice', c_uint),
    ]


_gpm_lock = threading.Lock()
_gpm_samples = {}  # key -> {"buffer": the structure (kept alive), "taken": None or (uuid, unit, t_ns, counters)}
_gpm_next_key = [1]
_gpm_info = {}  # metric id -> (shortName bytes, unit bytes), kept alive for the c_char_p fields


def _gpm_dev(device, name):
    dev = _dev(device, name)
    if not _gpm.supported(dev.model):
        _raise(NVML_ERROR_NOT_SUPPORTED)
    return dev


def _gpm_entry(gpmSample):
    if not gpmSample:
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    entry = _gpm_samples.get(gpmSample.contents.key)
    if entry is None:  # never allocated here, or freed
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    return entry


def nvmlGpmQueryDeviceSupport(device):
    dev = _dev(device, "nvmlGpmQueryDeviceSupport")
    support = c_nvmlGpmSupport_t()
    support.version = NVML_GPM_SUPPORT_VERSION
    support.isSupportedDevice = int(_gpm.supported(dev.model))
    return support


def nvmlGpmSampleAlloc():
    buffer = struct_c_nvmlGpmSample_t()
    with _gpm_lock:
        buffer.key = _gpm_next_key[0]
        _gpm_next_key[0] += 1
        _gpm_samples[buffer.key] = {"buffer": buffer, "taken": None}
    return pointer(buffer)


def nvmlGpmSampleFree(gpmSample):
    entry = _gpm_entry(gpmSample)
    with _gpm_lock:
        _gpm_samples.pop(entry["buffer"].key, None)


def _gpm_take(dev, unit, gpmSample):
    entry = _gpm_entry(gpmSample)
    now = time.time_ns()
    values = _gpm.counters(dev.gpu, unit, now)
    if values is None:
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    entry["taken"] = (dev.gpu["uuid"], unit, now, values)
    return gpmSample


def nvmlGpmSampleGet(device, gpmSample):
    return _gpm_take(_gpm_dev(device, "nvmlGpmSampleGet"), "gpu", gpmSample)


def nvmlGpmMigSampleGet(device, gpuInstanceId, gpmSample):
    dev = _gpm_dev(device, "nvmlGpmMigSampleGet")
    if not dev.gpu["mig"]["current"]:
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    return _gpm_take(dev, "gi%d" % int(gpuInstanceId), gpmSample)


def _gpm_metric_info(metric_id):
    info = _gpm_info.get(metric_id)
    if info is None:
        short, unit = _gpm.METRIC_INFO[metric_id]
        info = _gpm_info[metric_id] = (short.encode(), unit.encode())
    return info


def nvmlGpmMetricsGet(metricsGet):
    if metricsGet.version != NVML_GPM_METRICS_GET_VERSION:
        _raise(NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
    if metricsGet.numMetrics > _gpm.MAX_METRICS_PER_CALL:
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    first, second = _gpm_entry(metricsGet.sample1), _gpm_entry(metricsGet.sample2)
    if first is second or (first["taken"] is None) != (second["taken"] is None):
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    if first["taken"] is not None and first["taken"][:2] != second["taken"][:2]:
        _raise(NVML_ERROR_INVALID_ARGUMENT)  # samples of different GPUs or instances
    for index in range(metricsGet.numMetrics):
        metric = metricsGet.metrics[index]
        metric_id = int(metric.metricId)
        metric.value = 0.0
        if metric_id not in _gpm.METRIC_INFO:
            metric.nvmlReturn = NVML_ERROR_INVALID_ARGUMENT
            continue
        metric.metricInfo.shortName, metric.metricInfo.unit = _gpm_metric_info(metric_id)
        if first["taken"] is None:
            metric.nvmlReturn = NVML_ERROR_UNINITIALIZED
            continue
        (_unused, unit, start, before), (_unused, _unused, end, after) = first["taken"], second["taken"]
        if metric_id in _gpm.PCIE_METRICS and unit != "gpu":
            metric.nvmlReturn = NVML_ERROR_NOT_SUPPORTED  # PCIe is the whole GPU's: an instance sample has none
            continue
        metric.nvmlReturn = NVML_SUCCESS
        if end <= start:
            metric.value = float("nan")
        elif metric_id in before:
            rate = (after[metric_id] - before[metric_id]) / (end - start) / _gpm.SCALE
            # NVML's PCIe throughput is KB/s (1024 bytes); GPM's is MiB/s
            metric.value = rate * 1024 / (1024 * 1024) if metric_id in _gpm.PCIE_METRICS else rate
    return metricsGet


# ------------------------------------------------------------------------------------------------
# Helpers of the real module that callers sometimes use
# ------------------------------------------------------------------------------------------------
def convertStrBytes(func):
    """Identity decorator kept for API compatibility: every function here already returns str."""
    return func
