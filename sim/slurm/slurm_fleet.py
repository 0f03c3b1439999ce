# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Debian's Slurm (slurmctld, slurmd, slurm-client) and munge on a fleet host, for the Slurm tests and bench.

`ensure_debs()` downloads the packages the fleet base lacks, once, into .build/slurm-debs (apt-get --download-only
against the base's dpkg status; `apt-get update` first where this machine has no package lists). `install()` copies
them into a running host, installs them with dpkg (services held back by a policy-rc.d), writes munge's key,
slurm.conf (one node: the host itself, controller and compute node at once) and an empty gres.conf, and starts
munge, slurmctld and slurmd. Not part of the Galaxy build.
"""
from __future__ import annotations

import glob
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / '.build' / 'slurm-debs'
BASE_STATUS = Path('/var/cache/gpuvirt-fleet/base/var/lib/dpkg/status')
PACKAGES = ['slurmd', 'slurmctld', 'slurm-client', 'munge']
FLEET_TOOL = REPO / 'sim' / 'fleet'

SLURM_CONF = '''# slurm.conf of a one-node test cluster (written by sim/slurm): the host is controller and compute node.
ClusterName=gpuvirt
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
SlurmUser=slurm
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# No cgroups in the fleet's namespaces: processes tracked through /proc, no task confinement.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
SlurmdTimeout=30
GresTypes=gpu
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=gpu Nodes={node} Default=YES MaxTime=INFINITE State=UP
'''


def ensure_debs(cache: Path = CACHE) -> list[Path]:
    """The .debs (Slurm, munge and what the fleet base lacks of their dependencies), downloaded once."""
    debs = sorted(cache.glob('*.deb'))
    if any(p.name.startswith('slurmd_') for p in debs) and any(p.name.startswith('munge_') for p in debs):
        return debs
    (cache / 'partial').mkdir(parents=True, exist_ok=True)
    argv = ['apt-get', 'install', '-y', '--download-only', '--no-install-recommends',
            '-o', 'Dir::State::status=%s' % BASE_STATUS, '-o', 'Dir::Cache::archives=%s' % cache,
            '-o', 'Debug::NoLocking=1'] + PACKAGES
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:  # a fresh machine: no package lists yet
        subprocess.run(['apt-get', 'update'], capture_output=True, text=True, check=True)
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, 'downloading %s failed: %s' % (' '.join(PACKAGES), proc.stdout[-2000:] + proc.stderr[-2000:])
    return sorted(cache.glob('*.deb'))


def host_exec(fleet: str, host: str, command: str, stdin: bytes | None = None, timeout: int = 300) -> str:
    proc = subprocess.run([str(FLEET_TOOL), 'exec', '--fleet', fleet, host, '--', 'sh', '-c', command],
                          input=stdin, capture_output=True, timeout=timeout, check=False)
    assert proc.returncode == 0, '%r on %s failed: %s %s' % (command, host, proc.stdout.decode()[-3000:], proc.stderr.decode()[-3000:])
    return proc.stdout.decode()


def install(fleet: str, host: str, ctld_port: int, slurmd_port: int) -> None:
    """Install and start munge, slurmctld and slurmd on `host` (the node `host`, no GRES yet)."""
    debs = ensure_debs()
    tar = subprocess.run(['tar', '-C', str(CACHE), '-cf', '-'] + [p.name for p in debs], capture_output=True, check=True).stdout
    host_exec(fleet, host, 'mkdir -p /var/cache/gpuvirt-slurm && tar -C /var/cache/gpuvirt-slurm -xf - && '
              'printf "#!/bin/sh\\nexit 101\\n" > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && '
              'DEBIAN_FRONTEND=noninteractive dpkg -i /var/cache/gpuvirt-slurm/*.deb > /var/log/gpuvirt-slurm-dpkg.log 2>&1; '
              'rc=$?; rm -f /usr/sbin/policy-rc.d; [ $rc = 0 ] || { tail -20 /var/log/gpuvirt-slurm-dpkg.log; exit $rc; }', stdin=tar)
    cpus = host_exec(fleet, host, 'nproc').strip()
    conf = SLURM_CONF.format(node=host, ctld_port=ctld_port, slurmd_port=slurmd_port, cpus=cpus)
    host_exec(fleet, host, 'cat > /etc/slurm/slurm.conf && : > /etc/slurm/gres.conf && '
              '[ -s /etc/munge/munge.key ] || (dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null); '
              'chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key && '
              'install -d -o slurm -g slurm /var/lib/slurm/slurmctld /var/log/slurm && install -d /var/lib/slurm/slurmd && '
              'systemctl restart munge && munge -n | unmunge >/dev/null && systemctl restart slurmctld slurmd',
              stdin=conf.encode())
    wait_idle(fleet, host)


def wait_idle(fleet: str, host: str, timeout: int = 60) -> None:
    host_exec(fleet, host, 'for i in $(seq %d); do scontrol show node -o %s 2>/dev/null | grep -q "State=IDLE " && exit 0; '
              'sleep 0.5; done; scontrol show node %s; exit 1' % (timeout * 2, host, host), timeout=timeout + 30)


def debs_present() -> bool:
    return bool(glob.glob(str(CACHE / 'slurmd_*.deb')))
