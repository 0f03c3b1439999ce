#!/usr/bin/env python
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Exporter scrape latency (p50/p99), CPU per scrape and resident memory. Figures only.

Default: on the NVML simulator, a host with 8 H100s x 7 MIG instances and a host with 16 vGPUs (A40s).
--real: on the machine's own GPUs (read-only NVML calls), side by side with an nvidia-smi-per-scrape approach
(`nvidia-smi --query-gpu=... --format=csv` once per scrape, as nvidia_gpu_exporter does); --save FILE keeps /metrics.
Scrapes reuse one connection, as Prometheus does; --real also measures a new connection per scrape. A scrape reads no
NVML (the exporter's samplers do, in the background): "idle CPU" is what they cost per second with no scrape at all.
"""
from __future__ import annotations

import argparse
import http.client
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'tests', 'unit', 'exporter'))
from exporter_support import EXPORTER_LIB, SimExporter, free_port  # noqa: E402  pylint: disable=wrong-import-position

SMI_FIELDS = ('timestamp,index,uuid,name,pci.bus_id,driver_version,utilization.gpu,utilization.memory,memory.total,memory.used,'
              'memory.free,temperature.gpu,power.draw,enforced.power.limit,clocks.gr,clocks.sm,clocks.mem,clocks.video,'
              'clocks_event_reasons.active,ecc.errors.corrected.aggregate.total,ecc.errors.uncorrected.aggregate.total,'
              'pcie.link.gen.current,pcie.link.width.current,pstate')
CLK_TCK = os.sysconf('SC_CLK_TCK')


def _cpu_seconds(pid: int) -> float:
    with open('/proc/%d/stat' % pid, encoding='ascii') as handle:
        fields = handle.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _rss_mib(pid: int) -> float:
    with open('/proc/%d/status' % pid, encoding='ascii') as handle:
        for line in handle:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
    return 0.0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def scrape_figures(url: str, pid: int, count: int, keep_alive: bool = True) -> dict:
    """Sequential scrapes, as one Prometheus does (one connection kept open; keep_alive=False: a new one per scrape):
    latency per scrape as the client sees it, exporter CPU per scrape, RSS after."""
    parts = urllib.parse.urlsplit(url)

    def connect():
        return http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)

    conn = connect()
    for _round in range(3):  # warm-up: first calls into NVML are slower
        conn.request('GET', parts.path)
        conn.getresponse().read()
    cpu0 = _cpu_seconds(pid)
    latencies = []
    size = 0
    for _round in range(count):
        started = time.perf_counter()
        if not keep_alive:
            conn.close()
            conn = connect()
        conn.request('GET', parts.path)
        size = len(conn.getresponse().read())
        latencies.append(time.perf_counter() - started)
    cpu = (_cpu_seconds(pid) - cpu0) / count
    conn.close()
    return {'p50_ms': _pct(latencies, 0.5) * 1e3, 'p99_ms': _pct(latencies, 0.99) * 1e3, 'cpu_ms': cpu * 1e3,
            'rss_mib': _rss_mib(pid), 'bytes': size, 'series': None}


def idle_cpu_ms_per_s(pid: int, seconds: float) -> float:
    """The exporter's CPU per second with no scrape at all: what its background samplers cost (the fast values every
    --sample-interval, the slow calls every --pcie-interval, GPM every --gpm-interval)."""
    cpu0, started = _thread_cpu_ns(pid), time.monotonic()
    time.sleep(seconds)
    return (_thread_cpu_ns(pid) - cpu0) / (time.monotonic() - started) / 1e6


def _thread_cpu_ns(pid: int) -> int:
    """CPU time of all the process's threads in ns (schedstat: finer than the clock ticks of /proc/PID/stat)."""
    total = 0
    for task in os.listdir('/proc/%d/task' % pid):
        try:
            with open('/proc/%d/task/%s/schedstat' % (pid, task), encoding='ascii') as handle:
                total += int(handle.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread gone since it was listed
    return total


def smi_figures(count: int) -> dict:
    """nvidia-smi once per scrape: wall time and the CPU of the child processes."""
    smi = shutil.which('nvidia-smi')
    cmd = [smi, '--query-gpu=' + SMI_FIELDS, '--format=csv,noheader,nounits']
    subprocess.run(cmd, capture_output=True, check=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    latencies = []
    for _round in range(count):
        started = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        latencies.append(time.perf_counter() - started)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / count
    return {'p50_ms': _pct(latencies, 0.5) * 1e3, 'p99_ms': _pct(latencies, 0.99) * 1e3, 'cpu_ms': cpu * 1e3}


def _line(label: str, fig: dict) -> str:
    text = '%-38s p50 %7.2f ms  p99 %7.2f ms  CPU/scrape %6.2f ms' % (label, fig['p50_ms'], fig['p99_ms'], fig['cpu_ms'])
    if 'rss_mib' in fig:
        text += '  RSS %5.1f MiB  %d bytes' % (fig['rss_mib'], fig['bytes'])
    if 'idle_ms_per_s' in fig:
        text += '  idle CPU %.2f ms/s' % fig['idle_ms_per_s']
    return text


def _sim_host(label: str, gpus: list[str], count: int, vgpu_host: bool = False, mig: list[int] | None = None,
              vgpus: list[tuple[int, str]] | None = None) -> dict:
    with tempfile.TemporaryDirectory() as root:
        host = SimExporter(root, gpus, vgpu_host=vgpu_host)
        if mig:
            host.mig_sevenths(mig)
        for gpu, vgpu_type in vgpus or []:
            host.ctl('vgpu', 'add', '--gpu', str(gpu), '--type', vgpu_type)
        host.start(sample_interval=None)  # the exporter's defaults
        try:
            fig = scrape_figures('http://127.0.0.1:%d/metrics' % host.port, host.proc.pid, count)
            fig['idle_ms_per_s'] = idle_cpu_ms_per_s(host.proc.pid, 5.0)
        finally:
            host.stop()
    print(_line(label, fig))
    return fig


def _count(text: str) -> dict:
    lines = [line for line in text.splitlines() if line and not line.startswith('#')]
    return {'all': len(lines), 'gpuvirt': sum(line.startswith('gpuvirt_') for line in lines),
            'dcgm': sum(line.startswith('DCGM_') for line in lines)}


def series_counts() -> None:
    """Series per scrape in each naming mode on one simulated GPU: whole H100, H100 with 7 MIG instances, A40 with vGPUs."""
    hosts = (('whole GPU H100', ['h100-80gb-hbm3:1'], False, None, []),
             ('MIG H100, 7 x 1g.10gb', ['h100-80gb-hbm3:1'], False, [0], []),
             ('vGPU A40, 8 x A40-2Q', ['a40:1'], True, None, [(0, '558')] * 8))
    print('%-26s %-8s %8s %8s %8s' % ('host (1 GPU)', 'mode', 'series', 'gpuvirt', 'dcgm'))
    for label, gpus, vgpu_host, mig, vgpus in hosts:
        with tempfile.TemporaryDirectory() as root:
            host = SimExporter(root, gpus, vgpu_host=vgpu_host)
            if mig:
                host.mig_sevenths(mig)
            for gpu, vgpu_type in vgpus:
                host.ctl('vgpu', 'add', '--gpu', str(gpu), '--type', vgpu_type)
            for mode in ('gpuvirt', 'dcgm', 'both'):
                host.start('--metric-names', mode, '--gpm-interval', '0.4')
                try:
                    time.sleep(1.2)  # the PCIe sampler's first sample, two GPM samples
                    counts = _count(host.get()[1])
                finally:
                    host.stop()
                print('%-26s %-8s %8d %8d %8d' % (label, mode, counts['all'], counts['gpuvirt'], counts['dcgm']))


def real(count: int, save: str | None, gpm_interval: float, python: str, sample_interval: float) -> None:
    # keep the caller's PYTHONPATH (a read-only guard's sitecustomize, a wheel folder) behind the exporter's
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (EXPORTER_LIB, os.environ.get('PYTHONPATH', '')) if p))
    port = free_port()
    proc = subprocess.Popen([python, '-m', 'gpuvirt_exporter', '--web.listen-address', '127.0.0.1:%d' % port,
                             '--gpm-interval', str(gpm_interval), '--sample-interval', str(sample_interval)], env=env)
    url = 'http://127.0.0.1:%d/metrics' % port
    try:
        for _round in range(200):
            try:
                body = urllib.request.urlopen(url, timeout=30).read()
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(max(11.0, 2.5 * gpm_interval))  # the PCIe sampler's and two GPM samples
        body = urllib.request.urlopen(url, timeout=30).read()
        if save:
            with open(save, 'wb') as handle:
                handle.write(body)
        exporter = scrape_figures(url, proc.pid, count)
        fresh = scrape_figures(url, proc.pid, count, keep_alive=False)
        exporter['idle_ms_per_s'] = idle_cpu_ms_per_s(proc.pid, 20.0)
    finally:
        proc.terminate()
        proc.wait(10)
    smi = smi_figures(count)
    print('# %s; exporter run by %s' % (_gpus_found(), python))
    print(_line('exporter, connection kept open', exporter))
    print(_line('exporter, new connection per scrape', fresh))
    print(_line('nvidia-smi --query-gpu per scrape', smi))
    print('(%d sequential scrapes each; exporter with --sample-interval %g, --gpm-interval %g, --pcie-interval 10; idle CPU '
          'over 20 s without scrapes)' % (count, sample_interval, gpm_interval))
    for label, fig in (('connection kept open', exporter), ('new connection per scrape', fresh)):
        print('ratio nvidia-smi / exporter (%s): p50 %.1fx  p99 %.1fx  CPU %.1fx' % (
            label, smi['p50_ms'] / fig['p50_ms'], smi['p99_ms'] / fig['p99_ms'], smi['cpu_ms'] / max(fig['cpu_ms'], 1e-6)))


def _gpus_found() -> str:
    """The GPUs of the run, by name (nvidia-smi -L is a query), with the driver."""
    proc = subprocess.run([shutil.which('nvidia-smi') or 'nvidia-smi', '--query-gpu=name,driver_version', '--format=csv,noheader'],
                          capture_output=True, text=True, check=False)
    names = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    return '%d GPU(s): %s; %s' % (len(names), '; '.join(sorted(set(names))) or 'none found', time.strftime('%Y-%m-%d', time.gmtime()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    parser.add_argument('--real', action='store_true')
    parser.add_argument('--save', default=None)
    parser.add_argument('--count', type=int, default=200)
    parser.add_argument('--gpm-interval', type=float, default=2.0, help='--real: the exporter\'s GPM interval (default %(default)s s)')
    parser.add_argument('--sample-interval', type=float, default=1.0,
                        help="--real: the exporter's --sample-interval (default %(default)s s, its own default; 0: NVML read in each scrape)")
    parser.add_argument('--python', default=sys.executable,
                        help="--real: the exporter's interpreter, e.g. a virtualenv's as the role deploys it (default: this one)")
    parser.add_argument('--series', action='store_true', help='print the series count of each naming mode (simulator) and stop')
    args = parser.parse_args()
    if args.series:
        series_counts()
        return
    if args.real:
        real(args.count, args.save, args.gpm_interval, args.python, args.sample_interval)
        return
    one = _sim_host('sim: 1 x H100', ['h100-80gb-hbm3:1'], args.count)
    mig = _sim_host('sim: 8 x H100, 7 MIG instances each', ['h100-80gb-hbm3:8'], args.count, mig=list(range(8)))
    print('8 x H100 with 56 MIG instances / 1 x H100: p50 %.1fx' % (mig['p50_ms'] / one['p50_ms']))
    _sim_host('sim: 8 x H100, no MIG', ['h100-80gb-hbm3:8'], args.count)
    _sim_host('sim: 16 vGPUs on 2 x A40', ['a40:2'], args.count, vgpu_host=True,
              vgpus=[(gpu, '560') for gpu in (0, 1) for _round in range(8)])


if __name__ == '__main__':
    main()
