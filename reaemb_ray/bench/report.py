"""The bench's JSON as Markdown tables and the growth plot (written beside the JSON by `reaemb bench --out`)."""
from __future__ import annotations

from pathlib import Path


def _load(load: dict | None) -> str:
    if not load:
        return ""
    return (f"load {load['loadavg_1min_before']:.1f}->{load['loadavg_1min_after']:.1f}, "
            f"others {100 * load['others_cpu_share']:.0f}% of the cores")


def _spread(r: dict) -> str:
    return f"**{r['median']:.2f}x** ({r['min']:.2f}-{r['max']:.2f})"


def _times(value, fmt: str) -> str:
    return "not timed" if value is None else fmt.format(value)


def markdown(result: dict) -> str:
    """One table per measured section, every ratio as the median of its rounds with the range."""
    lines = [f"bench on `{result['backbone']}` ({result['dtype']}), {result['machine']['cpus']} cores, "
             f"{result.get('seconds', 0) / 60:.1f} minutes", ""]
    if "forward" in result:
        f = result["forward"]
        lines += [f"**Forward** ({f['items']} LRCL items in micro-batches of {result['sizes']['micro']}, "
                  f"{f['export_items']} export items in batches of {f['export']['batch']}, {f['rounds']} rounds; "
                  f"{_load(f.get('load'))})", "",
                  "| what | naive items/s | prefix reuse | + shared head | efficient vs naive | shared head on vs off |",
                  "|---|---|---|---|---|---|"]
        for name, key in (("LRCL training step", "lrcl_train_step"), ("export (no grad)", "export")):
            r = f[key]
            off = _times(r.get("prefix_reuse_items_per_s"), "{:.2f}")  # the shared head off: --quick only
            on_vs_off = _times(r.get("shared_head_speedup"), "{:.2f}x")
            lines.append(f"| {name} | {r['naive_items_per_s']:.2f} | {off} | {r['efficient_items_per_s']:.2f} | "
                         f"{_spread(r['speedup_rounds'])} | {on_vs_off} |")
        e = f["export"]
        lines += ["", f"Export useful FLOP/s: {e['useful_gflops']:.1f} GFLOP/s against a measured fp32 matmul peak of "
                  f"{e['peak_gflops']:.1f}: {_fraction(e['fraction_of_peak'])} of peak.", ""]
    if "rollout" in result:
        r = result["rollout"]
        lines += [f"**Rollout engines** ({r['items']} items in batches of {r['batch']}, G={r['group_size']}, "
                  f"{r['rounds']} rounds; {_load(r.get('load'))})", "",
                  "| engine | embeddings/s | vs naive | useful GFLOP/s | of matmul peak | max abs diff vs naive |",
                  "|---|---|---|---|---|---|"]
        for e, x in r["engines"].items():
            lines.append(f"| {e} | {x['embeddings_per_s']:.1f} | {_spread(x['vs_naive'])} | {x['useful_gflops']:.1f} | "
                         f"{_fraction(x['fraction_of_peak'])} | {x.get('max_abs_diff_vs_naive', 0):.1e} |")
        lines.append("")
    if "crrl" in result:
        c = result["crrl"]
        one, two = c["1_rollout_workers"], c["2_rollout_workers"]
        lines += [f"**CRRL end to end**: 1 rollout worker {one['samples_per_s']:.2f} samples/s, 2 workers "
                  f"{two['samples_per_s']:.2f} ({c['speedup_2_vs_1']:.2f}x); with 1 worker the learner waits "
                  f"{100 * one['share_learner_queue_wait']:.0f}% of the time, weight sync "
                  f"{100 * one['share_weight_sync']:.2f}%.", ""]
    if "memory" in result:
        stages = ", ".join(f"{k} {v['peak_mb'] / 1024:.1f} GB" for k, v in result["memory"].items() if k != "load")
        lines += [f"**Peak memory** per pipeline stage (all processes, the embedded Ray included): {stages}", ""]
    if "growth" in result:
        lines += growth_table(result["growth"])
    return "\n".join(lines) + "\n"


def _fraction(r: dict) -> str:
    return f"**{100 * r['median']:.0f}%** ({100 * r['min']:.0f}-{100 * r['max']:.0f}%)"


def growth_table(growth: dict) -> list[str]:
    lines = ["**Growth** (synthetic catalogues, each piece in a fresh process)", "",
             "| piece | items | seconds | us/item | peak MB | baseline MB | added MB | others' CPU share |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(growth["rows"], key=lambda r: (r["piece"], r["items"])):
        lines.append(f"| {r['piece']} | {r['items']:,} | {r['seconds']:.1f} | {r['us_per_item']:.1f} | {r['peak_mb']:.0f} | "
                     f"{r['baseline_mb']:.0f} | {r['added_mb']:.0f} | {100 * r['load']['others_cpu_share']:.0f}% |")
    lines += ["", "| piece | time per item, largest / smallest | peak memory, largest / previous | added memory, "
              "largest / previous |", "|---|---|---|---|"]
    for piece, s in sorted(growth["summary"].items()):
        lines.append(f"| {piece} | {s['us_per_item_largest_over_smallest']:.2f}x | {s['peak_largest_over_previous']:.2f}x "
                     f"| {s['added_largest_over_previous']:.2f}x |")
    return lines + [""]


def plot_growth(growth: dict, path: Path) -> None:
    """Time per item and peak memory against catalogue size, one line per piece (log-scaled sizes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for piece in sorted({r["piece"] for r in growth["rows"]}):
        rows = sorted((r for r in growth["rows"] if r["piece"] == piece), key=lambda r: r["items"])
        n = [r["items"] for r in rows]
        ax_t.plot(n, [r["us_per_item"] for r in rows], marker="o", label=piece)
        ax_m.plot(n, [r["peak_mb"] for r in rows], marker="o", label=f"{piece} (peak)")
        ax_m.plot(n, [r["added_mb"] for r in rows], marker="x", linestyle="--", label=f"{piece} (added)")
    for ax, title in ((ax_t, "time per item (us)"), (ax_m, "memory (MB)")):
        ax.set_xscale("log")
        ax.set_xlabel("catalogue size (items)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
