"""LRCL as a real Ray Train + DeepSpeed job: 2 CPU workers, tiny model, 20 MovieLens items."""
import json
import signal
from pathlib import Path

import pytest
import ray

from reaemb_ray.config import load_config
from reaemb_ray.data.prepare import prepare
from reaemb_ray.model import load_generator
from reaemb_ray.stages.lrcl import ItemStream, lr_factor, run_lrcl

ML100K = str(Path(__file__).resolve().parents[3] / "shared" / "data" / "ml-100k")  # ../shared beside the repo


def _cfg(out, cache, **extra):
    over = [f"output_dir={out}", "data.reader=movielens", f"data.path={ML100K}", "data.name=ml-100k",
            f"data.cache_dir={cache}", "model.backbone=tiny", "model.max_length=128", "lrcl.steps=6",
            "lrcl.batch_size=8", "lrcl.micro_batch_size=4", "lrcl.max_items=20", "lrcl.checkpoint_every=2",
            "lrcl.warmup_steps=1", "lrcl.lr=0.01", "lrcl.num_workers=2", "ray.num_cpus=2", "seed=0"]
    return load_config(None, over + [f"{k}={v}" for k, v in extra.items()])


def _metrics(out):
    return [json.loads(line) for line in (out / "lrcl" / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, local_ray):
    out = tmp_path_factory.mktemp("lrcl_full")
    cache = tmp_path_factory.getbasetemp() / "backbones"
    cfg = _cfg(out, cache)
    prepare(cfg)
    before = signal.getsignal(signal.SIGINT)
    summary = run_lrcl(cfg)
    return out, cache, summary, signal.getsignal(signal.SIGINT) is before


def test_item_stream_shards_are_disjoint_and_cover_each_epoch():
    s = ItemStream(20, seed=0)
    step_items = [s.micro_batch(0, m, r, 2, 5, 20) for m in range(2) for r in range(2)]
    assert sorted(int(i) for b in step_items for i in b) == list(range(20))
    assert (s.micro_batch(3, 1, 1, 2, 5, 20) == ItemStream(20, seed=0).micro_batch(3, 1, 1, 2, 5, 20)).all()
    assert lr_factor(0, 2, 10) == 0.5 and lr_factor(2, 2, 10) == 1.0 and lr_factor(10, 2, 10) == pytest.approx(0.0)


def test_lrcl_trains_and_writes_generator(uninterrupted):
    out, cache, summary, sigint_handler_kept = uninterrupted
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(r["items_per_s"] > 0 and r["tau"] > 0 for r in rows)
    first, last = sum(r["loss"] for r in rows[:2]) / 2, sum(r["loss"] for r in rows[-2:]) / 2
    assert last < first, rows  # the contrastive loss falls
    module, tok = load_generator(out / "lrcl" / "final", expect_backbone="tiny", cache_dir=str(cache))
    assert module.has_lora and module.use_thought
    assert summary["steps"] == 6 and summary["resumed_from"] == 0 and summary["last_metrics"] == rows[-1]
    assert [p.name for p in sorted((out / "lrcl" / "ray" / "train").glob("step_*"))] == ["step_000004", "step_000006"]
    assert sigint_handler_kept  # Ray Train's Ctrl-C handler does not outlive the stage (later stages stay stoppable)


def test_killed_run_resumes_from_checkpoint_with_same_data_and_optimizer(uninterrupted, tmp_path):
    full_out, cache, *_ = uninterrupted
    cfg = _cfg(tmp_path, cache, **{"lrcl.fail_at_step": 4, "lrcl.max_failures": 1})
    prepare(cfg)
    run_lrcl(cfg)
    rows = _metrics(tmp_path)
    # steps 1-3 ran, the worker died entering step 4, the restarted group resumed from the step-2 checkpoint
    # (whose metrics history it carried on): one row per step
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and rows[2]["resumed_from"] == 2
    # same data position + optimizer + scheduler state: the resumed steps reproduce the uninterrupted run
    want = {r["step"]: r for r in _metrics(full_out)}
    for r in rows[2:]:
        assert r["loss"] == pytest.approx(want[r["step"]]["loss"], rel=1e-4, abs=1e-5), r
        assert r["lr"] == pytest.approx(want[r["step"]]["lr"])


def test_rerun_of_a_failed_job_resumes_from_its_checkpoint(uninterrupted, tmp_path):
    """A job that died for good (no retries left) is resumed by simply running the stage again."""
    full_out, cache, *_ = uninterrupted
    cfg = _cfg(tmp_path, cache, **{"lrcl.fail_at_step": 4, "lrcl.max_failures": 0})
    prepare(cfg)
    with pytest.raises(Exception):
        run_lrcl(cfg)
    summary = run_lrcl(_cfg(tmp_path, cache))
    rows = _metrics(tmp_path)
    assert summary["resumed_from"] == 2 and [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    want = {r["step"]: r for r in _metrics(full_out)}
    for r in rows[2:]:
        assert r["loss"] == pytest.approx(want[r["step"]]["loss"], rel=1e-4, abs=1e-5), r


def test_bfloat16_training_under_deepspeed(tmp_path, local_ray):
    """model.dtype=bfloat16: DeepSpeed's bf16 mode (bf16 module, fp32 master weights) on the CPU workers."""
    from safetensors import safe_open

    cache = tmp_path / "backbones"
    cfg = _cfg(tmp_path, cache, **{"model.dtype": "bfloat16", "lrcl.steps": 4})
    prepare(cfg)
    run_lrcl(cfg)
    final = tmp_path / "lrcl" / "final"
    rows = _metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["loss"] == r["loss"] and r["loss"] < 1e6 for r in rows), rows  # finite
    with safe_open(str(final / "adapter_model.safetensors"), "pt") as f:
        dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}
    assert dtypes == {"BF16"}, dtypes  # the trained weights really were bf16
    module, _ = load_generator(final, expect_backbone="tiny", cache_dir=str(cache), dtype="bfloat16")
    assert next(module.lm.parameters()).dtype.is_floating_point and module.has_lora


def test_whole_batch_contrast_with_centred_cosine_trains_across_workers_and_logs_retrieval(tmp_path, local_ray):
    """lrcl.contrast=batch gathers both workers' embeddings (gradient caching over 2 micro-batches each)."""
    cache = tmp_path / "backbones"
    cfg = _cfg(tmp_path, cache, **{"lrcl.contrast": "batch", "lrcl.similarity": "centered_cosine",
                                   "lrcl.tau_init": 0.1, "lrcl.retrieval_items": 6, "lrcl.steps": 4,
                                   "lrcl.checkpoint_every": 4})
    prepare(cfg)
    run_lrcl(cfg)
    rows = _metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[-1]["loss"] < rows[0]["loss"], rows
    retrieval = json.loads((tmp_path / "lrcl" / "retrieval.json").read_text())
    assert retrieval["items"] == 6 and 0.0 <= retrieval["before"] <= 1.0 and 0.0 <= retrieval["after"] <= 1.0
