"""The device rule: the device an actor got from Ray, the dtype from the config (CPU machine; Ray is told it
has one GPU so the GPU branch of the rule runs for real and must refuse a CUDA-less torch)."""
import pytest
import ray
import torch

from reaemb_ray.device import Placement, check_dtype, choose_device, placement, to_device


def test_rule_inside_ray():
    assert choose_device([], cuda_devices=8) == torch.device("cpu")  # no GPU asked for: never take one
    assert choose_device(["3"], cuda_devices=1) == torch.device("cuda", 0)  # Ray narrowed CUDA_VISIBLE_DEVICES
    assert choose_device([0], cuda_devices=2) == torch.device("cuda", 0)
    with pytest.raises(RuntimeError, match="Ray gave this actor GPU.*CUDA build of torch"):
        choose_device([0], cuda_devices=0, visible="0")


def test_rule_outside_ray():
    assert choose_device(None, cuda_devices=4) == torch.device("cpu")  # the driver stays on CPU unless asked
    assert choose_device(None, cuda_devices=4, want_gpu=True) == torch.device("cuda", 0)
    with pytest.raises(RuntimeError, match="a GPU was asked for"):
        choose_device(None, cuda_devices=0, want_gpu=True)


def test_dtype_from_config_and_capability():
    p = placement("bfloat16")
    assert p == Placement(torch.device("cpu"), torch.bfloat16) and p.backend == "gloo" and not p.is_cuda
    assert placement("float16").dtype == torch.float16 and placement().dtype == torch.float32
    assert Placement(torch.device("cuda", 0), torch.float32).backend == "nccl"
    with pytest.raises(ValueError, match="unknown dtype"):
        placement("float64")
    with pytest.raises(RuntimeError, match="compute capability >= 8.0.*float16"):
        check_dtype(torch.bfloat16, torch.device("cuda", 0), (7, 5))  # a T4
    check_dtype(torch.bfloat16, torch.device("cuda", 0), (8, 6))  # an A10G
    check_dtype(torch.float16, torch.device("cuda", 0), (7, 5))


def test_to_device_moves_every_tensor():
    batch = {"a": torch.zeros(2), "b": torch.ones(2, dtype=torch.long), "n": 3}
    out = to_device(batch, torch.device("meta"))
    assert out["a"].device.type == "meta" and out["b"].device.type == "meta" and out["n"] == 3


@ray.remote
def _placement_in_task(dtype):
    return str(placement(dtype).device)


@pytest.fixture(scope="module")
def ray_with_a_gpu():
    ray.init(address="local", num_cpus=1, num_gpus=1, include_dashboard=False)
    yield
    ray.shutdown()


def test_rule_in_real_ray_tasks(ray_with_a_gpu):
    assert ray.get(_placement_in_task.options(num_gpus=0).remote("float32")) == "cpu"
    assert placement().device == torch.device("cpu")  # the driver
    # Ray hands this task GPU 0, but this torch has no CUDA: a clear error, not a silent CPU run
    with pytest.raises(ray.exceptions.RayTaskError, match="Ray gave this actor GPU"):
        ray.get(_placement_in_task.options(num_gpus=0.5).remote("float32"))
