"""Advantages from group rewards (M items x G samples), looked up by name.

- `grpo`: (R - mean over the group) / (std over the group + eps), std with Bessel's correction as in GRPO.
- `anchor`: R - R_anchor (sample 0 of each group is the noise-free anchor), divided by the std of these
  differences over the whole batch + eps; the anchor's own advantage is 0.
"""
from __future__ import annotations

import numpy as np

EPS = 1e-6


def grpo(rewards: np.ndarray, eps: float = EPS) -> np.ndarray:
    r = np.asarray(rewards, dtype=np.float64)
    return ((r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + eps)).astype(np.float32)


def anchor(rewards: np.ndarray, eps: float = EPS) -> np.ndarray:
    r = np.asarray(rewards, dtype=np.float64)
    diff = r - r[:, :1]
    return (diff / (diff.std() + eps)).astype(np.float32)


ADVANTAGES = {"grpo": grpo, "anchor": anchor}


def compute(name: str, rewards: np.ndarray) -> np.ndarray:
    if name not in ADVANTAGES:
        raise KeyError(f"unknown advantage {name!r}; use one of {sorted(ADVANTAGES)}")
    r = np.asarray(rewards)
    if r.ndim != 2 or r.shape[1] < 2:
        raise ValueError(f"rewards must be (items, group >= 2), got shape {r.shape}")
    return ADVANTAGES[name](r)
