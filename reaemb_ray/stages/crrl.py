"""Stage 2, CRRL: rollout workers -> reward workers -> DeepSpeed learner, wired by a thin controller.

- `load_inputs`: item texts, reward candidates, the evaluation items and the batch plan (no Ray).
- `ensure_base`: the policy CRRL starts from, a merged generator folder in the store (`<stage>/base`) that
  every rollout worker and the learner fetch into their node's cache.
- `reaemb_ray.rl.schedule.Scheduler` decides which batch goes where (bounded queues and staleness, re-issue
  with the same noise seed after a death, exactly-once learner steps); `Actors` starts, replaces and syncs
  the actors; `Controller.run` turns the scheduler's decisions into actor calls.
Checkpoints (`<stage>/checkpoints/step_NNNNNN/`: learner state + `state.json`, with `latest.json` written
last) go to the store, as do `metrics.jsonl`, the curves and the final generator `<stage>/final`.
"""
from __future__ import annotations

import json
import logging
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reaemb_ray import layout, metrics
from reaemb_ray.records import changed_fields
from reaemb_ray.rl.engines import vllm_memory_share
from reaemb_ray.rl.schedule import Scheduler, plan_batches
from reaemb_ray.fit import group
from reaemb_ray.runtime import check_fits, gpu_options, stop_actors
from reaemb_ray.stages.base import Stage, cfg_with
from reaemb_ray.stages.crrl_pools import ElasticPools
from reaemb_ray.storage import Store, is_uri, store_for

log = logging.getLogger(__name__)
LATEST = "latest.json"


def variant_method(variant: str) -> str:
    """`paper/srs` -> the stage and evaluated method `crrl-paper-srs`."""
    return "crrl-" + variant.replace("/", "-")


# ------------------------------------------------------------------------------------------ inputs


@dataclass
class Inputs:
    texts: dict[int, str]
    cands: dict  # reward source -> Candidates
    eval_ids: np.ndarray
    batches: list[list[int]]


def load_inputs(cfg, prepared: Path, srs_dir: Path | None, neighbours=lambda num_items: None) -> Inputs:
    """Texts, candidates per reward source, the fixed evaluation items and the batches (data order);
    `neighbours(num_items)`: each item's nearest items, the pool of crrl.hard_negatives (None without them)."""
    from reaemb_ray.rl.candidates import cooccurrence_candidates, srs_candidates
    from reaemb_ray.rl.policy import load_cooccurrence, load_item_texts
    from reaemb_ray.rl.rewards import sources_for
    from reaemb_ray.srs.pretrain import load_item_table

    c = cfg.crrl
    texts = load_item_texts(prepared)
    cands = {}
    for source in sources_for(c.reward, c.reward_weights):
        if source == "cooccurrence":
            cands[source] = cooccurrence_candidates(*load_cooccurrence(prepared), num_items=max(texts),
                                                    num_positives=c.num_positives, num_negatives=c.num_negatives,
                                                    seed=c.seed, neighbours=neighbours(max(texts)),
                                                    hard_negatives=c.hard_negatives)
            log.info("co-occurrence candidates for %d items (%d skipped: no co-occurring item)",
                     len(cands[source]), cands[source].skipped)
        else:
            cands[source] = srs_candidates(load_item_table(srs_dir), c.num_positives, c.num_negatives, c.seed)
    items = sorted(set.intersection(*(set(x.item_ids.tolist()) for x in cands.values())))
    if not items:
        raise ValueError("no item has reward candidates; check prepared/cooccurrence.parquet (training split)")
    random.Random(c.seed).shuffle(items)
    if c.max_items:
        items = items[: c.max_items]
    eval_ids = np.asarray(sorted(items[: c.eval_items]), dtype=np.int64)
    return Inputs(texts, cands, eval_ids, plan_batches(items, c.items_per_batch, c.epochs, c.seed, c.max_steps))


def hard_negative_pool(cfg, store: Store, num_items: int) -> np.ndarray | None:
    """Hard-negative pools (crrl.hard_negatives): each item's nearest items (centred cosine) in the LRCL model's
    exported table."""
    if not cfg.crrl.hard_negatives:
        return None
    from reaemb_ray.rl.candidates import nearest_neighbours
    from reaemb_ray.srs.encoders import load_embedding_table

    rel = layout.embeddings_table("lrcl")
    if not store.exists(rel):
        raise FileNotFoundError(f"crrl.hard_negatives needs the LRCL table {store.uri(rel)}; run `reaemb export "
                                "export.method=lrcl` first, or set crrl.hard_negatives=0")
    table = load_embedding_table(store.fetch(rel), num_items)
    return nearest_neighbours(table, 4 * cfg.crrl.num_negatives + 10)  # a pool: co-occurring ones drop out


def base_source(cfg, store: Store) -> Path | None:
    """The generator folder CRRL starts from: LRCL's (default), `crrl.init_from`, or None for the raw backbone."""
    init = cfg.crrl.init_from
    if init == "backbone":
        return None
    if not init:
        return store.fetch(layout.generator("lrcl"))
    return Store(init, cfg.data.cache_dir).fetch() if is_uri(init) else Path(init).expanduser()


def ensure_base(cfg, store: Store, stage: str) -> str:
    """`<stage>/base` in the store (built once, reused when resuming); returns its store path."""
    from reaemb_ray.model.generator import META_FILE
    from reaemb_ray.rl.policy import prepare_base

    rel = layout.join(layout.folder(stage), layout.CRRL_BASE)
    if not store.exists(layout.join(rel, META_FILE)):
        source = base_source(cfg, store)
        if source is not None and not source.exists():
            raise FileNotFoundError(f"crrl.init_from={cfg.crrl.init_from!r}: {source} does not exist; set it to a "
                                    "generator folder, or 'backbone' to start from the raw backbone")
        with store.writing(rel) as out:
            prepare_base(cfg, out, source)
    return rel


# ------------------------------------------------------------------------------------------ actors


class Actors:
    """The learner, rollout and reward workers: start-up, replacement after a death, weight sync."""

    def __init__(self, cfg, store: Store, base_rel: str, inputs: Inputs, total: int):
        import ray

        from actors.learner import LearnerActor

        self.cfg, self.store, self.base_rel, c = cfg, store, base_rel, cfg.crrl
        self.texts_ref, self.cands_ref = ray.put(inputs.texts), ray.put(inputs.cands)
        check_fits({"the learner": group(1, c.learner_resources),
                    f"{c.num_rollout_workers} rollout workers": group(c.num_rollout_workers, c.rollout_resources),
                    f"{c.num_reward_workers} reward workers": group(c.num_reward_workers, c.reward_resources)},
                   cfg.ray.wait_for_nodes_s)
        res = c.learner_resources
        self.learner = LearnerActor.options(num_cpus=res.num_cpus, **gpu_options(res.num_gpus, cfg.ray)).remote(
            store, base_rel, c, total, cfg.model.dtype)
        # worker id -> actor; ids are the scheduler's (elastic pools add and remove workers: stages/crrl_pools.py)
        self.rollout = {i: self._new_rollout(i) for i in range(c.num_rollout_workers)}
        self.reward = {i: self._new_reward(i) for i in range(c.num_reward_workers)}
        self.restarts = {"rollout": 0, "reward": 0}
        self.collective = c.weight_sync == "collective"
        self.generation = 0  # of the collective weight group, bumped whenever it is formed again

    def _new_rollout(self, i: int):
        from actors.rollout import RolloutWorker

        c, r = self.cfg.crrl, self.cfg.crrl.rollout_resources
        return RolloutWorker.options(num_cpus=r.num_cpus, **gpu_options(r.num_gpus, self.cfg.ray)).remote(
            i, self.store, self.base_rel, self.texts_ref, c.engine, c.group_size, c.sigma, c.anchor,
            self.cfg.data.noun, self.cfg.model.max_length, self.cfg.model.dtype,
            vllm_gpu_memory=vllm_memory_share(c.vllm_gpu_memory_utilization, r.num_gpus),
            sigma_relative=c.sigma_relative)

    def _new_reward(self, i: int):
        from actors.reward import RewardWorker

        c, r = self.cfg.crrl, self.cfg.crrl.reward_resources
        return RewardWorker.options(num_cpus=r.num_cpus, **gpu_options(r.num_gpus, self.cfg.ray)).remote(
            i, self.cands_ref, c.reward, c.reward_weights, c.scoring, c.reward_form, c.reward_tau)

    def workers(self, role: str) -> dict:
        return self.rollout if role == "rollout" else self.reward

    def new_worker(self, role: str, i: int):
        return self._new_rollout(i) if role == "rollout" else self._new_reward(i)

    def replace(self, role: str, i: int, regroup: bool = True) -> None:
        import ray

        pool = self.rollout if role == "rollout" else self.reward
        self.restarts[role] += 1
        if self.restarts[role] > self.cfg.crrl.max_restarts * len(pool):
            raise RuntimeError(f"{role} workers died more than crrl.max_restarts times per worker; giving up")
        ray.kill(pool[i], no_restart=True)
        pool[i] = self._new_rollout(i) if role == "rollout" else self._new_reward(i)
        metrics.get("reaemb_actor_restarts_total").inc(1, tags={"role": role})
        log.warning("%s worker %d died; recreated it and re-issued its batch", role, i)
        if role == "rollout" and self.collective and regroup:
            self.form_group()
            self.broadcast(None)

    def form_group(self) -> None:
        """(Re)create the broadcast group: the learner as rank 0, rollout worker i as rank i + 1."""
        import ray

        c = self.cfg.crrl
        self.generation += 1
        world = len(self.rollout) + 1  # ranks: the learner, then the rollout workers by id
        gpu = c.learner_resources.num_gpus > 0 and c.rollout_resources.num_gpus > 0 and not self.cfg.ray.gpu_stand_in
        host, port = ray.get(self.learner.open_weight_group.remote(world, self.generation, c.sync_timeout_s))
        ray.get([self.learner.join_weight_group.remote(gpu)] +
                [w.join_weight_group.remote(host, port, rank, world, self.generation, c.sync_timeout_s, gpu)
                 for rank, w in enumerate(self.rollout.values(), 1)])
        log.info("weight group %d formed: learner + %d rollout workers", self.generation, world - 1)

    def broadcast(self, version: int | None) -> float:
        """Push the learner's weights to every rollout worker; returns the learner's broadcast seconds. A dead
        worker fails the broadcast (the live members time out after crrl.sync_timeout_s): it is replaced, the
        group formed again, and the broadcast repeated."""
        import ray

        if version is None:
            version = ray.get(self.learner.version.remote())
        while True:
            ids = list(self.rollout)
            refs = [self.learner.broadcast_weights.remote()] + [self.rollout[i].receive_weights.remote(version)
                                                                  for i in ids]
            ray.wait(refs, num_returns=len(refs))  # every member finishes: done, died, or timed out
            dead = []
            for i, ref in zip(ids, refs[1:]):
                try:
                    ray.get(ref)
                except ray.exceptions.RayActorError:
                    dead.append(i)
                except ray.exceptions.RayTaskError:
                    pass  # a live member that timed out waiting for a dead one
            if not dead:
                return ray.get(refs[0])  # raises if the broadcast failed for another reason
            for i in dead:
                self.replace("rollout", i, regroup=False)
            self.form_group()

    def shutdown(self) -> None:
        stop_actors([self.learner, *self.rollout.values(), *self.reward.values()])


# -------------------------------------------------------------------------------------- controller


class Controller:
    def __init__(self, cfg, stage: str = "crrl", fresh: bool = False, hooks: dict | None = None):
        import ray

        self.cfg, self.stage, self.hooks = cfg, stage, hooks or {}
        self.store = store_for(cfg)
        self.folder = layout.folder(stage)
        if fresh:
            self.store.delete(self.folder)
        uses_srs = any(s != "cooccurrence" for s in _sources(cfg))
        self.inputs = load_inputs(cfg, self.store.fetch(layout.PREPARED),
                                  self.store.fetch(layout.SRS_PRETRAIN) if uses_srs else None,
                                  lambda n: hard_negative_pool(cfg, self.store, n))
        self.total = len(self.inputs.batches)
        self.base_rel = ensure_base(cfg, self.store, stage)
        self.actors = Actors(cfg, self.store, self.base_rel, self.inputs, self.total)
        step = version = 0
        latest = layout.join(self.folder, layout.CRRL_CHECKPOINTS, LATEST)
        if self.store.exists(latest):
            pointer = self.store.read_json(latest)
            ray.get(self.actors.learner.load.remote(self.store, pointer["checkpoint"]))
            step, version = pointer["step"], pointer["version"]
            log.info("resuming from step %d (weight version %d)", step, version)
            print(f"resuming from step {step}")
            if pointer.get("total") != self.total:
                log.warning("the checkpoint planned %s steps, this config plans %s", pointer.get("total"), self.total)
        self.sched = Scheduler(self.total, len(self.actors.rollout), len(self.actors.reward), cfg.crrl.queue_size,
                               cfg.crrl.max_staleness, step=step, version=version)
        self.pools = ElasticPools(cfg, self.actors, self.sched)
        self.rows = self._past_rows(step)
        self.rolled: dict = {}  # batch -> rollout ref, waiting for a free reward worker
        self.handled_by: dict = {}  # batch -> {"rollout_worker": id, "reward_worker": id}, for its metrics row
        self.ready: dict = {}  # batch -> (rollout ref, reward ref), scored and waiting for the learner
        if self.actors.collective:
            self.weights_box = []  # nothing to fetch: the learner pushes
            self.actors.form_group()
            self.actors.broadcast(version)
        else:
            self.weights_box = [self.actors.learner.weights.remote()]  # boxed: workers fetch only when older

    @property
    def step(self) -> int:
        return self.sched.step

    @property
    def version(self) -> int:
        return self.sched.version

    def _past_rows(self, step: int) -> list[dict]:
        """Metrics rows of the run being resumed, up to its checkpoint (later rows are recomputed)."""
        rel = layout.join(self.folder, layout.METRICS)
        if not step or not self.store.exists(rel):
            return []
        rows = [json.loads(x) for x in self.store.read_bytes(rel).decode().splitlines()]
        return [r for r in rows if r["step"] <= step]

    # -------------------------------------------------------------------------------------- eval

    def evaluate(self) -> float | None:
        """Mean noise-free reward of the fixed evaluation items under the current weights."""
        import ray

        ids = self.inputs.eval_ids
        if not len(ids):
            return None
        cand = {s: c.lookup(ids)[0] for s, c in self.inputs.cands.items()}
        w = next(iter(self.actors.rollout.values()))
        emb = w.noise_free.remote(ids, self.weights_box, self.version)
        cand_emb = {s: w.noise_free.remote(c.reshape(-1), self.weights_box, self.version) for s, c in cand.items()}
        cand_emb = {s: ray.get(r).reshape(*cand[s].shape, -1) for s, r in cand_emb.items()}
        scorer = next(iter(self.actors.reward.values()))
        return float(np.mean(ray.get(scorer.score_noise_free.remote(ids, ray.get(emb), cand_emb))))

    # -------------------------------------------------------------------------------------- loop

    def _issue(self, batch: int, worker: int):
        ids = np.asarray(self.inputs.batches[batch], dtype=np.int64)
        cand_ids = {s: c.lookup(ids)[0] for s, c in self.inputs.cands.items()}
        seed = self.cfg.crrl.seed * 1_000_003 + batch  # same batch, same noise (also when re-issued)
        return self.actors.rollout[worker].rollout.remote(ids, cand_ids, seed, self.weights_box, self.version)

    def run(self) -> dict:
        import ray
        from tqdm import tqdm

        c, sched, actors = self.cfg.crrl, self.sched, self.actors
        t_start = time.perf_counter()
        timings = {"rollout_s": 0.0, "reward_s": 0.0, "learner_s": 0.0, "sync_s": 0.0, "learner_wait_s": 0.0,
                   "embeddings": 0}
        if sched.step == 0 and (ev := self.evaluate()) is not None:
            self.rows.append({"step": 0, "eval_reward": ev})
            metrics.get("reaemb_eval_reward").set(ev)
        pending: dict = {}  # object ref -> ("rollout", batch, worker handle) | ("reward", batch, rollout ref)
        learner_job = None  # (metrics ref, weights ref)
        bar = tqdm(total=self.total, initial=sched.step, desc=self.stage, unit="step")
        idle_since = time.perf_counter()
        while not sched.done:
            self.pools.update()  # workers that came up join, retired ones that hold no batch go
            for batch, worker in sched.issue():
                pending[self._issue(batch, worker)] = ("rollout", batch, actors.rollout[worker])
                self.handled_by[batch] = {"rollout_worker": worker}
            for batch, worker in sched.score():
                self.handled_by[batch]["reward_worker"] = worker
                rolled = self.rolled.pop(batch)
                pending[actors.reward[worker].score.remote(rolled)] = ("reward", batch, rolled)
            if learner_job is None and (batch := sched.to_learn()) is not None:
                learner_job = actors.learner.step.remote(*self.ready.pop(batch))
                timings["learner_wait_s"] += time.perf_counter() - idle_since
            self.pools.resize()  # what waits now waits for a worker
            for queue, depth in sched.depths().items():
                metrics.get("reaemb_queue_depth").set(depth, tags={"queue": queue})
            waiting = list(pending) + ([learner_job[0]] if learner_job else []) + self.pools.ready_refs()
            done, _ = ray.wait(waiting, num_returns=1, timeout=self.pools.wait_s)
            for ref in done:
                if ref in pending:
                    self._on_result(ref, pending, timings)
                    continue
                if learner_job is None or ref != learner_job[0]:
                    continue  # a new worker is up: the next pools.update lets it join
                m = ray.get(learner_job[0])
                self.weights_box = [] if actors.collective else [learner_job[1]]
                learner_job, idle_since = None, time.perf_counter()
                sched.learned(m["step"], m["version"])
                timings["learner_s"] += m["seconds"]
                timings["sync_s"] += m["publish_seconds"] + (actors.broadcast(sched.version) if actors.collective else 0)
                self._record(m, bar)
                if sched.step % c.checkpoint_every == 0 or sched.done:
                    self.checkpoint()
                if "after_step" in self.hooks:
                    self.hooks["after_step"](sched.step, self)
        bar.close()
        self._finish()
        evals = [r["eval_reward"] for r in self.rows if r.get("eval_reward") is not None]
        return dict(timings, steps=sched.step, version=sched.version, wall_s=time.perf_counter() - t_start,
                    restarts=dict(actors.restarts), eval_rewards=evals, rows=self.rows, pool_changes=self.pools.changes,
                    embeddings_per_s=timings["embeddings"] / max(timings["rollout_s"], 1e-9))

    def _on_result(self, ref, pending: dict, timings: dict) -> None:
        """A rollout or reward task finished (or its actor died): hand the batch on, or re-issue it."""
        import ray

        kind, batch, extra = pending.pop(ref)
        sched, actors = self.sched, self.actors
        dead = (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError)
        if kind == "rollout":
            try:
                head = ray.get(ref)
            except dead:
                worker = sched.rollout_failed(batch)
                if actors.rollout[worker] is extra:  # not yet replaced (by a failed broadcast)
                    actors.replace("rollout", worker)
                pending[self._issue(batch, worker)] = ("rollout", batch, actors.rollout[worker])
                return
            timings["rollout_s"] += head["seconds"]
            timings["sync_s"] += head["sync_seconds"]
            timings["embeddings"] += head["emb"].shape[0] * head["emb"].shape[1]
            sched.rollout_done(batch)
            self.rolled[batch] = ref  # scored when a reward worker is free (sched.score)
            return
        t0 = time.perf_counter()
        try:
            ray.get(ref)
        except dead:
            j = sched.reward_failed(batch)
            actors.replace("reward", j)
            pending[actors.reward[j].score.remote(extra)] = ("reward", batch, extra)
            return
        timings["reward_s"] += time.perf_counter() - t0
        sched.reward_done(batch)
        self.ready[batch] = (extra, ref)

    def _record(self, m: dict, bar) -> None:
        for name in ("reward_mean", "reward_std", "clip_fraction", "staleness"):
            metrics.get(f"reaemb_{name}").set(m[name])
        metrics.get("reaemb_loss").set(m["loss"], tags={"stage": "crrl"})
        metrics.get("reaemb_weight_version").set(m["version"])
        # kl / delta_mu: how far one batch moved the thought; reward_spread: the share of groups whose samples got
        # different rewards (only those carry a learning signal); updates < updates_per_batch: target_kl stopped it
        row = {k: m[k] for k in ("step", "version", "loss", "clip_fraction", "reward_mean", "reward_std",
                                 "reward_spread", "kl", "delta_mu", "updates", "staleness", "lr", "seconds")}
        row.update({f"{pool}_workers": n for pool, n in self.pools.sizes().items()})  # the pools at this step
        row.update(self.handled_by.pop(m["step"] - 1, {}))  # which workers rolled out and scored this batch
        if m["step"] % self.cfg.crrl.eval_every == 0 or m["step"] == self.total:
            row["eval_reward"] = self.evaluate()
            metrics.get("reaemb_eval_reward").set(row["eval_reward"])
        self.rows.append(row)
        bar.set_postfix(reward=f"{m['reward_mean']:.3f}", loss=f"{m['loss']:.3f}")
        bar.update(1)

    def checkpoint(self) -> None:
        """Learner state into `checkpoints/step_N/` and the metrics rows so far, then `latest.json` naming the
        checkpoint, then the older one goes. The rows go first: a run killed right after `latest.json` resumes
        from step N and must find the rows of every step up to N (rows past N are dropped on resume)."""
        import ray

        root = layout.join(self.folder, layout.CRRL_CHECKPOINTS)
        rel = layout.join(root, f"step_{self.step:06d}")
        ray.get(self.actors.learner.save.remote(self.store, rel, {"step": self.step, "data_position": self.step}))
        self._write_metrics()
        self.store.write_json(layout.join(root, LATEST), {"checkpoint": rel, "step": self.step,
                                                          "version": self.version, "total": self.total})
        for name in self.store.listdir(root):
            if name.startswith("step_") and layout.join(root, name) != rel:
                self.store.delete(layout.join(root, name))

    def _write_metrics(self) -> None:
        """`metrics.jsonl`: one row per learner step (the step-0 evaluation stays in the returned rows)."""
        text = "".join(json.dumps(r) + "\n" for r in self.rows if r["step"] > 0)
        self.store.write_bytes(layout.join(self.folder, layout.METRICS), text.encode())

    def _finish(self) -> None:
        """The final generator: the base folder with the trained attention weights."""
        import ray

        from reaemb_ray.model.generator import with_attention

        state = ray.get(self.actors.learner.weights.remote())
        with tempfile.TemporaryDirectory() as tmp:
            final = with_attention(self.store.fetch(self.base_rel), state, Path(tmp) / layout.FINAL,
                                   stage=self.stage, crrl_steps=self.step, weight_version=self.version,
                                   objective=self.cfg.crrl.objective, reward=self.cfg.crrl.reward)
            self.store.delete(layout.generator(self.stage))
            self.store.put(final, layout.generator(self.stage))
            if self.rows:
                _plots(self.rows, Path(tmp) / "crrl_curves.png")
                self.store.put(Path(tmp) / "crrl_curves.png", layout.join(self.folder, "crrl_curves.png"))
        self._write_metrics()


def _sources(cfg) -> list[str]:
    from reaemb_ray.rl.rewards import sources_for

    return sources_for(cfg.crrl.reward, cfg.crrl.reward_weights)


def _plots(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [("reward_mean", "reward mean"), ("eval_reward", "eval reward (noise-free)"), ("loss", "loss"),
              ("clip_fraction", "clip fraction")]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.2))
    for ax, (key, title) in zip(axes, series):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker="." if key == "eval_reward" else None)
        ax.set_title(title)
        ax.set_xlabel("learner step")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_crrl(cfg, stage: str = "crrl", fresh: bool = False, hooks: dict | None = None) -> dict:
    """Run CRRL to the end (or crrl.max_steps); returns timings and the eval history."""
    from reaemb_ray.runtime import init_ray

    init_ray(cfg.ray)
    ctl = Controller(cfg, stage, fresh=fresh, hooks=hooks)
    try:
        return ctl.run()
    finally:
        ctl.pools.shutdown()
        ctl.actors.shutdown()


def stages(cfg) -> list[Stage]:
    """`crrl`, and one `crrl-<objective>-<reward>` stage per entry of `crrl.variants`."""
    out = []
    for variant in [""] + list(cfg.crrl.variants):
        name = variant_method(variant) if variant else "crrl"
        c = cfg_with(cfg, **{"crrl.variants": []})
        if variant:
            objective, reward = variant.split("/")
            c = cfg_with(c, **{"crrl.objective": objective, "crrl.reward": reward})
        deps = ["prepare"] + (["lrcl"] if not c.crrl.init_from else [])
        deps += ["srs_pretrain"] if c.crrl.reward in ("srs", "mix") else []
        deps += [layout.export_stage("lrcl")] if c.crrl.hard_negatives else []  # neighbours in the LRCL table
        reads = {"crrl": changed_fields(c.crrl), "model": changed_fields(c.model)}
        init = c.crrl.init_from
        raw = None if init in ("", "backbone") else (lambda i=init: {k: list(v) for k, v in Store(i).files().items()})
        out.append(Stage(name, tuple(deps), reads, lambda cc, n=name: _summary(run_crrl(cc, n)), c, raw_inputs=raw,
                         command="crrl" if not variant else ""))
    return out


def _summary(res: dict) -> dict:
    return {k: res[k] for k in ("steps", "version", "wall_s", "restarts", "eval_rewards")}
