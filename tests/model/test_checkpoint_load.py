"""DeepSpeed checkpoints resume without unpickling: real ZeRO 0/2 checkpoints (fp32, bf16) load, a file that
would run code does not (and the code does not run)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from reaemb_ray.checkpoint_load import load_checkpoint
from reaemb_ray.errors import InputError


@pytest.fixture(scope="module")
def distributed():
    from reaemb_ray.rl.learner import init_single_process_distributed

    if not torch.distributed.is_initialized():
        init_single_process_distributed()


def _engine(stage: int, bf16: bool):
    import deepspeed

    torch.manual_seed(0)
    m = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    cfg = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": stage}, "gradient_clipping": 1.0,
           "zero_allow_untested_optimizer": True, "bf16": {"enabled": bf16}}
    engine, _, _, _ = deepspeed.initialize(model=m, optimizer=opt, lr_scheduler=sched, config=cfg)
    return engine


def _step(engine):
    x = torch.ones(2, 4, dtype=next(engine.module.parameters()).dtype)
    engine.backward(engine(x).float().sum())
    engine.step()


@pytest.mark.parametrize("stage,bf16", [(0, False), (2, False), (1, True), (2, True)])
def test_real_checkpoints_resume_weights_only(distributed, tmp_path, stage, bf16):
    a = _engine(stage, bf16)
    for _ in range(2):
        _step(a)
    a.save_checkpoint(str(tmp_path), tag="state", client_state={"version": 2, "steps": 2})
    b = _engine(stage, bf16)
    _, client = load_checkpoint(b, str(tmp_path), tag="state")
    assert client["version"] == 2 and client["steps"] == 2
    for pa, pb in zip(a.module.parameters(), b.module.parameters()):
        assert torch.equal(pa, pb)
    _step(a), _step(b)  # optimizer state and schedule resumed too: the next step is the same
    for pa, pb in zip(a.module.parameters(), b.module.parameters()):
        assert torch.equal(pa, pb)


class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused(distributed, tmp_path):
    a = _engine(2, False)
    _step(a)
    a.save_checkpoint(str(tmp_path), tag="state")
    marker = tmp_path / "code-ran"
    optim = next(Path(tmp_path, "state").glob("*optim_states.pt"))
    torch.save({"optimizer_state_dict": _RunsCode(str(marker))}, optim)
    with pytest.raises(InputError, match=r"optim_states.pt holds Python objects other than tensors \(posix.system"
                                         r"\).*--fresh"):
        load_checkpoint(_engine(2, False), str(tmp_path), tag="state")
    assert not marker.exists()
