#!/usr/bin/env python
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/site.yml over real SSH on fresh fleets of simulated hosts (default 4, 16 and 32): the first run and the
idempotent rerun. Each host has one A30 with a MIG declaration (two 2g.12gb) and the exporter on its own loopback port.

Prints, per run: wall time, machine CPU-seconds per host, controller CPU-seconds per host, tasks executed per host
(ok + failed of the recap: the recap's ok counts the changed tasks too, skipped tasks are not executed) and the
changed count (0 expected on a rerun). Figures only, no pass/fail.
    .venv/bin/python bench/bench_site.py [--hosts 4,16,32] [--no-exporter] [--mitogen VENV] [--keep-output DIR] [--task-cpu DIR]

--task-cpu DIR writes, per run, the CPU each task cost the controller and the fleet (all hosts together), read from the
same cgroups at each task start (bench/callbacks/task_cpu.py): where a run's CPU goes.

How CPU is measured: the bench makes two cpuacct cgroups (cgroup v1 `cpuacct` hierarchy, or cgroup v2 `cpu.stat`
where that is the machine's layout), `gpuvirt-bench-<pid>/fleet` and `.../controller`, and starts `sim/fleet up` in
the first (every host's supervisor, systemd, sshd, the module runs and the exporter inherit it) and ansible-playbook
in the second (its workers, the ssh clients and the ssh ControlPersist masters it leaves behind). A cgroup's usage
counts every process that ran in it, exited ones included, and nothing else, so other work on the machine (other
test runs) does not leak into the figures, as it would with /proc/stat totals. Machine CPU = fleet + controller
usage over the run; controller CPU = the controller cgroup alone. The all-CPU column is the /proc/stat busy time of
the whole machine over the run (everything, other users' work included) for comparison on an idle machine.

--mitogen VENV runs each host count twice, plain and with Mitogen's strategy (`mitogen_linear`) from the
ansible-core+mitogen venv VENV, side by side (see docs/scaling.md).
Needs root (the fleet, the cgroups) and .build/exporter-wheels (make demo). Fleet 'benchsite', ports 23800-23899.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLEET = 'benchsite'
FLEET_TOOL = os.path.join(REPO, 'sim', 'fleet')
BIN = os.path.dirname(sys.executable)
RECAP = re.compile(r'^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)\s+skipped=(\d+)')
MIG = [{'name': 'bench', 'devices': 'all', 'enabled': True, 'instances': [{'profile': '2g.12gb'}, {'profile': '2g.12gb'}]}]


def cgroup_seconds(path: str) -> float:
    """CPU-seconds of every process that ever ran in the cgroup at path (v1 cpuacct.usage, or v2 cpu.stat)."""
    if os.path.exists(os.path.join(path, 'cpuacct.usage')):
        with open(os.path.join(path, 'cpuacct.usage'), encoding='ascii') as handle:
            return int(handle.read()) / 1e9
    with open(os.path.join(path, 'cpu.stat'), encoding='ascii') as handle:
        return int(dict(line.split() for line in handle)['usage_usec']) / 1e6


class CpuGroup:
    """A cgroup whose CPU usage (seconds, every process that ever ran in it) the bench reads."""

    def __init__(self, name: str) -> None:
        v1 = '/sys/fs/cgroup/cpuacct'
        if os.path.exists(os.path.join(v1, 'cpuacct.usage')):
            self.path = os.path.join(v1, name)
        else:
            self.path = os.path.join('/sys/fs/cgroup', name)
        os.makedirs(self.path, exist_ok=True)

    def join(self) -> None:
        """preexec_fn: move the starting child into the group (its descendants follow)."""
        with open(os.path.join(self.path, 'cgroup.procs'), 'w', encoding='ascii') as handle:
            handle.write('0\n')

    def seconds(self) -> float:
        return cgroup_seconds(self.path)

    def remove(self) -> None:
        """Move what is left (none once the fleet is down) to the parent, then remove the group."""
        parent = os.path.join(os.path.dirname(os.path.dirname(self.path)), 'cgroup.procs')
        try:
            with open(os.path.join(self.path, 'cgroup.procs'), encoding='ascii') as handle:
                pids = handle.read().split()
            for pid in pids:
                try:
                    with open(parent, 'w', encoding='ascii') as out:
                        out.write(pid + '\n')
                except OSError:
                    pass
            os.rmdir(self.path)
        except OSError:
            pass


def _busy_seconds() -> float:
    """Busy CPU time of the whole machine (every CPU, every process) from /proc/stat."""
    with open('/proc/stat', encoding='ascii') as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf('SC_CLK_TCK')


def _fleet_file(path: str, count: int, exporter: bool) -> None:
    hosts = [{'name': 'bs-%02d' % n, 'gpus': {'a30': 1}, 'vars': {'exporter_port': 23850 + n, 'gpu_mig': MIG}} for n in range(1, count + 1)]
    spec = {'fleet': FLEET, 'base_port': 23800, 'defaults': {'driver': {'version': '580.159.04', 'flavour': 'open'}, 'groups': ['gpu_hosts']},
            'vars': {'gpuvirt_exporter': exporter, 'exporter_listen_address': '127.0.0.1', 'exporter_system_nvml': True},
            'hosts': hosts}
    with open(path, 'w', encoding='utf-8') as handle:
        json.dump(spec, handle)  # JSON is YAML


def _run(inventory: str, workdir: str, controller: CpuGroup, fleet: CpuGroup, bindir: str, extra_env: dict,  # pylint: disable=too-many-arguments
         task_cpu: str | None = None) -> dict:
    extra = {'exporter_wheel_dir': os.path.join(REPO, '.build', 'exporter-wheels'),
             'monitoring_prometheus_config': os.path.join(workdir, 'monitoring', 'prometheus.yml'),
             'monitoring_dashboard_dir': os.path.join(workdir, 'monitoring', 'grafana')}
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, 'ansible.cfg'), ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, '.build'),
               ANSIBLE_NOCOLOR='1', PATH='%s:%s' % (bindir, os.environ['PATH']), **extra_env)
    if task_cpu:  # the per-task table (bench/callbacks/task_cpu.py)
        env.update(ANSIBLE_CALLBACK_PLUGINS=os.path.join(REPO, 'bench', 'callbacks'), ANSIBLE_CALLBACKS_ENABLED='task_cpu',
                   TASK_CPU_CONTROLLER=controller.path, TASK_CPU_FLEET=fleet.path, TASK_CPU_OUT=task_cpu)
    before = (controller.seconds(), fleet.seconds(), _busy_seconds())
    start = time.perf_counter()
    proc = subprocess.run([os.path.join(bindir, 'ansible-playbook'), '-i', inventory, '-e', json.dumps(extra),
                           os.path.join(REPO, 'playbooks', 'site.yml')], capture_output=True, text=True, env=env, cwd=REPO, check=False,
                          preexec_fn=controller.join)
    wall = time.perf_counter() - start
    after = (controller.seconds(), fleet.seconds(), _busy_seconds())
    recap = {}
    for line in proc.stdout.splitlines():
        match = RECAP.match(line)
        if match:
            recap[match.group(1)] = [int(v) for v in match.groups()[1:]]
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-2000:])
        raise SystemExit('site.yml failed')
    return {'wall': wall, 'controller': after[0] - before[0], 'fleet': after[1] - before[1], 'busy': after[2] - before[2],
            'recap': recap, 'output': proc.stdout}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    parser.add_argument('--hosts', default='4,16,32')
    parser.add_argument('--no-exporter', action='store_true')
    parser.add_argument('--mitogen', metavar='VENV', help="also run with Mitogen's strategy from this venv")
    parser.add_argument('--keep-output', metavar='DIR', help="write each run's ansible-playbook output there")
    parser.add_argument('--task-cpu', metavar='DIR',
                        help="write each run's CPU per task there (controller and fleet, all hosts; tab-separated)")
    args = parser.parse_args()
    variants = [('plain', BIN, {})]
    if args.mitogen:
        plugins = glob.glob(os.path.join(args.mitogen, 'lib', 'python3*', 'site-packages', 'ansible_mitogen', 'plugins', 'strategy'))
        if not plugins:
            raise SystemExit('%s has no ansible_mitogen (pip install mitogen there)' % args.mitogen)
        variants.append(('mitogen', os.path.join(args.mitogen, 'bin'),
                         {'ANSIBLE_STRATEGY_PLUGINS': plugins[0], 'ANSIBLE_STRATEGY': 'mitogen_linear'}))
    rows = []
    top = 'gpuvirt-bench-%d' % os.getpid()
    controller, fleet = CpuGroup(top + '/controller'), CpuGroup(top + '/fleet')
    try:
        with tempfile.TemporaryDirectory(prefix='bench-site-') as workdir:
            fleet_file, inventory = os.path.join(workdir, 'fleet.yml'), os.path.join(workdir, 'hosts.yml')
            for count in [int(c) for c in args.hosts.split(',')]:
                for variant, bindir, extra_env in variants:
                    _fleet_file(fleet_file, count, not args.no_exporter)
                    subprocess.run([FLEET_TOOL, 'down', '--fleet', FLEET, '--purge'], check=False, capture_output=True)
                    try:
                        start = time.perf_counter()
                        subprocess.run([FLEET_TOOL, 'up', fleet_file, '--inventory', inventory], check=True, capture_output=True,
                                       preexec_fn=fleet.join)
                        print('sim/fleet up %d hosts: %.1f s' % (count, time.perf_counter() - start), flush=True)
                        for label in ('first run', 'rerun'):
                            name = '%d-%s-%s' % (count, variant, label.replace(' ', '-'))
                            if args.task_cpu:
                                os.makedirs(args.task_cpu, exist_ok=True)
                            res = _run(inventory, workdir, controller, fleet, bindir, extra_env,
                                       os.path.join(args.task_cpu, name + '.tsv') if args.task_cpu else None)
                            gpu_hosts = {h: v for h, v in res['recap'].items() if h != 'localhost'}
                            executed = sum(v[0] + v[3] for v in gpu_hosts.values()) / len(gpu_hosts)
                            skipped = sum(v[4] for v in gpu_hosts.values()) / len(gpu_hosts)
                            changed = sum(v[1] for v in gpu_hosts.values())
                            rows.append((count, variant, label, res, executed, skipped, changed))
                            print('%d hosts, %s, %s: %.1f s' % (count, variant, label, res['wall']), flush=True)
                            if args.keep_output:
                                os.makedirs(args.keep_output, exist_ok=True)
                                with open(os.path.join(args.keep_output, name + '.log'), 'w', encoding='utf-8') as handle:
                                    handle.write(res['output'])
                    finally:
                        subprocess.run([FLEET_TOOL, 'down', '--fleet', FLEET, '--purge'], check=False, capture_output=True)
    finally:
        controller.remove()
        fleet.remove()
        try:
            os.rmdir(os.path.dirname(controller.path))
        except OSError:
            pass
    print('%5s %8s %9s %7s %9s %14s %16s %12s %14s %10s %8s' % (
        'hosts', 'variant', 'run', 'wall s', 'wall/host', 'machine CPU-s', 'machine CPU-s', 'controller', 'tasks executed',
        'skipped', 'changed'))
    print('%5s %8s %9s %7s %9s %14s %16s %12s %14s %10s %8s' % (
        '', '', '', '', '', '/host', '(all-CPU s)', 'CPU-s/host', '/host', '/host', 'total'))
    for count, variant, label, res, executed, skipped, changed in rows:
        machine = res['controller'] + res['fleet']
        print('%5d %8s %9s %7.1f %9.2f %14.2f %16s %12.2f %14.1f %10.1f %8d' % (
            count, variant, label, res['wall'], res['wall'] / count, machine / count, '%.1f (%.1f)' % (machine, res['busy']),
            res['controller'] / count, executed, skipped, changed))
    return 0


if __name__ == '__main__':
    sys.exit(main())
