"""srs.task_resources: the ID-SASRec pretraining and every evaluation run train as Ray tasks (a real embedded Ray)
and give exactly the driver's results (same seeds, CPU, one thread)."""
import json
import shutil

import ray

from reaemb_ray.stages.evaluate import run_evaluate
from reaemb_ray.stages.srs_pretrain import run_srs_pretrain

from .test_evaluate import cfg_for, write_lrcl_table


def _report(out):
    return sorted(json.dumps(r, sort_keys=True) for r in json.loads((out / "eval" / "report.json").read_text()))


def test_evaluation_as_ray_tasks_matches_the_driver(prepared_dir, tmp_path):
    out = prepared_dir.parent
    write_lrcl_table(out)
    twin = tmp_path / "twin"
    shutil.copytree(out, twin)
    common = ["srs.backbones=[sasrec,gru4rec]", "eval.methods=[id,lrcl]", "srs.align_alpha=0.01", "srs.num_threads=1"]
    cfg = cfg_for(prepared_dir, *common)
    run_srs_pretrain(cfg)
    run_evaluate(cfg)
    try:
        cfg = cfg_for(twin / "prepared", *common, "srs.task_resources={num_cpus: 1}", "ray.num_cpus=2")
        run_srs_pretrain(cfg)
        run_evaluate(cfg)
        assert ray.is_initialized()  # only task_resources starts a Ray in evaluate: the runs went to it
    finally:
        ray.shutdown()
    assert _report(twin) == _report(out)
    for name in ("id__sasrec__seed0", "lrcl__gru4rec__seed0"):
        assert (twin / "eval" / "runs" / f"{name}.json").exists()
    assert (twin / "srs_pretrain" / "item_table.npy").read_bytes() == (out / "srs_pretrain" / "item_table.npy").read_bytes()
