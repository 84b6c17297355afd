"""`reaemb run`: the stage plan, and the main job end to end on real MovieLens-100k (configs/ci.yaml) with
skip-on-rerun and fingerprint invalidation, through the real CLI in a subprocess."""
import json
from dataclasses import asdict, dataclass
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reaemb_ray.config import ExportConfig, load_config
from reaemb_ray import storage
from reaemb_ray.stages.run import fingerprints, plan

REPO = Path(__file__).resolve().parents[2]


def _names(overrides):
    return [s.name for s in plan(load_config(None, overrides))]


def test_plan_follows_the_methods():
    assert _names(["eval.methods=[id]"]) == ["prepare", "evaluate"]
    assert _names(["eval.methods=[id,raw_llm]"]) == ["prepare", "export_raw_llm", "evaluate"]
    assert _names(["eval.methods=[lrcl]"]) == ["prepare", "lrcl", "export_lrcl", "evaluate"]
    full = _names(["eval.methods=[id,raw_llm,llmemb,lrcl,crrl]", "crrl.reward=mix"])
    assert full == ["prepare", "srs_pretrain", "llmemb", "lrcl", "crrl", "export_raw_llm", "export_llmemb",
                    "export_lrcl", "export_crrl", "evaluate"]
    # the srs reward needs the pretrained ID-SASRec; the co-occurrence reward does not
    assert "srs_pretrain" not in _names(["eval.methods=[crrl]", "crrl.reward=cooccurrence"])
    assert "srs_pretrain" in _names(["eval.methods=[crrl]", "crrl.reward=srs"])
    # the explicit-reasoning mode writes its own table: no export stage, evaluate waits for it
    assert _names(["eval.methods=[id,reason]"]) == ["prepare", "reason", "evaluate"]
    assert "reason" in plan(load_config(None, ["eval.methods=[id,reason]"]))[-1].deps


def test_every_stage_depends_only_on_earlier_stages():
    stages = plan(load_config(None, ["crrl.reward=mix", "srs.align_alpha=0.01"]))
    seen = set()
    for st in stages:
        assert set(st.deps) <= seen, f"{st.name} depends on a later stage"
        seen.add(st.name)


def test_a_field_added_at_its_default_keeps_every_fingerprint():
    # a later version adds `export.new_knob`; its default reproduces the old behaviour
    @dataclass
    class ExportConfigV2(ExportConfig):
        new_knob: int = 0

    cfg = load_config(None, ["eval.methods=[id,raw_llm,lrcl,crrl]"])
    before = fingerprints(plan(cfg), cfg)
    cfg.export = ExportConfigV2(**asdict(cfg.export))
    assert fingerprints(plan(cfg), cfg) == before
    cfg.export.new_knob = 1  # set away from its default: the exports and what reads them run again
    after = fingerprints(plan(cfg), cfg)
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"export_raw_llm", "export_lrcl", "export_crrl", "evaluate"}
    # format 1 hashed the whole section: the same addition invalidated everything downstream of it
    cfg.export.new_knob = 0
    assert fingerprints(plan(cfg, fields=storage.whole_section), cfg)["export_lrcl"] != before["export_lrcl"]


def _reaemb(*args, cwd):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "reaemb_ray.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1200)


@pytest.mark.slow
def test_main_job_end_to_end_resumes_and_invalidates(tmp_path):
    out = tmp_path / "run"
    args = ["run", "--config", str(REPO / "configs/ci.yaml"), f"output_dir={out}"]
    first = _reaemb(*args, cwd=REPO)
    assert first.returncode == 0, first.stderr[-4000:]
    assert "report:" in first.stdout
    report = json.loads((out / "eval/report.json").read_text())
    methods = {r["method"] for r in report}
    assert methods == {"id", "raw_llm", "lrcl", "crrl"}
    for m in ("raw_llm", "lrcl", "crrl"):
        assert (out / f"embeddings/{m}/embeddings.parquet").exists()
    assert (out / "eval/report.md").exists()

    # a rerun with the same config does nothing
    again = _reaemb(*args, cwd=REPO)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "prepare=skipped" in again.stdout and "crrl=skipped" in again.stdout and "evaluate=skipped" in again.stdout

    # a stage left "running" (interrupted) with the same settings resumes from its checkpoints
    manifest = json.loads((out / "_manifest.json").read_text())
    manifest["stages"]["crrl"]["state"] = "running"
    (out / "_manifest.json").write_text(json.dumps(manifest))
    resumed = _reaemb(*args, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "crrl: resuming" in resumed.stderr and "crrl=ran" in resumed.stdout
    assert "export_crrl=skipped" in resumed.stdout  # same fingerprint: what reads it is still valid

    # a CRRL setting re-runs CRRL, its export and the evaluation, and nothing upstream
    changed = _reaemb(*args, "crrl.sigma=0.2", cwd=REPO)
    assert changed.returncode == 0, changed.stderr[-4000:]
    for s in ("prepare", "lrcl", "export_raw_llm", "export_lrcl"):
        assert f"{s}=skipped" in changed.stdout
    for s in ("crrl", "export_crrl", "evaluate"):
        assert f"{s}=ran" in changed.stdout
    assert "because: crrl.sigma: (default) -> 0.2" in changed.stderr  # the log says what changed

    # records written under fingerprint format 1 (whole sections) are adopted, not recomputed
    cfg = load_config(REPO / "configs/ci.yaml", [f"output_dir={out}", "crrl.sigma=0.2"])
    old = fingerprints(plan(cfg, fields=storage.whole_section), cfg)
    manifest = json.loads((out / "_manifest.json").read_text())
    for name, rec in manifest["stages"].items():
        rec["fingerprint"] = old[name]
        rec.pop("inputs")
    (out / "_manifest.json").write_text(json.dumps(manifest))
    adopted = _reaemb(*args, "crrl.sigma=0.2", cwd=REPO)
    assert adopted.returncode == 0, adopted.stderr[-4000:]
    assert "=ran" not in adopted.stdout
    stages = json.loads((out / "_manifest.json").read_text())["stages"]
    assert all(rec["adopted_from_format"] == 1 and rec["inputs"] is not None for rec in stages.values())


def test_failing_stage_is_named_and_exit_is_nonzero(tmp_path):
    # the backbone folder looks like a model (so the checks before any work pass) but does not load: prepare
    # succeeds, lrcl fails, and the run says which stage (a missing backbone stops before prepare, see
    # tests/test_bad_inputs.py)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "no-such-architecture"}')
    (model / "tokenizer.json").write_text("{}")
    res = _reaemb("run", "--config", str(REPO / "configs/ci.yaml"), f"output_dir={tmp_path / 'r'}",
                  f"model.backbone={model}", "eval.methods=[lrcl]", "lrcl.max_failures=0", cwd=REPO)
    assert res.returncode == 1, res.stderr[-2000:]
    assert "stage 'lrcl' failed" in res.stderr
    assert (tmp_path / "r/prepared/items.parquet").exists()  # what was computed is kept
