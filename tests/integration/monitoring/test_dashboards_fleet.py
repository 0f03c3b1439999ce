# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Both Grafana dashboards of gpuvirt.fleet.monitoring against a real Prometheus scraping a fleet: an H100 host with a
MIG layout (the mig role), a host with two whole H100s (one of them lost), and an A40 vGPU host with a running vGPU,
the exporter deployed by its role with both name sets. The machines are renamed first, so inventory names (and the
`instance` the monitoring role gives each target) differ from their Hostname label.

Every panel query of both dashboards is sent as Grafana would send it (variables from their own queries, "All" and
each single host) through Prometheus's HTTP API; a query that comes back empty although the series it selects exist
for that selection fails the test, and a query without data is allowed only for series the exporter documents as
absent on the simulator. The dcgm dashboard's values are checked against the gpuvirt series in their units (MHz =
Hz / 1e6, MiB = bytes / 2^20, kWh from mJ).

Needs root (the fleet), Debian's prometheus package (prometheus, promtool) and the exporter wheels of `make demo`
(.build/exporter-wheels). Brings up fleet-monitoring.yml (fleet 'montest', ports 24200-24299) and tears it down.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from fleethost import REPO, VENV_BIN, ansible_env, fleet_up  # noqa: E402 pylint: disable=import-error,wrong-import-position
from fleethost import fleet as _fleet  # noqa: E402 pylint: disable=import-error,wrong-import-position
import grafana_queries as gq  # noqa: E402 pylint: disable=import-error,wrong-import-position

FLEET = 'montest'
WHEELS = REPO / '.build' / 'exporter-wheels'
PROMETHEUS_PORT = 24290
# inventory name -> the machine's own host name (the Hostname label)
HOSTS = {'mon-mig': 'node-17', 'mon-whole': 'node-18', 'mon-vgpu': 'vhost-03'}
DASHBOARDS = REPO / 'roles' / 'monitoring' / 'files'
DIFFERENCES = json.loads((REPO / 'tests' / 'unit' / 'exporter' / 'fixtures' / 'dcgm-differences.json').read_text())['counters']
# Series the simulated fleet cannot have: the exporter documents them absent on the simulator (no NVML event sets,
# no NVLink) or before a first XID. A panel that reads only these may be empty; any other may not.
ABSENT_HERE = {name for name, row in DIFFERENCES.items() if {'simulator', 'no_xid_yet'} & set(row.get('absent_on', []))}
ABSENT_HERE |= {'gpuvirt_gpu_xid_errors_total'}  # a series per XID number appears with the first XID event
SIM_NVML = (REPO / 'sim' / 'lib' / 'pynvml.py').read_text()
if 'def nvmlDeviceGetVgpuUtilization(' not in SIM_NVML:  # the simulator's NVML has no vGPU utilization samples
    ABSENT_HERE.add('gpuvirt_vgpu_utilization_percent')

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason='the fleet needs root'),
              pytest.mark.skipif(not shutil.which('prometheus'), reason="Debian's prometheus package is not installed"),
              pytest.mark.skipif(not (WHEELS / '.stamp').exists(), reason='no exporter wheels: run make demo (or its wheel step) first')]


class Fleet:
    def __init__(self, workdir: Path, inventory: Path):
        self.workdir = workdir
        self.inventory = inventory
        self.prometheus_config = workdir / 'monitoring' / 'prometheus.yml'
        self.dashboard_dir = workdir / 'monitoring' / 'grafana'
        self.started = 0.0

    def sh(self, host: str, command: str) -> str:
        proc = _fleet('exec', '--fleet', FLEET, host, '--', 'sh', '-c', command, check=False)
        assert proc.returncode == 0, '%r on %s failed: %s %s' % (command, host, proc.stdout, proc.stderr)
        return proc.stdout

    def play(self) -> subprocess.CompletedProcess:
        variables = {'exporter_wheel_dir': str(WHEELS), 'monitoring_prometheus_config': str(self.prometheus_config),
                     'monitoring_dashboard_dir': str(self.dashboard_dir), 'monitoring_scrape_interval': '1s',
                     'monitoring_scrape_timeout': '1s'}
        varfile = self.workdir / 'vars.json'
        varfile.write_text(json.dumps(variables))
        return subprocess.run([str(VENV_BIN / 'ansible-playbook'), '-i', str(self.inventory), '-e', '@%s' % varfile,
                               str(HERE / 'monitoring.yml')], capture_output=True, text=True, timeout=600, cwd=REPO,
                              env=ansible_env(), check=False)

    def api(self) -> gq.Prometheus:
        return gq.Prometheus('http://127.0.0.1:%d' % PROMETHEUS_PORT, at=time.time())

    def window(self) -> float:
        """Seconds of data Prometheus holds: the dashboards' time range here."""
        return max(10.0, time.time() - self.started - 1)


def _wait(api_factory, checks: dict[str, str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    missing = list(checks)
    while time.monotonic() < deadline:
        api = api_factory()
        try:
            missing = [name for name, expr in checks.items() if not api.instant(expr)]
        except OSError:
            missing = list(checks)
        if not missing:
            return
        time.sleep(1)
    raise AssertionError('Prometheus never had: %s' % ', '.join('%s (%s)' % (m, checks[m]) for m in missing))


@pytest.fixture(scope='module', name='fleet')
def fleet_fixture(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('monitoring')
    with fleet_up(FLEET, HERE / 'fleet-monitoring.yml', workdir) as inventory:
        fleet = Fleet(workdir, inventory)
        for host, name in HOSTS.items():  # before the exporter starts: it reads the name once
            fleet.sh(host, 'hostname %s && echo %s > /etc/hostname' % (name, name))
        proc = fleet.play()
        (workdir / 'play.log').write_text(proc.stdout + proc.stderr)
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
        fleet.sh('mon-vgpu', 'gpusimctl vgpu add --gpu 0 --type 558 --vm-id vm-7 >/dev/null')
        fleet.sh('mon-whole', 'gpusimctl lose --gpu 1')
        fleet.sh('mon-vgpu', 'gpusimctl fault set --gpu 0 --call nvmlDeviceGetPcieReplayCounter --error NVML_ERROR_UNKNOWN')
        prometheus = subprocess.Popen(['prometheus', '--config.file=%s' % fleet.prometheus_config,
                                       '--storage.tsdb.path=%s' % (workdir / 'tsdb'), '--web.listen-address=127.0.0.1:%d' % PROMETHEUS_PORT],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        fleet.started = time.time()
        try:
            expected = {'every host up': 'count(up{job="vgpu_metrics"} == 1) == 3', 'the vGPU': 'gpuvirt_vgpu_info',
                        'the lost GPU': 'gpuvirt_gpu_up == 0', 'the NVML error': 'gpuvirt_exporter_nvml_errors_total',
                        'MIG instances': 'DCGM_FI_DEV_FB_USED{GPU_I_ID!=""}',
                        'PCIe samples': 'gpuvirt_gpu_pcie_throughput_bytes_per_second'}
            if 'DCGM_FI_PROF_GR_ENGINE_ACTIVE' not in ABSENT_HERE:  # GPM on the simulated H100s: two samples apart
                expected['GPM samples'] = 'DCGM_FI_PROF_GR_ENGINE_ACTIVE'
            _wait(fleet.api, expected)
            time.sleep(max(0.0, fleet.started + 15 - time.time()))  # rate() and increase() windows hold several scrapes
            yield fleet
        finally:
            prometheus.terminate()
            prometheus.wait(20)


def test_inventory_names_instance_and_hostname_differ(fleet):
    series = fleet.api().instant('gpuvirt_gpu_info')
    assert {(s['metric']['instance'], s['metric']['Hostname']) for s in series} == set(HOSTS.items())
    dcgm = fleet.api().instant('DCGM_FI_DEV_GPU_TEMP')
    assert {(s['metric']['instance'], s['metric']['Hostname']) for s in dcgm} == set(HOSTS.items())


def _describe(evaluations) -> str:
    return '\n'.join('  %s: %s (data: %s)' % (e.target.name, e.expr, ', '.join(e.data)) for e in evaluations)


def _check(dashboard: gq.Dashboard, fleet: Fleet, selection: dict) -> list[gq.Evaluation]:
    window = fleet.window()
    results = gq.evaluate(dashboard, fleet.api(), selection, gq.grafana_builtins(1, 1, window), range_s=window, step_s=1)
    empty = [e for e in results if e.empty_with_data]
    assert not empty, '%s, %s: empty panels although their series exist:\n%s' % (dashboard.title, selection or 'All', _describe(empty))
    return results


@pytest.mark.parametrize('name', ['gpuvirt-dashboard.json', 'gpuvirt-dcgm-dashboard.json'])
def test_every_panel_shows_the_data_that_exists(fleet, name):
    dashboard = gq.Dashboard.load(DASHBOARDS / name)
    results = _check(dashboard, fleet, {})
    no_data = [e for e in results if e.no_data]
    unexpected = [e for e in no_data if not {s.metric for s in gq.vector_selectors(e.target.expr)} <= ABSENT_HERE]
    assert not unexpected, 'panels without data in a fleet that should have it:\n%s' % _describe(unexpected)
    shown = [e for e in results if e.series]
    print('%s: %d of %d queries return data; without data (absent on the simulator): %s'
          % (name, len(shown), len(results), ', '.join(e.target.name for e in no_data) or 'none'))
    assert len(shown) + len(no_data) == len(results)


@pytest.mark.parametrize('name, var', [('gpuvirt-dashboard.json', 'host'), ('gpuvirt-dcgm-dashboard.json', 'instance')])
def test_the_host_selector_shows_each_host(fleet, name, var):
    """The selector lists the inventory names (instance), and each one selected shows that host's data in every panel
    where it has some: nothing goes empty because the machine calls itself otherwise."""
    dashboard = gq.Dashboard.load(DASHBOARDS / name)
    _values, options = gq.resolve_variables(dashboard, fleet.api())
    assert options[var] == sorted(HOSTS)
    for host in HOSTS:
        results = _check(dashboard, fleet, {var: [host]})
        shown = [e for e in results if e.series]
        assert len(shown) >= 8, '%s: only %s show %s' % (name, [e.target.name for e in shown], host)
        for e in shown:
            assert '"%s"' % host in e.expr


def test_the_vgpu_table_lists_the_running_vgpu_with_or_without_a_license_status(fleet):
    dashboard = gq.Dashboard.load(DASHBOARDS / 'gpuvirt-dashboard.json')
    (target,) = dashboard.panel_targets('vGPU instances (type, VM, license)')
    api = fleet.api()
    values, _unused = gq.resolve_variables(dashboard, api)
    rows = api.instant(gq.interpolate(target.expr, values, dashboard.variables))
    licenses = {s['metric']['vgpu_id']: s['value'][1] for s in api.instant('gpuvirt_vgpu_license_status')}
    info = api.instant('gpuvirt_vgpu_info')
    assert [s['metric']['vm_id'] for s in info] == ['vm-7']
    assert sorted((r['metric']['vgpu_id'], r['metric']['vm_id'], r['metric']['vgpu_type'], r['value'][1]) for r in rows) == sorted(
        (s['metric']['vgpu_id'], s['metric']['vm_id'], s['metric']['vgpu_type'], licenses.get(s['metric']['vgpu_id'], '-1')) for s in info)


def _by(series: list[dict], keys: tuple[str, ...]) -> dict[tuple, float]:
    out = {}
    for s in series:
        key = tuple(s['metric'].get(k, '') for k in keys)
        assert key not in out, 'two series for %s' % (key,)
        out[key] = float(s['value'][1])
    return out


GPU = ('instance', 'gpu')
WHOLE = ' unless on(instance, gpu) gpuvirt_mig_instance_info'  # GPUs without MIG instances
# dcgm dashboard panel and target -> the same quantity from the gpuvirt series (in the units docs/metrics.md gives them),
# compared per GPU (or GPU instance): MHz = Hz / 1e6, MiB = bytes / 2^20, kWh = J / 3.6e6. DCGM's framebuffer is
# NVML's memory info v2, where the driver's reserved memory is not "used"; gpuvirt_gpu_memory_used_bytes is v1's, where
# it is: used (v1) = FB_USED + FB_RESERVED.
UNITS = [
    ('SM clock', 'A', GPU, 'gpuvirt_gpu_clock_hz{clock="sm"} / 1e6', 0),
    ('Memory clock', 'A', GPU, 'gpuvirt_gpu_clock_hz{clock="mem"} / 1e6', 0),
    ('GPU temperature', 'A', GPU, 'gpuvirt_gpu_temperature_celsius', 0),
    ('Power', 'A', GPU, 'gpuvirt_gpu_power_watts', 1e-6),
    ('GPU utilization', 'A', GPU, 'gpuvirt_gpu_utilization_percent', 0),
    ('Framebuffer used', 'B', GPU, 'gpuvirt_gpu_memory_free_bytes / 2^20' + WHOLE, 1),
    ('Framebuffer used', 'A', GPU, '(gpuvirt_gpu_memory_used_bytes / 2^20 - on(instance, gpu) max by (instance, gpu) (DCGM_FI_DEV_FB_RESERVED))' + WHOLE, 1),
    ('GPU instance framebuffer used', 'A', GPU + ('GPU_I_ID',), 'gpuvirt_mig_memory_used_bytes / 2^20', 1),
    ('Energy in the time range', 'A', GPU, 'increase(gpuvirt_gpu_energy_joules_total[$__range]) / 3.6e6', 1e-9),
]


@pytest.mark.parametrize('title, ref_id, keys, reference, tolerance', UNITS, ids=['%s [%s]' % u[:2] for u in UNITS])
def test_dcgm_panels_are_in_dcgm_units(fleet, title, ref_id, keys, reference, tolerance):
    """The panel's values equal the gpuvirt series converted to dcgm's unit, for every GPU that has the gpuvirt
    series (tolerance: 1 MiB where DCGM truncates to whole MiB, a relative 1e-6 for watts and 1e-9 for energy)."""
    dashboard = gq.Dashboard.load(DASHBOARDS / 'gpuvirt-dcgm-dashboard.json')
    (target,) = [t for t in dashboard.panel_targets(title) if t.ref_id == ref_id]
    api = fleet.api()
    values, _unused = gq.resolve_variables(dashboard, api)
    builtins = gq.grafana_builtins(1, 1, fleet.window())
    shown = _by(api.instant(gq.interpolate(target.expr, values, dashboard.variables, builtins)), keys)
    expected = _by(api.instant(gq.interpolate(reference, {}, builtins=builtins)), keys)
    assert expected, 'no reference series: %s' % reference
    for key, value in expected.items():
        assert key in shown, '%s: no value for %s (panel: %s)' % (title, key, sorted(shown))
        assert math.isclose(shown[key], value, rel_tol=tolerance if tolerance < 1 else 0, abs_tol=tolerance if tolerance >= 1 else 0), \
            '%s %s: panel %s, expected %s (%s)' % (title, key, shown[key], value, reference)
    if WHOLE not in reference:
        assert set(shown) == set(expected), title


# The two queries of the 0.4.0 dashboard that issue 17 found broken, with its host variable (built from Hostname)
OLD_DASHBOARD = {'title': 'gpuvirt 0.4.0 (the two broken queries)', 'templating': {'list': [
    {'name': 'host', 'type': 'query', 'query': 'label_values(gpuvirt_gpu_info, Hostname)', 'multi': True, 'includeAll': True, 'allValue': '.*'}]},
    'panels': [{'type': 'table', 'title': 'vGPU instances (type, VM)', 'id': 19, 'targets': [
        {'refId': 'A', 'instant': True, 'expr': 'gpuvirt_vgpu_info{Hostname=~"$host"} * on(Hostname, gpu, vgpu_id) group_left() '
                                                'gpuvirt_vgpu_license_status{Hostname=~"$host"}'}]},
        {'type': 'timeseries', 'title': 'Scrape duration', 'id': 21, 'targets': [
            {'refId': 'A', 'expr': 'gpuvirt_exporter_scrape_duration_seconds{instance=~"$host"}'}]}]}


def test_the_check_fails_on_the_old_dashboards_bugs(fleet):
    """The same evaluation flags 0.4.0's vGPU table (no license status here) and its exporter row under a host
    selected by machine name: the check above can fail."""
    dashboard = gq.Dashboard.from_json(OLD_DASHBOARD)
    window = fleet.window()
    everything = gq.evaluate(dashboard, fleet.api(), {}, gq.grafana_builtins(1, 1, window), range_s=window)
    assert [e.target.panel_title for e in everything if e.empty_with_data] == ['vGPU instances (type, VM)']
    one = gq.evaluate(dashboard, fleet.api(), {'host': [HOSTS['mon-vgpu']]}, gq.grafana_builtins(1, 1, window), range_s=window)
    assert [e.target.panel_title for e in one if e.empty_with_data] == ['vGPU instances (type, VM)', 'Scrape duration']
