# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The boot-time re-apply of the mig and vgpu roles gets its code without a list anyone keeps: the roles' runtime.yml
(run here by ansible-playbook, on localhost, into a temporary directory) installs every module_utils file the
collection has, removes what it no longer has, and changes nothing on a rerun; the boot-time runner then imports all
it needs from that copy alone, in an interpreter without site-packages (no Ansible, as on a host at boot).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name('ansible-playbook')
MODULE_UTILS = REPO / 'plugins' / 'module_utils'
RUNNERS = {'mig': 'gpuvirt-mig-apply', 'vgpu': 'gpuvirt-vgpu-apply'}

pytestmark = [pytest.mark.skipif(not ANSIBLE_PLAYBOOK.exists(), reason='needs ansible-playbook beside the Python running the tests'),
              pytest.mark.skipif(os.geteuid() != 0, reason="the role installs the code as root's")]


def _install(tmp_path: Path, runtime: Path) -> subprocess.CompletedProcess:
    """runtime.yml of the mig role, then of the vgpu role, both into `runtime` (their default is one directory too)."""
    playbook = tmp_path / 'play.yml'
    playbook.write_text(yaml.safe_dump([{'name': 'Install the boot-time code', 'hosts': 'localhost', 'gather_facts': False, 'tasks': [
        {'name': 'Install it with the %s role' % role, 'ansible.builtin.include_role': {'name': 'gpuvirt.fleet.%s' % role, 'tasks_from': 'runtime'}}
        for role in ('mig', 'vgpu')]}]))
    variables = {'mig_runtime_dir': str(runtime), 'vgpu_runtime_dir': str(runtime), 'ansible_python_interpreter': sys.executable}
    env = dict(os.environ, ANSIBLE_NOCOLOR='1', ANSIBLE_LOCALHOST_WARNING='False', ANSIBLE_INVENTORY_UNPARSED_WARNING='False',
               ANSIBLE_COLLECTIONS_PATH=str(REPO / '.build'))
    env.pop('ANSIBLE_CONFIG', None)
    proc = subprocess.run([str(ANSIBLE_PLAYBOOK), '-i', 'localhost,', '-c', 'local', '-e', json.dumps(variables), str(playbook)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return proc


def _changed(proc: subprocess.CompletedProcess) -> int:
    line = next(line for line in proc.stdout.splitlines() if line.startswith('localhost ') and 'changed=' in line)
    return int(line.split('changed=')[1].split()[0])


def test_the_roles_install_every_module_utils_file_and_the_runners_import_from_that_copy_alone(tmp_path):
    runtime = tmp_path / 'runtime'
    code = runtime / 'ansible_collections' / 'gpuvirt' / 'fleet' / 'plugins' / 'module_utils'
    code.mkdir(parents=True)
    (code / '_gone.py').write_text('# a file an older collection had\n')
    (code / 'notes.txt').write_text('not code: left alone\n')
    proc = _install(tmp_path, runtime)
    assert _changed(proc) > 0
    assert sorted(path.name for path in code.glob('*.py')) == sorted(path.name for path in MODULE_UTILS.glob('*.py'))
    assert all((code / path.name).read_bytes() == path.read_bytes() for path in MODULE_UTILS.glob('*.py'))
    assert (code / 'notes.txt').exists()
    # the vgpu role found the mig role's copy complete (the stamp), and a rerun of both changes nothing
    assert 'Install it with the vgpu role' in proc.stdout and _changed(_install(tmp_path, runtime)) == 0

    # Each runner as its unit runs it, beside the copy; -I -S: no site-packages and no PYTHONPATH, so no Ansible and
    # nothing of this checkout. Importing it (not running main) imports everything the re-apply needs.
    for role, runner in sorted(RUNNERS.items()):
        shutil.copy(REPO / 'roles' / role / 'files' / runner, runtime / runner)
        check = subprocess.run([sys.executable, '-I', '-S', '-c',
                                'import json, runpy, sys; runpy.run_path(sys.argv[1], run_name="boot_check"); '
                                'print(json.dumps(sorted(m for m in sys.modules if m.startswith("ansible"))))', str(runtime / runner)],
                               capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False)
        assert check.returncode == 0, (runner, check.stderr)
        loaded = json.loads(check.stdout)
        assert not [name for name in loaded if name == 'ansible' or name.startswith('ansible.')], (runner, loaded)
        assert 'ansible_collections.gpuvirt.fleet.plugins.module_utils._%s_apply' % role in loaded
