"""Choices by name follow one pattern: a registry and one entry point that validates the name and lists the
choices. The entries do what the functions they name do."""
import numpy as np
import pytest
import torch
from types import SimpleNamespace

from reaemb_ray.model.backbone import BACKBONES, resolve_backbone_name
from reaemb_ray.rl import advantages, objectives, rewards
from reaemb_ray.rl.engines import ENGINES, make_engine


def test_unknown_names_are_refused_with_the_choices():
    for call, choices in ((lambda: rewards.get("bogus"), rewards.REWARDS), (lambda: objectives.get("bogus"), objectives.OBJECTIVES),
                          (lambda: advantages.compute("bogus", np.zeros((2, 2))), advantages.ADVANTAGES)):
        with pytest.raises(KeyError) as e:
            call()
        assert all(name in str(e.value) for name in choices)
    with pytest.raises(ValueError, match="naive.*torch.*vllm"):
        make_engine("bogus", lm=None)
    assert set(ENGINES) == {"torch", "naive", "vllm"}


def test_rewards_by_name_read_their_sources():
    parts = {"cooccurrence": np.full((2, 3), 0.2, np.float32), "srs": np.full((2, 3), 0.6, np.float32)}
    weights = {"cooccurrence": 0.25, "srs": 0.75}
    assert rewards.sources_for("mix", weights) == ["cooccurrence", "srs"]
    assert rewards.sources_for("mix", {"cooccurrence": 1.0, "srs": 0.0}) == ["cooccurrence"]
    np.testing.assert_allclose(rewards.combine(parts, "mix", weights), 0.25 * 0.2 + 0.75 * 0.6, rtol=1e-6)
    np.testing.assert_array_equal(rewards.combine(parts, "srs", weights), parts["srs"])
    with pytest.raises(KeyError, match="needs the \\['srs'\\] candidates"):
        rewards.combine({"cooccurrence": parts["cooccurrence"]}, "srs", weights)


def test_the_gaussian_objective_by_name_is_the_gaussian_loss():
    torch.manual_seed(0)
    c = SimpleNamespace(clip_low=0.2, clip_high=0.28, kl_beta=0.0)
    mu_b, mu = torch.randn(4, 8), torch.randn(4, 8)
    actions = mu_b[:, None] + 0.3 * torch.randn(4, 5, 8)
    adv = torch.randn(4, 5)
    obj = objectives.get("gaussian")
    old = obj.behaviour(None, {"actions": actions, "mu": mu_b, "sigma": 0.3}, None, c)
    got = obj.loss(None, old, mu, adv, c)
    want = objectives.gaussian_loss(actions, mu, objectives.gaussian_logprob(actions, mu_b, 0.3), adv, 0.3, 0.2, 0.28)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    sigma = torch.tensor([0.1, 0.2, 0.3, 0.4])  # per item, as the rollout reports it when relative to |mu|
    old = obj.behaviour(None, {"actions": actions, "mu": mu_b, "sigma": sigma}, None, c)
    want = objectives.gaussian_loss(actions, mu, objectives.gaussian_logprob(actions, mu_b, sigma), adv, sigma, 0.2, 0.28)
    torch.testing.assert_close(obj.loss(None, old, mu, adv, c)[0], want[0])
    assert not obj.needs_lm and objectives.get("paper").needs_lm


def test_backbones_by_name_and_hf_names_pass_through(tmp_path):
    assert set(BACKBONES) == {"smollm2", "tiny"}
    assert resolve_backbone_name("Qwen/Qwen2.5-0.5B", tmp_path) == "Qwen/Qwen2.5-0.5B"
    assert resolve_backbone_name("/models/my-llm", tmp_path) == "/models/my-llm"
