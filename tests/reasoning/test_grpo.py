"""Token-level GRPO: the loss against a per-token loop, the padded log-probs against unpadded forwards, and one
DeepSpeed learner step against a plain-torch reference update of the same LoRA adapter."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reaemb_ray.config import load_config
from reaemb_ray.model.backbone import resolve_backbone_name
from reaemb_ray.reasoning import grpo
from reaemb_ray.reasoning.policy import build_policy, lora_state
from reaemb_ray.rl.advantages import grpo as group_advantages


def naive_loss(logp_new, logp_old, adv, lengths, clip_low, clip_high, beta=0.0, logp_ref=None):
    """sum over replies i and their tokens t of -min(rho A, clip(rho) A) (+ beta k3), over the token count."""
    total, n = 0.0, 0
    for i, length in enumerate(lengths):
        for t in range(length):
            rho = math.exp(float(logp_new[i][t]) - float(logp_old[i][t]))
            a = float(adv[i])
            term = -min(rho * a, min(max(rho, 1 - clip_low), 1 + clip_high) * a)
            if beta:
                r = float(logp_ref[i][t]) - float(logp_new[i][t])
                term += beta * (math.exp(r) - r - 1)
            total += term
            n += 1
    return total / n


def test_token_loss_matches_a_per_token_loop():
    g = torch.Generator().manual_seed(0)
    lengths = [5, 1, 3, 4]
    b, t = len(lengths), max(lengths)
    cmask = torch.tensor([[1.0] * n + [0.0] * (t - n) for n in lengths])
    old = torch.randn(b, t, generator=g) - 2
    new = old + 0.5 * torch.randn(b, t, generator=g)  # ratios far enough from 1 that both clips bite
    ref = old + 0.3 * torch.randn(b, t, generator=g)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.2])
    for beta in (0.0, 0.1):
        loss, n_clip, _ = grpo.token_grpo_loss(new, old, adv, cmask, 0.2, 0.28, beta, ref)
        assert float(loss) == pytest.approx(naive_loss(new, old, adv, lengths, 0.2, 0.28, beta, ref), rel=1e-5)
        assert n_clip > 0
        # micro-batches normalised by the whole batch's token count add up to the full-batch loss
        parts = [grpo.token_grpo_loss(new[r], old[r], adv[r], cmask[r], 0.2, 0.28, beta, ref[r], cmask.sum())[0]
                 for r in (slice(0, 2), slice(2, 4))]
        assert float(sum(parts)) == pytest.approx(float(loss), rel=1e-6)


@pytest.fixture(scope="module")
def tiny_path():
    return resolve_backbone_name("tiny", "~/.cache/reaemb_ray")


def _lora():
    return load_config(None, []).reason.lora


def test_padded_logprobs_match_unpadded_forwards(tiny_path):
    model, tok = build_policy(tiny_path, _lora())
    prompts = [[5, 6, 7, 8, 9], [11, 12], [20, 21, 22]]
    comps = [[30, 31, 32], [40], [50, 51, 52, 53]]
    ids, mask, pos, cmask = grpo.pack(prompts, comps, tok.pad_token_id)
    with torch.no_grad():
        got = grpo.completion_logprobs(model, ids, mask, pos, cmask.shape[1], temperature=0.7)
        for i, (p, c) in enumerate(zip(prompts, comps)):
            logits = model(input_ids=torch.tensor([p + c])).logits[0].float() / 0.7
            want = F.log_softmax(logits[len(p) - 1:len(p) + len(c) - 1], -1)[torch.arange(len(c)), torch.tensor(c)]
            torch.testing.assert_close(got[i, :len(c)], want, atol=1e-4, rtol=1e-4)
            assert cmask[i].sum() == len(c)


def _batch(tok, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(5, 200, (n,), generator=g).tolist() for n in (6, 4)]
    comps = [[torch.randint(5, 200, (n,), generator=g).tolist() + [tok.eos_token_id] for n in (3, 5)],
             [torch.randint(5, 200, (n,), generator=g).tolist() for n in (7, 2)]]
    return {"prompt_ids": prompts, "completions": comps, "version": 0}


def test_learner_step_matches_a_reference_update(tiny_path):
    """GRPOLearner (DeepSpeed ZeRO-2, 2 micro-batches, clipping) == loop loss + clip_grad_norm + AdamW by hand."""
    from reaemb_ray.reasoning.learner import GRPOLearner

    cfg = load_config(None, ["reason.prompts_per_batch=2", "reason.group_size=2", "reason.micro_batch=2",
                             "reason.lr=0.01", "reason.warmup_steps=0", "reason.gradient_clipping=0.05",
                             "reason.max_staleness=1"]).reason
    learner = GRPOLearner(tiny_path, cfg, total_steps=10)
    ref_model, tok = build_policy(tiny_path, cfg.lora, seed=cfg.seed)  # same seed: the same initial adapter
    start = lora_state(ref_model)
    assert all(np.array_equal(start[k], v) for k, v in learner.state_dict().items())
    batch = _batch(tok)
    rewards = np.array([[1.0, 0.0], [0.2, 0.9]])
    out = learner.step(batch, rewards)

    adv = group_advantages(rewards).reshape(-1)
    prompts = [p for p in batch["prompt_ids"] for _ in range(2)]
    comps = [c for row in batch["completions"] for c in row]

    def logps(model):
        rows = []
        for p, c in zip(prompts, comps):
            logits = model(input_ids=torch.tensor([p + c])).logits[0].float() / cfg.temperature
            rows.append(F.log_softmax(logits[len(p) - 1:len(p) + len(c) - 1], -1)[torch.arange(len(c)), torch.tensor(c)])
        return rows

    with torch.no_grad():
        old = logps(ref_model)
    new = logps(ref_model)
    terms = []
    for i, row in enumerate(new):
        ratio = torch.exp(row - old[i])
        a = float(adv[i])
        terms.append(-torch.minimum(ratio * a, torch.clamp(ratio, 1 - cfg.clip_low, 1 + cfg.clip_high) * a))
    loss = torch.cat(terms).mean()  # token-level: every token of every reply weighs the same
    params = [p for p in ref_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, cfg.gradient_clipping)
    opt.step()

    assert out["loss"] == pytest.approx(loss.item(), rel=1e-4, abs=1e-6)
    assert out["tokens"] == sum(map(len, comps)) and out["version"] == 1 and out["staleness"] == 0
    got, want = learner.state_dict(), lora_state(ref_model)
    moved = max(np.abs(want[k] - start[k]).max() for k in want)
    assert moved > 1e-3  # the update did something
    # Adam's first step moves each entry by ~lr * g / (|g| + eps) = ~0.01; where |g| is near eps, accumulation-order
    # noise in g moves that entry by up to ~1e-4 (seen: 3e-5), still 100x below a wrong update
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=2e-4, rtol=1e-4)
    # a batch generated by version 0 arriving after version 1: its behaviour log-probs come from version 0
    out2 = learner.step(_batch(tok, seed=1), rewards)
    assert out2["staleness"] == 1 and out2["version"] == 2 and np.isfinite(out2["loss"])
    assert sorted(learner.adapters) == [1, 2]  # max_staleness 1: versions older than 2 - 1 are dropped
