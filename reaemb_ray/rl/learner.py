"""The CRRL learner (no Ray): a DeepSpeed engine over the latent-thought attention module.

Per rollout batch: rewards -> advantages -> up to `updates_per_batch` clipped-objective updates. The behaviour
log-probs come from the rollout's own mu (the weights that produced the samples), so a stale batch is
corrected by the ratio. Learning rate (rl/step_size.py): `cosine` (linear warmup then cosine decay, counted in
optimizer updates) or `kl_adaptive` (scaled after each batch to keep its KL near `crrl.target_kl`).

Trust region: with Adam the step size ignores the advantages' scale, so a Gaussian policy can jump by about
its own norm per step. `crrl.target_kl` > 0 stops a batch's updates once the mean KL between the current and
the behaviour policy, ||mu - mu_b||^2 / (2 sigma^2), exceeds it; `crrl.kl_beta` adds the KL to the initial
policy as a penalty. Every step reports that KL, |delta mu| / |mu| and the share of groups whose rewards
differ at all (only those carry a learning signal). `crrl.shuffle_rewards` is a control: rewards permuted
across the batch, so a gain that survives it is not from the reward.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from reaemb_ray.device import Placement, placement
from reaemb_ray.rl import advantages as adv_lib
from reaemb_ray.rl import objectives, step_size
from reaemb_ray.rl.objectives import gaussian_kl
from reaemb_ray.rl.rewards import group_spread_share
from reaemb_ray.rl.policy import load_base


def init_single_process_distributed(backend: str = "gloo") -> None:
    """DeepSpeed wants a process group; one process is a world of one (nccl on a GPU, gloo on CPU). Its rendezvous
    store is in memory: a TCPStore would listen on every interface, unauthenticated, for a group that has no one
    else to meet."""
    import deepspeed
    import torch.distributed as dist

    for k, v in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("LOCAL_WORLD_SIZE", "1")):
        os.environ[k] = v
    if not dist.is_initialized():
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    deepspeed.init_distributed(dist_backend=backend)  # adopts the group above


def deepspeed_config(zero_stage: int, dtype: torch.dtype) -> dict:
    """The learner's DeepSpeed config. The attention module's weights are in `dtype`; a bf16/fp16 section keeps
    fp32 master weights in the optimizer (without it DeepSpeed would step the half-precision weights)."""
    return {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": zero_stage}, "gradient_clipping": 1.0,
            "bf16": {"enabled": dtype == torch.bfloat16}, "fp16": {"enabled": dtype == torch.float16},
            "zero_allow_untested_optimizer": True, "steps_per_print": 10**9}


def learner_inputs(batch: dict, rewards: np.ndarray, advantage: str, device: torch.device) -> dict[str, torch.Tensor]:
    """Every tensor a learner step reads, on `device` (rollout batches arrive as numpy arrays)."""
    # object-store arrays are read-only; a few MB copied beats torch's non-writable-array warning
    tensor = lambda a: torch.from_numpy(np.require(a, requirements="W")).to(device)  # noqa: E731
    out = {k: tensor(batch[k]) for k in ("hidden", "attention_mask", "position_ids", "actions", "mu")}
    out["advantages"] = torch.as_tensor(adv_lib.compute(advantage, rewards)).to(device)
    for k in ("input_ids", "sigma"):  # the paper objective's tokens; sigma when it is relative to |mu|
        if k in batch:
            out[k] = tensor(batch[k])
    return out


class Learner:
    def __init__(self, base_dir: str, crrl, total_steps: int, dtype: str = "float32", where: Placement | None = None):
        where = where or placement(dtype)  # the GPU Ray gave this actor, if any
        # DeepSpeed picks its accelerator itself (CUDA whenever torch sees one): make it agree with the rule
        os.environ["DS_ACCELERATOR"] = "cuda" if where.is_cuda else "cpu"
        import deepspeed

        self.cfg, self.device = crrl, where.device
        lm, attn, _ = load_base(base_dir, dtype)
        self.objective = objectives.get(crrl.objective)
        # the paper surrogate scores tokens with the (frozen) LM
        self.lm = lm.to(self.device) if self.objective.needs_lm else None
        attn.to(self.device)
        self.ref = None
        if crrl.kl_beta:
            import copy
            self.ref = copy.deepcopy(attn).eval().requires_grad_(False)
        attn.train().requires_grad_(True)
        init_single_process_distributed(where.backend)
        opt = torch.optim.AdamW(attn.parameters(), lr=crrl.lr, weight_decay=0.0)
        total_updates = max(1, total_steps * crrl.updates_per_batch)
        self.schedule = step_size.make(crrl.lr_schedule, crrl.warmup_steps, total_updates, crrl.target_kl)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.schedule)
        self.engine, _, _, self.sched = deepspeed.initialize(model=attn, optimizer=opt, lr_scheduler=sched,
                                                             config=deepspeed_config(crrl.zero_stage, where.dtype))
        if self.engine.device != self.device:
            raise RuntimeError(f"DeepSpeed put the learner on {self.engine.device}, the device rule on {self.device}")
        self.version = 0
        self.steps = 0

    # -------------------------------------------------------------------------------------- weights

    def state_dict(self) -> dict[str, np.ndarray]:
        """Full attention weights as numpy (gathered when ZeRO-3 partitions them)."""
        module = self.engine.module
        if self.cfg.zero_stage == 3:
            import deepspeed
            with deepspeed.zero.GatheredParameters(list(module.parameters())):
                return {k: v.detach().float().cpu().numpy().copy() for k, v in module.state_dict().items()}
        return {k: v.detach().float().cpu().numpy().copy() for k, v in module.state_dict().items()}

    # ----------------------------------------------------------------------------------------- step

    def _apply_schedule(self) -> None:
        """Set the optimizer's lr from the schedule now (LambdaLR only reads it again after the next update)."""
        for group, base in zip(self.sched.optimizer.param_groups, self.sched.base_lrs):
            group["lr"] = base * self.schedule(self.sched.last_epoch)

    def _mu(self, hidden, mask, pos):
        t = mask.shape[1] - 2
        return self.engine(hidden, mask[:, :t], t, pos[:, :t]).float()

    def step(self, batch: dict, rewards: np.ndarray) -> dict:
        t0 = time.perf_counter()
        c = self.cfg
        rewards = np.asarray(rewards, dtype=np.float32)
        if c.shuffle_rewards:  # control: each sample gets some other sample's reward
            rewards = np.random.default_rng([c.seed, self.steps]).permutation(rewards.ravel()).reshape(rewards.shape)
        x = learner_inputs(batch, rewards, c.advantage, self.device)
        hidden, mask, pos, actions, mu_b, adv = (x[k] for k in ("hidden", "attention_mask", "position_ids", "actions",
                                                               "mu", "advantages"))
        sigma = x.get("sigma", c.sigma)  # per item when relative to |mu|
        inputs = {"actions": actions, "mu": mu_b, "sigma": sigma, "attention_mask": mask,
                  "input_ids": x.get("input_ids")}
        with torch.no_grad():
            mu_start = self._mu(hidden, mask, pos)
            mu_ref = None if self.ref is None else self.ref(hidden, mask[:, :-2], mask.shape[1] - 2, pos[:, :-2]).float()
            old = self.objective.behaviour(self.lm, inputs, mu_ref, c)  # behaviour policy: staleness-corrected
        lr = float(self.sched.optimizer.param_groups[0]["lr"])  # this batch's first update's
        losses, clips = [], []
        for _ in range(c.updates_per_batch):
            mu = self._mu(hidden, mask, pos)
            if c.target_kl and float(gaussian_kl(mu.detach(), mu_b, sigma).mean()) > c.target_kl:
                break  # left the trust region around the behaviour policy
            loss, clip = self.objective.loss(self.lm, old, mu, adv, c)
            self.engine.backward(loss)
            self.engine.step()
            losses.append(loss.item())
            clips.append(float(clip))
        with torch.no_grad():
            mu_end = self._mu(hidden, mask, pos)
        kl = float(gaussian_kl(mu_end, mu_b, sigma).mean())
        self.schedule.observe(kl)
        self._apply_schedule()  # kl_adaptive: the next batch's first update already takes the new step size
        self.steps += 1
        self.version += 1
        return {"loss": float(np.mean(losses)) if losses else 0.0,
                "clip_fraction": float(np.mean(clips)) if clips else 0.0, "updates": len(losses),
                "kl": kl,
                "delta_mu": float((mu_end - mu_start).norm(dim=-1).mean() / mu_start.norm(dim=-1).mean().clamp(min=1e-12)),
                "reward_spread": group_spread_share(rewards),
                "lr": lr, "version": self.version, "step": self.steps,
                "reward_mean": float(np.mean(rewards)), "reward_std": float(np.std(rewards)),
                "staleness": self.version - 1 - int(batch["version"]), "samples": int(np.size(rewards)),
                "seconds": time.perf_counter() - t0}

    # ------------------------------------------------------------------------------------ checkpoint

    def save(self, ckpt_dir: str, client_state: dict) -> None:
        self.engine.save_checkpoint(ckpt_dir, tag="state",
                                    client_state=dict(client_state, version=self.version, steps=self.steps))

    def load(self, ckpt_dir: str) -> dict:
        from reaemb_ray.checkpoint_load import load_checkpoint

        _, client = load_checkpoint(self.engine, ckpt_dir, tag="state")  # weights_only: no code in a checkpoint
        self.version, self.steps = int(client["version"]), int(client["steps"])
        self._apply_schedule()  # the schedule's state came back with the LambdaLR state
        return client
