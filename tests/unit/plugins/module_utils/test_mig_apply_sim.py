# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_mig_apply in this process against the simulated NVML: the paths a module run cannot easily reach (a verify
mismatch, a surprise inside a step, a rollback that cannot finish, the NVML session during resets), and the
boot-time use without Ansible.

The stand-in pynvml is loaded under a private name and swapped into _nvml for each test only, so the real
nvidia-ml-py stays what `import pynvml` gives everywhere else.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _holders, _mig, _mig_apply, _nvml, _smi

REPO = Path(__file__).resolve().parents[4]
SIM_LIB = REPO / 'sim' / 'lib'
SMI = str(REPO / 'sim' / 'bin' / 'nvidia-smi')
H100 = 'h100-80gb-hbm3'
SEVEN_1G = [{'devices': 'all', 'instances': [{'profile': '1g.10gb', 'count': 7}]}]

if str(SIM_LIB) not in sys.path:
    sys.path.append(str(SIM_LIB))  # appended: the real pynvml stays first

from gpusim import cli as sim_cli  # noqa: E402  pylint: disable=wrong-import-position
from gpusim import store as sim_store  # noqa: E402  pylint: disable=wrong-import-position


def _sim_pynvml():
    if 'sim_pynvml' not in sys.modules:
        spec = importlib.util.spec_from_file_location('sim_pynvml', str(SIM_LIB / 'pynvml.py'))
        module = importlib.util.module_from_spec(spec)
        sys.modules['sim_pynvml'] = module
        spec.loader.exec_module(module)
    return sys.modules['sim_pynvml']


class Host:
    def __init__(self, root: Path):
        self.root = str(root)

    def ctl(self, *args: str) -> None:
        assert sim_cli.main(['--root', self.root] + list(args)) == 0, args

    def state(self) -> dict:
        return sim_store.load(self.root)

    def apply(self, declaration, **kwargs) -> dict:
        kwargs.setdefault('smi_path', SMI)
        # This machine's own processes and modules are not this simulated host's: a fleet host's daemons (in their own
        # namespaces, visible in this /proc) would otherwise count as holders of its GPUs.
        kwargs.setdefault('proc_root', os.path.join(os.path.dirname(self.root), 'no-proc'))
        kwargs.setdefault('sys_root', os.path.join(os.path.dirname(self.root), 'no-sys'))
        return _mig_apply.apply_declaration('node1', declaration, run_command=_smi.run_command, **kwargs)

    def layouts(self) -> list[tuple]:
        with _nvml.NvmlSession():
            return [_mig_apply.layout(gpu) for gpu in _mig_apply.observe()]


@pytest.fixture(name='host')
def host_fixture(tmp_path, monkeypatch):
    nvml = _sim_pynvml()
    while nvml._refcount > 0:  # pylint: disable=protected-access
        nvml.nvmlShutdown()
    root = tmp_path / 'gpusim'
    monkeypatch.setenv('GPUSIM_ROOT', str(root))
    monkeypatch.setattr(_nvml, 'pynvml', nvml)
    monkeypatch.setattr(_nvml, 'HAS_PYNVML', True)
    host = Host(root)
    host.ctl('init', '--hostname', 'node1', '--gpu', H100 + ':2')
    yield host
    assert nvml._refcount == 0, 'an NVML session was left open'  # pylint: disable=protected-access


def test_apply_reports_the_ids_it_created(host):
    result = host.apply([{'devices': [0], 'instances': [{'profile': '3g.40gb', 'start': 4, 'compute_instances': ['1c', '2c']}]}])
    assert not result['failed'] and result['changed']
    creates = [s for s in result['applied'] if s['action'].startswith('create')]
    gi = host.state()['gpus'][0]['gpu_instances'][0]
    assert [(s['action'], s['gpu_instance_id'], s.get('compute_instance_id')) for s in creates] == [
        ('create_gpu_instance', gi['id'], None)] + [('create_compute_instance', gi['id'], ci['id']) for ci in gi['compute_instances']]


def test_a_verify_mismatch_is_a_failure_and_is_rolled_back(host, monkeypatch):
    before = host.layouts()
    monkeypatch.setattr(_mig, 'verify', lambda desired, gpus: ['GPU 0 (x): something else is there'])
    result = host.apply(SEVEN_1G)
    assert result['failed'] and 'verify after apply found: GPU 0 (x): something else is there' in result['msg']
    assert result['failure']['step'] is None and result['rollback']['restored'] is True
    assert host.layouts() == before


def test_a_reworded_verify_message_changes_the_words_only(host, monkeypatch):
    monkeypatch.setattr(_mig, 'MESSAGES', dict(_mig.MESSAGES, missing_instance='GPU instance {wanted} did not appear',
                                               unexpected_instance='GPU instance {found} appeared instead'))
    declaration = [{'devices': [0], 'instances': [{'profile': '3g.40gb', 'start': 4}]}]
    before = host.layouts()
    original = _nvml.create_compute_instance
    monkeypatch.setattr(_nvml, 'create_compute_instance', lambda *_args: 7)  # a driver that answers but makes nothing
    result = host.apply(declaration)
    assert result['failed'] and result['failure']['step'] is None and result['rollback']['restored'] is True
    assert 'verify after apply found: GPU 0 (%s): GPU instance 3g.40gb at 4 with compute instances [3c] did not appear' % (
        host.state()['gpus'][0]['uuid']) in result['msg']
    assert host.layouts() == before and host.apply(declaration, check_mode=True)['steps']  # the health gate still sees the difference
    monkeypatch.setattr(_nvml, 'create_compute_instance', original)
    assert not host.apply(declaration)['failed'] and host.apply(declaration, check_mode=True)['steps'] == []


def test_an_unexpected_error_inside_a_step_is_rolled_back_too(host, monkeypatch):
    host.apply([{'devices': [1], 'instances': [{'profile': '7g.80gb'}]}])
    before = host.layouts()

    def boom(*_args):
        raise RuntimeError('boom')
    monkeypatch.setattr(_nvml, 'create_compute_instance', boom)
    result = host.apply([{'devices': 'all', 'instances': [{'profile': '4g.40gb'}, {'profile': '3g.40gb'}]}])
    assert result['failed'] and "unexpected error: RuntimeError('boom')" in result['msg'] and 'rolled back' in result['msg']
    assert host.layouts() == before


def test_a_rollback_that_cannot_finish_says_exactly_what_is_left(host):
    assert not host.apply(SEVEN_1G)['failed']
    host.ctl('fault', 'set', '--call', 'nvmlDeviceCreateGpuInstanceWithPlacement', '--error', 'NVML_ERROR_INSUFFICIENT_RESOURCES')
    result = host.apply([{'devices': [0], 'instances': [{'profile': '7g.80gb'}]}])
    assert result['failed'] and result['rollback']['restored'] is False
    assert 'ROLLBACK INCOMPLETE' in result['msg'] and 'create GPU instance 1g.10gb at 0 failed' in result['msg']
    assert 'GPU 0 (%s) is now MIG enabled (pending enabled): no GPU instances' % host.state()['gpus'][0]['uuid'] in result['msg']
    assert result['declaration'][0] == {'devices': [0], 'enabled': True, 'instances': []}  # the state at the end, as it is


def test_the_reset_runs_with_this_process_nvml_session_closed(host, monkeypatch):
    seen = []
    original = _smi.SmiRunner.reset

    def spy(self, gpu):
        seen.append(_nvml.pynvml._refcount)  # pylint: disable=protected-access
        return original(self, gpu)
    monkeypatch.setattr(_smi.SmiRunner, 'reset', spy)
    result = host.apply([{'devices': 'all', 'enabled': True}])
    assert not result['failed'] and seen == [0, 0]
    assert [g['resets'] for g in host.state()['gpus']] == [1, 1]


def test_a_mode_change_that_takes_effect_at_once_is_not_followed_by_a_reset(host, monkeypatch):
    original = _nvml.set_mig_mode

    def immediate(index, enabled):  # as on Hopper bare metal: no reset needed
        status = original(index, enabled)
        with sim_store.transaction(host.root) as state:
            state['gpus'][index]['mig']['current'] = state['gpus'][index]['mig']['pending']
        return status
    monkeypatch.setattr(_nvml, 'set_mig_mode', immediate)
    result = host.apply([{'devices': [0], 'instances': [{'profile': '7g.80gb'}]}])
    assert not result['failed']
    assert [s.get('skipped') for s in result['applied'] if s['action'] == 'reset_gpu'] == ['the MIG mode took effect without a reset']
    assert 'resets' not in host.state()['gpus'][0]


def test_without_nvidia_smi_a_mode_change_waits_for_a_reboot(host, monkeypatch):
    monkeypatch.setattr(_mig_apply.shutil, 'which', lambda name: None)
    result = host.apply([{'devices': [0], 'instances': [{'profile': '7g.80gb'}]}], smi_path=None)
    assert not result['failed'] and [r['gpu'] for r in result['reboot_required']] == [0]
    assert 'nvidia-smi is not installed' in result['reboot_required'][0]['reason']
    assert [s['action'] for s in result['deferred'][0]['steps']] == ['create_gpu_instance', 'create_compute_instance']


def test_a_host_without_a_loaded_driver_is_a_clear_failure(host):
    host.ctl('init', '--hostname', 'node1', '--gpu', H100 + ':1', '--driver-not-loaded')
    result = host.apply(SEVEN_1G)
    assert result['failed'] and 'NVML is not available' in result['msg'] and 'Driver Not Loaded' in result['msg']


def test_without_pynvml_the_result_names_the_package(host, monkeypatch):
    monkeypatch.setattr(_nvml, 'HAS_PYNVML', False)
    for result in (host.apply(SEVEN_1G), _mig_apply.export_state()):
        assert result['failed'] and result['missing_library'] == 'nvidia-ml-py'


def test_a_bad_reset_choice_is_refused(host):
    assert "reset must be one of auto, never, got 'sometimes'" in host.apply(SEVEN_1G, reset='sometimes')['msg']


def test_mig_parted_may_be_given_as_a_pair_and_names_the_exported_label(host):
    config = {'version': 'v1', 'mig-configs': {'halves': [{'devices': 'all', 'mig-enabled': True, 'mig-devices': {'3g.40gb': 2}}]}}
    result = host.apply(None, mig_parted=(config, 'halves'))
    assert not result['failed'] and list(result['mig_parted']['mig-configs']) == ['halves']
    assert result['mig_parted']['mig-configs']['halves'] == config['mig-configs']['halves']


# ---------------------------------------------------------------------------------------------------------
# The boot-time service: a copied tree, no Ansible


RUNTIME_FILES = ('_facts.py', '_inputs.py', '_mig.py', '_mig_apply.py', '_mig_declaration.py', '_mig_model.py', '_mig_parted.py', '_mig_solver.py',
                 '_nvidia_formats.py', '_nvml.py', '_nvml_mig.py', '_retry.py', '_selector.py', '_smi.py', '_holders.py', '_sysfs.py')


def test_a_copied_tree_applies_a_declaration_without_ansible(host, tmp_path):
    tree = tmp_path / 'runtime'
    target = tree / 'ansible_collections' / 'gpuvirt' / 'fleet' / 'plugins' / 'module_utils'
    target.mkdir(parents=True)
    for name in RUNTIME_FILES:
        shutil.copy(REPO / 'plugins' / 'module_utils' / name, target / name)
    poison = tmp_path / 'poison' / 'ansible'
    poison.mkdir(parents=True)
    (poison / '__init__.py').write_text("raise ImportError('ansible must not be imported at boot')\n")
    code = '''
import json, sys
from ansible_collections.gpuvirt.fleet.plugins.module_utils._mig_apply import apply_declaration
from ansible_collections.gpuvirt.fleet.plugins.module_utils._smi import run_command
result = apply_declaration('node1', json.loads(sys.argv[1]), run_command=run_command, proc_root=sys.argv[2], sys_root=sys.argv[2])
print(json.dumps({'failed': result['failed'], 'msg': result['msg'], 'changed': result['changed']}))
print(sorted(name for name in sys.modules if name == 'ansible' or name.startswith('ansible.')))
'''
    env = dict(os.environ, PATH=str(REPO / 'sim' / 'bin') + os.pathsep + os.environ['PATH'],
               PYTHONPATH=os.pathsep.join([str(tmp_path / 'poison'), str(tree), str(SIM_LIB)]))
    proc = subprocess.run([sys.executable, '-c', code, json.dumps(SEVEN_1G), str(tmp_path / 'empty')], capture_output=True, text=True, env=env,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    summary, modules = proc.stdout.splitlines()
    assert json.loads(summary) == {'failed': False, 'msg': '', 'changed': True} and modules == '[]'
    assert [len(g['gpu_instances']) for g in host.state()['gpus']] == [7, 7]


# ---------------------------------------------------------------------------------------------------------
# Holders: a GPU that must be reset is checked first (processes read from a /proc tree made here)


def _proc_tree(tmp_path, modules=('nvidia',), holders=()):
    proc = tmp_path / 'proc'
    proc.mkdir(parents=True)
    (proc / 'modules').write_text(''.join('%s 1 0 - Live 0x0\n' % name for name in modules))
    for pid, minor, command, unit in holders:
        (proc / str(pid) / 'fd').mkdir(parents=True)
        os.symlink('/dev/nvidia%d' % minor, proc / str(pid) / 'fd' / '4')
        (proc / str(pid) / 'cmdline').write_bytes(command.replace(' ', '\0').encode())
        (proc / str(pid) / 'comm').write_text(command.split()[0].rsplit('/', 1)[-1][:15])
        (proc / str(pid) / 'cgroup').write_text('1:name=systemd:/system.slice/%s\n' % unit)
    return str(proc)


def _mutations(host):
    return [(g.get('nvml_mutations'), g.get('resets')) for g in host.state()['gpus']] + [host.state().get('nvml_mutations')]


def test_a_held_gpu_is_not_touched_and_the_holder_is_named(host, tmp_path):
    minor = host.state()['gpus'][0]['minor']
    proc = _proc_tree(tmp_path, holders=[(812, minor, '/usr/bin/nvidia-persistenced --verbose', 'nvidia-persistenced.service')])
    declaration = [{'devices': [0], 'instances': [{'profile': '1g.10gb', 'count': 7}]}]
    before, counts = host.layouts(), _mutations(host)
    plan = host.apply(declaration, check_mode=True, proc_root=proc)
    assert not plan['failed'] and plan['disruptive'] and [h['pid'] for h in plan['holders']] == [812]
    result = host.apply(declaration, proc_root=proc)
    assert result['failed'] and not result['changed'] and result['applied'] == []
    assert ('GPU 0 is held by pid 812 (/usr/bin/nvidia-persistenced --verbose; unit nvidia-persistenced.service); '
            'nothing was changed') in result['msg']
    assert result['holders'] == [{'pid': 812, 'comm': 'nvidia-persiste', 'command': '/usr/bin/nvidia-persistenced --verbose',
                                  'unit': 'nvidia-persistenced.service', 'gpus': [0]}]
    assert host.layouts() == before and _mutations(host) == counts


def test_a_holder_of_another_gpu_or_a_change_without_reset_is_no_obstacle(host, tmp_path):
    other = host.state()['gpus'][1]['minor']
    proc = _proc_tree(tmp_path, holders=[(900, other, 'python3 /usr/local/bin/gpuvirt-exporter', 'gpuvirt-exporter.service')])
    result = host.apply([{'devices': [0], 'instances': [{'profile': '7g.80gb'}]}], proc_root=proc)
    assert not result['failed'] and result['changed'] and result['holders'] == []
    # GPU 0 is in MIG mode now: a new layout needs no reset, so its holders do not matter
    mine = _proc_tree(tmp_path / 'again', holders=[(901, host.state()['gpus'][0]['minor'], 'dcgm-exporter', 'dcgm-exporter.service')])
    result = host.apply([{'devices': [0], 'instances': [{'profile': '3g.40gb', 'count': 2}]}], proc_root=mine)
    assert not result['failed'] and result['changed'] and not result['disruptive'] and result['holders'] == []


@pytest.mark.parametrize('where', ['proc', 'sys'])
def test_a_loaded_nvidia_drm_leaves_the_mode_change_pending_for_a_reboot(host, tmp_path, where):
    sys_root = tmp_path / 'sys'
    (sys_root / 'module' / 'nvidia_drm').mkdir(parents=True)
    (sys_root / 'module' / 'nvidia_drm' / 'initstate').write_text('live\n' if where == 'sys' else 'going\n')
    proc = _proc_tree(tmp_path, modules=('nvidia', 'nvidia_modeset') + (('nvidia_drm',) if where == 'proc' else ()))
    result = host.apply([{'devices': [0], 'instances': [{'profile': '7g.80gb'}]}], proc_root=proc, sys_root=str(sys_root))
    assert not result['failed'], result['msg']
    assert [s['action'] for s in result['applied']] == ['set_mig_mode']
    assert result['reboot_required'] == [{'gpu': 0, 'uuid': host.state()['gpus'][0]['uuid'], 'reason': _holders.DRM_REASON}]
    assert [s['action'] for s in result['deferred'][0]['steps']] == ['create_gpu_instance', 'create_compute_instance']
    gpu = host.state()['gpus'][0]
    assert gpu['mig'] == {'current': 0, 'pending': 1} and 'resets' not in gpu
