# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""gpuvirt.fleet.slurm on the fleet with Debian's real Slurm 22.05 (slurmctld, slurmd, munge on one host): a MIG
change through the mig role, which runs the slurm role's drain and sync entry points around it (slurm.yml).

- Slurm sees the new MIG devices and runs a job on one (srun --gres=gpu:<profile>:1);
- a running job holds the change back until it has ended;
- a drain timeout fails clearly, resumes the node, and leaves the GPUs untouched.

Needs root (the fleet). Fleet 'slurm' (fleet-slurm.yml, ports 24000+; slurmctld 24010, slurmd 24011). The Slurm
packages are downloaded once into .build/slurm-debs (sim/slurm/slurm_fleet.py).
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[0]))
sys.path.insert(0, str(HERE.parents[2] / 'sim' / 'slurm'))
from fleethost import FleetHost, fleet_up  # noqa: E402 pylint: disable=import-error,wrong-import-position
import slurm_fleet  # noqa: E402 pylint: disable=import-error,wrong-import-position

FLEET = 'slurm'
HOST = 'sl-h100'
WHOLE = 'nvidia_h100_80gb_hbm3'
MIXED = [{'name': 'mixed', 'devices': [0], 'enabled': True,
          'instances': [{'profile': '3g.40gb', 'start': 0}, {'profile': '1g.10gb', 'start': 4}]}]
HALVES = [{'name': 'halves', 'devices': [0], 'enabled': True,
           'instances': [{'profile': '3g.40gb', 'start': 0}, {'profile': '3g.40gb', 'start': 4}]}]
FAST = {'slurm_poll_interval': 1, 'slurm_verify_timeout': 60}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='the fleet needs root')


class Host(FleetHost):
    def node(self) -> dict:
        """scontrol show node, as key -> value (Reason keeps its blanks)."""
        line = self.sh('scontrol show node -o %s' % HOST).strip()
        fields, key = {}, None
        for word in line.split(' '):
            if '=' in word and (key != 'Reason' or word.split('=', 1)[0].isalpha()):
                key, value = word.split('=', 1)
                fields[key] = value
            elif key:
                fields[key] += ' ' + word
        return fields

    def gres(self) -> dict:
        return {item.rsplit(':', 1)[0]: int(item.rsplit(':', 1)[1]) for item in self.node()['Gres'].split(',') if item}

    def mutations(self) -> dict:
        return self.state().get('nvml_mutations', {})

    def layout(self) -> list:
        return sorted((gi['profile_id'], gi['start']) for gi in self.state()['gpus'][0]['gpu_instances'])


@pytest.fixture(scope='module', name='host')
def host_fixture(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('slurm')
    with fleet_up(FLEET, HERE / 'fleet-slurm.yml', workdir) as inventory:
        slurm_fleet.install(FLEET, HOST, ctld_port=24010, slurmd_port=24011)
        host = Host(FLEET, HOST, workdir, inventory, HERE / 'slurm.yml')
        # Start from a configured node: the two whole GPUs in gres.conf and slurm.conf (sync alone).
        proc = host.play(slurm_test_drain=False, slurm_test_change=False, **FAST)
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
        assert host.gres() == {'gpu:' + WHOLE: 2}
        yield host


def test_slurm_sees_the_new_mig_devices_and_runs_a_job_on_one(host):
    proc = host.play(gpu_mig=MIXED, **FAST)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    node = host.node()
    assert host.gres() == {'gpu:3g.40gb': 1, 'gpu:1g.10gb': 1, 'gpu:' + WHOLE: 1}
    assert node['State'] == 'IDLE', node
    gres_conf = [line for line in host.sh('cat /etc/slurm/gres.conf').splitlines() if line.startswith('NodeName=')]
    index = next(i for i, line in enumerate(gres_conf) if 'Type=1g.10gb ' in line)
    files = gres_conf[index].split('MultipleFiles=')[1].split(',')
    assert files[0] == '/dev/nvidia0' and all(host.sh('test -c %s && echo yes' % f).strip() == 'yes' for f in files)
    out = host.sh('srun --gres=gpu:1g.10gb:1 sh -c \'echo "$SLURM_JOB_ID $CUDA_VISIBLE_DEVICES"; scontrol show job -d $SLURM_JOB_ID\'')
    job, visible = out.split()[:2]
    # Without device cgroups Slurm 22.05 gives the node-global GRES index, i.e. the line of gres.conf; the running
    # job's detail names the same index of the 1g.10gb device.
    assert visible == str(index), out
    assert 'GRES=gpu:1g.10gb:1(IDX:%d)' % index in out, out
    assert job.isdigit()
    # Nothing changed since: a second sync (no drain) changes nothing.
    again = host.play(slurm_test_drain=False, slurm_test_change=False, **FAST)
    assert again.returncode == 0 and host.changed(again) == 0, again.stdout[-4000:]


def test_a_running_job_holds_the_change_back_until_it_has_ended(host):
    job = host.sh("sbatch --parsable -o /tmp/job-%j.out --wrap 'sleep 6; date +%s.%N > /tmp/job-end'").strip()
    host.sh('for i in $(seq 40); do squeue -h -j %s -o %%T | grep -q RUNNING && exit 0; sleep 0.25; done; exit 1' % job)
    before = host.mutations()
    result = {}
    play = threading.Thread(target=lambda: result.update(proc=host.play(gpu_mig=HALVES, **FAST)))
    play.start()
    first_change = None
    while play.is_alive():
        now = float(host.sh('date +%s.%N'))
        if host.mutations() != before:
            first_change = now
            break
        time.sleep(0.3)
    play.join()
    assert result['proc'].returncode == 0, result['proc'].stdout[-6000:]
    job_end = float(host.sh('cat /tmp/job-end'))
    assert first_change is not None and first_change >= job_end, (first_change, job_end)
    assert host.gres() == {'gpu:3g.40gb': 2, 'gpu:' + WHOLE: 1} and host.node()['State'] == 'IDLE'


def test_a_drain_timeout_fails_clearly_resumes_the_node_and_leaves_the_gpus(host):
    job = host.sh("sbatch --parsable -o /dev/null --wrap 'sleep 300'").strip()
    try:
        host.sh('for i in $(seq 40); do squeue -h -j %s -o %%T | grep -q RUNNING && exit 0; sleep 0.25; done; exit 1' % job)
        mutations, layout = host.mutations(), host.layout()
        proc = host.play(gpu_mig=MIXED, slurm_drain_timeout=3, **FAST)
        assert proc.returncode != 0
        assert ('Slurm node %s was not drained within slurm_drain_timeout=3s' % HOST) in proc.stdout, proc.stdout[-4000:]
        assert 'still runs jobs %s' % job in proc.stdout and 'It was resumed' in proc.stdout
        node = host.node()
        assert 'DRAIN' not in node['State'] and node['State'].split('+')[0] in ('MIXED', 'ALLOCATED'), node
        assert host.mutations() == mutations and host.layout() == layout
        assert json.dumps(host.gres()) == json.dumps({'gpu:3g.40gb': 2, 'gpu:' + WHOLE: 1})
    finally:
        host.sh('scancel %s' % job)
