"""The results table of docs/RESULTS.md from a finished `reaemb run` (its `eval/` folder).

    python -m reaemb_ray.results OUTPUT_DIR DEST_DIR [--title TEXT]

Writes DEST_DIR/table.md (rows = methods; columns = recommender x protocol x {overall, tail, popular}, one
table for HR@10 and one for NDCG@10, mean ± std over seeds), DEST_DIR/report.json (every record) and
DEST_DIR/ndcg_by_popularity.png (full-ranking NDCG@10 by the test item's training popularity).
"""
from __future__ import annotations

import argparse
import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np

from reaemb_ray import layout

ROW_ORDER = ["id", "raw_llm", "llmemb", "lrcl", "crrl", "reason", "crrl-paper-cooccurrence", "crrl-gaussian-srs",
             "crrl-paper-srs", "crrl-gaussian-mix", "crrl-paper-mix"]
ROW_LABEL = {
    "id": "ID-only SRS", "raw_llm": "raw LLM (pooled, no training)", "llmemb": "LLMEmb-style contrastive",
    "lrcl": "LRCL", "crrl": "LRCL+CRRL", "reason": "RecCoT (explicit reasoning, MiniLM)",
    "crrl-paper-cooccurrence": "LRCL+CRRL (paper, cooccurrence)", "crrl-gaussian-srs": "LRCL+CRRL (gaussian, srs)",
    "crrl-paper-srs": "LRCL+CRRL (paper, srs)", "crrl-gaussian-mix": "LRCL+CRRL (gaussian, mix)",
    "crrl-paper-mix": "LRCL+CRRL (paper, mix)",
}
BACKBONES = ["sasrec", "gru4rec", "bert4rec"]
GROUPS = ["overall", "tail", "popular"]


def aggregate(records: list[dict], k: int = 10) -> dict[tuple, list[float]]:
    """(method, backbone, protocol, group, metric) -> values over seeds."""
    cells: dict[tuple, list[float]] = defaultdict(list)
    for r in records:
        if r["k"] == k and r["group"] in GROUPS:
            cells[(r["method"], r["backbone"], r["protocol"], r["group"], r["metric"])].append(r["value"])
    return cells


def _fmt(values: list[float] | None) -> str:
    if not values:
        return "–"
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.4f}±{v.std():.4f}" if len(v) > 1 else f"{v[0]:.4f}"


def table(records: list[dict], metric: str, k: int = 10) -> str:
    cells = aggregate(records, k)
    methods = [m for m in ROW_ORDER if any(c[0] == m for c in cells)]
    methods += sorted({c[0] for c in cells} - set(methods))
    backbones = [b for b in BACKBONES if any(c[1] == b for c in cells)]
    protocols = sorted({c[2] for c in cells}, key=lambda p: (p != "full", p))
    cols = [(b, p, g) for b in backbones for p in protocols for g in GROUPS]
    head = "| method | seeds | " + " | ".join(f"{b} {p} {g}" for b, p, g in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    for m in methods:
        seeds = max((len(v) for c, v in cells.items() if c[0] == m), default=0)
        row = [_fmt(cells.get((m, b, p, g, metric))) for b, p, g in cols]
        lines.append(f"| {ROW_LABEL.get(m, m)} | {seeds} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def popularity_plot(eval_dir: Path, dest: Path, backbone: str = "sasrec") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_method: dict[str, list[list[dict]]] = defaultdict(list)
    for f in sorted((eval_dir / layout.EVAL_RUNS).glob(f"*__{backbone}__seed*.json")):
        method = f.name.split("__")[0]
        per_method[method].append(json.loads(f.read_text())["popularity_buckets"])
    if not per_method:
        return
    fig, ax = plt.subplots(figsize=(8, 4.5))
    methods = [m for m in ROW_ORDER if m in per_method] + sorted(set(per_method) - set(ROW_ORDER))
    buckets = [b["bucket"] for b in next(iter(per_method.values()))[0]]
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        vals = np.array([[b["value"] for b in run] for run in per_method[m]])
        ax.bar(np.arange(len(buckets)) + i * width, vals.mean(0), width, yerr=vals.std(0) if len(vals) > 1 else None,
               label=ROW_LABEL.get(m, m))
    ax.set_xticks(np.arange(len(buckets)) + 0.4 - width / 2, buckets)
    ax.set_xlabel("test item's training popularity (interactions)")
    ax.set_ylabel(f"NDCG@10, full ranking ({backbone})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(dest, dpi=120)
    plt.close(fig)


def write(output_dir: Path, dest: Path, title: str) -> Path:
    eval_dir = output_dir / layout.EVAL
    report = eval_dir / layout.REPORT_JSON
    if not report.exists():
        raise FileNotFoundError(f"{report} not found; run `reaemb run --config ...` (or `reaemb evaluate`) first")
    records = json.loads(report.read_text())
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(report, dest / "report.json")
    popularity_plot(eval_dir, dest / "ndcg_by_popularity.png")
    parts = [f"# {title}", "", "Mean ± std over seeds; `full` ranks against every item, `sampled100` against 100 "
             "sampled negatives. tail = test item with < tail_threshold training interactions.", ""]
    for metric in ("HR", "NDCG"):
        parts += [f"## {metric}@10", "", table(records, metric), ""]
    parts += ["![NDCG@10 by item popularity](ndcg_by_popularity.png)", ""]
    (dest / "table.md").write_text("\n".join(parts))
    return dest / "table.md"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m reaemb_ray.results", description=__doc__.splitlines()[0])
    p.add_argument("output_dir", type=Path)
    p.add_argument("dest", type=Path)
    p.add_argument("--title", default="Results")
    a = p.parse_args(argv)
    print(write(a.output_dir.expanduser(), a.dest, a.title))


if __name__ == "__main__":
    main()
