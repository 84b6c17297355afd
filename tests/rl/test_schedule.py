"""The CRRL scheduler without Ray: simulated completions in random order, with rollout and reward workers dying,
must give exactly one learner step per batch, in data order, within the staleness and queue bounds."""
import random

import pytest

from reaemb_ray.rl.schedule import Scheduler, plan_batches


def simulate(seed: int, total=24, rollout=3, reward=2, queue=4, staleness=1, p_die=0.2, start=0, p_resize=0.0):
    """Drive a Scheduler as the controller does; returns (learned batches, staleness per step, deaths). With
    p_resize, workers join and retire at random moments (at least one stays in each pool)."""
    rng = random.Random(seed)
    s = Scheduler(total, rollout, reward, queue, staleness, step=start, version=start)
    issued_at = {}  # batch -> learner version when its (latest) rollout was issued
    learned, stale, deaths, learning, stopped = [], [], 0, None, set()
    while not s.done:
        if rng.random() < p_resize:
            pool = rng.choice(["rollout", "reward"])
            if rng.random() < 0.5 or len(s.workers[pool]) == 1:
                worker = s.reserve_id(pool)
                assert (pool, worker) not in stopped  # ids are never reused
                s.add_worker(pool, worker)
            else:
                s.retire(pool, rng.choice(s.workers[pool]))
        for pool, worker in s.released():
            assert worker not in s.busy(pool) and worker not in s.workers[pool]
            stopped.add((pool, worker))
        for batch, worker in s.issue():
            assert worker in s.workers["rollout"]
            assert batch - s.version <= staleness  # never issue a batch that would be too stale
            issued_at[batch] = s.version
        for batch, worker in s.score():
            assert worker in s.workers["reward"]
        assert s.in_flight() <= queue
        assert len(set(s.rollouts.values())) == len(s.rollouts)  # one batch per rollout worker
        assert len(set(s.rewards.values())) == len(s.rewards)  # one batch per reward worker
        if learning is None:
            learning = s.to_learn()
        events = [("rollout", b) for b in s.rollouts] + [("reward", b) for b in s.rewards]
        events += [("learn", learning)] if learning is not None else []
        assert events, "deadlock: nothing in flight and the learner is idle"
        kind, batch = rng.choice(events)
        if kind == "rollout" and rng.random() < p_die:
            worker = s.rollout_failed(batch)
            assert s.rollouts[batch] == worker  # the batch stays with the (replaced) worker
            issued_at[batch] = s.version  # re-issued now, with the same batch index (same noise seed)
            deaths += 1
        elif kind == "rollout":
            s.rollout_done(batch)
        elif kind == "reward" and rng.random() < p_die:
            assert s.reward_failed(batch) == s.rewards[batch]
            deaths += 1
        elif kind == "reward":
            s.reward_done(batch)
        else:
            stale.append(batch - issued_at[batch])
            s.learned(s.step + 1, s.version + 1)
            learned.append(batch)
            learning = None
    return learned, stale, deaths


@pytest.mark.parametrize("seed", range(20))
def test_every_batch_is_learned_once_in_order_despite_deaths(seed):
    learned, stale, deaths = simulate(seed)
    assert learned == list(range(24))
    assert deaths > 0  # the seeds do kill workers
    assert max(stale) <= 1


@pytest.mark.parametrize("staleness", [0, 1, 3])
def test_staleness_bound_holds_and_is_used(staleness):
    seen = []
    for seed in range(10):
        learned, stale, _ = simulate(seed, staleness=staleness, queue=8, rollout=4, p_die=0.1)
        assert learned == list(range(24)) and max(stale) <= staleness
        seen += stale
    if staleness == 0:
        assert set(seen) == {0}  # strictly on-policy: one batch at a time
    else:
        assert max(seen) == staleness  # rollouts do run ahead of the learner up to the bound


def test_zero_staleness_issues_one_batch_until_the_learner_steps():
    s = Scheduler(total=5, num_rollout=3, num_reward=1, queue_size=4, max_staleness=0)
    assert s.issue() == [(0, 0)]
    assert s.issue() == []
    s.rollout_done(0)
    assert s.score() == [(0, 0)]
    s.reward_done(0)
    assert s.issue() == [] and s.to_learn() == 0
    s.learned(1, 1)
    assert s.issue() == [(1, 0)]


def test_queue_size_bounds_batches_before_the_learner():
    s = Scheduler(total=10, num_rollout=2, num_reward=2, queue_size=3, max_staleness=5)
    assert [b for b, _ in s.issue()] == [0, 1]  # two rollout workers
    s.rollout_done(0)
    s.rollout_done(1)
    assert [b for b, _ in s.issue()] == [2]  # the queue holds 3
    assert s.score() == [(0, 0), (1, 1)]
    s.reward_done(1)
    assert s.to_learn() is None  # batch 1 is ready but batch 0 comes first
    s.reward_done(0)
    assert s.to_learn() == 0 and s.to_learn() is None  # the learner holds one batch at a time


def test_resume_starts_at_the_checkpointed_step():
    learned, _, _ = simulate(3, start=10)
    assert learned == list(range(10, 24))


def test_a_lost_or_repeated_step_is_an_error():
    s = Scheduler(total=3, num_rollout=1, num_reward=1, queue_size=2, max_staleness=1)
    s.issue()
    s.rollout_done(0)
    s.score()
    s.reward_done(0)
    with pytest.raises(RuntimeError, match="lost or repeated"):
        s.learned(1, 1)  # the learner never got batch 0
    assert s.to_learn() == 0
    with pytest.raises(RuntimeError, match="lost or repeated"):
        s.learned(2, 2)


@pytest.mark.parametrize("seed", range(20))
def test_every_batch_is_learned_once_while_pools_grow_and_shrink(seed):
    learned, stale, _ = simulate(seed, p_resize=0.3, p_die=0.1)
    assert learned == list(range(24)) and max(stale) <= 1


def test_batches_wait_for_a_free_reward_worker_and_a_new_one_takes_the_next():
    s = Scheduler(total=6, num_rollout=3, num_reward=1, queue_size=6, max_staleness=5)
    assert s.issue() == [(0, 0), (1, 1), (2, 2)]
    for b in (1, 0, 2):
        s.rollout_done(b)
    assert s.score() == [(0, 0)]  # in data order, one batch per reward worker
    assert s.waiting("reward") == 2 and s.depths()["reward"] == 3
    assert s.waiting("rollout") == 0 and s.issue() == [(3, 0), (4, 1), (5, 2)]
    assert s.reserve_id("reward") == 1
    s.add_worker("reward", 1)
    assert s.score() == [(1, 1)] and s.waiting("reward") == 1


def test_rollouts_waiting_count_what_a_free_worker_would_take():
    s = Scheduler(total=10, num_rollout=1, num_reward=1, queue_size=4, max_staleness=1)
    assert s.issue() == [(0, 0)]
    assert s.waiting("rollout") == 1  # batch 1 is allowed (staleness 1) but the only worker is busy
    s.max_staleness = 5
    assert s.waiting("rollout") == 3  # now the queue (4) bounds it
    s.add_worker("rollout", s.reserve_id("rollout"))
    assert s.issue() == [(1, 1)] and s.waiting("rollout") == 2


def test_a_retired_worker_finishes_its_batch_then_is_released():
    s = Scheduler(total=4, num_rollout=2, num_reward=2, queue_size=4, max_staleness=3)
    assert s.issue() == [(0, 0), (1, 1)]
    s.retire("rollout", 1)
    assert s.released() == []  # still holds batch 1
    s.retire("reward", 1)
    assert s.released() == [("reward", 1)]  # idle: released at once
    s.rollout_done(1)
    assert s.released() == [("rollout", 1)] and s.released() == []
    assert s.issue() == []  # worker 0 still holds batch 0, and retired worker 1 gets nothing new
    assert s.workers == {"rollout": [0], "reward": [0]}
    assert s.score() == [(1, 0)]  # batch 1's rollout is kept, scored by the remaining reward worker


def test_plan_batches_shuffles_each_epoch_and_cuts_at_max_steps():
    items = list(range(1, 11))
    b = plan_batches(items, 4, epochs=2, seed=0)
    assert [len(x) for x in b] == [4, 4, 2, 4, 4, 2]
    assert sorted(sum(b[:3], [])) == items and sorted(sum(b[3:], [])) == items
    assert sum(b[:3], []) != sum(b[3:], [])  # a fresh order per epoch
    assert plan_batches(items, 4, epochs=2, seed=0) == b and len(plan_batches(items, 4, 2, 0, max_steps=4)) == 4
