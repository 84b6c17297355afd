"""Where SRS training runs: in this process (srs.task_resources unset, the laptop default), or as Ray tasks with
srs.task_resources (a cluster: off the head node, on a GPU when num_gpus > 0; runs go out together, so a
cluster trains them in parallel). Either way each run computes on the device rule's device: the GPU Ray gave
the task, else the CPU. A thin shell around `trainer.fit_and_test`, which stays Ray-free.
"""
from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

from reaemb_ray.srs.trainer import fit_and_test


def _fit_here(data, **kwargs):
    """One run where this process is: ((model on the CPU, TrainResult, full ranks, sampled ranks), seconds)."""
    from reaemb_ray.device import placement

    t0 = time.perf_counter()
    model, result, full, samp = fit_and_test(data, **kwargs, device=placement().device)
    return (model.cpu(), result, full, samp), time.perf_counter() - t0


def fit_runs(cfg, data, runs: dict[str, dict]) -> Iterator[tuple[str, tuple, float]]:
    """Train every run (name -> `fit_and_test` keyword arguments besides `data`); yields (name, result, seconds)
    as each finishes, so a caller can save it at once (nothing computed is lost when a later run fails)."""
    res = cfg.srs.task_resources
    if res is None:
        for name, kwargs in runs.items():
            yield name, *_fit_here(data, **kwargs)
        return
    import ray

    from reaemb_ray.runtime import gpu_options, init_ray

    init_ray(cfg.ray)
    task = ray.remote(_fit_here).options(num_cpus=res.num_cpus, **gpu_options(res.num_gpus, cfg.ray), max_retries=1)
    shared = {id(data): ray.put(data)}  # each table goes to the object store once, not once per run

    def ref(v):
        if isinstance(v, np.ndarray) and id(v) not in shared:
            shared[id(v)] = ray.put(v)
        return shared[id(v)] if isinstance(v, np.ndarray) else v

    pending = {task.remote(shared[id(data)], **{k: ref(v) for k, v in kwargs.items()} | {"progress": False}): name
               for name, kwargs in runs.items()}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        yield pending.pop(done[0]), *ray.get(done[0])


def fit_one(cfg, data, **kwargs) -> tuple:
    """`fit_runs` for a single run: (model, TrainResult, full ranks, sampled ranks)."""
    ((_, out, _),) = fit_runs(cfg, data, {"run": kwargs})
    return out
