"""Elastic CRRL pools on a real local Ray: the reward pool grows when its queue backs up and shrinks when a worker
idles; the rollout pool grows when rollouts are the bottleneck; no step is lost or counted twice.

The slow stages are real: every Ray worker process of this module's Ray runs a setup hook that wraps the
co-occurrence reward and the rollout so that each sleeps SLOW_S per batch while its flag file exists. The test
makes scoring slow until the reward pool has grown, then rollouts slow until the rollout pool has grown: the
run turns rollout-bound, so the second reward worker idles and goes, and a second rollout worker is asked for.
Which phase happens when is decided by the flags, not by how fast this machine is.
"""
import json
import time

import pytest
import ray

from reaemb_ray.config import load_config
from reaemb_ray.rl.synthetic import write_synthetic_prepared
from reaemb_ray.stages.crrl import run_crrl

SLOW_S = 1.5


def slow_stages_hook(reward_flag: str, rollout_flag: str, seconds: float):
    """A worker-process setup hook (pickled by value: a closure) that slows the co-occurrence reward down while
    `reward_flag` exists and rollouts while `rollout_flag` exists."""
    def hook():
        import os
        import time

        from reaemb_ray.rl import rewards
        from reaemb_ray.rl.rollout import Rollout

        plain = rewards.REWARDS["cooccurrence"]

        def combine(parts, weights):
            if os.path.exists(reward_flag):
                time.sleep(seconds)
            return plain.combine(parts, weights)

        rewards.REWARDS["cooccurrence"] = rewards.Reward(plain.sources, combine)
        plain_rollout = Rollout.rollout

        def rollout(self, *args, **kwargs):
            if os.path.exists(rollout_flag):
                time.sleep(seconds)
            return plain_rollout(self, *args, **kwargs)

        Rollout.rollout = rollout
    return hook


@pytest.fixture(scope="module")
def slow_flags(tmp_path_factory):
    """(reward flag, rollout flag): while one exists, that stage sleeps SLOW_S per batch in every Ray worker."""
    folder = tmp_path_factory.mktemp("slow")
    flags = folder / "reward_is_slow", folder / "rollout_is_slow"
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             runtime_env={"worker_process_setup_hook": slow_stages_hook(*map(str, flags), SLOW_S)})
    yield flags
    ray.shutdown()


def _cfg(tmp, *extra):
    write_synthetic_prepared(tmp / "prepared")
    return load_config(None, [
        f"output_dir={tmp}", "model.backbone=tiny", "model.max_length=128", "crrl.init_from=backbone",
        "crrl.items_per_batch=4", "crrl.epochs=3", "crrl.warmup_steps=1", "crrl.lr=0.05", "crrl.sigma=20.0",
        "crrl.group_size=4", "crrl.eval_items=0", "crrl.eval_every=100", "crrl.checkpoint_every=100",
        "crrl.queue_size=4", "crrl.max_staleness=3",
        "crrl.num_rollout_workers=1", "crrl.max_rollout_workers=2", "crrl.num_reward_workers=1",
        "crrl.max_reward_workers=2", "crrl.scale_up_after=2", "crrl.scale_down_idle_s=1.5",
        "crrl.rollout_resources.num_cpus=0.5", "crrl.reward_resources.num_cpus=0.25",
        "crrl.learner_resources.num_cpus=0.5", *extra])


@pytest.mark.parametrize("weight_sync", ["object_store", "collective"])
def test_reward_pool_grows_when_scoring_backs_up_and_shrinks_when_idle(slow_flags, tmp_path, weight_sync):
    slow_reward, slow_rollout = slow_flags
    slow_reward.touch()
    slow_rollout.unlink(missing_ok=True)
    collective = weight_sync == "collective"
    versions = {}  # collective: step -> every rollout worker's weight version after it
    seen = []  # (seconds, step, rollout pool, reward pool) after every learner step
    t0 = time.monotonic()

    def watch(step, ctl):
        sizes = ctl.pools.sizes()
        seen.append((round(time.monotonic() - t0, 1), step, sizes["rollout"], sizes["reward"]))
        if collective:
            versions[step] = ray.get([w.weights_version.remote() for w in ctl.actors.rollout.values()])
        if sizes["reward"] == 2 and slow_reward.exists():
            slow_rollout.touch()  # rollouts are the bottleneck from now on: the rollout pool is asked to grow
            slow_reward.unlink()  # and the second reward worker has nothing to do
        if slow_rollout.exists() and sizes["rollout"] == 2:
            slow_rollout.unlink()  # grown: the rest of the run at full speed
        elif slow_rollout.exists() and ctl.pools.starting["rollout"]:
            # a rollout worker asked for while rollouts are slow joins (the next update) before the run can end
            # or its pool can change its mind, however long this machine takes to start one
            ray.wait([ref for _, ref in ctl.pools.starting["rollout"].values()], timeout=120)

    res = run_crrl(_cfg(tmp_path, f"crrl.weight_sync={weight_sync}", "crrl.sync_timeout_s=30"), fresh=True,
                   hooks={"after_step": watch})
    rows = [json.loads(x) for x in (tmp_path / "crrl" / "metrics.jsonl").read_text().splitlines()]
    changes = [(pool, what, worker) for _, pool, what, worker in res["pool_changes"]]
    print(f"{res['wall_s']:.0f} s; pools after each step {seen}; changes "
          f"{[(round(t - t0, 1), *c) for t, *c in res['pool_changes']]}")

    assert res["steps"] == 24 and [r["step"] for r in rows] == list(range(1, 25))  # every step once, in order
    assert not slow_reward.exists(), "the reward pool never grew to 2"
    assert not slow_rollout.exists(), "the rollout pool never grew to 2 once rollouts were the bottleneck"
    # the reward pool: 1 -> 2 while scoring was slow, back to 1 once a worker had idled crrl.scale_down_idle_s
    reward = [c for c in changes if c[0] == "reward"]
    # (the longest-idle one goes: worker 0 or the new worker 1, whichever idled first)
    assert reward[:2] == [("reward", "start", 1), ("reward", "join", 1)], reward
    assert [c[1] for c in reward[2:4]] == ["retire", "stop"] and reward[2][2] == reward[3][2] in (0, 1), reward
    assert {r["reward_workers"] for r in rows} >= {1, 2} and rows[-1]["reward_workers"] == 1
    assert any(r["reward_worker"] >= 1 for r in rows)  # a new worker scored batches (which one depends on timing)
    # the rollout pool grew too, once rollouts were the bottleneck; which of its workers then gets the batches,
    # and which one idles and goes, depends on timing. A joined worker rolls out at the current weights: a worker
    # still at version 0 would break the staleness bound on its batches; with collective every member holds the
    # step's version
    assert any(c[:2] == ("rollout", "join") for c in changes), changes
    assert max(r["staleness"] for r in rows) <= 3
    if collective:  # pushed to every member, a joined one included, before the step was recorded
        assert all(v == [step] * len(v) for step, v in versions.items()), versions
        assert any(len(v) == 2 for v in versions.values()), versions
