# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The exporter's dcgm-exporter series on the real H200 (read-only under the guard, its log empty;
.device/real_exporter_check.sh: `--metric-names both --gpm-interval 2`, scraped after 6 s):
tests/unit/exporter/fixtures/real-h200-metrics-both.txt.

Every default counter of dcgm-exporter is there, except those the differences table says are absent for a reason
that holds on that machine (no XID seen yet; a pass-through VM without NVLink), and the units agree with the gpuvirt
series read in the same scrape."""
from __future__ import annotations

import json
import re
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / 'fixtures'
LINE = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})? (\S+)$')
REASONS_ON_THIS_HOST = {'no_xid_yet', 'no_nvlink'}  # no XID since boot; the H200 pass-through VM has no NVLink


def _series() -> dict[str, list[tuple[dict, float]]]:
    found: dict[str, list[tuple[dict, float]]] = {}
    for line in (FIXTURES / 'real-h200-metrics-both.txt').read_text().splitlines():
        match = LINE.match(line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ''))
            found.setdefault(match.group(1), []).append((labels, float(match.group(3))))
    return found


def test_every_default_counter_is_served_on_the_real_h200_or_documented_absent_there():
    series = _series()
    counters = json.loads((FIXTURES / 'dcgm-default-counters.json').read_text())['counters']
    differences = json.loads((FIXTURES / 'dcgm-differences.json').read_text())['counters']
    missing = []
    for counter in counters:
        name = counter['name']
        if name == 'DCGM_FI_DRIVER_VERSION':  # a label on every series, as dcgm-exporter has it
            assert all(labels.get(name) == '580.159.04' for labels, _v in series['DCGM_FI_DEV_GPU_TEMP'])
            continue
        if name not in series and not REASONS_ON_THIS_HOST & set(differences[name]['absent_on']):
            missing.append(name)
    assert missing == []
    assert 'DCGM_FI_DEV_XID_ERRORS' not in series and 'DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL' not in series


def test_units_agree_with_the_gpuvirt_series_of_the_same_scrape():
    series = _series()
    (labels, sm_mhz), = series['DCGM_FI_DEV_SM_CLOCK']
    assert labels['UUID'].startswith('GPU-') and labels['modelName'] == 'NVIDIA H200' and labels['Hostname']
    hz = {lab['clock']: value for lab, value in series['gpuvirt_gpu_clock_hz']}
    assert sm_mhz * 1e6 == hz['sm'] and series['DCGM_FI_DEV_MEM_CLOCK'][0][1] * 1e6 == hz['mem']
    assert series['DCGM_FI_DEV_GPU_TEMP'][0][1] == series['gpuvirt_gpu_temperature_celsius'][0][1]
    assert 0 <= series['DCGM_FI_PROF_DRAM_ACTIVE'][0][1] <= 1  # a ratio, from NVML GPM on the real Hopper GPU
