"""ReasonRolloutWorker: a thin Ray shell over `reaemb_ray.reasoning.rollout.ReasonRollout` (engine: vllm | torch)."""
from __future__ import annotations

import os
import time

import numpy as np
import ray

from actors.weight_sync import WeightGroup, fetch
from reaemb_ray import metrics
from reaemb_ray.reasoning.generation import Sampling
from reaemb_ray.reasoning.rollout import ReasonRollout

FOLD_STRIDE = 1_000_000  # (fold, version) as one increasing number for the weight-sync helpers


def weight_key(fold: int, version: int) -> int:
    return fold * FOLD_STRIDE + version


@ray.remote
class ReasonRolloutWorker:
    def __init__(self, worker_id: int, backbone: str, engine: str, lora, sampling: dict, max_model_len: int,
                 dtype: str = "float32", weight_format: str = "lora", seed: int = 0, reply_prefix: str = "",
                 cache_dir: str = "~/.cache/reaemb_ray"):
        """`backbone`: a name in BACKBONES (built into this node's `cache_dir`), an HF model name or a path."""
        import torch

        from reaemb_ray.model.backbone import resolve_backbone_name

        torch.set_num_threads(max(1, int(float(os.environ.get("OMP_NUM_THREADS", "1")))))
        self.tags = {"worker": str(worker_id), "engine": engine}
        self.core = ReasonRollout(resolve_backbone_name(backbone, cache_dir), engine, lora, Sampling(**sampling),
                                  max_model_len, dtype, weight_format, seed, reply_prefix)

    def _load(self, state: dict, key: int) -> None:
        self.core.set_weights(state, key // FOLD_STRIDE, key % FOLD_STRIDE)

    def generate(self, prompts: list[str], n: int, seed: int, weights_box: list, key: int,
                 max_new_tokens: int | None = None) -> dict:
        """n replies per prompt, after fetching the weights `key` when newer (object_store backend)."""
        sync = fetch(weights_box, key, weight_key(*self.core.key), self._load)
        out = self.core.generate(prompts, n, seed, max_new_tokens)
        out["sync_seconds"] = sync
        metrics.get("reaemb_reason_generated_tokens_total").inc(out["tokens"], tags=self.tags)
        metrics.get("reaemb_reason_rollout_seconds").observe(out["seconds"], tags=self.tags)
        return out

    # reason.weight_sync=collective: ranks 1..N of the learner's broadcast group
    def join_weight_group(self, host: str, port: int, rank: int, world: int, generation: int, timeout_s: float,
                          use_gpu: bool = False) -> None:
        self.group = WeightGroup(rank, world, generation, timeout_s, host=host, port=port, use_gpu=use_gpu)

    def receive_weights(self, shapes: dict, key: int) -> float:
        t0 = time.perf_counter()
        like = {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}  # shapes only, no memory
        self._load(self.group.broadcast(None, like), key)
        return time.perf_counter() - t0

    def weights_key(self) -> int:
        return weight_key(*self.core.key)

    def pid(self) -> int:
        return os.getpid()
