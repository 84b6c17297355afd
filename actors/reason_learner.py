"""ReasonLearnerActor: a thin Ray shell over `reaemb_ray.reasoning.learner.GRPOLearner` (DeepSpeed over LoRA).

It resolves the backbone on its own node and writes checkpoints to the output store (through a node-local
temporary folder), so it needs no disk shared with the driver."""
from __future__ import annotations

import tempfile
import time

import ray

from actors.weight_sync import WeightGroupHost
from reaemb_ray import metrics
from reaemb_ray.reasoning.learner import GRPOLearner


@ray.remote
class ReasonLearnerActor(WeightGroupHost):  # reason.weight_sync=collective: rank 0
    def __init__(self, backbone: str, rcfg, total_steps: int, cache_dir: str = "~/.cache/reaemb_ray"):
        from reaemb_ray.model.backbone import resolve_backbone_name

        self.core = GRPOLearner(resolve_backbone_name(backbone, cache_dir), rcfg, total_steps, rcfg.learner_dtype)

    @ray.method(num_returns=2)
    def step(self, batch: dict, scores: dict):
        """One GRPO step -> (metrics, new LoRA weights); the weights stay in the object store."""
        out = self.core.step(batch, scores["total"])
        t0 = time.perf_counter()
        weights = self.core.state_dict()
        out["publish_seconds"] = time.perf_counter() - t0
        metrics.get("reaemb_learner_samples_total").inc(out["samples"])
        metrics.get("reaemb_learner_step_seconds").observe(out["seconds"])
        return out, weights

    def weights(self) -> dict:
        return self.core.state_dict()

    def shapes(self) -> dict:
        return {k: v.shape for k, v in self.core.state_dict().items()}

    def version(self) -> int:
        return self.core.version

    def save(self, store, rel: str, client_state: dict) -> None:
        with tempfile.TemporaryDirectory(prefix="reaemb-ckpt-") as tmp:
            self.core.save(tmp, client_state)
            store.put(tmp, rel)

    def load(self, store, rel: str) -> dict:
        return self.core.load(str(store.fetch(rel)))
