# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""nvidia-smi stand-in: command line, exit codes and error texts, against a tiny NVML fake.

These are the paths no simulated host state reaches (a module that cannot be imported, an
NVML that refuses to initialise for odd reasons); the behaviour on simulated hosts is proven
against the real NVML stand-in in test_smi_standin.py.
"""

from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ET

import pytest

from smi_support import SMI, fake_gpu, fake_nvml, run_main

from gpusim_smi import cli, query, report  # pylint: disable=wrong-import-order

DRIVER_MESSAGE = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
                  "Make sure that the latest NVIDIA driver is installed and running.\n\n")


@pytest.mark.parametrize("argv", [
    [], ["-h"], ["-x"], ["-q", "-d", "MEMORY"], ["-L", "-q"], ["mig", "-lgi"], ["mig", "-cgi", "19"],
    ["--query-gpu=name"], ["--query-gpu=name", "--format=json"], ["-i"], ["vgpu", "-s"], ["-r"],
])
def test_unsupported_arguments_are_refused_on_stderr_with_exit_2(argv):
    code, out, err = run_main(argv, fake_nvml([fake_gpu()]))
    assert code == 2
    assert out == ""
    assert err.startswith("gpusim nvidia-smi: unsupported arguments: ")


def test_unknown_query_field_prints_the_real_error_and_exits_2():
    code, out, err = run_main(["--query-gpu=index,bogus.field", "--format=csv"], fake_nvml([fake_gpu()]))
    assert (code, out, err) == (2, 'Field "bogus.field" is not a valid field to query.\n\n', "")


def test_a_real_field_that_is_not_simulated_is_refused_not_invented():
    code, out, err = run_main(["--query-gpu=fabric.state", "--format=csv"], fake_nvml([fake_gpu()]))
    assert code == 2 and out == ""
    assert "fabric.state" in err and "not simulated" in err


def test_driver_not_loaded_prints_the_real_message_and_exits_9():
    code, out, err = run_main(["-L"], fake_nvml([fake_gpu()], init_error=9))
    assert (code, out, err) == (9, DRIVER_MESSAGE, "")


@pytest.mark.parametrize("error, code, first_line", [
    (12, 12, "NVIDIA-SMI couldn't find libnvidia-ml.so library in your system."),
    (18, 18, "Failed to initialize NVML: Driver/library version mismatch"),
    (4, 4, "Failed to initialize NVML: Insufficient Permissions"),
    (999, 255, "Failed to initialize NVML: Unknown Error"),
])
def test_other_init_failures_exit_like_the_real_tool(error, code, first_line):
    result = run_main(["-q", "-x"], fake_nvml([fake_gpu()], init_error=error))
    assert result[0] == code
    assert result[1].startswith(first_line)


def test_no_gpu_and_a_bad_index_both_say_no_devices_found():
    assert run_main(["-L"], fake_nvml([])) == (6, "No devices were found\n", "")
    assert run_main(["-q", "-x", "-i", "3"], fake_nvml([fake_gpu()])) == (6, "No devices were found\n", "")


def test_list_refuses_i_like_the_real_580_tool():
    expected = "ERROR: Option -i is not valid for this command. Please run 'nvidia-smi -h' for help.\n\n"
    assert run_main(["-L", "-i", "0"], fake_nvml([fake_gpu()])) == (2, expected, "")


def test_gpus_are_selected_by_index_uuid_or_bus_id():
    gpus = [fake_gpu(0, uuid="GPU-aaaa"), fake_gpu(1, uuid="GPU-bbbb")]
    for ident in ("1", "GPU-bbbb", "00000000:01:00.0", "0000:01:00.0"):
        code, out = run_main(["--query-gpu=index,uuid", "--format=csv,noheader", "-i", ident], fake_nvml(gpus))[:2]
        assert (code, out) == (0, "1, GPU-bbbb\n")
    code, out = run_main(["--id=0,1", "--query-gpu=index", "--format=csv,noheader"], fake_nvml(gpus))[:2]
    assert (code, out) == (0, "0\n1\n")


def test_a_gpu_whose_handle_fails_is_reported_and_the_others_still_listed():
    gpus = [fake_gpu(0, handle_error=15), fake_gpu(1)]
    code, out = run_main(["-L"], fake_nvml(gpus))[:2]
    assert code == 15
    assert out.splitlines() == [
        "Unable to determine the device handle for GPU 0: GPU is lost. Reboot the system to recover this GPU",
        "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-2bbc3af3-7a90-4193-7574-41743730389f)",
    ]


def test_xml_stays_parseable_when_a_gpu_is_lost_the_error_goes_to_stderr():
    gpus = [fake_gpu(0), fake_gpu(1, handle_error=999)]
    code, out, err = run_main(["-q", "-x"], fake_nvml(gpus))
    assert code == 255
    root = ET.fromstring(out.split("\n", 2)[2])
    assert root.findtext("attached_gpus") == "2"
    assert len(root.findall("gpu")) == 1
    assert err == "Unable to determine the device handle for GPU 1: Unknown Error\n"


def test_values_nvml_does_not_support_print_na_in_every_form():
    module = fake_nvml([fake_gpu()])
    code, out = run_main(["--query-gpu=name,memory.total,mig.mode.current,pstate", "--format=csv,noheader"], module)[:2]
    assert (code, out) == (0, "NVIDIA H100 80GB HBM3, [N/A], [N/A], [N/A]\n")
    root = ET.fromstring(run_main(["-q", "-x"], module)[1].split("\n", 2)[2])
    assert root.findtext("gpu/fb_memory_usage/total") == "N/A"
    assert root.findtext("gpu/mig_mode/current_mig") == "N/A"
    text = run_main(["-q"], module)[1]
    assert "    Persistence Mode                                   : N/A\n" in text


def test_query_header_keeps_units_with_nounits_and_uses_canonical_names():
    names = query.resolve("gpu_name,clocks.sm,memory.total,temperature.gpu,power.draw,utilization.gpu,pci.sub_device_id")
    assert query.header(names) == (
        "name, clocks.current.sm [MHz], memory.total [MiB], temperature.gpu, power.draw [W], utilization.gpu [%], "
        "pci.sub_device_id"
    )


@pytest.mark.parametrize("value, text", [(13000, "13.0"), (12040, "12.4"), (11080, "11.8")])
def test_cuda_version_is_major_dot_minor(value, text):
    assert report.cuda_version(value) == text


def test_power_and_memory_are_formatted_like_the_real_tool():
    assert report.watts(74380) == "74.38 W"
    assert report.watts(700000) == "700.00 W"
    assert report.mib(85520809984) == "81559 MiB"
    assert report.pstate(0) == "P0"


def test_parse_rejects_a_second_mode_and_accepts_option_spellings():
    assert cli.parse(["--query-gpu", "index", "--format", "csv,noheader,nounits"]).mode == "csv"
    assert cli.parse(["-q", "--xml-format", "--id=0"]).mode == "xml"
    assert cli.parse(["mig", "--list-gpu-instance-possible-placements", "-i", "0"]).mode == "lgipp"
    with pytest.raises(cli.Unsupported):
        cli.parse(["-L", "--query-gpu=index", "--format=csv"])


def test_the_launcher_runs_under_sh_and_finds_its_package(tmp_path):
    # No NVML stand-in state and no real driver here: whatever pynvml is found, the launcher
    # must start, parse, and answer an unsupported call itself.
    env = dict(os.environ, GPUSIM_ROOT=str(tmp_path))
    done = subprocess.run(["sh", SMI, "--bogus"], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("gpusim nvidia-smi: unsupported arguments: --bogus")
