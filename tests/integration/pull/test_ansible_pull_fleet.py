# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A fleet host that converges itself with ansible-pull (docs/scaling.md, "Fleets that converge themselves"): git and
ansible-core (the project's pinned version, from PyPI) installed on the host, a Git repository on the host holding a
playbook that imports gpuvirt.fleet.site, an inventory with the host's declaration and the collection vendored under
collections/ (the Galaxy tarball, extracted). `ansible-pull -U file://... -i inventory.yml` applies the MIG layout, and
a second pull changes nothing. What the GPUs hold is read from the simulator's state.
"""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fleethost import FLEET_TOOL, REPO, VENV_BIN, fleet, fleet_up  # noqa: E402 pylint: disable=import-error,wrong-import-position

HERE = Path(__file__).resolve().parent
FLEET, HOST = 'pull20', 'pl-01'
MIG = [{'name': 'pull', 'devices': 'all', 'enabled': True, 'instances': [{'profile': '2g.12gb'}, {'profile': '2g.12gb'}]}]
ANSIBLE_CORE = re.search(r'^ansible-core==(\S+)', (REPO / 'requirements' / 'controller.txt').read_text(), re.M).group(1)
PULL = ('env -i LC_ALL=C.UTF-8 HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin:/opt/ansible/bin '
        'ansible-pull -U file:///srv/fleet-config -d /var/lib/gpuvirt-pull -i inventory.yml pull.yml')


def _sh(command: str, stdin: bytes | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(FLEET_TOOL), 'exec', '--fleet', FLEET, HOST, '--', 'sh', '-c', command], input=stdin,
                          capture_output=True, timeout=timeout, cwd=REPO, check=False)


def _ok(command: str, stdin: bytes | None = None) -> str:
    proc = _sh(command, stdin)
    assert proc.returncode == 0, '%r failed: %s %s' % (command, proc.stdout.decode()[-3000:], proc.stderr.decode()[-3000:])
    return proc.stdout.decode()


def _repository(tmp: Path) -> bytes:
    """The configuration repository as a tar stream: the playbook, the host's declaration, the vendored collection."""
    build = tmp / 'galaxy'
    subprocess.run([str(VENV_BIN / 'ansible-galaxy'), 'collection', 'build', '--output-path', str(build), str(REPO)],
                   check=True, capture_output=True, timeout=300)
    tarball = next(build.glob('gpuvirt-fleet-*.tar.gz'))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode='w') as repo:
        def add(name: str, text: str) -> None:
            info = tarfile.TarInfo('fleet-config/' + name)
            data = text.encode('utf-8')
            info.size, info.mode = len(data), 0o644
            repo.addfile(info, io.BytesIO(data))
        add('pull.yml', '---\n- name: Converge this host\n  ansible.builtin.import_playbook: gpuvirt.fleet.site\n')
        # the host's declaration in the repository's inventory (host_vars beside pull.yml would not apply: the plays
        # are those of the collection's playbook, in its own directory); the modules run with the host's own Python
        # (where its NVML binding is), not ansible-core's virtualenv
        add('inventory.yml', yaml.safe_dump({'all': {'hosts': {'localhost': {
            'ansible_connection': 'local', 'ansible_python_interpreter': '/usr/bin/python3', 'gpu_mig': MIG,
            'gpuvirt_exporter': False, 'gpuvirt_output_dir': '/var/lib/gpuvirt-pull-output'}}}}))
        with tarfile.open(tarball) as collection:
            for member in collection.getmembers():
                member.name = 'fleet-config/collections/ansible_collections/gpuvirt/fleet/' + member.name
                repo.addfile(member, collection.extractfile(member) if member.isfile() else None)
    return out.getvalue()


@pytest.fixture(scope='module', name='host')
def host_fixture(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('pull')
    with fleet_up(FLEET, HERE / 'fleet-pull.yml', workdir):
        _ok('apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends git python3-venv >/dev/null')
        # PyPI through whatever TLS setup the controller trusts (a proxy's CA, say): its CA bundle goes with the request
        bundle = Path(os.environ.get('PIP_CERT') or os.environ.get('SSL_CERT_FILE') or '/etc/ssl/certs/ca-certificates.crt')
        _ok('cat > /etc/ssl/certs/gpuvirt-controller-ca.crt', stdin=bundle.read_bytes())
        # a clean environment: the controller's PIP_* and REQUESTS_CA_BUNDLE (which requests prefers to --cert) name its files
        _ok('python3 -m venv /opt/ansible && env -i PATH=/usr/bin:/bin HOME=/root /opt/ansible/bin/pip install -q '
            '--disable-pip-version-check --cert /etc/ssl/certs/gpuvirt-controller-ca.crt ansible-core==%s' % ANSIBLE_CORE)
        _ok('mkdir -p /srv && tar -x -C /srv', stdin=_repository(workdir))
        _ok('cd /srv/fleet-config && git init -q && git add -A && git -c user.name=ci -c user.email=ci@example.invalid commit -qm declaration')
        yield HOST


def _last_recap(text: str) -> dict:
    """The counts of the last `localhost : ok=...` line (ansible-pull prints the checkout's recap first)."""
    lines = [line for line in text.splitlines() if line.startswith('localhost ') and 'ok=' in line]
    assert lines, text[-4000:]
    return {k: int(v) for k, v in re.findall(r'(\w+)=(\d+)', lines[-1])}


def test_ansible_pull_converges_the_host_and_a_second_pull_changes_nothing(host):
    first = _sh(PULL)
    out = first.stdout.decode()
    assert first.returncode == 0, out[-4000:] + first.stderr.decode()[-2000:]
    assert _last_recap(out)['changed'] > 0 and _last_recap(out)['failed'] == 0
    gpu = json.loads(_ok('gpusimctl show'))['gpus'][0]
    assert gpu['mig']['current'] and len(gpu['gpu_instances']) == 2, gpu
    assert len({gi['profile_id'] for gi in gpu['gpu_instances']}) == 1, gpu  # two of one profile: 2g.12gb
    assert _ok('systemctl is-enabled gpuvirt-mig.service').strip() == 'enabled'
    second = _sh(PULL)
    assert second.returncode == 0, second.stdout.decode()[-4000:]
    assert _last_recap(second.stdout.decode())['changed'] == 0, second.stdout.decode()[-4000:]
    assert fleet('status', '--fleet', FLEET).returncode == 0
