"""How large a learner's updates are: the learning-rate multiplier per optimizer update (no Ray, no DeepSpeed).

A schedule is a callable `m(update) -> float` that torch's LambdaLR multiplies the configured lr by, plus
`observe(kl)`, told the KL between the policy after a batch's updates and the behaviour policy that sampled it.

- `cosine`: linear warmup over `warmup` updates, then cosine decay to 0 at `total` updates:
      m(u) = (u + 1) / warmup                               for u < warmup
      m(u) = (1 + cos(pi * min(1, (u - warmup) / (total - warmup)))) / 2     after
  It ignores the KL. Short runs spend most of their updates in the decay (an 8-step, 16-update CRRL run on Beauty
  moved the thought by 0.9% of its norm on its first step and 0.05% on its last).
- `kl_adaptive`: the multiplier follows the measured KL towards `target_kl` (the adaptive rule of PPO's KL
  penalty, Schulman et al. 2017, applied to the step size as in rsl_rl's adaptive schedule):
      s <- s * factor   if KL < target / 2        s <- s / factor   if KL > 2 * target
      s clamped to [low, high];   m(u) = s * min(1, (u + 1) / warmup)
  With a Gaussian policy KL = ||mu - mu_b||^2 / (2 sigma^2), and after a few Adam steps ||mu - mu_b|| grows about
  linearly with the lr, so KL ~ lr^2: each batch in the band [target/2, 2 target] is a fixed-size step in policy
  space, whatever the reward's scale. The state (s) is a plain attribute, so LambdaLR's `state_dict` (which keeps
  a callable object's `__dict__`) checkpoints and resumes it.

`make(name, ...)` is the one validating entry point; `SCHEDULES` the registry.
"""
from __future__ import annotations

import math


def warmup_ramp(update: int, warmup: int) -> float:
    """(update + 1) / warmup during the warmup, 1 after it (and without one)."""
    return min(1.0, (update + 1) / warmup) if warmup else 1.0


class Cosine:
    def __init__(self, warmup: int, total: int):
        self.warmup, self.total = warmup, max(1, total)

    def __call__(self, update: int) -> float:
        if update < self.warmup:
            return warmup_ramp(update, self.warmup)
        progress = (update - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def observe(self, kl: float) -> None:
        """The cosine schedule does not look at the KL."""


class KLAdaptive:
    factor = 1.5
    low, high = 1e-2, 1e2  # the multiplier stays within two orders of magnitude of the configured lr

    def __init__(self, warmup: int, target_kl: float):
        self.warmup, self.target_kl = warmup, target_kl
        self.scale = 1.0

    def __call__(self, update: int) -> float:
        return self.scale * warmup_ramp(update, self.warmup)

    def observe(self, kl: float) -> None:
        if not math.isfinite(kl):
            return
        if kl < self.target_kl / 2:
            self.scale = min(self.high, self.scale * self.factor)
        elif kl > 2 * self.target_kl:
            self.scale = max(self.low, self.scale / self.factor)


SCHEDULES = {"cosine": lambda warmup, total, target_kl: Cosine(warmup, total),
             "kl_adaptive": lambda warmup, total, target_kl: KLAdaptive(warmup, target_kl)}


def make(name: str, warmup: int, total: int, target_kl: float = 0.0):
    """The schedule `name` over `total` optimizer updates; kl_adaptive needs target_kl > 0."""
    if name not in SCHEDULES:
        raise KeyError(f"unknown lr schedule {name!r}; use one of {sorted(SCHEDULES)}")
    if name == "kl_adaptive" and not target_kl > 0:
        raise ValueError("the kl_adaptive lr schedule needs a target KL > 0 (crrl.target_kl)")
    return SCHEDULES[name](warmup, total, target_kl)
