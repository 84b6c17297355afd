"""Cheap checks of an item-embedding table, before any recommender is trained on it.

- anisotropy: the mean cosine between random pairs of rows (pooled LM embeddings: ~0.99; centring or
  whitening brings it to ~0).
- shift (`--against METHOD`): how far a table moved from another table of the same items, e.g. CRRL's from the
  LRCL it started from: ||T - R||_F / ||R||_F over the item rows, and the mean row-wise cosine of the two after
  each is centred on its own catalogue mean (1.0: the same directions).
- co-occurrence retrieval: for a sample of items that co-occur with something in the training split, where
  the item's top partner (the item it co-occurs with most) ranks among all other items by centred cosine.
  hit@k is the share of sampled items whose top partner is among their k nearest neighbours (chance: k / N).
  It asks the question CRRL's reward asks, on the whole catalogue instead of 1 + n candidates.

Used by the experiments in docs/RESULTS.md, on the tables of a finished run:

    python -m reaemb_ray.table_quality outputs/beauty-fullrank-train lrcl crrl    # one JSON line per table
    python -m reaemb_ray.table_quality outputs/beauty-fullrank-train crrl --against lrcl
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from reaemb_ray.conditioning import center, l2, mean_pairwise_cosine


def top_partners(item_a, item_b, count) -> dict[int, int]:
    """item -> the item it co-occurs with most (ties: the smaller id), from symmetric co-occurrence pairs."""
    a, b, c = (np.asarray(x, dtype=np.int64) for x in (item_a, item_b, count))
    order = np.lexsort((b, -c, a))
    a, b = a[order], b[order]
    first = np.r_[True, a[1:] != a[:-1]]
    return dict(zip(a[first].tolist(), b[first].tolist()))


def partner_ranks(table: np.ndarray, partners: dict[int, int], sample: int = 2000, seed: int = 0,
                  block: int = 512) -> np.ndarray:
    """0-based rank of each sampled item's top partner among all other items by centred cosine.
    `table` is (N+1, d) with row = item id (row 0 padding, never ranked)."""
    x = np.asarray(table[1:], dtype=np.float32)
    x = x - x.mean(0)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    items = np.asarray(sorted(partners), dtype=np.int64)
    if len(items) > sample:
        items = np.sort(np.random.default_rng(seed).choice(items, sample, replace=False))
    ranks = np.empty(len(items), dtype=np.int64)
    for lo in range(0, len(items), block):
        q = items[lo:lo + block]
        s = x[q - 1] @ x.T
        s[np.arange(len(q)), q - 1] = -np.inf  # never the item itself
        p = np.asarray([partners[int(v)] for v in q]) - 1
        ranks[lo:lo + len(q)] = (s > s[np.arange(len(q)), p][:, None]).sum(1)
    return ranks


def table_quality(table: np.ndarray, item_a, item_b, count, sample: int = 2000, seed: int = 0) -> dict:
    """The checks above as one JSON-ready record."""
    ranks = partner_ranks(table, top_partners(item_a, item_b, count), sample, seed)
    n = table.shape[0] - 1
    return {"mean_pairwise_cosine": round(mean_pairwise_cosine(table[1:], seed=seed), 4),
            "cooccurrence_hit@10": round(float(np.mean(ranks < 10)), 4),
            "cooccurrence_hit@100": round(float(np.mean(ranks < 100)), 4),
            "cooccurrence_median_rank": float(np.median(ranks)), "chance_hit@10": round(10 / max(1, n - 1), 5),
            "items_checked": int(len(ranks))}


def table_shift(table: np.ndarray, reference: np.ndarray) -> dict:
    """How far `table` moved from `reference` (both (N+1, d), row 0 padding, left out); see the top."""
    t, r = (np.asarray(x[1:], dtype=np.float64) for x in (table, reference))
    if t.shape != r.shape:
        raise ValueError(f"tables of different shapes {t.shape} and {r.shape}: not the same items")
    cos = (l2(center(t)) * l2(center(r))).sum(1)
    return {"moved": round(float(np.linalg.norm(t - r) / max(np.linalg.norm(r), 1e-12)), 6),
            "centred_cosine": round(float(cos.mean()), 6)}


def main(argv: list[str] | None = None) -> None:
    """Print `table_quality` of each method's exported table in a local output folder."""
    from reaemb_ray import layout
    from reaemb_ray.rl.policy import load_cooccurrence
    from reaemb_ray.srs.encoders import load_embedding_table

    parser = argparse.ArgumentParser(prog="python -m reaemb_ray.table_quality", description=main.__doc__)
    parser.add_argument("output_dir", type=Path, help="a finished run's output folder (local)")
    parser.add_argument("methods", nargs="+", help="methods whose embeddings/<method>/ table to check")
    parser.add_argument("--sample", type=int, default=2000, help="items whose top partner is ranked")
    parser.add_argument("--against", metavar="METHOD", help="also report how far each table moved from this one")
    args = parser.parse_args(argv)
    prepared = args.output_dir / layout.PREPARED
    tables = {m: args.output_dir / layout.embeddings_table(m) for m in args.methods}
    reference = args.output_dir / layout.embeddings_table(args.against) if args.against else None
    needed = [prepared / "summary.json", *tables.values()] + ([reference] if reference else [])
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        sys.exit(f"table_quality: {', '.join(missing)} not found; give a finished run's folder and methods it "
                 "exported (reaemb run / reaemb export write them)")
    num_items = json.loads((prepared / "summary.json").read_text())["items"]
    a, b, c = load_cooccurrence(prepared)
    ref = load_embedding_table(reference, num_items) if reference else None
    for method, path in tables.items():
        table = load_embedding_table(path, num_items)
        quality = table_quality(table, a, b, c, sample=args.sample)
        shift = {f"vs_{args.against}": table_shift(table, ref)} if reference else {}
        print(json.dumps({"method": method, **quality, **shift}))


if __name__ == "__main__":
    main()
