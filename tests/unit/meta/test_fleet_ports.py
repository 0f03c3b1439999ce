# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The integration tests' fleets run side by side (pytest -n 3): no two may want the same sshd or exporter port,
nor the same fleet name."""
from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]


def _ports(spec: dict) -> set[int]:
    port, ports = int(spec['base_port']), set()
    for host in spec.get('hosts', []):
        for _n in range(int(host.get('count', 1))):
            ports.add(int(host['port']) if 'port' in host else port)
            port += 0 if 'port' in host else 1
        for key, value in (host.get('vars') or {}).items():
            if key.endswith('_port'):
                ports.add(int(value))
    return ports


def test_the_test_fleets_use_disjoint_ports_and_names():
    files = sorted((REPO / 'tests' / 'integration').glob('*/fleet*.yml'))
    assert len(files) >= 10, files
    seen_ports: dict[int, str] = {}
    seen_names: dict[str, str] = {}
    for path in files:
        spec = yaml.safe_load(path.read_text())
        name = spec.get('fleet') or path.stem
        assert name not in seen_names, '%s and %s both name fleet %s' % (seen_names.get(name), path, name)
        seen_names[name] = str(path)
        for port in _ports(spec):
            assert port not in seen_ports, 'port %d of %s is also used by %s' % (port, path.relative_to(REPO), seen_ports[port])
            seen_ports[port] = str(path.relative_to(REPO))
