"""The "pretrained SRS": an ID-based SASRec whose item table feeds the CRRL `srs` reward and LLMEmb alignment.

`pretrain_id_sasrec(cfg)` trains it on `{output_dir}/prepared/` and writes `{output_dir}/srs_pretrain/`:
`item_table.npy` ((N+1, srs.hidden) float32, row = item id, row 0 padding), `model.pt` (state dict),
`metrics.json` (validation curve, test metrics) and `_DONE.json` (fingerprint of the settings it used).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from reaemb_ray.srs.data import load_seq_data
from reaemb_ray.srs.metrics import summarize
from reaemb_ray.srs.remote import fit_one

log = logging.getLogger(__name__)
SUBDIR = "srs_pretrain"


def _fingerprint(cfg) -> str:
    keys = {"srs": dataclasses.asdict(cfg.srs), "seed": cfg.seed, "data": cfg.data.name}
    for k in ("backbones", "seeds", "num_threads", "align_alpha", "align_tau", "max_minutes", "task_resources"):
        keys["srs"].pop(k)  # do not change the pretrained model
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def pretrain_id_sasrec(cfg, fresh: bool = False, progress: bool = True) -> Path:
    """Train (or reuse, when `_DONE.json` matches the settings) the ID-SASRec; returns its folder."""
    out = cfg.out / SUBDIR
    done = out / "_DONE.json"
    fp = _fingerprint(cfg)
    if not fresh and done.exists() and json.loads(done.read_text()).get("fingerprint") == fp:
        log.info("pretrained ID-SASRec in %s is up to date; reusing it", out)
        return out
    data = load_seq_data(cfg.out / "prepared")
    t0 = time.perf_counter()
    model, result, full, sampled = fit_one(  # in this process, or a Ray task with srs.task_resources
        cfg, data, backbone="sasrec", srs=cfg.srs, seed=cfg.seed, num_negatives=cfg.eval.num_sampled_negatives,
        exclude_history=cfg.eval.exclude_history, progress=progress, desc="pretrain ID-SASRec",
    )
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        table = model.item_embeddings().float().cpu().numpy()
    np.save(out / "item_table.npy", table.astype(np.float32))
    torch.save(model.state_dict(), out / "model.pt")
    metrics = {"full": summarize(full, cfg.eval.ks), f"sampled{cfg.eval.num_sampled_negatives}": summarize(sampled, cfg.eval.ks),
               "best_epoch": result.best_epoch, "best_val_ndcg10": result.best_val_ndcg10,
               "train_seconds": result.train_seconds, "curve": result.curve}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    done.write_text(json.dumps({"fingerprint": fp, "seconds": time.perf_counter() - t0,
                                "num_items": data.num_items, "hidden": cfg.srs.hidden}))
    log.info("pretrained ID-SASRec: test full NDCG@10 %.4f, written to %s", metrics["full"].get("NDCG@10", float("nan")), out)
    return out


def load_item_table(output_dir: str | Path) -> np.ndarray:
    """(N+1, hidden) float32 item table of the pretrained ID-SASRec (row = item id)."""
    path = Path(output_dir).expanduser() / SUBDIR / "item_table.npy"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing; train the pretrained ID-SASRec first "
            "(reaemb_ray.srs.pretrain.pretrain_id_sasrec(cfg), run by `reaemb run` before crrl/evaluate)"
        )
    return np.load(path)
