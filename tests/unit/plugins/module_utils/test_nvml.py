# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The NVML seam's sessions (context managers) and the MIG enumeration it shares with the exporter.

A counting pynvml double is enough here: what a session does is nvmlInit and nvmlShutdown, once each; the simulator
runs the same code in test_mig_apply_sim and the integration tests.
"""
from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _nvml, _nvml_mig

REPO = Path(__file__).resolve().parents[4]


class NVMLError(Exception):
    pass


class NVMLErrorDriverNotLoaded(NVMLError):
    pass


class NVMLErrorGpuIsLost(NVMLError):
    pass


class NVMLErrorNotSupported(NVMLError):
    pass


def _double(init_error: Exception | None = None, profiles: dict | None = None, lost_at: int | None = None):
    calls = []

    def init():
        calls.append('init')
        if init_error is not None:
            raise init_error

    def profile_info(handle, enum):
        if enum == lost_at:
            raise NVMLErrorGpuIsLost('GPU is lost')
        if enum not in (profiles or {}):
            raise NVMLErrorNotSupported('Not Supported')
        return SimpleNamespace(id=profiles[enum], handle=handle)

    return calls, SimpleNamespace(
        NVMLError=NVMLError, NVMLError_LibraryNotFound=NVMLErrorDriverNotLoaded, NVMLError_DriverNotLoaded=NVMLErrorDriverNotLoaded,
        NVMLError_GpuIsLost=NVMLErrorGpuIsLost, nvmlInit=init, nvmlShutdown=lambda: calls.append('shutdown'),
        nvmlDeviceGetGpuInstanceProfileInfo=profile_info)


@pytest.fixture(name='calls')
def calls_fixture(monkeypatch):
    calls, double = _double()
    monkeypatch.setattr(_nvml, 'pynvml', double)
    return calls


def test_with_opens_and_closes_once(calls):
    with _nvml.NvmlSession() as session:
        assert session.active and calls == ['init']
    assert not session.active and calls == ['init', 'shutdown']


def test_a_session_opened_before_is_entered_as_it_is_and_closed_on_leaving(calls):
    session = _nvml.NvmlSession().open()
    assert session.open() is session and calls == ['init']
    with session:
        assert calls == ['init']
    assert calls == ['init', 'shutdown']
    session.close()
    assert calls == ['init', 'shutdown']


def test_suspended_closes_for_the_block_and_opens_again_also_after_a_failure(calls):
    with _nvml.NvmlSession() as session:
        with session.suspended():
            assert not session.active and calls == ['init', 'shutdown']
        assert session.active
        with pytest.raises(RuntimeError), session.suspended():
            raise RuntimeError('the reset failed')
        assert session.active and calls == ['init', 'shutdown', 'init', 'shutdown', 'init']
    assert calls[-1] == 'shutdown' and calls.count('init') == calls.count('shutdown') == 3


def test_open_or_report_says_why_and_keeps_nothing_open(monkeypatch):
    calls, double = _double(init_error=NVMLErrorDriverNotLoaded('Driver Not Loaded'))
    monkeypatch.setattr(_nvml, 'pynvml', double)
    monkeypatch.setattr(_nvml, 'HAS_PYNVML', True)
    result = {}
    assert _nvml.open_or_report(result, _nvml.NvmlSession().open) is None
    assert result == {'failed': True, 'msg': 'NVML is not available (is the NVIDIA driver loaded?): Driver Not Loaded'}
    assert calls == ['init']
    monkeypatch.setattr(_nvml, 'HAS_PYNVML', False)
    result = {}
    assert _nvml.open_or_report(result, _nvml.NvmlSession().open) is None
    assert result['failed'] and result['missing_library'] == 'nvidia-ml-py' and calls == ['init']


def test_profile_probing_skips_absent_profiles_and_raises_or_skips_a_lost_gpu():
    _calls, double = _double(profiles={0: 19, 5: 9, 9: 15}, lost_at=7)
    with pytest.raises(NVMLErrorGpuIsLost):
        list(_nvml_mig.gpu_instance_profiles(double, 'h'))
    assert [info.id for info in _nvml_mig.gpu_instance_profiles(double, 'h', skip_lost=True)] == [19, 9, 15]


def test_the_exporter_ships_the_same_standalone_file():
    shipped = REPO / 'roles' / 'exporter' / 'files' / 'gpuvirt_exporter' / 'nvml_mig.py'
    assert shipped.is_symlink() and shipped.samefile(REPO / 'plugins' / 'module_utils' / '_nvml_mig.py')
    imported = {alias.name for node in ast.walk(ast.parse(shipped.read_text())) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(ast.parse(shipped.read_text())) if isinstance(node, ast.ImportFrom)}
    assert imported == {'__future__', 'ctypes'}  # no Ansible, no collection, no pynvml: the exporter stays standalone
    exporter_vars = yaml.safe_load((REPO / 'roles' / 'exporter' / 'vars' / 'main.yml').read_text())
    assert 'nvml_mig.py' in exporter_vars['__exporter_files']
