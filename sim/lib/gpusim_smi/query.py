"""``nvidia-smi --query-gpu=... --format=csv[,noheader][,nounits]``."""

from __future__ import annotations

import datetime
import typing as t

from . import report
from .nvml import MIB, Gpu, Outcome, Session, error_text, is_not_supported, to_str
from .query_fields import ALIASES, VALID_FIELDS

Getter = t.Callable[["Context", Gpu], Outcome]


class Context:
    """What a query needs beyond one GPU: the session and system-wide values."""

    def __init__(self, session: Session, count: int) -> None:
        self.session = session
        self.count = count


def _system(name: str, fmt: t.Callable[[t.Any], str] = to_str) -> Getter:
    def getter(ctx: Context, _gpu: Gpu) -> Outcome:
        return _fmt(ctx.session.get(name), fmt)
    return getter


def _call(name: str, *args: t.Any, fmt: t.Callable[[t.Any], str] = str) -> Getter:
    def getter(_ctx: Context, gpu: Gpu) -> Outcome:
        return _fmt(gpu.get(name, *args), fmt)
    return getter


def _fmt(outcome: Outcome, fmt: t.Callable[[t.Any], str]) -> Outcome:
    return Outcome(fmt(outcome.value)) if outcome.ok else outcome


def _item(name: str, index: int, fmt: t.Callable[[t.Any], str] = str) -> Getter:
    return _call(name, fmt=lambda value: fmt(value[index]))


def _field(name: str, attr: str, fmt: t.Callable[[t.Any], str] = str) -> Getter:
    return _call(name, fmt=lambda value: fmt(getattr(value, attr)))


def _pci(attr: str, fmt: str) -> Getter:
    def getter(_ctx: Context, gpu: Gpu) -> Outcome:
        return _fmt(gpu.pci(), lambda info: fmt.format(getattr(info, attr)))
    return getter


def _memory(attr: str) -> Getter:
    def getter(_ctx: Context, gpu: Gpu) -> Outcome:
        return _fmt(gpu.memory(), lambda mem: str(_mib(mem, attr)))
    return getter


def _mib(mem: t.Any, attr: str) -> int:
    """A memory figure in MiB; free is derived from the truncated others, as nvidia-smi prints it."""
    if attr == "free":
        return _mib(mem, "total") - _mib(mem, "reserved") - _mib(mem, "used")
    return int(getattr(mem, attr, 0)) // MIB


def _power(value: t.Any) -> str:
    return f"{int(value) / 1000:.2f}"


def _instant_power(_ctx: Context, gpu: Gpu) -> Outcome:
    return _fmt(report.field_value(gpu, report.FI_POWER_INSTANT), _power)


def _memory_temp(_ctx: Context, gpu: Gpu) -> Outcome:
    return _fmt(report.field_value(gpu, report.FI_MEMORY_TEMP), lambda value: str(int(value)))


def _timestamp(_ctx: Context, _gpu: Gpu) -> Outcome:
    return Outcome(datetime.datetime.now().strftime("%Y/%m/%d %H:%M:%S.%f")[:-3])


def _count(ctx: Context, _gpu: Gpu) -> Outcome:
    return Outcome(str(ctx.count))


def _index(_ctx: Context, gpu: Gpu) -> Outcome:
    return Outcome(str(gpu.index))


def _compute_cap(_ctx: Context, gpu: Gpu) -> Outcome:
    return _fmt(gpu.get("nvmlDeviceGetCudaComputeCapability"), lambda cap: f"{cap[0]}.{cap[1]}")


# canonical name -> (unit shown in the header and after the value, getter)
FIELDS: dict[str, tuple[str | None, Getter]] = {
    "timestamp": (None, _timestamp),
    "driver_version": (None, _system("nvmlSystemGetDriverVersion")),
    "count": (None, _count),
    "index": (None, _index),
    "name": (None, _call("nvmlDeviceGetName", fmt=to_str)),
    "serial": (None, _call("nvmlDeviceGetSerial", fmt=to_str)),
    "uuid": (None, _call("nvmlDeviceGetUUID", fmt=to_str)),
    "pci.bus_id": (None, _pci("busId", "{}")),
    "pci.domain": (None, _pci("domain", "0x{:04X}")),
    "pci.bus": (None, _pci("bus", "0x{:02X}")),
    "pci.device": (None, _pci("device", "0x{:02X}")),
    "pci.device_id": (None, _pci("pciDeviceId", "0x{:08X}")),
    "pci.sub_device_id": (None, _pci("pciSubSystemId", "0x{:08X}")),
    "pcie.link.gen.current": (None, _call("nvmlDeviceGetCurrPcieLinkGeneration")),
    "pcie.link.gen.gpucurrent": (None, _call("nvmlDeviceGetCurrPcieLinkGeneration")),
    "pcie.link.gen.max": (None, _call("nvmlDeviceGetMaxPcieLinkGeneration")),
    "pcie.link.gen.gpumax": (None, _call("nvmlDeviceGetGpuMaxPcieLinkGeneration")),
    "pcie.link.width.current": (None, _call("nvmlDeviceGetCurrPcieLinkWidth")),
    "pcie.link.width.max": (None, _call("nvmlDeviceGetMaxPcieLinkWidth")),
    "display_active": (None, _call("nvmlDeviceGetDisplayActive", fmt=report.enabled)),
    "persistence_mode": (None, _call("nvmlDeviceGetPersistenceMode", fmt=report.enabled)),
    "addressing_mode": (None, _call("nvmlDeviceGetAddressingMode", fmt=report.mapped(report.ADDRESSING_MODES))),
    "accounting.mode": (None, _call("nvmlDeviceGetAccountingMode", fmt=report.enabled)),
    "accounting.buffer_size": (None, _call("nvmlDeviceGetAccountingBufferSize")),
    "vbios_version": (None, _call("nvmlDeviceGetVbiosVersion", fmt=to_str)),
    "inforom.img": (None, _call("nvmlDeviceGetInforomImageVersion", fmt=to_str)),
    "inforom.oem": (None, _call("nvmlDeviceGetInforomVersion", report.INFOROM_OEM, fmt=to_str)),
    "inforom.ecc": (None, _call("nvmlDeviceGetInforomVersion", report.INFOROM_ECC, fmt=to_str)),
    "inforom.pwr": (None, _call("nvmlDeviceGetInforomVersion", report.INFOROM_POWER, fmt=to_str)),
    "fan.speed": ("%", _call("nvmlDeviceGetFanSpeed")),
    "pstate": (None, _call("nvmlDeviceGetPerformanceState", fmt=report.pstate)),
    "memory.total": ("MiB", _memory("total")),
    "memory.reserved": ("MiB", _memory("reserved")),
    "memory.used": ("MiB", _memory("used")),
    "memory.free": ("MiB", _memory("free")),
    "compute_mode": (None, _call("nvmlDeviceGetComputeMode", fmt=report.mapped(report.COMPUTE_MODES))),
    "compute_cap": (None, _compute_cap),
    "utilization.gpu": ("%", _field("nvmlDeviceGetUtilizationRates", "gpu")),
    "utilization.memory": ("%", _field("nvmlDeviceGetUtilizationRates", "memory")),
    "utilization.encoder": ("%", _item("nvmlDeviceGetEncoderUtilization", 0)),
    "utilization.decoder": ("%", _item("nvmlDeviceGetDecoderUtilization", 0)),
    "utilization.jpeg": ("%", _item("nvmlDeviceGetJpgUtilization", 0)),
    "utilization.ofa": ("%", _item("nvmlDeviceGetOfaUtilization", 0)),
    "ecc.mode.current": (None, _item("nvmlDeviceGetEccMode", 0, report.enabled)),
    "ecc.mode.pending": (None, _item("nvmlDeviceGetEccMode", 1, report.enabled)),
    "temperature.gpu": (None, _call("nvmlDeviceGetTemperature", report.TEMPERATURE_GPU)),
    "temperature.gpu.tlimit": (None, _call("nvmlDeviceGetMarginTemperature")),
    "temperature.memory": (None, _memory_temp),
    "power.draw": ("W", _call("nvmlDeviceGetPowerUsage", fmt=_power)),
    "power.draw.average": ("W", _call("nvmlDeviceGetPowerUsage", fmt=_power)),
    "power.draw.instant": ("W", _instant_power),
    "power.limit": ("W", _call("nvmlDeviceGetPowerManagementLimit", fmt=_power)),
    "enforced.power.limit": ("W", _call("nvmlDeviceGetEnforcedPowerLimit", fmt=_power)),
    "power.default_limit": ("W", _call("nvmlDeviceGetPowerManagementDefaultLimit", fmt=_power)),
    "power.min_limit": ("W", _item("nvmlDeviceGetPowerManagementLimitConstraints", 0, _power)),
    "power.max_limit": ("W", _item("nvmlDeviceGetPowerManagementLimitConstraints", 1, _power)),
    "clocks.current.graphics": ("MHz", _call("nvmlDeviceGetClockInfo", report.CLOCK_GRAPHICS)),
    "clocks.current.sm": ("MHz", _call("nvmlDeviceGetClockInfo", report.CLOCK_SM)),
    "clocks.current.memory": ("MHz", _call("nvmlDeviceGetClockInfo", report.CLOCK_MEM)),
    "clocks.current.video": ("MHz", _call("nvmlDeviceGetClockInfo", report.CLOCK_VIDEO)),
    "clocks.applications.graphics": ("MHz", _call("nvmlDeviceGetApplicationsClock", report.CLOCK_GRAPHICS)),
    "clocks.applications.memory": ("MHz", _call("nvmlDeviceGetApplicationsClock", report.CLOCK_MEM)),
    "clocks.default_applications.graphics": ("MHz", _call("nvmlDeviceGetDefaultApplicationsClock", report.CLOCK_GRAPHICS)),
    "clocks.default_applications.memory": ("MHz", _call("nvmlDeviceGetDefaultApplicationsClock", report.CLOCK_MEM)),
    "clocks.max.graphics": ("MHz", _call("nvmlDeviceGetMaxClockInfo", report.CLOCK_GRAPHICS)),
    "clocks.max.sm": ("MHz", _call("nvmlDeviceGetMaxClockInfo", report.CLOCK_SM)),
    "clocks.max.memory": ("MHz", _call("nvmlDeviceGetMaxClockInfo", report.CLOCK_MEM)),
    "mig.mode.current": (None, _item("nvmlDeviceGetMigMode", 0, report.enabled)),
    "mig.mode.pending": (None, _item("nvmlDeviceGetMigMode", 1, report.enabled)),
}


class QueryError(Exception):
    """A field list the real tool refuses ('not a valid field') or the stand-in does not render."""

    def __init__(self, name: str, valid: bool) -> None:
        super().__init__(name)
        self.name = name
        self.valid = valid


def resolve(fields: str) -> list[str]:
    """The canonical names of a --query-gpu list; raises QueryError for the first bad one."""
    names = []
    for raw in fields.split(","):
        name = raw.strip()
        canonical = ALIASES.get(name, name)
        if canonical not in VALID_FIELDS:
            raise QueryError(name, False)
        if canonical not in FIELDS:
            raise QueryError(name, True)
        names.append(canonical)
    return names


def header(names: t.Sequence[str]) -> str:
    """The CSV header line: names, with units in brackets (kept even with nounits)."""
    parts = []
    for name in names:
        unit = FIELDS[name][0]
        parts.append(f"{name} [{unit}]" if unit else name)
    return ", ".join(parts)


def row(ctx: Context, gpu: Gpu, names: t.Sequence[str], units: bool) -> str:
    """One CSV line for one GPU; failed values print as [N/A] or [<NVML error>]."""
    values = []
    for name in names:
        unit, getter = FIELDS[name]
        outcome = getter(ctx, gpu)
        if outcome.ok:
            text = str(outcome.value)
            values.append(f"{text} {unit}" if unit and units else text)
        elif is_not_supported(outcome.error):
            values.append("[N/A]")
        else:
            values.append(f"[{error_text(outcome.error)}]")
    return ", ".join(values)
