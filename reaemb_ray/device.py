"""The device rule: where an actor, task or stage computes, and in which dtype (no Ray import at module level).

Every stage and actor calls `placement(dtype_name)` once, where it runs, and puts its modules and every batch
tensor on the device it returns:
- inside a Ray task/actor, the device is what Ray gave it: `ray.get_gpu_ids()` non-empty -> `cuda:0` (Ray sets
  CUDA_VISIBLE_DEVICES to the assigned GPUs, so the first visible one is ours; a fractional GPU counts),
  empty -> `cpu`, even on a node with GPUs: an actor that did not ask for a GPU must not take one;
- outside Ray (the driver, `scripts/gpu_check.py`), `cpu` unless `want_gpu`, then the first visible GPU;
- a GPU that was asked for but that torch cannot see (CPU build of torch, no driver) is an error, not a silent
  fall back to CPU: the run would be 50x slower and nobody would notice.
The dtype is the configured one (`model.dtype`, `export.dtype`), refused early where the device cannot run it
(bfloat16 needs compute capability >= 8.0).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from reaemb_ray.model.backbone import to_dtype


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def backend(self) -> str:
        """torch.distributed backend for a process group of members on this kind of device."""
        return "nccl" if self.is_cuda else "gloo"


def choose_device(ray_gpu_ids: list | None, cuda_devices: int, want_gpu: bool = False,
                  visible: str | None = None) -> torch.device:
    """The rule itself, from plain facts (testable without a GPU).

    ray_gpu_ids: `ray.get_gpu_ids()` inside a Ray worker, None outside one; cuda_devices: what torch sees;
    visible: CUDA_VISIBLE_DEVICES, quoted in the error.
    """
    if ray_gpu_ids is not None:
        if not ray_gpu_ids:
            return torch.device("cpu")
        if cuda_devices < 1:
            raise RuntimeError(
                f"Ray gave this actor GPU(s) {list(ray_gpu_ids)} (CUDA_VISIBLE_DEVICES={visible!r}) but torch sees "
                f"no CUDA device (torch {torch.__version__}); install the CUDA build of torch on GPU nodes "
                "(scripts/install.sh --gpu) and check the NVIDIA driver (nvidia-smi)")
        return torch.device("cuda", 0)
    if not want_gpu:
        return torch.device("cpu")
    if cuda_devices < 1:
        raise RuntimeError(f"a GPU was asked for but torch {torch.__version__} sees none "
                           f"(CUDA_VISIBLE_DEVICES={visible!r}); run on a GPU machine with the CUDA build of torch")
    return torch.device("cuda", 0)


def check_dtype(dtype: torch.dtype, device: torch.device, capability: tuple[int, int] | None = None) -> None:
    """bfloat16 on a GPU older than Ampere (sm_80) would be emulated or fail: refuse it with the fix."""
    if device.type == "cuda" and dtype == torch.bfloat16 and capability is not None and capability < (8, 0):
        raise RuntimeError(f"bfloat16 needs a GPU of compute capability >= 8.0 (Ampere or newer); this one is "
                           f"{capability[0]}.{capability[1]}: set model.dtype=float16 (or float32)")


def ray_gpu_ids() -> list | None:
    """The GPU ids Ray assigned to the calling task/actor, or None when not running inside a Ray worker."""
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    if ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return None  # the driver: Ray assigned it nothing
    return list(ray.get_gpu_ids())


def placement(dtype_name: str = "float32", want_gpu: bool = False) -> Placement:
    """Device and dtype for the calling process (see the module docstring): call it where the work runs."""
    device = choose_device(ray_gpu_ids(), torch.cuda.device_count(), want_gpu,
                           os.environ.get("CUDA_VISIBLE_DEVICES"))
    dtype = to_dtype(dtype_name)
    check_dtype(dtype, device, torch.cuda.get_device_capability(device) if device.type == "cuda" else None)
    return Placement(device, dtype)


def to_device(batch: dict, device: torch.device) -> dict:
    """Every tensor of a batch dict on `device` (other values passed through)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
