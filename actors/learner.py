"""Learner actor: a thin Ray shell over `reaemb_ray.rl.learner.Learner` (DeepSpeed over the attention module).

It fetches the policy folder from the output store into its node's cache, and writes checkpoints to the
store (through a node-local temporary folder), so it needs no disk shared with the driver."""
from __future__ import annotations

import os
import tempfile
import time

import ray

from actors.weight_sync import WeightGroupHost
from reaemb_ray import metrics
from reaemb_ray.rl.learner import Learner


@ray.remote
class LearnerActor(WeightGroupHost):  # collective weight sync: rank 0 (weight_sync.WeightGroupHost)
    def __init__(self, store, base_rel: str, crrl, total_steps: int, dtype: str = "float32"):
        self.core = Learner(str(store.fetch(base_rel)), crrl, total_steps, dtype)

    @ray.method(num_returns=2)
    def step(self, batch: dict, rewards):
        """One learner step on a rollout batch -> (metrics, new weights); weights stay in the object store."""
        out = self.core.step(batch, rewards)
        t0 = time.perf_counter()
        weights = self.core.state_dict()
        out["publish_seconds"] = time.perf_counter() - t0
        metrics.get("reaemb_learner_samples_total").inc(out["samples"])
        metrics.get("reaemb_learner_step_seconds").observe(out["seconds"])
        metrics.get("reaemb_weight_version").set(out["version"])
        return out, weights

    def weights(self) -> dict:
        return self.core.state_dict()

    def version(self) -> int:
        return self.core.version

    def save(self, store, rel: str, client_state: dict) -> None:
        with tempfile.TemporaryDirectory(prefix="reaemb-ckpt-") as tmp:
            self.core.save(tmp, client_state)
            store.put(tmp, rel)

    def load(self, store, rel: str) -> dict:
        return self.core.load(str(store.fetch(rel)))

    def pid(self) -> int:
        return os.getpid()
