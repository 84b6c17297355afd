"""Rollout engines agree with the naive two-pass forward (torch prefix reuse and vLLM)."""
import pytest
import torch

from reaemb_ray.config import load_config
from reaemb_ray.rl.engines import make_engine
from reaemb_ray.rl.policy import prepare_base
from reaemb_ray.rl.rollout import Rollout
from reaemb_ray.rl.synthetic import write_synthetic_prepared
from reaemb_ray.rl.policy import load_item_texts


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("eng")
    prep = write_synthetic_prepared(d / "prepared", clusters=2, per_cluster=3)
    cfg = load_config(None, [f"output_dir={d}", "model.backbone=tiny", "crrl.init_from=backbone"])
    return str(prepare_base(cfg, d / "crrl" / "base", None)), load_item_texts(prep)


def _outputs(base, engine_name):
    """Reference (naive) and `engine_name` outputs on the same batch and noise; also with `last` pooling (the EOS
    state alone: the batch's pool weights swapped) and the first batch once more."""
    path, texts = base
    ro = Rollout(path, texts, "naive", 4, 0.5, True, "beauty", 128)
    batch = ro.tokenize([1, 2, 5, 6])
    last = dict(batch, pool_weights=torch.zeros_like(batch["pool_weights"]))
    last["pool_weights"][:, -1] = 1.0
    ref_p1 = ro.engine.pass1(batch)
    mu = ref_p1.latent_thought(ro.attn)
    thoughts = mu[:, None] + 0.5 * torch.randn(4, 3, mu.shape[1], generator=torch.Generator().manual_seed(0))
    eng = make_engine(engine_name, ro.lm, path, 128)
    try:
        p1 = eng.pass1(batch)
        mine = p1.latent_thought(ro.attn)[:, None] + (thoughts - mu[:, None])
        r = {"ref_p1": ref_p1, "ref": ro.engine.embed(ref_p1, batch, thoughts), "p1": p1,
             "out": eng.embed(p1, batch, mine), "computed": getattr(eng, "pass2_computed", None),
             "block": getattr(eng, "block_size", None)}
        # the same prompts again with `last` pooling, both passes on that batch (as a rollout calls them): vLLM
        # finds more of them cached, the states are the same
        r.update(ref_last=ro.engine.embed(ro.engine.pass1(last), last, thoughts),
                 out_last=eng.embed(eng.pass1(last), last, mine), again=eng.embed(p1, batch, mine))
        return r
    finally:
        if hasattr(eng, "close"):
            eng.close()  # vLLM engine processes: stop them now, not in an atexit hook after pytest closed its logs


def _agree(r, tol):
    m = r["ref_p1"].attention_mask[:, :-2].bool()  # real prefix positions (padding states are never read)
    torch.testing.assert_close(r["p1"].hidden[m], r["ref_p1"].hidden[m], atol=tol, rtol=tol)
    torch.testing.assert_close(r["out"], r["ref"], atol=tol, rtol=tol)
    torch.testing.assert_close(r["out_last"], r["ref_last"], atol=tol, rtol=tol)
    torch.testing.assert_close(r["again"], r["out"], atol=1e-5, rtol=1e-5)
    assert (r["out_last"] - r["out"]).abs().max() > 1e-3  # the pooling really changed


def test_torch_prefix_reuse_matches_naive(base):
    _agree(_outputs(base, "torch"), 1e-4)


@pytest.mark.vllm
def test_vllm_engine_matches_naive(base):
    r = _outputs(base, "vllm")
    _agree(r, 1e-3)
    # pass 2 read pass 1's cached blocks: vLLM computed under one block of prefix plus the two tail tokens
    lengths = r["ref_p1"].attention_mask.sum(1).repeat_interleave(3).tolist()
    assert min(lengths) > r["block"] + 2  # every prompt has a full block to reuse
    assert all(2 <= c < r["block"] + 2 and c < n for c, n in zip(r["computed"], lengths)), (r["computed"], lengths)


def test_vllm_memory_share_fits_the_actors_on_its_gpu():
    from reaemb_ray.config import ConfigError
    from reaemb_ray.rl.engines import vllm_memory_share

    assert vllm_memory_share(0.0, 1.0) == 0.9  # a GPU of its own: vLLM's usual share
    assert vllm_memory_share(0.0, 0.5) == 0.45  # beside a learner at 0.5: its half, less a margin
    assert vllm_memory_share(0.3, 1.0) == 0.3  # configured
    assert vllm_memory_share(0.0, 0.0) == 0.9  # CPU build: ignored
    with pytest.raises(ConfigError, match="more than the GPU share Ray gives each rollout worker"):
        load_config(None, ["crrl.vllm_gpu_memory_utilization=0.8", "crrl.rollout_resources.num_gpus=0.5"])
    with pytest.raises(ConfigError, match=r"crrl.vllm_gpu_memory_utilization must be >= 0 and <= 1"):
        load_config(None, ["crrl.vllm_gpu_memory_utilization=1.5"])
