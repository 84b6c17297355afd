"""Weight-sync backends, by name (crrl.weight_sync; the config validates the name).

- `object_store`: the learner returns its state dict as a task result (one copy in Ray's object store);
  rollout workers `ray.get` it only when their version is older. Pull-based, fully asynchronous.
- `collective`: after every learner step the learner (rank 0) broadcasts one flat fp32 buffer of the weights
  to every rollout worker (ranks 1..N) over a process group of their own (Gloo on CPU, NCCL when the actors
  hold GPUs), created from a TCPStore that the learner hosts -- separate from DeepSpeed's default process
  group. Push-based: a broadcast waits until every worker has finished the rollout it is running. A worker
  that dies is replaced and the group is formed again under a new generation number.
"""
from __future__ import annotations

import time
from datetime import timedelta

import numpy as np

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


class WeightGroup:
    """One member of a broadcast group. Construction blocks until all `world` members have joined."""

    def __init__(self, rank: int, world: int, generation: int, timeout_s: float, store=None, host: str = "",
                 port: int = 0, use_gpu: bool = False):
        import torch
        import torch.distributed as dist

        if store is None:
            store = dist.TCPStore(host, port, world, False, timedelta(seconds=timeout_s))
        store = dist.PrefixStore(f"reaemb-weights-{generation}", store)
        self.rank, self.world, self.generation = rank, world, generation
        self.device = torch.device("cuda") if use_gpu else torch.device("cpu")
        if use_gpu:
            self.pg = dist.ProcessGroupNCCL(store, rank, world)
        else:
            self.pg = dist.ProcessGroupGloo(store, rank, world, timedelta(seconds=timeout_s))

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
