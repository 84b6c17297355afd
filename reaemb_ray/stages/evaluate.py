"""`reaemb evaluate`: train every (method, backbone, seed) recommender, write eval/report.{json,md} + plots.

Methods: `id` learns item IDs; any other method reads `{output_dir}/embeddings/<method>/embeddings.parquet`
through the frozen-table adapter. Each finished run leaves `eval/runs/<method>__<backbone>__seed<s>.json`,
keyed by a fingerprint of its inputs (SRS/eval settings, prepared splits, the table's bytes): a rerun only
trains what is missing or whose inputs changed (everything with --fresh).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from reaemb_ray import storage
from reaemb_ray.srs.data import load_seq_data
from reaemb_ray.srs.encoders import load_embedding_table
from reaemb_ray.srs.metrics import ndcg_by_popularity, summarize, user_groups
from reaemb_ray.srs.pretrain import load_item_table, pretrain_id_sasrec
from reaemb_ray.srs.report import plot_curves, plot_popularity, run_records, write_json, write_markdown
from reaemb_ray.srs.remote import fit_runs

log = logging.getLogger(__name__)

PRODUCED_BY = {
    "raw_llm": "`reaemb export export.method=raw_llm` (mean-pooled untrained LLM)",
    "llmemb": "`reaemb lrcl model.use_thought=false` then `reaemb export export.method=llmemb`",
    "lrcl": "`reaemb lrcl` then `reaemb export export.method=lrcl`",
    "crrl": "`reaemb crrl` then `reaemb export export.method=crrl`",
    "reason": "`reaemb reason` (explicit reasoning + the small-LM embedder)",
}


def table_path(output_dir: Path, method: str) -> Path:
    return output_dir / "embeddings" / method / "embeddings.parquet"


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_fingerprint(cfg, backbone: str, seed: int, data_digest: str, table_digest: str, format: int = 2) -> str:
    """What one (method, backbone, seed) result depends on (`format=1`: how runs were keyed before format 2)."""
    srs_drop = ("backbones", "seeds", "num_threads", "task_resources")  # where a run trains does not change it
    if not table_digest:  # an ID-only run: how an LLM table would be fed in does not change it
        srs_drop += ("item_encoder", "llm_init_std", "adapter_hidden", "pca_dim", "align_alpha", "align_tau",
                     "align_form")
    if format == 2:  # which runs get every seed does not change a run
        srs = storage.changed_fields(cfg.srs, drop=srs_drop)
        ev = storage.changed_fields(cfg.eval, drop=("methods", "main_methods", "main_backbones"))
    else:
        srs, ev = storage.whole_section(cfg.srs, drop=srs_drop), storage.whole_section(cfg.eval, drop=("methods",))
    key = {"srs": srs, "eval": ev, "backbone": backbone, "seed": seed, "data": data_digest, "table": table_digest,
           "groups": [cfg.data.tail_threshold, cfg.data.short_user_threshold]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def main(cfg, args=None) -> Path:
    from reaemb_ray.preflight import check_catalogue

    fresh = bool(getattr(args, "fresh", False))
    check_catalogue(cfg, cfg.out / "prepared")  # e.g. eval.num_sampled_negatives, before any training
    out = cfg.out / "eval"
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    data = load_seq_data(cfg.out / "prepared")
    groups = user_groups(data.test, data.popularity, data.full_lengths(), cfg.data.tail_threshold,
                         cfg.data.short_user_threshold)
    sampled_name = f"sampled{cfg.eval.num_sampled_negatives}"
    data_digest = _file_digest(cfg.out / "prepared" / "splits.parquet")

    align_table = None
    if cfg.srs.align_alpha > 0 and any(m != "id" for m in cfg.eval.methods):
        pretrain_id_sasrec(cfg)
        align_table = load_item_table(cfg.out)

    records, curves, buckets, skipped = [], {}, {}, []
    planned: list[tuple] = []  # (name, method, backbone, finished run or None)
    todo: dict[str, dict] = {}  # name -> fit_and_test arguments of the runs to train
    keys: dict[str, tuple] = {}
    for method in cfg.eval.methods:
        table, table_digest = None, "id"
        if method != "id":
            path = table_path(cfg.out, method)
            if not path.exists():
                msg = f"{method}: {path} not found; produced by {PRODUCED_BY.get(method, 'export')}"
                log.warning("skipping %s", msg)
                skipped.append(msg)
                continue
            table = load_embedding_table(path, data.num_items, cfg.srs.pca_dim)
            table_digest = _file_digest(path)
        for backbone in cfg.srs.backbones:
            main = (not cfg.eval.main_methods or method in cfg.eval.main_methods) and (
                not cfg.eval.main_backbones or backbone in cfg.eval.main_backbones)
            for seed in cfg.srs.seeds if main else cfg.srs.seeds[:1]:
                name = f"{method}__{backbone}__seed{seed}"
                result_file = runs_dir / f"{name}.json"
                fp = run_fingerprint(cfg, backbone, seed, data_digest, table_digest)
                run = json.loads(result_file.read_text()) if result_file.exists() and not fresh else {}
                if run and run.get("fingerprint") != fp and run.get("fingerprint") == run_fingerprint(
                        cfg, backbone, seed, data_digest, table_digest, format=1):
                    run["fingerprint"] = fp  # finished under fingerprint format 1 with the same settings
                    result_file.write_text(json.dumps(run))
                if run.get("fingerprint") == fp:
                    log.info("reusing finished run %s", result_file)
                else:
                    run = None
                    keys[name] = (method, backbone, seed, fp)
                    todo[name] = dict(backbone=backbone, srs=cfg.srs, seed=seed,
                                      num_negatives=cfg.eval.num_sampled_negatives, table=table,
                                      align_table=align_table if table is not None else None,
                                      exclude_history=cfg.eval.exclude_history, desc=name)
                planned.append((name, method, backbone, run))

    finished = {}
    for name, (_, res, full, samp), seconds in fit_runs(cfg, data, todo):  # several at once with srs.task_resources
        method, backbone, seed, fp = keys[name]
        ranks = {"full": full, sampled_name: samp}
        run = {"fingerprint": fp, "records": run_records(method, backbone, seed, ranks, groups, cfg.eval.ks),
               "curve": res.curve, "best_epoch": res.best_epoch, "seconds": seconds,
               "popularity_buckets": ndcg_by_popularity(full, data.test, data.popularity, 10)}
        (runs_dir / f"{name}.json").write_text(json.dumps(run))  # saved as soon as it finishes
        log.info("%s: full %s | %s %s | %.0f s", name, summarize(full, [10]), sampled_name,
                 summarize(samp, [10]), run["seconds"])
        finished[name] = run
    for name, method, backbone, run in planned:
        run = run or finished[name]
        records += run["records"]
        curves[name] = run["curve"]
        buckets.setdefault((method, backbone), []).append(run["popularity_buckets"])

    if not records:
        raise FileNotFoundError("evaluate found nothing to evaluate: " + "; ".join(skipped))
    write_json(records, out / "report.json")
    write_markdown(records, out / "report.md", skipped)
    from reaemb_ray.reasoning.report import append_samples
    append_samples(cfg.out, out / "report.md")  # the explicit-reasoning mode's generated reasons, when it ran
    plot_curves(curves, out / "val_curves.png")
    plot_popularity(buckets, out / "ndcg_by_popularity.png")
    log.info("wrote %s", out / "report.md")
    return out
