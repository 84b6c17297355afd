"""`reaemb run` and the standalone stages: the stage plan, the shared record check on the real prepare stage
(raw data replaced in place, a prepared folder without its record), and the main job end to end on real
MovieLens-100k (configs/ci.yaml) through the real CLI in a subprocess."""
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from reaemb_ray import cli, layout, records
from reaemb_ray.config import ExportConfig, load_config
from reaemb_ray.data.prepare import prepare
from reaemb_ray.stages.base import check
from reaemb_ray.stages.run import catalogue, plan, run_stage
from reaemb_ray.storage import store_for

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
    # CRRL from the raw backbone does not read LRCL; its variants are stages of their own
    assert "lrcl" not in _names(["eval.methods=[crrl]", "crrl.init_from=backbone"])
    assert "crrl-paper-srs" in _names(["eval.methods=[crrl]", "crrl.variants=[paper/srs]"])
    # the explicit-reasoning mode writes its own table (no export stage; evaluate waits for it) and aligns its
    # embedder with the pretrained ID-SASRec
    assert _names(["eval.methods=[id,reason]"]) == ["prepare", "srs_pretrain", "reason", "evaluate"]
    assert "reason" in plan(load_config(None, ["eval.methods=[id,reason]"]))[-1].deps
    # hard negatives come from the LRCL export, which its builder lists after CRRL: the plan exports LRCL first
    hard = _names(["eval.methods=[lrcl,crrl]", "crrl.hard_negatives=3"])
    assert hard.index("export_lrcl") < hard.index("crrl") and hard[-1] == "evaluate"


def test_every_stage_depends_only_on_earlier_stages_and_has_its_folder():
    stages = catalogue(load_config(None, ["crrl.reward=mix", "srs.align_alpha=0.01", "crrl.variants=[paper/srs]"]))
    seen = set()
    for name, st in stages.items():
        assert set(st.deps) <= seen, f"{name} depends on a later stage"
        seen.add(name)
    folders = {name: layout.folder(name) for name in stages}
    assert len(set(folders.values())) == len(folders)  # no two stages share a folder
    assert folders["prepare"] == "prepared" and folders["export_crrl-paper-srs"] == "embeddings/crrl-paper-srs"


def test_a_field_added_at_its_default_keeps_every_stage_input():
    # a later version adds `export.new_knob`; its default reproduces the old behaviour
    @dataclass
    class ExportConfigV2(ExportConfig):
        new_knob: int = 0

    cfg = load_config(None, ["eval.methods=[id,raw_llm,lrcl,crrl]"])
    before = {st.name: records.fingerprint(st.reads) for st in plan(cfg)}
    cfg.export = ExportConfigV2(**asdict(cfg.export))
    assert {st.name: records.fingerprint(st.reads) for st in plan(cfg)} == before
    cfg.export.new_knob = 1  # set away from its default: the exports read it (and what reads them runs again)
    after = {st.name: records.fingerprint(st.reads) for st in plan(cfg)}
    assert {n for n in before if before[n] != after[n]} == {"export_raw_llm", "export_lrcl", "export_crrl"}


def _movielens(folder: Path, extra_rows: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.item").write_text("".join(f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|{'0|' * 18}1\n"
                                           for i in range(1, 6)))
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t4\t{100 * u + i}\n" for u in (1, 2, 3) for i in (1, 2, 3, 4))
                                   + extra_rows)
    return folder


def test_replacing_the_raw_data_in_place_prepares_again(tmp_path, capsys):
    raw = _movielens(tmp_path / "raw")
    cfg = load_config(None, [f"output_dir={tmp_path / 'out'}", f"data.path={raw}", "data.name=toy"])
    assert run_stage(cfg, "prepare") == "ran"
    store = store_for(cfg)
    first = records.read(store, "prepare")
    assert set(first["inputs"]["data"]) == {"u.item", "u.data"} and first["meta"]["interactions"] == 12
    assert run_stage(cfg, "prepare") == "skipped"
    _movielens(raw, extra_rows="4\t1\t4\t1\n4\t2\t4\t2\n4\t5\t4\t3\n")  # same path, new content
    capsys.readouterr()
    assert run_stage(cfg, "prepare") == "ran"
    assert "prepare: redoing, because: raw input files changed: u.data" in capsys.readouterr().out
    again = records.read(store, "prepare")
    assert again["meta"]["interactions"] == 15 and again["run_id"] != first["run_id"]


def test_the_same_raw_files_fetched_again_elsewhere_count_as_the_same_input(tmp_path, monkeypatch):
    """`auto:` data resolves to a folder of this machine; a fresh copy (another node, new modification times)
    has the same content digests, so prepare stays done."""
    import shutil

    _movielens(tmp_path / "a" / "ml-100k")
    monkeypatch.setenv("REAEMB_DATA_DIR", str(tmp_path / "a"))
    cfg = load_config(None, [f"output_dir={tmp_path / 'out'}", "data.path=auto:ml-100k", "data.name=toy",
                             f"data.cache_dir={tmp_path / 'cache'}"])
    assert run_stage(cfg, "prepare") == "ran"
    shutil.copytree(tmp_path / "a", tmp_path / "b", copy_function=shutil.copy)  # new mtimes
    monkeypatch.setenv("REAEMB_DATA_DIR", str(tmp_path / "b"))
    assert check(catalogue(cfg)["prepare"], store_for(cfg)).state == "done"
    (tmp_path / "b" / "ml-100k" / "u.item").write_text("1|Only one (1995)|01-Jan-1995||http://x|" + "0|" * 18 + "1\n")
    status = check(catalogue(cfg)["prepare"], store_for(cfg))
    assert status.state == "stale" and status.reasons == ["raw input files changed: u.item"]


def test_a_standalone_stage_refuses_a_prepared_folder_without_its_record(tmp_path, capsys):
    raw = _movielens(tmp_path / "raw")
    out = tmp_path / "out"
    cfg = load_config(None, [f"output_dir={out}", f"data.path={raw}", "data.name=toy"])
    prepare(cfg)  # the tables are there, but nothing says the stage finished
    assert (out / "prepared" / "items.parquet").exists() and not (out / "prepared" / "_record.json").exists()
    (tmp_path / "c.yaml").write_text("model: {backbone: tiny}\nlrcl: {num_workers: 1}\n")
    rc = cli.main(["lrcl", "--config", str(tmp_path / "c.yaml"), f"output_dir={out}", f"data.path={raw}",
                   "data.name=toy"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "lrcl needs prepare, which is not done (it has no record); run `reaemb prepare`" in err
    assert not (out / "lrcl").exists()  # refused before any work


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
    assert {r["method"] for r in report} == {"id", "raw_llm", "lrcl", "crrl"}
    for m in ("raw_llm", "lrcl", "crrl"):
        assert (out / f"embeddings/{m}/embeddings.parquet").exists()
    stages = ["prepare", "lrcl", "crrl", "export_raw_llm", "export_lrcl", "export_crrl", "evaluate"]
    assert all((out / layout.record(s)).exists() for s in stages)

    # a rerun with the same config does nothing
    again = _reaemb(*args, cwd=REPO)
    assert again.returncode == 0, again.stderr[-4000:]
    assert all(f"{s}=skipped" in again.stdout for s in stages), again.stdout

    # crrl interrupted with the same inputs (no record, its attempt marker): it resumes from its checkpoint,
    # and what reads it runs again
    rec = json.loads((out / layout.record("crrl")).read_text())
    (out / layout.record("crrl")).unlink()
    (out / layout.running("crrl")).write_text(json.dumps({"fingerprint": rec["fingerprint"]}))
    resumed = _reaemb(*args, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resuming from its checkpoints" in resumed.stderr and "resuming from step 4" in resumed.stdout
    assert "crrl=ran" in resumed.stdout and "export_crrl=ran" in resumed.stdout and "lrcl=skipped" in resumed.stdout

    # a CRRL setting re-runs CRRL, its export and the evaluation, and nothing upstream
    changed = _reaemb(*args, "crrl.sigma=0.2", cwd=REPO)
    assert changed.returncode == 0, changed.stderr[-4000:]
    for s in ("prepare", "lrcl", "export_raw_llm", "export_lrcl"):
        assert f"{s}=skipped" in changed.stdout
    for s in ("crrl", "export_crrl", "evaluate"):
        assert f"{s}=ran" in changed.stdout
    assert "because: crrl.sigma: (default) -> 0.2" in changed.stderr  # the log says what changed

    # standalone stages use the same check: redo with the reason, skip when up to date, refuse stale inputs
    export = _reaemb("export", "--config", str(REPO / "configs/ci.yaml"), f"output_dir={out}", "export.method=lrcl",
                     "export.batch_size=64", cwd=REPO)
    assert export.returncode == 0, export.stderr[-4000:]
    assert "export_lrcl: redoing, because: export.batch_size: 128 -> 64" in export.stdout
    lrcl = _reaemb("lrcl", "--config", str(REPO / "configs/ci.yaml"), f"output_dir={out}", cwd=REPO)
    assert lrcl.returncode == 0 and "lrcl: up to date" in lrcl.stdout
    evaluate = _reaemb("evaluate", "--config", str(REPO / "configs/ci.yaml"), f"output_dir={out}", "crrl.sigma=0.2",
                       cwd=REPO)
    assert evaluate.returncode == 1
    assert "evaluate needs export_lrcl, which is not done (export.batch_size: 64 -> 128)" in evaluate.stderr


def test_failing_stage_is_named_and_leaves_no_record(tmp_path):
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
    assert (tmp_path / "r/prepared/_record.json").exists()  # what was computed is kept
    assert not (tmp_path / "r/lrcl/_record.json").exists() and (tmp_path / "r/lrcl/_running.json").exists()
