"""Raw dataset -> canonical Parquet under `{output_dir}/prepared/` (docs/ARCHITECTURE.md, "Prepared data").

Ids: users keep the reader's order (file order of first appearance) and become 1..U; items become 1..N in
order of first appearance when the kept users' sequences are scanned in that order, oldest interaction first
(for the P5 Beauty copy this reproduces the P5 ids exactly). Users with fewer than 3 interactions are dropped
(leave-one-out needs train, valid and test); catalogue items that nobody interacted with are dropped. Both
counts go into summary.json.

Co-occurrence counts pairs of positions inside a user's TRAINING sequence only (valid/test items never enter).
With `data.cooc_window=0` every pair of positions counts, as in the published code, so items a != b co-occur
`sum_u n_u(a) * n_u(b)` times (n_u = occurrences in u's training sequence), i.e. the off-diagonal of X^T X for
the user x item count matrix X; `data.cooc_window=k` counts pairs at most k positions apart.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reaemb_ray import layout
from reaemb_ray.data.prompts import render_attributes
from reaemb_ray.data.readers import read_raw
from reaemb_ray.errors import DataError

log = logging.getLogger(__name__)
MIN_INTERACTIONS = 3  # train (>= 1) + valid + test
FILES = ["items.parquet", "interactions.parquet", "splits.parquet", "popularity.parquet", "cooccurrence.parquet",
         "summary.json"]


# ------------------------------------------------------------------------------------------- co-occurrence


def cooccurrence(items: np.ndarray, users: np.ndarray, num_items: int, window: int = 0):
    """Symmetric co-occurrence of `items` (flat, 1..N) grouped by `users` (flat, sorted, same length).

    Returns (item_a, item_b, count) int64 arrays, both directions, a != b, sorted by (a, b).
    """
    blocks = list(cooccurrence_blocks(items, users, num_items, window))
    if not blocks:
        return tuple(np.zeros(0, np.int64) for _ in range(3))
    return tuple(np.concatenate(parts) for parts in zip(*blocks))


COOC_BLOCK_PAIRS = 1_000_000  # candidate pairs per block: bounds the memory of one block, whatever N is


def cooccurrence_blocks(items: np.ndarray, users: np.ndarray, num_items: int, window: int = 0,
                        max_pairs: int = COOC_BLOCK_PAIRS):
    """`cooccurrence` as consecutive blocks of item_a ranges, in order, each sorted by (a, b).

    Window 0: rows [lo, hi) of X^T X, one block at a time (X = the user x item count matrix, kept sparse), with
    the ranges cut so that each block holds about `max_pairs` candidate pairs (an item's candidates: the
    distinct items of every user who has it). Memory then stays at X plus one block, and a caller can write
    each block out before the next is computed. Window k > 0 counts pairs at most k positions apart: linear in
    the interactions (k pairs per position), built at once.
    """
    items, users = np.asarray(items, np.int64), np.asarray(users, np.int64)
    if len(items) == 0:
        return
    if window:
        yield _windowed_pairs(items, users, num_items, window)
        return
    import scipy.sparse as sp

    row = np.concatenate([[0], np.cumsum(users[1:] != users[:-1])])  # users are sorted: row index per position
    x = sp.csr_matrix((np.ones(len(items), np.int64), (row, items)), shape=(int(row[-1]) + 1, num_items + 1))
    xc = x.tocsc()
    present = sp.csc_matrix((np.ones_like(xc.data), xc.indices, xc.indptr), shape=xc.shape)
    work = np.asarray(present.T @ np.diff(x.indptr)).ravel()  # candidate pairs per item_a
    cum = np.cumsum(work)
    cuts = np.searchsorted(cum, np.arange(max_pairs, cum[-1], max_pairs), side="right")
    bounds = np.unique(np.concatenate([[1], cuts, [num_items + 1]]))
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        block = (xc[:, lo:hi].T @ x).tocsr()
        block.sort_indices()
        c = block.tocoo()
        a, b = c.row.astype(np.int64) + lo, c.col.astype(np.int64)
        keep = a != b
        if keep.any():
            yield a[keep], b[keep], c.data[keep].astype(np.int64)


def _windowed_pairs(items: np.ndarray, users: np.ndarray, num_items: int, window: int):
    parts_a, parts_b = [], []
    for d in range(1, window + 1):  # pairs (t, t + d) inside one user
        same = users[:-d] == users[d:]
        pa_, pb_ = items[:-d][same], items[d:][same]
        diff = pa_ != pb_
        parts_a += [pa_[diff], pb_[diff]]
        parts_b += [pb_[diff], pa_[diff]]
    code = np.concatenate(parts_a or [np.zeros(0, np.int64)]) * (num_items + 1) + np.concatenate(
        parts_b or [np.zeros(0, np.int64)])
    uniq, n = np.unique(code, return_counts=True)  # sorted codes: sorted by (a, b)
    return uniq // (num_items + 1), uniq % (num_items + 1), n.astype(np.int64)


# ------------------------------------------------------------------------------------------------ prepare


ROW_GROUP = 1 << 20  # rows per Parquet row group (pyarrow's default): interactions are written one at a time
ITEM_BLOCK = 1 << 14  # items rendered and written at once


def prepare(cfg, out: Path | None = None) -> Path:
    """Read `cfg.data`, write the prepared tables into `out` (default `{output_dir}/prepared/`), return it.

    Memory: the reader's columns (int codes, ~30 bytes per interaction) and compact item catalogue, then
    int64 columns of the kept interactions; items and interactions are written in blocks, and the reader's
    data is let go before co-occurrence is counted."""
    t0 = time.time()
    _freed_arrays_back_to_the_system()
    d = cfg.data
    raw, kstats = read_raw(d)
    t_read = time.time() - t0

    counts = np.bincount(raw.user_code, minlength=len(raw.users))
    kept_user = counts >= MIN_INTERACTIONS
    num_users, dropped_users = int(kept_user.sum()), len(raw.users) - int(kept_user.sum())
    if not num_users:
        raise DataError(f"{raw.source}: no user has >= {MIN_INTERACTIONS} interactions after reading (and k-core "
                        f"{d.kcore}) of {raw.num_interactions} interactions by {len(raw.users)} users; "
                        "leave-one-out needs train, valid and test items -- check data.path/data.kcore")
    rows = kept_user[raw.user_code]
    kept = slice(None) if rows.all() else rows  # a view, not a copy, when every user is kept
    codes = raw.item_code[kept]  # kept users' rows in order: users by first appearance, oldest item first
    item_codes = first_appearances(codes, len(raw.items))  # catalogue code of item id 1, 2, ...
    item_of_code = np.zeros(len(raw.items), np.int64)
    item_of_code[item_codes] = np.arange(1, len(item_codes) + 1)
    flat_items = item_of_code[codes]
    del codes, item_of_code
    num_items = len(item_codes)
    lengths = counts[kept_user].astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    max_distinct = max_distinct_per_group(flat_items, offsets)
    del counts, kept_user

    final = Path(out) if out is not None else cfg.out / layout.PREPARED
    with _partial_then_swapped(final) as out:  # prepared/ is never a half-written mix
        _write_items(out / "items.parquet", raw.items, item_codes, d.max_value_chars)
        summary = {
            "name": d.name, "reader": d.reader, "source": raw.source, "path": d.path,
            "users": num_users, "items": num_items, "interactions": int(len(flat_items)),
            "train_interactions": int(len(flat_items) - 2 * num_users),
            "skipped_rows": dict(sorted(raw.skipped.items())),  # bad rows under data.on_bad_row=skip, by reason
            "dropped": {"users_with_fewer_than_3_interactions": dropped_users,
                        "items_without_interactions": len(raw.items) - num_items, **kstats},
            "files": raw.files,
            "kcore": d.kcore, "timestamps_known": bool(raw.has_timestamp.any()),
            "ratings_known": bool(raw.has_rating.any()),
        }
        raw.items = None  # the catalogue is written: let it go
        _write_interactions(out / "interactions.parquet", offsets, flat_items,
                            *(getattr(raw, k)[kept] for k in ("timestamp", "has_timestamp", "rating", "has_rating")))
        del raw, rows, kept, item_codes  # the reader's data is not needed any more

        # leave-one-out: the last item is test, the second last valid, the rest train
        is_train = np.ones(len(flat_items), bool)
        is_train[offsets[1:] - 1] = is_train[offsets[1:] - 2] = False
        train_items = flat_items[is_train]
        del is_train
        train_users = np.repeat(np.arange(1, num_users + 1, dtype=np.int64), lengths - 2)
        train_offsets = np.concatenate([[0], np.cumsum(lengths - 2)])
        pq.write_table(pa.table({
            "user_id": pa.array(np.arange(1, num_users + 1), pa.int64()),
            "train": pa.ListArray.from_arrays(pa.array(train_offsets, pa.int32()), pa.array(train_items, pa.int64())),
            "valid": pa.array(flat_items[offsets[1:] - 2], pa.int64()),
            "test": pa.array(flat_items[offsets[1:] - 1], pa.int64()),
        }), out / "splits.parquet")
        del flat_items
        popularity = np.bincount(train_items, minlength=num_items + 1)[1:]
        pq.write_table(pa.table({"item_id": np.arange(1, num_items + 1, dtype=np.int64), "count": popularity}),
                       out / "popularity.parquet")

        t1 = time.time()
        pairs, with_pairs = _write_cooccurrence(out / "cooccurrence.parquet", train_items, train_users, num_items,
                                                d.cooc_window)
        t_cooc = time.time() - t1

        summary.update({
            "mean_sequence_length": round(float(lengths.mean()), 3), "max_sequence_length": int(lengths.max()),
            "max_distinct_items_per_user": max_distinct,
            "density": round(int(offsets[-1]) / (num_users * num_items), 6),
            "tail_items": int((popularity < d.tail_threshold).sum()), "tail_threshold": d.tail_threshold,
            "short_users": int((lengths < d.short_user_threshold).sum()), "short_user_threshold": d.short_user_threshold,
            "cooccurrence": {"window": d.cooc_window, "pairs": pairs, "split": "train",
                             "items_with_a_cooccurring_item": with_pairs},
            "seconds": {"read": round(t_read, 2), "cooccurrence": round(t_cooc, 2), "total": round(time.time() - t0, 2)},
        })
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info("prepared %s: %d users, %d items, %d interactions in %.1fs -> %s", d.name, num_users, num_items,
             int(offsets[-1]), time.time() - t0, final)
    return final


def _freed_arrays_back_to_the_system() -> None:
    """glibc serves large arrays from mmap (returned to the system when freed) only until the first one is freed;
    then it raises its threshold up to 32 MB and keeps freed arrays of up to that size in its heap, which at a
    million items held ~150 MB of resident memory that nothing used (measured: 1M-item prepare peak 870 -> 730
    MB, same time). A fixed threshold keeps them on mmap. Process-wide; nothing to do off glibc."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: 128 KiB, glibc's default
    except (OSError, AttributeError):
        pass


SCAN_ROWS = 1 << 20  # rows looked at once by the id scans: their sorts' memory stays bounded


def first_appearances(codes: np.ndarray, num_codes: int) -> np.ndarray:
    """The distinct values of `codes` (ints in [0, num_codes)) in order of first appearance; the same as
    `codes[np.sort(np.unique(codes, return_index=True)[1])]`, found one block of rows at a time."""
    seen, order = np.zeros(num_codes, bool), []
    for lo in range(0, len(codes), SCAN_ROWS):
        values, first = np.unique(codes[lo:lo + SCAN_ROWS], return_index=True)
        new = ~seen[values]
        values, first = values[new], first[new]
        order.append(values[np.argsort(first, kind="stable")])
        seen[values] = True
    return np.concatenate(order) if order else np.zeros(0, np.int64)


def max_distinct_per_group(values: np.ndarray, offsets: np.ndarray) -> int:
    """The most distinct values in one group `values[offsets[g]:offsets[g + 1]]`, blocks of whole groups at a
    time (a group larger than a block is a block of its own)."""
    best, g, num_groups = 0, 0, len(offsets) - 1
    while g < num_groups:
        end = max(int(np.searchsorted(offsets, offsets[g] + SCAN_ROWS, side="right")) - 1, g + 1)
        lo, hi = int(offsets[g]), int(offsets[end])
        group = np.repeat(np.arange(end - g, dtype=np.int64), np.diff(offsets[g:end + 1]))
        span = int(values[lo:hi].max()) + 1
        pairs = np.unique(group * span + values[lo:hi])
        best = max(best, int(np.bincount(pairs // span).max()))
        g = end
    return best


def _write_items(path: Path, items, item_codes: np.ndarray, max_value_chars: int) -> None:
    """items.parquet: item ids 1..N (catalogue codes `item_codes`), rendered a block of items at a time."""
    schema = pa.schema([("item_id", pa.int64()), ("raw_id", pa.string()), ("attr_keys", pa.list_(pa.string())),
                        ("attr_values", pa.list_(pa.string())), ("text", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for lo in range(0, len(item_codes), ITEM_BLOCK):
            block = item_codes[lo:lo + ITEM_BLOCK]
            raw_ids, attrs = items.block(block)
            texts = [render_attributes(a, max_value_chars) for a in attrs]
            for r, t, a in zip(raw_ids, texts, attrs):
                if not t:  # readers reject text-less items, so this is a reader bug, not bad input
                    raise ValueError(f"item {r!r} rendered to an empty text; its attributes were {a!r}")
            writer.write_table(pa.table({
                "item_id": pa.array(np.arange(lo + 1, lo + len(block) + 1), pa.int64()),
                "raw_id": pa.array(raw_ids, pa.string()),
                "attr_keys": pa.array([[k for k, _ in a] for a in attrs], pa.list_(pa.string())),
                "attr_values": pa.array([[v for _, v in a] for a in attrs], pa.list_(pa.string())),
                "text": pa.array(texts, pa.string()),
            }, schema=schema), row_group_size=ROW_GROUP)


def _write_interactions(path: Path, offsets: np.ndarray, items: np.ndarray, times: np.ndarray, has_time: np.ndarray,
                        ratings: np.ndarray, has_rating: np.ndarray) -> None:
    """interactions.parquet, one row group at a time: user ids and positions are made per row group from the
    sequences' `offsets`, so no int64 copy of every column is ever held."""
    schema = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("position", pa.int64()),
                        ("timestamp", pa.int64()), ("rating", pa.float32())])
    with pq.ParquetWriter(path, schema) as writer:
        for lo in range(0, len(items), ROW_GROUP):
            at = np.arange(lo, min(lo + ROW_GROUP, len(items)), dtype=np.int64)
            user = np.searchsorted(offsets, at, side="right") - 1  # 0-based user of each row
            part = slice(lo, lo + ROW_GROUP)
            writer.write_table(pa.table([
                pa.array(user + 1), pa.array(items[part]), pa.array(at - offsets[user]),
                pa.array(times[part], pa.int64(), mask=~has_time[part]),
                pa.array(ratings[part].astype(np.float32), pa.float32(), mask=~has_rating[part])], schema=schema),
                row_group_size=ROW_GROUP)


def _write_cooccurrence(path: Path, items: np.ndarray, users: np.ndarray, num_items: int, window: int):
    """Stream the co-occurrence blocks into one Parquet file; returns (pairs, items with a co-occurring item)."""
    schema = pa.schema([("item_a", pa.int64()), ("item_b", pa.int64()), ("count", pa.int64())])
    pairs = with_pairs = 0
    with pq.ParquetWriter(path, schema) as writer:
        for a, b, n in cooccurrence_blocks(items, users, num_items, window):
            writer.write_table(pa.table({"item_a": a, "item_b": b, "count": n}, schema=schema))
            pairs += len(a)
            with_pairs += int(np.count_nonzero(np.diff(a, prepend=-1)))  # blocks never share an item_a
    return pairs, with_pairs


@contextlib.contextmanager
def _partial_then_swapped(final: Path):
    """A fresh `.prepared.partial` folder beside `final`: it replaces `final` when the block finishes and is
    removed when it fails, so `final` is only ever a complete set of files (the old one or the new one)."""
    partial, old = final.with_name(".prepared.partial"), final.with_name(".prepared.old")
    for leftover in (partial, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if final.exists():
        final.rename(old)
    partial.rename(final)
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------------- load


@dataclass
class Prepared:
    path: Path
    items: pa.Table
    interactions: pa.Table
    splits: pa.Table
    summary: dict
    num_items: int
    num_users: int
    train_sequences: list[np.ndarray]  # index u - 1 -> item ids, oldest first
    valid: np.ndarray  # (U,) item id, index u - 1
    test: np.ndarray  # (U,)
    popularity: np.ndarray  # (N + 1,) training counts, index = item id, [0] = 0
    texts: list[str]  # index = item id, [0] = "" (padding)
    cooc_indptr: np.ndarray = field(repr=False)  # CSR over item_a, rows 0..N
    cooc_indices: np.ndarray = field(repr=False)
    cooc_data: np.ndarray = field(repr=False)

    def cooc_counts(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        """(co-occurring item ids, counts) for `item`, most frequent first (ties: lower id first)."""
        lo, hi = self.cooc_indptr[item], self.cooc_indptr[item + 1]
        ids, counts = self.cooc_indices[lo:hi], self.cooc_data[lo:hi]
        order = np.lexsort((ids, -counts))
        return ids[order], counts[order]

    def cooc_matrix(self):
        """The co-occurrence counts as a scipy CSR matrix of shape (N + 1, N + 1)."""
        import scipy.sparse as sp

        n = self.num_items + 1
        return sp.csr_matrix((self.cooc_data, self.cooc_indices, self.cooc_indptr), shape=(n, n))


def load_items(prepared_dir: str | Path, columns: list[str]) -> pa.Table:
    """Only `columns` of prepared/items.parquet, sorted by item_id (what export needs, without the rest)."""
    path = Path(prepared_dir).expanduser() / "items.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `reaemb prepare --config ...` first")
    return pq.read_table(path, columns=columns).sort_by("item_id")


def load_prepared(out_dir: str | Path) -> Prepared:
    """Load `{out_dir}/prepared/` (or `out_dir` itself when it is the prepared folder)."""
    p = Path(out_dir).expanduser()
    if not (p / "summary.json").is_file() and (p / layout.PREPARED / "summary.json").is_file():
        p = p / layout.PREPARED
    missing = [f for f in FILES if not (p / f).is_file()]
    if missing:
        raise FileNotFoundError(f"prepared data in {p} lacks {', '.join(missing)}; run `reaemb prepare --config ...` "
                                "first (or pass the output_dir it wrote to)")
    summary = json.loads((p / "summary.json").read_text())
    items = pq.read_table(p / "items.parquet")
    splits = pq.read_table(p / "splits.parquet")
    n = items.num_rows
    train = splits.column("train").combine_chunks()
    values, offs = train.values.to_numpy(), train.offsets.to_numpy()
    pop = pq.read_table(p / "popularity.parquet")
    popularity = np.zeros(n + 1, np.int64)
    popularity[pop.column("item_id").to_numpy()] = pop.column("count").to_numpy()
    co = pq.read_table(p / "cooccurrence.parquet")
    a, b, c = (co.column(k).to_numpy() for k in ("item_a", "item_b", "count"))
    return Prepared(
        path=p, items=items, interactions=pq.read_table(p / "interactions.parquet"), splits=splits, summary=summary,
        num_items=n, num_users=splits.num_rows,
        train_sequences=[values[offs[i]:offs[i + 1]] for i in range(len(offs) - 1)],
        valid=splits.column("valid").to_numpy(), test=splits.column("test").to_numpy(), popularity=popularity,
        texts=[""] + items.column("text").to_pylist(),
        cooc_indptr=np.searchsorted(a, np.arange(n + 2)), cooc_indices=b, cooc_data=c,
    )
