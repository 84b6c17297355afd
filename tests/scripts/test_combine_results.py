"""scripts/combine_results.py: runs of several evaluate folders -> one report, methods relabelled, clashes refused."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from reaemb_ray.srs.report import run_records

spec = importlib.util.spec_from_file_location("combine_results", Path(__file__).parents[2] / "scripts/combine_results.py")
combine = importlib.util.module_from_spec(spec)
spec.loader.exec_module(combine)


def _run(folder: Path, method: str, seed: int, rank: int, users: int = 4) -> None:
    groups = {"overall": np.ones(users, bool), "tail": np.arange(users) < 2}
    ranks = {"full": np.full(users, rank), "sampled100": np.full(users, 1)}
    folder.mkdir(parents=True, exist_ok=True)
    run = {"records": run_records(method, "sasrec", seed, ranks, groups, [10]), "curve": [{"epoch": 1, "loss": 1.0}],
           "popularity_buckets": [{"bucket": "b0", "value": 0.1}]}
    (folder / f"{method}__sasrec__seed{seed}.json").write_text(json.dumps(run))


def test_runs_from_two_folders_become_one_report(tmp_path):
    for seed, rank in ((0, 5), (1, 6)):
        _run(tmp_path / "a", "id", seed, rank)
        _run(tmp_path / "b", "raw_llm", seed, rank - 3)  # ranked higher: a gain over ID
    out = combine.main(["--out", str(tmp_path / "out"), f"id={tmp_path}/a/*.json",
                        f"raw_llm+fusion={tmp_path}/b/*.json"])
    report = json.loads((out / "report.json").read_text())
    assert {r["method"] for r in report} == {"id", "raw_llm+fusion"}
    md = (out / "report.md").read_text()
    assert "| sasrec | raw_llm+fusion |" in md and "## Runs combined" in md


def test_a_clash_or_other_users_stop_with_one_line(tmp_path):
    _run(tmp_path / "a", "id", 0, 5)
    _run(tmp_path / "b", "id", 0, 5)
    with pytest.raises(SystemExit, match="comes from both"):
        combine.main(["--out", str(tmp_path / "out"), f"id={tmp_path}/*/*.json"])
    _run(tmp_path / "c", "raw_llm", 0, 5, users=6)
    with pytest.raises(SystemExit, match="other users"):
        combine.main(["--out", str(tmp_path / "out"), f"id={tmp_path}/a/*.json", f"x={tmp_path}/c/*.json"])
    with pytest.raises(SystemExit, match="matched no run file"):
        combine.main(["--out", str(tmp_path / "out"), f"id={tmp_path}/nothing/*.json"])
