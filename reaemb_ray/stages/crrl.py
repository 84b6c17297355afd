"""Stage 2, CRRL: rollout workers -> reward workers -> DeepSpeed learner, wired by this controller.

Batches of items stream through bounded queues: rollouts for the next batches run while the learner trains
(at most crrl.max_staleness weight versions behind; the objective's ratio uses the behaviour policy that
produced each batch). A dead rollout/reward worker is recreated and its batch re-issued with the same noise
seed, so every learner step happens exactly once. Checkpoints hold learner state + data position + version.
"""
from __future__ import annotations

import json
import logging
import random
import shutil
import time
from pathlib import Path

import numpy as np

from reaemb_ray import metrics
from reaemb_ray.rl.engines import vllm_memory_share
from reaemb_ray.runtime import check_fits

log = logging.getLogger(__name__)


def _plots(rows: list[dict], out: Path) -> None:
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
        ax.set_title(title); ax.set_xlabel("learner step")
    fig.tight_layout()
    fig.savefig(out / "crrl_curves.png", dpi=90)
    plt.close(fig)


class Controller:
    def __init__(self, cfg, fresh: bool = False, hooks: dict | None = None):
        import ray

        from reaemb_ray.rl.candidates import cooccurrence_candidates, srs_candidates
        from reaemb_ray.rl.policy import load_cooccurrence, load_item_texts, prepare_base
        from reaemb_ray.rl.rewards import sources_for

        self.cfg, c = cfg, cfg.crrl
        self.hooks = hooks or {}
        self.out = cfg.out / "crrl"
        if fresh and self.out.exists():
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        prepared = cfg.out / "prepared"
        self.base = str(prepare_base(cfg, self.out / "base"))
        self.texts = load_item_texts(prepared)
        n = max(self.texts)
        self.cands = {}
        for source in sources_for(c.reward, c.reward_weights):
            if source == "cooccurrence":
                self.cands[source] = cooccurrence_candidates(*load_cooccurrence(prepared), num_items=n,
                                                             num_positives=c.num_positives,
                                                             num_negatives=c.num_negatives, seed=c.seed,
                                                             neighbours=self._neighbours(n),
                                                             hard_negatives=c.hard_negatives)
                log.info("co-occurrence candidates for %d items (%d skipped: no co-occurring item)",
                         len(self.cands[source]), self.cands[source].skipped)
            else:
                from reaemb_ray.srs.pretrain import load_item_table
                self.cands[source] = srs_candidates(load_item_table(cfg.out), c.num_positives, c.num_negatives, c.seed)
        items = sorted(set.intersection(*(set(x.item_ids.tolist()) for x in self.cands.values())))
        if not items:
            raise ValueError("no item has reward candidates; check prepared/cooccurrence.parquet (training split)")
        rng = random.Random(c.seed)
        rng.shuffle(items)
        if c.max_items:
            items = items[: c.max_items]
        self.eval_ids = np.asarray(sorted(items[: c.eval_items]), dtype=np.int64)
        self.batches = []
        for epoch in range(c.epochs):
            order = list(items)
            random.Random(c.seed * 1000 + epoch).shuffle(order)
            self.batches += [order[i:i + c.items_per_batch] for i in range(0, len(order), c.items_per_batch)]
        self.total = min(len(self.batches), c.max_steps) if c.max_steps else len(self.batches)

        from actors.learner import LearnerActor
        from actors.reward import RewardWorker
        from actors.rollout import RolloutWorker

        self._ray = ray
        self.texts_ref = ray.put(self.texts)
        self.cands_ref = ray.put(self.cands)
        self.RolloutWorker, self.RewardWorker = RolloutWorker, RewardWorker
        need = lambda r, n: {"CPU": r.num_cpus * n, "GPU": r.num_gpus * n}
        check_fits({"the learner": need(c.learner_resources, 1),
                    f"{c.num_rollout_workers} rollout workers": need(c.rollout_resources, c.num_rollout_workers),
                    f"{c.num_reward_workers} reward workers": need(c.reward_resources, c.num_reward_workers)})
        res = c.learner_resources
        self.learner = LearnerActor.options(num_cpus=res.num_cpus, num_gpus=res.num_gpus).remote(
            self.base, c, self.total, cfg.model.dtype)
        self.rollout_workers = [self._new_rollout(i) for i in range(c.num_rollout_workers)]
        self.reward_workers = [self._new_reward(i) for i in range(c.num_reward_workers)]
        self.restarts = {"rollout": 0, "reward": 0}
        self.step = 0
        self.version = 0
        ckpt = self.out / "checkpoint"
        if (ckpt / "state.json").exists():
            state = json.loads((ckpt / "state.json").read_text())
            client = ray.get(self.learner.load.remote(str(ckpt)))
            self.step, self.version = int(client["step"]), int(client["version"])
            log.info("resuming from step %d (weight version %d)", self.step, self.version)
            print(f"resuming from step {self.step}")
            if state.get("total") != self.total:
                log.warning("the checkpoint planned %s steps, this config plans %s", state.get("total"), self.total)
        self.generation = 0  # of the collective weight group, bumped whenever it is formed again
        self.collective = c.weight_sync == "collective"
        if self.collective:
            self.weights_box = []  # nothing to fetch: the learner pushes
            self._form_group()
            self._broadcast()
        else:
            self.weights_box = [self.learner.weights.remote()]  # boxed: workers fetch only when older

    def _neighbours(self, num_items: int) -> np.ndarray | None:
        """Hard-negative pools: each item's nearest items (centred cosine) in the LRCL model's exported table."""
        if not self.cfg.crrl.hard_negatives:
            return None
        from reaemb_ray.rl.candidates import nearest_neighbours
        from reaemb_ray.srs.encoders import load_embedding_table
        from reaemb_ray.stages.evaluate import table_path

        path = table_path(self.cfg.out, "lrcl")
        if not path.exists():
            raise FileNotFoundError(f"crrl.hard_negatives needs the LRCL table {path}; run `reaemb export "
                                    "export.method=lrcl` first, or set crrl.hard_negatives=0")
        table = load_embedding_table(path, num_items)
        return nearest_neighbours(table, 4 * self.cfg.crrl.num_negatives + 10)  # a pool: co-occurring ones drop out

    # ------------------------------------------------------------------------------------ actors

    def _new_rollout(self, i: int):
        c, r = self.cfg.crrl, self.cfg.crrl.rollout_resources
        return self.RolloutWorker.options(num_cpus=r.num_cpus, num_gpus=r.num_gpus).remote(
            i, self.base, self.texts_ref, c.engine, c.group_size, c.sigma, c.anchor, self.cfg.data.noun,
            self.cfg.model.max_length, self.cfg.model.dtype,
            vllm_gpu_memory=vllm_memory_share(c.vllm_gpu_memory_utilization, r.num_gpus), sigma_relative=c.sigma_relative)

    def _new_reward(self, i: int):
        c, r = self.cfg.crrl, self.cfg.crrl.reward_resources
        return self.RewardWorker.options(num_cpus=r.num_cpus, num_gpus=r.num_gpus).remote(
            i, self.cands_ref, c.reward, c.reward_weights, c.scoring, c.reward_form, c.reward_tau)

    def _replace(self, role: str, i: int, regroup: bool = True) -> None:
        self.restarts[role] += 1
        if self.restarts[role] > self.cfg.crrl.max_restarts * len(self.rollout_workers if role == "rollout" else self.reward_workers):
            raise RuntimeError(f"{role} workers died more than crrl.max_restarts times per worker; giving up")
        pool = self.rollout_workers if role == "rollout" else self.reward_workers
        self._ray.kill(pool[i], no_restart=True)
        pool[i] = self._new_rollout(i) if role == "rollout" else self._new_reward(i)
        metrics.get("reaemb_actor_restarts_total").inc(1, tags={"role": role})
        log.warning("%s worker %d died; recreated it and re-issued its batch", role, i)
        if role == "rollout" and self.collective and regroup:
            self._form_group()
            self._broadcast()

    # ------------------------------------------------------------------ collective weight sync

    def _form_group(self) -> None:
        """(Re)create the broadcast group: the learner as rank 0, rollout worker i as rank i + 1."""
        ray, c = self._ray, self.cfg.crrl
        self.generation += 1
        world = len(self.rollout_workers) + 1
        gpu = c.learner_resources.num_gpus > 0 and c.rollout_resources.num_gpus > 0
        host, port = ray.get(self.learner.open_weight_group.remote(world, self.generation, c.sync_timeout_s))
        ray.get([self.learner.join_weight_group.remote(gpu)] +
                [w.join_weight_group.remote(host, port, i + 1, world, self.generation, c.sync_timeout_s, gpu)
                 for i, w in enumerate(self.rollout_workers)])
        log.info("weight group %d formed: learner + %d rollout workers", self.generation, world - 1)

    def _broadcast(self) -> float:
        """Push the learner's weights to every rollout worker; returns the learner's broadcast seconds. A dead
        worker fails the broadcast (the live members time out after crrl.sync_timeout_s): it is replaced, the
        group is formed again, and the broadcast repeated."""
        ray = self._ray
        while True:
            refs = [self.learner.broadcast_weights.remote()] + \
                   [w.receive_weights.remote(self.version) for w in self.rollout_workers]
            ray.wait(refs, num_returns=len(refs))  # every member finishes: done, died, or timed out
            dead = []
            for i, ref in enumerate(refs[1:]):
                try:
                    ray.get(ref)
                except ray.exceptions.RayActorError:
                    dead.append(i)
                except ray.exceptions.RayTaskError:
                    pass  # a live member that timed out waiting for a dead one
            if not dead:
                return ray.get(refs[0])  # raises if the broadcast failed for another reason
            for i in dead:
                self._replace("rollout", i, regroup=False)
            self._form_group()

    def _cand_ids(self, item_ids) -> dict:
        return {s: c.lookup(item_ids)[0] for s, c in self.cands.items()}

    # -------------------------------------------------------------------------------------- eval

    def evaluate(self) -> float | None:
        if not len(self.eval_ids):
            return None
        ray = self._ray
        cand = self._cand_ids(self.eval_ids)
        w = self.rollout_workers[0]
        emb = w.noise_free.remote(self.eval_ids, self.weights_box, self.version)
        cand_emb = {s: w.noise_free.remote(ids.reshape(-1), self.weights_box, self.version) for s, ids in cand.items()}
        cand_emb = {s: ray.get(r).reshape(*cand[s].shape, -1) for s, r in cand_emb.items()}
        r = ray.get(self.reward_workers[0].score_noise_free.remote(self.eval_ids, ray.get(emb), cand_emb))
        return float(np.mean(r))

    # -------------------------------------------------------------------------------------- loop

    def run(self) -> dict:
        from tqdm import tqdm

        ray, c = self._ray, self.cfg.crrl
        t_start = time.perf_counter()
        timings = {"rollout_s": 0.0, "reward_s": 0.0, "learner_s": 0.0, "sync_s": 0.0, "learner_wait_s": 0.0,
                   "embeddings": 0}
        rows: list[dict] = []
        metrics_path = self.out / "metrics.jsonl"
        if self.step == 0 and metrics_path.exists():
            metrics_path.unlink()
        ev = self.evaluate() if self.step == 0 else None
        if ev is not None:
            rows.append({"step": 0, "eval_reward": ev})
            metrics.get("reaemb_eval_reward").set(ev)
        next_issue = self.step
        rollouts: dict = {}  # ref -> (batch index, worker index, worker)
        rewards: dict = {}  # ref -> (batch index, rollout ref, reward worker index)
        ready: dict = {}  # batch index -> (rollout ref, reward ref)
        busy: set[int] = set()
        learner_job = None  # (metrics ref, weights ref)
        rr = 0
        bar = tqdm(total=self.total, initial=self.step, desc="crrl", unit="step")
        idle_since = time.perf_counter()
        while self.step < self.total:
            # issue rollouts: bounded queue, bounded staleness, one task per worker
            while (next_issue < self.total and len(rollouts) + len(rewards) + len(ready) < c.queue_size
                   and next_issue - self.version <= c.max_staleness and len(busy) < len(self.rollout_workers)):
                i = min(set(range(len(self.rollout_workers))) - busy)
                rollouts[self._issue(i, next_issue)] = (next_issue, i, self.rollout_workers[i])
                busy.add(i)
                next_issue += 1
            # feed the learner in data order
            if learner_job is None and self.step in ready:
                ro_ref, rw_ref = ready.pop(self.step)
                learner_job = self.learner.step.remote(ro_ref, rw_ref)
                timings["learner_wait_s"] += time.perf_counter() - idle_since
            metrics.get("reaemb_queue_depth").set(len(rollouts), tags={"queue": "rollout"})
            metrics.get("reaemb_queue_depth").set(len(rewards), tags={"queue": "reward"})
            metrics.get("reaemb_queue_depth").set(len(ready), tags={"queue": "learner"})
            waiting = list(rollouts) + list(rewards) + ([learner_job[0]] if learner_job else [])
            done, _ = ray.wait(waiting, num_returns=1, timeout=60)
            for ref in done:
                if ref in rollouts:
                    k, i, actor = rollouts.pop(ref)
                    busy.discard(i)
                    try:
                        head = ray.get(ref)
                    except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError):
                        if self.rollout_workers[i] is actor:  # not yet replaced (by a failed broadcast)
                            self._replace("rollout", i)
                        rollouts[self._issue(i, k)] = (k, i, self.rollout_workers[i])
                        busy.add(i)
                        continue
                    timings["rollout_s"] += head["seconds"]
                    timings["sync_s"] += head["sync_seconds"]
                    timings["embeddings"] += head["emb"].shape[0] * head["emb"].shape[1]
                    j = rr % len(self.reward_workers); rr += 1
                    rewards[self.reward_workers[j].score.remote(ref)] = (k, ref, j)
                elif ref in rewards:
                    k, ro_ref, j = rewards.pop(ref)
                    t0 = time.perf_counter()
                    try:
                        ray.get(ref)
                    except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError):
                        self._replace("reward", j)
                        rewards[self.reward_workers[j].score.remote(ro_ref)] = (k, ro_ref, j)
                        continue
                    timings["reward_s"] += time.perf_counter() - t0
                    ready[k] = (ro_ref, ref)
                else:
                    m_ref, w_ref = learner_job
                    learner_job = None
                    idle_since = time.perf_counter()
                    m = ray.get(m_ref)
                    self.step, self.version = m["step"], m["version"]
                    timings["learner_s"] += m["seconds"]
                    timings["sync_s"] += m["publish_seconds"]
                    if self.collective:
                        timings["sync_s"] += self._broadcast()
                    else:
                        self.weights_box = [w_ref]
                    self._record(m, rows, metrics_path, bar)
                    if self.step % c.checkpoint_every == 0 or self.step == self.total:
                        self.checkpoint()
                    if "after_step" in self.hooks:
                        self.hooks["after_step"](self.step, self)
        bar.close()
        self._finish(rows)
        wall = time.perf_counter() - t_start
        evals = [r["eval_reward"] for r in rows if r.get("eval_reward") is not None]
        return dict(timings, steps=self.step, version=self.version, wall_s=wall, restarts=dict(self.restarts),
                    embeddings_per_s=timings["embeddings"] / max(timings["rollout_s"], 1e-9),
                    eval_rewards=evals, rows=rows)

    def _issue(self, i: int, k: int):
        ids = np.asarray(self.batches[k], dtype=np.int64)
        seed = self.cfg.crrl.seed * 1_000_003 + k  # same batch, same noise (also when re-issued)
        return self.rollout_workers[i].rollout.remote(ids, self._cand_ids(ids), seed, self.weights_box, self.version)

    def _record(self, m: dict, rows: list, path: Path, bar) -> None:
        metrics.get("reaemb_reward_mean").set(m["reward_mean"])
        metrics.get("reaemb_reward_std").set(m["reward_std"])
        metrics.get("reaemb_loss").set(m["loss"], tags={"stage": "crrl"})
        metrics.get("reaemb_clip_fraction").set(m["clip_fraction"])
        metrics.get("reaemb_staleness").set(m["staleness"])
        metrics.get("reaemb_weight_version").set(m["version"])
        # kl / delta_mu: how far one batch moved the thought; reward_spread: the share of groups whose samples got
        # different rewards (only those carry a learning signal); updates < updates_per_batch: target_kl stopped it
        row = {k: m[k] for k in ("step", "version", "loss", "clip_fraction", "reward_mean", "reward_std",
                                 "reward_spread", "kl", "delta_mu", "updates", "staleness", "lr", "seconds")}
        if m["step"] % self.cfg.crrl.eval_every == 0 or m["step"] == self.total:
            row["eval_reward"] = self.evaluate()
            metrics.get("reaemb_eval_reward").set(row["eval_reward"])
        rows.append(row)
        with open(path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        bar.set_postfix(reward=f"{m['reward_mean']:.3f}", loss=f"{m['loss']:.3f}")
        bar.update(1)

    def checkpoint(self) -> None:
        ckpt = self.out / "checkpoint"
        self._ray.get(self.learner.save.remote(str(ckpt), {"step": self.step, "data_position": self.step}))
        (ckpt / "state.json").write_text(json.dumps({"step": self.step, "version": self.version, "total": self.total}))

    def _finish(self, rows: list) -> None:
        from safetensors.numpy import save_file

        from reaemb_ray.model.generator import ATTN_FILE, META_FILE

        final = self.out / "final"
        final.mkdir(parents=True, exist_ok=True)
        state = self._ray.get(self.learner.weights.remote())
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}, str(final / ATTN_FILE))
        meta = json.loads((Path(self.base) / META_FILE).read_text())
        # a generator folder: the merged LM lives in crrl/base, the trained attention here
        meta.update(merged=False, lora=False, backbone_path=str(Path(self.base).resolve()), crrl_steps=self.step,
                    weight_version=self.version, objective=self.cfg.crrl.objective, reward=self.cfg.crrl.reward)
        (final / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        for f in Path(self.base).glob("*"):
            if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
                shutil.copy(f, final / f.name)
        if rows:
            _plots(rows, self.out)

    def shutdown(self) -> None:
        for a in [self.learner, *self.rollout_workers, *self.reward_workers]:
            self._ray.kill(a, no_restart=True)


def run_crrl(cfg, fresh: bool = False, hooks: dict | None = None) -> dict:
    """Run CRRL to the end (or crrl.max_steps) on the current Ray; returns timings and the eval history."""
    ctl = Controller(cfg, fresh=fresh, hooks=hooks)
    try:
        return ctl.run()
    finally:
        ctl.shutdown()


def main(cfg, args) -> None:
    from reaemb_ray.runtime import init_ray

    init_ray(cfg.ray)
    res = run_crrl(cfg, fresh=getattr(args, "fresh", False))
    res.pop("rows")
    log.info("CRRL done: %s", json.dumps(res, default=float))
    print(json.dumps(res, indent=2, default=float))
