"""The CRRL controller's elastic rollout and reward pools: the Ray side of `reaemb_ray.rl.pools.Elastic`.

Each loop of the controller calls `update` before it hands out work (workers that came up join the scheduler,
retired workers that hold no batch are stopped) and `resize` after (what waits now waits for a worker: the
rule decides, this starts or retires workers). Pure decisions stay in rl/pools.py and rl/schedule.py.

- A new worker is started asynchronously and joins the pool only once its constructor has finished (on an
  autoscaling cluster that may take a new node's start-up), so no batch waits on a worker that is not there.
  It joins at the current weight version: with `object_store` it loads the latest weights at its first batch
  (every batch records its worker's version, so the learner's staleness shows it); with `collective` the weight
  group is formed again with it and the current weights are broadcast before it gets work.
- A pool shrinks by a still-starting worker first (cancelling the request, so an autoscaler need not add the
  node), else by its longest-idle worker. The scheduler takes a retired worker out of the pool and hands it
  back once it holds no batch, so a batch in flight finishes where it is: none lost, none run twice. With
  `collective` the group is formed again without it.
- On an embedded Ray a pool grows only into free resources (`ray.available_resources()` less what starting
  workers will take); joined to a cluster (an autoscaler behind it) a worker that does not fit is asked for
  anyway, up to the pool's max, and the autoscaler adds a node for it.
"""
from __future__ import annotations

import logging
import time

from reaemb_ray import metrics
from reaemb_ray.rl.pools import Elastic, PoolRule, PoolView
from reaemb_ray.runtime import gpu_options, joined_cluster, stop_actors

log = logging.getLogger(__name__)
POOLS = ("rollout", "reward")


def worker_request(res, ray_cfg) -> dict[str, float]:
    """The resources one worker asks Ray for, by Ray's resource names (ray.gpu_stand_in included)."""
    gpu = gpu_options(res.num_gpus, ray_cfg)
    return {"CPU": res.num_cpus, "GPU": gpu["num_gpus"], **gpu.get("resources", {})}


class ElasticPools:
    def __init__(self, cfg, actors, sched):
        c = cfg.crrl
        self.actors, self.sched = actors, sched
        limits = c.pool_limits()
        self.elastic_pools = [p for p in POOLS if limits[p][0] != limits[p][1]]
        self.per_worker = {p: worker_request(getattr(c, f"{p}_resources"), cfg.ray) for p in POOLS}
        self.elastic = Elastic({p: PoolRule(*limits[p], c.scale_up_after, c.scale_down_idle_s) for p in POOLS},
                               self.per_worker)
        self.starting: dict[str, dict[int, tuple]] = {p: {} for p in POOLS}  # id -> (actor, ready ref)
        # how long the controller may wait for a result: the idle clock must be read while nothing happens
        self.wait_s = min(60.0, c.scale_down_idle_s / 2) if self.elastic_pools else 60.0
        self.changes: list[tuple[float, str, str, int]] = []  # (time, pool, "start" | "join" | "retire" | "stop", id)

    def ready_refs(self) -> list:
        """Refs that resolve when a starting worker is up (the controller waits on them with its results)."""
        return [ref for pool in POOLS for _, ref in self.starting[pool].values()]

    def sizes(self) -> dict[str, int]:
        """Workers that may get work now, per pool."""
        return {p: len(self.sched.workers[p]) for p in POOLS}

    def update(self) -> None:
        """Workers that came up join their pool; retired workers that hold no batch are stopped."""
        import ray

        joined = []
        for pool in POOLS:
            for worker, (actor, ref) in list(self.starting[pool].items()):
                if not ray.wait([ref], timeout=0)[0]:
                    continue
                del self.starting[pool][worker]
                try:
                    ray.get(ref)
                except ray.exceptions.RayActorError as e:
                    log.warning("a new %s worker failed to start (%s); the pool stays as it is", pool, e)
                    continue
                self.actors.workers(pool)[worker] = actor
                joined.append((pool, worker))
        if self.actors.collective and any(pool == "rollout" for pool, _ in joined):
            self.actors.form_group()  # with the new members, which then receive the current weights
            self.actors.broadcast(None)  # the learner's version once a step it is running is done
        for pool, worker in joined:
            self.sched.add_worker(pool, worker)  # only now may it get work
            self._change(pool, "join", worker)
        self._stop_released()

    def _stop_released(self) -> None:
        import ray

        regroup = False
        for pool, worker in self.sched.released():
            ray.kill(self.actors.workers(pool).pop(worker), no_restart=True)
            self.elastic.forget(pool, worker)
            regroup |= pool == "rollout"
            self._change(pool, "stop", worker)
        if regroup and self.actors.collective:
            self.actors.form_group()

    def resize(self) -> None:
        """Observe the pools (after the controller handed out work) and start or retire workers."""
        views = {p: PoolView(self.sched.workers[p], self.sched.busy(p), self.sched.waiting(p), len(self.starting[p]))
                 for p in POOLS}
        if self.elastic_pools:
            want = self.elastic.observe(time.monotonic(), views, self._free())
            for pool in self.elastic_pools:
                size = len(views[pool].workers) + views[pool].starting
                for _ in range(want[pool] - size):
                    self._start(pool)
                for _ in range(size - want[pool]):
                    self._retire(pool)
        for pool in POOLS:
            metrics.get("reaemb_crrl_pool_size").set(len(self.sched.workers[pool]), tags={"pool": pool})
            metrics.get("reaemb_crrl_pool_starting").set(len(self.starting[pool]), tags={"pool": pool})
            metrics.get("reaemb_crrl_pool_waiting").set(self.sched.waiting(pool), tags={"pool": pool})

    def _free(self) -> dict[str, float] | None:
        """Free resources on an embedded Ray, less what starting workers will take; None on a cluster."""
        import ray

        if joined_cluster():
            return None
        free = dict(ray.available_resources())
        for pool in POOLS:
            for key, value in self.per_worker[pool].items():
                free[key] = free.get(key, 0.0) - value * len(self.starting[pool])
        return free

    def _start(self, pool: str) -> None:
        worker = self.sched.reserve_id(pool)
        actor = self.actors.new_worker(pool, worker)
        self.starting[pool][worker] = (actor, actor.__ray_ready__.remote())
        self._change(pool, "start", worker)

    def _retire(self, pool: str) -> None:
        import ray

        if self.starting[pool]:  # cancel the newest request first: no node needs to come up for it
            worker, (actor, _) = self.starting[pool].popitem()
            ray.kill(actor, no_restart=True)
            self._change(pool, "stop", worker)
            return
        worker = self.elastic.longest_idle(pool)
        if worker is None or worker not in self.sched.workers[pool]:
            worker = self.sched.workers[pool][-1]
        self.sched.retire(pool, worker)
        self.elastic.forget(pool, worker)
        self._change(pool, "retire", worker)

    def _change(self, pool: str, what: str, worker: int) -> None:
        self.changes.append((time.monotonic(), pool, what, worker))
        log.info("%s pool: %s worker %d (now %d up, %d starting)", pool, what, worker, len(self.sched.workers[pool]),
                 len(self.starting[pool]))

    def shutdown(self) -> None:
        stop_actors([actor for pool in POOLS for actor, _ in self.starting[pool].values()])
        for pool in POOLS:
            self.starting[pool].clear()
