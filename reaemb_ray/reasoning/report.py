"""What a person reads of the explicit-reasoning mode: training curves, and a sample of generated reasons."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SAMPLES_FILE = "samples.json"


def plot_curves(rows_by_fold: dict[int, list[dict]], path: Path) -> None:
    """Format-valid share, accuracy (comparable across batches) and reward over the learner steps, per fold."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [("valid_share", "format-valid share"), ("accuracy_base", "accuracy exp(-e^2), 0 if unanswered"),
              ("accuracy_mean", "accuracy reward (batch min-max)"), ("abs_error", "|prediction - truth| (answered)"),
              ("reward_mean", "total reward"), ("kl_ref", "KL to the base model / token")]
    if not any(r.get("kl_ref") is not None for rows in rows_by_fold.values() for r in rows):
        series[-1] = ("kl_behaviour", "KL to the behaviour policy / token")  # reason.kl_beta = 0
    fig, axes = plt.subplots(2, 3, figsize=(15, 6.5))
    for ax, (key, title) in zip(axes.flat, series):
        for fold, rows in sorted(rows_by_fold.items()):
            pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                x, y = zip(*pts)
                ax.plot(x, y, marker=".", alpha=0.35, label=f"fold {fold}")
                if len(y) >= 5:  # a running mean: single batches of a few prompts are noisy
                    w = max(3, len(y) // 8)
                    ax.plot(x[w - 1:], np.convolve(y, np.ones(w) / w, mode="valid"), color=ax.lines[-1].get_color())
        ax.set_title(title)
        ax.set_xlabel("learner step")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def pick_samples(reasons: list[dict], n: int, seed: int) -> list[dict]:
    """n items drawn at random (seeded) with their reasoning, answer and truth: what a reader sees is typical."""
    order = np.random.default_rng(seed).permutation(len(reasons))[:n]
    return [reasons[i] for i in sorted(order, key=lambda i: reasons[i]["item_id"])]


def samples_markdown(samples: list[dict], task: str) -> str:
    truth = "mean training rating (rounded)" if task == "rating" else "popular (1) or not (0)"
    lines = ["## Explicit reasoning: a sample of generated reasons", "",
             f"Out-of-fold item-level reasoning (task `{task}`; truth = {truth}). `valid` = the reply is one JSON "
             "object with think and answer.", "",
             "| item | text | think | answer | truth | valid |", "|---|---|---|---|---|---|"]
    cell = lambda s: str(s).replace("|", "/").replace("\n", " ")  # noqa: E731
    for s in samples:
        think = s["think"] if s["valid"] else s["text"]
        lines.append(f"| {s['item_id']} | {cell(s['item_text'])[:120]} | {cell(think)[:400]} | {cell(s['answer'])} | "
                     f"{cell(s['truth'])} | {'yes' if s['valid'] else 'no'} |")
    return "\n".join(lines) + "\n"


def append_samples(samples_json: Path, report_md: Path) -> None:
    """Append the reason stage's sample of reasons (`reason/samples.json`) to the evaluation report."""
    rec = json.loads(Path(samples_json).read_text())
    with open(report_md, "a") as fh:
        fh.write("\n" + samples_markdown(rec["samples"], rec["task"]))
