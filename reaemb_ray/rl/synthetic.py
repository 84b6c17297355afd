"""A tiny prepared dataset with obvious co-occurrence structure, for tests and CPU demos of CRRL.

`clusters` groups of `per_cluster` items; items in one group share a brand and category and co-occur
(count 3 + a pair-specific bonus, so positives are unique); items of different groups never co-occur.
Writes the contract files CRRL reads: items.parquet, cooccurrence.parquet, popularity.parquet, summary.json.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

BRANDS = ["Nivea", "Olay", "Dove", "Maybelline", "Neutrogena", "Revlon", "Acme", "Burt's Bees"]
KINDS = ["lotion", "shampoo", "lipstick", "mascara", "cleanser", "serum", "nail polish", "sunscreen"]
CATS = ["Skin Care", "Hair Care", "Makeup", "Face", "Body", "Eyes", "Lips", "Fragrance"]


def write_synthetic_prepared(out_dir, clusters: int = 8, per_cluster: int = 4) -> Path:
    p = Path(out_dir)
    p.mkdir(parents=True, exist_ok=True)
    ids, texts, a, b, c = [], [], [], [], []
    for k in range(clusters):
        members = [k * per_cluster + j + 1 for j in range(per_cluster)]
        for j, v in enumerate(members):
            brand, kind, cat = BRANDS[k % 8], KINDS[(k + j) % 8], CATS[k % 8]
            ids.append(v)
            texts.append(f"title is {brand} {kind} {j}; brand is {brand}; categories is Beauty, {cat}")
        for x in members:
            for y in members:
                if x != y:
                    a.append(x); b.append(y); c.append(3 + (x + y) % 5)
    n = len(ids)
    pq.write_table(pa.table({"item_id": pa.array(ids, pa.int64()), "raw_id": [f"i{v}" for v in ids],
                             "attr_keys": [["title", "brand", "categories"]] * n,
                             "attr_values": [t.split("; ") for t in texts], "text": texts}), p / "items.parquet")
    pq.write_table(pa.table({"item_a": pa.array(a, pa.int64()), "item_b": pa.array(b, pa.int64()),
                             "count": pa.array(c, pa.int64())}), p / "cooccurrence.parquet")
    pq.write_table(pa.table({"item_id": pa.array(ids, pa.int64()), "count": pa.array([5] * n, pa.int64())}),
                   p / "popularity.parquet")
    (p / "summary.json").write_text(json.dumps({"items": n, "synthetic": True}))
    return p
