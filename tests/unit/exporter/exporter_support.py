# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A simulated GPU host with the exporter serving it, as a subprocess (the way systemd runs it), for tests and bench."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SIM_LIB = os.path.join(REPO, 'sim', 'lib')
GPUSIMCTL = os.path.join(REPO, 'sim', 'bin', 'gpusimctl')
EXPORTER_LIB = os.path.join(REPO, 'roles', 'exporter', 'files')
H100_1G_PROFILE = 19  # NVML profile id of 1g.10gb on an H100 (real capture)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class SimExporter:
    """A simulator state directory and the exporter process reading it."""

    def __init__(self, root: str, gpus: list[str], vgpu_host: bool = False):
        self.root = root
        self.env = dict(os.environ, GPUSIM_ROOT=root, PYTHONPATH=os.pathsep.join([SIM_LIB, EXPORTER_LIB]))
        args = ['init', '--hostname', 'exp-host']
        for gpu in gpus:
            args += ['--gpu', gpu]
        self.ctl(*(args + (['--vgpu-host'] if vgpu_host else [])))
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.scheme = 'http'
        self._changed = False  # the simulated GPUs changed since the last scrape: wait for samples read after that

    def ctl(self, *args: str) -> str:
        proc = subprocess.run([sys.executable, GPUSIMCTL, '--root', self.root, *args], capture_output=True, text=True,
                              env=self.env, check=False)
        assert proc.returncode == 0, proc.stderr
        self._changed = True
        return proc.stdout

    def nvml(self, code: str) -> str:
        proc = subprocess.run([sys.executable, '-c', 'import pynvml\npynvml.nvmlInit()\n' + code], capture_output=True, text=True,
                              env=self.env, check=False)
        assert proc.returncode == 0, proc.stderr
        self._changed = True
        return proc.stdout

    def mig_sevenths(self, gpus: list[int]) -> None:
        """MIG on, seven 1g.10gb GPU instances with one compute instance each, on the given GPUs."""
        self.nvml(_set_mig(gpus))
        for gpu in gpus:
            self.ctl('reset', '--gpu', str(gpu))
        self.nvml('for g in %r:\n    h = pynvml.nvmlDeviceGetHandleByIndex(g)\n    for _ in range(7):\n'
                  '        gi = pynvml.nvmlDeviceCreateGpuInstance(h, %d)\n        pynvml.nvmlGpuInstanceCreateComputeInstance(gi, 0)\n'
                  % (gpus, H100_1G_PROFILE))

    def start(self, *args: str, sample_interval: str | None = '0.05') -> None:
        """The exporter on a free port; tests sample the fast values every 50 ms (get() waits for a sample read after
        the last change), sample_interval=None keeps the exporter's default."""
        self.port = free_port()
        interval = ['--sample-interval', sample_interval] if sample_interval is not None else []
        self._changed = False  # the first samples are read before the exporter listens
        self.proc = subprocess.Popen([sys.executable, '-m', 'gpuvirt_exporter', '--web.listen-address', '127.0.0.1:%d' % self.port,
                                      '--pcie-interval', '1', '--hostname', 'exp-host', *interval, *args], env=self.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(('127.0.0.1', self.port), timeout=0.2):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise AssertionError('exporter exited: %s' % self.proc.stdout.read().decode())
                time.sleep(0.05)
        raise AssertionError('exporter did not listen')

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def get(self, path: str = '/metrics', auth: tuple[str, str] | None = None, context=None) -> tuple[int, str]:
        """(status, body); after a change to the simulated GPUs, a /metrics body from fast samples read after it."""
        if path == '/metrics' and self._changed and self.proc is not None:
            self._changed = False
            self._await_fast_rounds(2, auth, context)  # the round running at the change may have begun before it
        return self._get(path, auth, context)

    def _await_fast_rounds(self, rounds: int, auth, context) -> None:
        first = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status, body = self._get('/metrics', auth, context)
            found = re.search(r'^gpuvirt_exporter_sample_rounds_total\{sampler="fast"\} (\S+)$', body, re.M) if status == 200 else None
            if found is None:
                return  # no fast sampler (--sample-interval 0), or no answer to wait on
            first = float(found.group(1)) if first is None else first
            if float(found.group(1)) >= first + rounds:
                return
            time.sleep(0.02)
        raise AssertionError('the exporter sampled no new fast values in 20 s')

    def _get(self, path: str, auth: tuple[str, str] | None, context) -> tuple[int, str]:
        request = urllib.request.Request('%s://127.0.0.1:%d%s' % (self.scheme, self.port, path))
        if auth is not None:
            import base64  # pylint: disable=import-outside-toplevel
            request.add_header('Authorization', 'Basic ' + base64.b64encode(('%s:%s' % auth).encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=30, context=context) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def state(self) -> dict:
        with open(os.path.join(self.root, 'state.json'), encoding='utf-8') as handle:
            return json.load(handle)


def _set_mig(gpus: list[int]) -> str:
    return ''.join('pynvml.nvmlDeviceSetMigMode(pynvml.nvmlDeviceGetHandleByIndex(%d), 1)\n' % g for g in gpus)


def samples(text: str) -> list:
    """(name, labels, value) of every sample in an exposition."""
    from prometheus_client.parser import text_string_to_metric_families  # pylint: disable=import-outside-toplevel
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]
