# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""sim/bin/nvidia-smi on simulated hosts (gpusimctl state, NVML stand-in) against real captures.

The simulated H100 must print what the real H100 printed (shared/fixtures/real/h100-80gb-hbm3),
and faults injected into the NVML stand-in must show in nvidia-smi's output.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

import pytest

from smi_support import GPUSIMCTL, REAL_UUID, REPO, SIM_LIB, SMI, real

H100 = "h100-80gb-hbm3"
REAL_BUS_ID = "00000000:00:06.0"
LOST = "Unable to determine the device handle for GPU {}: GPU is lost. Reboot the system to recover this GPU"
DRIVER_MESSAGE = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
                  "Make sure that the latest NVIDIA driver is installed and running.\n\n")

# Paths of the real -q -x that the simulated H100 does not print, and why: the NVML stand-in has no
# nvmlDeviceGetSupportedMemoryClocks/GraphicsClocks, so <supported_clocks> is N/A (as the real tool
# prints it on GPUs without that call). Everything else in the real document is present.
NOT_MODELLED = frozenset({
    "gpu/supported_clocks/supported_mem_clock",
    "gpu/supported_clocks/supported_mem_clock/value",
    "gpu/supported_clocks/supported_mem_clock/supported_graphics_clock",
})

# -q -x values that are the same on every H100 80GB HBM3 in pass-through, whatever its load.
STATIC_XML_FIELDS = (
    "driver_version", "cuda_version", "attached_gpus",
    "gpu/product_name", "gpu/product_brand", "gpu/product_architecture", "gpu/display_mode", "gpu/persistence_mode",
    "gpu/mig_mode/current_mig", "gpu/mig_mode/pending_mig", "gpu/mig_devices", "gpu/driver_model/current_dm",
    "gpu/uuid", "gpu/minor_number", "gpu/vbios_version", "gpu/multigpu_board", "gpu/board_id", "gpu/board_part_number",
    "gpu/inforom_version/img_version", "gpu/gpu_virtualization_mode/virtualization_mode",
    "gpu/gpu_virtualization_mode/host_vgpu_mode", "gpu/gsp_firmware_version",
    "gpu/pci/pci_bus", "gpu/pci/pci_device", "gpu/pci/pci_domain", "gpu/pci/pci_base_class", "gpu/pci/pci_sub_class",
    "gpu/pci/pci_device_id", "gpu/pci/pci_bus_id", "gpu/pci/pci_sub_system_id",
    "gpu/pci/pci_gpu_link_info/pcie_gen/max_link_gen", "gpu/pci/pci_gpu_link_info/pcie_gen/current_link_gen",
    "gpu/pci/pci_gpu_link_info/link_widths/max_link_width", "gpu/pci/pci_gpu_link_info/link_widths/current_link_width",
    "gpu/fan_speed", "gpu/performance_state", "gpu/clocks_event_reasons/clocks_event_reason_gpu_idle",
    "gpu/fb_memory_usage/total", "gpu/fb_memory_usage/reserved", "gpu/fb_memory_usage/used", "gpu/fb_memory_usage/free",
    "gpu/bar1_memory_usage/total", "gpu/compute_mode", "gpu/utilization/gpu_util", "gpu/utilization/memory_util",
    "gpu/ecc_mode/current_ecc", "gpu/ecc_mode/pending_ecc",
    "gpu/retired_pages/multiple_single_bit_retirement/retired_count", "gpu/remapped_rows/remapped_row_corr",
    "gpu/remapped_rows/remapped_row_unc", "gpu/remapped_rows/remapped_row_pending",
    "gpu/gpu_power_readings/power_state", "gpu/gpu_power_readings/current_power_limit",
    "gpu/gpu_power_readings/requested_power_limit", "gpu/gpu_power_readings/default_power_limit",
    "gpu/gpu_power_readings/min_power_limit", "gpu/gpu_power_readings/max_power_limit",
    "gpu/max_clocks/graphics_clock", "gpu/max_clocks/sm_clock", "gpu/max_clocks/mem_clock", "gpu/max_clocks/video_clock",
    "gpu/applications_clocks/graphics_clock", "gpu/default_applications_clocks/mem_clock", "gpu/processes",
)

QUERY_FIELDS = (
    "index,name,uuid,serial,pci.bus_id,pci.device_id,pci.sub_device_id,driver_version,vbios_version,memory.total,"
    "memory.used,memory.free,memory.reserved,utilization.gpu,utilization.memory,temperature.gpu,power.draw,power.limit,"
    "enforced.power.limit,clocks.sm,clocks.max.sm,pstate,persistence_mode,ecc.mode.current,ecc.mode.pending,"
    "mig.mode.current,mig.mode.pending,compute_cap,count"
)
QUERY_HEADER = (
    "index, name, uuid, serial, pci.bus_id, pci.device_id, pci.sub_device_id, driver_version, vbios_version, "
    "memory.total [MiB], memory.used [MiB], memory.free [MiB], memory.reserved [MiB], utilization.gpu [%], "
    "utilization.memory [%], temperature.gpu, power.draw [W], power.limit [W], enforced.power.limit [W], "
    "clocks.current.sm [MHz], clocks.max.sm [MHz], pstate, persistence_mode, ecc.mode.current, ecc.mode.pending, "
    "mig.mode.current, mig.mode.pending, compute_cap, count"
)


class Host:
    """One simulated host in a temporary GPUSIM_ROOT."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.env = dict(os.environ, GPUSIM_ROOT=root)

    def ctl(self, *args: str) -> str:
        """Run gpusimctl; fails the test when it fails."""
        done = subprocess.run([sys.executable, GPUSIMCTL, "--root", self.root, *args], env=self.env,
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def init(self, *gpus: str, extra: tuple[str, ...] = ()) -> None:
        """gpusimctl init with the given --gpu specs."""
        args = ["init", "--hostname", "smi-test"]
        for spec in gpus:
            args += ["--gpu", spec]
        self.ctl(*args, *extra)

    def smi(self, *args: str) -> tuple[int, str, str]:
        """Run the stand-in the way a user does (sh launcher on PATH semantics)."""
        done = subprocess.run([SMI, *args], env=self.env, capture_output=True, text=True, check=False)
        return done.returncode, done.stdout, done.stderr

    def nvml(self, code: str) -> str:
        """Run Python code against the NVML stand-in (as pynvml) on this host."""
        program = f"import sys\nsys.path.insert(0, {SIM_LIB!r})\nimport pynvml\npynvml.nvmlInit()\n" + textwrap.dedent(code)
        done = subprocess.run([sys.executable, "-c", program], env=self.env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout


@pytest.fixture(name="host")
def host_fixture(tmp_path):
    return Host(str(tmp_path / "gpusim"))


@pytest.fixture(name="h100")
def h100_fixture(host):
    host.init(H100, extra=("--uuid", f"0={REAL_UUID}", "--pci", f"0={REAL_BUS_ID}"))
    return host


def xml_of(out: str) -> ET.Element:
    assert out.startswith('<?xml version="1.0" ?>\n<!DOCTYPE nvidia_smi_log SYSTEM "nvsmi_device_v13.dtd">\n<nvidia_smi_log>\n')
    return ET.fromstring(out.split("\n", 2)[2])


def paths(element: ET.Element, prefix: str = "") -> list[str]:
    found = []
    for child in element:
        path = f"{prefix}{child.tag}"
        found.append(path)
        found.extend(paths(child, path + "/"))
    return found


def text_of(root: ET.Element, path: str) -> str:
    node = root.find(path)
    assert node is not None, path
    return (node.text or "").strip()


# --- MIG profiles: byte for byte -------------------------------------------------------------

@pytest.mark.parametrize("args, capture", [
    (("mig", "-lgip"), "mig-lgip.txt"),
    (("mig", "-lgipp"), "mig-lgipp.txt"),
    (("mig", "-lgip", "-i", "0"), "mig-lgip.txt"),
    (("mig", "--list-gpu-instance-possible-placements", "-i", "0"), "mig-lgipp.txt"),
])
def test_mig_profile_listings_equal_the_real_h100_byte_for_byte(h100, args, capture):
    assert h100.smi(*args) == (0, real(capture), "")


def test_lgip_free_counts_follow_the_gpu_instances_that_exist(h100):
    enable_mig_with_instances(h100)
    code, out = h100.smi("mig", "-lgip")[:2]
    assert code == 0
    rows = {line[7:25].strip(): line[29:45].split()[0] for line in out.splitlines() if line.startswith("|   0  MIG")}
    # one 1g.10gb and one 3g.40gb exist (memory slices 0 and 4-7): what is left fits 3 more 1g.10gb.
    assert rows == {"MIG 1g.10gb": "3/7", "MIG 1g.10gb+me": "1/1", "MIG 1g.20gb": "1/4", "MIG 2g.20gb": "1/3",
                    "MIG 3g.40gb": "0/2", "MIG 4g.40gb": "0/1", "MIG 7g.80gb": "0/1"}


def test_gpus_without_mig_get_the_real_tools_answer(host):
    host.init("t4")
    assert host.smi("mig", "-lgip") == (6, "No MIG-supported devices found.\n", "")
    assert host.smi("mig", "-lgipp") == (6, "No MIG-supported devices found.\n", "")
    code, out = host.smi("--query-gpu=mig.mode.current,mig.mode.pending", "--format=csv,noheader")[:2]
    assert (code, out) == (0, "[N/A], [N/A]\n")
    root = xml_of(host.smi("-q", "-x")[1])
    assert text_of(root, "gpu/mig_mode/current_mig") == "N/A"
    assert text_of(root, "gpu/product_architecture") == "Turing"


def test_lgip_lists_only_the_mig_capable_gpus_of_a_mixed_host(host):
    host.init("t4", H100)
    code, out = host.smi("mig", "-lgip")[:2]
    assert code == 0
    assert out.count("|   1  MIG ") == 7 and "|   0  MIG " not in out


# --- -L ----------------------------------------------------------------------------------------

def test_list_equals_the_real_capture_when_given_the_real_uuid(h100):
    assert h100.smi("-L") == (0, real("smi-L.txt"), "")
    assert h100.smi("--list-gpus") == (0, real("smi-L.txt"), "")


def test_list_shows_mig_devices_in_the_real_layout(h100):
    enable_mig_with_instances(h100)
    code, out = h100.smi("-L")[:2]
    lines = out.splitlines()
    assert code == 0 and lines[0] == real("smi-L.txt").rstrip("\n")
    # MIG devices in NVML's order (nvmlDeviceGetMigDeviceHandleByIndex), named like the real tool
    names = h100.nvml("""
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        for i in range(2):
            mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h, i)
            print(pynvml.nvmlDeviceGetName(mig).split(" MIG ")[1], pynvml.nvmlDeviceGetUUID(mig))
    """).splitlines()
    expected = [f"  MIG {name:<12}Device {index:2d}: (UUID: {uuid})" for index, (name, uuid) in
                enumerate(line.split() for line in names)]
    assert lines[1:] == expected
    assert sorted(line[:18] for line in expected) == ["  MIG 1g.10gb     ", "  MIG 3g.40gb     "]
    assert all("(UUID: MIG-" in line for line in expected)


# --- -q -x -------------------------------------------------------------------------------------

def test_xml_has_the_element_structure_of_the_real_capture(h100):
    code, out, err = h100.smi("-q", "-x")
    assert (code, err) == (0, "")
    ours = list(dict.fromkeys(paths(xml_of(out))))
    theirs = list(dict.fromkeys(paths(ET.fromstring(real("nvidia-smi-q-x.xml").split("\n", 2)[2]))))
    assert set(ours) <= set(theirs), sorted(set(ours) - set(theirs))
    assert set(theirs) - set(ours) <= NOT_MODELLED, sorted(set(theirs) - set(ours) - NOT_MODELLED)
    # the elements come in the real order
    assert ours == [path for path in theirs if path in set(ours)]


def test_xml_static_fields_equal_the_real_capture(h100):
    ours = xml_of(h100.smi("-q", "-x")[1])
    theirs = ET.fromstring(real("nvidia-smi-q-x.xml").split("\n", 2)[2])
    assert ours.find("gpu").attrib == theirs.find("gpu").attrib == {"id": REAL_BUS_ID}
    differing = {path: (text_of(ours, path), text_of(theirs, path)) for path in STATIC_XML_FIELDS
                 if text_of(ours, path) != text_of(theirs, path)}
    assert not differing


def test_xml_with_i_shows_one_gpu_but_counts_all(host):
    host.init(f"{H100}:2")
    root = xml_of(host.smi("-q", "-x", "-i", "1")[1])
    assert text_of(root, "attached_gpus") == "2"
    assert [gpu.attrib["id"] for gpu in root.findall("gpu")] == [text_of(root, "gpu/pci/pci_bus_id")]
    assert text_of(root, "gpu/minor_number") == "1"


def test_xml_reports_mig_devices_and_processes_from_nvml(h100):
    gi_ids = enable_mig_with_instances(h100)
    three_g_id = str(gi_ids[9])
    h100.ctl("proc", "add", "--gpu", "0", "--pid", "4242", "--mem-mib", "1536", "--gi", three_g_id, "--ci", "0", "--name", "python3")
    root = xml_of(h100.smi("-q", "-x")[1])
    assert text_of(root, "gpu/mig_mode/current_mig") == "Enabled"
    devices = root.findall("gpu/mig_devices/mig_device")
    assert [text_of(d, "index") for d in devices] == ["0", "1"]
    assert sorted(text_of(d, "gpu_instance_id") for d in devices) == sorted(str(gi) for gi in gi_ids.values())
    assert {text_of(d, "compute_instance_id") for d in devices} == {"0"}
    three_g = {text_of(d, "gpu_instance_id"): d for d in devices}[three_g_id]
    assert text_of(three_g, "device_attributes/shared/multiprocessor_count") == "60"
    assert text_of(three_g, "fb_memory_usage/total") == "40448 MiB"
    assert text_of(three_g, "fb_memory_usage/used") == "1536 MiB"
    assert [child.tag for child in three_g] == [
        "index", "gpu_instance_id", "compute_instance_id", "device_attributes", "ecc_error_count", "fb_memory_usage",
        "bar1_memory_usage",
    ]
    procs = root.findall("gpu/processes/process_info")
    assert [{child.tag: child.text for child in proc} for proc in procs] == [{
        "gpu_instance_id": three_g_id, "compute_instance_id": "0", "pid": "4242", "type": "C", "process_name": "python3",
        "used_memory": "1536 MiB",
    }]


# --- -q ----------------------------------------------------------------------------------------

def test_text_report_has_the_real_layout(h100):
    code, out = h100.smi("-q")[:2]
    assert code == 0
    ours, theirs = out.splitlines(), real("nvidia-smi-q.txt").splitlines()
    labels = [line.split(" : ")[0].rstrip() for line in ours]
    assert labels == [line.split(" : ")[0].rstrip() for line in theirs]
    assert all(line.index(":") == 55 for line in ours if " : " in line)
    for label in ("    Product Name ", "    Product Architecture ", "    Persistence Mode ", "        Device Id ",
                  "        Sub System Id ", "        Virtualization Mode ", "        Total ", "        Reserved "):
        first = [line for line in ours if line.startswith(label)][0]
        assert first == [line for line in theirs if line.startswith(label)][0]
    assert out.endswith("\n\n")


# --- --query-gpu -------------------------------------------------------------------------------

def test_query_gpu_equals_the_projects_real_capture(host):
    path = os.path.join(REPO, "tests", "unit", "fixtures", "real-h100", "smi-query-gpu.txt")
    with open(path, encoding="utf-8") as handle:
        command, header, row, rc_line = handle.read().splitlines()
    uuid = row.split(", ")[2]
    host.init(H100, extra=("--uuid", f"0={uuid}", "--pci", f"0={REAL_BUS_ID}"))
    assert host.smi(*command.split()[2:]) == (int(rc_line.split("=")[1]), f"{header}\n{row}\n", "")


def test_query_gpu_headers_units_and_values(h100):
    code, out, err = h100.smi(f"--query-gpu={QUERY_FIELDS}", "--format=csv")
    assert (code, err) == (0, "")
    header, row = out.splitlines()
    assert header == QUERY_HEADER
    values = dict(zip(header.split(", "), row.split(", ")))
    assert values["name"] == "NVIDIA H100 80GB HBM3" and values["uuid"] == REAL_UUID
    assert values["pci.bus_id"] == REAL_BUS_ID
    assert (values["pci.device_id"], values["pci.sub_device_id"]) == ("0x233010DE", "0x16C110DE")
    assert (values["driver_version"], values["vbios_version"]) == ("580.159.04", "96.00.DA.00.0C")
    assert values["memory.total [MiB]"] == "81559 MiB" and values["memory.reserved [MiB]"] == "480 MiB"
    assert values["memory.used [MiB]"] == "0 MiB" and values["memory.free [MiB]"] == "81079 MiB"
    assert values["power.limit [W]"] == values["enforced.power.limit [W]"] == "700.00 W"
    assert values["clocks.max.sm [MHz]"] == "1980 MHz" and values["pstate"] == "P0"
    assert values["utilization.gpu [%]"].endswith(" %") and values["temperature.gpu"].isdigit()
    assert (values["persistence_mode"], values["ecc.mode.current"], values["ecc.mode.pending"]) == ("Enabled",) * 3
    assert (values["mig.mode.current"], values["mig.mode.pending"]) == ("Disabled", "Disabled")
    assert (values["compute_cap"], values["count"], values["index"]) == ("9.0", "1", "0")


def test_query_gpu_noheader_nounits(host):
    host.init(f"{H100}:2")
    code, out = host.smi("--query-gpu=index,memory.total,power.limit", "--format=csv,noheader,nounits")[:2]
    assert (code, out) == (0, "0, 81559, 700.00\n1, 81559, 700.00\n")
    code, out = host.smi("--query-gpu=memory.total", "--format=csv,nounits", "-i", "1")[:2]
    assert (code, out) == (0, "memory.total [MiB]\n81559\n")


def test_query_gpu_unknown_field_is_the_real_error(h100):
    assert h100.smi("--query-gpu=index,no.such.field", "--format=csv") == \
        (2, 'Field "no.such.field" is not a valid field to query.\n\n', "")


# --- faults injected into the NVML stand-in --------------------------------------------------

def test_driver_not_loaded_shows_in_every_subcommand(host):
    host.init(H100, extra=("--driver-not-loaded",))
    for args in (("-L",), ("-q", "-x"), ("-q",), ("--query-gpu=name", "--format=csv"), ("mig", "-lgip")):
        assert host.smi(*args) == (9, DRIVER_MESSAGE, "")


def test_no_driver_installed_means_no_nvml_library(host):
    host.init(H100, extra=("--no-driver",))
    code, out = host.smi("-L")[:2]
    assert code == 12 and out.startswith("NVIDIA-SMI couldn't find libnvidia-ml.so library in your system.")


def test_a_lost_gpu_shows_in_list_query_and_xml(host):
    host.init(f"{H100}:2")
    host.ctl("lose", "--gpu", "1")
    code, out = host.smi("-L")[:2]
    first, second = out.splitlines()
    assert code == 15 and first.startswith("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-")
    assert second == LOST.format(1)
    code, out = host.smi("--query-gpu=index,name", "--format=csv,noheader")[:2]
    assert (code, out) == (15, f"0, NVIDIA H100 80GB HBM3\n{LOST.format(1)}\n")
    code, out, err = host.smi("-q", "-x")
    root = xml_of(out)
    assert code == 15 and len(root.findall("gpu")) == 1 and text_of(root, "attached_gpus") == "2"
    assert err == LOST.format(1) + "\n"
    host.ctl("reboot")
    assert host.smi("-L")[0] == 0


def test_an_injected_call_failure_shows_where_the_value_would_be(h100):
    h100.ctl("fault", "set", "--gpu", "0", "--call", "nvmlDeviceGetMemoryInfo", "--error", "NVML_ERROR_UNKNOWN")
    code, out = h100.smi("--query-gpu=name,memory.total", "--format=csv,noheader")[:2]
    assert (code, out) == (0, "NVIDIA H100 80GB HBM3, [Unknown Error]\n")
    root = xml_of(h100.smi("-q", "-x")[1])
    assert text_of(root, "gpu/fb_memory_usage/total") == "Unknown Error"
    h100.ctl("fault", "set", "--gpu", "0", "--call", "nvmlDeviceGetMigMode", "--error", "NVML_ERROR_NOT_SUPPORTED")
    assert h100.smi("mig", "-lgip") == (6, "No MIG-supported devices found.\n", "")


def test_an_injected_init_failure_is_reported_like_the_real_tool(h100):
    h100.ctl("fault", "set", "--call", "nvmlInit", "--error", "NVML_ERROR_DRIVER_NOT_LOADED")
    assert h100.smi("-L") == (9, DRIVER_MESSAGE, "")


# --- helpers -----------------------------------------------------------------------------------

def enable_mig_with_instances(host: Host) -> dict[int, int]:
    """MIG on GPU 0 with a 1g.10gb and a 3g.40gb GPU instance, each with a full compute instance.

    Returns the GPU instance id of each, by profile id.
    """
    host.nvml("pynvml.nvmlDeviceSetMigMode(pynvml.nvmlDeviceGetHandleByIndex(0), 1)")
    host.ctl("reset", "--gpu", "0")
    out = host.nvml("""
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        for profile_id, ci_enum in ((19, pynvml.NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE), (9, pynvml.NVML_COMPUTE_INSTANCE_PROFILE_3_SLICE)):
            gi = pynvml.nvmlDeviceCreateGpuInstance(h, profile_id)
            info = pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, ci_enum, pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
            pynvml.nvmlGpuInstanceCreateComputeInstance(gi, info.id)
            print(profile_id, pynvml.nvmlGpuInstanceGetInfo(gi).id)
    """)
    return {int(line.split()[0]): int(line.split()[1]) for line in out.splitlines()}
