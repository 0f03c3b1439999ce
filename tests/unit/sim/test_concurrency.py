"""Several processes create, destroy and read at once: no lost update, no half-written JSON."""
# pylint: disable=redefined-outer-name,unused-argument  # pytest fixtures are parameters by design
from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time

from gpusim import host, models, store

PROFILE_1G, PROFILE_2G = 19, 14
WORKERS, ROUNDS = 4, 20
sim_pynvml = sys.modules["sim_pynvml"]  # loaded by conftest.py; forked children inherit it


def _creator(root, seed, results):
    os.environ["GPUSIM_ROOT"] = root
    nvml = sim_pynvml
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    created = destroyed = refused = 0
    mine = []
    for i in range(ROUNDS):
        profile = PROFILE_2G if (i + seed) % 3 == 0 else PROFILE_1G
        try:
            mine.append(nvml.nvmlDeviceCreateGpuInstance(handle, profile))
            created += 1
        except nvml.NVMLError_InsufficientResources:
            refused += 1
        if len(mine) > 1 or (mine and i % 2):
            nvml.nvmlGpuInstanceDestroy(mine.pop(0))
            destroyed += 1
        nvml.nvmlDeviceGetGpuInstanceRemainingCapacity(handle, PROFILE_1G)
    results.put((created, destroyed, refused))


def _ctl_writer(root, results):
    writes = 0
    for i in range(ROUNDS):
        with store.transaction(root) as state:
            host.add_process(state, 1, 1000 + i, 64)
        with store.transaction(root) as state:
            host.clear_processes(state, 1)
        writes += 2
    results.put(("ctl", writes))


def _raw_reader(root, stop, results):
    path = os.path.join(root, store.STATE_FILE)
    reads = bad = 0
    while not stop.is_set():
        with open(path, "rb") as handle:
            data = handle.read()
        try:
            json.loads(data)
        except ValueError:
            bad += 1
        reads += 1
    results.put(("reader", reads, bad))


def _assert_consistent(state):
    model = models.get("h100-80gb-hbm3")
    used = set()
    for inst in state["gpus"][0]["gpu_instances"]:
        span = set(range(inst["start"], inst["start"] + inst["size"]))
        assert not used & span, "overlapping GPU instances"
        used |= span
        prof = models.gi_profile_by_id(model, inst["profile_id"])
        assert inst["start"] in prof["placements"]["starts"]
    assert sum(models.gi_profile_by_id(model, g["profile_id"])["sliceCount"] for g in state["gpus"][0]["gpu_instances"]) <= 7


def test_concurrent_creators_readers_and_cli_writers(nvml, simhost):
    simhost.init("h100-80gb-hbm3:2")
    simhost.ok("reboot")
    with store.transaction(str(simhost.root)) as state:
        state["gpus"][0]["mig"] = {"current": 1, "pending": 1}
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    stop = ctx.Event()
    root = str(simhost.root)
    reader = ctx.Process(target=_raw_reader, args=(root, stop, results))
    reader.start()
    procs = [ctx.Process(target=_creator, args=(root, seed, results)) for seed in range(WORKERS)]
    procs.append(ctx.Process(target=_ctl_writer, args=(root, results)))
    started = time.monotonic()
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    stop.set()
    reader.join(30)
    assert reader.exitcode == 0
    outcomes = [results.get(timeout=10) for _proc in range(len(procs) + 1)]
    assert time.monotonic() - started < 120

    creators = [o for o in outcomes if isinstance(o[0], int)]
    ctl = [o for o in outcomes if o[0] == "ctl"]
    raw = [o for o in outcomes if o[0] == "reader"]
    assert len(creators) == WORKERS and ctl == [("ctl", 2 * ROUNDS)]
    assert raw[0][1] > 0 and raw[0][2] == 0, "a reader saw a half-written state file"

    state = simhost.state()
    created = sum(outcome[0] for outcome in creators)
    destroyed = sum(outcome[1] for outcome in creators)
    assert created > 0 and destroyed > 0
    assert len(state["gpus"][0]["gpu_instances"]) == created - destroyed, "an update was lost"
    assert state["gpus"][1]["processes"] == []
    _assert_consistent(state)


def _set_mig_pending(root):
    os.environ["GPUSIM_ROOT"] = root
    sim_pynvml.nvmlInit()
    sim_pynvml.nvmlDeviceSetMigMode(sim_pynvml.nvmlDeviceGetHandleByIndex(0), 1)


def test_readers_see_changes_made_by_other_processes(nvml, simhost):
    simhost.init("h100-80gb-hbm3")
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlDeviceGetMigMode(handle) == [0, 0]
    # an open NVML session holds the GPU (as on a real host): this reader closes its own before another process
    # changes the MIG mode and resets; its cached state must still follow those changes
    nvml.nvmlShutdown()
    child = multiprocessing.get_context("fork").Process(target=_set_mig_pending, args=(str(simhost.root),))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    nvml.nvmlInit()
    assert nvml.nvmlDeviceGetMigMode(handle) == [0, 1]
    nvml.nvmlShutdown()
    assert simhost.run("reset", "--gpu", "0").returncode == 0
    nvml.nvmlInit()
    assert nvml.nvmlDeviceGetMigMode(handle) == [1, 1]


def test_every_write_changes_the_cache_key_even_within_one_clock_tick(simhost):
    # same size, written back to back: only the forced mtime step tells the versions apart
    simhost.init("h100-80gb-hbm3")
    path = os.path.join(str(simhost.root), store.STATE_FILE)
    keys = set()
    for i in range(20):
        with store.transaction(str(simhost.root)) as state:
            state["gpus"][0]["persistence"] = i % 2
        st = os.stat(path)
        keys.add((st.st_ino, st.st_mtime_ns, st.st_size))
    assert len(keys) == 20
