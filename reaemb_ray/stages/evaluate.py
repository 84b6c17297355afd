"""`reaemb evaluate`: train every (method, backbone, seed) recommender, write eval/report.{json,md} + plots.

Methods: `id` learns item IDs; any other method reads `{output_dir}/embeddings/<method>/embeddings.parquet`
through the frozen-table adapter. Each finished run leaves `eval/runs/<method>__<backbone>__seed<s>.json`,
so a rerun only trains what is missing (unless --fresh).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from reaemb_ray.srs.data import load_seq_data
from reaemb_ray.srs.encoders import load_embedding_table
from reaemb_ray.srs.metrics import ndcg_by_popularity, summarize, user_groups
from reaemb_ray.srs.pretrain import load_item_table, pretrain_id_sasrec
from reaemb_ray.srs.report import plot_curves, plot_popularity, run_records, write_json, write_markdown
from reaemb_ray.srs.trainer import fit_and_test

log = logging.getLogger(__name__)

PRODUCED_BY = {
    "raw_llm": "`reaemb export export.method=raw_llm` (mean-pooled untrained LLM)",
    "llmemb": "`reaemb lrcl model.use_thought=false` then `reaemb export export.method=llmemb`",
    "lrcl": "`reaemb lrcl` then `reaemb export export.method=lrcl`",
    "crrl": "`reaemb crrl` then `reaemb export export.method=crrl`",
}


def table_path(output_dir: Path, method: str) -> Path:
    return output_dir / "embeddings" / method / "embeddings.parquet"


def main(cfg, args=None) -> Path:
    fresh = bool(getattr(args, "fresh", False))
    out = cfg.out / "eval"
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    data = load_seq_data(cfg.out / "prepared")
    groups = user_groups(data.test, data.popularity, data.full_lengths(), cfg.data.tail_threshold,
                         cfg.data.short_user_threshold)
    sampled_name = f"sampled{cfg.eval.num_sampled_negatives}"

    align_table = None
    if cfg.srs.align_alpha > 0 and any(m != "id" for m in cfg.eval.methods):
        pretrain_id_sasrec(cfg)
        align_table = load_item_table(cfg.out)

    records, curves, buckets, skipped = [], {}, {}, []
    for method in cfg.eval.methods:
        table = None
        if method != "id":
            path = table_path(cfg.out, method)
            if not path.exists():
                msg = f"{method}: {path} not found; produced by {PRODUCED_BY.get(method, 'export')}"
                log.warning("skipping %s", msg)
                skipped.append(msg)
                continue
            table = load_embedding_table(path, data.num_items, cfg.srs.pca_dim)
        for backbone in cfg.srs.backbones:
            for seed in cfg.srs.seeds:
                name = f"{method}__{backbone}__seed{seed}"
                result_file = runs_dir / f"{name}.json"
                if result_file.exists() and not fresh:
                    log.info("reusing finished run %s", result_file)
                    run = json.loads(result_file.read_text())
                else:
                    t0 = time.perf_counter()
                    _, res, full, samp = fit_and_test(
                        data, backbone, cfg.srs, seed, cfg.eval.num_sampled_negatives, table=table,
                        align_table=align_table if table is not None else None, exclude_history=cfg.eval.exclude_history, desc=name)
                    ranks = {"full": full, sampled_name: samp}
                    run = {"records": run_records(method, backbone, seed, ranks, groups, cfg.eval.ks),
                           "curve": res.curve, "best_epoch": res.best_epoch, "seconds": time.perf_counter() - t0,
                           "popularity_buckets": ndcg_by_popularity(full, data.test, data.popularity, 10)}
                    result_file.write_text(json.dumps(run))
                    log.info("%s: full %s | %s %s | %.0f s", name, summarize(full, [10]), sampled_name,
                             summarize(samp, [10]), run["seconds"])
                records += run["records"]
                curves[name] = run["curve"]
                buckets.setdefault((method, backbone), []).append(run["popularity_buckets"])

    if not records:
        raise FileNotFoundError("evaluate found nothing to evaluate: " + "; ".join(skipped))
    write_json(records, out / "report.json")
    write_markdown(records, out / "report.md", skipped)
    plot_curves(curves, out / "val_curves.png")
    plot_popularity(buckets, out / "ndcg_by_popularity.png")
    log.info("wrote %s", out / "report.md")
    return out
