# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The declaration drift file the mig and vgpu roles' verify entry points write (gpuvirt_drift_file), for the exporter's
gpuvirt_declaration_drift{kind} and the GpuDeclarationDrift / GpuDeclarationNotChecked alerts.

ansible-playbook runs the roles' verify entry points on localhost against a simulated GPU host (the NVML stand-in of
sim/, found the way a module finds the real pynvml), so the declaration gate is the real one: a drift is written to
the file and the gate still fails; a match is written and the gate passes; the other kind's entry is kept; a kind
with nothing declared loses its entry; a rerun reports no change although the time moved; a file that is not a JSON
object fails the run, named, and is left as it was.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
SIM_LIB = REPO / 'sim' / 'lib'
SIM_BIN = REPO / 'sim' / 'bin'
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name('ansible-playbook')
MIG_OFF = [{'devices': 'all', 'enabled': False}]
MIG_SEVEN = [{'devices': 'all', 'instances': [{'profile': '1g.10gb', 'count': 7}]}]
WRITE_TASK = re.compile(r"^TASK \[gpuvirt\.fleet\.(mig|vgpu) : Write this host's .* drift into the declaration drift file\]")

pytestmark = pytest.mark.skipif(not ANSIBLE_PLAYBOOK.exists(), reason='needs ansible-playbook beside the Python running the tests')


class Host:
    """A simulated H100 host (MIG off) and a play that runs the mig and vgpu roles' verify entry points on it."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.drift_file = tmp_path / 'state' / 'drift.json'
        self.env = dict(os.environ, GPUSIM_ROOT=str(tmp_path / 'gpusim'), PATH='%s%s%s' % (SIM_BIN, os.pathsep, os.environ['PATH']),
                        PYTHONPATH=str(SIM_LIB), ANSIBLE_NOCOLOR='1', ANSIBLE_LOCALHOST_WARNING='False',
                        ANSIBLE_INVENTORY_UNPARSED_WARNING='False', ANSIBLE_COLLECTIONS_PATH=str(REPO / '.build'),
                        ANSIBLE_CONFIG=str(REPO / 'ansible.cfg'))
        subprocess.run([sys.executable, str(SIM_BIN / 'gpusimctl'), '--root', self.env['GPUSIM_ROOT'], 'init', '--hostname', 'drift-node',
                        '--gpu', 'h100-80gb-hbm3:1'], env=self.env, check=True, capture_output=True)
        play = [{'name': 'Verify', 'hosts': 'localhost', 'connection': 'local', 'gather_facts': False, 'tasks': [
            {'name': 'Verify MIG', 'ansible.builtin.include_role': {'name': 'gpuvirt.fleet.mig', 'tasks_from': 'verify'}},
            {'name': 'Verify vGPU', 'ansible.builtin.include_role': {'name': 'gpuvirt.fleet.vgpu', 'tasks_from': 'verify'}}]}]
        (tmp_path / 'verify.yml').write_text(yaml.safe_dump(play, sort_keys=False), encoding='utf-8')

    def verify(self, mig, vgpu=None) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
        """Run the play; the result and, per kind, what its write task reported (changed, ok, skipping)."""
        variables = {'mig_declaration': mig, 'vgpu_declaration': vgpu or [], 'gpuvirt_drift_file': str(self.drift_file),
                     'ansible_python_interpreter': sys.executable}
        (self.tmp / 'vars.json').write_text(json.dumps(variables), encoding='utf-8')
        proc = subprocess.run([str(ANSIBLE_PLAYBOOK), '-i', 'localhost,', '-e', '@%s' % (self.tmp / 'vars.json'), str(self.tmp / 'verify.yml')],
                              capture_output=True, text=True, cwd=self.tmp, env=self.env, timeout=300, check=False)
        writes, kind = {}, None
        for line in proc.stdout.splitlines():
            match = WRITE_TASK.match(line)
            if match:
                kind = match.group(1)
            elif kind and line.split(':')[0] in ('changed', 'ok', 'skipping', 'fatal'):
                writes[kind] = line.split(':')[0]
                kind = None
        return proc, writes

    def entries(self) -> dict:
        return json.loads(self.drift_file.read_text(encoding='utf-8'))


@pytest.fixture(name='host')
def host_fixture(tmp_path):
    return Host(tmp_path)


def test_the_verify_entry_points_publish_the_drift_and_keep_the_gate(host):
    """One host through five verify runs (each ansible-playbook run costs seconds, so they share one scenario)."""
    # 1. a file left by earlier runs: a vGPU entry (nothing is declared for vGPU now) and an entry of another kind
    host.drift_file.parent.mkdir(parents=True)
    host.drift_file.write_text(json.dumps({'vgpu': {'drift': True, 'checked': 1700000000}, 'other': {'drift': False, 'checked': 5}}))
    before = int(time.time())
    proc, writes = host.verify(MIG_OFF)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert writes == {'mig': 'changed', 'vgpu': 'changed'}
    first = host.entries()
    assert set(first) == {'mig', 'other'}  # the stale vGPU entry went, the other kind's stayed as it was
    assert first['other'] == {'drift': False, 'checked': 5}
    assert first['mig']['drift'] is False and before <= first['mig']['checked'] <= int(time.time())

    # 2. a rerun: the time moves, nothing else; the play reports no change at all
    time.sleep(1.1)
    proc, writes = host.verify(MIG_OFF)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert writes == {'mig': 'ok', 'vgpu': 'ok'}  # the vGPU kind: nothing declared, no entry, nothing written
    assert re.search(r'localhost\s+: ok=\d+\s+changed=0 ', proc.stdout), proc.stdout[-1500:]
    second = host.entries()
    assert second['mig']['drift'] is False and second['mig']['checked'] > first['mig']['checked']

    # 3. the GPUs no longer hold the declaration: the drift is written, and the gate still fails
    proc, writes = host.verify(MIG_SEVEN)
    assert proc.returncode != 0
    assert 'the MIG layout differs from the declaration' in proc.stdout
    assert writes == {'mig': 'changed'}  # the drift flipped (the failed gate ends the play before vGPU)
    assert host.entries()['mig']['drift'] is True and host.entries()['other'] == first['other']

    # 4. MIG no longer declared: its entry goes
    proc, writes = host.verify([])
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert writes == {'mig': 'changed', 'vgpu': 'ok'}
    assert host.entries() == {'other': {'drift': False, 'checked': 5}}

    # 5. a file that is not JSON: the run fails naming it, before the gate, and the file is left as it was
    host.drift_file.write_text('{"mig": {"drift": tru')
    proc, writes = host.verify(MIG_OFF)
    assert proc.returncode != 0
    assert '%s is not a JSON object of kind -> {' % host.drift_file in proc.stdout
    assert writes == {'mig': 'fatal'}  # the write task read it and refused
    assert host.drift_file.read_text() == '{"mig": {"drift": tru'


def test_the_scheduled_verify_playbook_checks_both_kinds_and_fails_a_drifted_host(host):
    """playbooks/verify.yml (gpuvirt.fleet.verify): both kinds are checked and written even when the first drifted."""
    variables = {'mig_declaration': MIG_SEVEN, 'vgpu_declaration': [], 'gpuvirt_drift_file': str(host.drift_file),
                 'ansible_python_interpreter': sys.executable, 'gpuvirt_target_hosts': 'localhost', 'ansible_become': False}
    (host.tmp / 'vars.json').write_text(json.dumps(variables), encoding='utf-8')
    run = [str(ANSIBLE_PLAYBOOK), '-i', 'localhost,', '-c', 'local', '-e', '@%s' % (host.tmp / 'vars.json'), str(REPO / 'playbooks' / 'verify.yml')]
    proc = subprocess.run(run, capture_output=True, text=True, cwd=host.tmp, env=host.env, timeout=300, check=False)
    assert proc.returncode != 0 and 'MIG: the MIG layout differs from the declaration' in proc.stdout and 'set_mig_mode' in proc.stdout, proc.stdout[-3000:]
    assert host.entries()['mig']['drift'] is True
    variables['mig_declaration'] = MIG_OFF
    (host.tmp / 'vars.json').write_text(json.dumps(variables), encoding='utf-8')
    proc = subprocess.run(run, capture_output=True, text=True, cwd=host.tmp, env=host.env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert host.entries()['mig']['drift'] is False
