"""Next-item training objectives of SASRec / GRU4Rec, looked up by name (`srs.loss`).

Notation: h (P, d) hidden states at the P positions that have a next item, pos (P,) those next items in
1..N, s_j = <h, e_j> the score of item j (e_j from the model's item encoder, so ID and LLM tables share it).

- `ce`: full softmax cross-entropy, -s_pos + log sum_{j=1..N} exp(s_j) (RecBole's CE; Klenitskiy & Vasilev,
  RecSys 2023). Exact; costs one (P, N) score block per chunk.
- `sampled_softmax`: the same softmax over the target and n negatives drawn uniformly from 1..N, shared by
  every position of the batch (one (n, d) lookup instead of P x n); a negative equal to a row's target is
  masked out of that row. With uniform sampling the logQ correction is a constant and cancels.
- `gbce`: gSASRec's generalised BCE (Petrov & Macdonald, RecSys 2023) over the target and the same shared
  negatives: beta * softplus(-s_pos) + sum_neg softplus(s_neg), i.e. -log(sigmoid(s_pos)^beta) - sum
  log(1 - sigmoid(s_neg)), with beta = alpha (t (1 - 1/alpha) + 1/alpha), alpha = n / (N - 1). beta < 1
  undoes the overconfidence that negative sampling causes; t = 0 is plain BCE with n negatives.
- `bce`: the published protocol, BCE against one uniform negative per position (never the target).

Every loss is averaged over positions. `auto` (the default of `srs.loss`) is `ce` while a catalogue's score
block stays small (`FULL_SOFTMAX_MAX_ITEMS`) and `sampled_softmax` beyond.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

FULL_SOFTMAX_MAX_ITEMS = 200_000
SCORE_BUDGET = 1 << 26  # full-softmax score elements per chunk (256 MB in fp32; the trainer cuts chunks to fit)


def beta_gbce(num_negatives: int, num_items: int, t: float) -> float:
    """gSASRec's calibration exponent for n negatives out of N items (n >= N - 1 gives beta = 1)."""
    alpha = min(1.0, num_negatives / max(1, num_items - 1))
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def ce(h: torch.Tensor, pos: torch.Tensor, encoder, neg=None, **_) -> torch.Tensor:
    logits = h @ encoder.table().T  # (P, N + 1); column 0 is padding
    logits[:, 0] = float("-inf")
    return F.cross_entropy(logits, pos)


def _target_and_shared(h, pos, encoder, neg):
    s_pos = (h * encoder(pos)).sum(-1)  # (P,)
    s_neg = h @ encoder(neg).T  # (P, n)
    return s_pos, s_neg.masked_fill(neg[None, :] == pos[:, None], float("-inf"))


def sampled_softmax(h, pos, encoder, neg, **_) -> torch.Tensor:
    s_pos, s_neg = _target_and_shared(h, pos, encoder, neg)
    logits = torch.cat([s_pos[:, None], s_neg], 1)
    return F.cross_entropy(logits, torch.zeros(len(h), dtype=torch.long, device=h.device))


def gbce(h, pos, encoder, neg, num_items: int = 0, t: float = 0.75, **_) -> torch.Tensor:
    s_pos, s_neg = _target_and_shared(h, pos, encoder, neg)
    beta = beta_gbce(len(neg), num_items, t)
    return (beta * F.softplus(-s_pos) + F.softplus(s_neg).sum(-1)).mean()  # softplus(-inf) = 0: masked


def bce(h, pos, encoder, neg, **_) -> torch.Tensor:
    s_pos, s_neg = (h * encoder(pos)).sum(-1), (h * encoder(neg)).sum(-1)
    return (F.softplus(-s_pos) + F.softplus(s_neg)).mean()


LOSSES = {"ce": ce, "sampled_softmax": sampled_softmax, "gbce": gbce, "bce": bce}
# how each loss draws negatives: none, n shared by the batch, or one per position
NEGATIVES = {"ce": "none", "sampled_softmax": "shared", "gbce": "shared", "bce": "per_position"}


def resolve(name: str, num_items: int) -> str:
    """`auto` -> `ce` or `sampled_softmax` by catalogue size; any other name is checked and returned."""
    if name == "auto":
        return "ce" if num_items <= FULL_SOFTMAX_MAX_ITEMS else "sampled_softmax"
    if name not in LOSSES:
        raise KeyError(f"unknown srs.loss {name!r}; use auto or one of {sorted(LOSSES)}")
    return name


def compute(name: str, h: torch.Tensor, pos: torch.Tensor, encoder, neg: torch.Tensor | None = None,
            num_items: int = 0, gbce_t: float = 0.75) -> torch.Tensor:
    """The loss `name` (already resolved) over P positions; `neg` as `NEGATIVES[name]` says."""
    if name not in LOSSES:
        raise KeyError(f"unknown srs.loss {name!r}; use one of {sorted(LOSSES)}")
    if h.ndim != 2 or pos.shape != h.shape[:1]:
        raise ValueError(f"expected h (P, d) and pos (P,), got {tuple(h.shape)} and {tuple(pos.shape)}")
    if NEGATIVES[name] != "none" and neg is None:
        raise ValueError(f"srs.loss={name} needs negatives")
    return LOSSES[name](h, pos, encoder, neg, num_items=num_items, t=gbce_t)


def shared_negatives(num_items: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n item ids drawn uniformly from 1..N with replacement (one set for the whole batch)."""
    return rng.integers(1, num_items + 1, size=n)
