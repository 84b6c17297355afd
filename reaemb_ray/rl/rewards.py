"""Collaborative rewards: how well an item's (noisy) embedding ranks its positives among its candidates.

R = sum_j w_j / (1 + log2(rank_j + 2)) over the positives j, rank 0-based among the candidates by dot product
between the item's embedding and the candidates' noise-free embeddings; a tie counts against the positive
(pessimistic), so a collapsed embedding that scores everything equally earns the least.
Rewards are looked up by name: `cooccurrence`, `srs`, `mix` (weighted sum, weights from crrl.reward_weights).
"""
from __future__ import annotations

import numpy as np


def rank_reward(item_emb: np.ndarray, cand_emb: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """item_emb (M, G, d), cand_emb (M, C, d), weights (M, C) -> rewards (M, G)."""
    item_emb, cand_emb, weights = (np.asarray(x, dtype=np.float64) for x in (item_emb, cand_emb, weights))
    if item_emb.ndim != 3 or cand_emb.ndim != 3 or item_emb.shape[0] != cand_emb.shape[0]:
        raise ValueError(f"expected item_emb (M, G, d) and cand_emb (M, C, d), got {item_emb.shape} and {cand_emb.shape}")
    if weights.shape != cand_emb.shape[:2]:
        raise ValueError(f"weights {weights.shape} must match the candidates {cand_emb.shape[:2]}")
    scores = np.einsum("mgd,mcd->mgc", item_emb, cand_emb)  # (M, G, C)
    s_j = scores[..., :, None]  # candidate j being ranked
    s_k = scores[..., None, :]  # every candidate k
    c = scores.shape[-1]
    others = ~np.eye(c, dtype=bool)
    # rank_j = #{k: s_k > s_j} + #{k != j: s_k == s_j}  (ties pessimistic)
    rank = ((s_k > s_j) | ((s_k == s_j) & others)).sum(-1)  # (M, G, C)
    gain = 1.0 / (1.0 + np.log2(rank + 2.0))
    return (gain * weights[:, None, :]).sum(-1).astype(np.float32)


def combine(parts: dict[str, np.ndarray], name: str, reward_weights: dict[str, float]) -> np.ndarray:
    """The reward `name` from per-source rewards: one source, or `mix` = sum_s weight_s * R_s."""
    if name in ("cooccurrence", "srs"):
        if name not in parts:
            raise KeyError(f"reward {name!r} needs the {name} candidates, which were not loaded")
        return parts[name]
    if name == "mix":
        missing = [s for s, w in reward_weights.items() if w and s not in parts]
        if missing:
            raise KeyError(f"mix reward needs sources {missing}; they were not loaded")
        return sum(w * parts[s] for s, w in reward_weights.items() if w).astype(np.float32)
    raise KeyError(f"unknown reward {name!r}; use one of {REWARDS}")


REWARDS = ("cooccurrence", "srs", "mix")


def sources_for(name: str, reward_weights: dict[str, float]) -> list[str]:
    """Which candidate sources a reward reads."""
    if name == "mix":
        return [s for s, w in reward_weights.items() if w]
    if name not in REWARDS:
        raise KeyError(f"unknown reward {name!r}; use one of {REWARDS}")
    return [name]
