"""The Grafana dashboard only queries series the code emits (reaemb_ray.metrics.METRICS, under the names
Ray 2.60 exports; tests/test_prometheus.py runs these same queries against a real Prometheus)."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from reaemb_ray.metrics import METRICS

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "cluster" / "grafana" / "reaemb_dashboard.json"


def exported_names(name: str, kind: str) -> set[str]:
    """Series names Ray exports for one `ray.util.metrics` metric (seen on Ray 2.60's endpoint)."""
    base = "ray_" + name
    if kind == "counter":
        return {base if base.endswith("_total") else base + "_total"}
    if kind == "histogram":
        return {base + "_bucket", base + "_sum", base + "_count"}
    return {base}


EXPORTED = {s: name for name, (kind, _, _) in METRICS.items() for s in exported_names(name, kind)}


def dashboard_exprs(dash: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p["targets"]]


def series_in(expr: str) -> set[str]:
    return set(re.findall(r"\bray_[a-zA-Z0-9_]+", expr))


def test_exported_name_rule():
    assert exported_names("reaemb_rollout_embeddings_total", "counter") == {"ray_reaemb_rollout_embeddings_total"}
    assert exported_names("things", "counter") == {"ray_things_total"}
    assert "ray_reaemb_learner_step_seconds_bucket" in EXPORTED


def test_every_query_names_an_emitted_series():
    dash = json.loads(DASHBOARD.read_text())
    exprs = dashboard_exprs(dash)
    assert len(exprs) >= 13
    for title, expr in exprs:
        names = series_in(expr)
        assert names, f"panel {title!r}: query names no ray_ series: {expr}"
        unknown = names - set(EXPORTED)
        assert not unknown, (f"panel {title!r} queries {sorted(unknown)}, which Ray does not export for any "
                             "metric in reaemb_ray/metrics.py; fix cluster/grafana/make_dashboard.py")
        if "histogram_quantile" in expr:
            assert all(n.endswith("_bucket") for n in names) and "by (le" in expr, f"panel {title!r}: {expr}"
        if "rate(" in expr:
            assert all(METRICS[EXPORTED[n]][0] != "gauge" for n in names), f"panel {title!r}: rate() of a gauge"
        assert 'SessionName=~"$SessionName"' in expr, f"panel {title!r} ignores the session variable"


def test_every_metric_has_a_panel():
    dash = json.loads(DASHBOARD.read_text())
    shown = {EXPORTED[n] for _, e in dashboard_exprs(dash) for n in series_in(e) if n in EXPORTED}
    missing = sorted(set(METRICS) - shown)
    assert not missing, f"metrics without a panel: {missing}; add them in cluster/grafana/make_dashboard.py"


def test_panels_have_unique_ids_and_a_prometheus_datasource():
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p["datasource"]["type"] == "prometheus" for p in dash["panels"])
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource", "SessionName"}


def test_committed_json_is_what_the_generator_writes():
    spec = importlib.util.spec_from_file_location("make_dashboard", ROOT / "cluster" / "grafana" / "make_dashboard.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    if DASHBOARD.read_text() != gen.render():
        pytest.fail("cluster/grafana/reaemb_dashboard.json is stale: run python cluster/grafana/make_dashboard.py")
