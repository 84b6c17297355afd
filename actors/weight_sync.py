"""Weight-sync backends, by name (crrl.weight_sync).

- `object_store`: the learner returns its state dict as a task result (one copy in Ray's object store);
  rollout workers `ray.get` it only when their version is older. Works everywhere.
- `collective`: NCCL broadcast from the learner to rollout workers with ray.util.collective. It needs GPUs
  and an NCCL-capable cluster; on CPU it is refused with a clear message (gloo through ray.util.collective
  requires every rollout worker to join a blocking broadcast, which stalls the asynchronous rollouts).
"""
from __future__ import annotations

import time

import numpy as np

BACKENDS = ("object_store", "collective")


def check_backend(name: str, gpus_per_rollout: float) -> None:
    if name not in BACKENDS:
        raise ValueError(f"unknown crrl.weight_sync {name!r}; use one of {BACKENDS}")
    if name == "collective" and gpus_per_rollout <= 0:
        raise ValueError("crrl.weight_sync=collective broadcasts with NCCL and needs GPU rollout workers "
                         "(crrl.rollout_resources.num_gpus > 0) on a GPU cluster; use crrl.weight_sync=object_store "
                         "on CPU machines")


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
