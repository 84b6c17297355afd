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


def chunk_by_tokens(idx: np.ndarray, lengths: np.ndarray, max_tokens: int, max_rows: int | None = None) -> list[np.ndarray]:
    """Split rows `idx` (sorted by length here) into chunks whose padded size rows x longest <= max_tokens.

    Sequence lengths are long-tailed (Beauty: median 6, longest 204): padding a whole batch to its longest
    row wastes most of the compute, and attention costs grow with the square of the width.
    """
    idx = idx[np.argsort(lengths[idx], kind="stable")]
    chunks, start = [], 0
    for end in range(1, len(idx) + 1):
        width = max(1, int(lengths[idx[end - 1]]))
        too_big = (end - start) * width > max_tokens or (max_rows is not None and end - start > max_rows)
        if too_big and end - 1 > start:
            chunks.append(idx[start : end - 1])
            start = end - 1
    chunks.append(idx[start:])
    return chunks
