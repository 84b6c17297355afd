"""Rollout engine throughput: prefix-reuse torch vs naive two-pass vs vLLM, on the same items and noise.

All engines live in one Ray task (a fresh process, as a rollout worker would be) with torch using every core
it was given, and are timed interleaved with a matmul peak (bench/compute.py): each round runs every engine
over the same items with the same noise. The torch engine's useful FLOPs (bench/flops.py: the batch's shared
head once, each item's own prefix once, the thought and EOS per sample; padding not counted) are the work every
engine has to deliver, so useful FLOP/s ratios are throughput ratios.
"""
from __future__ import annotations

from statistics import median

import numpy as np
import ray


@ray.remote
def engine_comparison(base_dir: str, texts: dict, engines: list[str], item_ids: list[int], group_size: int,
                      sigma: float, item_noun: str, max_length: int, dtype: str, batch: int, rounds: int,
                      threads: int, peak_rounds: int = 0) -> dict:
    import time

    import torch

    from reaemb_ray.bench.compute import MatmulPeak, fraction_of_peak, interleaved, paired
    from reaemb_ray.bench.flops import batch_flops, decoder_shape
    from reaemb_ray.rl.rollout import Rollout

    torch.set_num_threads(threads)
    cores, load_s = {}, {}
    for e in engines:
        t0 = time.perf_counter()
        cores[e] = Rollout(base_dir, texts, e, group_size, sigma, True, item_noun, max_length, dtype)
        load_s[e] = time.perf_counter() - t0
    ids = np.asarray(item_ids, dtype=np.int64)
    chunks = [ids[i:i + batch] for i in range(0, len(ids), batch)]

    first_chunk = {}  # each engine's embeddings of the first chunk (same seed every call): the exactness check

    def side(engine, core):
        def run():
            for k, chunk in enumerate(chunks):
                emb = core.rollout(chunk, {}, seed=k)["emb"]
                if k == 0:
                    first_chunk[engine] = emb
        return run

    peak = MatmulPeak(dtype)
    sides = {e: side(e, c) for e, c in cores.items()}
    sides["matmul_peak"] = peak
    t = interleaved(sides, rounds)
    peaks = peak.gflops_per_round(rounds)
    some = next(iter(cores.values()))
    shape = decoder_shape(some.lm)
    flops = sum(batch_flops(shape, some.tokenize(c), group_size) for c in chunks)
    n = len(ids) * group_size
    out = {}
    for e in engines:
        # the fraction of peak of the engine under test (torch) gets `peak_rounds` more cheap rounds
        extra = peak_rounds if e == engines[0] else 0
        out[e] = {"engine": e, "embeddings": n, "seconds": t[e], "embeddings_per_s": n / median(t[e]),
                  "load_seconds": load_s[e], "threads": torch.get_num_threads(),
                  "useful_gflops": flops / median(t[e]) / 1e9,
                  "fraction_of_peak": fraction_of_peak(sides[e], flops, t[e], peaks, dtype, extra)}
        if "naive" in cores:
            out[e]["vs_naive"] = paired(t["naive"], t[e])
            out[e]["max_abs_diff_vs_naive"] = float(np.abs(first_chunk[e] - first_chunk["naive"]).max())
        if hasattr(cores[e].engine, "close"):
            cores[e].engine.close()
    return {"engines": out, "peak_gflops": peaks, "useful_gflops_per_round_of_work": flops / 1e9,
            "items": len(ids), "batch": batch, "group_size": group_size, "rounds": rounds}


def compare_engines(base_dir: str, texts: dict, item_ids: list[int], engines: list[str], group_size: int,
                    sigma: float, item_noun: str, max_length: int, dtype: str, batch: int, num_cpus: float,
                    rounds: int, peak_rounds: int = 0) -> dict:
    threads = max(1, int(num_cpus))
    return ray.get(engine_comparison.options(num_cpus=num_cpus).remote(
        base_dir, texts, engines, item_ids, group_size, sigma, item_noun, max_length, dtype, batch, rounds, threads,
        peak_rounds))
