"""Small prepared folders written to the documented contract (docs/ARCHITECTURE.md, "Prepared data")."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

torch.set_num_threads(1)  # other test sessions share the two cores


def write_prepared(out: Path, sequences: list[list[int]], num_items: int) -> Path:
    """Leave-one-out splits + training-split popularity + items, as `reaemb prepare` writes them."""
    out.mkdir(parents=True, exist_ok=True)
    train = [s[:-2] for s in sequences]
    pq.write_table(pa.table({
        "user_id": pa.array(np.arange(1, len(sequences) + 1), pa.int64()),
        "train": pa.array(train, pa.list_(pa.int64())),
        "valid": pa.array([s[-2] for s in sequences], pa.int64()),
        "test": pa.array([s[-1] for s in sequences], pa.int64()),
    }), out / "splits.parquet")
    counts = np.bincount(np.concatenate([np.asarray(t, dtype=np.int64) for t in train]), minlength=num_items + 1)
    ids = np.arange(1, num_items + 1)
    pq.write_table(pa.table({"item_id": pa.array(ids, pa.int64()), "count": pa.array(counts[1:], pa.int64())}),
                   out / "popularity.parquet")
    pq.write_table(pa.table({
        "item_id": pa.array(ids, pa.int64()), "raw_id": [f"I{i}" for i in ids],
        "attr_keys": pa.array([["title"]] * num_items, pa.list_(pa.string())),
        "attr_values": pa.array([[f"item {i}"] for i in ids], pa.list_(pa.string())),
        "text": [f"title is item {i}" for i in ids],
    }), out / "items.parquet")
    return out


def synthetic_sequences(num_users: int = 80, num_items: int = 30, seed: int = 0) -> list[list[int]]:
    """Users walk the catalogue mostly in order (i -> i+1), so the next item is learnable; lengths 3..16."""
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(num_users):
        length = int(rng.integers(3, 17))
        start = int(rng.integers(1, num_items + 1))
        seq = [(start - 1 + j) % num_items + 1 for j in range(length)]
        if rng.random() < 0.2:  # a little noise
            seq[int(rng.integers(0, length))] = int(rng.integers(1, num_items + 1))
        seqs.append(seq)
    return seqs


@pytest.fixture
def prepared_dir(tmp_path) -> Path:
    return write_prepared(tmp_path / "out" / "prepared", synthetic_sequences(), 30)
