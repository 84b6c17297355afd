"""The results table: mean ± std over seeds per (method, recommender, protocol, group), rows in order."""
import json

import pytest

from reaemb_ray.results import table, write


def _records():
    recs = []
    for method, base in (("id", 0.10), ("crrl", 0.20)):
        for seed, delta in ((0, 0.0), (1, 0.02)):
            for group in ("overall", "tail", "popular", "short"):
                for metric in ("HR", "NDCG"):
                    recs.append({"method": method, "backbone": "sasrec", "seed": seed, "protocol": "full",
                                 "group": group, "metric": metric, "k": 10, "value": base + delta, "n_users": 5})
    return recs


def test_table_has_mean_and_std_over_seeds():
    text = table(_records(), "HR")
    lines = text.splitlines()
    assert lines[0] == "| method | seeds | sasrec full overall | sasrec full tail | sasrec full popular |"
    assert lines[2].startswith("| ID-only SRS | 2 | 0.1100±0.0100 |")
    assert lines[3].startswith("| LRCL+CRRL | 2 | 0.2100±0.0100 |")
    assert "short" not in text  # the table is about items: overall, tail, popular


def test_write_needs_a_report(tmp_path):
    with pytest.raises(FileNotFoundError, match="reaemb run"):
        write(tmp_path, tmp_path / "out", "x")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "report.json").write_text(json.dumps(_records()))
    md = write(tmp_path, tmp_path / "out", "My results")
    assert md.read_text().startswith("# My results")
    assert (tmp_path / "out" / "report.json").exists()
