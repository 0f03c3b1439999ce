"""Helpers of the nvidia-ctk stand-in tests: a simulated host state (GPUs, MIG devices made through the NVML
stand-in), the driver's MIG capability files in a fake /proc, a fake /dev, and a run of sim/bin/nvidia-ctk."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
SIM_LIB = REPO / 'sim' / 'lib'
GPUSIMCTL = REPO / 'sim' / 'bin' / 'gpusimctl'
NVIDIA_CTK = REPO / 'sim' / 'bin' / 'nvidia-ctk'

# Makes MIG devices through the NVML stand-in: argv = GPU index, then GPU-instance profile enums (one compute
# instance each, the full-size one).
_MAKE_MIG = r'''
import sys, pynvml
pynvml.nvmlInit()
h = pynvml.nvmlDeviceGetHandleByIndex(int(sys.argv[1]))
for enum in sys.argv[2:]:
    info = pynvml.nvmlDeviceGetGpuInstanceProfileInfo(h, int(enum))
    gi = pynvml.nvmlDeviceCreateGpuInstance(h, info.id)
    ci_info = pynvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, info.sliceCount - 1 if info.sliceCount < 8 else 7,
                                                                 pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
    pynvml.nvmlGpuInstanceCreateComputeInstance(gi, ci_info.id)
'''


def env(root: Path, **extra) -> dict:
    return dict(os.environ, GPUSIM_ROOT=str(root / 'state'), PYTHONPATH=str(SIM_LIB),
                GPUSIM_CTK_PROC_ROOT=str(root / 'proc'), GPUSIM_CTK_DEV_ROOT=str(root / 'devroot'), **extra)


def run(argv, root: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env(root), check=False)
    assert not check or proc.returncode == 0, (argv, proc.stdout, proc.stderr)
    return proc


def init_host(root: Path, *gpus: str, vgpu_host: bool = False) -> dict:
    args = [sys.executable, GPUSIMCTL, 'init', '--hostname', 'ctk-test']
    for gpu in gpus:
        args += ['--gpu', gpu]
    if vgpu_host:
        args.append('--vgpu-host')
    run(args, root)
    (root / 'devroot' / 'dev').mkdir(parents=True, exist_ok=True)
    for node in ('nvidiactl', 'nvidia-uvm', 'nvidia-uvm-tools'):
        (root / 'devroot' / 'dev' / node).touch()
    return state(root)


def state(root: Path) -> dict:
    return json.loads(run([sys.executable, GPUSIMCTL, 'show'], root).stdout)


def enable_mig(root: Path, index: int) -> None:
    run([sys.executable, '-c', 'import pynvml; pynvml.nvmlInit(); pynvml.nvmlDeviceSetMigMode('
         'pynvml.nvmlDeviceGetHandleByIndex(%d), 1)' % index], root)
    run([sys.executable, GPUSIMCTL, 'reset', '--gpu', str(index)], root)


def make_mig(root: Path, index: int, *profile_enums: int) -> None:
    run([sys.executable, '-c', _MAKE_MIG, index] + list(profile_enums), root)


def gi_minor(gpu_minor: int, gi: int) -> int:
    """The driver's numbering of /dev/nvidia-caps minors (/proc/driver/nvidia-caps/mig-minors): 1 config, 2 monitor,
    then per GPU 15 GPU instances of 9 minors each (the GPU instance's, then its 8 compute instances')."""
    return 3 + gpu_minor * 135 + gi * 9


def write_capabilities(root: Path) -> dict:
    """The driver's capability files for every GPU and compute instance the state has now; {key: minor}."""
    caps = {}
    base = root / 'proc' / 'driver' / 'nvidia' / 'capabilities'
    for gpu in state(root)['gpus']:
        for gi in gpu.get('gpu_instances', []):
            gi_dir = base / ('gpu%d' % gpu['minor']) / 'mig' / ('gi%d' % gi['id'])
            gi_dir.mkdir(parents=True, exist_ok=True)
            minor = gi_minor(gpu['minor'], gi['id'])
            (gi_dir / 'access').write_text('DeviceFileMinor: %d\nDeviceFileMode: 292\nDeviceFileModify: 1\n' % minor)
            caps['gpu%d/gi%d' % (gpu['minor'], gi['id'])] = minor
            for ci in gi['compute_instances']:
                (gi_dir / ('ci%d' % ci['id'])).mkdir(exist_ok=True)
                ci_minor = minor + 1 + ci['id']
                (gi_dir / ('ci%d' % ci['id']) / 'access').write_text(
                    'DeviceFileMinor: %d\nDeviceFileMode: 292\nDeviceFileModify: 1\n' % ci_minor)
                caps['gpu%d/gi%d/ci%d' % (gpu['minor'], gi['id'], ci['id'])] = ci_minor
    return caps
