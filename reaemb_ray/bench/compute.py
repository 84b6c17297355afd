"""Single-process measurements: the machine's matmul peak and the efficient vs naive two-pass forward.

Every comparison runs all its sides on the same items in one process, interleaved: each round times every side
once, in an order that rotates from round to round, and a ratio is the median of its per-round ratios (two
timings at most a few seconds apart), so load that comes and goes hits every side about equally.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from statistics import median

import torch


def interleaved(sides: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Wall seconds of every side in each of `rounds` rounds, after one untimed warm-up call of each."""
    names = list(sides)
    for name in names:
        sides[name]()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            sides[name]()
            seconds[name].append(time.perf_counter() - t0)
    return seconds


def paired(numerators: list[float], denominators: list[float]) -> dict:
    """Median, min and max of the per-round ratios numerator / denominator."""
    ratios = [a / b for a, b in zip(numerators, denominators)]
    return {"median": median(ratios), "min": min(ratios), "max": max(ratios), "rounds": [round(r, 4) for r in ratios]}


class MatmulPeak:
    """An n x n x n fp32 (or `dtype`) matmul, run `repeats` times per call; `gflops(seconds)` = the best call's
    rate. Timed as one side of `interleaved`, it gives the practical peak of each round."""

    def __init__(self, dtype: str = "float32", n: int = 2048, repeats: int = 3):
        dt = getattr(torch, dtype)
        self.a, self.b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
        self.n, self.repeats, self.best = n, repeats, []

    def __call__(self) -> None:
        best = float("inf")
        for _ in range(self.repeats):
            t0 = time.perf_counter()
            self.a @ self.b
            best = min(best, time.perf_counter() - t0)
        self.best.append(best)

    def gflops_per_round(self, rounds: int) -> list[float]:
        return [2 * self.n**3 / s / 1e9 for s in self.best[-rounds:]]


def fraction_of_peak(work: Callable[[], object], flops: float, seconds: list[float], peaks: list[float],
                     dtype: str, extra_rounds: int) -> dict:
    """Useful FLOP/s of `work` (`flops` per call) over the matmul peak, per round: the `seconds` / `peaks` rounds
    already timed plus `extra_rounds` rounds of only `work` and a peak, interleaved. The work is the cheap side of
    a comparison, so a few more of its rounds steady the median at little cost."""
    seconds, peaks = list(seconds), list(peaks)
    if extra_rounds:
        peak = MatmulPeak(dtype)
        t = interleaved({"work": work, "matmul_peak": peak}, extra_rounds)
        seconds += t["work"]
        peaks += peak.gflops_per_round(extra_rounds)
    return paired([flops / s / 1e9 for s in seconds], peaks)


def matmul_peak(dtype: str = "float32", n: int = 1024, repeats: int = 5) -> dict:
    """Achieved GFLOP/s of the best of `repeats` n x n x n matmuls (after one warm-up)."""
    peak = MatmulPeak(dtype, n, repeats)
    peak()
    peak()
    return {"dtype": dtype, "n": n, "seconds": peak.best[-1], "gflops": 2 * n**3 / peak.best[-1] / 1e9}


def merged_copy(embedder):
    """A copy of `embedder` with its LoRA merged into the weights, as the export stage loads a trained generator
    (`load_generator(merge_lora=True)`): the export runs no adapter matmuls."""
    import copy

    out = copy.deepcopy(embedder)
    if out.has_lora:
        out.lm = out.lm.merge_and_unload()
    return out.eval()


def efficient_vs_naive(embedder, tokenizer, prompts_a: list[str], prompts_b: list[str], max_length: int,
                       micro_batch: int, export_prompts: list[str] | None = None, export_batch: int | None = None,
                       rounds: int = 1, dtype: str = "float32", item_noun: str = "item", peak_rounds: int = 0,
                       export_embedder=None, time_shared_head_off: bool = True) -> dict:
    """LRCL training step (two views, contrastive loss, backward) and export (no grad), every path, interleaved
    with a matmul peak; the export's useful FLOP/s (bench/flops.py) against each round's peak, over those rounds
    and `peak_rounds` more of only the export and the peak (`fraction_of_peak`). `export_embedder`: the module
    the export runs (the export stage merges the LoRA into the weights first, `merged_copy`); default `embedder`.
    `time_shared_head_off`: also time prefix reuse without the shared head (what the shared head adds; the full
    bench leaves it out: a third of the section's time for a ratio no target rests on)."""
    from reaemb_ray.bench.flops import batch_flops, decoder_shape
    from reaemb_ray.losses import soft_contrastive_loss
    from reaemb_ray.model.two_pass import shared_head_length, tokenize_prompts

    pooling, noun = embedder.pooling, item_noun
    va = tokenize_prompts(tokenizer, prompts_a, max_length, pooling, noun)
    vb = tokenize_prompts(tokenizer, prompts_b, max_length, pooling, noun)
    export_prompts = export_prompts or prompts_a
    export_batch = export_batch or micro_batch
    ex = [tokenize_prompts(tokenizer, export_prompts[i:i + export_batch], max_length, pooling, noun)
          for i in range(0, len(export_prompts), export_batch)]
    n, n_export = len(prompts_a), len(export_prompts)
    params = [p for p in embedder.parameters() if p.requires_grad]

    # "naive": two full passes; "prefix": prefix reuse with every row's full prefix; "shared": prefix reuse with
    # the batch's common head run once (the default efficient path)
    variants = {"naive": dict(efficient=False), "prefix": dict(efficient=True, share_head=False),
                "shared": dict(efficient=True, share_head=True)}
    if not time_shared_head_off:
        del variants["prefix"]

    def train_step(kw: dict):
        def run():
            embedder.train()
            for i in range(0, n, micro_batch):
                x = embedder.embed({k: v[i:i + micro_batch] for k, v in va.items()}, **kw)
                y = embedder.embed({k: v[i:i + micro_batch] for k, v in vb.items()}, **kw)
                soft_contrastive_loss(x, y, embedder.tau()).backward()
            for p in params:
                p.grad = None
        return run

    exporter = export_embedder or embedder

    def export(kw: dict):
        def run():
            exporter.eval()
            with torch.no_grad():
                for b in ex:
                    exporter.embed(b, **kw)
        return run

    peak = MatmulPeak(dtype)
    sides = {f"train_{v}": train_step(kw) for v, kw in variants.items()}
    sides.update({f"export_{v}": export(kw) for v, kw in variants.items()})
    sides["matmul_peak"] = peak
    t = interleaved(sides, rounds)
    peaks = peak.gflops_per_round(rounds)

    def summary(prefix: str, items: int) -> dict:
        s = {name: t[f"{prefix}_{name}"] for name in variants}
        out = {"naive_items_per_s": items / median(s["naive"]), "efficient_items_per_s": items / median(s["shared"]),
               "speedup": paired(s["naive"], s["shared"])["median"], "speedup_rounds": paired(s["naive"], s["shared"]),
               "seconds": s}
        if "prefix" in s:
            out.update(prefix_reuse_items_per_s=items / median(s["prefix"]),
                       shared_head_speedup=paired(s["prefix"], s["shared"])["median"])
        return out

    embedder.eval()
    shape = decoder_shape(exporter.lm)
    flops = sum(batch_flops(shape, b, 1, share_head=True) for b in ex)
    exp = summary("export", n_export)
    fraction = fraction_of_peak(export(variants["shared"]), flops, t["export_shared"], peaks, dtype, peak_rounds)
    exp.update(useful_gflops=flops / median(t["export_shared"]) / 1e9, peak_gflops=median(peaks),
               fraction_of_peak=fraction, batch=export_batch)
    L = va["input_ids"].shape[1]
    return {"items": n, "export_items": n_export, "seq_len": int(L), "rounds": rounds,
            "shared_head_tokens": shared_head_length(va["input_ids"], va["attention_mask"], L - 2),
            "lrcl_train_step": summary("train", n), "export": exp, "matmul_peak_gflops": peaks}
