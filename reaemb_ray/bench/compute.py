"""Single-process measurements: the machine's matmul peak and the efficient vs naive two-pass forward.

Every comparison runs both sides on the same items, interleaved, in one process, so the ratio is
meaningful on a noisy machine even when the absolute numbers are not.
"""
from __future__ import annotations

import time

import numpy as np
import torch


def _best_of(fn, repeats: int) -> float:
    """Median wall seconds of `fn()` over `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def matmul_peak(dtype: str = "float32", n: int = 1024, repeats: int = 5) -> dict:
    """Achieved GFLOP/s of an n x n x n matmul: the practical peak the model FLOP/s is compared to."""
    dt = getattr(torch, dtype)
    a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
    sec = _best_of(lambda: a @ b, repeats)
    return {"dtype": dtype, "n": n, "seconds": sec, "gflops": 2 * n**3 / sec / 1e9}


def count_params(lm) -> int:
    return sum(p.numel() for p in lm.parameters())


def forward_flops(n_params: int, tokens: int) -> float:
    """Forward FLOPs of a decoder over `tokens` tokens (2 x params per token; attention is small at these
    lengths and left out, so the achieved FLOP/s is a slight underestimate)."""
    return 2.0 * n_params * tokens


def efficient_vs_naive(embedder, tokenizer, prompts_a: list[str], prompts_b: list[str], max_length: int,
                       micro_batch: int, repeats: int = 2) -> dict:
    """LRCL training step (two views, contrastive loss, backward) and export (no grad), both paths."""
    from reaemb_ray.losses import soft_contrastive_loss
    from reaemb_ray.model.two_pass import shared_head_length, tokenize_prompts

    va = tokenize_prompts(tokenizer, prompts_a, max_length)
    vb = tokenize_prompts(tokenizer, prompts_b, max_length)
    n = len(prompts_a)
    params = [p for p in embedder.parameters() if p.requires_grad]

    # "naive": two full passes; "prefix": prefix reuse with every row's full prefix; "shared": prefix reuse with
    # the batch's common head run once (the default efficient path)
    variants = {"naive": dict(efficient=False), "prefix": dict(efficient=True, share_head=False),
                "shared": dict(efficient=True, share_head=True)}

    def train_step(kw: dict):
        def run():
            for i in range(0, n, micro_batch):
                x = embedder.embed({k: v[i:i + micro_batch] for k, v in va.items()}, **kw)
                y = embedder.embed({k: v[i:i + micro_batch] for k, v in vb.items()}, **kw)
                soft_contrastive_loss(x, y, embedder.tau()).backward()
            for p in params:
                p.grad = None
        return run

    def export(kw: dict):
        def run():
            with torch.no_grad():
                for i in range(0, n, micro_batch):
                    embedder.embed({k: v[i:i + micro_batch] for k, v in va.items()}, **kw)
        return run

    def side_by_side(make) -> dict:
        t = {name: _best_of(make(kw), repeats) for name, kw in variants.items()}
        return {"naive_items_per_s": n / t["naive"], "prefix_reuse_items_per_s": n / t["prefix"],
                "efficient_items_per_s": n / t["shared"], "speedup": t["naive"] / t["shared"],
                "shared_head_speedup": t["prefix"] / t["shared"]}

    embedder.train()
    train = side_by_side(train_step)
    embedder.eval()
    exp = side_by_side(export)
    L = va["input_ids"].shape[1]
    return {"items": n, "seq_len": int(L),
            "shared_head_tokens": shared_head_length(va["input_ids"], va["attention_mask"], L - 2),
            "lrcl_train_step": train, "export": exp}
