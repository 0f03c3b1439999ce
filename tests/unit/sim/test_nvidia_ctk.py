"""The nvidia-ctk stand-in (sim/bin/nvidia-ctk): `cdi generate` prints a CDI spec that the CDI JSON schema accepts,
for whole GPUs, MIG devices and a vGPU host, with the toolkit's names, device nodes and cdiVersion; a MIG device
whose capability the driver does not list fails the generation and leaves the old file; `cdi list` names the
devices of the specs in the spec directories."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ctk_support as ctk  # noqa: E402  pylint: disable=wrong-import-position,import-error

SCHEMA = json.loads((ctk.REPO / 'tests' / 'unit' / 'fixtures' / 'cdi' / 'cdi-spec.schema.json').read_text())

_MIG_UUIDS = r'''
import pynvml
pynvml.nvmlInit()
out = []
for i in range(pynvml.nvmlDeviceGetCount()):
    h = pynvml.nvmlDeviceGetHandleByIndex(i)
    try:
        n = pynvml.nvmlDeviceGetMaxMigDeviceCount(h)
    except pynvml.NVMLError:
        continue
    for j in range(n):
        try:
            m = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h, j)
        except pynvml.NVMLError:
            continue
        out.append(['%d:%d' % (i, j), pynvml.nvmlDeviceGetUUID(m), pynvml.nvmlDeviceGetGpuInstanceId(m),
                    pynvml.nvmlDeviceGetComputeInstanceId(m)])
print(out)
'''


def generate(root: Path, *args) -> dict:
    proc = ctk.run([ctk.NVIDIA_CTK, 'cdi', 'generate'] + list(args), root)
    spec = yaml.safe_load(proc.stdout)
    jsonschema.validate(spec, SCHEMA)
    return spec


def nodes(spec: dict, name: str) -> list[str]:
    return [n['path'] for d in spec['devices'] if d['name'] == name for n in d['containerEdits']['deviceNodes']]


def test_whole_gpus_one_device_per_index_and_uuid_and_all(tmp_path):
    state = ctk.init_host(tmp_path, 'h100-80gb-hbm3:2')
    spec = generate(tmp_path)
    uuids = [g['uuid'] for g in state['gpus']]
    assert [d['name'] for d in spec['devices']] == ['0', uuids[0], '1', uuids[1], 'all']
    assert spec['kind'] == 'nvidia.com/gpu'
    assert spec['cdiVersion'] == '0.5.0'  # names that start with a digit need 0.5.0
    assert nodes(spec, '1') == nodes(spec, uuids[1]) == ['/dev/nvidia%d' % state['gpus'][1]['minor']]
    assert nodes(spec, 'all') == ['/dev/nvidia0', '/dev/nvidia1']
    assert [n['path'] for n in spec['containerEdits']['deviceNodes']] == \
        ['/dev/nvidia-uvm', '/dev/nvidia-uvm-tools', '/dev/nvidiactl']  # no nvidia-modeset on this host
    assert 'NVIDIA_VISIBLE_DEVICES=void' in spec['containerEdits']['env']


def test_mig_devices_named_by_gpu_and_mig_index_and_uuid_with_their_cap_nodes(tmp_path):
    ctk.init_host(tmp_path, 'h100-80gb-hbm3:2')
    ctk.enable_mig(tmp_path, 1)
    ctk.make_mig(tmp_path, 1, 9, 0)  # 3g and 1g GPU instance profile enums
    caps = ctk.write_capabilities(tmp_path)
    spec = generate(tmp_path)
    migs = eval(ctk.run([sys.executable, '-c', _MIG_UUIDS], tmp_path).stdout)  # pylint: disable=eval-used
    assert [m[0] for m in migs] == ['1:0', '1:1']
    names = [d['name'] for d in spec['devices']]
    for index_name, uuid, gi, ci in migs:
        expected = ['/dev/nvidia1', '/dev/nvidia-caps/nvidia-cap%d' % caps['gpu1/gi%d' % gi],
                    '/dev/nvidia-caps/nvidia-cap%d' % caps['gpu1/gi%d/ci%d' % (gi, ci)]]
        assert nodes(spec, index_name) == expected
        assert nodes(spec, uuid) == expected
        assert names.index(uuid) == names.index(index_name) + 1
    assert names[-1] == 'all' and len(names) == 4 + 4 + 1
    assert set(nodes(spec, 'all')) == {'/dev/nvidia0', '/dev/nvidia1'} | {'/dev/nvidia-caps/nvidia-cap%d' % m for m in caps.values()}


def test_vgpu_host_gives_a_valid_spec_of_its_gpus(tmp_path):
    state = ctk.init_host(tmp_path, 'a40:2', vgpu_host=True)
    spec = generate(tmp_path, '--device-name-strategy=type-index')
    assert [d['name'] for d in spec['devices']] == ['gpu0', 'gpu1', 'all']
    assert spec['cdiVersion'] == '0.3.0'  # no name starts with a digit: the lowest version
    assert nodes(spec, 'gpu1') == ['/dev/nvidia%d' % state['gpus'][1]['minor']]


def test_json_output_file_and_uuid_names(tmp_path):
    state = ctk.init_host(tmp_path, 'a30:1')
    out = tmp_path / 'cdi' / 'nvidia.json'
    proc = ctk.run([ctk.NVIDIA_CTK, 'cdi', 'generate', '--output=%s' % out, '--device-name-strategy', 'uuid'], tmp_path)
    assert proc.stdout == ''
    assert 'Generated CDI spec with version 0.3.0' in proc.stderr
    spec = json.loads(out.read_text())
    jsonschema.validate(spec, SCHEMA)
    assert [d['name'] for d in spec['devices']] == [state['gpus'][0]['uuid'], 'all']
    assert oct(out.stat().st_mode & 0o777) == '0o644'


def test_a_mig_device_without_its_capability_fails_and_keeps_the_old_file(tmp_path):
    ctk.init_host(tmp_path, 'a30:1')
    out = tmp_path / 'nvidia.yaml'
    out.write_text('old\n')
    ctk.enable_mig(tmp_path, 0)
    ctk.make_mig(tmp_path, 0, 0)
    proc = ctk.run([ctk.NVIDIA_CTK, 'cdi', 'generate', '--output', out], tmp_path, check=False)
    assert proc.returncode == 1
    assert 'ERRO' in proc.stderr and 'capabilities/gpu0/mig/gi' in proc.stderr
    assert out.read_text() == 'old\n'


def test_cdi_list_names_the_devices_of_the_spec_dirs(tmp_path):
    state = ctk.init_host(tmp_path, 'a30:1')
    specs = tmp_path / 'cdi'
    ctk.run([ctk.NVIDIA_CTK, 'cdi', 'generate', '--output', specs / 'nvidia.yaml'], tmp_path)
    proc = ctk.run([ctk.NVIDIA_CTK, 'cdi', 'list', '--spec-dir', specs], tmp_path)
    assert proc.stdout.split() == ['nvidia.com/gpu=0', 'nvidia.com/gpu=%s' % state['gpus'][0]['uuid'], 'nvidia.com/gpu=all']
    assert 'Found 3 CDI devices' in proc.stderr


@pytest.mark.parametrize('argv', [['cdi', 'generate', '--format', 'toml'], ['runtime', 'configure']])
def test_unsupported_arguments_fail(tmp_path, argv):
    ctk.init_host(tmp_path, 'a30:1')
    proc = ctk.run([ctk.NVIDIA_CTK] + argv, tmp_path, check=False)
    assert proc.returncode == 1 and 'ERRO' in proc.stderr
