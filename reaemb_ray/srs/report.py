"""Evaluation records -> report.json / report.md (mean +- std over seeds) / PNG plots."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from reaemb_ray.srs.metrics import hit_ndcg

GROUPS = ["overall", "tail", "popular", "short", "long"]


def run_records(method: str, backbone: str, seed: int, ranks: dict[str, np.ndarray],
                groups: dict[str, np.ndarray], ks: list[int]) -> list[dict]:
    """One record per protocol x group x metric x k. `ranks`: protocol -> (U,) ranks; `groups`: name -> mask."""
    out = []
    for protocol, r in ranks.items():
        for group, mask in groups.items():
            for k in ks:
                hit, ndcg = hit_ndcg(r[mask], k)
                for metric, v in (("HR", hit), ("NDCG", ndcg)):
                    out.append({"method": method, "backbone": backbone, "seed": seed, "protocol": protocol,
                                "group": group, "metric": metric, "k": k,
                                "value": float(v.mean()) if len(v) else float("nan"), "n_users": int(mask.sum())})
    return out


def _mean_std(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    if np.isnan(v).all():
        return "n/a"
    return f"{np.nanmean(v):.4f} ± {np.nanstd(v):.4f}" if len(v) > 1 else f"{v[0]:.4f}"


def write_markdown(records: list[dict], path: Path, skipped: list[str] | None = None, k: int = 10) -> None:
    """One table per backbone x protocol: rows = methods, columns = group x {HR@k, NDCG@k}."""
    cell: dict[tuple, list[float]] = defaultdict(list)
    n_users: dict[tuple, int] = {}
    for r in records:
        if r["k"] == k:
            key = (r["backbone"], r["protocol"], r["method"], r["group"], r["metric"])
            cell[key].append(r["value"])
            n_users[(r["backbone"], r["protocol"], r["group"])] = r["n_users"]
    methods = list(dict.fromkeys(r["method"] for r in records))
    seeds = sorted({r["seed"] for r in records})
    lines = ["# Evaluation report", "",
             f"HR@{k} / NDCG@{k}, mean ± std over seeds {seeds}. `full`: ranked against every item; "
             "`sampled100`: against 100 sampled negatives (paper protocol). Groups: tail/popular by the test "
             "item's training popularity, short/long by the user's sequence length. See docs/EVALUATION.md.", ""]
    for backbone in dict.fromkeys(r["backbone"] for r in records):
        for protocol in dict.fromkeys(r["protocol"] for r in records):
            groups = [g for g in GROUPS if (backbone, protocol, g) in n_users]
            lines += [f"## {backbone}, {protocol}", "",
                      "| method | " + " | ".join(f"{g} HR@{k} | {g} NDCG@{k}" for g in groups) + " |",
                      "|---|" + "---|" * (2 * len(groups)),
                      "| users | " + " | ".join(f"{n_users[(backbone, protocol, g)]} | " for g in groups) + "|"]
            for m in methods:
                row = []
                for g in groups:
                    for metric in ("HR", "NDCG"):
                        vals = cell.get((backbone, protocol, m, g, metric))
                        row.append(_mean_std(vals) if vals else "-")
                lines.append(f"| {m} | " + " | ".join(row) + " |")
            lines.append("")
    if skipped:
        lines += ["## Skipped", ""] + [f"- {s}" for s in skipped] + [""]
    path.write_text("\n".join(lines))


def plot_curves(curves: dict[str, list[dict]], path: Path) -> None:
    """Validation NDCG@10 per epoch, one line per (method, backbone, seed) run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, curve in curves.items():
        validated = [c for c in curve if "val_ndcg10" in c]  # srs.eval_every > 1 validates some epochs only
        ax.plot([c["epoch"] for c in validated], [c["val_ndcg10"] for c in validated], marker=".", label=name)
    ax.set(xlabel="epoch", ylabel="validation NDCG@10 (full ranking)", title="Validation curves")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_popularity(buckets: dict[tuple[str, str], list[list[dict]]], path: Path) -> None:
    """NDCG@10 (full ranking) by the test item's training popularity; bars = methods, one panel per backbone.

    buckets[(method, backbone)] = one bucket list per seed (from metrics.ndcg_by_popularity).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backbones = list(dict.fromkeys(b for _, b in buckets))
    methods = list(dict.fromkeys(m for m, _ in buckets))
    fig, axes = plt.subplots(1, len(backbones), figsize=(6 * len(backbones), 4.5), squeeze=False)
    for ax, backbone in zip(axes[0], backbones):
        labels = None
        width = 0.8 / max(1, len(methods))
        for j, m in enumerate(methods):
            runs = buckets.get((m, backbone))
            if not runs:
                continue
            labels = [b["bucket"] for b in runs[0]]
            vals = np.nanmean([[b["value"] for b in run] for run in runs], axis=0)
            ax.bar(np.arange(len(labels)) + j * width, vals, width, label=m)
        if labels:
            ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels, rotation=30)
        ax.set(xlabel="test item training popularity", ylabel="NDCG@10 (full)", title=backbone)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(records: list[dict], path: Path) -> None:
    path.write_text(json.dumps(records, indent=1))
