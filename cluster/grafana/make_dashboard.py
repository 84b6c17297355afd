"""Writes reaemb_dashboard.json, the Grafana dashboard of every series in reaemb_ray/metrics.py.

    python cluster/grafana/make_dashboard.py      (then import the JSON in Grafana: Dashboards > New > Import)

Ray exports `ray.util.metrics` series on each node's metrics port with a `ray_` prefix; a counter gets a
`_total` suffix unless its name already ends in one, a histogram becomes `_bucket`/`_sum`/`_count`
(checked against Ray 2.60 by tests/test_prometheus.py). Every series carries a `SessionName` label, one
per Ray cluster start, which the dashboard's variable filters on.
Histogram sums are approximate in Ray 2.60 (each observation counts as its bucket's midpoint), so latency
panels show quantiles from the buckets, not sum/count means.
"""
from __future__ import annotations

import json
from pathlib import Path

SEL = '{SessionName=~"$SessionName"}'
RATE = "$__rate_interval"


def rate(counter: str, by: str = "") -> str:
    group = f" by ({by})" if by else ""
    return f"sum{group} (rate(ray_{counter}{SEL}[{RATE}]))"


def quantile(q: float, histogram: str, by: str = "") -> str:
    extra = f", {by}" if by else ""
    return f"histogram_quantile({q}, sum by (le{extra}) (rate(ray_{histogram}_bucket{SEL}[{RATE}])))"


def gauge(name: str, agg: str = "max", by: str = "") -> str:
    # Each process that set the gauge exports its own series (WorkerId label); aggregate them away.
    group = f" by ({by})" if by else ""
    return f"{agg}{group} (ray_{name}{SEL})"


# (title, unit, [(expr, legend)], description); panels are laid out two per row in this order.
PANELS: list[tuple[str, str, list[tuple[str, str]], str]] = [
    ("Rollout embeddings / s", "ops", [(rate("reaemb_rollout_embeddings_total", "engine"), "{{engine}}")],
     "Noisy-thought embeddings produced by all rollout workers."),
    ("Reward scores / s", "ops", [(rate("reaemb_reward_scores_total", "reward"), "{{reward}}")],
     "Embeddings scored by all reward workers."),
    ("Learner samples / s", "ops", [(rate("reaemb_learner_samples_total"), "samples/s")],
     "Rollout samples consumed by the DeepSpeed learner."),
    ("LRCL items / s", "ops", [(rate("reaemb_lrcl_items_total"), "all ranks"),
                               (rate("reaemb_lrcl_items_total", "rank"), "rank {{rank}}")],
     "Items per second through latent-reasoning contrastive learning (Ray Train workers)."),
    ("Learner step seconds", "s", [(quantile(0.5, "reaemb_learner_step_seconds"), "p50"),
                                   (quantile(0.95, "reaemb_learner_step_seconds"), "p95")],
     "Seconds per learner optimiser step."),
    ("Weight-sync seconds", "s", [(quantile(0.5, "reaemb_weight_sync_seconds", "backend"), "p50 {{backend}}"),
                                  (quantile(0.95, "reaemb_weight_sync_seconds", "backend"), "p95 {{backend}}")],
     "Seconds to publish new attention weights and load them in every rollout worker."),
    ("Rollout batch seconds", "s", [(quantile(0.5, "reaemb_rollout_batch_seconds", "engine"), "p50 {{engine}}"),
                                    (quantile(0.95, "reaemb_rollout_batch_seconds", "engine"), "p95 {{engine}}")],
     "Seconds per rollout batch."),
    ("Reward batch seconds", "s", [(quantile(0.5, "reaemb_reward_batch_seconds", "reward"), "p50 {{reward}}"),
                                   (quantile(0.95, "reaemb_reward_batch_seconds", "reward"), "p95 {{reward}}")],
     "Seconds per reward batch."),
    ("Queue depth", "short", [(gauge("reaemb_queue_depth", by="queue"), "{{queue}}")],
     "Items waiting in the controller's queues; a full rollout queue means the learner is the bottleneck."),
    ("CRRL worker pools", "short", [(gauge("reaemb_crrl_pool_size", by="pool"), "{{pool}} workers"),
                                    (gauge("reaemb_crrl_pool_starting", by="pool"), "{{pool}} starting"),
                                    (gauge("reaemb_crrl_pool_waiting", by="pool"), "{{pool}} batches waiting")],
     "Rollout and reward workers taking work, asked for and still starting (on a cluster: maybe a node), and "
     "batches waiting for a free worker; the pools move between crrl.min_*_workers and crrl.max_*_workers."),
    ("Staleness and weight version", "short", [(gauge("reaemb_staleness"), "staleness"),
                                               (gauge("reaemb_weight_version"), "weight version")],
     "Weight versions between a rollout and the learner (bounded by crrl.max_staleness)."),
    ("Reward mean / std", "short", [(gauge("reaemb_reward_mean", "avg"), "mean"),
                                    (gauge("reaemb_reward_std", "avg"), "std")],
     "Reward of the last rollout batch."),
    ("Eval reward (noise-free)", "short", [(gauge("reaemb_eval_reward", "avg"), "eval reward")],
     "Noise-free reward on the fixed evaluation item set; should rise during CRRL."),
    ("Loss", "short", [(gauge("reaemb_loss", "avg", by="stage"), "{{stage}}")],
     "Policy loss (crrl) or contrastive loss (lrcl) of the last step."),
    ("Clip fraction", "percentunit", [(gauge("reaemb_clip_fraction", "avg"), "clipped")],
     "Fraction of importance ratios clipped in the last learner step."),
    ("Reasoning: generated tokens / s", "ops",
     [(rate("reaemb_reason_generated_tokens_total", "engine"), "{{engine}}")],
     "Reply tokens written by the explicit-reasoning rollout workers (vLLM or the torch engine)."),
    ("Reasoning: generation seconds", "s",
     [(quantile(0.5, "reaemb_reason_rollout_seconds", "engine"), "p50 {{engine}}"),
      (quantile(0.95, "reaemb_reason_rollout_seconds", "engine"), "p95 {{engine}}")],
     "Seconds per generation task (a GRPO batch of G replies per prompt, or a shard of final reasons)."),
    ("Reasoning: reward mean per kind", "short", [(gauge("reaemb_reason_reward_mean", "avg", by="kind"), "{{kind}}")],
     "Mean reward of the last batch: format, accuracy (batch min-max), analysis, and the weighted total."),
    ("Reasoning: reward std per kind", "short", [(gauge("reaemb_reason_reward_std", "avg", by="kind"), "{{kind}}")],
     "Spread of each reward inside the last batch (no spread, no GRPO signal)."),
    ("Reasoning: format-valid share", "percentunit",
     [(gauge("reaemb_reason_format_valid_share", "avg"), "valid JSON {think, answer}")],
     "Share of replies that are one JSON object with both keys; should rise during training."),
    ("Reasoning: KL per token", "short", [(gauge("reaemb_reason_kl", "avg", by="to"), "to {{to}}")],
     "KL of the reasoning policy to the base model (when reason.kl_beta > 0) and to the behaviour policy."),
    ("LRCL temperature tau", "short", [(gauge("reaemb_lrcl_tau", "avg"), "tau")],
     "Learned contrastive temperature."),
    ("Actor restarts", "short", [(f"sum by (role) (increase(ray_reaemb_actor_restarts_total{SEL}[1h]))", "{{role}}")],
     "Rollout/reward actors restarted after dying, over the last hour."),
]


def panel(i: int, title: str, unit: str, targets: list[tuple[str, str]], description: str) -> dict:
    return {
        "id": i + 1,
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [
            {"refId": chr(ord("A") + j), "expr": expr, "legendFormat": legend,
             "datasource": {"type": "prometheus", "uid": "${datasource}"}}
            for j, (expr, legend) in enumerate(targets)
        ],
    }


def dashboard() -> dict:
    return {
        "uid": "reaemb-ray",
        "title": "ReaEmb on Ray",
        "description": "CRRL rollout/reward/learner throughput, latency, queues and learning curves; LRCL progress.",
        "tags": ["ray", "reaemb"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus"},
            {"name": "SessionName", "label": "Ray session", "type": "query",
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": {"query": "label_values(SessionName)", "refId": "SessionName"},
             "definition": "label_values(SessionName)",
             "includeAll": True, "multi": True, "allValue": ".+", "refresh": 2, "sort": 2,
             "current": {"text": "All", "value": "$__all"}},
        ]},
        "panels": [panel(i, *p) for i, p in enumerate(PANELS)],
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    out = Path(__file__).with_name("reaemb_dashboard.json")
    out.write_text(render())
    print(f"wrote {out} ({len(PANELS)} panels)")
