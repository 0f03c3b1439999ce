# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Serve the emulated vGPU sysfs trees of one simulated host at a directory for the length of a `with` block: what the
tests and benchmarks that run the modules against a local simulated host use (fleet hosts run it as a unit).
Imports nothing of FUSE itself: the server is its own process (`python -m gpusim_sysfs`)."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from typing import Iterator

SIM_LIB = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def served(mountpoint: str | os.PathLike, root: str | os.PathLike, sriov: bool = False, timeout: float = 10) -> Iterator[str]:
    """Mount the trees of the host whose gpusim state is `root` at `mountpoint` (an existing empty directory) and
    unmount them on the way out; `sriov`: the SR-IOV vendor interface (see fs.py). Raises RuntimeError when the server
    does not mount in `timeout` seconds."""
    mnt = os.fspath(mountpoint)
    proc = subprocess.Popen([sys.executable, '-m', 'gpusim_sysfs', mnt, '--root', os.fspath(root)] + (['--sriov'] if sriov else []),
                            env=dict(os.environ, PYTHONPATH=SIM_LIB))
    deadline = time.time() + timeout
    try:
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError('the FUSE server did not mount %s' % mnt)
            time.sleep(0.02)
        yield mnt
    finally:
        subprocess.run(['fusermount3', '-u', mnt], check=False, capture_output=True)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
