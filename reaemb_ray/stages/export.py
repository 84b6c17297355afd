"""`reaemb export`: every item's embedding with Ray Data batch inference.

export.method picks the generator:
  raw_llm  the base LM, mean pool of one pass (no thought), no training
  llmemb   `{output_dir}/llmemb/final` (contrastive fine-tuning without the thought), LoRA merged
  lrcl     `{output_dir}/lrcl/final`, LoRA merged, two passes with the latent thought
  crrl     the merged LRCL model with the attention module from `{output_dir}/crrl/final`

Output `{output_dir}/embeddings/<method>/`: `embeddings.parquet` (item_id int64, vector list<float32>, every
item once, sorted), `embeddings_pca.parquet` when export.pca_dim > 0, `_DONE.json`. Work is split into shards
of export.shard_size items written to `shards/` as they finish; a restarted export skips finished shards.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

log = logging.getLogger("reaemb.export")


class ItemEmbedder:
    """Ray Data callable class: loads the generator once per actor, embeds batches of item texts."""

    def __init__(self, cfg, backbone_path: str, threads: int = 1):
        import torch

        from reaemb_ray.device import placement
        from reaemb_ray.model.backbone import load_backbone
        from reaemb_ray.model.generator import ThoughtEmbedder

        torch.set_num_threads(max(1, threads))
        self.device = placement(export_dtype(cfg)).device  # CUDA when export.use_gpu gave this actor a GPU
        method, out, mc = cfg.export.method, cfg.out.resolve(), cfg.model
        if method == "raw_llm":
            lm, tok = load_backbone(backbone_path, export_dtype(cfg))
            module = ThoughtEmbedder(lm, use_thought=False, pooling=mc.pooling)
        else:
            module, tok = load_generator_for(method, out, cfg)
        self.module, self.tok = module.eval().to(self.device), tok
        self.noun, self.max_length, self.efficient = cfg.data.noun, mc.max_length, cfg.export.efficient_forward
        self.pooling = module.pooling  # a trained generator pools as it was trained

    def __call__(self, batch: dict) -> dict:
        import torch

        from reaemb_ray.data.prompts import item_prompt
        from reaemb_ray.device import to_device
        from reaemb_ray.model.two_pass import tokenize_prompts

        prompts = [item_prompt(self.tok, str(t), self.noun) for t in batch["text"]]
        b = to_device(tokenize_prompts(self.tok, prompts, self.max_length, self.pooling, self.noun), self.device)
        with torch.no_grad():
            emb = self.module.embed(b, efficient=self.efficient)
        return {"item_id": np.asarray(batch["item_id"], dtype=np.int64), "vector": emb.float().cpu().numpy()}


def export_dtype(cfg) -> str:
    return cfg.export.dtype or cfg.model.dtype


def load_generator_for(method: str, out: Path, cfg):
    """(ThoughtEmbedder, tokenizer) for a trained method, with the backbone checked against the config."""
    from safetensors.torch import load_file

    from reaemb_ray.model.backbone import to_dtype
    from reaemb_ray.model.generator import ATTN_FILE, load_generator

    src = out / ("llmemb" if method == "llmemb" else "lrcl") / "final"
    if not src.exists():
        stage = "reaemb lrcl" + (" model.use_thought=false" if method == "llmemb" else "")
        raise FileNotFoundError(f"export.method={method} needs the trained generator at {src}; run `{stage}` first")
    module, tok = load_generator(src, merge_lora=True, dtype=export_dtype(cfg), expect_backbone=cfg.model.backbone,
                                 cache_dir=cfg.data.cache_dir)
    if method == "crrl":
        attn = out / "crrl" / "final" / ATTN_FILE
        if not attn.exists():
            raise FileNotFoundError(f"export.method=crrl needs {attn}; run `reaemb crrl` first")
        state = load_file(str(attn))
        if state["q_proj.weight"].shape[0] != module.hidden_size:
            raise ValueError(f"{attn} is for hidden size {state['q_proj.weight'].shape[0]} but the LRCL model has "
                             f"{module.hidden_size}; the CRRL and LRCL checkpoints do not belong together")
        module.attn.load_state_dict({k: v.to(to_dtype(export_dtype(cfg))) for k, v in state.items()})
    return module, tok


def item_blocks(table: pa.Table, batch_size: int) -> list[pa.Table]:
    """Blocks of two batches each. One big block would come back only when all of it is embedded: no progress,
    and no finished shard on disk if the export is killed."""
    step = max(batch_size, 1) * 2
    return [table.slice(i, step) for i in range(0, table.num_rows, step)]


def _shard_path(shard_dir: Path, k: int) -> Path:
    return shard_dir / f"shard_{k:05d}.parquet"


def _write_table(path: Path, item_ids: np.ndarray, vectors: np.ndarray) -> None:
    vec = pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float32).ravel()), vectors.shape[1])
    table = pa.table({"item_id": pa.array(item_ids, pa.int64()), "vector": vec.cast(pa.list_(pa.float32()))})
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)  # atomic: a shard file is either complete or absent


def run_export(cfg, fresh: bool = False) -> dict:
    """Embed every item; returns a summary dict (also written to _DONE.json)."""
    import ray

    from reaemb_ray.data.prepare import load_prepared
    from reaemb_ray.model.backbone import resolve_backbone
    from reaemb_ray.runtime import init_ray

    ec, method = cfg.export, cfg.export.method
    out = cfg.out.resolve()
    dest = out / "embeddings" / method
    if fresh and dest.exists():
        shutil.rmtree(dest)
    if (dest / "_DONE.json").exists():
        log.info("export %s already done (%s); pass --fresh to redo", method, dest)
        return json.loads((dest / "_DONE.json").read_text())
    shard_dir = dest / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    items = load_prepared(out).items.select(["item_id", "text"]).sort_by("item_id")
    n = items.num_rows
    backbone_path = resolve_backbone(cfg.model, cfg.data.cache_dir)  # once here, before the actors start
    if method != "raw_llm":
        _check_sources(method, out, cfg)

    shard_of = np.arange(n) // ec.shard_size
    num_shards = int(shard_of[-1]) + 1
    done = {k for k in range(num_shards) if _shard_path(shard_dir, k).exists()}
    todo = np.flatnonzero(~np.isin(shard_of, list(done)))
    # Within a shard, embed items in order of text length: batches pad less, shards still finish one by one.
    lengths = pc.utf8_length(items.column("text")).to_numpy()
    todo = todo[np.lexsort((lengths[todo], shard_of[todo]))]
    log.info("export %s: %d items in %d shards, %d already done", method, n, num_shards, len(done))
    t0 = time.time()
    if len(todo):
        init_ray(cfg.ray)
        ray.data.DataContext.get_current().enable_progress_bars = False  # the tqdm bar below counts items
        ds = ray.data.from_arrow(item_blocks(items.take(pa.array(todo)), ec.batch_size))
        ds = ds.map_batches(ItemEmbedder, fn_constructor_args=(cfg, backbone_path, ec.cpus_per_actor),
                            batch_size=ec.batch_size, batch_format="numpy", concurrency=ec.num_actors,
                            num_cpus=ec.cpus_per_actor, num_gpus=1 if ec.use_gpu else 0)
        _collect_shards(ds, items, shard_of, todo, shard_dir)
    seconds = time.time() - t0

    table = pa.concat_tables([pq.read_table(_shard_path(shard_dir, k)) for k in range(num_shards)]).sort_by("item_id")
    ids = table.column("item_id").to_numpy()
    if len(ids) != n or not np.array_equal(ids, items.column("item_id").to_numpy()):
        raise RuntimeError(f"export {method}: shards hold {len(ids)} rows for {n} items; delete {shard_dir} and rerun")
    pq.write_table(table, dest / "embeddings.parquet")
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
    if not np.isfinite(vectors).all():
        raise RuntimeError(f"export {method}: non-finite values in the embeddings")
    if ec.pca_dim:
        from sklearn.decomposition import PCA

        if ec.pca_dim > min(vectors.shape):
            raise ValueError(f"export.pca_dim={ec.pca_dim} exceeds min(items, hidden)={min(vectors.shape)}; lower it")
        reduced = PCA(n_components=ec.pca_dim, random_state=cfg.seed).fit_transform(vectors)
        _write_table(dest / "embeddings_pca.parquet", ids, reduced)
    summary = {"method": method, "items": n, "dim": int(vectors.shape[1]), "pca_dim": ec.pca_dim,
               "shards": num_shards, "shards_skipped": len(done), "seconds": round(seconds, 1),
               "items_per_s": round(len(todo) / seconds, 2) if len(todo) and seconds > 0 else None,
               "backbone": cfg.model.backbone, "efficient_forward": ec.efficient_forward,
               "dtype": export_dtype(cfg)}
    (dest / "_DONE.json").write_text(json.dumps(summary, indent=2))
    log.info("export %s: wrote %s (%d x %d)", method, dest / "embeddings.parquet", n, vectors.shape[1])
    return summary


def _check_sources(method: str, out: Path, cfg) -> None:
    """Fail in the driver with a clear message instead of inside every actor."""
    from reaemb_ray.model.generator import read_meta

    src = out / ("llmemb" if method == "llmemb" else "lrcl") / "final"
    if not src.exists():
        stage = "reaemb lrcl" + (" model.use_thought=false" if method == "llmemb" else "")
        raise FileNotFoundError(f"export.method={method} needs the trained generator at {src}; run `{stage}` first")
    meta = read_meta(src)
    if meta["backbone"] != cfg.model.backbone:
        raise ValueError(f"{src} was trained on backbone {meta['backbone']!r} but model.backbone is "
                         f"{cfg.model.backbone!r}; set model.backbone={meta['backbone']}")
    if method == "crrl" and not (out / "crrl" / "final" / "thought_attention.safetensors").exists():
        raise FileNotFoundError(f"export.method=crrl needs {out / 'crrl' / 'final'}; run `reaemb crrl` first")


def _collect_shards(ds, items: pa.Table, shard_of: np.ndarray, todo: np.ndarray, shard_dir: Path) -> None:
    """Stream results, write each shard as soon as all its items have arrived."""
    from tqdm import tqdm

    pos_of = {int(i): p for p, i in enumerate(items.column("item_id").to_numpy())}
    expected: dict[int, int] = {}
    for p in todo:
        expected[int(shard_of[p])] = expected.get(int(shard_of[p]), 0) + 1
    pending: dict[int, list] = {k: [] for k in expected}
    with tqdm(total=len(todo), desc="export", unit="item") as bar:
        for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
            for item_id, vec in zip(batch["item_id"], batch["vector"]):
                k = int(shard_of[pos_of[int(item_id)]])
                pending[k].append((int(item_id), vec))
                if len(pending[k]) == expected[k]:
                    rows = sorted(pending.pop(k), key=lambda r: r[0])
                    _write_table(_shard_path(shard_dir, k), np.array([r[0] for r in rows]),
                                 np.stack([r[1] for r in rows]))
            bar.update(len(batch["item_id"]))
    if pending:
        raise RuntimeError(f"export: shards {sorted(pending)} did not receive all their items")


def main(cfg, args) -> None:
    s = run_export(cfg, fresh=getattr(args, "fresh", False))
    print(f"reaemb export: {s['items']} items x {s['dim']} -> {cfg.out / 'embeddings' / s['method']}")
