"""Elastic worker pools: how many rollout and reward workers the CRRL controller should run next.

Observations in (queue depth, idle workers, the longest idle time, current size), desired sizes out; no clock
and no Ray here, so the rule is tested by feeding it sequences of observations (tests/rl/test_pools.py).

Decision rule for one pool, applied once per observation, in this order:

    backed_up  = queue_depth > 0 and idle_workers == 0          (work waits and nobody can take it)
    streak'    = streak + 1 if backed_up else 0
    size < min                                      -> grow to min (as far as `fits` allows)
    size > max                                      -> shrink to max
    streak' >= scale_up_after, size < max, fits >= 1 -> size + 1, streak' = 0
    queue_depth == 0, longest_idle_s >= scale_down_idle_s, size > min
                                                    -> size - 1
    otherwise                                       -> size

Hysteresis: a pool grows only after `scale_up_after` consecutive backed-up observations (one busy moment is
not a trend) and shrinks only after a worker has been idle for `scale_down_idle_s` with nothing queued; it
moves by one worker per observation, so a burst cannot overshoot. Between the two thresholds the size holds.

`fits` caps growth by what the free resources can hold (`workers_that_fit`); None means no cap, the case of an
autoscaling cluster, where a worker that does not fit makes the autoscaler add a node. `plan` decides several
pools against one pool of free resources: a pool that grows takes its worker's resources before the next
pool is asked, so two pools never both count the same free CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class PoolRule:
    min_workers: int
    max_workers: int
    scale_up_after: int  # consecutive backed-up observations before growing by one worker
    scale_down_idle_s: float  # a worker idle this long (with nothing queued) is released


@dataclass(frozen=True)
class Observation:
    size: int  # workers in the pool now
    queue_depth: int  # work items waiting for this pool
    idle_workers: int  # workers with nothing to do right now
    longest_idle_s: float  # how long the longest-idle worker has had nothing to do (0 when all are busy)


@dataclass(frozen=True)
class Decision:
    size: int  # desired number of workers
    streak: int  # consecutive backed-up observations so far (feed it back with the next observation)


def decide(rule: PoolRule, obs: Observation, streak: int = 0, fits: int | None = None) -> Decision:
    """The rule of the module docstring for one pool; refuses inputs that cannot describe a pool."""
    _check(rule, obs, streak, fits)
    room = math.inf if fits is None else fits
    streak = streak + 1 if obs.queue_depth > 0 and obs.idle_workers == 0 else 0
    if obs.size < rule.min_workers:
        return Decision(obs.size + int(min(rule.min_workers - obs.size, room)), streak)
    if obs.size > rule.max_workers:
        return Decision(rule.max_workers, streak)
    if streak >= rule.scale_up_after and obs.size < rule.max_workers and room >= 1:
        return Decision(obs.size + 1, 0)
    if obs.queue_depth == 0 and obs.longest_idle_s >= rule.scale_down_idle_s and obs.size > rule.min_workers:
        return Decision(obs.size - 1, streak)
    return Decision(obs.size, streak)


def workers_that_fit(free: Mapping[str, float], per_worker: Mapping[str, float]) -> int | None:
    """How many more workers asking `per_worker` ({"CPU": 1, "GPU": 0.5}) fit in `free`; None = no limit
    (a worker that asks for nothing)."""
    counts = [math.floor(free.get(k, 0.0) / v + 1e-9) for k, v in per_worker.items() if v > 0]
    return max(0, min(counts)) if counts else None


@dataclass(frozen=True)
class Pool:
    rule: PoolRule
    obs: Observation
    per_worker: Mapping[str, float]  # the resources one worker asks Ray for
    streak: int = 0


def plan(pools: Mapping[str, Pool], free: Mapping[str, float] | None) -> dict[str, Decision]:
    """`decide` for every pool in order; `free` = the resources free now (None: an autoscaling cluster, no
    cap). A pool that grows reserves its new workers' resources before the next pool is decided."""
    left = None if free is None else dict(free)
    out = {}
    for name, p in pools.items():
        fits = None if left is None else workers_that_fit(left, p.per_worker)
        d = out[name] = decide(p.rule, p.obs, p.streak, fits)
        if left is not None:
            for k, v in p.per_worker.items():
                left[k] = left.get(k, 0.0) - v * max(0, d.size - p.obs.size)
    return out


def _check(rule: PoolRule, obs: Observation, streak: int, fits: int | None) -> None:
    if not 1 <= rule.min_workers <= rule.max_workers:
        raise ValueError(f"pool limits must satisfy 1 <= min_workers <= max_workers, got {rule.min_workers}, "
                         f"{rule.max_workers}")
    if rule.scale_up_after < 1 or rule.scale_down_idle_s <= 0:
        raise ValueError(f"scale_up_after must be >= 1 and scale_down_idle_s > 0, got {rule.scale_up_after}, "
                         f"{rule.scale_down_idle_s}")
    if obs.size < 0 or obs.queue_depth < 0 or obs.longest_idle_s < 0 or not 0 <= obs.idle_workers <= obs.size:
        raise ValueError(f"an observation needs size, queue_depth, longest_idle_s >= 0 and 0 <= idle_workers <= "
                         f"size, got {obs}")
    if streak < 0 or (fits is not None and fits < 0):
        raise ValueError(f"streak and fits must be >= 0, got {streak}, {fits}")

