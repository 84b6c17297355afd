"""Every tensor of a CRRL learner step lives on the engine's device (the real DeepSpeed learner on CPU), and the
batch preparation moves every input (checked on the meta device, where a forgotten tensor would stay on CPU)."""
import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from reaemb_ray.config import load_config
from reaemb_ray.device import Placement
from reaemb_ray.rl.learner import Learner, deepspeed_config, learner_inputs
from reaemb_ray.rl.policy import load_item_texts, prepare_base
from reaemb_ray.rl.rollout import Rollout
from reaemb_ray.rl.synthetic import write_synthetic_prepared


class DeviceRecorder(TorchDispatchMode):
    """The device of every tensor that enters or leaves an aten op while active."""

    def __init__(self):
        super().__init__()
        self.devices: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten((args, kwargs, out))[0]:
            if isinstance(t, torch.Tensor):
                self.devices.add(str(t.device))
        return out


@pytest.fixture(scope="module")
def base_and_batch(tmp_path_factory):
    d = tmp_path_factory.mktemp("learner")
    prep = write_synthetic_prepared(d / "prepared", clusters=2, per_cluster=3)
    cfg = load_config(None, [f"output_dir={d}", "model.backbone=tiny", "crrl.init_from=backbone",
                             "crrl.objective=paper", "crrl.kl_beta=0.1", "crrl.warmup_steps=1"])
    base = str(prepare_base(cfg, d / "crrl" / "base", None))
    ro = Rollout(base, load_item_texts(prep), "torch", 4, 0.5, True, "beauty", 128)
    batch = ro.rollout([1, 2, 5, 6], {}, seed=0)
    rewards = np.random.default_rng(0).random((4, 4)).astype(np.float32)
    return cfg, base, batch, rewards


def test_learner_inputs_all_on_the_given_device(base_and_batch):
    _, _, batch, rewards = base_and_batch
    x = learner_inputs(batch, rewards, "grpo", torch.device("meta"))
    assert set(x) == {"hidden", "attention_mask", "position_ids", "actions", "mu", "advantages", "input_ids", "sigma"}
    assert all(v.device.type == "meta" for v in x.values())


def test_learner_step_tensors_on_engine_device(base_and_batch):
    cfg, base, batch, rewards = base_and_batch
    learner = Learner(base, cfg.crrl, total_steps=2, dtype="float32",
                      where=Placement(torch.device("cpu"), torch.float32))
    assert learner.engine.device == learner.device == torch.device("cpu")
    assert {p.device for p in learner.engine.module.parameters()} == {learner.device}
    assert {p.device for p in learner.lm.parameters()} == {learner.device}  # paper objective: the LM scores
    before = {k: v.copy() for k, v in learner.state_dict().items()}
    with DeviceRecorder() as rec:
        out = learner.step(batch, rewards)
    assert rec.devices == {str(learner.device)}
    assert np.isfinite(out["loss"]) and out["version"] == 1
    assert any(np.abs(learner.state_dict()[k] - before[k]).max() > 0 for k in before)  # it trained


def test_deepspeed_config_has_the_weights_precision():
    assert deepspeed_config(2, torch.bfloat16)["bf16"] == {"enabled": True}
    assert deepspeed_config(2, torch.bfloat16)["fp16"] == {"enabled": False}
    assert deepspeed_config(0, torch.float16)["fp16"] == {"enabled": True}
    cfg = deepspeed_config(1, torch.float32)
    assert not cfg["bf16"]["enabled"] and not cfg["fp16"]["enabled"] and cfg["zero_optimization"]["stage"] == 1


@pytest.mark.parametrize("target_kl, factor", [(1e6, 1.5), (1e-12, 1 / 1.5)])
def test_kl_adaptive_lr_takes_effect_at_once_and_resumes(base_and_batch, tmp_path, target_kl, factor):
    """After a batch far under (over) the target KL the next update's lr is 1.5x larger (smaller), and a
    checkpoint brings that lr back."""
    from dataclasses import replace

    cfg, base, batch, rewards = base_and_batch
    crrl = replace(cfg.crrl, lr_schedule="kl_adaptive", target_kl=target_kl, warmup_steps=0)
    cpu = Placement(torch.device("cpu"), torch.float32)
    learner = Learner(base, crrl, total_steps=2, dtype="float32", where=cpu)
    lr = lambda lrn: lrn.sched.optimizer.param_groups[0]["lr"]  # noqa: E731  what the next update uses
    assert lr(learner) == pytest.approx(crrl.lr)
    out = learner.step(batch, rewards)
    assert out["updates"] >= 1 and (out["kl"] < target_kl / 2 if factor > 1 else out["kl"] > 2 * target_kl)
    assert lr(learner) == pytest.approx(crrl.lr * factor)
    learner.save(str(tmp_path / "ckpt"), {})
    resumed = Learner(base, crrl, total_steps=2, dtype="float32", where=cpu)
    resumed.load(str(tmp_path / "ckpt"))
    assert resumed.schedule.scale == pytest.approx(factor) and lr(resumed) == pytest.approx(crrl.lr * factor)
