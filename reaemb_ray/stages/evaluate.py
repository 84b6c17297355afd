"""`reaemb evaluate`: train every (method, backbone, seed) recommender, write eval/report.{json,md} + plots.

Methods: `id` learns item IDs; any other method reads `embeddings/<method>/embeddings.parquet` (the final table of
the export stage, or of the reason stage for `reason`), conditioned by `srs.conditioning` and fed in by
`srs.item_encoder`. Each finished run leaves
`eval/runs/<method>__<backbone>__seed<s>.json`, keyed by a fingerprint of what that run reads (SRS/eval
settings, the prepared splits' and the table's bytes), and the stage keeps these when it starts over: adding
a backbone or seeds, or a changed table, trains only the runs concerned (everything with --fresh).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from reaemb_ray import layout
from reaemb_ray.records import changed_fields
from reaemb_ray.srs.data import load_seq_data
from reaemb_ray.srs.encoders import condition_table, load_embedding_table
from reaemb_ray.srs.metrics import ndcg_by_popularity, summarize, user_groups
from reaemb_ray.reasoning.report import append_samples
from reaemb_ray.srs.pretrain import load_item_table
from reaemb_ray.srs.report import plot_curves, plot_popularity, run_records, write_json, write_markdown
from reaemb_ray.srs.remote import fit_runs
from reaemb_ray.stages.base import Stage, cfg_with
from reaemb_ray.storage import store_for

log = logging.getLogger(__name__)
ID_TABLE = "id"  # the table digest of an ID-only run (no table)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_fingerprint(cfg, backbone: str, seed: int, data_digest: str, table_digest: str) -> str:
    """What one (method, backbone, seed) result depends on; which runs get every seed, and where a run trains,
    do not change a run."""
    srs_drop = ("backbones", "seeds", "num_threads", "task_resources")
    if table_digest == ID_TABLE:  # an ID-only run: how an LLM table would be fed in does not change it
        srs_drop += ("item_encoder", "llm_init_std", "adapter_hidden", "pca_dim", "conditioning",
                     "conditioning_dim", "align_alpha", "align_tau", "align_form")
    srs = changed_fields(cfg.srs, drop=srs_drop)
    ev = changed_fields(cfg.eval, drop=("methods", "main_methods", "main_backbones"))
    key = {"srs": srs, "eval": ev, "backbone": backbone, "seed": seed, "data": data_digest, "table": table_digest,
           "groups": [cfg.data.tail_threshold, cfg.data.short_user_threshold]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def run_evaluate(cfg, fresh: bool = False) -> dict:
    """Train what is missing, write the report; returns a summary for the stage record."""
    from reaemb_ray.preflight import check_catalogue

    store = store_for(cfg)
    if fresh:
        store.delete(layout.EVAL)
    tables = {m: layout.embeddings_table(m) for m in cfg.eval.methods if m != "id"}
    missing = [m for m, rel in tables.items() if not store.exists(rel)]
    if missing:
        raise FileNotFoundError(f"evaluate needs the embedding tables of {', '.join(missing)} (" + ", ".join(
            store.uri(tables[m]) for m in missing) + "); run their export stages first (`reaemb run` runs "
            "everything eval.methods needs)")
    prepared = store.fetch(layout.PREPARED)
    check_catalogue(cfg, prepared)  # e.g. eval.num_sampled_negatives, before any training
    data = load_seq_data(prepared)
    groups = user_groups(data.test, data.popularity, data.full_lengths(), cfg.data.tail_threshold,
                         cfg.data.short_user_threshold)
    sampled_name = f"sampled{cfg.eval.num_sampled_negatives}"
    data_digest = _file_digest(prepared / "splits.parquet")
    align_table = None
    if cfg.srs.align_alpha > 0 and tables:
        align_table = load_item_table(store.fetch(layout.SRS_PRETRAIN))

    records, curves, buckets = [], {}, {}
    planned: list[tuple] = []  # (name, method, backbone, finished run or None)
    todo: dict[str, dict] = {}  # name -> fit_and_test arguments of the runs to train
    keys: dict[str, tuple] = {}
    for method in cfg.eval.methods:
        table, table_digest, conditioned = None, ID_TABLE, {}
        if method != "id":
            path = store.fetch(tables[method])
            table = load_embedding_table(path, data.num_items, cfg.srs.pca_dim)
            table, conditioned = condition_table(table, cfg.srs.conditioning, cfg.srs.conditioning_dim)
            table_digest = _file_digest(path)
        for backbone in cfg.srs.backbones:
            main = (not cfg.eval.main_methods or method in cfg.eval.main_methods) and (
                not cfg.eval.main_backbones or backbone in cfg.eval.main_backbones)
            for seed in cfg.srs.seeds if main else cfg.srs.seeds[:1]:
                name = f"{method}__{backbone}__seed{seed}"
                rel = layout.join(layout.EVAL, layout.EVAL_RUNS, f"{name}.json")
                fp = run_fingerprint(cfg, backbone, seed, data_digest, table_digest)
                run = store.read_json(rel) if store.exists(rel) else {}
                if run.get("fingerprint") == fp:
                    log.info("reusing finished run %s", store.uri(rel))
                else:
                    run = None
                    keys[name] = (method, backbone, seed, fp, conditioned)
                    todo[name] = dict(backbone=backbone, srs=cfg.srs, seed=seed,
                                      num_negatives=cfg.eval.num_sampled_negatives, table=table,
                                      align_table=align_table if table is not None else None,
                                      exclude_history=cfg.eval.exclude_history, desc=name)
                planned.append((name, method, backbone, run))

    finished = {}
    for name, (_, res, full, samp), seconds in fit_runs(cfg, data, todo):  # several at once with srs.task_resources
        method, backbone, seed, fp, conditioned = keys[name]
        ranks = {"full": full, sampled_name: samp}
        run = {"fingerprint": fp, "records": run_records(method, backbone, seed, ranks, groups, cfg.eval.ks),
               "conditioning": conditioned,
               "curve": res.curve, "best_epoch": res.best_epoch, "seconds": seconds,
               "popularity_buckets": ndcg_by_popularity(full, data.test, data.popularity, 10)}
        # saved as soon as it finishes: kept when the stage is interrupted, a rerun skips it
        store.write_json(layout.join(layout.EVAL, layout.EVAL_RUNS, f"{name}.json"), run)
        log.info("%s: full %s | %s %s | %.0f s", name, summarize(full, [10]), sampled_name,
                 summarize(samp, [10]), run["seconds"])
        finished[name] = run
    for name, method, backbone, run in planned:
        run = run or finished[name]
        records += run["records"]
        curves[name] = run["curve"]
        buckets.setdefault((method, backbone), []).append(run["popularity_buckets"])

    with store.writing(layout.EVAL) as out:
        write_json(records, out / layout.REPORT_JSON)
        write_markdown(records, out / layout.REPORT_MD)
        if "reason" in cfg.eval.methods:  # the explicit-reasoning mode's generated reasons
            append_samples(store.fetch(layout.reason_samples()), out / layout.REPORT_MD)
        plot_curves(curves, out / "val_curves.png")
        plot_popularity(buckets, out / "ndcg_by_popularity.png")
    log.info("wrote %s", store.uri(layout.join(layout.EVAL, layout.REPORT_MD)))
    return {"runs": len(curves), "trained": len(finished), "methods": list(cfg.eval.methods)}


def stages(cfg) -> list[Stage]:
    """`evaluate`: every method of eval.methods (plus the CRRL variants when crrl is evaluated)."""
    from reaemb_ray.stages.crrl import variant_method

    methods = list(cfg.eval.methods)
    if "crrl" in methods:
        methods += [m for m in map(variant_method, cfg.crrl.variants) if m not in methods]
    c = cfg_with(cfg, **{"eval.methods": methods})
    deps = ["prepare"] + [layout.table_stage(m) for m in methods if m != "id"]
    deps += ["srs_pretrain"] if cfg.srs.align_alpha > 0 and any(m != "id" for m in methods) else []
    reads = {"srs": changed_fields(cfg.srs), "eval": changed_fields(c.eval),
             "groups": [cfg.data.tail_threshold, cfg.data.short_user_threshold]}
    return [Stage("evaluate", tuple(deps), reads, run_evaluate, c, keep=(layout.EVAL_RUNS,), command="evaluate")]
