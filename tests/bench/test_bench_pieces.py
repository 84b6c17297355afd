"""Benchmark building blocks: matmul peak, interleaved timing, useful FLOPs, efficient-vs-naive timing on a tiny
LLM, machine load, peak memory of a child, the synthetic growth catalogue."""
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from reaemb_ray.bench.compute import efficient_vs_naive, interleaved, matmul_peak, paired
from reaemb_ray.bench.flops import DecoderShape, batch_flops, decoder_shape, prefix_flops, tail_flops
from reaemb_ray.bench.load import machine_load
from reaemb_ray.bench.memory import peak_memory
from reaemb_ray.config import ModelConfig
from reaemb_ray.data.prompts import attribute_views, item_prompt
from reaemb_ray.model.generator import build_embedder


def test_matmul_peak_is_positive_and_consistent():
    r = matmul_peak("float32", n=256, repeats=2)
    assert r["gflops"] > 0 and abs(r["gflops"] - 2 * 256**3 / r["seconds"] / 1e9) < 1e-6


def test_interleaved_warms_up_then_rotates_the_order_every_round():
    calls = []
    sides = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    seconds = interleaved(sides, rounds=3)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")
    assert {k: len(v) for k, v in seconds.items()} == {"a": 3, "b": 3, "c": 3}
    r = paired([2.0, 3.0, 8.0], [1.0, 1.0, 2.0])
    assert (r["median"], r["min"], r["max"]) == (3.0, 2.0, 4.0)


def test_decoder_shape_reads_the_layers_of_the_tiny_llama(tmp_path):
    embedder, _, _ = build_embedder(ModelConfig(backbone="tiny"), str(tmp_path), with_lora=False)
    # hidden 128, intermediate 256, 2 layers, 2 heads of 64: q, k, v, o 128x128 each, gate/up/down 128x256
    assert decoder_shape(embedder.lm) == DecoderShape(layers=2, matmul_weights=4 * 128 * 128 + 3 * 128 * 256,
                                                      attn_width=128)


def test_useful_flops_count_real_tokens_once():
    shape = DecoderShape(layers=1, matmul_weights=10, attn_width=1)  # 20 FLOPs per token, 4 per key
    # rows of 5 and 7 real tokens, shared head of 3: prefix tokens 3 (head, once) + 0 + 2 (positions 3, 4 of
    # the long row); keys 1+2+3 for the head, 4+5 for the long row's own prefix
    assert prefix_flops(shape, [5, 7], 3) == 20 * 5 + 4 * (6 + 9)
    assert prefix_flops(shape, [5, 7], 0) == 20 * 8 + 4 * (1 + 2 + 3 + 1 + 2 + 3 + 4 + 5)  # nothing shared
    # thought and EOS per sample: keys (4, 5) and (6, 7)
    assert tail_flops(shape, [5, 7], 3) == 3 * (20 * 4 + 4 * (9 + 13))
    ids = torch.tensor([[9, 9, 9, 0, 0, 1, 7, 8], [9, 9, 9, 2, 3, 1, 7, 8]])
    mask = torch.tensor([[1, 1, 1, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1]])
    # a 3-token head is below two_pass.MIN_SHARED, so this batch runs without a shared head
    assert batch_flops(shape, {"input_ids": ids, "attention_mask": mask}, 2) == \
        prefix_flops(shape, [6, 8], 0) + tail_flops(shape, [6, 8], 2)


def test_efficient_vs_naive_reports_every_path_and_the_export_fraction_of_peak(tmp_path):
    cfg = ModelConfig(backbone="tiny", max_length=128)
    embedder, tok, _ = build_embedder(cfg, str(tmp_path), with_lora=True)
    rng = np.random.default_rng(0)
    texts = ["title is Movie A; genres is Drama; year is 1995", "title is Movie B; genres is Comedy, Drama"] * 2
    views = [attribute_views(t, 0.4, rng) for t in texts]
    a = [item_prompt(tok, v[0], "movie") for v in views]
    b = [item_prompt(tok, v[1], "movie") for v in views]
    res = efficient_vs_naive(embedder, tok, a, b, 128, micro_batch=2, rounds=2, item_noun="movie", peak_rounds=3)
    for part in ("lrcl_train_step", "export"):
        r = res[part]
        assert r["naive_items_per_s"] > 0 and r["efficient_items_per_s"] > 0
        assert r["speedup_rounds"]["min"] <= r["speedup"] <= r["speedup_rounds"]["max"]
        assert all(len(s) == 2 for s in r["seconds"].values())
    assert 0 < res["export"]["useful_gflops"] and 0 < res["export"]["fraction_of_peak"]["median"] < 1.5
    assert len(res["export"]["fraction_of_peak"]["rounds"]) == 2 + 3  # the paired rounds and the cheap ones
    assert len(res["matmul_peak_gflops"]) == 2
    assert res["items"] == 4 and res["shared_head_tokens"] > 8  # the real prompt's template head is shared
    assert all(p.grad is None for p in embedder.parameters())  # the timing leaves no gradients behind
    assert res["export"]["shared_head_speedup"] > 0 and "prefix" in res["export"]["seconds"]

    # the full bench leaves the shared head off out: two sides per part, and the report says it was not timed
    from reaemb_ray.bench.report import markdown

    lean = efficient_vs_naive(embedder, tok, a, b, 128, micro_batch=2, rounds=1, item_noun="movie",
                              time_shared_head_off=False)
    assert set(lean["export"]["seconds"]) == {"naive", "shared"} and "shared_head_speedup" not in lean["export"]
    table = markdown({"backbone": "tiny", "dtype": "float32", "machine": {"cpus": 2}, "sizes": {"micro": 2},
                      "forward": lean})
    assert table.count("not timed") == 4  # prefix reuse items/s and on vs off, for both parts


def test_machine_load_counts_a_busy_process_outside_this_tree():
    # the burner is orphaned (its parent shell exits at once), so it is not one of our descendants
    code = "import time\nt = time.time()\nwhile time.time() - t < 2: pass"
    with machine_load() as load:
        subprocess.run(["sh", "-c", f"{sys.executable} -c '{code}' &"], check=True)
        time.sleep(2)
    assert load["others_cpu_share"] > 0.3, load  # one of the cores (at most 2 here) was kept busy
    assert {"loadavg_1min_before", "loadavg_1min_after", "others_niced_share", "wall_s"} <= set(load)


def test_peak_memory_counts_child_processes():
    code = "import time; x = bytearray(300 * 2**20); time.sleep(1.5)"
    with peak_memory(interval=0.1) as m:
        subprocess.run([sys.executable, "-c", code], check=True)
    assert m["delta_mb"] > 250, m


def test_growth_catalogue_covers_every_item_within_groups():
    from reaemb_ray.bench.growth import GROUP, synthetic_sequences

    users, items = synthetic_sequences(500, seed=0)
    starts = np.flatnonzero(np.diff(users, prepend=0))
    assert sorted(items[starts]) == list(range(1, 501))  # every item starts one user's sequence
    assert ((items - 1) // GROUP == np.repeat((items[starts] - 1) // GROUP, np.diff(np.append(starts, len(users))))).all()
    assert 4 <= np.bincount(users)[1:].min() and np.bincount(users)[1:].max() <= 8


def test_growth_prepare_and_ranking_pieces_on_a_small_catalogue(tmp_path):
    from reaemb_ray.bench.growth import growth_summary, run_piece, tiny_export_model, write_catalogue
    from reaemb_ray import layout
    from reaemb_ray.stages.export import table_bytes

    backbone = str(tiny_export_model(tmp_path))
    write_catalogue(tmp_path / "raw" / "600", 600)
    prep = run_piece("prepare", tmp_path, 600, backbone)
    assert prep["items"] == 600 and prep["pairs"] > 0 and prep["peak_mb"] >= prep["baseline_mb"] > 0
    # the export's output, as the ranking reads it (random vectors: a cost measurement, not a quality one)
    out = tmp_path / "600" / layout.embeddings_table("raw_llm")
    out.parent.mkdir(parents=True)
    out.write_bytes(table_bytes(np.arange(1, 601), np.random.default_rng(0).standard_normal((600, 16))))
    ev = run_piece("evaluate", tmp_path, 600, backbone)
    assert ev["users"] == 600 and 0 <= ev["mean_full_rank"] < 600 and 0 <= ev["mean_sampled_rank"] <= 100
    rows = [dict(prep, items=n, us_per_item=u, peak_mb=m, added_mb=m / 2) for n, u, m in
            [(10, 4.0, 100.0), (100, 3.0, 150.0), (1000, 2.0, 180.0)]]
    s = growth_summary(rows)["prepare"]
    assert s["us_per_item_largest_over_smallest"] == 0.5 and s["peak_largest_over_previous"] == 1.2


def test_ratios_cover_whichever_sections_ran_and_unknown_sections_are_refused(tmp_path):
    from reaemb_ray.config import load_config
    from reaemb_ray.stages.bench import _ratios, run_bench

    part = {"lrcl_train_step": {"speedup": 1.5, "shared_head_speedup": 1.2},
            "export": {"speedup": 2.0, "shared_head_speedup": 1.6, "fraction_of_peak": {"median": 0.6}}}
    assert _ratios({"forward": part}) == {"lrcl_train_step_efficient_vs_naive": 1.5, "export_efficient_vs_naive": 2.0,
                                          "lrcl_train_step_shared_head_on_vs_off": 1.2,
                                          "export_shared_head_on_vs_off": 1.6, "export_fraction_of_matmul_peak": 0.6}
    result = {"rollout": {"engines": {"torch": {"vs_naive": {"median": 3.0}, "fraction_of_peak": {"median": 0.05}},
                                      "naive": {"vs_naive": {"median": 1.0}, "fraction_of_peak": {"median": 0.01}}}}}
    assert _ratios(result) == {"rollout_torch_vs_naive": 3.0, "rollout_torch_fraction_of_matmul_peak": 0.05}
    lean = {k: {kk: vv for kk, vv in v.items() if kk != "shared_head_speedup"} for k, v in part.items()}
    assert "export_shared_head_on_vs_off" not in _ratios({"forward": lean})  # not timed by the full bench
    with pytest.raises(ValueError, match="unknown bench section 'forwards'"):
        run_bench(load_config(None, [f"output_dir={tmp_path}"]), quick=True, only=["forwards"])


def test_export_sample_takes_whole_batches_of_one_shard_in_the_export_actors_order():
    from reaemb_ray.stages.bench import export_sample
    from reaemb_ray.stages.export import SORT_WINDOW, token_sorted_batches

    assert [b.tolist() for b in token_sorted_batches([5, 1, 3, 1, 2], 2)] == [[1, 3], [4, 2], [0]]  # stable
    assert SORT_WINDOW == 8
    # one shard of 16 items, all 16 characters long (character order = input order), "tokens" = capital letters:
    # the actor's window of 8 batches of 2 runs them in reverse
    item = {n: "a" * n + "B" * (16 - n) for n in range(1, 17)}
    texts = [item[n] for n in range(1, 17)] + ["outside the shard"] * 3
    tokens = lambda t: sum(c.isupper() for c in t)  # noqa: E731
    assert export_sample(texts, 16, 2, 2, tokens) == [item[8], item[7]]  # the middle batch (of 8)
    assert export_sample(texts, 16, 2, 4, tokens) == [item[12], item[11], item[4], item[3]]  # batches 2 and 6
    assert export_sample(texts, 16, 2, 100, tokens) == [item[n] for n in range(16, 0, -1)]  # at most the shard


def test_merged_copy_embeds_like_the_lora_module_without_adapters(tmp_path):
    from reaemb_ray.bench.compute import merged_copy
    from reaemb_ray.model.two_pass import tokenize_prompts

    embedder, tok, _ = build_embedder(ModelConfig(backbone="tiny", max_length=128), str(tmp_path), with_lora=True)
    with torch.no_grad():  # a nonzero LoRA update, so that merging has something to merge
        for name, p in embedder.lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    merged = merged_copy(embedder)
    assert embedder.has_lora and not merged.has_lora
    prompts = [item_prompt(tok, t, "movie") for t in ["title is Movie A; year is 1995", "title is B; genres is Drama"]]
    batch = tokenize_prompts(tok, prompts, 128, embedder.pooling, "movie")
    embedder.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged.embed(batch), embedder.embed(batch), atol=1e-5, rtol=1e-4)
