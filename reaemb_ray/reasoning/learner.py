"""The GRPO learner of the reasoning policy (no Ray): a DeepSpeed engine over the LoRA adapter of the generator.

Per rollout batch (M prompts x G replies, rewards (M, G)): group-relative advantages, the behaviour log-probs
(under the weights of the version that generated the batch: the learner keeps the adapters of the last
`max_staleness + 1` versions, so a stale batch is corrected by the ratio; an on-policy batch takes them from the
first update's own forward), the reference log-probs
(the base model = the adapter disabled) when kl_beta > 0, then `updates_per_batch` optimizer steps. Each step
runs the batch in micro-batches of `micro_batch` replies (gradient accumulation; the token-level loss is
normalised by the whole batch's token count, so the step equals one full-batch step).
Learning rate: linear warmup then cosine decay, counted in optimizer updates (shared with CRRL).
"""
from __future__ import annotations

import contextlib
import time

import numpy as np
import torch

from reaemb_ray.reasoning import grpo, policy
from reaemb_ray.rl import advantages as adv_lib, step_size
from reaemb_ray.rl.learner import init_single_process_distributed


class GRPOLearner:
    def __init__(self, model_path: str, rcfg, total_steps: int, dtype: str = "float32"):
        import deepspeed

        from reaemb_ray.device import placement

        self.cfg = rcfg
        where = placement(dtype)  # the GPU Ray gave the learner, if any (reaemb_ray.device)
        model, self.tok = policy.build_policy(model_path, rcfg.lora, dtype, rcfg.seed)
        model.to(where.device).train()
        init_single_process_distributed(where.backend)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=rcfg.lr, weight_decay=0.0)
        total_updates = max(1, total_steps * rcfg.updates_per_batch)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, step_size.make("cosine", rcfg.warmup_steps, total_updates))
        self.n_micro = -(-rcfg.prompts_per_batch * rcfg.group_size // rcfg.micro_batch)
        ds_cfg = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": self.n_micro,
                  "zero_optimization": {"stage": rcfg.zero_stage}, "gradient_clipping": rcfg.gradient_clipping,
                  "zero_allow_untested_optimizer": True, "bf16": {"enabled": dtype == "bfloat16"}}
        self.engine, _, _, self.sched = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched,
                                                             config=ds_cfg)
        self.version = 0
        self.steps = 0
        self.adapters = {0: self.state_dict()}  # version -> LoRA state, for stale batches' behaviour log-probs

    @property
    def model(self):
        return self.engine.module

    def state_dict(self) -> dict[str, np.ndarray]:
        return policy.lora_state(self.model)

    @contextlib.contextmanager
    def _weights_of(self, version: int):
        """Temporarily the adapter of an earlier `version` (the behaviour policy of a stale batch)."""
        if version == self.version:
            yield
            return
        if version not in self.adapters:
            raise ValueError(f"batch from weight version {version}, but the learner keeps versions "
                             f"{sorted(self.adapters)}; raise reason.max_staleness or lower the queue")
        current = self.state_dict()
        policy.load_lora_state(self.model, self.adapters[version])
        try:
            yield
        finally:
            policy.load_lora_state(self.model, current)

    def _logprobs(self, packed, rows, c_width):
        dev = self.engine.device  # DeepSpeed placed the model (a GPU when the actor holds one)
        ids, mask, pos, _ = (t[rows].to(dev) for t in packed)
        return grpo.completion_logprobs(self.model, ids, mask, pos, c_width, self.cfg.temperature)

    def step(self, batch: dict, rewards: np.ndarray) -> dict:
        """batch: prompt_ids (M lists), completions (M x G lists), version; rewards (M, G)."""
        t0 = time.perf_counter()
        c = self.cfg
        rewards = np.asarray(rewards, dtype=np.float64)
        m, g = rewards.shape
        dev = self.engine.device
        adv = torch.as_tensor(adv_lib.compute(c.advantage, rewards)).reshape(-1).to(dev)
        prompts = [p for p in batch["prompt_ids"] for _ in range(g)]
        comps = [list(x) for row in batch["completions"] for x in row]
        packed = grpo.pack(prompts, comps, self.tok.pad_token_id)
        cmask = packed[3].to(dev)
        c_width, n_tokens = cmask.shape[1], cmask.sum()
        chunks = [np.arange(i, min(i + c.micro_batch, m * g)) for i in range(0, m * g, c.micro_batch)]
        # On-policy (the batch comes from the current version) and without dropout, the behaviour log-probs are
        # the first update's own forward (detached): one forward pass fewer per step.
        on_policy = int(batch["version"]) == self.version and not c.lora.dropout
        old = [None] * len(chunks)
        with torch.no_grad():
            if not on_policy:
                self.model.eval()  # no LoRA dropout in the log-probs that the ratio divides by
                with self._weights_of(int(batch["version"])):
                    old = [self._logprobs(packed, r, c_width) for r in chunks]
            ref = None
            if c.kl_beta:
                self.model.eval()
                with self.model.disable_adapter():
                    ref = [self._logprobs(packed, r, c_width) for r in chunks]
        self.model.train()
        losses, clipped, kl, drift = [], 0.0, 0.0, 0.0
        for _ in range(c.updates_per_batch):
            total = 0.0
            for j, r in enumerate(chunks):
                new = self._logprobs(packed, r, c_width)
                if old[j] is None:
                    old[j] = new.detach()
                d = old[j] - new.detach()  # KL to the behaviour policy before this update (k3, per token)
                drift += float(((torch.exp(d) - d - 1.0) * cmask[r]).sum())
                loss, n_clip, kl_sum = grpo.token_grpo_loss(new, old[j], adv[r], cmask[r], c.clip_low, c.clip_high,
                                                            c.kl_beta, None if ref is None else ref[j], n_tokens)
                self.engine.backward(loss, scale_wrt_gas=False)  # already divided by the batch's token count
                self.engine.step()
                total += loss.item()
                clipped += float(n_clip)
                kl += float(kl_sum)
            losses.append(total)
        self.steps += 1
        self.version += 1
        self.adapters[self.version] = self.state_dict()
        for v in [v for v in self.adapters if v < self.version - c.max_staleness]:
            del self.adapters[v]
        updates = c.updates_per_batch
        return {"loss": float(np.mean(losses)), "clip_fraction": clipped / (float(n_tokens) * updates),
                "kl_ref": kl / (float(n_tokens) * updates) if c.kl_beta else None,
                "kl_behaviour": drift / (float(n_tokens) * updates),
                "lr": float(self.sched.get_last_lr()[0]), "version": self.version, "step": self.steps,
                "staleness": self.version - 1 - int(batch["version"]), "tokens": int(n_tokens),
                "samples": int(m * g), "seconds": time.perf_counter() - t0}

    def save(self, ckpt_dir: str, client_state: dict) -> None:
        self.engine.save_checkpoint(ckpt_dir, tag="state",
                                    client_state=dict(client_state, version=self.version, steps=self.steps))

    def load(self, ckpt_dir: str) -> dict:
        from reaemb_ray.checkpoint_load import load_checkpoint

        _, client = load_checkpoint(self.engine, ckpt_dir, tag="state")  # weights_only: no code in a checkpoint
        self.version, self.steps = int(client["version"]), int(client["steps"])
        self.adapters = {self.version: self.state_dict()}
        return client
