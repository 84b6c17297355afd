"""A real Prometheus scrapes a local Ray's metrics endpoint and sees the reaemb series, and every query of
the Grafana dashboard (cluster/grafana/reaemb_dashboard.json) returns data from it.

Needs the `prometheus` binary (Debian/Ubuntu: `apt-get install -y prometheus`); skipped without it.
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from reaemb_ray.metrics import METRICS
from reaemb_ray.runtime import free_port

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PROMETHEUS is None, reason="needs the prometheus binary: apt-get install -y prometheus"),
]

# What the emitter actor reports: gauges are set to these, counters grow by 1 per tick, histograms observe 0.3 s.
GAUGE_VALUES = {name: 0.25 + i for i, (name, (kind, _, _)) in enumerate(METRICS.items()) if kind == "gauge"}
OBSERVED_SECONDS = 0.3  # falls in the (0.25, 0.5] bucket of reaemb_ray.metrics' histogram boundaries



def query(prom_url: str, promql: str) -> list[dict]:
    url = f"{prom_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]


def wait_for(what: str, check, timeout: float):
    """Poll `check()` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        try:
            last = check()
            if last:
                return last
        except (urllib.error.URLError, ConnectionError, OSError) as e:
            last = e
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def ray_metrics_port():
    import ray

    port = free_port()
    # metrics_report_interval_ms: workers push metrics to the node's exporter every second (default 10 s)
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             _metrics_export_port=port, _system_config={"metrics_report_interval_ms": 1000})
    yield port
    ray.shutdown()


@pytest.fixture(scope="module")
def prometheus_url(ray_metrics_port, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prometheus")
    (tmp / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: ray\n    static_configs: [{{targets: ['127.0.0.1:{ray_metrics_port}']}}]\n")
    port = free_port()
    log = open(tmp / "prometheus.log", "w")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("prometheus to be ready", lambda: urllib.request.urlopen(f"{url}/-/ready", timeout=2).status == 200, 30)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def emit_with_actor():
    """Start an actor that reports every reaemb metric through reaemb_ray.metrics.get with known values
    (tags all "0"), so every series exists -- including those of stages not run here (LRCL).
    test_real_crrl_run_reaches_prometheus covers what a real CRRL run emits."""
    import ray

    @ray.remote(num_cpus=0)
    class Emitter:
        def __init__(self):
            import threading

            self._stop = threading.Event()
            threading.Thread(target=self._loop, daemon=True).start()

        def _loop(self):
            from reaemb_ray import metrics

            while not self._stop.is_set():
                for name, (kind, _, tag_keys) in METRICS.items():
                    m = metrics.get(name)
                    tags = {k: "0" for k in tag_keys}
                    if kind == "counter":
                        m.inc(1, tags=tags)
                    elif kind == "histogram":
                        m.observe(OBSERVED_SECONDS, tags=tags)
                    else:
                        m.set(GAUGE_VALUES[name], tags=tags)
                time.sleep(0.2)

        def stop(self):
            self._stop.set()

    return Emitter.remote()


def test_reaemb_series_reach_prometheus(prometheus_url):
    t0 = time.time()
    emitter = emit_with_actor()

    def values(promql):
        return [float(s["value"][1]) for s in query(prometheus_url, promql)]

    # gauges: the exact values the actor set
    wait_for("ray_reaemb_reward_mean in prometheus", lambda: values("ray_reaemb_reward_mean"), 55)
    for name, expected in GAUGE_VALUES.items():
        got = wait_for(f"ray_{name}", lambda: values(f"ray_{name}"), 20)
        assert got == [pytest.approx(expected)], f"ray_{name}"
    # counters: exported under the METRICS name (already ending in _total), growing between scrapes
    first = values("sum(ray_reaemb_rollout_embeddings_total)")[0]
    assert first > 0
    wait_for("the rollout counter to grow", lambda: values("sum(ray_reaemb_rollout_embeddings_total)")[0] > first, 20)
    assert values('ray_reaemb_rollout_embeddings_total{worker="0",engine="0"}'), "tags become labels"
    # histograms: every observation lands in the (0.25, 0.5] bucket
    count = values("sum(ray_reaemb_learner_step_seconds_count)")[0]
    below = values('sum(ray_reaemb_learner_step_seconds_bucket{le="0.25"})')[0]
    within = values('sum(ray_reaemb_learner_step_seconds_bucket{le="0.5"})')[0]
    assert count > 0 and below == 0 and within == count
    mean = values("sum(ray_reaemb_learner_step_seconds_sum) / sum(ray_reaemb_learner_step_seconds_count)")[0]
    assert 0.25 <= mean <= 0.5  # Ray 2.60 records the bucket midpoint (0.375), not the observed 0.3
    import ray

    ray.get(emitter.stop.remote())
    print(f"series in prometheus after {time.time() - t0:.1f}s")


def test_every_dashboard_query_returns_data(prometheus_url):
    emitter = emit_with_actor()
    dash = json.loads((ROOT / "cluster" / "grafana" / "reaemb_dashboard.json").read_text())
    # Grafana's variables, as Grafana would fill them in
    exprs = [(p["title"], t["expr"].replace("$SessionName", ".+").replace("$__rate_interval", "15s"))
             for p in dash["panels"] for t in p["targets"]]

    def all_have_data():
        empty = []
        for title, expr in exprs:
            result = query(prometheus_url, expr)
            if not result or not all(math.isfinite(float(s["value"][1])) for s in result):
                empty.append(title)
        return not empty or None

    wait_for("every dashboard query to return finite values", all_have_data, 50)
    rates = query(prometheus_url, exprs[0][1])
    assert float(rates[0]["value"][1]) > 0, "rollout embeddings/s must be positive while the actor emits"
    p50 = query(prometheus_url, [e for t, e in exprs if t == "Learner step seconds"][0])
    assert 0.25 <= float(p50[0]["value"][1]) <= 0.5
    import ray

    ray.get(emitter.stop.remote())


def test_real_crrl_run_reaches_prometheus(prometheus_url, tmp_path):
    """A short real CRRL run (tiny random Llama, synthetic co-occurrence data, torch engine) on this Ray:
    its rollout/reward/learner series reach Prometheus with the values the run recorded."""
    pytest.importorskip("reaemb_ray.stages.crrl")
    from reaemb_ray.config import load_config
    from reaemb_ray.rl.synthetic import write_synthetic_prepared
    from reaemb_ray.stages.crrl import run_crrl

    write_synthetic_prepared(tmp_path / "prepared")
    cfg = load_config(None, [
        f"output_dir={tmp_path}", "model.backbone=tiny", "model.max_length=128", "crrl.init_from=backbone",
        "crrl.engine=torch", "crrl.items_per_batch=8", "crrl.epochs=1", "crrl.group_size=4", "crrl.eval_items=8",
        "crrl.num_rollout_workers=1", "crrl.num_reward_workers=1", "crrl.rollout_resources.num_cpus=0.5",
        "crrl.reward_resources.num_cpus=0.25", "crrl.learner_resources.num_cpus=0.5"])
    t0 = time.time()
    res = run_crrl(cfg, fresh=True)
    rows = [json.loads(x) for x in (tmp_path / "crrl" / "metrics.jsonl").read_text().splitlines()]
    assert res["steps"] == len(rows) >= 2
    print(f"CRRL run: {res['steps']} steps in {time.time() - t0:.1f}s")

    def values(promql):
        return [float(s["value"][1]) for s in query(prometheus_url, promql)]

    # the emitter of the other tests tags everything "0"; the real run's labels are its own
    embeddings = 'sum(ray_reaemb_rollout_embeddings_total{engine="torch"})'
    wait_for("the real run's rollout counter", lambda: values(embeddings), 30)
    # every learner step consumed one rollout batch of items_per_batch items x group_size noisy samples
    expected = res["steps"] * cfg.crrl.items_per_batch * cfg.crrl.group_size
    got = wait_for(f"{expected} rollout embeddings", lambda: values(embeddings)[0] >= expected and values(embeddings), 20)
    assert got == [expected]
    assert wait_for("reward scores", lambda: values('sum(ray_reaemb_reward_scores_total{worker!="0"} or '
                                                      'ray_reaemb_reward_scores_total{reward!="0"})'), 20)[0] > 0
    last = rows[-1]
    loss = wait_for("the crrl loss gauge", lambda: values('ray_reaemb_loss{stage="crrl"}'), 20)
    assert loss == [pytest.approx(last["loss"], rel=1e-5, abs=1e-7)]
    p95 = values('histogram_quantile(0.95, sum by (le) (rate(ray_reaemb_rollout_batch_seconds_bucket{engine="torch"}[1m])))')
    assert p95 and p95[0] > 0
