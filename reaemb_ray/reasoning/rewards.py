"""Rewards of the explicit-reasoning mode, looked up by name, combined by `score` (the one entry point).

Each reward maps a batch of parsed replies (flattened M x G) and their truths to one number per reply:
- `format`: 1 when the reply is one JSON object with both keys "think" and "answer", else 0.
- `accuracy` (frequency-aware): with the prediction clipped to the answer scale [lo, hi] and e = pred - truth,
      raw = (exp(-e^2) - penalty(e)) / sqrt(p(truth)),   penalty(e) = over * e if e > 0 else under * (-e),
  p(truth) the share of the truth's class among the training targets (rare classes weigh more: the long tail of
  ratings), then min-max over the batch's parseable replies to [-1, 1] (all equal -> 0). A reply without a
  parseable answer gets -1, the batch minimum. over > under: recommending an item the user dislikes costs more
  than under-rating one they like.
- `analysis`: clip((len(think) - 100) / 100, 0, 1), len in characters; 0 without a valid reply.
The total is sum_k weight_k * reward_k (reason.reward_weights).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from reaemb_ray.reasoning.prompts import Parsed, answer_value, parse_response


@dataclass
class RewardContext:
    task: str  # rating | next_item
    class_prob: dict[float, float]  # truth class -> share among the training targets
    scale: tuple[float, float] = (1.0, 5.0)  # predictions are clipped to it
    penalty_over: float = 0.5
    penalty_under: float = 0.25


def format_reward(parsed: list[Parsed], truths: np.ndarray, ctx: RewardContext) -> np.ndarray:
    return np.array([1.0 if p.valid else 0.0 for p in parsed])


def accuracy_raw(pred: float, truth: float, ctx: RewardContext) -> float:
    """The frequency-aware accuracy of one prediction, before the batch min-max."""
    e = min(max(pred, ctx.scale[0]), ctx.scale[1]) - truth
    penalty = ctx.penalty_over * e if e > 0 else ctx.penalty_under * -e
    return (math.exp(-e * e) - penalty) / math.sqrt(ctx.class_prob[truth])


def minmax_to_unit(values: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Scale values[ok] to [-1, 1] by the batch min and max (0 when they are equal); the rest get -1."""
    out = np.full(len(values), -1.0)
    if ok.any():
        v = values[ok]
        span = v.max() - v.min()
        out[ok] = 0.0 if span == 0 else 2.0 * (v - v.min()) / span - 1.0
    return out


def accuracy_reward(parsed: list[Parsed], truths: np.ndarray, ctx: RewardContext) -> np.ndarray:
    raw, ok = np.zeros(len(parsed)), np.zeros(len(parsed), dtype=bool)
    for i, (p, t) in enumerate(zip(parsed, truths)):
        pred = answer_value(ctx.task, p.answer) if p.valid else None
        if pred is not None:
            raw[i], ok[i] = accuracy_raw(pred, float(t), ctx), True
    return minmax_to_unit(raw, ok)


def analysis_reward(parsed: list[Parsed], truths: np.ndarray, ctx: RewardContext) -> np.ndarray:
    return np.array([min(max((len(p.think) - 100) / 100, 0.0), 1.0) if p.valid else 0.0 for p in parsed])


REWARDS = {"format": format_reward, "accuracy": accuracy_reward, "analysis": analysis_reward}


@dataclass
class Scores:
    total: np.ndarray  # (M, G)
    parts: dict[str, np.ndarray] = field(default_factory=dict)  # reward kind -> (M, G)
    valid_share: float = 0.0  # share of replies with the valid JSON format
    answered_share: float = 0.0  # share with a parseable answer value
    # comparable across batches (the accuracy reward is min-max scaled per batch): mean exp(-e^2) over all
    # replies (0 without an answer), and mean |e| over the answered ones (None when none is)
    accuracy_base: float = 0.0
    abs_error: float | None = None


def score(texts: list[list[str]], truths, ctx: RewardContext, weights: dict[str, float]) -> Scores:
    """Rewards of M prompts x G replies; truths (M,). Every reward in REWARDS is computed (and reported)."""
    unknown = sorted(set(weights) - set(REWARDS))
    if unknown:
        raise KeyError(f"unknown reward(s) {unknown}; reason.reward_weights takes {sorted(REWARDS)}")
    m = len(texts)
    g = len(texts[0]) if m else 0
    truths = np.asarray(truths, dtype=np.float64)
    if truths.shape != (m,) or any(len(t) != g for t in texts):
        raise ValueError(f"score: texts must be M x G with one truth per prompt, got {m} prompts, "
                         f"group sizes {sorted({len(t) for t in texts})} and truths of shape {truths.shape}")
    missing = {float(t) for t in truths} - set(ctx.class_prob)
    if missing:
        raise ValueError(f"score: truth classes {sorted(missing)} have no training frequency in class_prob")
    parsed = [parse_response(t) for row in texts for t in row]
    flat_truths = np.repeat(truths, g)
    parts = {k: fn(parsed, flat_truths, ctx).reshape(m, g) for k, fn in REWARDS.items()}
    total = sum(w * parts[k] for k, w in weights.items()) if weights else np.zeros((m, g))
    preds = [answer_value(ctx.task, p.answer) if p.valid else None for p in parsed]
    errors = [min(max(x, ctx.scale[0]), ctx.scale[1]) - t for x, t in zip(preds, flat_truths) if x is not None]
    n = max(1, len(parsed))
    return Scores(np.asarray(total, dtype=np.float64), parts, sum(p.valid for p in parsed) / n,
                  len(errors) / n, float(sum(np.exp(-np.square(errors)))) / n,
                  float(np.mean(np.abs(errors))) if errors else None)
