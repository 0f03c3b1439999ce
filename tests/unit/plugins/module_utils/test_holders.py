# Copyright (c) gpuvirt.fleet contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who holds a GPU: the /proc scan (as fuser finds holders) and the pure matching and wording."""
from __future__ import annotations

import os
from pathlib import Path

from ansible_collections.gpuvirt.fleet.plugins.module_utils import _holders, _sysfs


def make_process(proc: Path, pid: int, links: list[str], cmdline: str = '', comm: str = '', cgroup: str = '') -> None:
    base = proc / str(pid)
    (base / 'fd').mkdir(parents=True)
    for number, target in enumerate(links):
        os.symlink(target, base / 'fd' / str(number))
    (base / 'cmdline').write_bytes(cmdline.replace(' ', '\0').encode() + b'\0')
    (base / 'comm').write_text(comm + '\n')
    (base / 'cgroup').write_text(cgroup)


def test_the_scan_finds_processes_with_a_gpu_node_open_and_their_units(tmp_path):
    proc = tmp_path / 'proc'
    make_process(proc, 812, ['/dev/null', '/dev/nvidiactl', '/dev/nvidia0', '/dev/nvidia1'], '/usr/bin/nvidia-persistenced --verbose',
                 'nvidia-persiste', '12:pids:/system.slice/nvidia-persistenced.service\n1:name=systemd:/system.slice/nvidia-persistenced.service\n')
    make_process(proc, 900, ['/dev/nvidia1', 'socket:[1234]'], 'python3 /usr/local/bin/gpuvirt-exporter', 'python3',
                 '9:name=systemd:/system.slice/gpuvirt-exporter.service\n8:pids:/\n0::/\n')
    make_process(proc, 950, ['/dev/nvidia3'], 'python3 train.py', 'python3', '0::/user.slice/user-0.slice/session-4.scope\n')
    make_process(proc, 1000, ['/dev/nvidiactl'], 'nvidia-smi -q', 'nvidia-smi')  # the control node alone holds no GPU
    make_process(proc, 1001, ['/dev/nvidia-caps/nvidia-cap21', '/dev/nvidia10x'], 'odd')
    (proc / 'self').mkdir()
    (proc / '77').mkdir()  # a process that ended while the scan ran: no fd, no comm
    holders = _sysfs.read_device_holders(str(proc))
    assert holders == [
        {'pid': 812, 'comm': 'nvidia-persiste', 'command': '/usr/bin/nvidia-persistenced --verbose', 'unit': 'nvidia-persistenced.service', 'minors': [0, 1]},
        {'pid': 900, 'comm': 'python3', 'command': 'python3 /usr/local/bin/gpuvirt-exporter', 'unit': 'gpuvirt-exporter.service', 'minors': [1]},
        {'pid': 950, 'comm': 'python3', 'command': 'python3 train.py', 'unit': 'session-4.scope', 'minors': [3]},
    ]


def test_a_missing_proc_is_no_holder(tmp_path):
    assert _sysfs.read_device_holders(str(tmp_path / 'nowhere')) == []


GPUS = [{'index': 0, 'minor_number': 2, 'processes': []},
        {'index': 1, 'minor_number': 0, 'processes': [{'pid': 4242, 'used_memory_mib': 100}]},
        {'index': 2, 'minor_number': None, 'processes': []}]
HOLDERS = [{'pid': 812, 'comm': 'nvidia-persiste', 'command': '/usr/bin/nvidia-persistenced', 'unit': 'nvidia-persistenced.service', 'minors': [0, 2]},
           {'pid': 900, 'comm': 'python3', 'command': 'python3 exporter', 'unit': None, 'minors': [2]},
           {'pid': 55, 'comm': 'python3', 'command': 'ansible module', 'unit': None, 'minors': [0, 2]}]


def test_holders_are_matched_by_minor_number_not_index_and_this_process_is_left_out():
    found = _holders.blocking(GPUS, [0, 1, 2], HOLDERS, exclude=[55])
    assert found == [
        {'pid': 812, 'comm': 'nvidia-persiste', 'command': '/usr/bin/nvidia-persistenced', 'unit': 'nvidia-persistenced.service', 'gpus': [0, 1]},
        {'pid': 900, 'comm': 'python3', 'command': 'python3 exporter', 'unit': None, 'gpus': [0]},
        {'pid': 4242, 'comm': 'a compute process', 'command': 'a compute process', 'unit': None, 'gpus': [1]},
    ]
    assert _holders.blocking(GPUS, [2], HOLDERS) == []  # minor unknown: only NVML's processes could name a holder
    assert [h['pid'] for h in _holders.blocking(GPUS, [1], HOLDERS, exclude=[812, 55])] == [4242]


def test_the_refusal_names_each_gpu_and_each_holder():
    message = _holders.refusal('gpu-a', _holders.blocking(GPUS, [0, 1], HOLDERS, exclude=[55]))
    assert message.startswith('host gpu-a: the MIG mode change needs a GPU reset, but GPU 0 is held by '
                              'pid 812 (/usr/bin/nvidia-persistenced; unit nvidia-persistenced.service), pid 900 (python3 exporter); '
                              'GPU 1 is held by pid 812 (/usr/bin/nvidia-persistenced; unit nvidia-persistenced.service), '
                              'pid 4242 (a compute process); nothing was changed.')
    assert 'never kills a process' in message


def test_nvidia_drm_is_read_from_the_loaded_modules():
    assert _holders.drm_loaded({'nvidia', 'nvidia_drm', 'nvidia_modeset'})
    assert not _holders.drm_loaded({'nvidia', 'nvidia_uvm'}) and not _holders.drm_loaded(None)
