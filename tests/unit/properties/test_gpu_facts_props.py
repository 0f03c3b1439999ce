# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpu_facts takes one input, `backend`: any generated value either gives facts of the simulated GPU or fails cleanly,
and the host is never changed (the module is read-only)."""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from ansible_collections.gpuvirt.fleet.plugins.modules import gpu_facts

from prop_support import assert_clean_failure, examples, hostile_values, run_module, simulated, strings_in  # pylint: disable=import-error


@pytest.fixture(name='root', scope='module')
def root_fixture():
    from gpusim import cli as sim_cli  # pylint: disable=import-error,import-outside-toplevel
    base = tempfile.mkdtemp(prefix='facts-props-')
    root = os.path.join(base, 'gpusim')
    assert sim_cli.main(['--root', root, 'init', '--hostname', 'node1', '--gpu', 'h100-80gb-hbm3']) == 0
    with simulated(root):
        yield root
    shutil.rmtree(base, ignore_errors=True)


@examples(15)
@given(args=st.one_of(st.fixed_dictionaries({'backend': st.sampled_from(['auto', 'nvml'])}),
                      st.fixed_dictionaries({}, optional={'backend': hostile_values(0), 'bogus': hostile_values(0)})))
def test_backend_gives_facts_or_fails_cleanly(root, args):
    with open(os.path.join(root, 'state.json'), 'rb') as handle:
        before = handle.read()
    result = run_module(gpu_facts.main, args)
    with open(os.path.join(root, 'state.json'), 'rb') as handle:
        assert handle.read() == before
    if result.get('failed'):
        event('failed')
        assert_clean_failure(result, strings_in(args))
        return
    event('succeeded')
    assert result['ansible_facts']['gpu_host']['gpu_count'] == 1 and result['changed'] is False
