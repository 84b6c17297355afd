"""The learner's lr schedules (reaemb_ray/rl/step_size.py): the formulas, the registry, and that LambdaLR's
state_dict carries the adaptive state (the checkpoint resumes it)."""
import math

import pytest
import torch

from reaemb_ray.rl import step_size
from reaemb_ray.rl.step_size import Cosine, KLAdaptive


def test_cosine_warms_up_linearly_then_decays_to_zero():
    m = Cosine(warmup=4, total=12)
    assert [m(u) for u in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert m(4) == 1.0 and m(8) == pytest.approx(0.5) and m(12) == pytest.approx(0.0) and m(100) == pytest.approx(0.0)
    assert m(6) == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 8)))


def test_kl_adaptive_moves_the_step_size_towards_the_target_band():
    m = KLAdaptive(warmup=0, target_kl=0.5)
    m.observe(0.1)  # under target / 2: larger steps
    assert m(0) == pytest.approx(1.5)
    m.observe(0.3)
    m.observe(0.9)  # inside [target / 2, 2 * target]: unchanged
    assert m(5) == pytest.approx(1.5)
    m.observe(1.2)  # over 2 * target: smaller
    m.observe(float("nan"))  # a batch without a measurable KL changes nothing
    assert m(5) == pytest.approx(1.0)
    for _ in range(50):
        m.observe(100.0)
    assert m(5) == pytest.approx(KLAdaptive.low)  # clamped
    for _ in range(100):
        m.observe(0.0)
    assert m(5) == pytest.approx(KLAdaptive.high)


def test_kl_adaptive_keeps_the_warmup():
    m = KLAdaptive(warmup=4, target_kl=0.5)
    m.observe(0.0)
    assert [m(u) for u in (0, 1, 3, 9)] == pytest.approx([0.375, 0.75, 1.5, 1.5])


def test_make_validates():
    assert isinstance(step_size.make("cosine", 2, 10), Cosine)
    assert isinstance(step_size.make("kl_adaptive", 2, 10, target_kl=0.5), KLAdaptive)
    with pytest.raises(ValueError, match="target KL > 0"):
        step_size.make("kl_adaptive", 2, 10, target_kl=0.0)
    with pytest.raises(KeyError, match="unknown lr schedule 'linear'"):
        step_size.make("linear", 2, 10)


def test_lambda_lr_state_dict_carries_the_adaptive_scale():
    def scheduler(schedule):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        return torch.optim.lr_scheduler.LambdaLR(opt, schedule)

    trained = KLAdaptive(warmup=0, target_kl=0.5)
    sched = scheduler(trained)
    trained.observe(0.0)
    trained.observe(0.0)
    resumed = KLAdaptive(warmup=0, target_kl=0.5)
    scheduler(resumed).load_state_dict(sched.state_dict())
    assert resumed.scale == pytest.approx(2.25) and resumed(3) == trained(3)
