#!/usr/bin/env python
# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where the exporter's scrape time and memory go on the machine's own GPUs (read-only NVML calls). Figures only.

Run under the read-only guard on a real GPU host (PYTHONPATH must reach roles/exporter/files). In one process:
resident memory after each start-up stage, the warm cost of each NVML call a scrape makes (median of --repeat
calls), and a profile of --count scrapes rendered in-process (the functions with the most own time), then the
mappings that hold the most resident memory. Nothing here sets anything: the calls are the exporter's own reads.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time


def rss_mib() -> float:
    with open('/proc/self/status', encoding='ascii') as handle:
        for line in handle:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
    return 0.0


def top_mappings(count: int) -> list[tuple[float, str]]:
    """(resident MiB, mapping name) of the mappings holding the most, anonymous ones summed under '[anon]'."""
    sizes: dict[str, float] = {}
    name = ''
    with open('/proc/self/smaps', encoding='utf-8', errors='replace') as handle:
        for line in handle:
            parts = line.split()
            if '-' in parts[0] and len(parts) >= 5 and not parts[0].endswith(':'):
                name = parts[5] if len(parts) > 5 else '[anon]'
            elif parts[0] == 'Rss:':
                sizes[name] = sizes.get(name, 0.0) + int(parts[1]) / 1024
    return sorted(((size, path) for path, size in sizes.items()), reverse=True)[:count]


def shared_objects() -> set[str]:
    """The shared libraries mapped in this process (their file names)."""
    found = set()
    with open('/proc/self/maps', encoding='utf-8', errors='replace') as handle:
        for line in handle:
            path = line.split()[-1]
            if '.so' in path:
                found.add(os.path.basename(path))
    return found


def median_us(func, repeat: int) -> float | str:
    import pynvml  # pylint: disable=import-outside-toplevel
    times = []
    for _round in range(repeat):
        started = time.perf_counter()
        try:
            func()
        except pynvml.NVMLError as exc:
            return 'error %s' % exc
        times.append(time.perf_counter() - started)
    times.sort()
    return times[len(times) // 2] * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    parser.add_argument('--count', type=int, default=300)
    parser.add_argument('--repeat', type=int, default=200)
    parser.add_argument('--metric-names', default='both')
    args = parser.parse_args()
    stages = [('python', rss_mib())]
    import pynvml  # pylint: disable=import-outside-toplevel
    stages.append(('import pynvml', rss_mib()))
    from gpuvirt_exporter import server  # pylint: disable=import-outside-toplevel
    from gpuvirt_exporter.collector import GpuCollector  # pylint: disable=import-outside-toplevel
    stages.append(('import gpuvirt_exporter', rss_mib()))
    pynvml.nvmlInit()
    stages.append(('nvmlInit', rss_mib()))
    loaded_at_init = shared_objects()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    pynvml.nvmlDeviceGetUUID(handle)
    stages.append(('a handle and its UUID', rss_mib()))
    collector = GpuCollector(pcie_interval=10, metric_names=args.metric_names, gpm_interval=2)
    stages.append(('GpuCollector (identity, slow sample, threads)', rss_mib()))
    registry = collector  # what the server renders: collect() gives the families
    body = server.render(registry)
    stages.append(('first scrape (%d bytes)' % len(body), rss_mib()))
    time.sleep(4.5)  # two GPM samples
    for _round in range(20):
        server.render(registry)
    stages.append(('after GPM samples and 20 scrapes', rss_mib()))
    try:  # what glibc keeps of freed memory (NVML's start-up allocations among them)
        import ctypes  # pylint: disable=import-outside-toplevel
        ctypes.CDLL('libc.so.6').malloc_trim(0)
        stages.append(('after malloc_trim(0)', rss_mib()))
        for _round in range(20):
            server.render(registry)
        stages.append(('20 scrapes later', rss_mib()))
    except (OSError, AttributeError) as exc:
        stages.append(('malloc_trim: %s' % exc, rss_mib()))
    later = sorted(shared_objects() - loaded_at_init)
    print('# shared objects mapped after nvmlInit: %s' % ' '.join(sorted(loaded_at_init)))
    print('# mapped later (by the collector calls): %s' % (' '.join(later) or 'none'))
    print('# resident memory by stage (MiB)')
    for label, value in stages:
        print('%-50s %6.1f' % (label, value))

    print('\n# warm NVML calls of a scrape, median of %d (us)' % args.repeat)
    calls = {
        'nvmlDeviceGetUtilizationRates': lambda: pynvml.nvmlDeviceGetUtilizationRates(handle),
        'nvmlDeviceGetEncoderUtilization': lambda: pynvml.nvmlDeviceGetEncoderUtilization(handle),
        'nvmlDeviceGetDecoderUtilization': lambda: pynvml.nvmlDeviceGetDecoderUtilization(handle),
        'nvmlDeviceGetMemoryInfo': lambda: pynvml.nvmlDeviceGetMemoryInfo(handle),
        'nvmlDeviceGetMemoryInfo v2': lambda: pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2),
        'nvmlDeviceGetTemperature': lambda: pynvml.nvmlDeviceGetTemperature(handle, 0),
        'nvmlDeviceGetPowerUsage': lambda: pynvml.nvmlDeviceGetPowerUsage(handle),
        'nvmlDeviceGetEnforcedPowerLimit': lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle),
        'nvmlDeviceGetClockInfo (graphics)': lambda: pynvml.nvmlDeviceGetClockInfo(handle, 0),
        'nvmlDeviceGetPerformanceState': lambda: pynvml.nvmlDeviceGetPerformanceState(handle),
        'nvmlDeviceGetCurrentClocksEventReasons': lambda: pynvml.nvmlDeviceGetCurrentClocksEventReasons(handle),
        'nvmlDeviceGetActiveVgpus': lambda: pynvml.nvmlDeviceGetActiveVgpus(handle),
    }
    mem1 = pynvml.nvmlDeviceGetMemoryInfo(handle)
    try:
        mem2 = pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
        print('# memory v1 total/free/used %d/%d/%d; v2 total/free/used/reserved %d/%d/%d/%d' % (
            mem1.total, mem1.free, mem1.used, mem2.total, mem2.free, mem2.used, mem2.reserved))
    except pynvml.NVMLError as exc:
        print('# memory v2: %s' % exc)
    total = 0.0
    for name, func in calls.items():
        value = median_us(func, args.repeat)
        if isinstance(value, float):
            total += value
            print('%-50s %8.1f' % (name, value))
        else:
            print('%-50s %s' % (name, value))
    print('%-50s %8.1f' % ('sum (clock info counted once)', total))

    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.enable()
    for _round in range(args.count):
        server.render(registry)
    profile.disable()
    wall = (time.perf_counter() - started) / args.count
    print('\n# %d scrapes in-process (collect and render): %.3f ms each (under cProfile)' % (args.count, wall * 1e3))
    started = time.perf_counter()
    cpu0 = time.process_time()
    for _round in range(args.count):
        server.render(registry)
    print('# %d scrapes in-process without the profiler: %.3f ms wall, %.3f ms CPU each (the exporter\'s threads included)' % (
        args.count, (time.perf_counter() - started) / args.count * 1e3, (time.process_time() - cpu0) / args.count * 1e3))
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats('tottime').print_stats(25)
    print(out.getvalue())
    print('# modules loaded: %s' % ' '.join(sorted(name for name in sys.modules if '.' not in name and not name.startswith('_'))))
    print('# resident memory by mapping (MiB)')
    for size, path in top_mappings(15):
        print('%8.1f  %s' % (size, path))
    collector.stop()
    sys.stdout.flush()
    os._exit(0)  # pylint: disable=protected-access


if __name__ == '__main__':
    main()
