"""Weight-sync backends, by name (crrl.weight_sync; the config validates the name).

- `object_store`: the learner returns its state dict as a task result (one copy in Ray's object store);
  rollout workers `ray.get` it only when their version is older. Pull-based, fully asynchronous.
- `collective`: after every learner step the learner (rank 0) broadcasts one flat fp32 buffer of the weights
  to every rollout worker (ranks 1..N) over a process group of their own, created from a TCPStore that the
  learner hosts -- separate from DeepSpeed's default process group. Push-based: a broadcast waits until every
  worker has finished the rollout it is running. A worker that dies is replaced and the group is formed again
  under a new generation number; the old group is shut down first.

Backend: NCCL when every member holds a GPU of its own, else Gloo. Members publish their GPU (its UUID) in the
store when they join, so all of them pick the same backend: NCCL refuses two ranks on one GPU ("Duplicate GPU
detected"), which is what Ray's fractional GPUs produce when a learner and a rollout worker share a GPU, and
then Gloo carries the (small: 3 d x d matrices) weights over the host instead. Either way the group gets
`crrl.sync_timeout_s`: a join, and every broadcast, fail with an exception after that long without a peer
(NCCL in blocking-wait mode, so its watchdog does not kill the process instead).
"""
from __future__ import annotations

import logging
import os
import time
from datetime import timedelta

import numpy as np

log = logging.getLogger(__name__)


def fetch(weights_box: list, version: int, current_version: int, load) -> float:
    """Load the weights in `weights_box` ([ObjectRef], boxed so Ray does not resolve it eagerly) if newer.

    Returns the seconds spent fetching and loading (0 when already current)."""
    import ray

    if version <= current_version or not weights_box:
        return 0.0
    t0 = time.perf_counter()
    state = ray.get(weights_box[0])
    load({k: np.asarray(v) for k, v in state.items()}, version)
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------------------- collective


def host_store(world: int, timeout_s: float):
    """The rendezvous store, hosted by rank 0 on a free port: (store, host, port)."""
    import ray
    import torch.distributed as dist

    host = ray.util.get_node_ip_address()
    store = dist.TCPStore(host, 0, world, True, timedelta(seconds=timeout_s), wait_for_workers=False)
    return store, host, store.port


def backend_for(devices: list[str]) -> str:
    """`nccl` when every member has a GPU of its own (`devices`: a GPU UUID, or "cpu"), else `gloo`."""
    if "cpu" in devices or len(set(devices)) < len(devices):
        return "gloo"
    return "nccl"


def process_group(backend: str, store, rank: int, world: int, timeout_s: float):
    """A process group of `backend` whose every operation gives up after `timeout_s`."""
    import torch.distributed as dist

    timeout = timedelta(seconds=timeout_s)
    if backend == "nccl":
        # wait() then blocks and raises on timeout; without it NCCL's watchdog aborts the whole process
        os.environ["TORCH_NCCL_BLOCKING_WAIT"] = "1"
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, world, opts)
    return dist.ProcessGroupGloo(store, rank, world, timeout)


def local_device(use_gpu: bool) -> str:
    """This member's GPU UUID when it may use one (the device rule: one Ray gave it), else "cpu"."""
    from reaemb_ray.device import placement

    where = placement()
    if not (use_gpu and where.is_cuda):
        return "cpu"
    import torch

    return str(torch.cuda.get_device_properties(where.device).uuid)


class WeightGroup:
    """One member of a broadcast group. Construction blocks until all `world` members have joined (or
    `timeout_s` passes: then it raises, naming the members that did not come)."""

    def __init__(self, rank: int, world: int, generation: int, timeout_s: float, store=None, host: str = "",
                 port: int = 0, use_gpu: bool = False, device: str | None = None):
        import torch
        import torch.distributed as dist

        if store is None:
            store = dist.TCPStore(host, port, world, False, timedelta(seconds=timeout_s))
        store = dist.PrefixStore(f"reaemb-weights-{generation}", store)
        self.rank, self.world, self.generation = rank, world, generation
        store.set(f"device/{rank}", device or local_device(use_gpu))
        keys = [f"device/{r}" for r in range(world)]
        try:
            store.wait(keys, timedelta(seconds=timeout_s))
        except Exception as e:  # the store's own timeout error
            missing = [r for r in range(world) if not store.check([f"device/{r}"])]
            raise TimeoutError(f"weight group {generation}: ranks {missing} did not join within crrl.sync_timeout_s="
                               f"{timeout_s} s ({type(e).__name__})") from None
        devices = [store.get(k).decode() for k in keys]
        self.backend = backend_for(devices)
        if use_gpu and self.backend == "gloo" and rank == 0:
            log.warning("weight group %d: members share a GPU or lack one (%s); broadcasting over gloo (host memory) "
                        "instead of NCCL", generation, devices)
        self.device = torch.device("cuda", 0) if self.backend == "nccl" else torch.device("cpu")
        self.pg = process_group(self.backend, store, rank, world, timeout_s)

    def close(self) -> None:
        """Tear the group down before a new generation replaces it. abort, not shutdown: a group is replaced
        because a member died, and an orderly NCCL shutdown can wait forever on the dead peer."""
        for how in ("abort", "shutdown"):
            try:
                getattr(self.pg, how)()
                return
            except Exception as e:  # not supported by this backend, or the dead peer: it is dropped anyway
                log.info("weight group %d: %s: %s", self.generation, how, e)

    def broadcast(self, state: dict | None, like: dict) -> dict:
        """Rank 0 sends `state`; every rank returns it as numpy arrays shaped like `like` (same keys)."""
        import torch

        keys = sorted(like)
        sizes = [int(np.prod(like[k].shape)) for k in keys]
        header = torch.tensor([sum(sizes)], dtype=torch.int64, device=self.device)
        if self.rank == 0:
            flat = torch.cat([torch.as_tensor(np.asarray(state[k]), dtype=torch.float32).flatten() for k in keys])
            flat = flat.to(self.device)
        else:
            flat = torch.zeros(sum(sizes), dtype=torch.float32, device=self.device)
        self.pg.broadcast(header, 0).wait()
        if int(header.item()) != sum(sizes):
            raise ValueError(f"weight broadcast: rank 0 sends {int(header.item())} values but rank {self.rank}'s "
                             f"attention module has {sum(sizes)}; learner and rollout workers load different models")
        self.pg.broadcast(flat, 0).wait()
        parts = torch.split(flat.cpu(), sizes)
        return {k: p.view(tuple(like[k].shape)).numpy() for k, p in zip(keys, parts)}


class WeightGroupHost:
    """Learner-actor side of `collective` weight sync: rank 0 of the broadcast group hosts its store and pushes
    `self.core.state_dict()`. Mixed into the CRRL and the reasoning learner actors."""

    group: WeightGroup | None = None

    def open_weight_group(self, world: int, generation: int, timeout_s: float) -> tuple[str, int]:
        if self.group is not None:
            self.group.close()  # the previous generation (a member died)
            self.group = None
        self.store, host, port = host_store(world, timeout_s)
        self.group_args = (world, generation, timeout_s)
        return host, port

    def join_weight_group(self, use_gpu: bool = False) -> None:
        world, generation, timeout_s = self.group_args
        self.group = WeightGroup(0, world, generation, timeout_s, store=self.store, use_gpu=use_gpu)

    def broadcast_weights(self) -> float:
        t0 = time.perf_counter()
        state = self.core.state_dict()
        self.group.broadcast(state, state)
        return time.perf_counter() - t0
