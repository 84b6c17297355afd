"""Benchmark building blocks: matmul peak, efficient-vs-naive timing on a tiny LLM, peak memory of a child."""
import subprocess
import sys

import numpy as np
import pytest

from reaemb_ray.bench.compute import efficient_vs_naive, forward_flops, matmul_peak
from reaemb_ray.bench.memory import peak_memory
from reaemb_ray.config import ModelConfig
from reaemb_ray.data.prompts import attribute_views, item_prompt
from reaemb_ray.model.generator import build_embedder


def test_matmul_peak_is_positive_and_consistent():
    r = matmul_peak("float32", n=256, repeats=2)
    assert r["gflops"] > 0 and abs(r["gflops"] - 2 * 256**3 / r["seconds"] / 1e9) < 1e-6


def test_forward_flops_counts_two_per_parameter_per_token():
    assert forward_flops(1000, 7) == 14000


def test_efficient_vs_naive_reports_both_paths(tmp_path):
    cfg = ModelConfig(backbone="tiny", max_length=128)
    embedder, tok, _ = build_embedder(cfg, str(tmp_path), with_lora=True)
    rng = np.random.default_rng(0)
    texts = ["title is Movie A; genres is Drama; year is 1995", "title is Movie B; genres is Comedy, Drama"] * 2
    views = [attribute_views(t, 0.4, rng) for t in texts]
    a = [item_prompt(tok, v[0], "movie") for v in views]
    b = [item_prompt(tok, v[1], "movie") for v in views]
    res = efficient_vs_naive(embedder, tok, a, b, 128, micro_batch=2, repeats=1)
    for part in ("lrcl_train_step", "export"):
        assert res[part]["naive_items_per_s"] > 0 and res[part]["efficient_items_per_s"] > 0
        assert res[part]["speedup"] == pytest.approx(res[part]["efficient_items_per_s"] / res[part]["naive_items_per_s"])
        assert res[part]["shared_head_speedup"] == pytest.approx(
            res[part]["efficient_items_per_s"] / res[part]["prefix_reuse_items_per_s"])
    assert res["items"] == 4 and res["shared_head_tokens"] > 8  # the real prompt's template head is shared
    assert all(p.grad is None for p in embedder.parameters())  # the timing leaves no gradients behind


def test_peak_memory_counts_child_processes():
    code = "import time; x = bytearray(300 * 2**20); time.sleep(1.5)"
    with peak_memory(interval=0.1) as m:
        subprocess.run([sys.executable, "-c", code], check=True)
    assert m["delta_mb"] > 250, m


def test_ratios_cover_whichever_sections_ran_and_unknown_sections_are_refused(tmp_path):
    from reaemb_ray.config import load_config
    from reaemb_ray.stages.bench import _ratios, run_bench

    part = {"lrcl_train_step": {"speedup": 1.5, "shared_head_speedup": 1.2},
            "export": {"speedup": 2.0, "shared_head_speedup": 1.6}}
    assert _ratios({"forward": part}) == {"lrcl_train_step_efficient_vs_naive": 1.5, "export_efficient_vs_naive": 2.0,
                                          "lrcl_train_step_shared_head_on_vs_off": 1.2,
                                          "export_shared_head_on_vs_off": 1.6}
    result = {"matmul_peak": {"gflops": 100.0},
              "rollout": {"torch": {"vs_naive": 3.0, "useful_gflops": 5.0}, "naive": {"vs_naive": 1.0, "useful_gflops": 2.0}}}
    assert _ratios(result) == {"rollout_torch_vs_naive": 3.0, "rollout_torch_fraction_of_matmul_peak": 0.05}
    with pytest.raises(ValueError, match="unknown bench section 'forwards'"):
        run_bench(load_config(None, [f"output_dir={tmp_path}"]), quick=True, only=["forwards"])
