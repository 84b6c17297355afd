"""`reaemb reason`: the explicit-reasoning mode (RecCoT) -- rollout workers generate JSON reasons (vLLM or HF),
reward workers score them, a DeepSpeed learner trains the generator's LoRA with token-level GRPO; then the
out-of-fold reasoning of every item is generated and cached, a small LM embeds item text + reasoning aligned to
the pretrained ID-SASRec (the `srs_pretrain` stage), and the table is exported to
`embeddings/reason/embeddings.parquet` (`layout.embeddings_table("reason")`).

Per fold k (reason.folds): a fresh learner trains on examples that avoid fold k's items; rollouts for the next
batches run while the learner trains (bounded by reason.queue_size and reason.max_staleness); a dead rollout or
reward worker is recreated and its batch re-issued with the same seed, so every learner step happens exactly
once. Checkpoints (DeepSpeed state + data position) every reason.checkpoint_every steps into
`reason/fold<k>/checkpoints/step_N` (named by `latest.json`); `reason/fold<k>/done.json` and the final adapter
when the fold is trained; the reasoning of fold k's items is written in shards tagged with the model version
(fold, weight version, adapter hash), so a resumed attempt keeps every finished shard of the same model.

Everything goes through the output store (`reaemb_ray.storage`), so the stage runs with a URI `output_dir` on a
cluster without a shared disk: actors resolve the backbone on their own node and the learner writes its
checkpoints to the store. The stage's record (`reason/_record.json`) says when it is done; these files only let
an interrupted attempt with the same inputs resume.
"""
from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reaemb_ray import layout, metrics
from reaemb_ray.records import changed_fields
from reaemb_ray.fit import group
from reaemb_ray.runtime import check_fits, gpu_options
from reaemb_ray.stages.base import Stage
from reaemb_ray.storage import Store, store_for

log = logging.getLogger(__name__)
KINDS = ("format", "accuracy", "analysis")
DONE, LATEST, FOLD_INPUTS = "done.json", "latest.json", "inputs.json"


def _fold(k: int, *parts: str) -> str:
    return layout.join(layout.REASON, f"fold{k}", *parts)


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    return buf.getvalue().to_pybytes()


def _read_parquet(store: Store, rel: str) -> pa.Table:
    return pq.read_table(pa.BufferReader(store.read_bytes(rel)))


def fold_inputs(cfg, store: Store, k: int) -> dict:
    """What fold k's policy and its reasoning depend on: the prepared data (its record) and every reason.* setting
    but the embedder's. The stage keeps fold folders when it starts over (`keep`), so changing only
    reason.embedder.* re-embeds without training the policies again; anything else trains them again."""
    settings = {key: v for key, v in changed_fields(cfg.reason).items() if key != "embedder"}
    record = layout.record("prepare")
    return {"fold": k, "prepared": store.read_json(record)["run_id"] if store.exists(record) else None,
            "reason": json.loads(json.dumps(settings, default=str)),
            "data": {"noun": cfg.data.noun, "tail_threshold": cfg.data.tail_threshold}}


def adapter_hash(state: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(np.ascontiguousarray(state[k], dtype=np.float32).tobytes())
    return h.hexdigest()[:12]


class ReasonController:
    def __init__(self, cfg, fresh: bool = False, hooks: dict | None = None):
        import ray

        from reaemb_ray.model.backbone import resolve_backbone_name
        from reaemb_ray.reasoning.policy import load_tokenizer
        from reaemb_ray.reasoning.tasks import item_folds, load_task_data, resolve_task

        self._ray, self.cfg, r = ray, cfg, cfg.reason
        self.hooks = hooks or {}
        self.store = store_for(cfg)
        if fresh:
            self.store.delete(layout.REASON)
        prepared = self.store.fetch(layout.PREPARED)
        self.task = resolve_task(r.task, prepared)
        self.data = load_task_data(prepared, self.task, cfg.data.tail_threshold)
        self.model_path = resolve_backbone_name(r.backbone, cfg.data.cache_dir)  # this node's copy: the tokenizer
        self.tok = load_tokenizer(self.model_path)
        self.folds = item_folds(self.data.num_items, r.folds, r.seed)
        self.prompt_limit = r.max_model_len - max(r.max_new_tokens, r.final_max_new_tokens)
        check_fits({"the reasoning learner": group(1, r.learner_resources),
                    f"{r.num_rollout_workers} rollout workers": group(r.num_rollout_workers, r.rollout_resources),
                    f"{r.num_reward_workers} reward workers": group(r.num_reward_workers, r.reward_resources)},
                   cfg.ray.wait_for_nodes_s)
        from actors.reason_learner import ReasonLearnerActor
        from actors.reason_reward import ReasonRewardWorker
        from actors.reason_rollout import ReasonRolloutWorker

        self.Learner, self.Rollout, self.Reward = ReasonLearnerActor, ReasonRolloutWorker, ReasonRewardWorker
        self.rollout_workers = [self._new_rollout(i) for i in range(r.num_rollout_workers)]
        self.reward_workers = [self._new_reward(i) for i in range(r.num_reward_workers)]
        self.restarts = {"rollout": 0, "reward": 0}
        self.generation = 0  # of the collective weight group
        self.collective = r.weight_sync == "collective"
        self.timings = {"generate_s": 0.0, "generated_tokens": 0, "reward_s": 0.0, "learner_s": 0.0,
                        "sync_s": 0.0, "final_generate_s": 0.0, "final_tokens": 0}

    # ------------------------------------------------------------------------------------------ actors

    def _new_rollout(self, i: int):
        r = self.cfg.reason
        sampling = {"temperature": r.temperature, "top_p": r.top_p, "repetition_penalty": r.repetition_penalty,
                    "max_new_tokens": r.max_new_tokens}
        return self.Rollout.options(num_cpus=r.rollout_resources.num_cpus,
                                    **gpu_options(r.rollout_resources.num_gpus, self.cfg.ray)).remote(
            i, r.backbone, r.engine, r.lora, sampling, r.max_model_len, r.dtype, r.weight_format, r.seed,
            r.reply_prefix, self.cfg.data.cache_dir)

    def _new_reward(self, i: int):
        r = self.cfg.reason
        return self.Reward.options(num_cpus=r.reward_resources.num_cpus,
                                  **gpu_options(r.reward_resources.num_gpus, self.cfg.ray)).remote(
            i, dict(r.reward_weights))

    def _replace(self, role: str, i: int) -> None:
        pool = self.rollout_workers if role == "rollout" else self.reward_workers
        self.restarts[role] += 1
        if self.restarts[role] > self.cfg.reason.max_restarts * len(pool):
            raise RuntimeError(f"reasoning {role} workers died more than reason.max_restarts times per worker")
        self._ray.kill(pool[i], no_restart=True)
        pool[i] = self._new_rollout(i) if role == "rollout" else self._new_reward(i)
        metrics.get("reaemb_actor_restarts_total").inc(1, tags={"role": f"reason_{role}"})
        log.warning("reasoning %s worker %d died; recreated it and re-issued its work", role, i)

    def _dead(self, ref) -> bool:
        ray = self._ray
        try:
            ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError):
            return True
        return False

    # ------------------------------------------------------------------------------------------ prompts

    def prompt(self, e) -> str:
        """The chat prompt of an example + the reply prefix; the oldest history items are dropped until it fits."""
        from reaemb_ray.reasoning.prompts import chat_prompt, user_message

        history = [(self.data.texts[i], r) for i, r in e.history]
        while True:
            text = chat_prompt(self.tok, user_message(self.task, self.data.texts[e.item_id], history,
                                                      self.cfg.data.noun, self.data.scale)) + self.cfg.reason.reply_prefix
            if len(self.tok(text, add_special_tokens=False)["input_ids"]) <= self.prompt_limit or not history:
                return text
            history = history[1:]

    def reward_context(self, examples):
        from reaemb_ray.reasoning.rewards import RewardContext
        from reaemb_ray.reasoning.tasks import class_prob

        r = self.cfg.reason
        return RewardContext(self.task, class_prob(examples), self.data.scale, r.penalty_over, r.penalty_under)

    # ------------------------------------------------------------------------------ collective weight sync

    def _form_group(self, learner) -> None:
        ray, r = self._ray, self.cfg.reason
        self.generation += 1
        world = len(self.rollout_workers) + 1
        gpu = r.learner_resources.num_gpus > 0 and r.rollout_resources.num_gpus > 0 and not self.cfg.ray.gpu_stand_in
        host, port = ray.get(learner.open_weight_group.remote(world, self.generation, r.sync_timeout_s))
        ray.get([learner.join_weight_group.remote(gpu)] +
                [w.join_weight_group.remote(host, port, i + 1, world, self.generation, r.sync_timeout_s, gpu)
                 for i, w in enumerate(self.rollout_workers)])

    def _broadcast(self, learner, key: int) -> float:
        """Push the learner's adapter to every rollout worker; a dead worker is replaced and the group re-formed."""
        ray = self._ray
        shapes = ray.get(learner.shapes.remote())
        while True:
            refs = [learner.broadcast_weights.remote()] + [w.receive_weights.remote(shapes, key)
                                                           for w in self.rollout_workers]
            ray.wait(refs, num_returns=len(refs))
            dead = [i for i, ref in enumerate(refs[1:]) if self._dead_or_timed_out(ref) == "dead"]
            if not dead:
                return ray.get(refs[0])
            for i in dead:
                self._replace("rollout", i)
            self._form_group(learner)

    def _dead_or_timed_out(self, ref) -> str:
        ray = self._ray
        try:
            ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError):
            return "dead"
        except ray.exceptions.RayTaskError:
            return "timed out"  # a live member that waited for a dead one
        return "ok"

    # ------------------------------------------------------------------------------------------ training

    def train_fold(self, k: int) -> dict:
        """Train fold k's policy (or find it done); returns {"state": LoRA state, "version", "steps"}."""
        from safetensors.numpy import load_file
        from tqdm import tqdm

        from actors.reason_rollout import weight_key
        from reaemb_ray.reasoning.policy import write_adapter
        from reaemb_ray.reasoning.tasks import training_examples

        ray, r, store = self._ray, self.cfg.reason, self.store
        done, inputs = _fold(k, DONE), fold_inputs(self.cfg, store, k)
        known = store.read_json(_fold(k, FOLD_INPUTS)) if store.exists(_fold(k, FOLD_INPUTS)) else None
        if known != inputs and store.listdir(_fold(k)):  # other inputs, or a fold that does not say
            log.info("reason fold %d: trained on other inputs; training it again", k)
            store.delete(_fold(k))
        if store.exists(done):
            rec = store.read_json(done)
            log.info("reason fold %d: trained already (%d steps), reusing it", k, rec["steps"])
            return dict(rec, state=load_file(str(store.fetch(_fold(k, "adapter", "adapter_model.safetensors")))))
        store.write_json(_fold(k, FOLD_INPUTS), inputs)
        examples = training_examples(self.data, self.folds == k, r.history_items, r.no_history_share, r.seed + k)
        ctx = self.reward_context(examples)
        total = min(r.steps_per_fold, len(examples) // r.prompts_per_batch)
        if total < 1:
            raise ValueError(f"reason fold {k}: {len(examples)} training examples, fewer than one batch of "
                             f"reason.prompts_per_batch={r.prompts_per_batch}")
        batches = [examples[i * r.prompts_per_batch:(i + 1) * r.prompts_per_batch] for i in range(total)]
        res = r.learner_resources
        learner = self.Learner.options(num_cpus=res.num_cpus, **gpu_options(res.num_gpus, self.cfg.ray)).remote(
            r.backbone, r, total, self.cfg.data.cache_dir)
        step = version = 0
        latest = _fold(k, layout.CRRL_CHECKPOINTS, LATEST)
        if store.exists(latest):
            pointer = store.read_json(latest)
            ray.get(learner.load.remote(store, pointer["checkpoint"]))
            step, version = pointer["step"], pointer["version"]
            print(f"reason fold {k}: resuming from step {step}")
        rows = [x for x in self.fold_rows(k) if x["step"] <= step]  # later rows are recomputed
        if self.collective:
            weights_box = []
            self._form_group(learner)
            self.timings["sync_s"] += self._broadcast(learner, weight_key(k, version))
        else:
            weights_box = [learner.weights.remote()]

        def issue(i: int, b: int):
            seed = r.seed * 1_000_003 + 7919 * k + b  # the same batch samples the same replies when re-issued
            return self.rollout_workers[i].generate.remote([self.prompt(e) for e in batches[b]], r.group_size, seed,
                                                           weights_box, weight_key(k, version))

        rollouts: dict = {}  # ref -> (batch, worker index, worker)
        scoring: dict = {}  # ref -> (batch, rollout ref, reward worker index)
        ready: dict = {}  # batch -> (rollout ref, scores ref)
        busy: set[int] = set()
        learner_job = None
        next_issue, rr = step, 0
        bar = tqdm(total=total, initial=step, desc=f"reason fold {k}", unit="step")
        while step < total:
            while (next_issue < total and len(rollouts) + len(scoring) + len(ready) < r.queue_size
                   and next_issue - step <= r.max_staleness and len(busy) < len(self.rollout_workers)):
                i = min(set(range(len(self.rollout_workers))) - busy)
                rollouts[issue(i, next_issue)] = (next_issue, i, self.rollout_workers[i])
                busy.add(i)
                next_issue += 1
            if learner_job is None and step in ready:
                ro_ref, sc_ref = ready.pop(step)
                learner_job = (*learner.step.remote(ro_ref, sc_ref), ro_ref, sc_ref)
            waiting = list(rollouts) + list(scoring) + ([learner_job[0]] if learner_job else [])
            done_refs, _ = ray.wait(waiting, num_returns=1, timeout=60)
            for ref in done_refs:
                if ref in rollouts:
                    b, i, actor = rollouts.pop(ref)
                    busy.discard(i)
                    if self._dead(ref):
                        if self.rollout_workers[i] is actor:
                            self._replace("rollout", i)
                            if self.collective:
                                self._form_group(learner)
                                self.timings["sync_s"] += self._broadcast(learner, weight_key(k, version))
                        rollouts[issue(i, b)] = (b, i, self.rollout_workers[i])
                        busy.add(i)
                        continue
                    head = ray.get(ref)
                    self.timings["generate_s"] += head["seconds"]
                    self.timings["generated_tokens"] += head["tokens"]
                    self.timings["sync_s"] += head["sync_seconds"]
                    j = rr % len(self.reward_workers)
                    rr += 1
                    truths = [e.truth for e in batches[b]]
                    scoring[self.reward_workers[j].score.remote(ref, truths, ctx)] = (b, ref, j)
                elif ref in scoring:
                    b, ro_ref, j = scoring.pop(ref)
                    if self._dead(ref):
                        self._replace("reward", j)
                        truths = [e.truth for e in batches[b]]
                        scoring[self.reward_workers[j].score.remote(ro_ref, truths, ctx)] = (b, ro_ref, j)
                        continue
                    ready[b] = (ro_ref, ref)
                else:
                    m_ref, w_ref, ro_ref, sc_ref = learner_job
                    learner_job = None
                    m = ray.get(m_ref)
                    step, version = m["step"], m["version"]
                    self.timings["learner_s"] += m["seconds"]
                    if self.collective:
                        self.timings["sync_s"] += self._broadcast(learner, weight_key(k, version))
                    else:
                        weights_box[:] = [w_ref]
                    head, scores = ray.get([ro_ref, sc_ref])
                    rows.append(self._record(k, m, scores, head, bar))
                    store.write_bytes(_fold(k, layout.METRICS), "".join(json.dumps(x) + "\n" for x in rows).encode())
                    if step % r.checkpoint_every == 0 or step == total:
                        self._checkpoint(learner, k, step, version, total)
                    if "after_step" in self.hooks:
                        self.hooks["after_step"](k, step, self)
        bar.close()
        state = ray.get(learner.weights.remote())
        ray.kill(learner, no_restart=True)
        with tempfile.TemporaryDirectory(prefix="reaemb-adapter-") as tmp:
            store.put(write_adapter(Path(tmp) / "adapter", r.lora, r.backbone, state), _fold(k, "adapter"))
        rec = {"fold": k, "steps": step, "version": version, "adapter_hash": adapter_hash(state),
               "examples": len(examples), "class_prob": {str(c): p for c, p in ctx.class_prob.items()}}
        store.write_json(done, rec)
        return dict(rec, state=state)

    def _checkpoint(self, learner, k: int, step: int, version: int, total: int) -> None:
        """Learner state into `fold<k>/checkpoints/step_N/`, then `latest.json` naming it, then the older one goes."""
        root = _fold(k, layout.CRRL_CHECKPOINTS)
        rel = layout.join(root, f"step_{step:06d}")
        self._ray.get(learner.save.remote(self.store, rel, {"step": step, "data_position": step}))
        self.store.write_json(layout.join(root, LATEST), {"checkpoint": rel, "step": step, "version": version,
                                                          "total": total})
        for name in self.store.listdir(root):
            if name.startswith("step_") and layout.join(root, name) != rel:
                self.store.delete(layout.join(root, name))

    def fold_rows(self, k: int) -> list[dict]:
        """Fold k's metrics rows so far (one per learner step)."""
        rel = _fold(k, layout.METRICS)
        if not self.store.exists(rel):
            return []
        return [json.loads(x) for x in self.store.read_bytes(rel).decode().splitlines()]

    def _record(self, k: int, m: dict, scores: dict, head: dict, bar) -> dict:
        total = np.asarray(scores["total"])
        row = {"fold": k, **{key: m[key] for key in ("step", "version", "loss", "clip_fraction", "kl_behaviour",
                                                     "kl_ref", "staleness", "lr", "seconds", "tokens")},
               "reward_mean": float(total.mean()), "reward_std": float(total.std()),
               "valid_share": scores["valid_share"], "answered_share": scores["answered_share"],
               "accuracy_base": scores["accuracy_base"], "abs_error": scores["abs_error"],
               "gen_tokens_per_s": head["tokens"] / max(head["seconds"], 1e-9)}
        for kind in KINDS:
            part = np.asarray(scores["parts"][kind])
            row[f"{kind}_mean"], row[f"{kind}_std"] = float(part.mean()), float(part.std())
            metrics.get("reaemb_reason_reward_mean").set(row[f"{kind}_mean"], tags={"kind": kind})
            metrics.get("reaemb_reason_reward_std").set(row[f"{kind}_std"], tags={"kind": kind})
        metrics.get("reaemb_reason_reward_mean").set(row["reward_mean"], tags={"kind": "total"})
        metrics.get("reaemb_reason_reward_std").set(row["reward_std"], tags={"kind": "total"})
        metrics.get("reaemb_reason_format_valid_share").set(row["valid_share"])
        metrics.get("reaemb_reason_kl").set(row["kl_behaviour"], tags={"to": "behaviour"})
        if row["kl_ref"] is not None:
            metrics.get("reaemb_reason_kl").set(row["kl_ref"], tags={"to": "reference"})
        metrics.get("reaemb_loss").set(row["loss"], tags={"stage": "reason"})
        metrics.get("reaemb_weight_version").set(row["version"])
        bar.set_postfix(valid=f"{row['valid_share']:.2f}", acc=f"{row['accuracy_base']:.3f}",
                        tok_s=f"{row['gen_tokens_per_s']:.0f}")
        bar.update(1)
        return row

    # ------------------------------------------------------------------------------- final reasoning

    def reason_fold(self, k: int, trained: dict) -> list[dict]:
        """Fold k's items reasoned about by fold k's policy (never trained on them), cached in shards."""
        from tqdm import tqdm

        from actors.reason_rollout import weight_key
        from reaemb_ray.reasoning.prompts import answer_value, parse_response
        from reaemb_ray.reasoning.tasks import item_examples

        ray, r, store = self._ray, self.cfg.reason, self.store
        version = f"fold{k}-v{trained['version']}-{trained['adapter_hash']}"
        shard = lambda c: _fold(k, "reasons", f"{c:05d}.parquet")  # noqa: E731
        examples = item_examples(self.data, np.flatnonzero(self.folds == k))
        chunks = [examples[i:i + r.final_batch_size] for i in range(0, len(examples), r.final_batch_size)]
        written = set(store.listdir(_fold(k, "reasons")))
        todo = []
        for c in range(len(chunks)):
            if shard(c).rsplit("/", 1)[1] in written:
                meta = pq.read_schema(pa.BufferReader(store.read_bytes(shard(c)))).metadata or {}
                if meta.get(b"model_version", b"").decode() == version:
                    continue
            todo.append(c)
        box = [ray.put(trained["state"])]
        key = weight_key(k, trained["version"])

        def issue(i: int, c: int):
            prompts = [self.prompt(e) for e in chunks[c]]
            seed = r.seed * 1_000_003 + 104729 * (k + 1) + c
            return self.rollout_workers[i].generate.remote(prompts, 1, seed, box, key, r.final_max_new_tokens)

        pending: dict = {}
        bar = tqdm(total=len(chunks), initial=len(chunks) - len(todo), desc=f"reason fold {k} items", unit="shard")
        while todo or pending:
            free = set(range(len(self.rollout_workers))) - {i for _, i, _ in pending.values()}
            while todo and free:
                i = min(free)
                free.discard(i)
                c = todo.pop(0)
                pending[issue(i, c)] = (c, i, self.rollout_workers[i])
            done_refs, _ = ray.wait(list(pending), num_returns=1)
            for ref in done_refs:
                c, i, actor = pending.pop(ref)
                if self._dead(ref):
                    if self.rollout_workers[i] is actor:
                        self._replace("rollout", i)
                    todo.insert(0, c)
                    continue
                out = ray.get(ref)
                self.timings["final_generate_s"] += out["seconds"]
                self.timings["final_tokens"] += out["tokens"]
                rows = []
                for e, texts in zip(chunks[c], out["texts"]):
                    p = parse_response(texts[0])
                    rows.append({"item_id": e.item_id, "fold": k, "text": texts[0], "valid": p.valid, "think": p.think,
                                 "answer": None if p.answer is None else json.dumps(p.answer),
                                 "answer_value": answer_value(self.task, p.answer) if p.valid else None,
                                 "truth": e.truth})
                table = pa.Table.from_pylist(rows).replace_schema_metadata({"model_version": version})
                store.write_bytes(shard(c), _parquet_bytes(table))  # atomic: a shard is either whole or absent
                bar.update(1)
        bar.close()
        return pa.concat_tables([_read_parquet(store, shard(c)) for c in range(len(chunks))]).to_pylist() if chunks else []

    # ------------------------------------------------------------------------------------ embedding

    def embed(self, reasons: list[dict]) -> dict:
        """Align the small LM with the ID-SASRec table on item text + reasoning; export the table."""
        from reaemb_ray.reasoning.embedder import embed_input

        by_item = {x["item_id"]: x for x in reasons}
        missing = [i for i in range(1, self.data.num_items + 1) if i not in by_item]
        if missing:
            raise ValueError(f"reasoning missing for {len(missing)} items (e.g. {missing[:5]}); rerun `reaemb reason`")
        texts = [embed_input(self.data.texts[i], by_item[i]["think"] if by_item[i]["valid"] else by_item[i]["text"])
                 for i in range(1, self.data.num_items + 1)]
        return embed_table(self.cfg, self.store, texts)

    # ------------------------------------------------------------------------------------------ run

    def run(self) -> dict:
        from reaemb_ray.reasoning.report import pick_samples, plot_curves, samples_markdown

        r, store = self.cfg.reason, self.store
        t0 = time.perf_counter()
        reasons, rows = [], {}
        for k in range(r.folds):
            trained = self.train_fold(k)
            rows[k] = self.fold_rows(k)
            reasons += self.reason_fold(k, trained)
        if any(rows.values()):
            with tempfile.TemporaryDirectory() as tmp:
                plot_curves(rows, Path(tmp) / "reason_curves.png")
                store.put(Path(tmp) / "reason_curves.png", layout.join(layout.REASON, "reason_curves.png"))
        for x in reasons:
            x["item_text"] = self.data.texts[x["item_id"]]
        samples = pick_samples(reasons, r.samples_in_report, r.seed)
        store.write_json(layout.reason_samples(), {"task": self.task, "samples": samples})
        store.write_bytes(layout.join(layout.REASON, "samples.md"), samples_markdown(samples, self.task).encode())
        self.shutdown()  # generation is over: the embedder task gets the rollout workers' CPUs/GPUs
        emb = self.embed(reasons)
        answered = [x for x in reasons if x["answer_value"] is not None and x["truth"] is not None]
        summary = {
            "task": self.task, "items": len(reasons), "folds": r.folds, "engine": r.engine,
            "final_valid_share": float(np.mean([x["valid"] for x in reasons])) if reasons else 0.0,
            "final_answered_share": len(answered) / max(1, len(reasons)),
            "final_abs_error": float(np.mean([abs(x["answer_value"] - x["truth"]) for x in answered])) if answered else None,
            "embedder": {k: emb[k] for k in ("history", "retrieval_top1", "dim", "table") if k in emb},
            "timings": dict(self.timings, wall_s=time.perf_counter() - t0,
                            gen_tokens_per_s=self.timings["generated_tokens"] / max(self.timings["generate_s"], 1e-9),
                            final_tokens_per_s=self.timings["final_tokens"] / max(self.timings["final_generate_s"], 1e-9)),
            "restarts": dict(self.restarts)}
        store.write_bytes(layout.join(layout.REASON, "summary.json"),
                          json.dumps(summary, indent=2, default=float).encode())
        return dict(summary, rows=rows)

    def shutdown(self) -> None:
        for a in [*self.rollout_workers, *self.reward_workers]:
            self._ray.kill(a, no_restart=True)
        self.rollout_workers, self.reward_workers = [], []


def embed_table(cfg, store: Store, texts: list[str]) -> dict:
    """Align the small LM with the pretrained ID-SASRec table on `texts` (item i's at position i - 1), embed every
    item and write `embeddings/reason/embeddings.parquet`; kept when the texts, settings and table are the same."""
    import ray

    from actors.reason_embedder import train_and_embed
    from reaemb_ray.srs.pretrain import load_item_table
    from reaemb_ray.stages.export import table_bytes

    e = cfg.reason.embedder
    table = load_item_table(store.fetch(layout.SRS_PRETRAIN))[1:len(texts) + 1]
    digest = hashlib.sha256(json.dumps([texts, e.__dict__ | {"lora": e.lora.__dict__}], default=str).encode()
                            + table.tobytes()).hexdigest()[:16]
    done = layout.join(layout.REASON, "embedder", DONE)
    dest = layout.embeddings_table(layout.REASON)
    if store.exists(done) and store.exists(dest) and store.read_json(done).get("inputs") == digest:
        log.info("reason embedder: up to date, reusing %s", store.uri(dest))
        return store.read_json(done)
    check_fits({"the reasoning embedder": group(1, e)}, cfg.ray.wait_for_nodes_s)
    t0 = time.perf_counter()
    res = ray.get(train_and_embed.options(num_cpus=e.num_cpus, **gpu_options(e.num_gpus, cfg.ray)).remote(
        texts, table, e, cfg.reason.seed))
    vec = res["vectors"]
    store.write_bytes(dest, table_bytes(np.arange(1, len(vec) + 1), vec))  # the export stages' table format
    rec = {"inputs": digest, "history": res["history"], "retrieval_top1": res["retrieval_top1"],
           "dim": int(vec.shape[1]), "seconds": time.perf_counter() - t0, "table": store.uri(dest)}
    store.write_json(done, rec)
    return rec


def run_text_only(cfg, fresh: bool = False) -> dict:
    """reason.embedder.reasoning=false: the control row embeds the item text alone, so there is no policy to train
    and no reasoning to generate; only the embedder runs (minutes instead of the GRPO folds' hours)."""
    from reaemb_ray.rl.policy import load_item_texts

    store = store_for(cfg)
    if fresh:
        store.delete(layout.REASON)
    texts = load_item_texts(store.fetch(layout.PREPARED))
    if sorted(texts) != list(range(1, len(texts) + 1)):
        raise ValueError("prepared/items.parquet: item ids are not 1..N; rerun `reaemb prepare`")
    t0 = time.perf_counter()
    emb = embed_table(cfg, store, [texts[i] for i in range(1, len(texts) + 1)])
    summary = {"task": "text_only", "items": len(texts), "folds": 0, "engine": None, "final_valid_share": None,
               "final_answered_share": None, "final_abs_error": None,
               "embedder": {k: emb[k] for k in ("history", "retrieval_top1", "dim", "table") if k in emb},
               "timings": {"wall_s": time.perf_counter() - t0}, "restarts": {}}
    store.write_bytes(layout.join(layout.REASON, "summary.json"), json.dumps(summary, indent=2, default=float).encode())
    return dict(summary, rows={})


def run_reason(cfg, fresh: bool = False, hooks: dict | None = None) -> dict:
    """The explicit-reasoning mode end to end (Ray started or joined here); returns the summary (+ per-fold rows)."""
    from reaemb_ray.runtime import init_ray

    init_ray(cfg.ray)
    if not cfg.reason.embedder.reasoning:
        return run_text_only(cfg, fresh)
    ctl = ReasonController(cfg, fresh=fresh, hooks=hooks)
    try:
        return ctl.run()
    finally:
        ctl.shutdown()


def _work(cfg) -> dict:
    res = run_reason(cfg)
    log.info("reason done: %s", json.dumps({k: v for k, v in res.items() if k != "rows"}, default=float))
    return {k: res[k] for k in ("task", "items", "folds", "final_valid_share", "final_answered_share",
                                "final_abs_error", "restarts")}


def stages(cfg) -> list[Stage]:
    """`reason`: reads the prepared data and the pretrained ID-SASRec (its embedder's alignment target)."""
    data = {k: v for k, v in changed_fields(cfg.data).items() if k in ("noun", "tail_threshold")}
    reads = {"reason": changed_fields(cfg.reason), "data": data}
    folds = tuple(f"fold{k}" for k in range(cfg.reason.folds))  # keyed by their own inputs (fold_inputs)
    return [Stage(layout.REASON, ("prepare", "srs_pretrain"), reads, _work, cfg, keep=folds, command="reason")]
