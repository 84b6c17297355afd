"""Learner actor: a thin Ray shell over `reaemb_ray.rl.learner.Learner` (DeepSpeed over the attention module).

It fetches the policy folder from the output store into its node's cache, and writes checkpoints to the
store (through a node-local temporary folder), so it needs no disk shared with the driver."""
from __future__ import annotations

import tempfile
import time

import ray

from actors.weight_sync import WeightGroup, host_store
from reaemb_ray import metrics
from reaemb_ray.rl.learner import Learner


@ray.remote
class LearnerActor:
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

    # crrl.weight_sync=collective: this actor is rank 0 of the broadcast group and hosts its store
    def open_weight_group(self, world: int, generation: int, timeout_s: float) -> tuple[str, int]:
        if getattr(self, "group", None) is not None:
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

    def version(self) -> int:
        return self.core.version

    def save(self, store, rel: str, client_state: dict) -> None:
        with tempfile.TemporaryDirectory(prefix="reaemb-ckpt-") as tmp:
            self.core.save(tmp, client_state)
            store.put(tmp, rel)

    def load(self, store, rel: str) -> dict:
        return self.core.load(str(store.fetch(rel)))
