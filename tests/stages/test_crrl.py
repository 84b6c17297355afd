"""CRRL end to end on a real local Ray (CPU): 2 rollout workers, 2 reward workers, a DeepSpeed learner,
the tiny random Llama and a synthetic prepared dataset with obvious co-occurrence structure."""
import json
import socket
import time
import urllib.request

import numpy as np
import pytest
import ray

from reaemb_ray.config import load_config
from reaemb_ray.rl.synthetic import write_synthetic_prepared
from reaemb_ray.stages.crrl import run_crrl


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


METRICS_PORT = _port()


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, _metrics_export_port=METRICS_PORT)
    yield
    ray.shutdown()


def _cfg(tmp, *extra):
    write_synthetic_prepared(tmp / "prepared")
    return load_config(None, [
        f"output_dir={tmp}", "model.backbone=tiny", "model.max_length=128", "crrl.init_from=backbone",
        "crrl.items_per_batch=8", "crrl.epochs=2", "crrl.warmup_steps=1", "crrl.lr=0.05", "crrl.sigma=20.0",
        "crrl.eval_items=32", "crrl.eval_every=4", "crrl.checkpoint_every=3",
        "crrl.rollout_resources.num_cpus=0.5", "crrl.reward_resources.num_cpus=0.25",
        "crrl.learner_resources.num_cpus=0.5", *extra])


def test_crrl_end_to_end_and_resume(local_ray, tmp_path):
    cfg = _cfg(tmp_path)
    res = run_crrl(cfg, fresh=True)
    assert res["steps"] == 8 and res["version"] == 8  # 32 items / 8 per batch x 2 epochs
    rows = [json.loads(x) for x in (tmp_path / "crrl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert max(r["staleness"] for r in rows) <= cfg.crrl.max_staleness
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert len(res["eval_rewards"]) >= 3 and all(0 < e <= 0.5 for e in res["eval_rewards"])
    final = tmp_path / "crrl" / "final"
    assert (final / "thought_attention.safetensors").exists() and (tmp_path / "crrl" / "crrl_curves.png").exists()
    from safetensors.numpy import load_file
    trained = load_file(str(final / "thought_attention.safetensors"))
    start = load_file(str(tmp_path / "crrl" / "base" / "thought_attention.safetensors"))
    assert any(np.abs(trained[k] - start[k]).max() > 1e-4 for k in start)  # the learner moved the policy
    from reaemb_ray.model.generator import load_generator
    gen, _ = load_generator(final)  # the final folder is a loadable generator for `export.method=crrl`
    np.testing.assert_allclose(gen.attn.q_proj.weight.detach().numpy(), trained["q_proj.weight"], rtol=1e-6)
    # resume: more epochs continue from the checkpoint (step 8), not from scratch
    cfg2 = _cfg(tmp_path, "crrl.epochs=3")
    res2 = run_crrl(cfg2)
    assert res2["steps"] == 12
    rows = [json.loads(x) for x in (tmp_path / "crrl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows][-4:] == [9, 10, 11, 12]
    # metrics reach Ray's Prometheus endpoint
    body = ""
    for _ in range(30):
        body = urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5).read().decode()
        if "ray_reaemb_rollout_embeddings_total" in body and "ray_reaemb_reward_mean" in body:
            break
        time.sleep(1)
    for name in ("ray_reaemb_rollout_embeddings_total", "ray_reaemb_reward_scores_total",
                 "ray_reaemb_learner_samples_total", "ray_reaemb_reward_mean", "ray_reaemb_eval_reward"):
        assert name in body, name


def test_killed_rollout_worker_is_replaced_without_losing_steps(local_ray, tmp_path):
    cfg = _cfg(tmp_path, "crrl.eval_every=100", "crrl.eval_items=0")
    killed = []

    def kill_once(step, ctl):
        if step == 2 and not killed:
            ray.kill(ctl.rollout_workers[0])  # no restart: the controller must recreate it
            killed.append(step)

    res = run_crrl(cfg, fresh=True, hooks={"after_step": kill_once})
    assert killed == [2]
    assert res["steps"] == 8 and res["restarts"]["rollout"] >= 1
    rows = [json.loads(x) for x in (tmp_path / "crrl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))  # exactly once each
