"""Resume DeepSpeed checkpoints without unpickling arbitrary objects.

DeepSpeed's own loader calls `torch.load(weights_only=False)`, so a checkpoint file that someone could write
(a shared bucket, a copied output folder) would run code on resume. `load_checkpoint` swaps in a checkpoint
engine that loads with `weights_only=True`: tensors, containers and primitives, plus the three DeepSpeed
classes its ZeRO 0-2 checkpoints hold (listed below, found by loading fp32 and bf16 checkpoints of every stage
this project uses). Anything else in a file stops the resume with an error naming the file and the fix.
"""
from __future__ import annotations

import pickle
import re

from reaemb_ray.errors import InputError


def _deepspeed_globals() -> list:
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def weights_only_load(path: str, map_location=None):
    """`torch.load(path, weights_only=True)` with the DeepSpeed classes above allowed."""
    import torch

    try:
        with torch.serialization.safe_globals(_deepspeed_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        raise InputError(
            f"checkpoint file {path} holds Python objects other than tensors "
            f"({found.group(1) if found else 'an unsupported object'}), so it was not written by this project's "
            "DeepSpeed checkpoints; refusing to unpickle it. Delete that checkpoint folder (or pass --fresh) to start "
            "the stage over") from None


def load_checkpoint(engine, load_dir: str, **kwargs):
    """`engine.load_checkpoint(load_dir, **kwargs)` with every file read by `weights_only_load`."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            return weights_only_load(path, map_location)

    previous = engine.checkpoint_engine
    engine.checkpoint_engine = WeightsOnlyCheckpointEngine(engine._config)
    try:
        return engine.load_checkpoint(load_dir, **kwargs)
    finally:
        engine.checkpoint_engine = previous
