"""`reaemb export`: every item's embedding with Ray Data batch inference.

The method names the generator: `raw_llm` is the base LM (mean pool of one pass, no thought, no training);
any other method is the generator folder its training stage left (`llmemb/final`, `lrcl/final`,
`crrl/final`, `crrl-<objective>-<reward>/final`; reaemb_ray/model/generator.py), loaded with LoRA merged.
Actors fetch that folder from the output store into their node's cache.

Output `embeddings/<method>/`: `shards/shard_NNNNN.parquet` (the raw vectors, export.shard_size items each,
written as they finish; an interrupted export keeps them and embeds only the missing shards) and
`embeddings.parquet` (item_id int64, vector list<float32>, every item once, sorted): the final table, after
`postprocess` (export.pca_dim > 0: PCA to that many dimensions). What `postprocess` did goes into the
stage's record with the table's shape.

Memory follows one shard, not the catalogue: only items.parquet's item_id and text columns are read, a result's
shard is found by bisection in the sorted item ids, and without PCA the final table is assembled shard by shard
(`_assemble`); PCA needs every vector at once.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reaemb_ray import layout
from reaemb_ray.records import changed_fields
from reaemb_ray.stages.base import Stage, cfg_with
from reaemb_ray.storage import Store, store_for

log = logging.getLogger("reaemb.export")


SORT_WINDOW = 8  # batches an actor receives at once and reorders by token count


def token_sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices in batches of `batch_size`, rows in order of token count (stable). The driver orders a shard by
    text length in characters (no tokenizer there); token counts still spread among neighbours, and every padded
    position costs a full forward: on Beauty, batches of 32 in character order were 8.8% padding, in token order
    0.7%."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


class ItemEmbedder:
    """Ray Data callable class: loads the generator once per actor, embeds batches of item texts.

    `generator` is the generator folder's path in `store`, or None for the raw backbone. Each call gets
    SORT_WINDOW batches' worth of items and runs them in batches of `export.batch_size` in token-count order."""

    def __init__(self, cfg, store: Store, generator: str | None, threads: int = 1):
        import torch

        from reaemb_ray.device import placement
        from reaemb_ray.model.backbone import load_backbone, resolve_backbone
        from reaemb_ray.model.generator import ThoughtEmbedder, load_generator

        torch.set_num_threads(max(1, threads))
        self.device = placement(export_dtype(cfg)).device  # CUDA when export.use_gpu gave this actor a GPU
        if generator is None:
            lm, tok = load_backbone(resolve_backbone(cfg.model, cfg.data.cache_dir), export_dtype(cfg))
            module = ThoughtEmbedder(lm, use_thought=False, pooling=cfg.model.pooling)
        else:
            module, tok = load_generator(store.fetch(generator), merge_lora=True, dtype=export_dtype(cfg),
                                         expect_backbone=cfg.model.backbone, cache_dir=cfg.data.cache_dir)
        self.module, self.tok = module.eval().to(self.device), tok
        self.noun, self.max_length, self.efficient = cfg.data.noun, cfg.model.max_length, cfg.export.efficient_forward
        self.batch_size = cfg.export.batch_size
        self.pooling = module.pooling  # a trained generator pools as it was trained

    def __call__(self, batch: dict) -> dict:
        import torch

        from reaemb_ray.data.prompts import item_prompt
        from reaemb_ray.device import to_device
        from reaemb_ray.model.two_pass import batch_from_token_ids, prompt_token_ids

        prompts = [item_prompt(self.tok, str(t), self.noun) for t in batch["text"]]
        ids = prompt_token_ids(self.tok, prompts)  # tokenized once: the lengths order the batches
        vectors = [None] * len(prompts)
        for rows in token_sorted_batches([len(x) for x in ids], self.batch_size):
            b = batch_from_token_ids(self.tok, [ids[r] for r in rows], self.max_length, self.pooling, self.noun)
            with torch.no_grad():
                emb = self.module.embed(to_device(b, self.device), efficient=self.efficient).float().cpu().numpy()
            for r, v in zip(rows, emb):
                vectors[r] = v
        return {"item_id": np.asarray(batch["item_id"], dtype=np.int64), "vector": np.stack(vectors)}


def export_dtype(cfg) -> str:
    return cfg.export.dtype or cfg.model.dtype


def item_blocks(table: pa.Table, batch_size: int) -> list[pa.Table]:
    """Blocks of one actor call each (SORT_WINDOW batches). One big block would come back only when all of it is
    embedded: no progress, and no finished shard on disk if the export is killed."""
    step = max(batch_size, 1) * SORT_WINDOW
    return [table.slice(i, step) for i in range(0, table.num_rows, step)]


def _shard(k: int) -> str:
    return f"shard_{k:05d}.parquet"


def table_bytes(item_ids: np.ndarray, vectors: np.ndarray) -> bytes:
    """An embeddings table (item_id int64, vector list<float32>) as Parquet bytes."""
    vec = pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float32).ravel()), vectors.shape[1])
    table = pa.table({"item_id": pa.array(item_ids, pa.int64()), "vector": vec.cast(pa.list_(pa.float32()))})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def postprocess(vectors: np.ndarray, cfg) -> tuple[np.ndarray, dict]:
    """The final table's vectors from the raw ones, and what was done to them (recorded with the table)."""
    ec = cfg.export
    if not ec.pca_dim:
        return vectors, {}
    from sklearn.decomposition import PCA

    if ec.pca_dim > min(vectors.shape):
        raise ValueError(f"export.pca_dim={ec.pca_dim} exceeds min(items, hidden)={min(vectors.shape)}; lower it")
    pca = PCA(n_components=ec.pca_dim, random_state=cfg.seed)
    reduced = pca.fit_transform(vectors).astype(np.float32)
    return reduced, {"pca_dim": ec.pca_dim, "explained_variance": round(float(pca.explained_variance_ratio_.sum()), 4)}


def run_export(cfg, method: str | None = None, fresh: bool = False) -> dict:
    """Embed every item (skipping finished shards); returns a summary for the stage record."""
    import ray

    from reaemb_ray.data.prepare import load_items
    from reaemb_ray.runtime import check_fits, gpu_options, init_ray

    ec, method = cfg.export, method or cfg.export.method
    store = store_for(cfg)
    folder = layout.folder(layout.export_stage(method))
    shard_dir = layout.join(folder, layout.SHARDS)
    if fresh:
        store.delete(folder)
    items = load_items(store.fetch(layout.join(layout.PREPARED, "items.parquet")).parent, ["item_id", "text"])
    n = items.num_rows
    generator = None if method == "raw_llm" else layout.generator(method)
    if generator is not None:
        _check_generator(store, generator, method, cfg)

    shard_of = np.arange(n) // ec.shard_size
    num_shards = int(shard_of[-1]) + 1
    existing = set(store.listdir(shard_dir))
    done = {k for k in range(num_shards) if _shard(k) in existing}
    todo = np.flatnonzero(~np.isin(shard_of, list(done)))
    # Within a shard, embed items in order of text length: batches pad less, shards still finish one by one.
    lengths = pc.utf8_length(items.column("text")).to_numpy()
    todo = todo[np.lexsort((lengths[todo], shard_of[todo]))]
    log.info("export %s: %d items in %d shards, %d already done", method, n, num_shards, len(done))
    t0, startup = time.time(), 0.0
    if len(todo):
        init_ray(cfg.ray)
        check_fits({f"{ec.num_actors} export actors": (ec.num_actors, {
            "CPU": ec.cpus_per_actor, "GPU": 1.0 if ec.use_gpu else 0.0})}, cfg.ray.wait_for_nodes_s)
        ray.data.DataContext.get_current().enable_progress_bars = False  # the tqdm bar below counts items
        ds = ray.data.from_arrow(item_blocks(items.take(pa.array(todo)), ec.batch_size))
        ds = ds.map_batches(ItemEmbedder, fn_constructor_args=(cfg, store, generator, ec.cpus_per_actor),
                            batch_size=ec.batch_size * SORT_WINDOW, batch_format="numpy", concurrency=ec.num_actors,
                            num_cpus=ec.cpus_per_actor, **gpu_options(1 if ec.use_gpu else 0, cfg.ray))
        startup = _collect_shards(ds, items, shard_of, todo, lambda k, ids, vecs: store.write_bytes(
            layout.join(shard_dir, _shard(k)), table_bytes(ids, vecs))) - t0
    seconds = time.time() - t0

    shards = ((_shard(k), pq.read_table(pa.BufferReader(store.read_bytes(layout.join(shard_dir, _shard(k))))))
              for k in range(num_shards))  # read one at a time
    with store.writing(folder) as local:  # a local store writes in place; a remote one uploads the table at the end
        dest = local / layout.EMBEDDINGS_TABLE
        raw_dim = _assemble(shards, items.column("item_id").to_numpy(), dest, f"export {method}", store.uri(shard_dir))
        dim, post = raw_dim, {}
        if ec.pca_dim:  # PCA needs every vector at once
            table = pq.read_table(dest)
            final, post = postprocess(vectors_of(table), cfg)
            _write_atomic(dest, table_bytes(table.column("item_id").to_numpy(), final))
            dim = int(final.shape[1])
    log.info("export %s: wrote %s (%d x %d)", method, store.uri(layout.embeddings_table(method)), n, dim)
    return {"method": method, "items": n, "dim": dim, "raw_dim": raw_dim,
            "postprocess": post, "shards": num_shards, "shards_skipped": len(done), "seconds": round(seconds, 1),
            "items_per_s": round(len(todo) / seconds, 2) if len(todo) and seconds > 0 else None,
            "startup_seconds": round(startup, 1),
            "backbone": cfg.model.backbone, "efficient_forward": ec.efficient_forward, "dtype": export_dtype(cfg)}


def _check_generator(store: Store, generator: str, method: str, cfg) -> None:
    """Fail in the driver with a clear message instead of inside every actor."""
    from reaemb_ray.model.generator import META_FILE

    meta_rel = layout.join(generator, META_FILE)
    if not store.exists(meta_rel):
        raise FileNotFoundError(f"export.method={method} needs the generator folder {store.uri(generator)}; run "
                                f"the {method} stage first (`reaemb run`, or its standalone command)")
    meta = store.read_json(meta_rel)
    if meta["backbone"] != cfg.model.backbone:
        raise ValueError(f"{store.uri(generator)} was trained on backbone {meta['backbone']!r} but model.backbone "
                         f"is {cfg.model.backbone!r}; set model.backbone={meta['backbone']}")


def vectors_of(table: pa.Table) -> np.ndarray:
    """The `vector` column as one (rows, dim) float32 array (no per-row Python objects)."""
    col = table.column("vector").combine_chunks()
    return col.flatten().to_numpy().reshape(len(col), -1).astype(np.float32, copy=False)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _assemble(shards, item_ids: np.ndarray, dest: Path, what: str, shard_dir: str) -> int:
    """Write the shards (`(name, table)` pairs in item order, each sorted) into the local file `dest` one at a
    time, checking that together they hold every item once and only finite values; memory holds one shard.
    `dest` appears only complete. Returns the vector size."""
    tmp, at, dim = dest.with_name(f".{dest.name}.tmp"), 0, 0
    try:
        schema = pa.schema([("item_id", pa.int64()), ("vector", pa.list_(pa.float32()))])
        with pq.ParquetWriter(tmp, schema) as writer:
            for name, table in shards:
                ids = table.column("item_id").to_numpy()
                if not np.array_equal(ids, item_ids[at:at + len(ids)]):
                    raise RuntimeError(f"{what}: {name} does not hold the items it should; delete {shard_dir} and rerun")
                vectors = vectors_of(table)
                if not np.isfinite(vectors).all():
                    raise RuntimeError(f"{what}: non-finite values in the embeddings ({name})")
                writer.write_table(table.cast(schema))
                at, dim = at + len(ids), vectors.shape[1]
        if at != len(item_ids):
            raise RuntimeError(f"{what}: shards hold {at} rows for {len(item_ids)} items; delete {shard_dir} and rerun")
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dim


def _collect_shards(ds, items: pa.Table, shard_of: np.ndarray, todo: np.ndarray, write_shard) -> float:
    """Stream results, write each shard (`write_shard(k, item_ids, vectors)`) once all its items have arrived;
    returns when (time.time()) the first batch came back: what came before is start-up (actors, model loading)."""
    from tqdm import tqdm

    item_ids = items.column("item_id").to_numpy()  # sorted: an item's position is found by bisection
    expected = {int(k): int(c) for k, c in zip(*np.unique(shard_of[todo], return_counts=True))}
    pending: dict[int, list] = {k: [] for k in expected}
    first = None
    with tqdm(total=len(todo), desc="export", unit="item") as bar:
        for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
            first = first or time.time()
            shards = shard_of[np.searchsorted(item_ids, batch["item_id"])]
            for item_id, vec, k in zip(batch["item_id"], batch["vector"], shards.tolist()):
                pending[k].append((int(item_id), vec))
                if len(pending[k]) == expected[k]:
                    rows = sorted(pending.pop(k), key=lambda r: r[0])
                    write_shard(k, np.array([r[0] for r in rows]), np.stack([r[1] for r in rows]))
            bar.update(len(batch["item_id"]))
    if pending:
        raise RuntimeError(f"export: shards {sorted(pending)} did not receive all their items")
    return first


def stages(cfg) -> list[Stage]:
    """One `export_<method>` stage per embedding source: raw_llm, llmemb, lrcl, crrl and the CRRL variants."""
    from reaemb_ray.stages.crrl import variant_method

    reads_export = changed_fields(cfg.export, drop=("method",))
    out = []
    for method in ["raw_llm", "llmemb", "lrcl", "crrl"] + [variant_method(v) for v in cfg.crrl.variants]:
        deps = ("prepare",) if method == "raw_llm" else ("prepare", method)
        c = cfg_with(cfg, **{"export.method": method})
        reads = {"export": reads_export, "method": method, "model": changed_fields(cfg.model, drop=("use_thought",))}
        command = f"export export.method={method}" if method in ("raw_llm", "llmemb", "lrcl", "crrl") else ""
        out.append(Stage(layout.export_stage(method), deps, reads, lambda cc, m=method: run_export(cc, m), c,
                         command=command))
    return out
