"""Export with Ray Data on a tiny generator: every item once, matches direct embedding, restart skips shards,
the final table is the post-processed one (PCA) while the shards keep the raw vectors."""
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch

from reaemb_ray.config import load_config
from reaemb_ray.data.prepare import prepare
from reaemb_ray.data.prompts import item_prompt
from reaemb_ray.model import build_embedder, save_generator, tokenize_prompts
from reaemb_ray.stages.export import run_export
from reaemb_ray.storage import store_for

ML100K = str(Path(__file__).resolve().parents[3] / "shared" / "data" / "ml-100k")  # ../shared beside the repo


def _raw_vectors(shard_dir: Path) -> torch.Tensor:
    table = pa.concat_tables([pq.read_table(p) for p in sorted(shard_dir.glob("*.parquet"))]).sort_by("item_id")
    return torch.tensor(table.column("vector").to_pylist())


def test_export_lrcl_all_items_and_restart(tmp_path, local_ray):
    cache = tmp_path / "backbones"
    cfg = load_config(None, [f"output_dir={tmp_path}", "data.reader=movielens", f"data.path={ML100K}",
                             f"data.cache_dir={cache}", "model.backbone=tiny", "model.max_length=128",
                             "export.method=lrcl", "export.batch_size=128", "export.shard_size=600",
                             "export.pca_dim=8", "ray.num_cpus=2"])
    prepare(cfg)
    torch.manual_seed(0)
    module, tok, path = build_embedder(cfg.model, cache)
    with torch.no_grad():
        module.attn.v_proj.bias.add_(0.3)
    save_generator(module, tok, tmp_path / "lrcl" / "final", {"backbone": "tiny"})

    summary = run_export(cfg)
    dest = tmp_path / "embeddings" / "lrcl"
    table = pq.read_table(dest / "embeddings.parquet")
    ids = table.column("item_id").to_pylist()
    assert ids == list(range(1, 1683)) and summary["shards"] == 3 and summary["shards_skipped"] == 0
    assert str(table.schema.field("vector").type) == "list<element: float>"
    # the final table is the PCA of the raw vectors the shards hold; the record says so
    assert len(table.column("vector")[0]) == 8 and summary["dim"] == 8 and summary["raw_dim"] == 128
    assert summary["postprocess"]["pca_dim"] == 8 and 0 < summary["postprocess"]["explained_variance"] <= 1
    assert 0 < summary["startup_seconds"] <= summary["seconds"]
    raw = _raw_vectors(dest / "shards")
    assert raw.shape == (1682, 128)

    # the Ray Data result equals embedding the same items directly
    texts = pq.read_table(tmp_path / "prepared" / "items.parquet").column("text").to_pylist()
    module.eval()
    with torch.no_grad():
        direct = module.embed(tokenize_prompts(tok, [item_prompt(tok, t, "movie") for t in texts[:3]], 128))
    torch.testing.assert_close(raw[:3], direct, atol=1e-4, rtol=1e-4)

    # restart after losing one shard: the other shards are reused untouched
    mtimes = {p.name: p.stat().st_mtime_ns for p in (dest / "shards").glob("*.parquet")}
    (dest / "shards" / "shard_00001.parquet").unlink()
    (dest / "embeddings.parquet").unlink()
    again = run_export(cfg)
    assert again["shards_skipped"] == 2
    for name in ("shard_00000.parquet", "shard_00002.parquet"):
        assert (dest / "shards" / name).stat().st_mtime_ns == mtimes[name]
    assert pq.read_table(dest / "embeddings.parquet").column("item_id").to_pylist() == ids
    # batch composition (and so padding) may differ on the redo: equal up to float rounding
    torch.testing.assert_close(_raw_vectors(dest / "shards"), raw, atol=1e-4, rtol=1e-4)


def test_raw_export_to_a_uri_store_assembles_the_shards(tmp_path, local_ray):
    """Without PCA the final table is the shards written one by one (here into a file:// store, uploaded whole)."""
    import numpy as np

    from reaemb_ray.stages.export import vectors_of
    from reaemb_ray.stages.prepare import run_prepare

    root = tmp_path / "bucket"
    cfg = load_config(None, [f"output_dir=file://{root}", "data.reader=movielens", f"data.path={ML100K}",
                             f"data.cache_dir={tmp_path / 'c'}", "model.backbone=tiny", "model.max_length=128",
                             "export.method=raw_llm", "export.batch_size=256", "export.shard_size=500",
                             "ray.num_cpus=2"])
    run_prepare(cfg)
    summary = run_export(cfg)
    dest = root / "embeddings" / "raw_llm"
    table = pq.read_table(dest / "embeddings.parquet")
    assert table.column("item_id").to_pylist() == list(range(1, 1683))
    assert summary["shards"] == 4 and summary["dim"] == summary["raw_dim"] == 128 and summary["postprocess"] == {}
    assert 0 < summary["startup_seconds"] <= summary["seconds"]
    np.testing.assert_array_equal(vectors_of(table), _raw_vectors(dest / "shards").numpy())
    assert sorted(p.name for p in dest.iterdir()) == ["embeddings.parquet", "shards"]  # nothing half-written left


def test_export_without_trained_generator_names_the_stage(tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path}", "data.reader=movielens", f"data.path={ML100K}",
                             "model.backbone=tiny", f"data.cache_dir={tmp_path / 'c'}", "export.method=llmemb"])
    prepare(cfg)
    with pytest.raises(FileNotFoundError, match=r"needs the generator folder .*llmemb/final; run the llmemb stage"):
        run_export(cfg)


def test_bfloat16_export_agrees_with_float32(tmp_path):
    from reaemb_ray.stages.export import ItemEmbedder

    base = [f"output_dir={tmp_path}", "model.backbone=tiny", f"data.cache_dir={tmp_path / 'c'}",
            "export.method=raw_llm", "data.item_noun=movie"]
    batch = {"item_id": [1, 2, 3], "text": ["title is Kolya; year is 1996", "title is Heat; genres is Crime",
                                            "title is English Patient, The; year is 1996; genres is Drama, War"]}
    out = {}
    for dtype in ("float32", "bfloat16"):
        cfg = load_config(None, base + [f"export.dtype={dtype}"])
        embedder = ItemEmbedder(cfg, store_for(cfg), None)
        assert next(embedder.module.lm.parameters()).dtype == getattr(torch, dtype)
        out[dtype] = torch.from_numpy(embedder(batch)["vector"])
    assert out["bfloat16"].dtype == torch.float32  # the table is float32 whatever the compute dtype
    cos = torch.nn.functional.cosine_similarity(out["float32"], out["bfloat16"])
    assert cos.min() > 0.99, cos
    assert not torch.equal(out["float32"], out["bfloat16"])  # bf16 really ran


def test_an_export_call_runs_its_items_in_token_order_and_returns_them_in_input_order(tmp_path):
    from reaemb_ray.stages.export import ItemEmbedder

    cfg = load_config(None, [f"output_dir={tmp_path}", "model.backbone=tiny", f"data.cache_dir={tmp_path / 'c'}",
                             "export.method=raw_llm", "data.item_noun=movie", "export.batch_size=2"])
    texts = ["title is English Patient, The; year is 1996; genres is Drama, War", "title is Heat",
             "title is Kolya; year is 1996", "title is Heat; genres is Crime", "title is Fargo; year is 1996"]
    embedder = ItemEmbedder(cfg, store_for(cfg), None)
    out = embedder({"item_id": [5, 4, 3, 2, 1], "text": texts})
    assert out["item_id"].tolist() == [5, 4, 3, 2, 1]
    alone = np.stack([embedder({"item_id": [i], "text": [t]})["vector"][0] for i, t in enumerate(texts)])
    np.testing.assert_allclose(out["vector"], alone, atol=1e-4, rtol=1e-4)  # each row is its own item's


def test_items_stream_in_small_blocks():
    import pyarrow as pa

    from reaemb_ray.stages.export import item_blocks

    from reaemb_ray.stages.export import SORT_WINDOW

    table = pa.table({"item_id": list(range(1, 102)), "text": ["x"] * 101})
    blocks = item_blocks(table, 4)  # one actor call each: SORT_WINDOW batches of 4
    assert [b.num_rows for b in blocks] == [4 * SORT_WINDOW] * (101 // (4 * SORT_WINDOW)) + [101 % (4 * SORT_WINDOW)]
    assert pa.concat_tables(blocks).equals(table)


def test_final_table_is_assembled_shard_by_shard_and_checked(tmp_path):
    import numpy as np

    from reaemb_ray.stages.export import _assemble, table_bytes, vectors_of

    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((10, 4)).astype(np.float32)
    shards = {}
    for k, (lo, hi) in enumerate([(0, 4), (4, 8), (8, 10)]):
        shards[f"s{k}"] = pq.read_table(pa.BufferReader(table_bytes(np.arange(lo + 1, hi + 1), vecs[lo:hi])))
    ids = np.arange(1, 11)
    assert _assemble(shards.items(), ids, tmp_path / "all.parquet", "export", "shards/") == 4
    table = pq.read_table(tmp_path / "all.parquet")
    assert table.column("item_id").to_pylist() == list(range(1, 11))
    assert np.array_equal(vectors_of(table), vecs)
    with pytest.raises(RuntimeError, match="shards hold 8 rows for 10 items; delete shards/"):
        _assemble(list(shards.items())[:2], ids, tmp_path / "short.parquet", "export", "shards/")
    with pytest.raises(RuntimeError, match="s2 does not hold the items it should"):
        _assemble([(k, shards[k]) for k in ("s0", "s2", "s1")], ids, tmp_path / "order.parquet", "export", "shards/")
    vecs[9, 1] = np.nan
    shards["s2"] = pq.read_table(pa.BufferReader(table_bytes(np.arange(9, 11), vecs[8:10])))
    with pytest.raises(RuntimeError, match=r"non-finite values in the embeddings \(s2\)"):
        _assemble(shards.items(), ids, tmp_path / "nan.parquet", "export", "shards/")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.parquet"]  # a failed assembly leaves nothing
