"""Rollout engine throughput: prefix-reuse torch vs naive two-pass vs vLLM, on the same items and noise.

Each engine runs in its own Ray task (a fresh process, as a rollout worker would), one after another, so
they do not compete for the cores and none inherits another's warm caches.
"""
from __future__ import annotations

import time

import numpy as np
import ray


@ray.remote
def engine_throughput(base_dir: str, texts: dict, engine: str, item_ids: list[int], group_size: int,
                      sigma: float, item_noun: str, max_length: int, dtype: str, batch: int) -> dict:
    import torch

    from reaemb_ray.bench.compute import count_params, forward_flops
    from reaemb_ray.rl.rollout import Rollout

    t_load = time.perf_counter()
    core = Rollout(base_dir, texts, engine, group_size, sigma, True, item_noun, max_length, dtype)
    load_s = time.perf_counter() - t_load
    n_params = count_params(core.lm)
    ids = np.asarray(item_ids, dtype=np.int64)
    core.rollout(ids[:batch], {}, seed=0)  # warm-up (allocators, vLLM graph capture, caches)
    tokens = 0
    t0 = time.perf_counter()
    for i in range(0, len(ids), batch):
        chunk = ids[i:i + batch]
        core.rollout(chunk, {}, seed=i)
        mask = core.tokenize(chunk)["attention_mask"]
        prefix = int(mask[:, :-2].sum())
        # work actually needed: the prefix once per item, then (thought, EOS) once per sample
        tokens += prefix + 2 * group_size * len(chunk)
    sec = time.perf_counter() - t0
    if hasattr(core.engine, "close"):
        core.engine.close()
    n = len(ids) * group_size
    return {"engine": engine, "embeddings": n, "seconds": sec, "embeddings_per_s": n / sec,
            "load_seconds": load_s, "threads": torch.get_num_threads(),
            "useful_gflops": forward_flops(n_params, tokens) / sec / 1e9}


def compare_engines(base_dir: str, texts: dict, item_ids: list[int], engines: list[str], group_size: int,
                    sigma: float, item_noun: str, max_length: int, dtype: str, batch: int, num_cpus: float) -> dict:
    out = {}
    for e in engines:
        out[e] = ray.get(engine_throughput.options(num_cpus=num_cpus).remote(
            base_dir, texts, e, item_ids, group_size, sigma, item_noun, max_length, dtype, batch))
    if "naive" in out:
        for e in out:
            out[e]["vs_naive"] = out[e]["embeddings_per_s"] / out["naive"]["embeddings_per_s"]
    return out
