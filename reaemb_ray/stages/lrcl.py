"""`reaemb lrcl`: stage 1 (latent-reasoning contrastive learning) as a Ray Train job with DeepSpeed.

Each Ray Train worker holds the generator (LM + LoRA + thought attention + tau) in a DeepSpeed engine
(ZeRO `lrcl.zero_stage`) and trains on its shard of a seeded item stream: two attribute-dropout views per
item, soft contrastive loss within the micro-batch, gradient accumulation up to `lrcl.batch_size` items per
optimiser step, linear warmup then cosine decay.

Checkpoints (every `lrcl.checkpoint_every` steps and at the end) go through `ray.train.report` into
`{output_dir}/<stage>/ray/train/step_NNNNNN/`: `generator/` (HF/peft format), `deepspeed/` (optimizer and
scheduler state, one ZeRO partition per rank) and `data_state.json` (step, epoch, items seen, sampler
seed). The data position is a pure function of the step, so a resumed run sees exactly the items the
uninterrupted run would have seen. The final generator lands in `{output_dir}/<stage>/final/`, where
<stage> is `lrcl`, or `llmemb` for the no-thought baseline (`model.use_thought=false`).
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("reaemb.lrcl")

DATA_STATE = "data_state.json"


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


def latest_checkpoint(train_dir: Path) -> Path | None:
    """The newest complete checkpoint folder (one that has data_state.json)."""
    if not train_dir.exists():
        return None
    done = [p for p in train_dir.glob("step_*") if (p / DATA_STATE).exists()]
    return max(done, key=lambda p: int(re.sub(r"\D", "", p.name)), default=None)


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
    from reaemb_ray.model.backbone import load_backbone
    from reaemb_ray.model.generator import ThoughtEmbedder
    from reaemb_ray.model.two_pass import tokenize_prompts

    cfg, texts, stage = config["cfg"], config["texts"], config["stage"]
    lc, mc = cfg.lrcl, cfg.model
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(lc.cpus_per_worker)
    torch.manual_seed(cfg.seed)  # identical LoRA/attention init on every rank
    deepspeed.init_distributed(dist_backend=where.backend)

    # DeepSpeed casts the module for bf16/fp16; it keeps fp32 master weights in the optimizer.
    lm, tok = load_backbone(config["backbone_path"], "float32")
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

    start = 0
    # in-run restarts (FailureConfig) hand the checkpoint to Ray Train; a rerun of the stage passes it in config
    ckpt = ray.train.get_checkpoint()
    if ckpt is None and config.get("resume_dir"):
        ckpt = ray.train.Checkpoint.from_directory(config["resume_dir"])
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = json.loads((Path(d) / DATA_STATE).read_text())
            load_checkpoint(engine, str(Path(d) / "deepspeed"), tag=state["tag"], load_module_strict=False,
                            load_optimizer_states=True, load_lr_scheduler_states=True)  # weights_only
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

    retrieval_path = Path(config["stage_dir"]) / "retrieval.json"
    if len(held_out) and rank == 0 and start == 0:
        top1 = retrieval()
        retrieval_path.write_text(json.dumps({"items": len(held_out), "before": top1}))
        log.info("second-view top-1 retrieval of %d held-out items before training: %.3f", len(held_out), top1)

    metrics_path = Path(config["stage_dir"]) / "metrics.jsonl"
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
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", tau=f"{metrics['tau']:.3f}")
        if rank == 0:
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps(metrics) + "\n")
        if done == lc.steps and len(held_out) and rank == 0:
            record = json.loads(retrieval_path.read_text()) if retrieval_path.exists() else {"items": len(held_out)}
            record["after"] = metrics["retrieval_top1"] = retrieval()
            retrieval_path.write_text(json.dumps(record))
            log.info("second-view top-1 retrieval of %d held-out items after %d steps: %.3f (before: %s)",
                     len(held_out), done, record["after"], record.get("before"))
        if done % lc.checkpoint_every == 0 or done == lc.steps:
            _report_checkpoint(engine, tok, cfg, config, done, stream, metrics, rank)
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


def _report_checkpoint(engine, tok, cfg, config, step, stream, metrics, rank) -> None:
    import tempfile

    import ray.train
    from ray.train import Checkpoint

    from reaemb_ray.model.generator import save_generator

    tag = f"step{step}"
    with tempfile.TemporaryDirectory() as tmp:
        # every rank writes its ZeRO partition; frozen base weights are not duplicated into checkpoints
        engine.save_checkpoint(str(Path(tmp) / "deepspeed"), tag=tag, exclude_frozen_parameters=True)
        if rank == 0:
            save_generator(engine.module, tok, Path(tmp) / "generator",
                           {"backbone": cfg.model.backbone, "backbone_path": config["backbone_path"],
                            "stage": config["stage"], "step": step})
            state = {"step": step, "epoch": stream.epoch_at(step, cfg.lrcl.batch_size), "tag": tag,
                     "items_seen": step * cfg.lrcl.batch_size, "sampler_seed": cfg.seed,
                     "metrics": metrics}
            (Path(tmp) / DATA_STATE).write_text(json.dumps(state))
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp), checkpoint_dir_name=f"step_{step:06d}")


# ------------------------------------------------------------------------------------ the driver


def run_lrcl(cfg, fresh: bool = False) -> Path:
    """Train (or resume) and return `{output_dir}/<stage>/final`."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from reaemb_ray.data.prepare import load_prepared
    from reaemb_ray.model.backbone import resolve_backbone
    from reaemb_ray.runtime import init_ray

    stage = stage_name(cfg)
    stage_dir = cfg.out.resolve() / stage
    final = stage_dir / "final"
    if fresh and stage_dir.exists():
        shutil.rmtree(stage_dir)
    if (stage_dir / "_DONE.json").exists():
        log.info("%s already finished (%s); pass --fresh to train again", stage, stage_dir / "_DONE.json")
        return final
    stage_dir.mkdir(parents=True, exist_ok=True)
    texts = load_prepared(cfg.out).texts[1:]  # index 0 is padding
    if cfg.lrcl.max_items:
        texts = texts[: cfg.lrcl.max_items]
    # convert/download the backbone once here, not concurrently in every worker
    backbone_path = resolve_backbone(cfg.model, cfg.data.cache_dir)
    init_ray(cfg.ray)

    train_dir = stage_dir / "ray" / "train"
    resume = latest_checkpoint(train_dir)
    if resume is not None:
        log.info("resuming from step %d (%s)", json.loads((resume / DATA_STATE).read_text())["step"], resume)
    t0 = time.time()
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"cfg": cfg, "texts": texts, "stage": stage, "backbone_path": backbone_path,
                           "stage_dir": str(stage_dir), "resume_dir": str(resume) if resume else None},
        scaling_config=ScalingConfig(num_workers=cfg.lrcl.num_workers, use_gpu=cfg.lrcl.use_gpu,
                                     resources_per_worker={"CPU": cfg.lrcl.cpus_per_worker}),
        run_config=RunConfig(storage_path=str(stage_dir / "ray"), name="train",
                             failure_config=FailureConfig(max_failures=cfg.lrcl.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    if result.error:
        raise RuntimeError(f"{stage} training failed: {result.error}")
    last = latest_checkpoint(train_dir)
    if last is None or json.loads((last / DATA_STATE).read_text())["step"] != cfg.lrcl.steps:
        raise RuntimeError(f"{stage}: no final checkpoint at step {cfg.lrcl.steps} in {train_dir}")
    if final.exists():
        shutil.rmtree(final)
    shutil.copytree(last / "generator", final)
    state = json.loads((last / DATA_STATE).read_text())
    (stage_dir / "_DONE.json").write_text(json.dumps(
        {"stage": stage, "steps": cfg.lrcl.steps, "final": str(final), "seconds": round(time.time() - t0, 1),
         "last_metrics": state["metrics"], "backbone": cfg.model.backbone}, indent=2))
    log.info("%s finished: %s (loss %.4f)", stage, final, state["metrics"]["loss"])
    return final


def main(cfg, args) -> None:
    final = run_lrcl(cfg, fresh=getattr(args, "fresh", False))
    print(f"reaemb lrcl: generator at {final}")
