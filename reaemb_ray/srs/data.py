"""Leave-one-out sequences for the recommenders, read straight from the prepared Parquet files.

Reads only the documented contract (docs/ARCHITECTURE.md, "Prepared data"), so it does not depend on how
`prepare` is implemented: `splits.parquet` (user_id, train list, valid, test), `popularity.parquet`
(item_id, count over the training split) and `items.parquet` (item_id, for the catalogue size).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


@dataclass
class SeqData:
    num_items: int  # item ids are 1..num_items; 0 is padding
    user_ids: np.ndarray  # (U,)
    train: list[np.ndarray]  # per user, all but the last two items, in time order
    valid: np.ndarray  # (U,) second-last item
    test: np.ndarray  # (U,) last item
    popularity: np.ndarray  # (num_items + 1,) interactions in the training split, index = item id

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    def full_lengths(self) -> np.ndarray:
        """Length of each user's whole sequence (train + valid + test)."""
        return np.array([len(t) + 2 for t in self.train], dtype=np.int64)


def load_seq_data(prepared_dir: str | Path) -> SeqData:
    d = Path(prepared_dir)
    for name in ("splits.parquet", "popularity.parquet", "items.parquet"):
        if not (d / name).exists():
            raise FileNotFoundError(
                f"{d / name} is missing; run `reaemb prepare --config ...` first (it writes {d}/)"
            )
    splits = pq.read_table(d / "splits.parquet", columns=["user_id", "train", "valid", "test"])
    item_ids = pq.read_table(d / "items.parquet", columns=["item_id"]).column("item_id").to_numpy()
    num_items = int(item_ids.max())
    if len(item_ids) != num_items or item_ids.min() != 1:
        raise ValueError(f"{d / 'items.parquet'}: item ids must be contiguous 1..N; re-run `reaemb prepare`")
    train = [np.asarray(t, dtype=np.int64) for t in splits.column("train").to_pylist()]
    valid = splits.column("valid").to_numpy().astype(np.int64)
    test = splits.column("test").to_numpy().astype(np.int64)
    biggest = max(valid.max(), test.max(), max((t.max() for t in train if len(t)), default=0))
    if biggest > num_items or min(valid.min(), test.min()) < 1:
        raise ValueError(f"{d / 'splits.parquet'} holds item ids outside 1..{num_items}; re-run `reaemb prepare`")
    pop_t = pq.read_table(d / "popularity.parquet", columns=["item_id", "count"])
    popularity = np.zeros(num_items + 1, dtype=np.int64)
    popularity[pop_t.column("item_id").to_numpy()] = pop_t.column("count").to_numpy()
    return SeqData(num_items, splits.column("user_id").to_numpy(), train, valid, test, popularity)


def pad_right(seqs: list[np.ndarray], max_len: int) -> np.ndarray:
    """(B, L) int64, each row's last `max_len` items at the left, zeros after; L = longest row (<= max_len)."""
    width = max(1, min(max_len, max((len(s) for s in seqs), default=1)))
    out = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        s = s[-width:]
        out[i, : len(s)] = s
    return out


def random_batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A fresh random partition of rows 0..n-1 into batches (one epoch)."""
    order = rng.permutation(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


# What one extra forward/backward chunk costs in fixed (per-op) overhead, in padded tokens' worth of compute
# (SASRec, hidden 128, one CPU thread: ~5 ms per chunk vs ~20-40 us per token).
CHUNK_OVERHEAD_TOKENS = 128


def chunk_by_tokens(lengths: np.ndarray, max_tokens: int, max_rows: int | None = None,
                    overhead_tokens: int = CHUNK_OVERHEAD_TOKENS) -> list[np.ndarray]:
    """Split rows 0..len(lengths)-1 into chunks of similar length; each chunk is padded to its longest row.

    Sequence lengths are long-tailed (Beauty: median 4 training items, longest 202): padding a batch to its
    longest row wastes most of the compute (attention even quadratically). Rows are sorted by length and cut
    where that minimises padded tokens + `overhead_tokens` per chunk (exact, by dynamic programming over the
    distinct lengths); then a chunk is split evenly so that rows x width <= max_tokens and rows <= max_rows.
    """
    order = np.argsort(lengths, kind="stable")
    widths = np.maximum(np.asarray(lengths)[order], 1)
    values, counts = np.unique(widths, return_counts=True)
    ends = np.cumsum(counts)  # rows order[:ends[j]] have width <= values[j]
    starts = ends - counts
    best = np.zeros(len(values) + 1)  # best[j]: cheapest cost of covering the rows of the first j widths
    cut = np.zeros(len(values) + 1, dtype=np.int64)
    for j in range(len(values)):
        cost = best[: j + 1] + (ends[j] - starts[: j + 1]) * values[j] + overhead_tokens  # one chunk = groups i..j
        cut[j + 1] = int(np.argmin(cost))
        best[j + 1] = cost[cut[j + 1]]
    spans, j = [], len(values)
    while j > 0:
        spans.append((starts[cut[j]], ends[j - 1]))
        j = cut[j]
    chunks = []
    for a, b in reversed(spans):
        cap = max(1, max_tokens // int(widths[b - 1]))
        cap = min(cap, max_rows) if max_rows else cap
        chunks += np.array_split(order[a:b], -(-(b - a) // cap))
    return chunks
