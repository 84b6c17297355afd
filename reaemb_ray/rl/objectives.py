"""Policy objectives for CRRL, both with the PPO clipped surrogate and an asymmetric clip.

The action is the noisy latent thought r' = mu_theta(x) + eps, eps ~ N(0, sigma^2 I).
- `gaussian` (default): the density of the action actually taken, log pi(r'|x) = -||r' - mu_theta(x)||^2 /
  (2 sigma^2) (+ a constant that cancels in the ratio); the optional KL to the initial policy is the exact
  Gaussian KL ||mu_theta - mu_ref||^2 / (2 sigma^2).
- `paper`: the published surrogate: per-token log-probabilities of the prompt under the frozen LM when the
  thought slot holds mu_theta(x) + eps (eps fixed from the rollout), averaged over all prompt tokens. Unlike
  the published code the logits are shifted (position t predicts token t+1). By causality only the token after
  the thought (EOS) depends on the thought; every earlier token has ratio exactly 1 and contributes -A, so
  those are counted rather than recomputed (`paper_loss` equals the full per-token mean; see the tests).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _per_item(sigma, like: torch.Tensor):
    """sigma as a scalar or per item (M,) -> broadcastable against (M, ...) tensors."""
    if isinstance(sigma, torch.Tensor) and sigma.ndim:
        return sigma.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))
    return sigma


def gaussian_logprob(actions: torch.Tensor, mu: torch.Tensor, sigma) -> torch.Tensor:
    """actions (M, G, d), mu (M, d), sigma scalar or (M,) -> log pi(actions | x) (M, G), up to a constant
    (with a per-item sigma fixed by the rollout, the constant is the same for the old and new policy)."""
    sq = ((actions - mu[:, None, :]) ** 2).sum(-1)
    return -sq / (2.0 * _per_item(sigma, sq) ** 2)


def gaussian_kl(mu: torch.Tensor, mu_ref: torch.Tensor, sigma) -> torch.Tensor:
    """KL(N(mu, s^2 I) || N(mu_ref, s^2 I)) per item (M,); sigma scalar or (M,)."""
    sq = ((mu - mu_ref) ** 2).sum(-1)
    return sq / (2.0 * _per_item(sigma, sq) ** 2)


def exploration_sigma(mu: torch.Tensor, sigma: float, relative: bool) -> torch.Tensor:
    """Per-item exploration scale (M,): `sigma` itself, or relative to the thought's size,
    sigma * ||mu_i|| / sqrt(d), so the noise vector's norm is about sigma * ||mu_i|| whatever the LM's scale
    (the published absolute 0.1 barely moves a SmolLM2 thought of norm ~30)."""
    if not relative:
        return torch.full((mu.shape[0],), float(sigma), dtype=torch.float32, device=mu.device)
    return (sigma * mu.float().norm(dim=-1) / mu.shape[-1] ** 0.5).clamp(min=1e-6)


def clipped_terms(logp_new, logp_old, adv, clip_low: float, clip_high: float):
    """Per-element PPO loss -min(ratio A, clip(ratio) A) and whether the clipped branch was taken."""
    ratio = torch.exp(logp_new - logp_old)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    return -torch.minimum(unclipped, clipped), (clipped < unclipped)


def gaussian_loss(actions, mu, logp_old, adv, sigma: float, clip_low: float, clip_high: float,
                  beta: float = 0.0, mu_ref=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean clipped surrogate over all (item, sample) pairs (+ beta * Gaussian KL); returns (loss, clip_frac)."""
    logp_new = gaussian_logprob(actions, mu, sigma)
    per, is_clipped = clipped_terms(logp_new, logp_old, adv, clip_low, clip_high)
    loss = per.mean()
    if beta:
        if mu_ref is None:
            raise ValueError("kl_beta > 0 needs the reference policy's mu (mu_ref)")
        loss = loss + beta * gaussian_kl(mu, mu_ref, sigma).mean()
    return loss, is_clipped.float().mean()


def thought_token_logprob(lm, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          thoughts: torch.Tensor) -> torch.Tensor:
    """log p(token after the thought | prompt with the thought slot = each of G thoughts) -> (M, G).

    Prompts are left padded with the thought at L-2 and EOS at L-1, so the logit at L-2 (shifted) scores EOS.
    """
    m, g, d = thoughts.shape
    emb = lm.get_input_embeddings()(input_ids)  # (M, L, d)
    emb = emb.repeat_interleave(g, 0).clone()
    emb[:, -2] = thoughts.reshape(m * g, d).to(emb.dtype)
    mask = attention_mask.repeat_interleave(g, 0)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = lm(inputs_embeds=emb, attention_mask=mask, position_ids=pos, logits_to_keep=2).logits[:, 0]
    target = input_ids[:, -1].repeat_interleave(g, 0)
    return F.log_softmax(logits.float(), -1).gather(1, target[:, None])[:, 0].view(m, g)


def paper_loss(logp_new, logp_old, adv, n_targets: torch.Tensor, clip_low: float, clip_high: float,
               beta: float = 0.0, logp_ref=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-mean clipped surrogate of the published objective (shifted logits).

    logp_* (M, G): log-prob of the thought-dependent token; n_targets (M,): shifted target tokens per prompt
    (valid tokens - 1). The other n_targets - 1 tokens per sample have ratio 1: loss -A each, never clipped,
    KL 0. Returns (loss, fraction of tokens clipped).
    """
    per, is_clipped = clipped_terms(logp_new, logp_old, adv, clip_low, clip_high)
    if beta:
        if logp_ref is None:
            raise ValueError("kl_beta > 0 needs the reference log-probs (logp_ref)")
        delta = logp_ref - logp_new  # k3 estimator, as GRPO
        per = per + beta * (torch.exp(delta) - delta - 1.0)
    n_const = (n_targets - 1).to(adv.dtype)[:, None].expand_as(adv)
    total = n_targets.to(adv.dtype)[:, None].expand_as(adv).sum()
    loss = (per - n_const * adv).sum() / total
    return loss, is_clipped.float().sum() / total


# ------------------------------------------------------------------------------- objectives by name


class Gaussian:
    """`gaussian`: the density of the action taken (see the module doc)."""

    needs_lm = False

    @staticmethod
    def behaviour(lm, batch: dict, mu_ref, c) -> dict:
        """What the clipped ratio needs from the behaviour policy (the rollout's own mu: staleness-corrected);
        batch["sigma"] is the exploration scale the rollout used (scalar or per item)."""
        sigma = batch["sigma"]
        return {"actions": batch["actions"], "sigma": sigma, "mu_ref": mu_ref,
                "logp_old": gaussian_logprob(batch["actions"], batch["mu"], sigma)}

    @staticmethod
    def loss(lm, old: dict, mu, adv, c):
        return gaussian_loss(old["actions"], mu, old["logp_old"], adv, old["sigma"], c.clip_low, c.clip_high,
                             c.kl_beta, old["mu_ref"])


class Paper:
    """`paper`: the published token-level surrogate under the frozen LM (see the module doc)."""

    needs_lm = True

    @staticmethod
    def behaviour(lm, batch: dict, mu_ref, c) -> dict:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        eps = batch["actions"] - batch["mu"][:, None]
        ref = None if mu_ref is None else thought_token_logprob(lm, ids, mask, mu_ref[:, None] + eps)
        return {"ids": ids, "mask": mask, "eps": eps, "logp_ref": ref, "n_targets": mask[:, 1:].sum(1),
                "logp_old": thought_token_logprob(lm, ids, mask, batch["actions"])}

    @staticmethod
    def loss(lm, old: dict, mu, adv, c):
        new = thought_token_logprob(lm, old["ids"], old["mask"], mu[:, None] + old["eps"])
        return paper_loss(new, old["logp_old"], adv, old["n_targets"], c.clip_low, c.clip_high, c.kl_beta,
                          old["logp_ref"])


OBJECTIVES = {"gaussian": Gaussian, "paper": Paper}


def get(name: str):
    """The objective `name`: `behaviour(lm, batch, mu_ref, crrl_cfg) -> old`, `loss(lm, old, mu, adv, crrl_cfg)`."""
    if name not in OBJECTIVES:
        raise KeyError(f"unknown objective {name!r}; use one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]
