"""Rollout engine throughput: noisy-thought embeddings per second for one batch size and group size."""
from __future__ import annotations

import time

import torch

from reaemb_ray.rl.rollout import Rollout


def engine_throughput(base_dir: str, texts: dict, engine: str, item_ids, group_size: int = 8, repeats: int = 2,
                      max_length: int = 256) -> dict:
    """Embeddings/s of the rollout's item part (pass 1 + G thoughts), best of `repeats` after one warm-up."""
    ro = Rollout(base_dir, texts, engine, group_size, 0.1, True, "item", max_length)
    ro.rollout(item_ids[:2], {}, seed=0)  # warm-up
    best = float("inf")
    for r in range(repeats):
        out = ro.rollout(item_ids, {}, seed=r)
        best = min(best, out["item_seconds"])
    n = len(item_ids) * group_size
    if hasattr(ro.engine, "close"):
        ro.engine.close()
    return {"engine": engine, "items": len(item_ids), "group_size": group_size, "seconds": best,
            "embeddings_per_s": n / best, "threads": torch.get_num_threads()}
