"""The explicit-reasoning mode on one real local Ray (CPU): rollout workers (torch and vLLM engines), reward
workers, the DeepSpeed GRPO learner, out-of-fold reasoning, the MiniLM embedder and the exported table, with a tiny
LM trained to reply in JSON and rated synthetic data."""
import json
import shutil
import time
import urllib.request

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray

from actors.reason_rollout import ReasonRolloutWorker, weight_key
from reaemb_ray.config import load_config
from reaemb_ray.reasoning.prompts import parse_response
from reaemb_ray.reasoning.synthetic import ensure_json_tiny, write_rated_prepared
from reaemb_ray.runtime import free_port
from reaemb_ray.stages.reason import fold_inputs, run_reason, stages
from reaemb_ray.storage import store_for
from reaemb_ray.stages.srs_pretrain import run_srs_pretrain

METRICS_PORT = free_port()
PREFIX = load_config(None, []).reason.reply_prefix  # the default prefilled reply start, '{"think": "'


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, _metrics_export_port=METRICS_PORT)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def json_tiny(tmp_path_factory):
    return str(ensure_json_tiny("~/.cache/reaemb_ray", tmp_path_factory.mktemp("jt")))


def _cfg(tmp, backbone, *extra):
    cfg = load_config(None, [
        f"output_dir={tmp}", f"reason.backbone={backbone}", "reason.engine=torch", "reason.steps_per_fold=3",
        "reason.prompts_per_batch=2", "reason.group_size=4", "reason.micro_batch=4", "reason.max_new_tokens=48",
        "reason.final_max_new_tokens=48", "reason.max_model_len=512", "reason.history_items=2", "reason.lr=0.001",
        "reason.warmup_steps=1", "reason.final_batch_size=8", "reason.checkpoint_every=2",
        "reason.rollout_resources.num_cpus=0.5", "reason.learner_resources.num_cpus=0.5",
        "reason.reward_resources.num_cpus=0.25", "reason.embedder.epochs=1", "reason.embedder.batch_size=8",
        "reason.embedder.max_length=64", "reason.embedder.num_cpus=0.5", "srs.hidden=16", "srs.layers=1",
        "srs.epochs=2", "srs.patience=2", "srs.max_len=16", "srs.batch_size=64", "eval.num_sampled_negatives=10",
        *extra])
    if not (tmp / "prepared").exists():  # the stage's inputs: prepared data and the pretrained ID-SASRec
        write_rated_prepared(tmp / "prepared")
        run_srs_pretrain(cfg)
    return cfg


def _rows(tmp, k):
    return [json.loads(x) for x in (tmp / "reason" / f"fold{k}" / "metrics.jsonl").read_text().splitlines()]


class Interrupt(Exception):
    pass


def test_reason_end_to_end_resume_and_metrics(local_ray, tmp_path, json_tiny):
    cfg = _cfg(tmp_path, json_tiny)

    def stop_once(k, step, ctl):  # after fold 0's checkpoint at step 2: as if the job were killed
        if (k, step) == (0, 2) and not (tmp_path / "stopped").exists():
            (tmp_path / "stopped").touch()
            raise Interrupt()

    with pytest.raises(Interrupt):
        run_reason(cfg, fresh=True, hooks={"after_step": stop_once})
    res = run_reason(cfg, hooks={"after_step": stop_once})  # resumes fold 0 at step 2
    # the actors' metrics, read while they are fresh (Ray drops a dead actor's series after a while)
    names, body = ("ray_reaemb_reason_generated_tokens_total", "ray_reaemb_reason_reward_mean",
                   "ray_reaemb_reason_format_valid_share", "ray_reaemb_reason_kl"), ""
    for _ in range(60):  # each process exports on its own period: wait for all of them
        body = urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5).read().decode()
        if all(name in body for name in names):
            break
        time.sleep(1)
    for name in names:
        assert name in body, name
    assert 'kind="accuracy"' in body
    for k in (0, 1):
        rows = _rows(tmp_path, k)
        assert [r["step"] for r in rows] == [1, 2, 3], k  # each learner step exactly once
        assert all(np.isfinite(r["loss"]) and r["tokens"] > 0 for r in rows)
        assert np.mean([r["valid_share"] for r in rows]) > 0.6  # the JSON-trained tiny LM mostly replies in JSON
    out = tmp_path / "reason"
    # out-of-fold: every item reasoned about once, by the policy of its own fold (which never trained on it)
    folds = {}
    for k in (0, 1):
        for shard in sorted((out / f"fold{k}" / "reasons").glob("*.parquet")):
            version = pq.read_schema(shard).metadata[b"model_version"].decode()
            assert version.startswith(f"fold{k}-v3-")
            for row in pq.read_table(shard).to_pylist():
                folds[row["item_id"]] = row["fold"]
    assert sorted(folds) == list(range(1, 17)) and set(folds.values()) == {0, 1}
    table = pq.read_table(tmp_path / "embeddings" / "reason" / "embeddings.parquet")
    assert table.column("item_id").to_pylist() == list(range(1, 17))
    vecs = np.asarray(table.column("vector").to_pylist())
    assert vecs.shape == (16, 384) and np.isfinite(vecs).all()
    samples = json.loads((out / "samples.json").read_text())["samples"]
    assert len(samples) == 12 and all({"think", "answer", "truth", "item_text"} <= set(s) for s in samples)
    assert res["final_valid_share"] > 0.6 and (out / "reason_curves.png").exists()
    # the evaluation report shows them
    from reaemb_ray.reasoning.report import append_samples
    (tmp_path / "report.md").write_text("# report\n")
    append_samples(out / "samples.json", tmp_path / "report.md")
    assert "Explicit reasoning: a sample" in (tmp_path / "report.md").read_text()
    # a rerun finds everything done: no step, no generation
    again = run_reason(cfg)
    assert again["timings"]["generated_tokens"] == 0 and again["timings"]["final_tokens"] == 0
    # the text-only control (reason.embedder.reasoning=false): no policy and no generation, the fold policies are
    # left as they are, the embedder runs on item text alone and makes another table
    control = _cfg(tmp_path, json_tiny, "reason.embedder.reasoning=false")
    adapter = out / "fold0" / "adapter" / "adapter_model.safetensors"
    before = adapter.stat().st_mtime_ns
    ctrl = run_reason(control)
    assert ctrl["task"] == "text_only" and ctrl["folds"] == 0 and adapter.stat().st_mtime_ns == before
    ctrl_vecs = np.asarray(pq.read_table(tmp_path / "embeddings" / "reason" / "embeddings.parquet")
                           .column("vector").to_pylist())
    assert ctrl_vecs.shape == vecs.shape and not np.allclose(ctrl_vecs, vecs, atol=1e-3)
    # ...and it needs no trained fold: in a folder that never ran GRPO it makes the same table
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("prepared", "srs_pretrain"):
        shutil.copytree(tmp_path / name, bare / name)
    run_reason(_cfg(bare, json_tiny, "reason.embedder.reasoning=false"))
    assert not (bare / "reason" / "fold0").exists()
    bare_vecs = np.asarray(pq.read_table(bare / "embeddings" / "reason" / "embeddings.parquet").column("vector").to_pylist())
    np.testing.assert_allclose(bare_vecs, ctrl_vecs, atol=1e-5)
    # what the fold policies are keyed by: embedder settings are not in it, every other reason.* setting is; the
    # stage keeps the fold folders when it starts over, and a fold of other inputs is trained again
    store = store_for(cfg)
    assert fold_inputs(control, store, 0) == fold_inputs(cfg, store, 0) != fold_inputs(
        _cfg(tmp_path, json_tiny, "reason.lr=0.002"), store, 0)
    assert stages(control)[0].keep == ("fold0", "fold1")


def test_killed_rollout_worker_loses_no_step(local_ray, tmp_path, json_tiny):
    cfg = _cfg(tmp_path, json_tiny, "reason.embedder.epochs=1")
    killed = []

    def kill_once(k, step, ctl):
        if (k, step) == (0, 1) and not killed:
            ray.kill(ctl.rollout_workers[0])  # no restart: the controller must recreate it
            killed.append(step)

    res = run_reason(cfg, fresh=True, hooks={"after_step": kill_once})
    assert killed == [1] and res["restarts"]["rollout"] >= 1
    assert [r["step"] for r in _rows(tmp_path, 0)] == [1, 2, 3] == [r["step"] for r in _rows(tmp_path, 1)]


def test_collective_sync_pushes_every_version(local_ray, tmp_path, json_tiny):
    cfg = _cfg(tmp_path, json_tiny, "reason.weight_sync=collective", "reason.sync_timeout_s=120",
               "reason.steps_per_fold=2", "reason.folds=2")
    seen = []

    def check(k, step, ctl):
        seen.append((k, step, ray.get([w.weights_key.remote() for w in ctl.rollout_workers])))

    run_reason(cfg, fresh=True, hooks={"after_step": check})
    assert seen == [(0, 1, [weight_key(0, 1)]), (0, 2, [weight_key(0, 2)]),
                    (1, 1, [weight_key(1, 1)]), (1, 2, [weight_key(1, 2)])]


def _worker_outputs(engine: str, json_tiny: str, prompts: list[str]):
    """Replies of one rollout worker before and after a new adapter version reaches it (object store)."""
    from reaemb_ray.reasoning.policy import build_policy, lora_state

    lora = load_config(None, []).reason.lora
    sampling = {"temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.1, "max_new_tokens": 48}
    w = ReasonRolloutWorker.options(num_cpus=1).remote(0, json_tiny, engine, lora, sampling, 512, "float32", "lora", 0,
                                                       PREFIX)
    try:
        base = ray.get(w.generate.remote(prompts, 4, 7, [], 0))
        again = ray.get(w.generate.remote(prompts, 4, 7, [], 0))
        model, _ = build_policy(json_tiny, lora)
        state = lora_state(model)
        rng = np.random.default_rng(0)
        moved = {k: v + (rng.normal(0, 0.3, v.shape).astype(np.float32) if "lora_B" in k else 0) for k, v in state.items()}
        new = ray.get(w.generate.remote(prompts, 4, 7, [ray.put(moved)], weight_key(0, 1)))
        key = ray.get(w.weights_key.remote())
    finally:
        ray.kill(w)
    return base, again, new, key


@pytest.mark.vllm
def test_torch_and_vllm_engines_reply_in_json_and_receive_weights(local_ray, tmp_path, json_tiny):
    from reaemb_ray.reasoning.policy import load_tokenizer
    from reaemb_ray.reasoning.prompts import chat_prompt, user_message
    from reaemb_ray.reasoning.tasks import load_task_data, training_examples

    data = load_task_data(write_rated_prepared(tmp_path / "prepared"), "rating")
    tok = load_tokenizer(json_tiny)
    ex = training_examples(data, np.zeros(data.num_items + 1, bool), 2, 0.3, seed=11)[:6]
    prompts = [chat_prompt(tok, user_message("rating", data.texts[e.item_id],
                                             [(data.texts[i], r) for i, r in e.history], "movie", data.scale)) + PREFIX
               for e in ex]
    shares = {}
    for engine in ("torch", "vllm"):
        base, again, new, key = _worker_outputs(engine, json_tiny, prompts)
        shares[engine] = np.mean([parse_response(t).valid for row in base["texts"] for t in row])
        assert base["completions"] == again["completions"]  # seeded: the same batch samples the same replies
        assert new["completions"] != base["completions"] and key == weight_key(0, 1)  # the new version generates
        assert new["version"] == 1 and base["version"] == 0
    print(f"format-valid share on the same {len(prompts)} prompts x 4: {shares}")
    assert shares["torch"] >= 0.75 and shares["vllm"] >= 0.75
