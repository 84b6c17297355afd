"""`reaemb srs_pretrain`: the ID-SASRec that the CRRL `srs`/`mix` rewards and LLMEmb alignment read
(reaemb_ray/srs/pretrain.py), trained on `prepared/` and written to `srs_pretrain/`."""
from __future__ import annotations

from reaemb_ray import layout
from reaemb_ray.records import changed_fields
from reaemb_ray.stages.base import Stage
from reaemb_ray.storage import store_for


def run_srs_pretrain(cfg) -> dict:
    from reaemb_ray.srs.pretrain import pretrain_id_sasrec

    store = store_for(cfg)
    with store.writing(layout.SRS_PRETRAIN) as out:
        metrics = pretrain_id_sasrec(cfg, store.fetch(layout.PREPARED), out)
    return {"full": metrics["full"], "best_epoch": metrics["best_epoch"]}


def stages(cfg) -> list[Stage]:
    # which recommenders/seeds are evaluated, and the alignment settings, do not change this model
    srs = changed_fields(cfg.srs, drop=("backbones", "seeds", "num_threads", "align_alpha", "align_tau",
                                       "task_resources"))
    ev = changed_fields(cfg.eval)
    reads = {"srs": srs, "seed": cfg.seed,
             "eval": {k: ev[k] for k in ("exclude_history", "num_sampled_negatives", "ks") if k in ev}}
    return [Stage("srs_pretrain", ("prepare",), reads, run_srs_pretrain, cfg, command="srs_pretrain",
                  resumable=False)]
