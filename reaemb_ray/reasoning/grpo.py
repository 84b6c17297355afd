"""Token-level GRPO for the reasoning policy.

The policy's density of a reply is that of the sampling distribution without truncation:
log pi(y_t | x, y_<t) = log_softmax(logits_t / temperature)[y_t] (top-p and the repetition penalty shape the
exploration but, as usual for GRPO, not the ratio). For reply i of a group with advantage A_i (group-relative,
`reaemb_ray.rl.advantages.grpo`) and every token t of it:
    rho_it = exp(log pi_new - log pi_old),   l_it = -min(rho_it A_i, clip(rho_it, 1 - eps_low, 1 + eps_high) A_i)
    (+ beta * k3 KL to the reference: exp(r) - r - 1 with r = log pi_ref - log pi_new)
and the loss is the mean over ALL tokens of the batch (token-level: a long reply weighs by its length, as in DAPO,
instead of every reply weighing the same). `token_grpo_loss` computes it on padded (B, T) tensors and takes the
batch's token count, so micro-batches sum to the full-batch loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pack(prompts: list[list[int]], completions: list[list[int]], pad_id: int):
    """Left-padded prompts + right-padded completions: (ids, attention mask, positions, completion mask (B, C)).

    Every prompt ends at column P - 1, so the logits at columns P - 1 .. P + C - 2 score completion tokens 0..C-1.
    """
    p_w = max(len(p) for p in prompts)
    c_w = max(1, max(len(c) for c in completions))
    rows, masks, cmask = [], [], []
    for p, c in zip(prompts, completions):
        rows.append([pad_id] * (p_w - len(p)) + list(p) + list(c) + [pad_id] * (c_w - len(c)))
        masks.append([0] * (p_w - len(p)) + [1] * (len(p) + len(c)) + [0] * (c_w - len(c)))
        cmask.append([1] * len(c) + [0] * (c_w - len(c)))
    ids, mask = torch.tensor(rows), torch.tensor(masks)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos, torch.tensor(cmask, dtype=torch.float32)


def completion_logprobs(model, ids, mask, pos, c_width: int, temperature: float) -> torch.Tensor:
    """log pi of each completion token (B, C) under `model` (pad positions hold garbage: mask them)."""
    p_w = ids.shape[1] - c_width
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=c_width + 1).logits
    logits = logits[:, :-1].float() / temperature  # column p_w - 1 + t predicts completion token t
    return torch.gather(F.log_softmax(logits, -1), 2, ids[:, p_w:, None])[..., 0]


def token_grpo_loss(logp_new, logp_old, adv, cmask, clip_low: float, clip_high: float, beta: float = 0.0,
                    logp_ref=None, n_tokens: float | None = None):
    """(loss, clipped-token count, KL-to-reference sum) over (B, T) token tensors, adv (B,).

    The loss is divided by `n_tokens` (default: this batch's tokens); pass the full batch's count when this is a
    micro-batch, so the micro-batch losses add up to the full-batch loss.
    """
    a = adv[:, None]
    ratio = torch.exp(logp_new - logp_old)
    unclipped = ratio * a
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * a
    per = -torch.minimum(unclipped, clipped)
    kl = torch.zeros_like(per)
    if beta:
        if logp_ref is None:
            raise ValueError("kl_beta > 0 needs the reference policy's log-probs (logp_ref)")
        r = logp_ref - logp_new
        kl = torch.exp(r) - r - 1.0
        per = per + beta * kl
    n = cmask.sum() if n_tokens is None else n_tokens
    return (per * cmask).sum() / n, ((clipped < unclipped).float() * cmask).sum(), (kl * cmask).sum()
