"""Collaborative rewards: how well an item's (noisy) embedding picks out its positives among its candidates.

Scores s_c between the item's embedding e (one per noisy sample) and each candidate's noise-free embedding x_c,
by `crrl.scoring`:
- `dot` (published): s_c = <e, x_c>. On un-centred LM embeddings this mostly ranks the candidates' norms: the
  same ordering for every query item.
- `centered_cosine`: s_c = cos(e - m, x_c - m), m the catalogue mean of the noise-free embeddings (estimated
  by `batch_center`): the ordering depends on the query item.

Reward forms, by `crrl.reward_form`:
- `rank` (published): R = sum_j w_j / (1 + log2(rank_j + 2)) over the positives j, rank 0-based among the
  candidates, ties counted against the positive (a collapsed embedding earns the least).
- `infonce`: R = sum_j w_j log softmax(s / tau)_j over the C candidates: continuous, so a noisy sample that
  moves a positive's score at all changes its reward (a rank reward over a few easy negatives saturates and
  most groups get identical ranks).

w_j are the positives' normalised weights (0 for negatives); `score_and_reward` is the validating entry point of
the forms. Rewards by source, `crrl.reward`, in REWARDS (`get` validates): `cooccurrence`, `srs`, `mix`
(weighted sum, weights from crrl.reward_weights).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

SCORINGS = ("dot", "centered_cosine")


def scores(item_emb: np.ndarray, cand_emb: np.ndarray, scoring: str = "dot", center=None) -> np.ndarray:
    """item_emb (M, G, d), cand_emb (M, C, d) -> (M, G, C) float64 scores."""
    e, x = np.asarray(item_emb, dtype=np.float64), np.asarray(cand_emb, dtype=np.float64)
    if scoring == "centered_cosine":
        if center is None:
            raise ValueError("centered_cosine scoring needs the catalogue mean (center)")
        m = np.asarray(center, dtype=np.float64)
        e, x = e - m, x - m
        e = e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
        x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    elif scoring != "dot":
        raise KeyError(f"unknown crrl.scoring {scoring!r}; use one of {', '.join(SCORINGS)}")
    return np.einsum("mgd,mcd->mgc", e, x)


def rank_reward(s: np.ndarray, weights: np.ndarray, tau: float = 0.0) -> np.ndarray:
    """Scores (M, G, C), weights (M, C) -> (M, G): the published rank reward."""
    s_j = s[..., :, None]  # candidate j being ranked
    s_k = s[..., None, :]  # every candidate k
    others = ~np.eye(s.shape[-1], dtype=bool)
    # rank_j = #{k: s_k > s_j} + #{k != j: s_k == s_j}  (ties pessimistic)
    rank = ((s_k > s_j) | ((s_k == s_j) & others)).sum(-1)
    gain = 1.0 / (1.0 + np.log2(rank + 2.0))
    return (gain * weights[:, None, :]).sum(-1)


def infonce_reward(s: np.ndarray, weights: np.ndarray, tau: float = 0.1) -> np.ndarray:
    """Scores (M, G, C), weights (M, C) -> (M, G): sum_j w_j log softmax(s / tau)_j."""
    z = s / tau
    logp = z - (np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) + z.max(-1, keepdims=True))
    return (logp * weights[:, None, :]).sum(-1)


REWARD_FORMS = {"rank": rank_reward, "infonce": infonce_reward}


def score_and_reward(item_emb, cand_emb, weights, form: str = "rank", scoring: str = "dot", center=None,
                     tau: float = 0.1) -> np.ndarray:
    """Rewards (M, G) of item embeddings (M, G, d) against candidates (M, C, d) with weights (M, C)."""
    item_emb, cand_emb, weights = np.asarray(item_emb), np.asarray(cand_emb), np.asarray(weights, dtype=np.float64)
    if item_emb.ndim != 3 or cand_emb.ndim != 3 or item_emb.shape[0] != cand_emb.shape[0]:
        raise ValueError(f"expected item_emb (M, G, d) and cand_emb (M, C, d), got {item_emb.shape} and {cand_emb.shape}")
    if weights.shape != cand_emb.shape[:2]:
        raise ValueError(f"weights {weights.shape} must match the candidates {cand_emb.shape[:2]}")
    if form not in REWARD_FORMS:
        raise KeyError(f"unknown crrl.reward_form {form!r}; use one of {', '.join(REWARD_FORMS)}")
    if tau <= 0:
        raise ValueError(f"the reward temperature must be > 0, got {tau}")
    return REWARD_FORMS[form](scores(item_emb, cand_emb, scoring, center), weights, tau).astype(np.float32)


def batch_center(cand_emb: dict[str, np.ndarray]) -> np.ndarray:
    """The catalogue mean m for centred cosine, estimated by the mean noise-free embedding of every candidate in
    the batch (positives and uniform negatives of every source: M x C items of the current weight version)."""
    return np.concatenate([np.asarray(c, dtype=np.float64).reshape(-1, c.shape[-1]) for c in cand_emb.values()]).mean(0)


def group_spread_share(rewards: np.ndarray, tol: float = 1e-9) -> float:
    """Share of groups (rows of (M, G) rewards) whose samples do not all get the same reward: only those
    groups have a nonzero group-relative advantage, i.e. carry any learning signal."""
    r = np.asarray(rewards, dtype=np.float64)
    return float(((r.max(1) - r.min(1)) > tol).mean()) if len(r) else 0.0


@dataclass(frozen=True)
class Reward:
    """A reward by name: which candidate sources it reads, and how it combines their per-source rewards."""

    sources: Callable[[dict[str, float]], list[str]]
    combine: Callable[[dict[str, np.ndarray], dict[str, float]], np.ndarray]


def _mix(parts: dict[str, np.ndarray], reward_weights: dict[str, float]) -> np.ndarray:
    return sum(w * parts[s] for s, w in reward_weights.items() if w).astype(np.float32)


REWARDS = {
    "cooccurrence": Reward(lambda w: ["cooccurrence"], lambda parts, w: parts["cooccurrence"]),
    "srs": Reward(lambda w: ["srs"], lambda parts, w: parts["srs"]),
    "mix": Reward(lambda w: [s for s, x in w.items() if x], _mix),  # sum_s weight_s * R_s
}


def get(name: str) -> Reward:
    if name not in REWARDS:
        raise KeyError(f"unknown reward {name!r}; use one of {sorted(REWARDS)}")
    return REWARDS[name]


def sources_for(name: str, reward_weights: dict[str, float]) -> list[str]:
    """Which candidate sources the reward `name` reads."""
    return get(name).sources(reward_weights)


def combine(parts: dict[str, np.ndarray], name: str, reward_weights: dict[str, float]) -> np.ndarray:
    """The reward `name` from per-source rewards `parts` (source -> (M, G))."""
    reward = get(name)
    missing = [s for s in reward.sources(reward_weights) if s not in parts]
    if missing:
        raise KeyError(f"reward {name!r} needs the {missing} candidates, which were not loaded")
    return reward.combine(parts, reward_weights)
