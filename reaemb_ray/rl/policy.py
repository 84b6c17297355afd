"""The CRRL policy's starting point: a "merged" generator folder (reaemb_ray/model/generator.py) holding the
frozen LM (LoRA merged, plain HF format, which vLLM can open), the tokenizer with <|Thought|>, and the initial
latent-thought attention weights.

`prepare_base` writes it (from a generator folder, LRCL's by default, or from the raw backbone for an
ablation/test); rollout workers and the learner all load the same folder with `load_base`.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

log = logging.getLogger(__name__)


def prepare_base(cfg, out_dir: Path, source: Path | None) -> Path:
    """Write the merged policy folder into `out_dir` from the generator folder `source` (LRCL's by default), or
    from the raw backbone with a fresh attention module when `source` is None (`crrl.init_from=backbone`)."""
    from reaemb_ray.model.generator import build_embedder, export_merged, save_generator

    out_dir = Path(out_dir)
    if source is None:  # untrained attention on the raw backbone (tests, "CRRL without LRCL" ablation)
        torch.manual_seed(cfg.crrl.seed)
        module, tok, _ = build_embedder(cfg.model, cfg.data.cache_dir, with_lora=False)
        return save_generator(module, tok, out_dir, {"backbone": cfg.model.backbone, "source": "backbone"},
                              merged=True)
    log.info("merging the generator %s into %s", source, out_dir)
    return export_merged(source, out_dir, dtype=cfg.model.dtype, cache_dir=cfg.data.cache_dir)


def load_base(base_dir, dtype="float32"):
    """(lm frozen in eval mode, attention module, tokenizer)."""
    from reaemb_ray.model.generator import load_generator

    module, tok = load_generator(base_dir, merge_lora=True, dtype=dtype)
    lm = module.lm.eval().requires_grad_(False)
    return lm, module.attn, tok


def load_item_texts(prepared_dir) -> dict[int, str]:
    """item_id -> attribute text from `prepared/items.parquet` (contract in docs/ARCHITECTURE.md)."""
    p = Path(prepared_dir) / "items.parquet"
    if not p.exists():
        raise FileNotFoundError(f"{p} not found; run `reaemb prepare` first")
    t = pq.read_table(p, columns=["item_id", "text"])
    return dict(zip(t.column("item_id").to_pylist(), t.column("text").to_pylist()))


def load_cooccurrence(prepared_dir) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = Path(prepared_dir) / "cooccurrence.parquet"
    if not p.exists():
        raise FileNotFoundError(f"{p} not found; run `reaemb prepare` first")
    t = pq.read_table(p, columns=["item_a", "item_b", "count"])
    return tuple(t.column(k).to_numpy() for k in ("item_a", "item_b", "count"))
