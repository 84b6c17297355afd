"""The collective weight group: crrl.sync_timeout_s bounds a join and a broadcast (real gloo groups, ranks in
threads), the NCCL path gets the same timeout through its options, and two ranks on one GPU fall back to gloo."""
import threading
import time
from datetime import timedelta

import numpy as np
import pytest
import torch.distributed as dist

from actors import weight_sync
from actors.weight_sync import WeightGroup, backend_for, process_group

LIKE = {"w": np.zeros((3, 4), np.float32), "b": np.zeros(4, np.float32)}


def _host(world, timeout_s):
    store = dist.TCPStore("127.0.0.1", 0, world, True, timedelta(seconds=timeout_s), wait_for_workers=False)
    return store, store.port


def test_backend_choice():
    assert backend_for(["GPU-a", "GPU-b", "GPU-c"]) == "nccl"
    assert backend_for(["GPU-a", "GPU-a"]) == "gloo"  # two ranks on one GPU: NCCL would refuse them
    assert backend_for(["GPU-a", "cpu"]) == "gloo"


def test_join_without_the_peer_fails_after_the_timeout():
    store, _ = _host(2, 2.0)
    t0 = time.perf_counter()
    with pytest.raises(TimeoutError, match=r"ranks \[1\] did not join within crrl.sync_timeout_s=2.0"):
        WeightGroup(0, 2, generation=1, timeout_s=2.0, store=store)
    assert 1.5 < time.perf_counter() - t0 < 30


def test_broadcast_then_a_silent_peer_fails_after_the_timeout():
    store, port = _host(2, 3.0)
    peer: dict = {}

    def rank1():
        g = WeightGroup(1, 2, generation=1, timeout_s=3.0, host="127.0.0.1", port=port)
        peer["got"] = g.broadcast(None, LIKE)
        peer["group"] = g  # then it stays silent: no second broadcast

    th = threading.Thread(target=rank1)
    th.start()
    g0 = WeightGroup(0, 2, generation=1, timeout_s=3.0, store=store)
    assert g0.backend == "gloo"
    state = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(4, np.float32)}
    g0.broadcast(state, state)
    th.join(30)
    np.testing.assert_array_equal(peer["got"]["w"], state["w"])
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError):
        g0.broadcast(state, state)  # rank 1 never takes part
    assert 2.0 < time.perf_counter() - t0 < 60
    g0.close()
    peer["group"].close()


class _RecordingNCCL:
    """Stands in for dist.ProcessGroupNCCL (absent from CPU builds of torch): records what it is built with."""

    class Options:
        _timeout = None

    built: list = []

    def __init__(self, store, rank, world, opts):
        _RecordingNCCL.built.append((rank, world, opts))


def test_nccl_group_gets_the_timeout_option(monkeypatch):
    monkeypatch.setattr(dist, "ProcessGroupNCCL", _RecordingNCCL, raising=False)
    monkeypatch.delenv("TORCH_NCCL_BLOCKING_WAIT", raising=False)
    _RecordingNCCL.built.clear()
    process_group("nccl", dist.HashStore(), 0, 2, 7.5)
    (rank, world, opts), = _RecordingNCCL.built
    assert (rank, world, opts._timeout) == (0, 2, timedelta(seconds=7.5))
    import os
    assert os.environ["TORCH_NCCL_BLOCKING_WAIT"] == "1"  # a timeout raises instead of aborting the process


def test_members_pick_nccl_only_with_a_gpu_each(monkeypatch):
    monkeypatch.setattr(dist, "ProcessGroupNCCL", _RecordingNCCL, raising=False)
    gloo = []
    monkeypatch.setattr(dist, "ProcessGroupGloo", lambda store, rank, world, timeout: gloo.append(timeout))
    _RecordingNCCL.built.clear()
    store = dist.HashStore()
    store.set("reaemb-weights-1/device/1", "GPU-b")  # as rank 1 would have published it
    g = WeightGroup(0, 2, generation=1, timeout_s=5.0, store=store, use_gpu=True, device="GPU-a")
    assert g.backend == "nccl" and _RecordingNCCL.built[0][2]._timeout == timedelta(seconds=5.0)
    store.set("reaemb-weights-2/device/1", "GPU-a")  # the learner and a rollout worker on one GPU
    g = WeightGroup(0, 2, generation=2, timeout_s=5.0, store=store, use_gpu=True, device="GPU-a")
    assert g.backend == "gloo" and len(_RecordingNCCL.built) == 1 and gloo == [timedelta(seconds=5.0)]
    assert weight_sync.local_device(use_gpu=True) == "cpu"  # this machine: the device rule gives no GPU
