"""Reward candidates per item: a few positives (items that belong with it) and sampled negatives.

Two sources, each giving a `Candidates` table with a fixed number of slots per item (positives first):
- `cooccurrence_candidates`: positives = the items that co-occur most with v in the training split, weighted by
  their normalised co-occurrence counts; negatives = items that never co-occur with v. Optionally some of the
  negatives are hard: drawn from v's nearest neighbours in an embedding table (`nearest_neighbours`) that still
  never co-occur with it -- easy uniform negatives alone let a rank reward saturate. A new seed per epoch
  re-draws them.
- `srs_candidates`: positives = the items closest to v by dot product in a pretrained ID-SASRec item table;
  negatives = items from the least similar half.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Candidates:
    item_ids: np.ndarray  # (M,) items that have candidates
    cand_ids: np.ndarray  # (M, C) candidate item ids, C = num_positives + num_negatives, positives first
    weights: np.ndarray  # (M, C) float32: normalised positive weights (sum 1 per row), 0 for negatives
    skipped: int = 0  # items left out (no co-occurring item)

    def __post_init__(self):
        self._row = {int(v): i for i, v in enumerate(self.item_ids)}

    def __len__(self) -> int:
        return len(self.item_ids)

    def lookup(self, item_ids) -> tuple[np.ndarray, np.ndarray]:
        """(cand_ids, weights) rows for `item_ids`; an unknown item is a clear error."""
        try:
            rows = [self._row[int(v)] for v in item_ids]
        except KeyError as e:
            raise KeyError(f"item {e.args[0]} has no reward candidates (it co-occurs with nothing, or is not an "
                           "item of this dataset); draw batches from Candidates.item_ids") from None
        return self.cand_ids[rows], self.weights[rows]


def _sample_excluding(rng: np.random.Generator, pool_size: int, k: int, exclude: set[int]) -> np.ndarray:
    """k distinct ids from 1..pool_size avoiding `exclude` (rejection sampling; exclude is usually small)."""
    free = pool_size - len({e for e in exclude if 1 <= e <= pool_size})
    if free < k:
        raise ValueError(f"cannot sample {k} negatives: only {free} items are unrelated; lower crrl.num_negatives")
    if len(exclude) > pool_size // 2:  # dense exclusion: sample from the explicit complement instead
        pool = np.setdiff1d(np.arange(1, pool_size + 1), np.fromiter(exclude, dtype=np.int64))
        return rng.choice(pool, size=k, replace=False)
    out: list[int] = []
    seen = set(exclude)
    while len(out) < k:
        for v in rng.integers(1, pool_size + 1, size=2 * k):
            if int(v) not in seen:
                seen.add(int(v))
                out.append(int(v))
                if len(out) == k:
                    break
    return np.asarray(out, dtype=np.int64)


def nearest_neighbours(table: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
    """(N+1, k) ids of each item's k nearest other items by centred cosine in `table` (row = item id, row 0
    padding and never a neighbour); computed in blocks of rows so memory stays O(block x N)."""
    x = np.asarray(table[1:], dtype=np.float32)
    x = x - x.mean(0)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n = len(x)
    k = min(k, n - 1)
    out = np.zeros((n + 1, k), dtype=np.int64)
    for lo in range(0, n, block):
        sims = x[lo:lo + block] @ x.T
        sims[np.arange(len(sims)), np.arange(lo, lo + len(sims))] = -np.inf  # never the item itself
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, 1), axis=1, kind="stable")
        out[lo + 1:lo + 1 + len(sims)] = np.take_along_axis(top, order, 1) + 1
    return out


def cooccurrence_candidates(item_a, item_b, count, num_items: int, num_positives: int, num_negatives: int,
                            seed: int = 0, neighbours: np.ndarray | None = None,
                            hard_negatives: int = 0) -> Candidates:
    """Candidates from symmetric co-occurrence pairs (both directions stored, training split only).

    An item with fewer than `num_positives` partners keeps the ones it has; its free slots take extra
    negatives (weight 0), so every row has the same width. Items with no partner are skipped and counted.
    `hard_negatives` of the negatives come from the item's `neighbours` row (nearest first in the table, see
    `nearest_neighbours`) minus its co-occurring items, sampled uniformly among them; the rest are uniform.
    """
    if hard_negatives and neighbours is None:
        raise ValueError("hard negatives need the nearest-neighbour table (crrl.hard_negatives needs an embedding table)")
    if hard_negatives > num_negatives:
        raise ValueError(f"crrl.hard_negatives ({hard_negatives}) cannot exceed crrl.num_negatives ({num_negatives})")
    a, b, c = (np.asarray(x, dtype=np.int64) for x in (item_a, item_b, count))
    if not len(a) == len(b) == len(c):
        raise ValueError("co-occurrence columns item_a, item_b, count must have the same length")
    if len(a) and (a.min() < 1 or b.min() < 1 or max(a.max(), b.max()) > num_items):
        raise ValueError(f"co-occurrence item ids must lie in 1..{num_items} (0 is padding)")
    rng = np.random.default_rng(seed)
    order = np.lexsort((b, -c, a))  # by item, then count descending, then partner id (deterministic ties)
    a, b, c = a[order], b[order], c[order]
    starts = np.searchsorted(a, np.arange(1, num_items + 2))
    width = num_positives + num_negatives
    ids, cands, weights, skipped = [], [], [], 0
    for v in range(1, num_items + 1):
        lo, hi = starts[v - 1], starts[v]
        if lo == hi:
            skipped += 1
            continue
        partners, counts = b[lo:hi], c[lo:hi].astype(np.float64)
        pos, w = partners[:num_positives], counts[:num_positives]
        related = set(partners.tolist()) | {v}
        hard = np.zeros(0, dtype=np.int64)
        if hard_negatives:
            pool = np.asarray([u for u in neighbours[v] if u and u not in related], dtype=np.int64)
            hard = rng.choice(pool, size=min(hard_negatives, len(pool)), replace=False)
        negs = np.concatenate([hard, _sample_excluding(rng, num_items, width - len(pos) - len(hard),
                                                       related | set(hard.tolist()))])
        ids.append(v)
        cands.append(np.concatenate([pos, negs]))
        weights.append(np.concatenate([w / w.sum(), np.zeros(len(negs))]))
    return Candidates(np.asarray(ids, dtype=np.int64), np.asarray(cands, dtype=np.int64).reshape(-1, width),
                      np.asarray(weights, dtype=np.float32).reshape(-1, width), skipped)


def srs_candidates(item_table: np.ndarray, num_positives: int, num_negatives: int, seed: int = 0,
                   item_ids=None) -> Candidates:
    """Candidates from a pretrained ID-SASRec item table (row = item id, row 0 = padding).

    Positives: the top `num_positives` other items by dot product (equal weights); negatives: sampled from the
    least similar half of the catalogue.
    """
    table = np.asarray(item_table, dtype=np.float32)
    n = table.shape[0] - 1
    if table.ndim != 2 or n < num_positives + num_negatives + 1:
        raise ValueError(f"item table of shape {table.shape} is too small for {num_positives} positives + "
                         f"{num_negatives} negatives (row 0 is padding)")
    rng = np.random.default_rng(seed)
    ids = np.arange(1, n + 1) if item_ids is None else np.asarray(item_ids, dtype=np.int64)
    half = max(num_negatives, n // 2)
    cands, weights = [], []
    for v in ids:
        sims = table[1:] @ table[v]
        sims[v - 1] = -np.inf  # never the item itself
        order = np.argsort(-sims, kind="stable") + 1
        pos = order[:num_positives]
        rest = order[num_positives:]
        far = rest[rest != v][-half:]  # the least similar half, never v itself nor a positive
        negs = rng.choice(far, size=num_negatives, replace=False)
        cands.append(np.concatenate([pos, negs]))
        weights.append(np.concatenate([np.full(num_positives, 1.0 / num_positives), np.zeros(num_negatives)]))
    width = num_positives + num_negatives
    return Candidates(ids, np.asarray(cands, dtype=np.int64).reshape(-1, width),
                      np.asarray(weights, dtype=np.float32).reshape(-1, width), 0)
