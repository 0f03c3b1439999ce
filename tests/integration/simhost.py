# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A simulated GPU host for integration tests: modules run unchanged, as subprocesses, against it.

The stand-in pynvml and nvidia-smi are installed the way the real ones are (pynvml importable, nvidia-smi on PATH),
so a module cannot tell the difference; `gpusimctl` and the state file are the test's view behind the scenes.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIM_LIB = os.path.join(REPO, 'sim', 'lib')
SIM_BIN = os.path.join(REPO, 'sim', 'bin')
MODULES = os.path.join(REPO, 'plugins', 'modules')


def collections_path() -> str:
    """A directory holding ansible_collections/gpuvirt/fleet (this checkout), for PYTHONPATH."""
    parts = REPO.split(os.sep)
    if len(parts) > 3 and parts[-3] == 'ansible_collections':
        return os.sep.join(parts[:-3])
    link = os.path.join(REPO, '.build', 'ansible_collections', 'gpuvirt', 'fleet')
    if not os.path.exists(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink('../../..', link)
    return os.path.join(REPO, '.build')


class SimHost:
    """One simulated GPU host: its own state directory, reached through the installed stand-ins."""

    def __init__(self, root: str):
        self.root = root
        self.env = dict(os.environ, GPUSIM_ROOT=root, PATH=SIM_BIN + os.pathsep + os.environ['PATH'],
                        PYTHONPATH=os.pathsep.join([SIM_LIB, collections_path()]))

    def ctl(self, *args: str) -> str:
        proc = subprocess.run([sys.executable, os.path.join(SIM_BIN, 'gpusimctl'), '--root', self.root] + list(args),
                              capture_output=True, text=True, env=self.env, check=False)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def nvml(self, code: str) -> str:
        """Drive the simulated GPUs through the pynvml API, as an operator's tool would."""
        proc = subprocess.run([sys.executable, '-c', 'import pynvml\npynvml.nvmlInit()\n' + code], capture_output=True,
                              text=True, env=self.env, check=False)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def state(self) -> dict:
        """The simulator's state file (GPUs, instances with their creation uids, mutation and reset counts)."""
        with open(os.path.join(self.root, 'state.json'), encoding='utf-8') as handle:
            return json.load(handle)

    def mutations(self) -> int:
        """Mutating NVML calls made on this host so far (failed ones included)."""
        return sum(self.state().get('nvml_mutations', {}).values())

    def resets(self) -> list[int]:
        """GPU resets per GPU index."""
        return [gpu.get('resets', 0) for gpu in self.state()['gpus']]

    def module(self, name: str, args: dict, check_mode: bool = False, diff: bool = False, extra_path: str | None = None) -> dict:
        """Run plugins/modules/<name>.py as Ansible runs it on a host: JSON arguments in, JSON result out."""
        env = dict(self.env)
        if extra_path:
            env['PYTHONPATH'] = extra_path + os.pathsep + env['PYTHONPATH']
        payload = dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)
        # in a PID namespace of its own where we are root: the simulated GPUs are held by nobody, whatever else runs on
        # this machine (fleet hosts' daemons show in this machine's /proc with their /dev/nvidia<minor> open)
        isolate = ['unshare', '--pid', '--fork', '--mount-proc'] if os.geteuid() == 0 and shutil.which('unshare') else []
        proc = subprocess.run(isolate + [sys.executable, os.path.join(MODULES, name + '.py')], input=json.dumps({'ANSIBLE_MODULE_ARGS': payload}),
                              capture_output=True, text=True, env=env, check=False)
        try:
            return json.loads(proc.stdout)
        except ValueError as exc:
            raise AssertionError('module %s printed no JSON result: %s %s' % (name, proc.stdout, proc.stderr)) from exc

    def facts(self, backend: str = 'auto', extra_path: str | None = None, expect_failure: bool = False) -> dict:
        result = self.module('gpu_facts', {'backend': backend}, extra_path=extra_path)
        assert bool(result.get('failed')) == expect_failure, result
        return result if expect_failure else result['ansible_facts']
