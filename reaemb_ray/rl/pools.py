"""Elastic worker pools: how many rollout and reward workers the CRRL controller should run next.

Observations in (queue depth, idle workers, the longest idle time, current size), desired sizes out; no clock
and no Ray here, so the rule is tested by feeding it sequences of observations (tests/rl/test_pools.py).
`Elastic` applies it over time for the controller (reaemb_ray/stages/crrl.py): given what each pool looks
like and a timestamp, it keeps each worker's idle-since time and each pool's streak.

Decision rule for one pool, applied once per observation, in this order:

    backed_up  = queue_depth > 0 and idle_workers == 0 and starting == 0
                                                    (work waits, nobody can take it, no help is on its way)
    streak'    = streak + 1 if backed_up else 0
    size < min                                      -> grow to min (as far as `fits` allows)
    size > max                                      -> shrink to max
    streak' >= scale_up_after, size < max, fits >= 1 -> size + 1, streak' = 0
    queue_depth == 0, longest_idle_s >= scale_down_idle_s, size > min
                                                    -> size - 1
    otherwise                                       -> size

Hysteresis: a pool grows only after `scale_up_after` consecutive backed-up observations (one busy moment is
not a trend) and shrinks only after a worker has been idle for `scale_down_idle_s` with nothing queued; it
moves by one worker per observation, and not again while a worker it asked for is still starting (its
capacity is not there yet to judge; on an autoscaling cluster that start includes a new node), so a burst
cannot overshoot. Between the two thresholds the size holds.

`fits` caps growth by what the free resources can hold (`workers_that_fit`); None means no cap, the case of an
autoscaling cluster, where a worker that does not fit makes the autoscaler add a node. `plan` decides several
pools against one pool of free resources: a pool that grows takes its worker's resources before the next
pool is asked, so two pools never both count the same free CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Collection, Mapping, Sequence


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
    starting: int = 0  # of `size`, workers asked for that are not up yet


@dataclass(frozen=True)
class Decision:
    size: int  # desired number of workers
    streak: int  # consecutive backed-up observations so far (feed it back with the next observation)


def decide(rule: PoolRule, obs: Observation, streak: int = 0, fits: int | None = None) -> Decision:
    """The rule of the module docstring for one pool; refuses inputs that cannot describe a pool."""
    _check(rule, obs, streak, fits)
    room = math.inf if fits is None else fits
    streak = streak + 1 if obs.queue_depth > 0 and obs.idle_workers == 0 and obs.starting == 0 else 0
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


@dataclass(frozen=True)
class PoolView:
    """One pool as the controller sees it at an instant."""
    workers: Sequence[int]  # ids of the workers that are up and may get work
    busy: Collection[int]  # of those, the ones holding a batch
    waiting: int  # batches waiting for a free worker of this pool
    starting: int = 0  # workers asked for and not up yet (no work for them until they are)


class Elastic:
    """The rule over time, for the controller: it remembers since when each worker has been idle and each pool's
    backed-up streak, so the controller only reports what it sees (`observe`) and acts on the sizes returned.
    `now` is any clock in seconds, passed in (tests feed their own)."""

    def __init__(self, rules: Mapping[str, PoolRule], per_worker: Mapping[str, Mapping[str, float]]):
        self.rules, self.per_worker = dict(rules), dict(per_worker)
        self.streak = {p: 0 for p in self.rules}
        self.idle_since: dict[str, dict[int, float]] = {p: {} for p in self.rules}

    def observe(self, now: float, views: Mapping[str, PoolView], free: Mapping[str, float] | None) -> dict[str, int]:
        """Desired size per pool (counting starting workers) from what the pools look like at `now`; `free` as in
        `plan` (None: an autoscaling cluster)."""
        pools = {}
        for name, v in views.items():
            idle = self.idle_since[name]
            for w in [w for w in idle if w in v.busy or w not in v.workers]:
                del idle[w]  # busy again, or gone
            for w in v.workers:
                if w not in v.busy:
                    idle.setdefault(w, now)
            obs = Observation(size=len(v.workers) + v.starting, queue_depth=v.waiting, idle_workers=len(idle),
                              longest_idle_s=max((now - t for t in idle.values()), default=0.0), starting=v.starting)
            pools[name] = Pool(self.rules[name], obs, self.per_worker[name], self.streak[name])
        decisions = plan(pools, free)
        self.streak.update({name: d.streak for name, d in decisions.items()})
        return {name: d.size for name, d in decisions.items()}

    def longest_idle(self, pool: str) -> int | None:
        """The worker of `pool` idle the longest at the last observation (the one to let go first), if any."""
        idle = self.idle_since[pool]
        return min(idle, key=lambda w: (idle[w], w)) if idle else None

    def forget(self, pool: str, worker: int) -> None:
        """`worker` left the pool."""
        self.idle_since[pool].pop(worker, None)


def _check(rule: PoolRule, obs: Observation, streak: int, fits: int | None) -> None:
    if not 1 <= rule.min_workers <= rule.max_workers:
        raise ValueError(f"pool limits must satisfy 1 <= min_workers <= max_workers, got {rule.min_workers}, "
                         f"{rule.max_workers}")
    if rule.scale_up_after < 1 or rule.scale_down_idle_s <= 0:
        raise ValueError(f"scale_up_after must be >= 1 and scale_down_idle_s > 0, got {rule.scale_up_after}, "
                         f"{rule.scale_down_idle_s}")
    if (obs.size < 0 or obs.queue_depth < 0 or obs.longest_idle_s < 0 or obs.starting < 0 or obs.idle_workers < 0
            or obs.idle_workers + obs.starting > obs.size):
        raise ValueError(f"an observation needs size, queue_depth, longest_idle_s, idle_workers, starting >= 0 and "
                         f"idle_workers + starting <= size, got {obs}")
    if streak < 0 or (fits is not None and fits < 0):
        raise ValueError(f"streak and fits must be >= 0, got {streak}, {fits}")

