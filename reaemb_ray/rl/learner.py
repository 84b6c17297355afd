"""The CRRL learner (no Ray): a DeepSpeed engine over the latent-thought attention module.

Per rollout batch: rewards -> advantages -> up to `updates_per_batch` clipped-objective updates. The behaviour
log-probs come from the rollout's own mu (the weights that produced the samples), so a stale batch is
corrected by the ratio. Learning rate: linear warmup then cosine decay, counted in optimizer updates.

Trust region: with Adam the step size ignores the advantages' scale, so a Gaussian policy can jump by about
its own norm per step. `crrl.target_kl` > 0 stops a batch's updates once the mean KL between the current and
the behaviour policy, ||mu - mu_b||^2 / (2 sigma^2), exceeds it; `crrl.kl_beta` adds the KL to the initial
policy as a penalty. Every step reports that KL, |delta mu| / |mu| and the share of groups whose rewards
differ at all (only those carry a learning signal). `crrl.shuffle_rewards` is a control: rewards permuted
across the batch, so a gain that survives it is not from the reward.
"""
from __future__ import annotations

import math
import os
import time

import numpy as np
import torch

from reaemb_ray.rl import advantages as adv_lib
from reaemb_ray.rl import objectives
from reaemb_ray.rl.objectives import gaussian_kl
from reaemb_ray.rl.rewards import group_spread_share
from reaemb_ray.rl.policy import load_base


def cosine_with_warmup(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return f


def init_single_process_distributed() -> None:
    """DeepSpeed wants a process group; one process is a world of one (gloo). Its rendezvous store is in memory:
    a TCPStore would listen on every interface, unauthenticated, for a group that has no one else to meet."""
    import deepspeed
    import torch.distributed as dist

    for k, v in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("LOCAL_WORLD_SIZE", "1")):
        os.environ[k] = v
    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    deepspeed.init_distributed(dist_backend="gloo")  # adopts the group above


class Learner:
    def __init__(self, base_dir: str, crrl, total_steps: int, dtype: str = "float32"):
        import deepspeed

        self.cfg = crrl
        lm, attn, _ = load_base(base_dir, dtype)
        self.objective = objectives.get(crrl.objective)
        self.lm = lm if self.objective.needs_lm else None  # the paper surrogate scores tokens with the LM
        self.ref = None
        if crrl.kl_beta:
            import copy
            self.ref = copy.deepcopy(attn).eval().requires_grad_(False)
        attn.train().requires_grad_(True)
        init_single_process_distributed()
        opt = torch.optim.AdamW(attn.parameters(), lr=crrl.lr, weight_decay=0.0)
        total_updates = max(1, total_steps * crrl.updates_per_batch)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(crrl.warmup_steps, total_updates))
        ds_cfg = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                  "zero_optimization": {"stage": crrl.zero_stage}, "gradient_clipping": 1.0,
                  "zero_allow_untested_optimizer": True}
        self.engine, _, _, self.sched = deepspeed.initialize(model=attn, optimizer=opt, lr_scheduler=sched,
                                                             config=ds_cfg)
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

    def _mu(self, hidden, mask, pos):
        t = mask.shape[1] - 2
        return self.engine(hidden, mask[:, :t], t, pos[:, :t]).float()

    def step(self, batch: dict, rewards: np.ndarray) -> dict:
        t0 = time.perf_counter()
        c = self.cfg
        # object-store arrays are read-only; a few MB copied beats torch's non-writable-array warning
        tensor = lambda a: torch.from_numpy(np.require(a, requirements="W"))
        hidden, mask, pos = tensor(batch["hidden"]), tensor(batch["attention_mask"]), tensor(batch["position_ids"])
        actions, mu_b = tensor(batch["actions"]), tensor(batch["mu"])
        sigma = tensor(batch["sigma"]) if "sigma" in batch else c.sigma  # per item when relative to |mu|
        rewards = np.asarray(rewards, dtype=np.float32)
        if c.shuffle_rewards:  # control: each sample gets some other sample's reward
            rewards = np.random.default_rng([c.seed, self.steps]).permutation(rewards.ravel()).reshape(rewards.shape)
        adv = torch.as_tensor(adv_lib.compute(c.advantage, rewards))
        inputs = {"actions": actions, "mu": mu_b, "sigma": sigma, "attention_mask": mask,
                  "input_ids": torch.as_tensor(batch["input_ids"])}
        with torch.no_grad():
            mu_start = self._mu(hidden, mask, pos)
            mu_ref = None if self.ref is None else self.ref(hidden, mask[:, :-2], mask.shape[1] - 2, pos[:, :-2]).float()
            old = self.objective.behaviour(self.lm, inputs, mu_ref, c)  # behaviour policy: staleness-corrected
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
        self.steps += 1
        self.version += 1
        return {"loss": float(np.mean(losses)) if losses else 0.0,
                "clip_fraction": float(np.mean(clips)) if clips else 0.0, "updates": len(losses),
                "kl": float(gaussian_kl(mu_end, mu_b, sigma).mean()),
                "delta_mu": float((mu_end - mu_start).norm(dim=-1).mean() / mu_start.norm(dim=-1).mean().clamp(min=1e-12)),
                "reward_spread": group_spread_share(rewards),
                "lr": float(self.sched.get_last_lr()[0]), "version": self.version, "step": self.steps,
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
        return client
