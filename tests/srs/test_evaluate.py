import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reaemb_ray.config import load_config
from reaemb_ray.srs.data import load_seq_data
from reaemb_ray.srs.pretrain import load_item_table
from reaemb_ray.srs.trainer import fit_and_test
from reaemb_ray.stages import evaluate
from reaemb_ray.stages.srs_pretrain import run_srs_pretrain

TINY = ["srs.hidden=16", "srs.heads=1", "srs.max_len=20", "srs.epochs=3", "srs.patience=2", "srs.batch_size=32",
        "srs.seeds=[0]", "eval.ks=[5,10]", "eval.num_sampled_negatives=10", "srs.adapter_hidden=8", "srs.pca_dim=6"]


def cfg_for(prepared_dir, *extra):
    return load_config(None, [f"output_dir={prepared_dir.parent}", *TINY, *extra])


def write_lrcl_table(out, num_items=30, dim=12):
    d = out / "embeddings" / "lrcl"
    d.mkdir(parents=True)
    vecs = np.random.default_rng(0).normal(size=(num_items, dim)).astype(np.float32)
    pq.write_table(pa.table({"item_id": pa.array(np.arange(1, num_items + 1), pa.int64()),
                             "vector": pa.array(vecs.tolist(), pa.list_(pa.float32()))}), d / "embeddings.parquet")


def test_training_is_reproducible_and_learns(prepared_dir):
    cfg = cfg_for(prepared_dir, "srs.epochs=4")
    data = load_seq_data(prepared_dir)
    _, r1, full1, s1 = fit_and_test(data, "sasrec", cfg.srs, 0, 10, progress=False)
    _, r2, full2, s2 = fit_and_test(data, "sasrec", cfg.srs, 0, 10, progress=False)
    assert (full1 == full2).all() and (s1 == s2).all() and r1.curve[-1]["loss"] == r2.curve[-1]["loss"]
    assert len(r1.curve) == r1.epochs_run and r1.best_val_ndcg10 == max(c["val_ndcg10"] for c in r1.curve)
    assert full1.max() < 30 and s1.max() <= 10


def test_evaluate_stage_writes_report_refuses_missing_and_resumes(prepared_dir):
    out = prepared_dir.parent
    write_lrcl_table(out)
    with pytest.raises(FileNotFoundError, match=r"embedding tables of crrl \(.*embeddings/crrl/embeddings.parquet\)"):
        evaluate.run_evaluate(cfg_for(prepared_dir, "eval.methods=[id,lrcl,crrl]"))  # before any training
    assert not (out / "eval" / "runs").exists()
    cfg = cfg_for(prepared_dir, "srs.backbones=[sasrec,gru4rec]", "eval.methods=[id,lrcl]", "srs.align_alpha=0.01")
    with pytest.raises(FileNotFoundError, match="srs_pretrain"):  # alignment reads the pretrained ID-SASRec
        evaluate.run_evaluate(cfg)
    run_srs_pretrain(cfg)
    assert load_item_table(out / "srs_pretrain").shape == (31, 16)
    evaluate.run_evaluate(cfg)
    records = json.loads((out / "eval" / "report.json").read_text())
    keys = {(r["method"], r["backbone"], r["protocol"], r["group"], r["metric"], r["k"]) for r in records}
    assert len(keys) == 2 * 2 * 2 * 5 * 2 * 2 == len(records)
    assert {r["method"] for r in records} == {"id", "lrcl"}
    over = [r for r in records if r["group"] == "overall"]
    assert all(r["n_users"] == 80 for r in over) and all(0 <= r["value"] <= 1 for r in over)
    tail = next(r for r in records if r["group"] == "tail")
    pop = next(r for r in records if r["group"] == "popular")
    assert tail["n_users"] + pop["n_users"] == 80
    md = (out / "eval" / "report.md").read_text()
    assert "## sasrec, full" in md and "## gru4rec, sampled10" in md and "| lrcl |" in md
    assert (out / "eval" / "val_curves.png").stat().st_size > 1000
    assert (out / "eval" / "ndcg_by_popularity.png").stat().st_size > 1000

    run_file = out / "eval" / "runs" / "id__sasrec__seed0.json"
    stamp = run_file.stat().st_mtime_ns
    evaluate.run_evaluate(cfg)  # resumes: no retraining
    assert run_file.stat().st_mtime_ns == stamp
    assert json.loads((out / "eval" / "report.json").read_text()) == records
    # a changed table re-trains only the runs that read it
    lrcl_file = out / "eval" / "runs" / "lrcl__sasrec__seed0.json"
    lrcl_stamp = lrcl_file.stat().st_mtime_ns
    (out / "embeddings" / "lrcl" / "embeddings.parquet").unlink()
    (out / "embeddings" / "lrcl").rmdir()
    write_lrcl_table(out, dim=10)
    evaluate.run_evaluate(cfg)
    assert run_file.stat().st_mtime_ns == stamp and lrcl_file.stat().st_mtime_ns != lrcl_stamp


def test_evaluate_rejects_a_broken_table(prepared_dir):
    out = prepared_dir.parent
    d = out / "embeddings" / "lrcl"
    d.mkdir(parents=True)
    pq.write_table(pa.table({"item_id": pa.array([1, 2], pa.int64()),
                             "vector": pa.array([[1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float32()))}),
                   d / "embeddings.parquet")
    with pytest.raises(ValueError, match=r"lrcl/embeddings.parquet.*28 item ids"):
        evaluate.run_evaluate(cfg_for(prepared_dir, "eval.methods=[lrcl]"))


def test_the_table_conditioning_is_recorded_with_each_run(prepared_dir):
    out = prepared_dir.parent
    write_lrcl_table(out)
    evaluate.run_evaluate(cfg_for(prepared_dir, "eval.methods=[lrcl]", "srs.epochs=1", "srs.conditioning=[whiten]",
                                  "srs.conditioning_dim=4"))
    run = json.loads((out / "eval" / "runs" / "lrcl__sasrec__seed0.json").read_text())
    # srs.pca_dim=6 first (the table is 12 wide), then whitening to 4 directions
    assert run["conditioning"] == {"steps": ["whiten"], "dim": 4, "input_dim": 6}


def test_missing_prepared_data_is_named(tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path}", "eval.methods=[id]"])
    with pytest.raises(FileNotFoundError, match="prepared does not exist"):
        evaluate.run_evaluate(cfg)


def test_main_methods_get_all_seeds_others_the_first(prepared_dir):
    out = prepared_dir.parent
    write_lrcl_table(out)
    cfg = cfg_for(prepared_dir, "srs.epochs=1", "srs.seeds=[0,1]", "eval.methods=[id,lrcl]", "eval.main_methods=[id]")
    evaluate.run_evaluate(cfg)
    records = json.loads((out / "eval" / "report.json").read_text())
    seeds = {m: {r["seed"] for r in records if r["method"] == m} for m in ("id", "lrcl")}
    assert seeds == {"id": {0, 1}, "lrcl": {0}}


def test_main_backbones_limit_the_extra_seeds(prepared_dir):
    out = prepared_dir.parent
    cfg = cfg_for(prepared_dir, "srs.epochs=1", "srs.seeds=[0,1]", "srs.backbones=[sasrec,gru4rec]",
                  "eval.methods=[id]", "eval.main_backbones=[sasrec]")
    evaluate.run_evaluate(cfg)
    records = json.loads((out / "eval" / "report.json").read_text())
    seeds = {b: {r["seed"] for r in records if r["backbone"] == b} for b in ("sasrec", "gru4rec")}
    assert seeds == {"sasrec": {0, 1}, "gru4rec": {0}}
    # which runs get every seed is not part of a run's key: widening it reuses the finished runs
    runs = sorted(p.name for p in (out / "eval" / "runs").iterdir())
    mtimes = {p.name: p.stat().st_mtime for p in (out / "eval" / "runs").iterdir()}
    evaluate.run_evaluate(cfg_for(prepared_dir, "srs.epochs=1", "srs.seeds=[0,1]", "srs.backbones=[sasrec,gru4rec]",
                                  "eval.methods=[id]"))
    after = {p.name: p.stat().st_mtime for p in (out / "eval" / "runs").iterdir()}
    assert {n: after[n] for n in runs} == mtimes and set(after) - set(runs) == {"id__gru4rec__seed1.json"}


def test_id_runs_do_not_depend_on_how_a_table_is_fed_in():
    base, fused = load_config(None, []), load_config(None, ["srs.item_encoder=fusion", "srs.llm_init_std=0.05"])
    fp = lambda cfg, table: evaluate.run_fingerprint(cfg, "sasrec", 42, "data", table)
    no_table = evaluate.ID_TABLE  # what run_evaluate passes for an ID-only run
    assert fp(base, no_table) == fp(fused, no_table)  # the ID-only run is reused across item encoders
    assert fp(base, "table") != fp(fused, "table")  # an LLM run is not
    assert fp(base, no_table) != fp(load_config(None, ["srs.hidden=32"]), no_table)
    whitened = load_config(None, ["srs.conditioning=[whiten]"])
    assert fp(base, no_table) == fp(whitened, no_table) and fp(base, "table") != fp(whitened, "table")
