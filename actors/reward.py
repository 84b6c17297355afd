"""RewardWorker: holds the reward candidates (co-occurrence and/or SRS) and scores rollout batches."""
from __future__ import annotations

import os
import time

import numpy as np
import ray

from reaemb_ray import metrics
from reaemb_ray.rl.rewards import batch_center, combine, score_and_reward


@ray.remote
class RewardWorker:
    def __init__(self, worker_id: int, candidates: dict, reward: str, reward_weights: dict, scoring: str = "dot",
                 form: str = "rank", tau: float = 0.1):
        self.cands, self.reward, self.weights = candidates, reward, reward_weights
        self.scoring = dict(scoring=scoring, form=form, tau=tau)
        self.tags = {"worker": str(worker_id), "reward": reward}

    def score(self, rollout: dict) -> np.ndarray:
        """Rewards (M, G) for a rollout batch (noisy embeddings vs noise-free candidates)."""
        t0 = time.perf_counter()
        r = self._score(rollout["item_ids"], rollout["emb"], rollout["cand_emb"])
        metrics.get("reaemb_reward_scores_total").inc(r.size, tags=self.tags)
        metrics.get("reaemb_reward_batch_seconds").observe(time.perf_counter() - t0, tags=self.tags)
        return r

    def score_noise_free(self, item_ids, item_emb, cand_emb: dict) -> np.ndarray:
        """Rewards (M,) of noise-free embeddings (the fixed evaluation set)."""
        return self._score(item_ids, np.asarray(item_emb)[:, None], cand_emb)[:, 0]

    def _score(self, item_ids, emb, cand_emb) -> np.ndarray:
        parts, center = {}, batch_center(cand_emb)
        for source, c_emb in cand_emb.items():
            _, w = self.cands[source].lookup(item_ids)
            parts[source] = score_and_reward(emb, c_emb, w, center=center, **self.scoring)
        return combine(parts, self.reward, self.weights)

    def pid(self) -> int:
        return os.getpid()
