"""RolloutWorker: a thin Ray shell over `reaemb_ray.rl.rollout.Rollout` (engine: torch | naive | vllm).

It fetches the policy folder from the output store into its node's cache (once per node and folder)."""
from __future__ import annotations

import os
import time

import ray

from actors.weight_sync import WeightGroup, fetch
from reaemb_ray import metrics
from reaemb_ray.rl.rollout import Rollout


@ray.remote
class RolloutWorker:
    def __init__(self, worker_id: int, store, base_rel: str, texts: dict, engine: str, group_size: int,
                 sigma: float, anchor: bool, item_noun: str, max_length: int, dtype: str = "float32",
                 vllm_gpu_memory: float = 0.9, sigma_relative: bool = False):
        import torch

        torch.set_num_threads(max(1, int(float(os.environ.get("OMP_NUM_THREADS", "1")))))
        self.tags = {"worker": str(worker_id), "engine": engine}
        self.core = Rollout(str(store.fetch(base_rel)), texts, engine, group_size, sigma, anchor, item_noun,
                            max_length, dtype, vllm_gpu_memory=vllm_gpu_memory, sigma_relative=sigma_relative)

    def _sync(self, weights_box: list, version: int) -> float:
        """Load newer weights from the object store (if any); the seconds count as weight sync."""
        seconds = fetch(weights_box, version, self.core.version, self.core.set_weights)
        if seconds:
            metrics.get("reaemb_weight_sync_seconds").observe(seconds, tags={"backend": "object_store"})
        return seconds

    def rollout(self, item_ids, cand_ids: dict, seed: int, weights_box: list, version: int) -> dict:
        sync = self._sync(weights_box, version)
        out = self.core.rollout(item_ids, cand_ids, seed)
        out["sync_seconds"] = sync
        metrics.get("reaemb_rollout_embeddings_total").inc(out["emb"].shape[0] * out["emb"].shape[1], tags=self.tags)
        metrics.get("reaemb_rollout_batch_seconds").observe(out["seconds"], tags=self.tags)
        return out

    def noise_free(self, item_ids, weights_box: list, version: int):
        self._sync(weights_box, version)
        return self.core.noise_free(item_ids)

    # crrl.weight_sync=collective: ranks 1..N of the learner's broadcast group
    def join_weight_group(self, host: str, port: int, rank: int, world: int, generation: int, timeout_s: float,
                          use_gpu: bool = False) -> None:
        if getattr(self, "group", None) is not None:
            self.group.close()  # the previous generation (a member died)
        self.group = WeightGroup(rank, world, generation, timeout_s, host=host, port=port, use_gpu=use_gpu)

    def receive_weights(self, version: int) -> float:
        t0 = time.perf_counter()
        state = self.group.broadcast(None, self.core.attn.state_dict())
        self.core.set_weights(state, version)
        seconds = time.perf_counter() - t0
        metrics.get("reaemb_weight_sync_seconds").observe(seconds, tags={"backend": "collective"})
        return seconds

    def weights_version(self) -> int:
        return self.core.version

    def pid(self) -> int:
        return os.getpid()
