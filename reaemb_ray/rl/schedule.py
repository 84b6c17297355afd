"""CRRL scheduling without Ray: which batch goes to which worker, bounded staleness and queues, re-issue after a
worker dies, and exactly-once learner steps. The controller (reaemb_ray/stages/crrl.py) turns these decisions
into actor calls; the tests drive this class with simulated completions and deaths.

Batch k (0-based) is learner step k + 1, so the learner consumes batches in order and holds weight version k
when it takes batch k. A rollout of batch k issued under version v is `k - v` versions stale when learned:
issuing only while `k - version <= max_staleness` bounds every step's staleness by `max_staleness`.
A batch is in exactly one place at a time: a rollout worker, a reward worker, the ready queue, or the learner;
`queue_size` bounds how many are anywhere before the learner. A dead worker's batch is issued again with the
same batch index (hence the same noise seed), so a death changes neither the data nor the number of steps.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field


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
    num_rollout: int
    num_reward: int
    queue_size: int
    max_staleness: int
    step: int = 0  # learner steps done (resumed runs start later)
    version: int = 0  # the learner's weight version
    next_batch: int = field(init=False)
    rollouts: dict[int, int] = field(default_factory=dict)  # batch -> rollout worker
    rewards: dict[int, int] = field(default_factory=dict)  # batch -> reward worker
    ready: set[int] = field(default_factory=set)  # scored, waiting for the learner
    learning: int | None = None  # the batch the learner holds
    _next_reward: int = 0

    def __post_init__(self):
        self.next_batch = self.step

    @property
    def done(self) -> bool:
        return self.step >= self.total

    def in_flight(self) -> int:
        return len(self.rollouts) + len(self.rewards) + len(self.ready)

    def issue(self) -> list[tuple[int, int]]:
        """New (batch, rollout worker) assignments that the queue, staleness and free workers allow."""
        out = []
        busy = set(self.rollouts.values())
        while (self.next_batch < self.total and self.in_flight() < self.queue_size
               and self.next_batch - self.version <= self.max_staleness and len(busy) < self.num_rollout):
            worker = min(set(range(self.num_rollout)) - busy)
            self.rollouts[self.next_batch] = worker
            busy.add(worker)
            out.append((self.next_batch, worker))
            self.next_batch += 1
        return out

    def rollout_done(self, batch: int) -> int:
        """Batch `batch` has its rollout: free its worker; returns the reward worker (round robin) to score it."""
        del self.rollouts[batch]
        worker = self._next_reward % self.num_reward
        self._next_reward += 1
        self.rewards[batch] = worker
        return worker

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
        """Queue depths for the metrics: batches at rollout workers, at reward workers, ready for the learner."""
        return {"rollout": len(self.rollouts), "reward": len(self.rewards), "learner": len(self.ready)}
