"""Shared by the stage tests: a private local Ray per test module."""
import pytest
import ray


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()
