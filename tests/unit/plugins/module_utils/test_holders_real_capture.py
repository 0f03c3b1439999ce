# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The holder scan and the simulator against what a real H200 showed (tests/unit/fixtures/real-h200-holders)."""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _holders, _sysfs

REPO = Path(__file__).resolve().parents[4]
REAL = REPO / 'tests' / 'unit' / 'fixtures' / 'real-h200-holders'
sys.path.append(str(REPO / 'sim' / 'lib'))
from gpusim import procfs  # noqa: E402  pylint: disable=wrong-import-position


def test_the_scan_finds_a_real_nvml_client_by_its_gpu_node_only(tmp_path):
    """The descriptors of a live NVML client, rebuilt as a /proc tree: it holds GPU minor 0, nothing else counts."""
    fd_dir = tmp_path / 'proc' / '478' / 'fd'
    fd_dir.mkdir(parents=True)
    for line in (REAL / 'client-fds.txt').read_text().splitlines():
        match = re.search(r' (\d+) -> (.+)$', line)
        if match:
            os.symlink(match.group(2), fd_dir / match.group(1))
    (tmp_path / 'proc' / '478' / 'cmdline').write_bytes(b'python3\0-c\0import pynvml\0')
    holders = _sysfs.read_device_holders(str(tmp_path / 'proc'))
    assert [(h['pid'], h['minors']) for h in holders] == [(478, [0])]
    gpus = [{'index': 0, 'minor_number': 0, 'processes': []}]
    assert [h['pid'] for h in _holders.blocking(gpus, [0], holders)] == [478]


def test_mig_layout_on_the_real_gpu_named_the_client_in_check_mode():
    check = json.loads((REAL / 'mig_layout-check.json').read_text())
    assert check['disruptive'] and [s['action'] for s in check['steps']][:2] == ['set_mig_mode', 'reset_gpu']
    assert [(h['gpus'], h['command'].startswith('python3 -c import pynvml')) for h in check['holders']] == [([0], True)]


def test_the_simulated_mig_minors_and_capability_files_match_the_real_driver():
    lines = (REAL / 'mig-minors-head.txt').read_text().splitlines()
    head, count, tail = lines[:12], int(lines[12]), lines[13:]
    simulated = procfs.mig_minors_text().splitlines()
    assert len(simulated) == count and simulated[:12] == head and simulated[-3:] == tail
    real = (REAL / 'capabilities.txt').read_text()
    assert '== /proc/driver/nvidia/capabilities/mig/config\n' + procfs.cap_text(1, 0o400) in real
    assert '== /proc/driver/nvidia/capabilities/mig/monitor\n' + procfs.cap_text(2) in real


def test_nvidia_drm_is_not_live_on_the_real_host_and_proc_modules_parses():
    modules = (REAL / 'modules.txt').read_text()
    names = {line.split()[0] for line in modules.splitlines() if line.startswith('nvidia') and ' Live ' in line}
    assert names == {'nvidia', 'nvidia_uvm'} and not _holders.drm_loaded(names)
    assert json.loads((REAL / 'holders-before.json').read_text()) == {'holders': [], 'drm_live': False, 'modules': ['nvidia', 'nvidia_uvm']}
