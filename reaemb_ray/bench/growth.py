"""How prepare, export and full-ranking evaluation grow with the catalogue: synthetic catalogues of 10k, 100k and
1M items, wall time and peak memory of each piece, each piece in a fresh process.

Synthetic data is fine for a cost curve and never for quality. The catalogue: N items in groups of 50 (a brand
and a kind each), N users, each starting at a different item (so every item is in the catalogue) and drawing
3-7 more items of that item's group: about 6 N interactions, co-occurrence inside groups. It is written in the
RecBole atomic format and read by `prepare` like any dataset.

Pieces (what a 1M-item production catalogue would run):
  prepare   `reaemb_ray.data.prepare.prepare`: reading, ids, splits, co-occurrence, the Parquet files
  export    the export stage (Ray Data, shards, the final table) with a tiny random model over 8-token prompts:
            the model's cost per item is constant by construction, the rest is the pipeline's
  evaluate  full ranking (`srs.trainer.rank_targets`: HR/NDCG from every item, history excluded, and 100
            sampled negatives) of a fixed 2,048 users by a SASRec over the exported table, read as `reaemb
            evaluate` reads it (`srs.encoders.load_embedding_table`); training is left out (its cost per epoch
            follows the interactions)
Memory is the peak resident memory of the piece's process tree (an embedded Ray and its workers included for
export), sampled every 0.2 s, with the same measure taken just before the work starts as the baseline.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from reaemb_ray import layout

SIZES = (10_000, 100_000, 1_000_000)
PIECES = ("prepare", "export", "evaluate")
GROUP = 50
EVAL_USERS = 2048
_BRANDS = ["Nivea", "Olay", "Dove", "Maybelline", "Neutrogena", "Revlon", "Acme", "Burt's Bees", "Clinique", "Garnier"]
_KINDS = ["lotion", "shampoo", "lipstick", "mascara", "cleanser", "serum", "nail polish", "sunscreen", "toner"]


def item_fields(i: int) -> tuple[str, str, str]:
    """(title, brand, category) of synthetic item i; a group of 50 items shares brand and category."""
    g = (i - 1) // GROUP
    brand, kind = _BRANDS[g % len(_BRANDS)], _KINDS[(g // len(_BRANDS)) % len(_KINDS)]
    return f"{brand} {kind} {i}", brand, kind


def item_text(i: int) -> str:
    title, brand, kind = item_fields(i)
    return f"title is {title}; brand is {brand}; categories is Beauty, {kind}"


def synthetic_sequences(num_items: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(user ids, item ids) flat, user-major: user u starts at item perm[u] and adds 3-7 items of its group."""
    rng = np.random.default_rng(seed)
    first = rng.permutation(num_items) + 1
    extra = rng.integers(3, 8, num_items)
    lengths = extra + 1
    users = np.repeat(np.arange(1, num_items + 1), lengths)
    group_start = ((np.repeat(first, lengths) - 1) // GROUP) * GROUP
    items = group_start + rng.integers(0, GROUP, len(users)) + 1
    items = np.minimum(items, num_items)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    items[starts] = first
    return users, items


def write_catalogue(folder: Path, num_items: int, seed: int = 0) -> Path:
    """`growth.inter` and `growth.item` (RecBole atomic) for `num_items` items; reused when present."""
    folder.mkdir(parents=True, exist_ok=True)
    inter, item = folder / "growth.inter", folder / "growth.item"
    if inter.exists() and item.exists():
        return folder
    users, items = synthetic_sequences(num_items, seed)
    partial = {p: p.with_name(p.name + ".partial") for p in (inter, item)}
    with open(partial[item], "w") as f:
        f.write("item_id:token\ttitle:token_seq\tbrand:token\tcategories:token\n")
        f.writelines("{}\t{}\t{}\tBeauty, {}\n".format(i, *item_fields(i)) for i in range(1, num_items + 1))
    with open(partial[inter], "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        f.writelines(f"{u}\t{i}\t{t}\n" for u, i, t in zip(users.tolist(), items.tolist(), range(len(users))))
    for path, tmp in partial.items():
        tmp.replace(path)
    return folder


def growth_config(work: Path, num_items: int, backbone: str):
    from reaemb_ray.config import load_config

    return load_config(None, [
        f"output_dir={work / str(num_items)}", "data.reader=recbole_atomic", f"data.path={work / 'raw' / str(num_items)}",
        "data.name=growth", "data.item_noun=beauty", f"model.backbone={backbone}", "model.max_length=64",
        "export.method=raw_llm", "export.batch_size=256", "export.num_actors=1", "export.cpus_per_actor=2",
        "export.shard_size=4096", "ray.num_cpus=2", "srs.hidden=64", "srs.max_len=50", "srs.batch_size=256"])


def tiny_export_model(work: Path) -> Path:
    """A random 2-layer, 64-wide Llama whose tokenizer merges whole phrases (rl/synthetic.py): ~8-token prompts."""
    from reaemb_ray.rl.synthetic import write_compact_tiny_backbone

    return write_compact_tiny_backbone(work / "export_model", {i: item_text(i) for i in range(1, 5001)})


# ------------------------------------------------------------------------------------------- one piece


def _prepare(cfg) -> dict:
    from reaemb_ray.data.prepare import prepare

    out = prepare(cfg)
    return json.loads((out / "summary.json").read_text())["cooccurrence"]


def _export(cfg) -> dict:
    from reaemb_ray.stages.export import run_export

    s = run_export(cfg, fresh=True)
    return {k: s[k] for k in ("items_per_s", "startup_seconds", "dim", "shards")}


def _evaluate(cfg) -> dict:
    import pyarrow.parquet as pq
    import torch

    from reaemb_ray.srs.encoders import build_encoder, load_embedding_table
    from reaemb_ray.srs.metrics import sample_negatives_per_user
    from reaemb_ray.srs.models import build_model
    from reaemb_ray.srs.trainer import rank_targets

    n = pq.ParquetFile(cfg.out / layout.PREPARED / "items.parquet").metadata.num_rows
    table = load_embedding_table(cfg.out / layout.embeddings_table("raw_llm"), n)  # what `reaemb evaluate` reads
    splits = pq.ParquetFile(cfg.out / layout.PREPARED / "splits.parquet")
    first = next(splits.iter_batches(batch_size=EVAL_USERS, columns=["train", "valid", "test"])).to_pydict()
    inputs = [np.append(t, v).astype(np.int64) for t, v in zip(first["train"], first["valid"])]
    targets = np.asarray(first["test"], np.int64)
    negatives = sample_negatives_per_user([np.append(s, t) for s, t in zip(inputs, targets)], n, 100, 0)
    torch.manual_seed(0)
    model = build_model("sasrec", build_encoder(n, cfg.srs.hidden, table, cfg.srs.adapter_hidden), cfg.srs)
    t0 = time.perf_counter()
    full, sampled = rank_targets(model, inputs, targets, cfg.srs.batch_size, True, cfg.srs.chunk_tokens, negatives)
    return {"users": len(inputs), "rank_seconds": round(time.perf_counter() - t0, 2),
            "mean_full_rank": float(full.mean()), "mean_sampled_rank": float(sampled.mean())}


def run_piece(piece: str, work: Path, num_items: int, backbone: str) -> dict:
    """Measure one piece in this process: seconds, peak and baseline memory, machine load."""
    import torch

    from reaemb_ray.bench.load import machine_load
    from reaemb_ray.bench.memory import peak_memory
    from reaemb_ray.runtime import init_ray

    torch.set_num_threads(2)
    cfg = growth_config(work, num_items, backbone)
    if piece == "export":
        init_ray(cfg.ray)  # started before the baseline: Ray's own memory is not the export's
    fn = {"prepare": _prepare, "export": _export, "evaluate": _evaluate}[piece]
    with machine_load() as load, peak_memory() as mem:
        t0 = time.perf_counter()
        extra = fn(cfg)
        seconds = time.perf_counter() - t0
    return {"piece": piece, "items": num_items, "seconds": round(seconds, 2),
            "us_per_item": round(seconds / num_items * 1e6, 2), "peak_mb": mem["peak_mb"],
            "baseline_mb": mem["baseline_mb"], "added_mb": mem["delta_mb"], "load": load, **extra}


# ------------------------------------------------------------------------------------------- the section


def growth(work: Path, sizes=SIZES, pieces=PIECES) -> dict:
    """Every (size, piece), each in a fresh `python -m reaemb_ray.bench.growth` process; finished pieces are kept
    in `work/<size>/growth_<piece>.json` so an interrupted run resumes."""
    work = Path(work)
    backbone = str(tiny_export_model(work))
    root = str(Path(__file__).resolve().parents[2])  # the pieces import this checkout, installed or not
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p))
    rows = []
    for n in sizes:
        write_catalogue(work / "raw" / str(n), n)
        for piece in pieces:
            done = work / str(n) / f"growth_{piece}.json"
            if not done.exists():
                res = subprocess.run([sys.executable, "-m", "reaemb_ray.bench.growth", piece, str(work), str(n), backbone],
                                     capture_output=True, text=True, env=env)
                if res.returncode != 0:
                    raise RuntimeError(f"growth {piece} at {n} items failed:\n{res.stderr[-3000:]}")
                done.write_text(res.stdout.strip().splitlines()[-1])
            rows.append(json.loads(done.read_text()))
    return {"rows": rows, "summary": growth_summary(rows)}


def growth_summary(rows: list[dict]) -> dict:
    """Per piece: time per item at the largest size over the smallest, and peak memory at the largest over the
    next one (the issue's bounds: within 2x from 10k to 1M, and from 100k to 1M)."""
    out = {}
    for piece in {r["piece"] for r in rows}:
        by = sorted((r for r in rows if r["piece"] == piece), key=lambda r: r["items"])
        if len(by) < 2:
            continue
        out[piece] = {"us_per_item_largest_over_smallest": by[-1]["us_per_item"] / by[0]["us_per_item"],
                      "peak_largest_over_previous": by[-1]["peak_mb"] / by[-2]["peak_mb"],
                      "added_largest_over_previous": by[-1]["added_mb"] / max(by[-2]["added_mb"], 1.0)}
    return out


if __name__ == "__main__":
    piece, work, n, backbone = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    print(json.dumps(run_piece(piece, work, n, backbone)))
