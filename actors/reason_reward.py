"""ReasonRewardWorker: scores a rollout's replies with the reward registry of `reaemb_ray.reasoning.rewards`."""
from __future__ import annotations

import time

import numpy as np
import ray

from reaemb_ray import metrics
from reaemb_ray.reasoning.rewards import RewardContext, score


@ray.remote
class ReasonRewardWorker:
    def __init__(self, worker_id: int, weights: dict):
        self.weights = weights
        self.tags = {"worker": str(worker_id), "reward": "reasoning"}

    def score(self, rollout: dict, truths, ctx: RewardContext) -> dict:
        t0 = time.perf_counter()
        s = score(rollout["texts"], np.asarray(truths, dtype=np.float64), ctx, self.weights)
        metrics.get("reaemb_reward_scores_total").inc(s.total.size, tags=self.tags)
        metrics.get("reaemb_reward_batch_seconds").observe(time.perf_counter() - t0, tags=self.tags)
        return {"total": s.total, "parts": s.parts, "valid_share": s.valid_share,
                "answered_share": s.answered_share, "accuracy_base": s.accuracy_base, "abs_error": s.abs_error}
