"""`reaemb bench`: what the system costs, as ratios measured side by side in one run. Prints JSON.

Sections (each with the throughputs behind its ratio and the machine's load while it ran, bench/load.py):
  forward        efficient vs naive two-pass forward: LRCL training step and embedding export, interleaved
                 with a matmul peak; the export's useful FLOP/s against it
  rollout        rollout engines, embeddings/s: prefix-reuse torch vs naive two-pass vs vLLM, interleaved in
                 one process; the torch engine's useful FLOP/s against the matmul peak
  crrl           end-to-end CRRL samples/s with 1 vs 2 rollout workers; share of wall time in weight sync,
                 learner queue waits and reward scoring
  memory         peak resident memory (all processes) of each pipeline stage (--quick only: the full
                 pipeline on SmolLM2 takes about 90 minutes)
  growth         prepare, export and full-ranking evaluation on synthetic catalogues (bench/growth.py): time
                 per item and peak memory per size (10k, 100k, 1M items; 1k and 4k with --quick)

`--quick` uses the tiny random LLM and small sizes (a few minutes; CI runs it); without it, the configured
backbone (SmolLM2 by default), larger sizes and several interleaved rounds per ratio.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import random
from pathlib import Path

from reaemb_ray import layout
from reaemb_ray.config import Config
from reaemb_ray.stages.base import cfg_with

log = logging.getLogger("reaemb.bench")


def _sizes(quick: bool) -> dict:
    if quick:
        return dict(fwd_items=16, micro=8, export_items=16, export_batch=8, engine_items=16, engine_batch=16,
                    group=4, engine_rounds=2, fwd_rounds=2, peak_rounds=1, crrl_items=32, crrl_batch=8,
                    growth=[1000, 4000], time_shared_head_off=True)
    # sized so that the whole bench on SmolLM2 (fp32, 2 cores) fits in 20 minutes: one LRCL micro-batch of 8 per
    # training step, one warm-up call and nine timed rounds per forward side (a round of the LRCL step is short:
    # its per-round ratio swung 1.6-2.7, and medians of five rounds moved 13% between two runs), four per
    # rollout engine (the per-round ratios spread by 10-40%), plus
    # `peak_rounds` cheap rounds of only the efficient path and the matmul peak for the fractions of peak; the
    # shared head on vs off (no target) is left to --quick; see docs/BENCHMARK.md for a second run
    return dict(fwd_items=8, micro=8, fwd_rounds=9, export_items=32, export_batch=32, engine_items=16,
                engine_batch=16, group=8, engine_rounds=4, peak_rounds=6, crrl_items=32, crrl_batch=8,
                growth=[10_000, 100_000, 1_000_000], time_shared_head_off=False)


def _bench_cfg(cfg: Config, quick: bool, out: Path) -> Config:
    changes = {"output_dir": str(out)}
    if quick:
        changes.update({"model.backbone": "tiny", "model.max_length": 96})
    return cfg_with(cfg, **changes)


def export_sample(texts: list[str], shard_size: int, batch: int, items: int, token_count) -> list[str]:
    """`items` texts in whole batches as the export stage makes them (stages/export.py): one shard of items in
    order of text length, cut into windows of SORT_WINDOW batches that an actor runs in token-count order
    (`token_sorted_batches`); the timed batches are spread evenly over the shard (the middle one when there is
    one), so short, typical and long prompts weigh as they do in a real export."""
    from reaemb_ray.stages.export import SORT_WINDOW, token_sorted_batches

    shard, window, batches = sorted(texts[:shard_size], key=len), batch * SORT_WINDOW, []
    for lo in range(0, len(shard), window):
        part = shard[lo:lo + window]
        batches += [[part[r] for r in rows] for rows in token_sorted_batches([token_count(t) for t in part], batch)]
    full = [b for b in batches if len(b) == batch] or batches[:1]
    k = max(1, min(len(full), items // batch))
    return [t for j in range(k) for t in full[int((j + 0.5) * len(full) / k)]]


def bench_forward(cfg: Config, texts: list[str], sz: dict) -> dict:
    import numpy as np
    import torch

    from reaemb_ray.data.prompts import attribute_views, item_prompt
    from reaemb_ray.bench.compute import efficient_vs_naive, merged_copy
    from reaemb_ray.model.generator import build_embedder

    torch.manual_seed(cfg.seed)
    embedder, tok, _ = build_embedder(cfg.model, cfg.data.cache_dir, with_lora=True)
    rng = np.random.default_rng(cfg.seed)
    views = [attribute_views(t, cfg.lrcl.drop_ratio, rng) for t in texts[: sz["fwd_items"]]]
    a = [item_prompt(tok, v[0], cfg.data.noun) for v in views]
    b = [item_prompt(tok, v[1], cfg.data.noun) for v in views]
    def token_count(text: str) -> int:
        return len(tok(item_prompt(tok, text, cfg.data.noun), add_special_tokens=False)["input_ids"])

    export = [item_prompt(tok, t, cfg.data.noun) for t in export_sample(
        texts, cfg.export.shard_size, sz["export_batch"], sz["export_items"], token_count)]
    res = efficient_vs_naive(embedder, tok, a, b, cfg.model.max_length, sz["micro"], export, sz["export_batch"],
                             sz["fwd_rounds"], cfg.model.dtype, cfg.data.noun, sz["peak_rounds"], merged_copy(embedder),
                             time_shared_head_off=sz["time_shared_head_off"])
    res["backbone"] = cfg.model.backbone
    res["threads"] = torch.get_num_threads()
    return res


def prepare_base_for_bench(cfg: Config) -> Path:
    """A CRRL policy folder (merged LM + fresh attention) from the raw backbone, shared by the sections."""
    from reaemb_ray.model.generator import META_FILE
    from reaemb_ray.rl.policy import prepare_base

    out = cfg.out / "bench_base"
    return out if (out / META_FILE).exists() else prepare_base(cfg, out, None)


def bench_rollout(cfg: Config, texts: dict, sz: dict, engines: list[str], base: str) -> dict:
    from reaemb_ray.bench.engines import compare_engines

    ids = sorted(texts)[: sz["engine_items"]]
    return compare_engines(base, {i: texts[i] for i in ids}, ids, engines, sz["group"], cfg.crrl.sigma,
                           cfg.data.noun, cfg.model.max_length, cfg.model.dtype, sz["engine_batch"],
                           num_cpus=float(cfg.ray.num_cpus or os.cpu_count() or 2), rounds=sz["engine_rounds"],
                           peak_rounds=sz["peak_rounds"])


def bench_crrl(cfg: Config, sz: dict, base: str) -> dict:
    from reaemb_ray.stages.crrl import run_crrl

    out = {}
    for workers in (1, 2):
        run_dir = cfg.out / f"bench_crrl_{workers}"
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / layout.PREPARED).exists():
            (run_dir / layout.PREPARED).symlink_to((cfg.out / layout.PREPARED).resolve(), target_is_directory=True)
        c = cfg_with(cfg, **{"crrl.init_from": base, "crrl.num_rollout_workers": workers, "crrl.num_reward_workers": 1,
                          "crrl.max_items": sz["crrl_items"], "crrl.items_per_batch": sz["crrl_batch"],
                          "crrl.group_size": sz["group"], "crrl.eval_items": 0, "crrl.engine": "torch",
                          "crrl.checkpoint_every": 10_000, "crrl.max_staleness": 1,
                          "crrl.rollout_resources.num_cpus": 0.5, "crrl.reward_resources.num_cpus": 0.25,
                          "crrl.learner_resources.num_cpus": 0.25,
                          "output_dir": str(run_dir)})
        t = run_crrl(c, fresh=True)
        samples = t["steps"] * sz["crrl_batch"] * sz["group"]
        wall = t["wall_s"]
        out[f"{workers}_rollout_workers"] = {
            "steps": t["steps"], "samples": samples, "wall_s": wall, "samples_per_s": samples / wall,
            "share_weight_sync": t["sync_s"] / wall, "share_learner_queue_wait": t["learner_wait_s"] / wall,
            "share_reward": t["reward_s"] / wall, "share_learner": t["learner_s"] / wall,
            "rollout_embeddings_per_s": t["embeddings_per_s"]}
    out["speedup_2_vs_1"] = out["2_rollout_workers"]["samples_per_s"] / out["1_rollout_workers"]["samples_per_s"]
    return out


def bench_memory(cfg: Config) -> dict:
    """Run each pipeline stage of `cfg` once and record its peak memory (all processes)."""
    from reaemb_ray.bench.memory import peak_memory
    from reaemb_ray.stages.base import check, execute
    from reaemb_ray.stages.run import plan
    from reaemb_ray.storage import store_for

    res, store = {}, store_for(cfg)
    for st in plan(cfg):
        with peak_memory() as m:
            execute(st, store, check(st, store), fresh=True)
        res[st.name] = m
    return res


SECTIONS = ("forward", "rollout", "crrl", "memory", "growth")


def run_bench(cfg: Config, quick: bool, fresh: bool = False, only: list[str] | None = None) -> dict:
    """Run every section (or `only` these); each finished section is saved, so an interrupted bench resumes
    (both sides of every ratio always come from the same section run; growth also keeps its finished pieces)."""
    import torch

    from reaemb_ray.bench.growth import growth
    from reaemb_ray.bench.load import machine_load
    from reaemb_ray.rl.policy import load_item_texts
    from reaemb_ray.runtime import init_ray
    from reaemb_ray.stages.run import run_stage

    unknown = sorted(set(only or []) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown bench section {unknown[0]!r}; use any of {', '.join(SECTIONS)}")
    sz = _sizes(quick)
    out_dir = Path(cfg.output_dir).expanduser().resolve() / ("bench-quick" if quick else "bench")
    bcfg = _bench_cfg(cfg, quick, out_dir)
    partial = out_dir / "partial.json"
    header = {"quick": quick, "backbone": bcfg.model.backbone, "dtype": bcfg.model.dtype, "sizes": sz}
    result: dict = json.loads(partial.read_text()) if partial.exists() and not fresh else {}
    if any(result.get(k) != v for k, v in header.items()):
        result = {}
    result.update(header, machine={"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__})
    init_ray(bcfg.ray)
    run_stage(bcfg, "prepare")
    texts = load_item_texts(bcfg.out / layout.PREPARED)
    order = sorted(texts)
    random.Random(0).shuffle(order)
    sample = {i: texts[i] for i in order}
    base = str(prepare_base_for_bench(bcfg))

    sections = [
        ("forward", lambda: bench_forward(bcfg, list(sample.values()), sz)),
        ("rollout", lambda: bench_rollout(bcfg, sample, sz, ["torch", "naive", "vllm"], base)),
        ("crrl", lambda: bench_crrl(bcfg, sz, base)),
        ("memory", lambda: bench_memory(cfg_with(bcfg, **{"output_dir": str(out_dir / "pipeline")}))),
        ("growth", lambda: growth(out_dir / "growth", sz["growth"])),
    ]
    for name, fn in sections:
        if only and name not in only or name == "memory" and not quick:
            continue
        if name in result:
            log.info("bench: %s already measured (%s), kept", name, partial)
            continue
        log.info("bench: %s", name)
        with machine_load() as load:
            result[name] = fn()
        result[name]["load"] = load
        result.setdefault("section_seconds", {})[name] = load["wall_s"]
        partial.write_text(json.dumps(result, indent=2, default=float))
    result["ratios"] = _ratios(result)
    result["seconds"] = round(sum(result.get("section_seconds", {}).values()), 1)
    return result


def _ratios(result: dict) -> dict:
    """The headline ratios of whichever sections have been measured (medians of the per-round ratios)."""
    ratios = {}
    if "forward" in result:
        f = result["forward"]
        ratios.update({
            "lrcl_train_step_efficient_vs_naive": f["lrcl_train_step"]["speedup"],
            "export_efficient_vs_naive": f["export"]["speedup"],
            "export_fraction_of_matmul_peak": f["export"]["fraction_of_peak"]["median"]})
        if "shared_head_speedup" in f["export"]:
            ratios.update({"lrcl_train_step_shared_head_on_vs_off": f["lrcl_train_step"]["shared_head_speedup"],
                           "export_shared_head_on_vs_off": f["export"]["shared_head_speedup"]})
    if "rollout" in result:
        engines = result["rollout"]["engines"]
        ratios.update({f"rollout_{e}_vs_naive": r["vs_naive"]["median"] for e, r in engines.items() if e != "naive"})
        ratios["rollout_torch_fraction_of_matmul_peak"] = engines["torch"]["fraction_of_peak"]["median"]
    if "crrl" in result:
        ratios["crrl_2_vs_1_rollout_workers"] = result["crrl"]["speedup_2_vs_1"]
    for piece, g in result.get("growth", {}).get("summary", {}).items():
        ratios[f"growth_{piece}_time_per_item_largest_vs_smallest"] = g["us_per_item_largest_over_smallest"]
        ratios[f"growth_{piece}_peak_memory_largest_vs_previous"] = g["peak_largest_over_previous"]
    return ratios


def main(cfg: Config, quick: bool = False, fresh: bool = False, out: str | None = None,
         sections: str | None = None) -> None:
    from reaemb_ray.bench.report import markdown, plot_growth

    res = run_bench(cfg, quick=quick, fresh=fresh,
                    only=[x.strip() for x in sections.split(",") if x.strip()] if sections else None)
    text = json.dumps(res, indent=2, default=float)
    print(text)
    dest = Path(out) if out else Path(cfg.output_dir).expanduser() / "bench.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)
    dest.with_suffix(".md").write_text(markdown(res))  # the tables, beside the JSON
    if "growth" in res:
        plot_growth(res["growth"], dest.with_name(dest.stem + "_growth.png"))
    log.info("bench written to %s (tables in %s)", dest, dest.with_suffix(".md"))
