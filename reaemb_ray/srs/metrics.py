"""Ranking metrics for leave-one-out evaluation: HR@k and NDCG@k from the target's rank.

Conventions (docs/EVALUATION.md):
- rank is 0-based and pessimistic: rank = #items scoring higher than the target + #other items tied with it.
- full ranking: every item 1..N competes; padding (0) never does; with `exclude_history` the items already
  in the user's input sequence are removed (except the target itself, if the user repeats it), the
  convention of the S3Rec/CL4SRec code behind the commonly cited Beauty numbers.
- sampled: the target against `n` negatives drawn uniformly, without repetition, from the items the user
  never interacted with (seeded), as in the ReaEmb paper.
"""
from __future__ import annotations

import numpy as np
import torch


def pessimistic_rank(scores: torch.Tensor, target_col: torch.Tensor) -> torch.Tensor:
    """scores (B, C), target_col (B,) column of the target -> (B,) int64 0-based rank, ties counted against."""
    t = scores.gather(1, target_col[:, None])
    if torch.isnan(t).any():
        raise ValueError("NaN scores for the target item; the model diverged (try a lower srs.lr)")
    # (the int32 sum of a bool matrix is about twice as fast as the default int64 one)
    return (scores >= t).sum(1, dtype=torch.int32).long() - 1


def full_ranks(scores: torch.Tensor, targets: torch.Tensor, history: list[np.ndarray] | None = None) -> torch.Tensor:
    """Rank of `targets` (B,) among all items given scores (B, N+1); column 0 (padding) is excluded.

    Same result as setting the excluded columns to -inf and ranking, but without copying the (B, N+1)
    scores: rank among all columns, minus the excluded columns that scored >= the target.
    """
    rank = pessimistic_rank(scores, targets)
    t = scores.gather(1, targets[:, None])[:, 0]
    rank -= (scores[:, 0] >= t).long()  # padding never competes
    if history is not None:
        rows = np.concatenate([np.full(len(h), i) for i, h in enumerate(history)]).astype(np.int64)
        cols = np.concatenate(history).astype(np.int64)
        tgt = targets.cpu().numpy()
        # each excluded item once (a user may repeat items); a repeated target still competes
        pairs = np.unique(rows * scores.size(1) + cols)
        rows, cols = pairs // scores.size(1), pairs % scores.size(1)
        keep = (cols != 0) & (cols != tgt[rows])
        rows, cols = torch.from_numpy(rows[keep]).to(scores.device), torch.from_numpy(cols[keep]).to(scores.device)
        beats = scores[rows, cols] >= t[rows]
        rank -= torch.bincount(rows[beats], minlength=len(rank))
    return rank


def sampled_ranks(scores: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Rank of the target among itself + its sampled negatives (B, n): column 0 of the candidate block."""
    cand = torch.cat([targets[:, None], negatives.to(targets.device)], 1)
    return pessimistic_rank(scores.gather(1, cand), torch.zeros(len(cand), dtype=torch.long, device=cand.device))


SCORE_BLOCK = 1 << 22  # scores held at once (16 MB in fp32): the (users x items) matrix is never built whole
# users whose target scores come out of one (chunk x chunk) product, and whose sampled candidates are scored
# together: (chunk x chunk * n) scores, 26 MB at 256 users and 100 negatives
TARGET_CHUNK = 256


class TensorRows:
    """A whole item table (N+1, d) seen as row blocks (`ranks_in_blocks` also takes an encoder's lazy rows,
    `srs.encoders.ItemEncoder.rows`): one block, the tensor itself."""

    def __init__(self, table: torch.Tensor):
        self.table, self.num_rows = table, table.shape[0]
        self.grid = max(1, self.num_rows)

    def block(self, lo: int) -> torch.Tensor:
        return self.table[lo:lo + self.grid]


def take_rows(rows, ids: torch.Tensor) -> torch.Tensor:
    """`table[ids]` for row blocks (`TensorRows` or an encoder's `rows()`): each row is cut out of the block that
    holds it, so it is the very row the scoring loop multiplies; only the blocks that hold an id are computed."""
    if isinstance(rows, TensorRows):
        return rows.table[ids]
    flat = ids.reshape(-1)
    out = None
    for lo in (torch.unique(flat // rows.grid) * rows.grid).tolist():
        blk = rows.block(lo)
        sel = (flat >= lo) & (flat < lo + rows.grid)
        if out is None:
            out = torch.empty(len(flat), blk.shape[1], dtype=blk.dtype, device=blk.device)
        out[sel] = blk[flat[sel] - lo]
    return out.reshape(*ids.shape, -1)


def ranks_in_blocks(users: torch.Tensor, table, targets: torch.Tensor,
                    history: list[np.ndarray] | None = None, negatives: torch.Tensor | None = None,
                    block_scores: int = SCORE_BLOCK) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`full_ranks` (and `sampled_ranks` when `negatives` is given) of `targets` from user vectors (B, d) and the
    item table (N+1, d), scoring one block of items at a time, so memory is B x block instead of B x (N+1).

    `table` is a tensor or row blocks (`TensorRows`, or an encoder's `rows()` that computes each block of its
    table when asked, so the whole (N+1, d) table never exists: an adapter over a frozen 1M-item table then
    costs one block, not a second table). Memory: B x block scores, one row block, the target and negative rows.

    Same counts as the reference functions: for each block, the items other than the target and the padding
    column that score >= the target; excluded history items (each once) are subtracted when they do. Every
    score, the target's included, comes out of a matrix product of `users` with rows of `table`, as in the
    reference's `users @ table.T`; a target's or negative's row is cut out of the same block as in the loop.
    """
    rows = table if hasattr(table, "block") else TensorRows(table)
    B, N1 = users.shape[0], rows.num_rows
    block = max(1, min(N1, block_scores // max(B, 1)))
    picked = targets if negatives is None else torch.cat([targets, negatives.to(targets.device).reshape(-1)])
    cand, where = torch.unique(picked, return_inverse=True)
    cand_rows = take_rows(rows, cand)  # the targets' and negatives' rows, each once
    t = torch.cat([(users[c:c + TARGET_CHUNK] @ cand_rows[where[c:c + TARGET_CHUNK]].T).diagonal()
                   for c in range(0, B, TARGET_CHUNK)])  # the target's score, (B,)
    if torch.isnan(t).any():
        raise ValueError("NaN scores for the target item; the model diverged (try a lower srs.lr)")
    rank = torch.zeros(B, dtype=torch.long, device=users.device)
    ex_rows = ex_cols = None
    if history is not None:
        r = np.concatenate([np.full(len(h), i) for i, h in enumerate(history)]).astype(np.int64)
        c = np.concatenate(history).astype(np.int64)
        pairs = np.unique(c * B + r)  # each excluded item once; sorted by item, so a block's are one slice
        c, r = pairs // B, pairs % B
        keep = (c != 0) & (c != targets.cpu().numpy()[r])
        ex_rows, ex_cols = (torch.from_numpy(x[keep]).to(users.device) for x in (r, c))
    arange = torch.arange(B, device=users.device)
    for base in range(0, N1, rows.grid):
        blk = rows.block(base)
        for off in range(0, len(blk), block):
            lo, hi = base + off, base + min(off + block, len(blk))
            s = users @ blk[off:off + block].T
            beats = s >= t[:, None]
            if lo == 0:
                beats[:, 0] = False  # padding never competes
            inside = (targets >= lo) & (targets < hi)
            beats[arange[inside], targets[inside] - lo] = False  # the target does not count against itself
            rank += beats.sum(1, dtype=torch.int32).long()
            if ex_rows is not None:
                a, b = torch.searchsorted(ex_cols, torch.tensor([lo, hi], device=ex_cols.device)).tolist()
                r, c = ex_rows[a:b], ex_cols[a:b]
                rank -= torch.bincount(r[beats[r, c - lo]], minlength=B)
    sampled = None
    if negatives is not None:
        neg_where = where[B:].reshape(negatives.shape)
        sampled = torch.empty(B, dtype=torch.long, device=users.device)
        for c in range(0, B, TARGET_CHUNK):  # each chunk's own negatives only: (chunk, its candidates)
            mine, inverse = torch.unique(neg_where[c:c + TARGET_CHUNK], return_inverse=True)
            s = (users[c:c + TARGET_CHUNK] @ cand_rows[mine].T).gather(1, inverse)
            sampled[c:c + TARGET_CHUNK] = (s >= t[c:c + TARGET_CHUNK, None]).sum(1, dtype=torch.int32).long()
    return rank, sampled


def hit_ndcg(ranks: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-user HR@k and NDCG@k (one relevant item: NDCG = 1/log2(rank + 2) when rank < k)."""
    ranks = np.asarray(ranks)
    hit = (ranks < k).astype(np.float64)
    return hit, hit / np.log2(ranks + 2.0)


def summarize(ranks: np.ndarray, ks: list[int]) -> dict[str, float]:
    out = {}
    for k in ks:
        hit, ndcg = hit_ndcg(ranks, k)
        out[f"HR@{k}"], out[f"NDCG@{k}"] = float(hit.mean()) if len(hit) else float("nan"), \
            float(ndcg.mean()) if len(ndcg) else float("nan")
    return out


def sample_negatives_per_user(interacted: list[np.ndarray], num_items: int, n: int, seed: int) -> np.ndarray:
    """(U, n) distinct items per user from 1..N minus the user's items, uniform, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    out = np.empty((len(interacted), n), dtype=np.int64)
    for u, items in enumerate(interacted):
        seen = np.unique(items)
        if num_items - len(seen) < n:
            raise ValueError(
                f"user row {u} interacted with {len(seen)} of {num_items} items, fewer than "
                f"eval.num_sampled_negatives={n} remain; lower eval.num_sampled_negatives"
            )
        picked: list[int] = []
        while len(picked) < n:
            draw = rng.integers(1, num_items + 1, size=2 * (n - len(picked)) + 8)
            draw = draw[~np.isin(draw, seen)]
            _, first = np.unique(draw, return_index=True)
            draw = draw[np.sort(first)]  # keep draw order, drop repeats
            draw = draw[~np.isin(draw, picked)]
            picked.extend(draw[: n - len(picked)].tolist())
        out[u] = picked
    return out


def user_groups(test_items: np.ndarray, popularity: np.ndarray, full_lengths: np.ndarray,
                tail_threshold: int, short_threshold: int) -> dict[str, np.ndarray]:
    """Boolean masks over users: overall; tail/popular by the test item's training popularity; short/long users."""
    pop = popularity[test_items]
    return {
        "overall": np.ones(len(test_items), dtype=bool),
        "tail": pop < tail_threshold,
        "popular": pop >= tail_threshold,
        "short": full_lengths < short_threshold,
        "long": full_lengths >= short_threshold,
    }


POPULARITY_BUCKETS = [0, 5, 10, 20, 50, 100, 200]  # lower edges of the test item's training popularity


def popularity_bucket_labels() -> list[str]:
    e = POPULARITY_BUCKETS
    return [f"{a}-{b - 1}" for a, b in zip(e[:-1], e[1:])] + [f">={e[-1]}"]


def ndcg_by_popularity(ranks: np.ndarray, test_items: np.ndarray, popularity: np.ndarray, k: int = 10) -> list[dict]:
    """NDCG@k per bucket of the test item's training popularity (the long-tail picture)."""
    bucket = np.searchsorted(POPULARITY_BUCKETS, popularity[test_items], side="right") - 1
    _, ndcg = hit_ndcg(ranks, k)
    return [{"bucket": label, "n_users": int((bucket == b).sum()),
             "value": float(ndcg[bucket == b].mean()) if (bucket == b).any() else float("nan")}
            for b, label in enumerate(popularity_bucket_labels())]
