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


def versus_id(records: list[dict], k: int = 10, protocol: str = "full") -> list[dict]:
    """Each method against the ID-only recommender of the same backbone: NDCG@k overall and on tail items,
    mean and std over seeds, relative change, and whether the gap exceeds both standard deviations (a gain
    counts only beyond the seeds' spread, and only with >= 2 seeds on both sides)."""
    vals: dict[tuple, list[float]] = defaultdict(list)
    for r in records:
        if r["k"] == k and r["metric"] == "NDCG" and r["protocol"] == protocol and r["group"] in ("overall", "tail"):
            vals[(r["backbone"], r["method"], r["group"])].append(r["value"])
    out = []
    for (backbone, method, group), v in vals.items():
        base = vals.get((backbone, "id", group))
        if method == "id" or not base:
            continue
        m, s, bm, bs = np.mean(v), np.std(v), np.mean(base), np.std(base)
        out.append({"backbone": backbone, "method": method, "group": group, "mean": float(m), "std": float(s),
                    "seeds": len(v), "id_mean": float(bm), "id_std": float(bs), "id_seeds": len(base),
                    "relative": float(m / bm - 1) if bm else float("nan"),
                    "beyond_spread": bool(len(v) > 1 and len(base) > 1 and abs(m - bm) > max(s, bs))})
    return out


def _verdict_lines(records: list[dict], k: int) -> list[str]:
    rows = versus_id(records, k)
    if not rows:
        return []
    lines = [f"## Against the ID-only recommender (full ranking, NDCG@{k})", "",
             "| backbone | method | overall | vs ID | tail | vs ID |", "|---|---|---|---|---|---|"]
    by = {(r["backbone"], r["method"], r["group"]): r for r in rows}
    for backbone, method in dict.fromkeys((r["backbone"], r["method"]) for r in rows):
        cells = []
        for g in ("overall", "tail"):
            r = by.get((backbone, method, g))
            if r is None:
                cells += ["-", "-"]
                continue
            mark = "" if r["seeds"] < 2 or r["id_seeds"] < 2 else (" (beyond both stds)" if r["beyond_spread"]
                                                                  else " (within the spread)")
            rel = "n/a (ID scores 0)" if r["relative"] != r["relative"] else f"{100 * r['relative']:+.1f}%{mark}"
            cells += [f"{r['mean']:.4f} ± {r['std']:.4f}", rel]
        lines.append(f"| {backbone} | {method} | " + " | ".join(cells) + " |")
    for backbone in dict.fromkeys(r["backbone"] for r in rows):
        ref = next(r for r in rows if r["backbone"] == backbone and r["group"] == "overall")
        lines.append(f"- ID-only {backbone}: NDCG@{k} {ref['id_mean']:.4f} ± {ref['id_std']:.4f} ({ref['id_seeds']} seeds)")
    return lines + [""]


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
    lines += _verdict_lines(records, k)
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
