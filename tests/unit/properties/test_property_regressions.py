# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The shrunk failures the property tests found, each as a plain test with its exact input (issue 15).

Ansible's own argument checks (choices, bool conversion) quote the offending value raw: a control character or a
terminal escape in it reaches the message and the operator's terminal. The modules' one validation pass is to check
and quote these values before AnsibleModule's messages can show them.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from ansible_collections.gpuvirt.fleet.plugins.modules import gpu_facts, mig_layout

from prop_support import assert_clean_failure, run_module, simulated  # pylint: disable=import-error
from test_nvidia_driver_props import _run as run_driver  # pylint: disable=import-error
from test_driver_apply import FakeHost  # pylint: disable=import-error,wrong-import-order


@pytest.fixture(name='root')
def root_fixture():
    from gpusim import cli as sim_cli  # pylint: disable=import-error,import-outside-toplevel
    base = tempfile.mkdtemp(prefix='prop-regressions-')
    root = os.path.join(base, 'gpusim')
    assert sim_cli.main(['--root', root, 'init', '--hostname', 'node1', '--gpu', 'h100-80gb-hbm3']) == 0
    with simulated(root):
        yield root
    shutil.rmtree(base, ignore_errors=True)


def test_mig_layout_reset_with_a_terminal_escape_is_quoted(root):
    given = {'config': None, 'reset': '\x1b[31mred\x1b[0m'}
    assert_clean_failure(run_module(mig_layout.main, given), [given['reset']])
    assert root


def test_mig_layout_reset_with_a_control_character_is_quoted(root):
    assert_clean_failure(run_module(mig_layout.main, {'config': None, 'reset': '\x1f'}), ['\x1f'])
    assert root


def test_gpu_facts_backend_with_a_control_character_is_quoted(root):
    assert_clean_failure(run_module(gpu_facts.main, {'backend': '\x1f'}), ['\x1f'])
    assert root


def test_nvidia_driver_nvswitch_with_a_terminal_escape_is_quoted(tmp_path):
    given = {'whitelist': [], 'nvswitch': '\x1b[31mred\x1b[0m'}
    assert_clean_failure(run_driver(FakeHost(), given, False, str(tmp_path / 'pin.pref')), [given['nvswitch']])


def test_mig_layout_reset_with_a_newline_makes_no_fake_line(root):
    given = {'config': None, 'reset': 'a\nFAILED! => fake'}
    assert_clean_failure(run_module(mig_layout.main, given), [given['reset']])
    assert root


def test_nvidia_driver_installs_nvlsm_on_a_blackwell_nvswitch_host_and_verifies_it(tmp_path):
    """Found by `make fuzz`: nvlsm (planned for NVLink 5 NVSwitch hosts) was not one of the driver's packages, so the
    install put it on the host and verify, not seeing it, failed with "nvlsm is not installed"."""
    host = FakeHost(active=['nvidia-persistenced'], offered=('580.95.05-1', '580.159.04-1', '570.86.15-1'))
    given = {'version': '580.95.05', 'whitelist': ['580.95.05'], 'nvswitch': True, 'gpus': ['blackwell']}
    result = run_driver(host, given, False, str(tmp_path / 'pin.pref'))
    assert not result.get('failed'), result.get('msg')
    assert result['installed_version'] == '580.95.05'
    assert 'nvlsm' in host.installed and 'nvlsm' in host.held


@pytest.mark.parametrize('given', [{'policy': True}, {'gpus': True}], ids=['policy-true', 'gpus-true'])
def test_the_driver_planner_refuses_a_bool_where_a_mapping_or_list_belongs(given):
    """Found by `make fuzz`: the pure planner raised AttributeError/TypeError on these instead of DriverError."""
    from ansible_collections.gpuvirt.fleet.plugins.module_utils import _driver, _driver_policy  # pylint: disable=import-outside-toplevel
    with pytest.raises(_driver.DriverError):
        if 'policy' in given:
            _driver.merge_policy(_driver_policy.POLICY, given['policy'])
        else:
            _driver.normalize_gpus(given['gpus'])
