"""`reaemb lrcl`: stage 1 (latent-reasoning contrastive learning) as a Ray Train job with DeepSpeed.

Each Ray Train worker holds the generator (LM + LoRA + thought attention + tau) in a DeepSpeed engine
(ZeRO `lrcl.zero_stage`) and trains on its shard of a seeded item stream: two attribute-dropout views per
item, soft contrastive loss within the micro-batch, gradient accumulation up to `lrcl.batch_size` items per
optimiser step, linear warmup then cosine decay.

Checkpoints (every `lrcl.checkpoint_every` steps and at the end) go through `ray.train.report` to Ray Train's
storage, `<stage>/ray/` of the output store (an s3:// or gs:// output_dir is Ray Train's storage_path, so no
node needs a shared disk): `train/step_NNNNNN/` holds `generator/` (reaemb_ray/model/generator.py format),
`deepspeed/` (optimizer and scheduler state, one ZeRO partition per rank), `data_state.json` (step, epoch,
items seen, sampler seed) and `metrics.jsonl` (every step so far). The data position is a pure function of
the step, so a resumed run sees exactly the items the uninterrupted run would have seen. At the end the last
checkpoint's generator becomes `<stage>/final/` and its metrics `<stage>/metrics.jsonl`; <stage> is `lrcl`,
or `llmemb` for the no-thought baseline (`model.use_thought=false`).
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from reaemb_ray import layout, metrics as series
from reaemb_ray.records import changed_fields
from reaemb_ray.stages.base import Stage, cfg_with
from reaemb_ray.storage import Store, store_for

log = logging.getLogger("reaemb.lrcl")

DATA_STATE = "data_state.json"
GENERATOR = "generator"  # inside a checkpoint
RETRIEVAL = "retrieval.json"  # lrcl.retrieval_items > 0: held-out second-view retrieval before/after training


def stage_name(cfg) -> str:
    return "lrcl" if cfg.model.use_thought else "llmemb"


# ------------------------------------------------------------------------------------ pure pieces


class ItemStream:
    """Seeded, epoch-wise shuffled stream of item indices; position p -> item, no state besides the seed.

    Optimiser step s covers stream positions [s * B, (s + 1) * B); within it, micro-batch k of rank r takes a
    contiguous chunk. That is a DistributedSampler whose position is fully given by (seed, step).
    """

    def __init__(self, num_items: int, seed: int):
        if num_items < 2:
            raise ValueError(f"LRCL needs at least 2 items for in-batch negatives, got {num_items}")
        self.n, self.seed = num_items, seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._perms[epoch]

    def take(self, start: int, count: int) -> np.ndarray:
        return np.array([self._perm(p // self.n)[p % self.n] for p in range(start, start + count)], dtype=np.int64)

    def micro_batch(self, step: int, micro: int, rank: int, world: int, micro_bs: int, batch_size: int) -> np.ndarray:
        start = step * batch_size + (micro * world + rank) * micro_bs
        return self.take(start, micro_bs)

    def epoch_at(self, step: int, batch_size: int) -> int:
        return (step * batch_size) // self.n


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup to 1, then cosine decay to 0 at `total`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def deepspeed_config(lcfg, model_dtype: str, world: int) -> dict:
    accum = lcfg.batch_size // (lcfg.micro_batch_size * world)
    ds = {
        "train_batch_size": lcfg.batch_size,
        "train_micro_batch_size_per_gpu": lcfg.micro_batch_size,
        "gradient_accumulation_steps": accum,
        "zero_optimization": {"stage": lcfg.zero_stage},
        "bf16": {"enabled": model_dtype == "bfloat16"},
        "fp16": {"enabled": model_dtype == "float16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if lcfg.gradient_clipping:
        ds["gradient_clipping"] = lcfg.gradient_clipping
    if lcfg.offload_optimizer:
        ds["zero_optimization"]["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
        # ZeRO-Offload steps with DeepSpeed's CPU Adam (a C++ op built on first use)
        ds["optimizer"] = {"type": "AdamW", "params": {"lr": lcfg.lr, "weight_decay": 0.0}}
    return ds


def latest_checkpoint(store: Store, train_rel: str) -> str | None:
    """The newest complete checkpoint (one that has data_state.json) under `train_rel`, as a store path."""
    steps = [n for n in store.listdir(train_rel) if re.fullmatch(r"step_\d+", n)
             and store.exists(layout.join(train_rel, n, DATA_STATE))]
    newest = max(steps, key=lambda n: int(n.removeprefix("step_")), default=None)
    return layout.join(train_rel, newest) if newest else None


# ------------------------------------------------------------------------------------ the worker


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import torch
    from tqdm import tqdm

    from reaemb_ray.checkpoint_load import load_checkpoint
    from reaemb_ray.device import placement

    where = placement(config["cfg"].model.dtype)  # the GPU Ray Train gave this worker (lrcl.use_gpu), if any
    os.environ["DS_ACCELERATOR"] = "cuda" if where.is_cuda else "cpu"  # DeepSpeed must agree with it
    import deepspeed

    from reaemb_ray.data.prompts import attribute_views, item_prompt
    from reaemb_ray.losses import contrastive_loss, view_retrieval_top1
    from reaemb_ray.model.backbone import load_backbone, resolve_backbone
    from reaemb_ray.model.generator import ThoughtEmbedder
    from reaemb_ray.model.two_pass import tokenize_prompts

    cfg, texts, stage = config["cfg"], config["texts"], config["stage"]
    lc, mc = cfg.lrcl, cfg.model
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(lc.cpus_per_worker)
    deepspeed.init_distributed(dist_backend=where.backend)

    # DeepSpeed casts the module for bf16/fp16; it keeps fp32 master weights in the optimizer. The backbone is
    # resolved on this node, into its own cache: the node's first rank builds or downloads it while the others
    # wait, then every rank reads it
    if ctx.get_local_rank() == 0:
        resolve_backbone(mc, cfg.data.cache_dir)
    torch.distributed.barrier()
    lm, tok = load_backbone(resolve_backbone(mc, cfg.data.cache_dir), "float32")
    # seeded after the backbone: a rank that builds it (first use on its node) draws random numbers doing so
    torch.manual_seed(cfg.seed)  # identical LoRA/attention init on every rank
    module = ThoughtEmbedder(lm, use_thought=mc.use_thought, rope_base=mc.rope_base, tau_init=lc.tau_init,
                             lora=mc.lora, pooling=mc.pooling)
    params = [p for p in module.parameters() if p.requires_grad]
    ds_cfg = deepspeed_config(lc, mc.dtype, world)
    opt = None if lc.offload_optimizer else torch.optim.AdamW(params, lr=lc.lr, weight_decay=0.0)
    # DeepSpeed steps the scheduler at each optimiser step and stores it in its checkpoints
    make_sched = lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda s: lr_factor(s, lc.warmup_steps, lc.steps))
    engine, _, _, sched = deepspeed.initialize(model=module, model_parameters=params, optimizer=opt,
                                               lr_scheduler=make_sched, config=ds_cfg)
    accum = ds_cfg["gradient_accumulation_steps"]

    # history: one metrics row per step so far; retrieval_record: the held-out retrieval before/after training;
    # both travel in every checkpoint (rank 0 writes nothing outside Ray Train's storage)
    start, history, retrieval_record = 0, [], {}
    # in-run restarts (FailureConfig) hand the checkpoint to Ray Train; a rerun of the stage passes its location
    ckpt = ray.train.get_checkpoint()
    if ckpt is None and config.get("resume_from"):
        ckpt = ray.train.Checkpoint(config["resume_from"])
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = json.loads((Path(d) / DATA_STATE).read_text())
            load_checkpoint(engine, str(Path(d) / "deepspeed"), tag=state["tag"], load_module_strict=False,
                            load_optimizer_states=True, load_lr_scheduler_states=True)  # weights_only
            history = [json.loads(x) for x in (Path(d) / layout.METRICS).read_text().splitlines()]
            if (Path(d) / RETRIEVAL).exists():
                retrieval_record = json.loads((Path(d) / RETRIEVAL).read_text())
        start = state["step"]
        if state["sampler_seed"] != cfg.seed:
            raise ValueError(f"checkpoint was made with seed {state['sampler_seed']} but seed is {cfg.seed}; "
                             "resume with the same seed or pass --fresh")
        if rank == 0:
            log.warning("resuming from step %d (epoch %d, %d items seen)", start, state["epoch"], state["items_seen"])
            print(f"resuming from step {start}", flush=True)

    noun = cfg.data.noun
    held_out = held_out_items(len(texts), lc.retrieval_items, cfg.seed)
    train_ids = np.setdiff1d(np.arange(len(texts)), held_out)
    stream = ItemStream(len(train_ids), cfg.seed)

    def tokenized_views(idx, rng):
        views = [attribute_views(texts[i], lc.drop_ratio, rng) for i in idx]
        prompts = [item_prompt(tok, v[0], noun) for v in views] + [item_prompt(tok, v[1], noun) for v in views]
        return {k: v.to(engine.device) for k, v in tokenize_prompts(tok, prompts, mc.max_length, mc.pooling, noun).items()}

    def retrieval() -> float:
        """Second-view top-1 retrieval over the held-out items (views fixed by the seed), eval mode."""
        rng = np.random.default_rng([cfg.seed, 7])
        engine.module.eval()
        with torch.no_grad():
            embs = [engine.module.embed(tokenized_views(held_out[i:i + lc.micro_batch_size], rng), efficient=True)
                    for i in range(0, len(held_out), lc.micro_batch_size)]
        m = [len(held_out[i:i + lc.micro_batch_size]) for i in range(0, len(held_out), lc.micro_batch_size)]
        x = torch.cat([e[:k] for e, k in zip(embs, m)])
        y = torch.cat([e[k:] for e, k in zip(embs, m)])
        return view_retrieval_top1(x, y)

    if len(held_out) and rank == 0 and start == 0:
        retrieval_record = {"items": len(held_out), "before": retrieval()}
        log.info("second-view top-1 retrieval of %d held-out items before training: %.3f", len(held_out),
                 retrieval_record["before"])

    tags = {"rank": str(rank)}
    bar = tqdm(total=lc.steps, initial=start, desc=f"{stage} (rank 0)", disable=rank != 0)
    tau = lambda: engine.module.tau()  # noqa: E731
    for step in range(start, lc.steps):
        if lc.fail_at_step and step + 1 == lc.fail_at_step and ckpt is None and rank == 0:
            raise RuntimeError(f"lrcl.fail_at_step={lc.fail_at_step}: simulated worker failure (testing only)")
        t0 = time.time()
        engine.train()
        micro_items = [train_ids[stream.micro_batch(step, micro, rank, world, lc.micro_batch_size, lc.batch_size)]
                       for micro in range(accum)]
        # views and LoRA dropout masks are functions of (seed, step, micro-batch, rank): reproducible on resume
        batches = [tokenized_views(idx, np.random.default_rng([cfg.seed, step, micro, rank]))
                   for micro, idx in enumerate(micro_items)]
        seeds = [cfg.seed * 1_000_003 + step * 1009 + rank + 7919 * micro for micro in range(accum)]
        if lc.contrast == "micro_batch":
            losses = []
            for batch, seed, idx in zip(batches, seeds, micro_items):
                torch.manual_seed(seed)
                emb = engine(batch, efficient=lc.efficient_forward)
                loss = contrastive_loss(emb[:len(idx)], emb[len(idx):], tau(), lc.similarity)
                engine.backward(loss)
                engine.step()
                losses.append(loss.item())
        else:
            losses = [_whole_batch_step(engine, batches, seeds, [len(i) for i in micro_items], tau, lc, world)]
        done = step + 1
        loss_t = torch.tensor([float(np.mean(losses))], device=engine.device)
        torch.distributed.all_reduce(loss_t)
        metrics = {"step": done, "loss": loss_t.item() / world, "tau": float(engine.module.tau().detach()),
                   "lr": sched.get_last_lr()[0], "items_per_s": lc.batch_size / (time.time() - t0),
                   "epoch": stream.epoch_at(done, lc.batch_size)}
        if step == start and start:
            metrics["resumed_from"] = start
        history.append(metrics)
        series.get("reaemb_lrcl_items_total").inc(accum * lc.micro_batch_size, tags=tags)
        if rank == 0:
            series.get("reaemb_lrcl_tau").set(metrics["tau"])
            series.get("reaemb_loss").set(metrics["loss"], tags={"stage": stage})
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", tau=f"{metrics['tau']:.3f}")
        if done == lc.steps and len(held_out) and rank == 0:
            retrieval_record.setdefault("items", len(held_out))
            retrieval_record["after"] = metrics["retrieval_top1"] = retrieval()
            log.info("second-view top-1 retrieval of %d held-out items after %d steps: %.3f (before: %s)",
                     len(held_out), done, retrieval_record["after"], retrieval_record.get("before"))
        if done % lc.checkpoint_every == 0 or done == lc.steps:
            _report_checkpoint(engine, tok, cfg, config, done, stream, history, rank, retrieval_record)
        else:
            ray.train.report(metrics)
    bar.close()


def held_out_items(num_items: int, count: int, seed: int) -> np.ndarray:
    """`count` item indices kept out of training (a seeded choice) for the retrieval check."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if count > num_items - 2:
        raise ValueError(f"lrcl.retrieval_items={count} leaves fewer than 2 of {num_items} items to train on")
    return np.sort(np.random.default_rng([seed, 3]).choice(num_items, count, replace=False))


def _whole_batch_step(engine, batches, seeds, sizes, tau, lc, world) -> float:
    """One optimiser step contrasting the whole optimiser batch (every micro-batch of every worker) at once.

    Gradient caching (Gao et al., 2021): (1) embed each micro-batch without gradients; (2) gather every
    worker's embeddings and take the gradient g of the batch loss L w.r.t. this worker's own rows; (3) re-embed
    each micro-batch with gradients (same dropout seed, so the same values) and backpropagate <emb, g>. The
    parameter gradient is then exactly dL/dtheta summed over micro-batches and workers; DeepSpeed divides each
    backward by the accumulation steps and averages over workers, so the surrogate is scaled by both back.
    The temperature's gradient is taken once from L on detached embeddings (scaled by the accumulation steps
    only: every worker holds the same value and the average keeps it).
    """
    import torch
    import torch.distributed as dist

    from reaemb_ray.losses import contrastive_loss

    accum = len(batches)
    with torch.no_grad():
        embs = []
        for batch, seed in zip(batches, seeds):
            torch.manual_seed(seed)
            embs.append(engine(batch, efficient=lc.efficient_forward).float())
    local_x = torch.cat([e[:m] for e, m in zip(embs, sizes)])
    local_y = torch.cat([e[m:] for e, m in zip(embs, sizes)])
    xs = [torch.empty_like(local_x) for _ in range(world)]
    ys = [torch.empty_like(local_y) for _ in range(world)]
    dist.all_gather(xs, local_x.contiguous())
    dist.all_gather(ys, local_y.contiguous())
    rank = dist.get_rank()
    xs[rank], ys[rank] = local_x.clone().requires_grad_(True), local_y.clone().requires_grad_(True)
    loss = contrastive_loss(torch.cat(xs), torch.cat(ys), tau().detach(), lc.similarity)
    gx, gy = torch.autograd.grad(loss, [xs[rank], ys[rank]])
    tau_loss = contrastive_loss(torch.cat(xs).detach(), torch.cat(ys).detach(), tau(), lc.similarity)
    offset = 0
    for k, (batch, seed, m) in enumerate(zip(batches, seeds, sizes)):
        torch.manual_seed(seed)
        emb = engine(batch, efficient=lc.efficient_forward).float()
        g = torch.cat([gx[offset:offset + m], gy[offset:offset + m]])
        surrogate = (emb * g).sum() * (accum * world)
        if k == 0:
            surrogate = surrogate + tau_loss * accum
        engine.backward(surrogate)
        engine.step()
        offset += m
    return float(loss)


def _report_checkpoint(engine, tok, cfg, config, step, stream, history, rank, retrieval_record) -> None:
    import tempfile

    import ray.train
    from ray.train import Checkpoint

    from reaemb_ray.model.generator import save_generator

    tag = f"step{step}"
    with tempfile.TemporaryDirectory() as tmp:
        # every rank writes its ZeRO partition; frozen base weights are not duplicated into checkpoints
        engine.save_checkpoint(str(Path(tmp) / "deepspeed"), tag=tag, exclude_frozen_parameters=True)
        if rank == 0:
            save_generator(engine.module, tok, Path(tmp) / GENERATOR,
                           {"backbone": cfg.model.backbone, "stage": config["stage"], "step": step})
            state = {"step": step, "epoch": stream.epoch_at(step, cfg.lrcl.batch_size), "tag": tag,
                     "items_seen": step * cfg.lrcl.batch_size, "sampler_seed": cfg.seed,
                     "metrics": history[-1]}
            (Path(tmp) / DATA_STATE).write_text(json.dumps(state))
            (Path(tmp) / layout.METRICS).write_text("".join(json.dumps(r) + "\n" for r in history))
            if retrieval_record:
                (Path(tmp) / RETRIEVAL).write_text(json.dumps(retrieval_record))
        ray.train.report(history[-1], checkpoint=Checkpoint.from_directory(tmp), checkpoint_dir_name=f"step_{step:06d}")


# ------------------------------------------------------------------------------------ the driver


@contextmanager
def _sigint_handler_kept():
    """Ray Train's `fit()` installs a SIGINT handler that aborts its controller and never takes it down again:
    after LRCL, Ctrl-C in any later stage of the same process (`reaemb run`) was swallowed, and the third one
    exited with status 0. This puts back the handler that was there before."""
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    finally:
        if main and before is not None:
            signal.signal(signal.SIGINT, before)


def run_lrcl(cfg, stage: str | None = None, fresh: bool = False) -> dict:
    """Train (or resume from the newest checkpoint in the store); leaves `<stage>/final` and returns a summary."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from reaemb_ray.data.prepare import load_prepared
    from reaemb_ray.runtime import check_fits, gpu_options, init_ray

    stage = stage or stage_name(cfg)
    store = store_for(cfg)
    folder = layout.folder(stage)
    if fresh:
        store.delete(folder)
    texts = load_prepared(store.fetch(layout.PREPARED)).texts[1:]  # index 0 is padding
    if cfg.lrcl.max_items:
        texts = texts[: cfg.lrcl.max_items]
    init_ray(cfg.ray)
    # Ray Train's controller itself asks for no CPU; its workers wait for a placement group that may never come
    check_fits({f"{cfg.lrcl.num_workers} Ray Train workers": (cfg.lrcl.num_workers, {
        "CPU": cfg.lrcl.cpus_per_worker, "GPU": 1.0 if cfg.lrcl.use_gpu else 0.0})}, cfg.ray.wait_for_nodes_s)

    train_rel = layout.join(folder, layout.TRAIN_STORAGE, layout.TRAIN_RUN)
    resume = latest_checkpoint(store, train_rel)
    if resume is not None:
        log.info("resuming from step %d (%s)", store.read_json(layout.join(resume, DATA_STATE))["step"], store.uri(resume))
    gpu = gpu_options(int(cfg.lrcl.use_gpu), cfg.ray)  # one GPU per worker, or ray.gpu_stand_in's resource
    t0 = time.time()
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"cfg": cfg, "texts": texts, "stage": stage,
                           "resume_from": store.uri(resume) if resume else None},
        scaling_config=ScalingConfig(num_workers=cfg.lrcl.num_workers, use_gpu=bool(gpu["num_gpus"]),
                                     resources_per_worker={"CPU": cfg.lrcl.cpus_per_worker,
                                                           **gpu.get("resources", {})}),
        # the store's URI (or local folder) is Ray Train's storage: workers on any node write checkpoints there
        run_config=RunConfig(storage_path=store.uri(layout.join(folder, layout.TRAIN_STORAGE)), name=layout.TRAIN_RUN,
                             failure_config=FailureConfig(max_failures=cfg.lrcl.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    with _sigint_handler_kept():
        result = trainer.fit()
    if result.error:
        raise RuntimeError(f"{stage} training failed: {result.error}")
    last = latest_checkpoint(store, train_rel)
    state = store.read_json(layout.join(last, DATA_STATE)) if last else {}
    if state.get("step") != cfg.lrcl.steps:
        raise RuntimeError(f"{stage}: no final checkpoint at step {cfg.lrcl.steps} in {store.uri(train_rel)}")
    store.copy(layout.join(last, GENERATOR), layout.generator(stage))
    store.copy(layout.join(last, layout.METRICS), layout.join(folder, layout.METRICS))
    retrieval = store.read_json(layout.join(last, RETRIEVAL)) if store.exists(layout.join(last, RETRIEVAL)) else None
    if retrieval:
        store.write_json(layout.join(folder, RETRIEVAL), retrieval)
    log.info("%s finished: %s (loss %.4f)", stage, store.uri(layout.generator(stage)), state["metrics"]["loss"])
    return {"steps": cfg.lrcl.steps, "seconds": round(time.time() - t0, 1), "last_metrics": state["metrics"],
            "resumed_from": int(resume.rsplit("_", 1)[1]) if resume else 0, "backbone": cfg.model.backbone,
            "retrieval": retrieval}


def stages(cfg) -> list[Stage]:
    """`lrcl` (with the latent thought) and `llmemb` (the LLMEmb-style baseline without it)."""
    out = []
    for name, thought in (("llmemb", False), ("lrcl", True)):
        reads = {"model": dict(changed_fields(cfg.model, drop=("use_thought",)), use_thought=thought),
                 "lrcl": changed_fields(cfg.lrcl), "seed": cfg.seed}
        out.append(Stage(name, ("prepare",), reads, lambda c, n=name: run_lrcl(c, n),
                         cfg_with(cfg, **{"model.use_thought": thought}),
                         command="lrcl" if thought else "lrcl model.use_thought=false"))
    return out
