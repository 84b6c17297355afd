"""A real Prometheus scrapes a local Ray's metrics endpoint: a short real run (LRCL as a Ray Train job, then
CRRL with a rollout worker killed once) feeds every query of the Grafana dashboard
(cluster/grafana/reaemb_dashboard.json), and each metric kind reaches Prometheus under the expected name.

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
    (tags all "0"); its series carry its own WorkerId label, which sets them apart from the real run's."""
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

        def worker_id(self) -> str:
            return ray.get_runtime_context().get_worker_id()

    return Emitter.remote()


class DashboardWatch:
    """Polls every dashboard query (as Grafana fills in its variables) while a run goes on, and keeps what each
    returned: Ray 2.60 drops a gauge about two export intervals after its last update, so gauge panels show
    data only while the run that sets them runs."""

    def __init__(self, prom_url: str):
        import threading

        dash = json.loads((ROOT / "cluster" / "grafana" / "reaemb_dashboard.json").read_text())
        self.prom_url = prom_url
        # the explicit-reasoning panels are fed by `reaemb reason`, not by the LRCL + CRRL run watched here
        self.exprs = [(p["title"], t["expr"].replace("$SessionName", ".+").replace("$__rate_interval", "5m"))
                      for p in dash["panels"] for t in p["targets"] if not p["title"].startswith("Reasoning:")]
        self.seen: dict[str, list[float]] = {expr: [] for _, expr in self.exprs}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self._stop.is_set():
            for _, expr in self.exprs:
                try:
                    self.seen[expr] += [float(s["value"][1]) for s in query(self.prom_url, expr)]
                except (urllib.error.URLError, OSError):
                    pass
            time.sleep(0.5)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        time.sleep(3)  # the last export interval and scrape
        self._stop.set()
        self._thread.join()

    def panels_without_data(self) -> list[str]:
        return [title for title, expr in self.exprs if not any(math.isfinite(v) for v in self.seen[expr])]


def test_a_short_real_run_feeds_every_dashboard_query(prometheus_url, tmp_path):
    """LRCL (Ray Train, 2 workers) then CRRL (torch engine, object-store weight sync, a reward worker killed once)
    on this Ray: while they run, every dashboard query returns a finite series from what they emit, and the
    three series the dashboard once plotted without any emitter (LRCL items, LRCL tau, weight-sync seconds)
    hold the run's own numbers."""
    import ray

    from reaemb_ray.config import load_config
    from reaemb_ray.rl.synthetic import write_synthetic_prepared
    from reaemb_ray.stages.crrl import run_crrl
    from reaemb_ray.stages.lrcl import run_lrcl

    write_synthetic_prepared(tmp_path / "prepared")
    cfg = load_config(None, [
        f"output_dir={tmp_path}", "model.backbone=tiny", "model.max_length=128", "lrcl.steps=4", "lrcl.batch_size=8",
        "lrcl.micro_batch_size=4", "lrcl.warmup_steps=1", "lrcl.checkpoint_every=4", "crrl.engine=torch",
        "crrl.items_per_batch=8", "crrl.epochs=2", "crrl.group_size=4", "crrl.eval_items=8", "crrl.eval_every=2",
        "crrl.num_rollout_workers=1", "crrl.num_reward_workers=1", "crrl.rollout_resources.num_cpus=0.5",
        "crrl.reward_resources.num_cpus=0.25", "crrl.learner_resources.num_cpus=0.5"])
    killed = []

    def pace_and_kill_once(step, ctl):
        # a tiny model's learner step takes ~0.25 s on a fast machine: all 8 could land in one or two export
        # intervals, and the dashboard's histogram panels (rate over the buckets) need two exports with an
        # increase between them. A real learner step takes seconds; one second per step here.
        time.sleep(1.0)
        # late in the run: the first reward worker has lived (and exported its histogram) for many export
        # intervals; a replacement that scores the last few batches in under 2 s may export it only once
        if step == 6 and not killed:
            ray.kill(ctl.actors.reward[0])  # the controller recreates it: reaemb_actor_restarts_total
            killed.append(step)

    t0 = time.time()
    with DashboardWatch(prometheus_url) as watch:
        lrcl = run_lrcl(cfg)
        res = run_crrl(cfg, fresh=True, hooks={"after_step": pace_and_kill_once})
    rows = [json.loads(x) for x in (tmp_path / "crrl" / "metrics.jsonl").read_text().splitlines()]
    lrcl_rows = [json.loads(x) for x in (tmp_path / "lrcl" / "metrics.jsonl").read_text().splitlines()]
    assert res["steps"] == len(rows) == 8 and res["restarts"]["reward"] == 1
    print(f"LRCL + CRRL run: {time.time() - t0:.1f}s")
    assert not watch.panels_without_data(), f"dashboard panels without data during a real run: " \
                                            f"{watch.panels_without_data()}"

    def values(promql):
        return [float(s["value"][1]) for s in query(prometheus_url, promql)]

    # LRCL: each rank counts its items (micro_batch_size per micro-batch); rank 0 sets the learned temperature
    # and the loss: every value Prometheus saw is one of the run's own
    items = values("sum(ray_reaemb_lrcl_items_total)")
    assert items and items[0] % cfg.lrcl.micro_batch_size == 0
    assert cfg.lrcl.batch_size <= items[0] <= cfg.lrcl.steps * cfg.lrcl.batch_size  # a dying worker's last second
    tau_panel = next(e for t, e in watch.exprs if t == "LRCL temperature tau")
    assert watch.seen[tau_panel] and all(any(v == pytest.approx(r["tau"], rel=1e-5) for r in lrcl_rows)
                                         for v in watch.seen[tau_panel])
    assert lrcl["last_metrics"]["tau"] != pytest.approx(cfg.lrcl.tau_init)  # it learned: not the initial value
    # CRRL: the rollout worker loaded new weights from the object store after learner steps
    synced = values('sum(ray_reaemb_weight_sync_seconds_count{backend="object_store"})')
    assert synced and synced[0] >= 1
    # every learner step consumed one rollout batch of items_per_batch items x group_size noisy samples
    embeddings = values('sum(ray_reaemb_rollout_embeddings_total{engine="torch"})')
    assert embeddings and embeddings[0] >= res["steps"] * cfg.crrl.items_per_batch * cfg.crrl.group_size


def test_reaemb_series_reach_prometheus(prometheus_url):
    """Each kind of series under its exported name: gauges exact, counters growing, histogram buckets."""
    import ray

    t0 = time.time()
    emitter = emit_with_actor()
    mine = f'WorkerId="{ray.get(emitter.worker_id.remote())}"'

    def values(promql):
        return [float(s["value"][1]) for s in query(prometheus_url, promql)]

    # gauges: the exact values the actor set
    wait_for("ray_reaemb_reward_mean in prometheus", lambda: values(f"ray_reaemb_reward_mean{{{mine}}}"), 55)
    for name, expected in GAUGE_VALUES.items():
        got = wait_for(f"ray_{name}", lambda: values(f"ray_{name}{{{mine}}}"), 20)
        assert got == [pytest.approx(expected)], f"ray_{name}"
    # counters: exported under the METRICS name (already ending in _total), growing between scrapes
    counter = f"sum(ray_reaemb_rollout_embeddings_total{{{mine}}})"
    first = values(counter)[0]
    assert first > 0
    wait_for("the rollout counter to grow", lambda: values(counter)[0] > first, 20)
    assert values(f'ray_reaemb_rollout_embeddings_total{{worker="0",engine="0",{mine}}}'), "tags become labels"
    # histograms: every observation lands in the (0.25, 0.5] bucket
    count = values(f"sum(ray_reaemb_learner_step_seconds_count{{{mine}}})")[0]
    below = values(f'sum(ray_reaemb_learner_step_seconds_bucket{{le="0.25",{mine}}})')[0]
    within = values(f'sum(ray_reaemb_learner_step_seconds_bucket{{le="0.5",{mine}}})')[0]
    assert count > 0 and below == 0 and within == count
    mean = values(f"sum(ray_reaemb_learner_step_seconds_sum{{{mine}}}) / sum(ray_reaemb_learner_step_seconds_count{{{mine}}})")[0]
    assert 0.25 <= mean <= 0.5  # Ray 2.60 records the bucket midpoint (0.375), not the observed 0.3
    ray.get(emitter.stop.remote())
    print(f"series in prometheus after {time.time() - t0:.1f}s")
