# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Drift behind Ansible's back is seen and fixed by an otherwise cheap site.yml rerun (issue 20).

The roles observe each concern in one call on a rerun (gpuvirt.fleet.host_state for the exporter's files, account,
packages and unit; mig_layout's plan, which observes the boot-time MIG service's files and unit in the same call; the
nvidia_driver module's own observation) and skip their install and configure steps where everything is in place. This
proves that the skipping hides no drift: on a converged two-host fleet, five things are changed behind Ansible's back
(a MIG GPU instance destroyed, the boot-time MIG service disabled, a module file the collection no longer has left in
its code and the exporter's unit file edited on dr-mig, a driver package's apt hold removed on dr-driver); the rerun
changes exactly the tasks that fix them, on the host where they are, then a further rerun reports changed=0 on both
hosts and runs none of the install, configure and persist steps.

Needs root (the fleet) and the exporter wheels of `make demo` (.build/exporter-wheels). Brings up fleet-drift.yml
(fleet 'drift20', ports 24600-24699) once for the module, serves the stand-in driver packages
(sim/driver-packages/build.py) on 127.0.0.1:24699, and tears both down in the fixture's finaliser.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fleethost import REPO, VENV_BIN, ansible_env, fleet_up, recap  # noqa: E402 pylint: disable=import-error,wrong-import-position
from fleethost import fleet as _fleet  # noqa: E402 pylint: disable=import-error,wrong-import-position

HERE = Path(__file__).resolve().parent
FLEET = 'drift20'
HTTP_PORT = 24699
WHEELS = REPO / '.build' / 'exporter-wheels'
UNIT = '/etc/systemd/system/gpuvirt-exporter.service'
HELD = 'nvidia-driver-580-open'
RUNTIME_CODE = '/usr/local/lib/gpuvirt/ansible_collections/gpuvirt/fleet/plugins/module_utils'
TASK = re.compile(r'^(?:TASK|RUNNING HANDLER) \[(?:[\w.]+ : )?(.*?)\] \**$')

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason='the fleet needs root'),
              pytest.mark.skipif(not (WHEELS / '.stamp').exists(), reason='no exporter wheels: run make demo (or its wheel step) first')]

# Destroy the second GPU instance (and its compute instance) through NVML, as an operator's nvidia-smi mig -dci/-dgi would.
DESTROY_ONE_GI = r'''
import json, subprocess, pynvml
state = json.loads(subprocess.run(["gpusimctl", "show"], capture_output=True, text=True, check=True).stdout)
gi = state["gpus"][0]["gpu_instances"][-1]
pynvml.nvmlInit()
handle = pynvml.nvmlDeviceGetHandleByIndex(0)
instance = pynvml.nvmlDeviceGetGpuInstanceById(handle, gi["id"])
for ci in gi["compute_instances"]:
    pynvml.nvmlComputeInstanceDestroy(pynvml.nvmlGpuInstanceGetComputeInstanceById(instance, ci["id"]))
pynvml.nvmlGpuInstanceDestroy(instance)
pynvml.nvmlShutdown()
print(gi["id"])
'''


class Fleet:
    def __init__(self, workdir: Path, inventory: Path):
        self.workdir = workdir
        self.inventory = inventory

    def site(self, name: str) -> tuple[subprocess.CompletedProcess, set[tuple[str, str]]]:
        """site.yml on both hosts; the run and its changed (task, host) pairs."""
        variables = {'exporter_wheel_dir': str(WHEELS), 'gpuvirt_output_dir': str(self.workdir / 'out'),
                     'driver_repository': 'mirror', 'driver_repository_url': 'http://127.0.0.1:%d/' % HTTP_PORT,
                     'driver_repository_keyring_src': str(self.workdir / 'keyring.gpg')}
        varfile = self.workdir / 'vars.json'
        varfile.write_text(json.dumps(variables))
        started = time.monotonic()
        proc = subprocess.run([str(VENV_BIN / 'ansible-playbook'), '-i', str(self.inventory), '-e', '@%s' % varfile,
                               str(REPO / 'playbooks' / 'site.yml')], capture_output=True, text=True, timeout=600, cwd=REPO,
                              env=ansible_env(ANSIBLE_STDOUT_CALLBACK='default'), check=False)
        (self.workdir / ('%s.log' % name)).write_text(proc.stdout + proc.stderr)
        print('site.yml %s: %.1f s' % (name, time.monotonic() - started))
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
        changed, task = set(), None
        for line in proc.stdout.splitlines():
            match = TASK.match(line)
            if match:
                task = match.group(1)
            elif line.startswith('changed: [') and task:
                changed.add((task, line.split('[', 1)[1].split(']', 1)[0].split(' ')[0]))
        return proc, changed

    def sh(self, host: str, command: str) -> str:
        proc = _fleet('exec', '--fleet', FLEET, host, '--', 'sh', '-c', command, check=False)
        assert proc.returncode == 0, '%r on %s failed: %s %s' % (command, host, proc.stdout, proc.stderr)
        return proc.stdout


@pytest.fixture(scope='module', name='fleet')
def fleet_fixture(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('drift')
    subprocess.run([sys.executable, str(REPO / 'sim' / 'driver-packages' / 'build.py'), str(workdir), '--version', '580.159.04'],
                   check=True, capture_output=True)
    server = subprocess.Popen([sys.executable, '-m', 'http.server', str(HTTP_PORT), '--bind', '127.0.0.1', '--directory', str(workdir / 'repo')],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with fleet_up(FLEET, HERE / 'fleet-drift.yml', workdir) as inventory:
            yield Fleet(workdir, inventory)
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_the_first_run_converges_both_hosts(fleet):
    started = time.time()
    proc, changed = fleet.site('first')
    assert recap(proc, 'dr-mig') > 0 and recap(proc, 'dr-driver') > 0
    # the gates after the change publish the drift of every kind verified in one call, not one per role
    assert ('Publish the drift of every kind verified, in one call', 'dr-mig') in changed, changed
    for write in re.findall(r"TASK \[[^\]]*Write this host's [^\]]* drift into the declaration drift file\] \**\n((?:\w+: \[.*\n)+)", proc.stdout):
        assert set(line.split(':')[0] for line in write.splitlines()) == {'skipping'}, write
    entries = json.loads(fleet.sh('dr-mig', 'cat /var/lib/gpuvirt/drift.json'))
    assert entries['mig']['drift'] is False and started - 5 <= entries['mig']['checked'] <= time.time() + 5, entries
    assert HELD in fleet.sh('dr-driver', 'apt-mark showhold').split()


def test_drift_behind_ansibles_back_is_fixed_exactly_where_it_is(fleet):
    before = json.loads(fleet.sh('dr-mig', 'gpusimctl show'))['gpus'][0]['gpu_instances']
    fleet.sh('dr-mig', "python3 -c '%s'" % DESTROY_ONE_GI.replace("'", "'\"'\"'"))
    assert len(json.loads(fleet.sh('dr-mig', 'gpusimctl show'))['gpus'][0]['gpu_instances']) == len(before) - 1
    fleet.sh('dr-mig', "sed -i 's/^Description=.*/Description=edited by hand/' %s" % UNIT)
    fleet.sh('dr-mig', 'systemctl disable --quiet gpuvirt-mig.service')
    # code an older collection had and this one no longer has, left in the boot-time service's copy
    fleet.sh('dr-mig', 'echo "RETIRED = 1" > %s/_retired.py' % RUNTIME_CODE)
    fleet.sh('dr-driver', 'apt-mark unhold %s' % HELD)
    assert HELD not in fleet.sh('dr-driver', 'apt-mark showhold').split()

    invocation = fleet.sh('dr-mig', 'systemctl show --property=InvocationID --value gpuvirt-exporter.service').strip()
    proc, changed = fleet.site('drift')
    on_mig = {task for task, host in changed if host == 'dr-mig'}
    on_driver = {task for task, host in changed if host == 'dr-driver'}
    # dr-mig: the lost GPU instance is created again, the boot-time MIG service enabled again and its retired code
    # removed (seen by the plan's own observation, the same call), the unit file written back and the exporter
    # restarted (in the call that writes the unit); nothing else (the check-mode
    # plan that found the lost instance reports the change it plans, as it always does)
    assert on_mig == {"Plan the MIG change without touching the GPUs, and observe the boot-time service's files, code and unit",
                      'Apply the MIG layout',
                      'Install the boot-time runner, the declared layout it applies, its unit and the code it runs, and enable it (one call)',
                      "Write the exporter's configuration and unit, and enable and (re)start it (one call)"}, changed
    assert fleet.sh('dr-mig', 'systemctl is-enabled gpuvirt-mig.service').strip() == 'enabled'
    assert fleet.sh('dr-mig', 'ls %s' % RUNTIME_CODE).split() and '_retired.py' not in fleet.sh('dr-mig', 'ls %s' % RUNTIME_CODE).split()
    # dr-driver: the driver module puts the hold back; nothing else
    assert on_driver == {'Install the whitelisted NVIDIA driver, pinned and held'}, changed
    assert HELD in fleet.sh('dr-driver', 'apt-mark showhold').split()
    after = json.loads(fleet.sh('dr-mig', 'gpusimctl show'))['gpus'][0]['gpu_instances']
    assert sorted((gi['profile_id'], gi['start']) for gi in after) == sorted((gi['profile_id'], gi['start']) for gi in before)
    assert 'edited by hand' not in fleet.sh('dr-mig', 'cat %s' % UNIT)
    assert fleet.sh('dr-mig', 'systemctl is-active gpuvirt-exporter.service').strip() == 'active'
    assert fleet.sh('dr-mig', 'systemctl show --property=InvocationID --value gpuvirt-exporter.service').strip() != invocation  # restarted

    # the rerun after the fix: changed=0, and the observations found everything in place, so the install, configure
    # and persist steps were not run at all
    proc, changed = fleet.site('after')
    assert changed == set() and recap(proc, 'dr-mig') == 0 and recap(proc, 'dr-driver') == 0
    for skipped in ('Install the exporter', 'Configure and run the exporter', 'Keep the layout across reboots'):
        assert re.search(r'TASK \[[^\]]*%s\] \*+\nskipping: \[dr-mig\]' % re.escape(skipped), proc.stdout), skipped
