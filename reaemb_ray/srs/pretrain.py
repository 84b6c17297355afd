"""The "pretrained SRS": an ID-based SASRec whose item table feeds the CRRL `srs` reward and LLMEmb alignment.

`pretrain_id_sasrec(cfg, prepared_dir, out_dir)` trains it on the prepared tables and writes into `out_dir`:
`item_table.npy` ((N+1, srs.hidden) float32, row = item id, row 0 padding), `model.pt` (state dict) and
`metrics.json` (validation curve, test metrics). The `srs_pretrain` stage (reaemb_ray/stages/srs_pretrain.py)
decides where those live and when they are up to date.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from reaemb_ray.srs.data import load_seq_data
from reaemb_ray.srs.metrics import summarize
from reaemb_ray.srs.remote import fit_one

log = logging.getLogger(__name__)
ITEM_TABLE = "item_table.npy"


def pretrain_id_sasrec(cfg, prepared_dir: str | Path, out_dir: str | Path, progress: bool = True) -> dict:
    """Train the ID-SASRec on `prepared_dir` (in this process, or a Ray task with srs.task_resources), write it
    into `out_dir`; returns its test metrics."""
    data = load_seq_data(prepared_dir)
    model, result, full, sampled = fit_one(
        cfg, data, backbone="sasrec", srs=cfg.srs, seed=cfg.seed, num_negatives=cfg.eval.num_sampled_negatives,
        exclude_history=cfg.eval.exclude_history, progress=progress, desc="pretrain ID-SASRec",
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        table = model.item_embeddings().float().cpu().numpy()
    np.save(out / ITEM_TABLE, table.astype(np.float32))
    torch.save(model.state_dict(), out / "model.pt")
    metrics = {"full": summarize(full, cfg.eval.ks), f"sampled{cfg.eval.num_sampled_negatives}": summarize(sampled, cfg.eval.ks),
               "best_epoch": result.best_epoch, "best_val_ndcg10": result.best_val_ndcg10,
               "train_seconds": result.train_seconds, "curve": result.curve}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("pretrained ID-SASRec: test full NDCG@10 %.4f, written to %s", metrics["full"].get("NDCG@10", float("nan")), out)
    return metrics


def load_item_table(folder: str | Path) -> np.ndarray:
    """(N+1, hidden) float32 item table of the pretrained ID-SASRec in `folder` (row = item id)."""
    path = Path(folder).expanduser() / ITEM_TABLE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; the srs_pretrain stage writes it (`reaemb srs_pretrain`, or "
                                "`reaemb run`, which runs it before crrl/evaluate when they need it)")
    return np.load(path)
