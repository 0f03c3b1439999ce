# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Container runtimes kept in step with MIG changes, on fleet-cdi.yml (fleet 'cdi', ports 24100+):

- with the container toolkit stand-in installed, a MIG layout change through gpuvirt.fleet.mig_layout followed by
  the container_runtime role's refresh leaves a CDI spec (valid against the CDI schema) that names exactly the new MIG
  devices, by index and by NVML's MIG UUIDs, with their /dev/nvidia-caps nodes; verify passes; the device-plugin hook
  ran once per change and not at all when nothing changed;
- the spec generated before the change is reported by verify, naming its stale and missing devices;
- a rollout with the kubectl hooks of playbooks/drain/ labels the nodes in the GPU operator's convention
  (nvidia.com/mig.config, nvidia.com/mig.config.state pending -> success, or failed on a failing host), with the
  exact kubectl calls in order (a recording kubectl stand-in on the controller's PATH).

Needs root (the fleet). MIG mode is enabled at set-up (a test reset, as the fleet's other set-ups do); the layout
changes themselves are made by gpuvirt.fleet.mig_layout.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fleethost import REPO, VENV_BIN, FleetHost, ansible_env, fleet_up, recap  # noqa: E402 pylint: disable=import-error,wrong-import-position

HERE = Path(__file__).resolve().parent
FLEET = 'cdi'
SCHEMA = json.loads((REPO / 'tests' / 'unit' / 'fixtures' / 'cdi' / 'cdi-spec.schema.json').read_text())
LAYOUT_A = [{'profile': '2g.12gb'}, {'profile': '2g.12gb'}]
LAYOUT_B = [{'profile': '2g.12gb'}, {'profile': '1g.6gb'}, {'profile': '1g.6gb'}]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='the fleet needs root')

_MIG_DEVICES = r'''
import json, pynvml
pynvml.nvmlInit()
h = pynvml.nvmlDeviceGetHandleByIndex(0)
out = []
for j in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(h)):
    try:
        m = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h, j)
    except pynvml.NVMLError:
        continue
    out.append(['0:%d' % j, pynvml.nvmlDeviceGetUUID(m), pynvml.nvmlDeviceGetGpuInstanceId(m),
                pynvml.nvmlDeviceGetComputeInstanceId(m)])
print(json.dumps(out))
'''


class Host(FleetHost):
    caps_root = '/proc/driver/nvidia/capabilities'

    def run(self, **variables) -> subprocess.CompletedProcess:
        return self.play(HERE / 'cdi.yml', caps_root=self.caps_root, **variables)

    def mig_devices(self) -> list:
        return json.loads(self.sh("python3 -c '%s'" % _MIG_DEVICES.replace("'", '"')))

    def cap(self, key: str) -> int:
        text = self.sh('cat %s/%s/access' % (self.caps_root, key.replace('/gi', '/mig/gi', 1)))
        return int(text.split('DeviceFileMinor:')[1].split()[0])

    def spec(self, path: str = '/etc/cdi/nvidia.yaml') -> dict:
        spec = yaml.safe_load(self.sh('cat %s' % path))
        jsonschema.validate(spec, SCHEMA)
        return spec

    def restarts(self) -> int:
        return int(self.sh('cat /var/tmp/plugin-restarts 2>/dev/null | wc -l').strip())


@pytest.fixture(scope='module', name='host')
def host_fixture(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('cdi')
    with fleet_up(FLEET, HERE / 'fleet-cdi.yml', workdir) as inventory:
        host = Host(FLEET, 'cdi-01', workdir, inventory, HERE / 'cdi.yml')
        host.caps_root = '/proc/driver/nvidia/capabilities'
        proc = host.play(HERE / 'toolkit.yml', repo=str(REPO))
        assert proc.returncode == 0, proc.stdout[-4000:]
        host.sh("python3 -c 'import pynvml; pynvml.nvmlInit(); pynvml.nvmlDeviceSetMigMode("
                "pynvml.nvmlDeviceGetHandleByIndex(0), 1)' && gpusimctl reset --gpu 0 --force >/dev/null")
        yield host


def test_refresh_after_a_mig_change_names_exactly_the_new_devices_and_runs_the_hook_once(host):
    proc = host.run(layout=LAYOUT_A)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert host.restarts() == 1
    host.sh('cp /etc/cdi/nvidia.yaml /var/tmp/stale.yaml')
    before = {m[2] for m in host.mig_devices()}

    proc = host.run(layout=LAYOUT_B)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert host.restarts() == 2
    spec = host.spec()
    migs = host.mig_devices()
    assert len(migs) == 3 and {m[2] for m in migs} != before
    by_name = {d['name']: [n['path'] for n in d['containerEdits']['deviceNodes']] for d in spec['devices']}
    gpu_uuid = host.state()['gpus'][0]['uuid']
    assert sorted(by_name) == sorted(['0', gpu_uuid, 'all'] + [m[0] for m in migs] + [m[1] for m in migs])
    for index_name, uuid, gi, ci in migs:
        nodes = ['/dev/nvidia0', '/dev/nvidia-caps/nvidia-cap%d' % host.cap('gpu0/gi%d' % gi),
                 '/dev/nvidia-caps/nvidia-cap%d' % host.cap('gpu0/gi%d/ci%d' % (gi, ci))]
        assert by_name[index_name] == nodes and by_name[uuid] == nodes, (index_name, by_name)

    proc = host.run(entry='verify')
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert recap(proc, 'cdi-01') == 0


def test_refresh_without_a_change_changes_nothing_and_restarts_nothing(host):
    proc = host.run()
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert recap(proc, 'cdi-01') == 0
    assert host.restarts() == 2


def test_verify_names_the_stale_and_missing_devices_of_a_spec_from_before_the_change(host):
    stale_spec = host.spec('/var/tmp/stale.yaml')
    migs = host.mig_devices()
    now = {m[2] for m in migs}
    proc = host.run(entry='verify', container_runtime_cdi_spec_path='/var/tmp/stale.yaml')
    assert proc.returncode != 0
    out = proc.stdout
    assert 'does not match the devices NVML reports' in out
    # the spec's MIG devices whose GPU instance is gone are stale, by index name and UUID
    gone = [d['name'] for d in stale_spec['devices'] if ':' in d['name'] or d['name'].startswith('MIG-')]
    assert gone, stale_spec
    # every GPU instance of layout B that the old spec lacks is missing
    new_gis = sorted(now - {gi for gi in now if host_gi_in_spec(host, stale_spec, gi)})
    assert new_gis, (now, stale_spec)
    for gi in new_gis:
        assert 'GPU instance %d, compute instance 0' % gi in out, out[-3000:]
    stale_names = [n for n in gone if ('%s (no such MIG device now)' % n) in out]
    assert stale_names and len(stale_names) % 2 == 0, out[-3000:]  # each by its index name and its UUID


def test_site_checks_the_spec_it_observed_before_the_converge_on_a_host_it_changes_nothing_on(host, tmp_path):
    """cdi-01 declares nothing, so site.yml changes nothing there: its devices gate checks the CDI spec as gpu_facts
    observed it in the run's first call (no gpu_cdi call of its own), and a spec that names a GPU the host does not
    have fails it."""
    spec = host.spec()
    host.sh('cp /etc/cdi/nvidia.yaml /var/tmp/good.yaml')
    spec['devices'].append({'name': '7', 'containerEdits': {'deviceNodes': [{'path': '/dev/nvidia7'}]}})
    host.sh("cat > /etc/cdi/nvidia.yaml <<'EOF'\n%s\nEOF" % json.dumps(spec))  # JSON is YAML
    try:
        failed = host.play(REPO / 'playbooks' / 'site.yml', gpuvirt_target_hosts='cdi-01', gpuvirt_output_dir=str(tmp_path))
        out = failed.stdout
        assert failed.returncode != 0, out[-4000:]
        verify = out.split('PLAY [Verify the GPU hosts]')[1]
        assert re.search(r'Verify the CDI spec against the devices\] \**\nskipping: \[cdi-01\]', verify), verify[-4000:]
        assert re.search(r'that an observed spec matches\] \**\n((?!TASK \[).)*\nfatal: \[cdi-01\]', verify, re.S), verify[-4000:]
        assert 'the CDI spec /etc/cdi/nvidia.yaml does not match the devices NVML reports: stale: 7 (no such GPU now)' in out, out[-4000:]
        assert recap(failed, 'cdi-01') == 0  # changed: nothing
    finally:
        host.sh('cp /var/tmp/good.yaml /etc/cdi/nvidia.yaml')
    passed = host.play(REPO / 'playbooks' / 'site.yml', gpuvirt_target_hosts='cdi-01', gpuvirt_output_dir=str(tmp_path))
    assert passed.returncode == 0, passed.stdout[-4000:]
    assert recap(passed, 'cdi-01') == 0


def host_gi_in_spec(host: Host, spec: dict, gi: int) -> bool:
    """Whether `spec` has a device with the cap node of GPU instance `gi` as the driver lists it now."""
    node = '/dev/nvidia-caps/nvidia-cap%d' % host.cap('gpu0/gi%d' % gi)
    return any(n['path'] == node for d in spec['devices'] for n in d['containerEdits']['deviceNodes'] if d['name'] != 'all')


def test_a_rollout_labels_the_nodes_pending_success_and_failed_with_kubectl(host, tmp_path):
    bindir = tmp_path / 'bin'
    bindir.mkdir()
    log = tmp_path / 'kubectl.log'
    kubectl = bindir / 'kubectl'
    kubectl.write_text('#!%s\nimport json, os, sys\nwith open(%r, "a") as f:\n    f.write(json.dumps(sys.argv[1:]) + "\\n")\n'
                       % (sys.executable, str(log)))
    kubectl.chmod(0o755)
    drain = REPO / 'playbooks' / 'drain'
    variables = {'gpuvirt_rollout_drain_tasks': str(drain / 'kubernetes-drain-mig.yml'),
                 'gpuvirt_rollout_undrain_tasks': str(drain / 'kubernetes-uncordon-mig.yml'),
                 'gpuvirt_rollout_failed_tasks': str(drain / 'kubernetes-mig-label-failed.yml'),
                 'gpuvirt_rollout_canaries': ['cdi-01'], 'gpuvirt_rollout_max_fail_percentage': 100,
                 'gpuvirt_k8s_mig_config': 'cdi-test', 'gpuvirt_rollout_summary_path': str(tmp_path / 'summary.json'),
                 }
    varfile = tmp_path / 'vars.json'
    varfile.write_text(json.dumps(variables))
    env = ansible_env()
    env['PATH'] = '%s:%s' % (bindir, env['PATH'])
    proc = subprocess.run([str(VENV_BIN / 'ansible-playbook'), '-i', str(host.inventory), '-e', '@%s' % varfile,
                           str(REPO / 'playbooks' / 'rollout.yml')], capture_output=True, text=True, timeout=600, cwd=REPO,
                          env=env, check=False)
    summary = json.loads((tmp_path / 'summary.json').read_text())
    assert summary['hosts']['cdi-01']['state'] == 'done', proc.stdout[-4000:]
    assert summary['hosts']['cdi-02']['state'] == 'failed', proc.stdout[-4000:]
    assert 'failed_hook_error' not in summary['hosts']['cdi-02']
    calls = [json.loads(line) for line in log.read_text().splitlines()]

    def label(node, state):
        return ['label', '--overwrite', 'node', node, 'nvidia.com/mig.config=cdi-test', 'nvidia.com/mig.config.state=' + state]

    def drain_calls(node):
        return [['cordon', node], ['drain', node, '--ignore-daemonsets', '--delete-emptydir-data', '--timeout=3600s']]

    assert calls == ([label('cdi-01', 'pending')] + drain_calls('cdi-01') + [label('cdi-01', 'success'), ['uncordon', 'cdi-01']]
                     + [label('cdi-02', 'pending')] + drain_calls('cdi-02') + [label('cdi-02', 'failed')]), \
        (calls, proc.stdout[-4000:])


def _module(host: Host, target: str, args: str, check: bool = False) -> tuple[int, dict]:
    """gpuvirt.fleet.gpu_cdi run ad hoc on `target`: (rc, result)."""
    argv = [str(VENV_BIN / 'ansible'), '-i', str(host.inventory), target, '-m', 'gpuvirt.fleet.gpu_cdi', '-a', args, '-o']
    proc = subprocess.run(argv + (['--check'] if check else []), capture_output=True, text=True, timeout=120, cwd=REPO,
                          env=ansible_env(), check=False)
    return proc.returncode, json.loads(proc.stdout.split('=>', 1)[1])


def test_gpu_cdi_without_toolkit_broken_spec_failed_generation_and_check_mode(host):
    # a host without the container toolkit: nothing to do, and no failure
    rc, result = _module(host, 'cdi-02', 'spec_path=/etc/cdi/nvidia.yaml')
    assert rc == 0 and result['toolkit_installed'] is False and result['changed'] is False, result
    assert 'not installed' in result['msg']
    # a spec that does not parse: the error names the file
    host.sh("printf 'cdiVersion: 0.5.0\\nkind: [nvidia.com/gpu\\n' > /var/tmp/broken.yaml")
    rc, result = _module(host, 'cdi-01', 'spec_path=/var/tmp/broken.yaml generate=false')
    assert rc != 0 and result['msg'].startswith('/var/tmp/broken.yaml '), result
    # a failing nvidia-ctk leaves the old file as it was
    host.sh('cp /etc/cdi/nvidia.yaml /var/tmp/keep.yaml && cp /var/tmp/keep.yaml /var/tmp/keep.orig')
    rc, result = _module(host, 'cdi-01', 'spec_path=/var/tmp/keep.yaml nvidia_ctk=/bin/false verify=false')
    assert rc != 0 and 'nvidia-ctk cdi generate failed' in result['msg'] and 'left as it was' in result['msg'], result
    host.sh('cmp /var/tmp/keep.yaml /var/tmp/keep.orig')
    # check mode: the change is predicted and verified, nothing is written
    rc, result = _module(host, 'cdi-01', 'spec_path=/var/tmp/new/nvidia.yaml capabilities_root=%s' % host.caps_root, check=True)
    assert rc == 0 and result['changed'] is True and result['matches'] is True, result
    host.sh('test ! -e /var/tmp/new')
