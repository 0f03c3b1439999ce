# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Loading a filter file of the collection imports none of its module_utils.

ansible-core (2.19) finds a collection filter such as gpuvirt.fleet.observed by loading the collection's filter files
in turn until one names it, in the worker process of every task that uses one: what a filter file imports at load
time is paid per task and host (docs/scaling.md). Each filter imports what it needs when it runs, and still works.
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys

from conftest import REPO, _collections_root

FILTERS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, 'plugins', 'filter', '*.py')))

CODE = '''
import importlib, sys
sys.path.insert(0, %r)
names = %r
for name in names:
    importlib.import_module('ansible_collections.gpuvirt.fleet.plugins.filter.' + name).FilterModule().filters()
print(sorted(m for m in sys.modules if m.startswith('ansible_collections.gpuvirt.fleet.plugins.module_utils')))
'''


def test_the_collection_has_several_filter_files():
    assert {'fleet_report_html', 'gpu_plan', 'gpu_summary', 'observed', 'vgpu_hostdev'} <= set(FILTERS)


def test_loading_every_filter_file_imports_no_module_utils():
    proc = subprocess.run([sys.executable, '-c', CODE % (_collections_root(), FILTERS)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == '[]', proc.stdout


def test_each_filter_still_imports_what_it_needs_when_it_runs():
    code = CODE % (_collections_root(), FILTERS) + '''
from ansible_collections.gpuvirt.fleet.plugins.filter import gpu_summary, vgpu_hostdev, fleet_report_html
facts = {'gpu_host': {'hostname': 'h', 'driver_version': '580.159.04', 'gpu_count': 0}, 'gpus': []}
print(gpu_summary.gpu_summary(facts))
print(vgpu_hostdev.vgpu_hostdev([]) == '')
print(fleet_report_html.fleet_report_html([{'host': 'h', 'reachable': False, 'error': 'host unreachable'}])[:15])
'''
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == '[]' and lines[1] == 'no GPUs visible (no NVIDIA driver)' and lines[2] == 'True' and lines[3] == '<!DOCTYPE html>', lines
