"""CRRL scheduling without Ray: which batch goes to which worker, bounded staleness and queues, re-issue after a
worker dies, and exactly-once learner steps. The controller (reaemb_ray/stages/crrl.py) turns these decisions
into actor calls; the tests drive this class with simulated completions and deaths.

Batch k (0-based) is learner step k + 1, so the learner consumes batches in order and holds weight version k
when it takes batch k. A rollout of batch k issued under version v is `k - v` versions stale when learned:
issuing only while `k - version <= max_staleness` bounds every step's staleness by `max_staleness`.
A batch is in exactly one place at a time: a rollout worker, a reward worker, the ready queue, or the learner;
`queue_size` bounds how many are anywhere before the learner. A dead worker's batch is issued again with the
same batch index (hence the same noise seed), so a death changes neither the data nor the number of steps.

The pools are elastic (reaemb_ray/rl/pools.py decides their sizes): workers have ids that are never reused
(`reserve_id`); `add_worker` adds one that is up, `retire` takes one out of the pool, and `released` says when it holds no
batch any more and may be stopped. A batch waits for a free reward worker in `to_score` rather than in a busy
worker's mailbox, so a new reward worker takes the next batch and an idle one is visibly idle.
"""
from __future__ import annotations

import random
from dataclasses import InitVar, dataclass, field


def plan_batches(items: list[int], items_per_batch: int, epochs: int, seed: int, max_steps: int = 0) -> list[list[int]]:
    """Epoch-wise shuffled batches of `items` (a fresh seeded order per epoch), cut at `max_steps` if > 0."""
    batches = []
    for epoch in range(epochs):
        order = list(items)
        random.Random(seed * 1000 + epoch).shuffle(order)
        batches += [order[i:i + items_per_batch] for i in range(0, len(order), items_per_batch)]
    return batches[:max_steps] if max_steps else batches


@dataclass
class Scheduler:
    total: int  # learner steps in the run
    num_rollout: InitVar[int]  # workers at the start; `add_worker` / `retire` change the pools later
    num_reward: InitVar[int]
    queue_size: int
    max_staleness: int
    step: int = 0  # learner steps done (resumed runs start later)
    version: int = 0  # the learner's weight version
    next_batch: int = field(init=False)
    workers: dict[str, list[int]] = field(init=False)  # pool -> ids of the workers that may get work
    rollouts: dict[int, int] = field(default_factory=dict)  # batch -> rollout worker
    rewards: dict[int, int] = field(default_factory=dict)  # batch -> reward worker
    to_score: list[int] = field(default_factory=list)  # rolled out, waiting for a free reward worker
    ready: set[int] = field(default_factory=set)  # scored, waiting for the learner
    learning: int | None = None  # the batch the learner holds
    retiring: set[tuple[str, int]] = field(default_factory=set)  # (pool, worker) finishing its batch, then leaving
    _next_id: dict[str, int] = field(init=False)

    def __post_init__(self, num_rollout: int, num_reward: int):
        self.next_batch = self.step
        self.workers = {"rollout": list(range(num_rollout)), "reward": list(range(num_reward))}
        self._next_id = {"rollout": num_rollout, "reward": num_reward}

    @property
    def done(self) -> bool:
        return self.step >= self.total

    def in_flight(self) -> int:
        return len(self.rollouts) + len(self.rewards) + len(self.to_score) + len(self.ready)

    def issue(self) -> list[tuple[int, int]]:
        """New (batch, rollout worker) assignments that the queue, staleness and free workers allow (the free
        worker with the lowest id first, so under a light load the newest workers stay idle and can go)."""
        out = []
        free = iter(self.free("rollout"))
        while self.next_batch < self.total and self.in_flight() < self.queue_size and \
                self.next_batch - self.version <= self.max_staleness and (worker := next(free, None)) is not None:
            self.rollouts[self.next_batch] = worker
            out.append((self.next_batch, worker))
            self.next_batch += 1
        return out

    def rollout_done(self, batch: int) -> None:
        """Batch `batch` has its rollout: free its worker; the batch waits for a reward worker (`score`)."""
        del self.rollouts[batch]
        self.to_score.append(batch)

    def score(self) -> list[tuple[int, int]]:
        """New (batch, reward worker) assignments: waiting batches in data order to free reward workers."""
        self.to_score.sort()
        out = list(zip(self.to_score, self.free("reward")))
        for batch, worker in out:
            self.to_score.remove(batch)
            self.rewards[batch] = worker
        return out

    def rollout_failed(self, batch: int) -> int:
        """The worker of `batch` died: returns the worker index to replace and issue the same batch on again."""
        return self.rollouts[batch]

    def reward_failed(self, batch: int) -> int:
        """The reward worker scoring `batch` died: returns the index to replace and score the batch on again."""
        return self.rewards[batch]

    def reward_done(self, batch: int) -> None:
        del self.rewards[batch]
        self.ready.add(batch)

    def to_learn(self) -> int | None:
        """The next batch for the learner when it is idle and that batch is scored (strictly in data order)."""
        if self.learning is not None or self.step not in self.ready:
            return None
        self.ready.remove(self.step)
        self.learning = self.step
        return self.learning

    def learned(self, step: int, version: int) -> None:
        """The learner finished the batch it held: `step` must be exactly the next one."""
        if self.learning is None or step != self.learning + 1:
            raise RuntimeError(f"learner reported step {step} while holding batch {self.learning}: a step was "
                               "lost or repeated")
        self.learning, self.step, self.version = None, step, version

    def depths(self) -> dict[str, int]:
        """Queue depths for the metrics: batches at rollout workers, at or waiting for reward workers, ready for
        the learner."""
        return {"rollout": len(self.rollouts), "reward": len(self.rewards) + len(self.to_score),
                "learner": len(self.ready)}

    # ---------------------------------------------------------------------------- elastic pools (rl/pools.py)

    def busy(self, pool: str) -> set[int]:
        """Workers of `pool` holding a batch (retiring ones included)."""
        return set((self.rollouts if pool == "rollout" else self.rewards).values())

    def free(self, pool: str) -> list[int]:
        busy = self.busy(pool)
        return [w for w in self.workers[pool] if w not in busy]

    def waiting(self, pool: str) -> int:
        """Batches waiting for a free worker of `pool`: for rollouts, those the queue and staleness bounds would
        issue now if a worker were free; for rewards, rolled-out batches not yet scored."""
        if pool == "reward":
            return len(self.to_score)
        room = min(self.total - self.next_batch, self.queue_size - self.in_flight(),
                   self.version + self.max_staleness + 1 - self.next_batch)
        return max(0, room) if not self.free("rollout") else 0

    def reserve_id(self, pool: str) -> int:
        """An id for a worker about to be started in `pool` (ids are never reused)."""
        self._next_id[pool] += 1
        return self._next_id[pool] - 1

    def add_worker(self, pool: str, worker: int) -> None:
        """Worker `worker` (from `reserve_id`), now up and at the current weights, joins `pool`."""
        self.workers[pool].append(worker)

    def retire(self, pool: str, worker: int) -> None:
        """`worker` gets no new batch; `released` hands it back once it holds none (at once when idle), so a
        batch in flight finishes where it is and is neither lost nor issued twice."""
        self.workers[pool].remove(worker)
        self.retiring.add((pool, worker))

    def released(self) -> list[tuple[str, int]]:
        """Retired workers that hold no batch any more (each returned once): stop them now."""
        out = sorted((p, w) for p, w in self.retiring if w not in self.busy(p))
        self.retiring.difference_update(out)
        return out
