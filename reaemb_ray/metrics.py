"""Names of every metric series the system emits through `ray.util.metrics`.

Ray exports them on its Prometheus endpoint prefixed with `ray_` (e.g. `ray_reaemb_rollout_embeddings_total`).
The Grafana dashboard in cluster/ and the tests read this table, so a series is renamed in one place.
"""
from __future__ import annotations

# name -> (kind, description, tag keys)
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # CRRL rollout workers
    "reaemb_rollout_embeddings_total": ("counter", "noisy-thought embeddings produced by rollout workers", ("worker", "engine")),
    "reaemb_rollout_batch_seconds": ("histogram", "seconds per rollout batch", ("worker", "engine")),
    # reward workers
    "reaemb_reward_scores_total": ("counter", "embeddings scored by reward workers", ("worker", "reward")),
    "reaemb_reward_batch_seconds": ("histogram", "seconds per reward batch", ("worker", "reward")),
    # learner
    "reaemb_learner_samples_total": ("counter", "samples consumed by the learner", ()),
    "reaemb_learner_step_seconds": ("histogram", "seconds per learner step", ()),
    "reaemb_weight_sync_seconds": ("histogram", "seconds to publish and load new weights", ("backend",)),
    "reaemb_weight_version": ("gauge", "current policy weight version", ()),
    # controller
    "reaemb_queue_depth": ("gauge", "items waiting in a controller queue", ("queue",)),
    "reaemb_staleness": ("gauge", "weight versions between a rollout and the learner", ()),
    "reaemb_reward_mean": ("gauge", "mean reward of the last batch", ()),
    "reaemb_reward_std": ("gauge", "reward std of the last batch", ()),
    "reaemb_eval_reward": ("gauge", "noise-free reward on the fixed evaluation item set", ()),
    "reaemb_loss": ("gauge", "policy loss of the last learner step", ("stage",)),
    "reaemb_clip_fraction": ("gauge", "fraction of clipped ratios in the last learner step", ()),
    "reaemb_actor_restarts_total": ("counter", "rollout/reward actors restarted after dying", ("role",)),
    # LRCL
    "reaemb_lrcl_items_total": ("counter", "items processed by LRCL training", ("rank",)),
    "reaemb_lrcl_tau": ("gauge", "learned contrastive temperature", ()),
}

_cache: dict[str, object] = {}


def get(name: str):
    """The `ray.util.metrics` object for `name` (created once per process)."""
    if name not in METRICS:
        raise KeyError(f"unknown metric {name!r}; add it to reaemb_ray.metrics.METRICS")
    if name not in _cache:
        from ray.util import metrics as m

        kind, desc, tags = METRICS[name]
        if kind == "counter":
            _cache[name] = m.Counter(name, description=desc, tag_keys=tags)
        elif kind == "gauge":
            _cache[name] = m.Gauge(name, description=desc, tag_keys=tags)
        else:
            _cache[name] = m.Histogram(name, description=desc, tag_keys=tags,
                                       boundaries=[0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60])
    return _cache[name]
