"""The ``nvidia-smi -q`` report of one GPU, as a tree (see tree.py), built from NVML only.

Layout, element names and value formats follow the real tool (driver 580, DTD
nvsmi_device_v13). Values that differ per GPU or per state come from NVML; the few fields no
NVML call backs here are written with the value the real H100 capture shows (see CONSTANT_*).
"""

from __future__ import annotations

import ctypes
import time
import typing as t

from .nvml import MIB, NA, UINT_NA, Gpu, Outcome, Session, Unavailable, to_str
from .tree import Node, leaf, section

ARCHITECTURES = {
    2: "Kepler", 3: "Maxwell", 4: "Pascal", 5: "Volta", 6: "Turing", 7: "Ampere",
    8: "Ada Lovelace", 9: "Hopper", 10: "Blackwell",
}
BRANDS = {
    0: "Unknown", 1: "Quadro", 2: "Tesla", 3: "NVS", 4: "Grid", 5: "GeForce", 6: "Titan",
    7: "NVIDIA Virtual Applications", 8: "NVIDIA Virtual PC", 9: "NVIDIA Virtual Compute Server",
    10: "NVIDIA RTX Virtual Workstation", 11: "NVIDIA Cloud Gaming", 12: "Quadro RTX",
    13: "NVIDIA RTX", 14: "NVIDIA", 15: "GeForce RTX", 16: "Titan RTX",
}
VIRTUALIZATION_MODES = {0: "None", 1: "Pass-Through", 2: "VGPU", 3: "Host VGPU", 4: "Host VSGA"}
HOST_VGPU_MODES = {0: "Non SR-IOV", 1: "SR-IOV"}
COMPUTE_MODES = {0: "Default", 1: "Exclusive_Thread", 2: "Prohibited", 3: "Exclusive_Process"}
ADDRESSING_MODES = {0: "None", 1: "HMM", 2: "ATS"}
RECOVERY_ACTIONS = {0: "None", 1: "GPU Reset", 2: "Node Reboot", 3: "Drain P2P", 4: "Drain and Reset"}

# Clock event reason bits (nvmlClocksEventReason*), in the order nvidia-smi lists them.
REASON_IDLE, REASON_APP_CLOCKS, REASON_SW_POWER = 0x1, 0x2, 0x4
REASON_HW_SLOWDOWN, REASON_SYNC_BOOST, REASON_SW_THERMAL = 0x8, 0x10, 0x20
REASON_HW_THERMAL, REASON_HW_POWER_BRAKE, REASON_DISPLAY = 0x40, 0x80, 0x100

# NVML field ids (nvmlDeviceGetFieldValues) for values that have no dedicated call.
FI_MEMORY_TEMP = 82
FI_POWER_AVERAGE = 185
FI_POWER_INSTANT = 186
POWER_SCOPE_MEMORY = 2
FI_RECOVERY_ACTION = 230

# NVML enum values used as call arguments.
TEMPERATURE_GPU = 0
CLOCK_GRAPHICS, CLOCK_SM, CLOCK_MEM, CLOCK_VIDEO = 0, 1, 2, 3
PCIE_TX, PCIE_RX = 0, 1
INFOROM_OEM, INFOROM_ECC, INFOROM_POWER = 0, 1, 2
ERROR_CORRECTED, ERROR_UNCORRECTED = 0, 1
VOLATILE_ECC, AGGREGATE_ECC = 0, 1
LOCATION_DRAM, LOCATION_SRAM = 2, 7
RETIRED_SBE, RETIRED_DBE = 0, 1

# Fields without an NVML call in this stand-in: the values of the real H100 capture.
CONSTANT_DISPLAY_MODE = "Requested functionality has been deprecated"
CONSTANT_ZERO_US = "0 us"


def timestamp() -> str:
    """The report timestamp, formatted like the real tool (asctime)."""
    return time.asctime(time.localtime())


def enabled(value: t.Any) -> str:
    """1/0 -> Enabled/Disabled."""
    return "Enabled" if value else "Disabled"


def yes_no(value: t.Any) -> str:
    """1/0 -> Yes/No."""
    return "Yes" if value else "No"


def mib(value: t.Any) -> str:
    """Bytes -> 'N MiB' (truncated, as nvidia-smi does)."""
    return f"{int(value) // MIB} MiB"


def watts(value: t.Any) -> str:
    """Milliwatts -> '700.00 W'."""
    return f"{int(value) / 1000:.2f} W"


def mhz(value: t.Any) -> str:
    """MHz value -> 'N MHz'."""
    return f"{int(value)} MHz"


def percent(value: t.Any) -> str:
    """Percent value -> 'N %'."""
    return f"{int(value)} %"


def celsius(value: t.Any) -> str:
    """Degrees -> 'N C'."""
    return f"{int(value)} C"


def pstate(value: t.Any) -> str:
    """Performance state number -> 'P0' (32 is NVML's 'unknown')."""
    return "Unknown" if int(value) == 32 else f"P{int(value)}"


def cuda_version(value: t.Any) -> str:
    """13000 -> '13.0'."""
    value = int(value)
    return f"{value // 1000}.{value % 1000 // 10}"


def part(outcome: Outcome, index: int, fmt: t.Callable[[t.Any], str] = str) -> str:
    """One element of a list/tuple result (e.g. [current, pending] modes)."""
    return outcome.text(lambda value: fmt(value[index]))


def attr(outcome: Outcome, name: str, fmt: t.Callable[[t.Any], str] = str) -> str:
    """One field of a struct result."""
    return outcome.text(lambda value: fmt(getattr(value, name)))


def mapped(table: dict[int, str]) -> t.Callable[[t.Any], str]:
    """A formatter that looks a NVML enum value up in ``table``."""
    return lambda value: table.get(int(value), "Unknown")


def field_value(gpu: Gpu, field_id: int, scope: int | None = None) -> Outcome:
    """One NVML field value (nvmlDeviceGetFieldValues), with the field's own return code."""
    outcome = gpu.get("nvmlDeviceGetFieldValues", ((field_id, scope) if scope is not None else field_id,))
    if not outcome.ok:
        return outcome
    try:
        entry = outcome.value[0]
        status = int(getattr(entry, "nvmlReturn", 0))
        if status:
            return Outcome(error=_nvml_error(gpu.session, status))
        value = entry.value
        kind = int(getattr(entry, "valueType", 4))
        number = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}.get(kind, "ullVal")
        return Outcome(getattr(value, number, value))
    except (AttributeError, IndexError, TypeError) as exc:
        return Outcome(error=NotImplementedError(str(exc)))


def _nvml_error(session: Session, code: int) -> BaseException:
    """An NVMLError instance for ``code`` from the session's module."""
    base = getattr(session.module, "NVMLError", None)
    if isinstance(base, type):
        try:
            return base(code)
        except TypeError:
            pass
    error = RuntimeError(f"NVML error {code}")
    error.value = code  # type: ignore[attr-defined]
    return error


def _memory_nodes(outcome: Outcome, with_reserved: bool) -> list[Node]:
    """total/reserved/used/free in MiB; free is what is left of the truncated MiB figures, as the real tool prints it."""
    if not outcome.ok:
        names = ["total", "reserved", "used", "free"] if with_reserved else ["total", "used", "free"]
        return [leaf(name, name.capitalize(), outcome.text()) for name in names]
    total = int(outcome.value.total) // MIB
    reserved = int(getattr(outcome.value, "reserved", 0)) // MIB if with_reserved else 0
    used = int(outcome.value.used) // MIB
    nodes = [leaf("total", "Total", f"{total} MiB")]
    if with_reserved:
        nodes.append(leaf("reserved", "Reserved", f"{reserved} MiB"))
    nodes.append(leaf("used", "Used", f"{used} MiB"))
    nodes.append(leaf("free", "Free", f"{total - reserved - used} MiB"))
    return nodes


def _bar1_nodes(outcome: Outcome) -> list[Node]:
    if not outcome.ok:
        return [leaf(name, name.capitalize(), outcome.text()) for name in ("total", "used", "free")]
    total = int(outcome.value.bar1Total) // MIB
    used = int(outcome.value.bar1Used) // MIB
    return [
        leaf("total", "Total", f"{total} MiB"),
        leaf("used", "Used", f"{used} MiB"),
        leaf("free", "Free", f"{total - used} MiB"),
    ]


def mig_section(gpu: Gpu) -> Node:
    """<mig_devices>: one <mig_device> per existing MIG device, or 'None'."""
    devices = []
    for index, handle in gpu.mig_devices():
        session = gpu.session
        attrs = session.get("nvmlDeviceGetAttributes", handle)
        ecc = session.get("nvmlDeviceGetTotalEccErrors", handle, ERROR_UNCORRECTED, VOLATILE_ECC)
        shared = [
            leaf("multiprocessor_count", "Multiprocessor count", attr(attrs, "multiprocessorCount")),
            leaf("copy_engine_count", "Copy Engine count", attr(attrs, "sharedCopyEngineCount")),
            leaf("encoder_count", "Encoder count", attr(attrs, "sharedEncoderCount")),
            leaf("decoder_count", "Decoder count", attr(attrs, "sharedDecoderCount")),
            leaf("ofa_count", "OFA count", attr(attrs, "sharedOfaCount")),
            leaf("jpg_count", "JPG count", attr(attrs, "sharedJpegCount")),
        ]
        memory = session.get("nvmlDeviceGetMemoryInfo", handle, version=session.const("nvmlMemory_v2", 0x02000028))
        devices.append(section("mig_device", f"Device {index}", [
            leaf("index", None, str(index)),
            leaf("gpu_instance_id", "GPU instance ID", session.get("nvmlDeviceGetGpuInstanceId", handle).text()),
            leaf("compute_instance_id", "Compute instance ID", session.get("nvmlDeviceGetComputeInstanceId", handle).text()),
            section("device_attributes", "Device Attributes", [section("shared", "Shared", shared)]),
            section("ecc_error_count", "ECC Errors", [
                section("volatile_count", "Volatile", [leaf("sram_uncorrectable", "SRAM Uncorrectable", ecc.text())]),
            ]),
            section("fb_memory_usage", "FB Memory Usage", _memory_nodes(memory, True)),
            section("bar1_memory_usage", "BAR1 Memory Usage", _bar1_nodes(session.get("nvmlDeviceGetBAR1MemoryInfo", handle))),
        ]))
    if not devices:
        return Node("mig_devices", None, value="None", block=True)
    return section("mig_devices", "MIG devices", devices)


def _reasons(gpu: Gpu) -> list[Node]:
    active = gpu.get("nvmlDeviceGetCurrentClocksEventReasons")
    supported = gpu.get("nvmlDeviceGetSupportedClocksEventReasons")

    def state(bit: int) -> str:
        if not active.ok:
            return active.text()
        if supported.ok and not int(supported.value) & bit:
            return NA
        return "Active" if int(active.value) & bit else "Not Active"

    hw_children = [
        leaf(None, "HW Thermal Slowdown", state(REASON_HW_THERMAL)),
        leaf(None, "HW Power Brake Slowdown", state(REASON_HW_POWER_BRAKE)),
    ]
    prefix = "clocks_event_reason_"
    return [
        leaf(prefix + "gpu_idle", "Idle", state(REASON_IDLE)),
        leaf(prefix + "applications_clocks_setting", "Applications Clocks Setting", state(REASON_APP_CLOCKS)),
        leaf(prefix + "sw_power_cap", "SW Power Cap", state(REASON_SW_POWER)),
        leaf(prefix + "hw_slowdown", None, state(REASON_HW_SLOWDOWN)),
        Node(None, "HW Slowdown", value=state(REASON_HW_SLOWDOWN), children=hw_children),
        leaf(prefix + "hw_thermal_slowdown", None, state(REASON_HW_THERMAL)),
        leaf(prefix + "hw_power_brake_slowdown", None, state(REASON_HW_POWER_BRAKE)),
        leaf(prefix + "sync_boost", "Sync Boost", state(REASON_SYNC_BOOST)),
        leaf(prefix + "sw_thermal_slowdown", "SW Thermal Slowdown", state(REASON_SW_THERMAL)),
        leaf(prefix + "display_clocks_setting", "Display Clock Setting", state(REASON_DISPLAY)),
    ]


def _pci(gpu: Gpu) -> Node:
    info = gpu.pci()
    tx_rx = [gpu.get("nvmlDeviceGetPcieThroughput", PCIE_TX), gpu.get("nvmlDeviceGetPcieThroughput", PCIE_RX)]
    kbs = [outcome.text(lambda value: f"{int(value)} KB/s") for outcome in tx_rx]
    return section("pci", "PCI", [
        leaf("pci_bus", "Bus", attr(info, "bus", "{:02X}".format), attr(info, "bus", "0x{:02X}".format)),
        leaf("pci_device", "Device", attr(info, "device", "{:02X}".format), attr(info, "device", "0x{:02X}".format)),
        leaf("pci_domain", "Domain", attr(info, "domain", "{:04X}".format), attr(info, "domain", "0x{:04X}".format)),
        # Base/sub class come from nvmlDeviceGetPciInfoExt, which the stand-in does not model:
        # every modelled GPU is a 3D controller (class 0x0302), as in the capture.
        leaf("pci_base_class", "Base Classcode", "3", "0x3"),
        leaf("pci_sub_class", "Sub Classcode", "2", "0x2"),
        leaf("pci_device_id", "Device Id", attr(info, "pciDeviceId", "{:08X}".format), attr(info, "pciDeviceId", "0x{:08X}".format)),
        leaf("pci_bus_id", "Bus Id", attr(info, "busId", to_str)),
        leaf("pci_sub_system_id", "Sub System Id", attr(info, "pciSubSystemId", "{:08X}".format),
             attr(info, "pciSubSystemId", "0x{:08X}".format)),
        section("pci_gpu_link_info", "GPU Link Info", [
            section("pcie_gen", "PCIe Generation", [
                leaf("max_link_gen", "Max", gpu.text("nvmlDeviceGetMaxPcieLinkGeneration")),
                leaf("current_link_gen", "Current", gpu.text("nvmlDeviceGetCurrPcieLinkGeneration")),
                leaf("device_current_link_gen", "Device Current", gpu.text("nvmlDeviceGetCurrPcieLinkGeneration")),
                leaf("max_device_link_gen", "Device Max", gpu.text("nvmlDeviceGetGpuMaxPcieLinkGeneration")),
                leaf("max_host_link_gen", "Host Max", NA),
            ]),
            section("link_widths", "Link Width", [
                leaf("max_link_width", "Max", gpu.text("nvmlDeviceGetMaxPcieLinkWidth", fmt="{}x".format)),
                leaf("current_link_width", "Current", gpu.text("nvmlDeviceGetCurrPcieLinkWidth", fmt="{}x".format)),
            ]),
        ]),
        section("pci_bridge_chip", "Bridge Chip", [leaf("bridge_chip_type", "Type", NA), leaf("bridge_chip_fw", "Firmware", NA)]),
        leaf("replay_counter", "Replays Since Reset", gpu.text("nvmlDeviceGetPcieReplayCounter")),
        leaf("replay_rollover_counter", "Replay Number Rollovers", "0"),
        leaf("tx_util", "Tx Throughput", kbs[0]),
        leaf("rx_util", "Rx Throughput", kbs[1]),
        leaf("atomic_caps_outbound", "Atomic Caps Outbound", NA),
        leaf("atomic_caps_inbound", "Atomic Caps Inbound", NA),
    ])


def _ecc_counter(gpu: Gpu, kind: int, counter: int, location: int) -> str:
    return gpu.text("nvmlDeviceGetMemoryErrorCounter", kind, counter, location)


def _sram_status(gpu: Gpu) -> Outcome:
    """nvmlDeviceGetSramEccErrorStatus fills a versioned struct the caller allocates."""
    struct = getattr(gpu.session.module, "c_nvmlEccSramErrorStatus_v1_t", None)
    if struct is None:
        return Outcome(error=Unavailable("c_nvmlEccSramErrorStatus_v1_t"))
    status = struct()
    outcome = gpu.session.get("nvmlDeviceGetSramEccErrorStatus", gpu.handle, ctypes.byref(status))
    return Outcome(status) if outcome.ok else outcome


def _ecc_errors(gpu: Gpu) -> Node:
    sram = _sram_status(gpu)

    def status(name: str, fmt: t.Callable[[t.Any], str] = str) -> str:
        return attr(sram, name, fmt) if sram.ok else NA

    def counters(counter: int, parity: str, secded: str) -> list[Node]:
        return [
            leaf("sram_correctable", "SRAM Correctable", _ecc_counter(gpu, ERROR_CORRECTED, counter, LOCATION_SRAM)),
            leaf("sram_uncorrectable_parity", "SRAM Uncorrectable Parity", status(parity)),
            leaf("sram_uncorrectable_secded", "SRAM Uncorrectable SEC-DED", status(secded)),
            leaf("dram_correctable", "DRAM Correctable", _ecc_counter(gpu, ERROR_CORRECTED, counter, LOCATION_DRAM)),
            leaf("dram_uncorrectable", "DRAM Uncorrectable", _ecc_counter(gpu, ERROR_UNCORRECTED, counter, LOCATION_DRAM)),
        ]

    aggregate = counters(AGGREGATE_ECC, "aggregateUncParity", "aggregateUncSecDed")
    aggregate.append(leaf("sram_threshold_exceeded", "SRAM Threshold Exceeded", status("bThresholdExceeded", yes_no)))
    return section("ecc_errors", "ECC Errors", [
        section("volatile", "Volatile", counters(VOLATILE_ECC, "volatileUncParity", "volatileUncSecDed")),
        section("aggregate", "Aggregate", aggregate),
        section("aggregate_uncorrectable_sram_sources", "Aggregate Uncorrectable SRAM Sources", [
            leaf("sram_l2", "SRAM L2", status("aggregateUncBucketL2")),
            leaf("sram_sm", "SRAM SM", status("aggregateUncBucketSm")),
            leaf("sram_microcontroller", "SRAM Microcontroller", status("aggregateUncBucketMcu")),
            leaf("sram_pcie", "SRAM PCIE", status("aggregateUncBucketPcie")),
            leaf("sram_other", "SRAM Other", status("aggregateUncBucketOther")),
        ]),
        leaf("channel_repair_pending", "Channel Repair Pending", "No"),
        leaf("tpc_repair_pending", "TPC Repair Pending", "No"),
        leaf("unrepairable_memory", "Unrepairable Memory", "No"),
    ])


def _retired_pages(gpu: Gpu) -> list[Node]:
    sbe = gpu.get("nvmlDeviceGetRetiredPages", RETIRED_SBE)
    dbe = gpu.get("nvmlDeviceGetRetiredPages", RETIRED_DBE)
    pending = gpu.text("nvmlDeviceGetRetiredPagesPendingStatus", fmt=yes_no)

    def pagelist(pages: t.Any) -> str:
        return " ".join(f"0x{int(page):016x}" for page in pages) if pages else "None"

    xml = section("retired_pages", None, [
        section("multiple_single_bit_retirement", None, [
            leaf("retired_count", None, sbe.text(lambda pages: str(len(pages)))),
            leaf("retired_pagelist", None, sbe.text(pagelist)),
        ]),
        section("double_bit_retirement", None, [
            leaf("retired_count", None, dbe.text(lambda pages: str(len(pages)))),
            leaf("retired_pagelist", None, dbe.text(pagelist)),
        ]),
        leaf("pending_blacklist", None, pending),
        leaf("pending_retirement", None, pending),
    ])
    text = section(None, "Retired Pages", [
        leaf(None, "Single Bit ECC", sbe.text(lambda pages: str(len(pages)))),
        leaf(None, "Double Bit ECC", dbe.text(lambda pages: str(len(pages)))),
        leaf(None, "Pending Page Blacklist", pending),
    ])
    return [xml, text]


def _remapped_rows(gpu: Gpu) -> Node:
    rows = gpu.get("nvmlDeviceGetRemappedRows")
    histogram = gpu.get("nvmlDeviceGetRowRemapperHistogram")

    def banks(name: str) -> str:
        return attr(histogram, name, lambda value: f"{int(value)} bank(s)")

    return section("remapped_rows", "Remapped Rows", [
        leaf("remapped_row_corr", "Correctable Error", part(rows, 0)),
        leaf("remapped_row_corr_inactive", "Inactive Correctable Error", rows.text(lambda _: "0")),
        leaf("remapped_row_unc", "Uncorrectable Error", part(rows, 1)),
        leaf("remapped_row_unc_inactive", "Inactive Uncorrectable Error", rows.text(lambda _: "0")),
        leaf("remapped_row_pending", "Pending", part(rows, 2, yes_no)),
        leaf("remapped_row_failure", "Remapping Failure Occurred", part(rows, 3, yes_no)),
        section("row_remapper_histogram", "Bank Remap Availability Histogram", [
            leaf("row_remapper_histogram_max", "Max", banks("max")),
            leaf("row_remapper_histogram_high", "High", banks("high")),
            leaf("row_remapper_histogram_partial", "Partial", banks("partial")),
            leaf("row_remapper_histogram_low", "Low", banks("low")),
            leaf("row_remapper_histogram_none", "None", banks("none")),
        ]),
    ])


def _temperature(gpu: Gpu) -> list[Node]:
    margin = gpu.get("nvmlDeviceGetMarginTemperature")
    return [
        section("temperature", "Temperature", [
            leaf("gpu_temp", "GPU Current Temp", gpu.text("nvmlDeviceGetTemperature", TEMPERATURE_GPU, fmt=celsius)),
            leaf("gpu_temp_tlimit", "GPU T.Limit Temp", margin.text(celsius)),
            # The T.Limit thresholds below are offsets fixed per board; NVML reads them through
            # field values the stand-in does not model, so the capture's values are shown.
            leaf("gpu_temp_max_tlimit_threshold", "GPU Shutdown T.Limit Temp", margin.text(lambda _: "-8 C")),
            leaf("gpu_temp_slow_tlimit_threshold", "GPU Slowdown T.Limit Temp", margin.text(lambda _: "-2 C")),
            leaf("gpu_temp_max_gpu_tlimit_threshold", "GPU Max Operating T.Limit Temp", margin.text(lambda _: "0 C")),
            leaf("gpu_target_temperature", "GPU Target Temperature", NA),
            leaf("memory_temp", "Memory Current Temp", field_value(gpu, FI_MEMORY_TEMP).text(celsius)),
            leaf("gpu_temp_max_mem_tlimit_threshold", "Memory Max Operating T.Limit Temp", margin.text(lambda _: "0 C")),
        ]),
        section("supported_gpu_target_temp", None, [
            leaf("gpu_target_temp_min", None, NA),
            leaf("gpu_target_temp_max", None, NA),
        ]),
    ]


def _power(gpu: Gpu) -> list[Node]:
    limits = gpu.get("nvmlDeviceGetPowerManagementLimitConstraints")
    perf = gpu.text("nvmlDeviceGetPerformanceState", fmt=pstate)
    module = [
        leaf("average_power_draw", "Average Power Draw", NA),
        leaf("instant_power_draw", "Instantaneous Power Draw", NA),
        leaf("current_power_limit", "Current Power Limit", NA),
        leaf("requested_power_limit", "Requested Power Limit", NA),
        leaf("default_power_limit", "Default Power Limit", NA),
        leaf("min_power_limit", "Min Power Limit", NA),
        leaf("max_power_limit", "Max Power Limit", NA),
    ]
    return [
        section("gpu_power_readings", "GPU Power Readings", [
            leaf("power_state", None, perf),
            leaf("average_power_draw", "Average Power Draw", gpu.text("nvmlDeviceGetPowerUsage", fmt=watts)),
            leaf("instant_power_draw", "Instantaneous Power Draw", field_value(gpu, FI_POWER_INSTANT).text(watts)),
            leaf("current_power_limit", "Current Power Limit", gpu.text("nvmlDeviceGetEnforcedPowerLimit", fmt=watts)),
            leaf("requested_power_limit", "Requested Power Limit", gpu.text("nvmlDeviceGetPowerManagementLimit", fmt=watts)),
            leaf("default_power_limit", "Default Power Limit", gpu.text("nvmlDeviceGetPowerManagementDefaultLimit", fmt=watts)),
            leaf("min_power_limit", "Min Power Limit", part(limits, 0, watts)),
            leaf("max_power_limit", "Max Power Limit", part(limits, 1, watts)),
        ]),
        section("gpu_memory_power_readings", "GPU Memory Power Readings ", [
            leaf("average_power_draw", "Average Power Draw", field_value(gpu, FI_POWER_AVERAGE, POWER_SCOPE_MEMORY).text(watts)),
            leaf("instant_power_draw", "Instantaneous Power Draw", field_value(gpu, FI_POWER_INSTANT, POWER_SCOPE_MEMORY).text(watts)),
        ]),
        section("module_power_readings", "Module Power Readings", [leaf("power_state", None, perf)] + module),
        leaf("power_smoothing", "Power Smoothing", NA),
        section("power_profiles", "Workload Power Profiles", [
            leaf("power_profile_requested_profiles", "Requested Profiles", NA),
            leaf("power_profile_enforced_profiles", "Enforced Profiles", NA),
        ]),
    ]


def _clocks(gpu: Gpu) -> list[Node]:
    def clock(call: str, kind: int) -> str:
        return gpu.text(call, kind, fmt=mhz)

    return [
        section("clocks", "Clocks", [
            leaf("graphics_clock", "Graphics", clock("nvmlDeviceGetClockInfo", CLOCK_GRAPHICS)),
            leaf("sm_clock", "SM", clock("nvmlDeviceGetClockInfo", CLOCK_SM)),
            leaf("mem_clock", "Memory", clock("nvmlDeviceGetClockInfo", CLOCK_MEM)),
            leaf("video_clock", "Video", clock("nvmlDeviceGetClockInfo", CLOCK_VIDEO)),
        ]),
        section("applications_clocks", "Applications Clocks", [
            leaf("graphics_clock", "Graphics", clock("nvmlDeviceGetApplicationsClock", CLOCK_GRAPHICS)),
            leaf("mem_clock", "Memory", clock("nvmlDeviceGetApplicationsClock", CLOCK_MEM)),
        ]),
        section("default_applications_clocks", "Default Applications Clocks", [
            leaf("graphics_clock", "Graphics", clock("nvmlDeviceGetDefaultApplicationsClock", CLOCK_GRAPHICS)),
            leaf("mem_clock", "Memory", clock("nvmlDeviceGetDefaultApplicationsClock", CLOCK_MEM)),
        ]),
        section("deferred_clocks", "Deferred Clocks", [leaf("mem_clock", "Memory", NA)]),
        section("max_clocks", "Max Clocks", [
            leaf("graphics_clock", "Graphics", clock("nvmlDeviceGetMaxClockInfo", CLOCK_GRAPHICS)),
            leaf("sm_clock", "SM", clock("nvmlDeviceGetMaxClockInfo", CLOCK_SM)),
            leaf("mem_clock", "Memory", clock("nvmlDeviceGetMaxClockInfo", CLOCK_MEM)),
            leaf("video_clock", "Video", clock("nvmlDeviceGetMaxClockInfo", CLOCK_VIDEO)),
        ]),
        section("max_customer_boost_clocks", "Max Customer Boost Clocks", [
            leaf("graphics_clock", "Graphics", clock("nvmlDeviceGetMaxCustomerBoostClock", CLOCK_GRAPHICS)),
        ]),
        section("clock_policy", "Clock Policy", [
            leaf("auto_boost", "Auto Boost", part(gpu.get("nvmlDeviceGetAutoBoostedClocksEnabled"), 0, lambda v: "On" if v else "Off")),
            leaf("auto_boost_default", "Auto Boost Default",
                 part(gpu.get("nvmlDeviceGetAutoBoostedClocksEnabled"), 1, lambda v: "On" if v else "Off")),
        ]),
    ]


def _fabric() -> Node:
    health = ["summary", "bandwidth", "route_recovery_in_progress", "route_unhealthy", "access_timeout_recovery",
              "incorrect_configuration", "partition_assigned"]
    health_labels = ["Summary", "Bandwidth", "Route Recovery in progress", "Route Unhealthy", "Access Timeout Recovery",
                     "Incorrect Configuration", "Partition Assigned"]
    return section("fabric", "Fabric", [
        leaf("state", "State", NA),
        leaf("status", "Status", NA),
        leaf("cliqueId", "CliqueId", NA),
        leaf("clusterUuid", "ClusterUUID", NA),
        section("health", "Health", [leaf(tag, label, NA) for tag, label in zip(health, health_labels)]),
    ])


def _supported_clocks(gpu: Gpu) -> Node:
    memory_clocks = gpu.get("nvmlDeviceGetSupportedMemoryClocks")
    if not memory_clocks.ok:
        return leaf("supported_clocks", None, memory_clocks.text())
    groups = []
    for memory_clock in memory_clocks.value:
        graphics = gpu.get("nvmlDeviceGetSupportedGraphicsClocks", memory_clock)
        entries = [leaf("value", None, mhz(memory_clock))]
        if graphics.ok:
            entries += [leaf("supported_graphics_clock", None, mhz(clock)) for clock in graphics.value]
        groups.append(section("supported_mem_clock", None, entries))
    return section("supported_clocks", None, groups)


def _processes(gpu: Gpu) -> list[Node]:
    """<processes> (XML) and 'Processes' (text) from the running compute and graphics processes."""
    session = gpu.session
    compute = gpu.get("nvmlDeviceGetComputeRunningProcesses")
    graphics = gpu.get("nvmlDeviceGetGraphicsRunningProcesses")
    if not compute.ok and not graphics.ok:
        text = compute.text()
        return [leaf("processes", "Processes", text)]
    seen: dict[tuple[int, int, int], list[t.Any]] = {}
    for kind, outcome in (("C", compute), ("G", graphics)):
        for proc in outcome.value if outcome.ok else ():
            key = (int(proc.pid), int(getattr(proc, "gpuInstanceId", UINT_NA)), int(getattr(proc, "computeInstanceId", UINT_NA)))
            if key in seen:
                seen[key][0] = "C+G"
            else:
                seen[key] = [kind, proc]
    xml_items, text_items = [], []
    for (pid, gi_id, ci_id), (kind, proc) in seen.items():
        used = getattr(proc, "usedGpuMemory", None)
        used_text = mib(used) if used is not None else NA
        name = session.get("nvmlSystemGetProcessName", pid).text(to_str)
        gi_text = str(gi_id) if gi_id != UINT_NA else NA
        ci_text = str(ci_id) if ci_id != UINT_NA else NA
        xml_items.append(section("process_info", None, [
            leaf("gpu_instance_id", None, gi_text),
            leaf("compute_instance_id", None, ci_text),
            leaf("pid", None, str(pid)),
            leaf("type", None, kind),
            leaf("process_name", None, name),
            leaf("used_memory", None, used_text),
        ]))
        text_items += [
            leaf(None, "GPU instance ID", gi_text),
            leaf(None, "Compute instance ID", ci_text),
            Node(None, "Process ID", value=str(pid), children=[
                leaf(None, "Type", kind),
                leaf(None, "Name", name),
                leaf(None, "Used GPU Memory", used_text),
            ]),
        ]
    nodes = [section("processes", None, xml_items)]
    if text_items:
        nodes.append(section(None, "Processes", text_items))
    else:
        nodes.append(leaf(None, "Processes", "None"))
    return nodes


def gpu_node(gpu: Gpu) -> Node:
    """The whole <gpu> element / 'GPU 0000...' block for one GPU."""
    mig = gpu.mig_mode()
    ecc = gpu.get("nvmlDeviceGetEccMode")
    virt = gpu.get("nvmlDeviceGetVirtualizationMode")
    memory = gpu.memory()
    util = gpu.get("nvmlDeviceGetUtilizationRates")
    encoder = gpu.get("nvmlDeviceGetEncoderStats")
    fbc = gpu.get("nvmlDeviceGetFBCStats")
    children: list[Node] = [
        leaf("product_name", "Product Name", gpu.text("nvmlDeviceGetName", fmt=to_str)),
        leaf("product_brand", "Product Brand", gpu.text("nvmlDeviceGetBrand", fmt=mapped(BRANDS))),
        leaf("product_architecture", "Product Architecture", gpu.text("nvmlDeviceGetArchitecture", fmt=mapped(ARCHITECTURES))),
        leaf("display_mode", "Display Mode", CONSTANT_DISPLAY_MODE),
        leaf("display_attached", "Display Attached", gpu.text("nvmlDeviceGetDisplayMode", fmt=yes_no)),
        leaf("display_active", "Display Active", gpu.text("nvmlDeviceGetDisplayActive", fmt=enabled)),
        leaf("persistence_mode", "Persistence Mode", gpu.text("nvmlDeviceGetPersistenceMode", fmt=enabled)),
        leaf("addressing_mode", "Addressing Mode", gpu.text("nvmlDeviceGetAddressingMode", fmt=mapped(ADDRESSING_MODES))),
        section("mig_mode", "MIG Mode", [
            leaf("current_mig", "Current", part(mig, 0, enabled)),
            leaf("pending_mig", "Pending", part(mig, 1, enabled)),
        ]),
        mig_section(gpu),
        leaf("accounting_mode", "Accounting Mode", gpu.text("nvmlDeviceGetAccountingMode", fmt=enabled)),
        leaf("accounting_mode_buffer_size", "Accounting Mode Buffer Size", gpu.text("nvmlDeviceGetAccountingBufferSize")),
        section("driver_model", "Driver Model", [
            leaf("current_dm", "Current", part(gpu.get("nvmlDeviceGetDriverModel"), 0)),
            leaf("pending_dm", "Pending", part(gpu.get("nvmlDeviceGetDriverModel"), 1)),
        ]),
        leaf("serial", "Serial Number", gpu.text("nvmlDeviceGetSerial", fmt=to_str)),
        leaf("uuid", "GPU UUID", gpu.text("nvmlDeviceGetUUID", fmt=to_str)),
        leaf("pdi", "GPU PDI", gpu.text("nvmlDeviceGetPdi", fmt=lambda value: f"0x{int(value):016x}")),
        leaf("minor_number", "Minor Number", gpu.text("nvmlDeviceGetMinorNumber")),
        leaf("vbios_version", "VBIOS Version", gpu.text("nvmlDeviceGetVbiosVersion", fmt=to_str)),
        leaf("multigpu_board", "MultiGPU Board", gpu.text("nvmlDeviceGetMultiGpuBoard", fmt=yes_no)),
        leaf("board_id", "Board ID", gpu.text("nvmlDeviceGetBoardId", fmt=lambda value: f"0x{int(value):x}")),
        leaf("board_part_number", "Board Part Number", gpu.text("nvmlDeviceGetBoardPartNumber", fmt=to_str)),
        leaf("gpu_part_number", "GPU Part Number", NA),
        leaf("gpu_fru_part_number", "FRU Part Number", NA),
        section("platformInfo", "Platform Info", [
            leaf("chassis_serial_number", "Chassis Serial Number", NA),
            leaf("slot_number", "Slot Number", NA),
            leaf("tray_index", "Tray Index", NA),
            leaf("host_id", "Host ID", NA),
            leaf("peer_type", "Peer Type", NA),
            leaf("module_id", "Module Id", gpu.text("nvmlDeviceGetModuleId")),
            leaf("gpu_fabric_guid", "GPU Fabric GUID", NA),
        ]),
        section("inforom_version", "Inforom Version", [
            leaf("img_version", "Image Version", gpu.text("nvmlDeviceGetInforomImageVersion", fmt=to_str)),
            leaf("oem_object", "OEM Object", gpu.text("nvmlDeviceGetInforomVersion", INFOROM_OEM, fmt=to_str)),
            leaf("ecc_object", "ECC Object", gpu.text("nvmlDeviceGetInforomVersion", INFOROM_ECC, fmt=to_str)),
            leaf("pwr_object", "Power Management Object", gpu.text("nvmlDeviceGetInforomVersion", INFOROM_POWER, fmt=to_str)),
        ]),
        section("inforom_bbx_flush", "Inforom BBX Object Flush", [
            leaf("latest_timestamp", "Latest Timestamp", NA),
            leaf("latest_duration", "Latest Duration", NA),
        ]),
        section("gpu_operation_mode", "GPU Operation Mode", [
            leaf("current_gom", "Current", part(gpu.get("nvmlDeviceGetGpuOperationMode"), 0)),
            leaf("pending_gom", "Pending", part(gpu.get("nvmlDeviceGetGpuOperationMode"), 1)),
        ]),
        leaf("c2c_mode", "GPU C2C Mode", "Disabled"),
        section("gpu_virtualization_mode", "GPU Virtualization Mode", [
            leaf("virtualization_mode", "Virtualization Mode", virt.text(mapped(VIRTUALIZATION_MODES))),
            leaf("host_vgpu_mode", "Host VGPU Mode", gpu.text("nvmlDeviceGetHostVgpuMode", fmt=mapped(HOST_VGPU_MODES))),
            leaf("vgpu_heterogeneous_mode", "vGPU Heterogeneous Mode", gpu.text("nvmlDeviceGetVgpuHeterogeneousMode", fmt=enabled)),
        ]),
        leaf("gpu_recovery_action", "GPU Recovery Action", field_value(gpu, FI_RECOVERY_ACTION).text(mapped(RECOVERY_ACTIONS))),
        leaf("gsp_firmware_version", "GSP Firmware Version", gpu.text("nvmlDeviceGetGspFirmwareVersion", fmt=to_str)),
        section("ibmnpu", "IBMNPU", [leaf("relaxed_ordering_mode", "Relaxed Ordering Mode", NA)]),
        _pci(gpu),
        leaf("fan_speed", "Fan Speed", gpu.text("nvmlDeviceGetFanSpeed", fmt=percent)),
        leaf("performance_state", "Performance State", gpu.text("nvmlDeviceGetPerformanceState", fmt=pstate)),
        section("clocks_event_reasons", "Clocks Event Reasons", _reasons(gpu)),
        section("clocks_event_reasons_counters", "Clocks Event Reasons Counters", [
            leaf("clocks_event_reasons_counters_sw_power_cap", "SW Power Capping", CONSTANT_ZERO_US),
            leaf("clocks_event_reasons_counters_sync_boost", "Sync Boost", CONSTANT_ZERO_US),
            leaf("clocks_event_reasons_counters_sw_therm_slowdown", "SW Thermal Slowdown", CONSTANT_ZERO_US),
            leaf("clocks_event_reasons_counters_hw_therm_slowdown", "HW Thermal Slowdown", CONSTANT_ZERO_US),
            leaf("clocks_event_reasons_counters_hw_power_brake", "HW Power Braking", CONSTANT_ZERO_US),
        ]),
        leaf("sparse_operation_mode", "Sparse Operation Mode", "Disabled"),
        section("fb_memory_usage", "FB Memory Usage", _memory_nodes(memory, True)),
        section("bar1_memory_usage", "BAR1 Memory Usage", _bar1_nodes(gpu.get("nvmlDeviceGetBAR1MemoryInfo"))),
        section("cc_protected_memory_usage", "Conf Compute Protected Memory Usage",
                _memory_nodes(gpu.get("nvmlDeviceGetConfComputeProtectedMemoryUsage"), False)),
        leaf("compute_mode", "Compute Mode", gpu.text("nvmlDeviceGetComputeMode", fmt=mapped(COMPUTE_MODES))),
        section("utilization", "Utilization", [
            leaf("gpu_util", "GPU", attr(util, "gpu", percent)),
            leaf("memory_util", "Memory", attr(util, "memory", percent)),
            leaf("encoder_util", "Encoder", part(gpu.get("nvmlDeviceGetEncoderUtilization"), 0, percent)),
            leaf("decoder_util", "Decoder", part(gpu.get("nvmlDeviceGetDecoderUtilization"), 0, percent)),
            leaf("jpeg_util", "JPEG", part(gpu.get("nvmlDeviceGetJpgUtilization"), 0, percent)),
            leaf("ofa_util", "OFA", part(gpu.get("nvmlDeviceGetOfaUtilization"), 0, percent)),
        ]),
        section("encoder_stats", "Encoder Stats", [
            leaf("session_count", "Active Sessions", part(encoder, 0)),
            leaf("average_fps", "Average FPS", part(encoder, 1)),
            leaf("average_latency", "Average Latency", part(encoder, 2)),
        ]),
        section("fbc_stats", "FBC Stats", [
            leaf("session_count", "Active Sessions", attr(fbc, "sessionsCount")),
            leaf("average_fps", "Average FPS", attr(fbc, "averageFPS")),
            leaf("average_latency", "Average Latency", attr(fbc, "averageLatency")),
        ]),
        section("dram_encryption_mode", "DRAM Encryption Mode", [
            leaf("current_dram_encryption", "Current", part(gpu.get("nvmlDeviceGetDramEncryptionMode"), 0, enabled)),
            leaf("pending_dram_encryption", "Pending", part(gpu.get("nvmlDeviceGetDramEncryptionMode"), 1, enabled)),
        ]),
        section("ecc_mode", "ECC Mode", [
            leaf("current_ecc", "Current", part(ecc, 0, enabled)),
            leaf("pending_ecc", "Pending", part(ecc, 1, enabled)),
        ]),
        _ecc_errors(gpu),
        *_retired_pages(gpu),
        _remapped_rows(gpu),
        *_temperature(gpu),
        *_power(gpu),
        *_clocks(gpu),
        _fabric(),
        _supported_clocks(gpu),
        *_processes(gpu),
        section("accounted_processes", None, []),
        section("capabilities", "Capabilities", [leaf("egm", "EGM", "disabled")]),
    ]
    bus_id = gpu.bus_id()
    return section("gpu", f"GPU {bus_id}", children, attrs={"id": bus_id})
