"""lrcl.contrast=batch: gradient caching gives the gradient of the loss over the whole optimiser batch.

Checked against the direct computation under DeepSpeed itself (world of one, CPU): one SGD step through
`_whole_batch_step` with 2 accumulated micro-batches of 3 items must land on the same parameters (LoRA,
thought attention, temperature) as one step on the plain loss over all 6 items in a single forward.
Runs in a subprocess: DeepSpeed's process group would otherwise outlive the test in pytest's process.
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])

SCRIPT = textwrap.dedent('''
    import copy, sys
    import torch
    from reaemb_ray.config import LRCLConfig, ModelConfig
    from reaemb_ray.data.prompts import item_prompt
    from reaemb_ray.losses import contrastive_loss
    from reaemb_ray.model import build_embedder, tokenize_prompts
    from reaemb_ray.rl.learner import init_single_process_distributed
    from reaemb_ray.stages.lrcl import _whole_batch_step
    import deepspeed

    cache, similarity = sys.argv[1], sys.argv[2]
    mc = ModelConfig(backbone="tiny", max_length=96, pooling="item")
    mc.lora.dropout = 0.0
    torch.manual_seed(0)
    module, tok, _ = build_embedder(mc, cache, tau_init=0.5)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in module.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    attrs = [f"title is item {i}; brand is B{i % 3}; categories is C{i % 2}" for i in range(6)]
    views = [(a, a.split("; ")[0]) for a in attrs]
    def batch(vs):
        prompts = [item_prompt(tok, v[0], "item") for v in vs] + [item_prompt(tok, v[1], "item") for v in vs]
        return tokenize_prompts(tok, prompts, 96, "item", "item")
    init_single_process_distributed()
    def engine_for(m, micro, gas):
        params = [p for p in m.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.5)
        cfg = {"train_batch_size": micro * gas, "train_micro_batch_size_per_gpu": micro,
               "gradient_accumulation_steps": gas, "zero_optimization": {"stage": 2},
               "zero_allow_untested_optimizer": True, "steps_per_print": 10**9}
        return deepspeed.initialize(model=m, model_parameters=params, optimizer=opt, config=cfg)[0]
    a, b = copy.deepcopy(module), copy.deepcopy(module)
    ea, eb = engine_for(a, 3, 2), engine_for(b, 6, 1)
    lc = LRCLConfig(similarity=similarity, contrast="batch", micro_batch_size=3, batch_size=6, num_workers=1)
    loss_a = _whole_batch_step(ea, [batch(views[:3]), batch(views[3:])], [1, 2], [3, 3], lambda: ea.module.tau(), lc, 1)
    emb = eb(batch(views))
    loss_b = contrastive_loss(emb[:6], emb[6:], eb.module.tau(), similarity)
    eb.backward(loss_b)
    eb.step()
    assert abs(loss_a - loss_b.item()) < 1e-4, (loss_a, loss_b.item())
    moved = 0
    for (n, pa), pb, p0 in zip(a.named_parameters(), b.parameters(), module.parameters()):
        if pa.requires_grad:
            assert torch.allclose(pa, pb, atol=2e-5, rtol=1e-4), (n, (pa - pb).abs().max())
            moved += int((pa - p0).abs().max() > 1e-4)
    assert moved > 3, moved  # the step really changed LoRA, attention and tau
    print("OK", loss_a, moved)
''')


def _run(tmp_path, similarity):
    script = tmp_path / "check.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "cache"), similarity], capture_output=True,
                       text=True, timeout=600, env=env)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout[-2000:] + r.stderr[-4000:]


def test_whole_batch_gradient_caching_equals_one_big_batch_dot(tmp_path):
    _run(tmp_path, "dot")


def test_whole_batch_gradient_caching_equals_one_big_batch_centered_cosine(tmp_path):
    _run(tmp_path, "centered_cosine")
