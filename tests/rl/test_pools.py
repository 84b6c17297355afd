"""The elastic pool rule (reaemb_ray/rl/pools.py): sequences of observations in, pool sizes out."""
import pytest

from reaemb_ray.config import ConfigError, load_config
from reaemb_ray.rl.pools import Elastic, Observation, Pool, PoolRule, PoolView, decide, plan, workers_that_fit

RULE = PoolRule(min_workers=1, max_workers=3, scale_up_after=3, scale_down_idle_s=30.0)
BUSY = dict(queue_depth=2, idle_workers=0, longest_idle_s=0.0)  # work waits, nobody free
CALM = dict(queue_depth=0, idle_workers=0, longest_idle_s=0.0)  # all busy, nothing waits


def run(observations, size=1, rule=RULE, fits=None):
    """Feed observations of kind {"queue_depth", "idle_workers", "longest_idle_s"} through the rule, as the
    controller does (it acts on each decision, then observes again); the sizes after each one."""
    sizes, streak = [], 0
    for o in observations:
        d = decide(rule, Observation(size=size, **{**o, "idle_workers": min(o["idle_workers"], size)}), streak, fits)
        size, streak = d.size, d.streak
        sizes.append(size)
    return sizes


def idle(seconds, queue=0):
    return dict(queue_depth=queue, idle_workers=1, longest_idle_s=seconds)


def test_grows_one_worker_after_n_backed_up_observations_up_to_max():
    assert run([BUSY] * 9) == [1, 1, 2, 2, 2, 3, 3, 3, 3]


def test_a_break_in_the_backlog_restarts_the_count():
    # two busy observations, one where a worker is free, two busy: never three in a row
    assert run([BUSY, BUSY, idle(1.0, queue=1), BUSY, BUSY]) == [1] * 5
    # work queued but all busy is "backed up"; all busy with nothing queued is not
    assert run([BUSY, CALM, BUSY, BUSY, BUSY]) == [1, 1, 1, 1, 2]


def test_shrinks_after_the_idle_time_one_worker_at_a_time_down_to_min():
    assert run([idle(29.9), idle(30.0), idle(45.0), idle(100.0), idle(100.0)], size=3) == [3, 2, 1, 1, 1]


def test_idle_workers_with_work_queued_do_not_shrink_the_pool():
    assert run([idle(100.0, queue=1)] * 3, size=3) == [3, 3, 3]


def test_between_the_thresholds_the_size_holds():
    # hysteresis: neither backed up long enough nor idle long enough
    pattern = [BUSY, BUSY, idle(10.0), CALM, BUSY, idle(29.0)] * 5
    assert run(pattern, size=2) == [2] * len(pattern)


def test_outside_min_max_is_pulled_back_in():
    assert decide(RULE, Observation(size=0, **CALM)).size == 1
    assert decide(PoolRule(2, 4, 3, 30.0), Observation(size=0, **CALM)).size == 2
    assert decide(RULE, Observation(size=5, **BUSY), streak=10).size == 3


def test_growth_is_capped_by_what_fits():
    assert run([BUSY] * 9, fits=0) == [1] * 9
    assert decide(PoolRule(3, 4, 3, 30.0), Observation(size=0, **CALM), fits=2).size == 2  # min, as far as fits
    # the streak is kept while nothing fits: the pool grows as soon as room appears
    d = decide(RULE, Observation(size=1, **BUSY), streak=5, fits=0)
    assert (d.size, d.streak) == (1, 6)
    assert decide(RULE, Observation(size=1, **BUSY), streak=d.streak, fits=1).size == 2


def test_workers_that_fit():
    assert workers_that_fit({"CPU": 2.0, "GPU": 1.0}, {"CPU": 0.5}) == 4
    assert workers_that_fit({"CPU": 2.0, "GPU": 1.0}, {"CPU": 0.5, "GPU": 0.5}) == 2
    assert workers_that_fit({"CPU": 2.0}, {"CPU": 1.0, "GPU": 1.0}) == 0  # no GPU at all
    assert workers_that_fit({"CPU": 0.3}, {"CPU": 0.1}) == 3  # float noise does not lose a worker
    assert workers_that_fit({"CPU": -1.0}, {"CPU": 1.0}) == 0
    assert workers_that_fit({"CPU": 2.0}, {"CPU": 0.0}) is None


def test_plan_shares_the_free_resources_between_pools():
    rule = PoolRule(1, 4, 1, 30.0)
    pools = {"rollout": Pool(rule, Observation(1, **BUSY), {"CPU": 1.0}),
             "reward": Pool(rule, Observation(1, **BUSY), {"CPU": 0.5})}
    # 1 CPU free: the rollout pool takes it, the reward pool finds nothing left
    assert {k: d.size for k, d in plan(pools, {"CPU": 1.0}).items()} == {"rollout": 2, "reward": 1}
    assert {k: d.size for k, d in plan(pools, {"CPU": 1.5}).items()} == {"rollout": 2, "reward": 2}
    # an autoscaling cluster: no cap
    assert {k: d.size for k, d in plan(pools, None).items()} == {"rollout": 2, "reward": 2}


def test_a_pool_with_a_worker_starting_does_not_grow_again():
    # the backlog goes on while the new worker starts: no second worker until it is up and the backlog persists
    starting = Observation(size=2, queue_depth=3, idle_workers=0, longest_idle_s=0.0, starting=1)
    d = decide(RULE, starting, streak=5)
    assert (d.size, d.streak) == (2, 0)
    assert decide(RULE, Observation(2, **BUSY), streak=2).size == 3


def test_elastic_tracks_idle_time_per_worker_and_grows_then_shrinks():
    el = Elastic({"reward": PoolRule(1, 2, 2, 5.0)}, {"reward": {"CPU": 0.5}})
    backed_up = PoolView(workers=[0], busy={0}, waiting=2)
    assert el.observe(0.0, {"reward": backed_up}, {"CPU": 1.0}) == {"reward": 1}
    assert el.observe(1.0, {"reward": backed_up}, {"CPU": 1.0}) == {"reward": 2}  # 2 backed-up observations
    # the controller asked for worker 1: while it starts, no more growth
    assert el.observe(2.0, {"reward": PoolView([0], {0}, 2, starting=1)}, {"CPU": 0.5}) == {"reward": 2}
    # both up; worker 1 idle from t=3, worker 0 busy: nothing queued, but not idle long enough yet
    assert el.observe(3.0, {"reward": PoolView([0, 1], {0}, 0)}, {"CPU": 0.5}) == {"reward": 2}
    assert el.observe(7.9, {"reward": PoolView([0, 1], {0}, 0)}, {"CPU": 0.5}) == {"reward": 2}
    assert el.longest_idle("reward") == 1
    assert el.observe(8.0, {"reward": PoolView([0, 1], {0}, 0)}, {"CPU": 0.5}) == {"reward": 1}  # idle 5 s
    el.forget("reward", 1)
    # a worker busy again restarts its idle clock
    assert el.observe(9.0, {"reward": PoolView([0], set(), 0)}, None) == {"reward": 1}
    assert el.longest_idle("reward") == 0 and el.idle_since["reward"] == {0: 9.0}
    el.observe(10.0, {"reward": PoolView([0], {0}, 0)}, None)
    assert el.longest_idle("reward") is None


def test_elastic_on_an_embedded_ray_grows_only_into_free_resources():
    el = Elastic({"reward": PoolRule(1, 3, 1, 5.0)}, {"reward": {"CPU": 1.0}})
    busy = PoolView(workers=[0], busy={0}, waiting=4)
    assert el.observe(0.0, {"reward": busy}, {"CPU": 0.5}) == {"reward": 1}  # no CPU left for another
    assert el.observe(1.0, {"reward": busy}, None) == {"reward": 2}  # an autoscaler: ask, a node will come


@pytest.mark.parametrize("rule, obs, streak, fits", [
    (PoolRule(0, 3, 3, 30.0), Observation(1, **CALM), 0, None),
    (PoolRule(3, 2, 3, 30.0), Observation(1, **CALM), 0, None),
    (PoolRule(1, 3, 0, 30.0), Observation(1, **CALM), 0, None),
    (PoolRule(1, 3, 3, 0.0), Observation(1, **CALM), 0, None),
    (RULE, Observation(1, queue_depth=-1, idle_workers=0, longest_idle_s=0.0), 0, None),
    (RULE, Observation(1, queue_depth=0, idle_workers=2, longest_idle_s=0.0), 0, None),
    (RULE, Observation(2, queue_depth=0, idle_workers=1, longest_idle_s=0.0, starting=2), 0, None),
    (RULE, Observation(1, **CALM), -1, None),
    (RULE, Observation(1, **CALM), 0, -1),
])
def test_bad_inputs_are_refused(rule, obs, streak, fits):
    with pytest.raises(ValueError):
        decide(rule, obs, streak, fits)


def test_config_limits_default_to_a_fixed_pool_and_are_checked():
    cfg = load_config(None, ["crrl.num_reward_workers=1", "crrl.max_reward_workers=2"])
    assert cfg.crrl.pool_limits() == {"rollout": (2, 2), "reward": (1, 2)}
    for bad, words in [(["crrl.min_reward_workers=3"], "crrl.min_reward_workers (3)"),
                       (["crrl.max_rollout_workers=1"], "crrl.max_rollout_workers (1)"),
                       (["crrl.scale_up_after=0"], "crrl.scale_up_after"),
                       (["crrl.scale_down_idle_s=0"], "crrl.scale_down_idle_s")]:
        with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
            load_config(None, bad)
