"""The launch configs in cluster/ are valid for the tools that read them, and every actor a config in
configs/ asks for fits the machines those clusters can start.

AWS/GCP: the JSON schema that the installed Ray ships (ray/autoscaler/ray-schema.json), then Ray's own
`prepare_config` + `validate_config` -- what `ray up` runs before it talks to the cloud.
KubeRay: structure of the RayCluster/RayJob manifests (no CRD schema is available offline).
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from reaemb_ray.config import load_config

ROOT = Path(__file__).resolve().parents[2]
AUTOSCALER_YAMLS = [ROOT / "cluster" / "aws.yaml", ROOT / "cluster" / "gcp.yaml"]
KUBERAY = ROOT / "cluster" / "kuberay"
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


# ------------------------------------------------------------------------------- node types as capacities


def autoscaler_node_types(cfg: dict) -> dict[str, dict]:
    """worker node type -> {"CPU", "GPU", "max"}; the head is left out (it carries no actors)."""
    return {name: {"CPU": t["resources"].get("CPU", 0), "GPU": t["resources"].get("GPU", 0),
                   "max": t.get("max_workers", cfg["max_workers"])}
            for name, t in cfg["available_node_types"].items() if name != cfg["head_node_type"]}


def k8s_quantity(q) -> float:
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def kuberay_node_types(cluster_spec: dict) -> dict[str, dict]:
    """worker group -> {"CPU", "GPU", "max"}: Ray takes CPUs/GPUs from rayStartParams, else container limits."""
    out = {}
    for g in cluster_spec["workerGroupSpecs"]:
        limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        params = g.get("rayStartParams", {})
        out[g["groupName"]] = {"CPU": k8s_quantity(params.get("num-cpus", limits.get("cpu", 0))),
                               "GPU": k8s_quantity(params.get("num-gpus", limits.get("nvidia.com/gpu", 0))),
                               "max": g["maxReplicas"]}
    return out


def cluster_capacities() -> dict[str, dict[str, dict]]:
    caps = {p.name: autoscaler_node_types(load_yaml(p)) for p in AUTOSCALER_YAMLS}
    caps["kuberay/raycluster.yaml"] = kuberay_node_types(load_yaml(KUBERAY / "raycluster.yaml")["spec"])
    caps["kuberay/rayjob.yaml"] = kuberay_node_types(load_yaml(KUBERAY / "rayjob.yaml")["spec"]["rayClusterSpec"])
    return caps


# ------------------------------------------------------------------------------- what a config asks for


def stage_actor_requests(cfg) -> dict[str, list[tuple[str, float, float]]]:
    """stage -> [(actor, CPUs, GPUs)], every actor that must be alive at the same time in that stage.

    LRCL: Ray Train gives each worker cpus_per_worker CPUs and one GPU when use_gpu. Export: Ray Data
    actors with cpus_per_actor and one GPU each when use_gpu. CRRL: rollout, reward and learner actors
    from their resource sections, all at once (rollouts overlap learner steps)."""
    gpu = lambda on: 1.0 if on else 0.0  # noqa: E731
    c = cfg.crrl
    return {
        "lrcl": [("lrcl_worker", cfg.lrcl.cpus_per_worker, gpu(cfg.lrcl.use_gpu))] * cfg.lrcl.num_workers,
        "export": [("export_actor", cfg.export.cpus_per_actor, gpu(cfg.export.use_gpu))] * cfg.export.num_actors,
        "crrl": [("rollout", c.rollout_resources.num_cpus, c.rollout_resources.num_gpus)] * c.num_rollout_workers
        + [("reward", c.reward_resources.num_cpus, c.reward_resources.num_gpus)] * c.num_reward_workers
        + [("learner", c.learner_resources.num_cpus, c.learner_resources.num_gpus)],
    }


def place(actors: list[tuple[str, float, float]], node_types: dict[str, dict]) -> str | None:
    """First-fit-decreasing placement of `actors` on at most `max` nodes of each type, the way the
    autoscaler would have to provide them. Returns None when they all fit, else why not."""
    nodes: list[dict] = []  # free capacity of nodes started so far
    started = {name: 0 for name in node_types}
    for actor, cpu, gpu in sorted(actors, key=lambda a: (a[2], a[1]), reverse=True):
        node = next((n for n in nodes if n["CPU"] >= cpu and n["GPU"] >= gpu), None)
        if node is None:
            # start the smallest node type that fits (fewest GPUs first, so CPU actors avoid GPU machines)
            fitting = sorted((t for t, cap in node_types.items()
                              if cap["CPU"] >= cpu and cap["GPU"] >= gpu and started[t] < cap["max"]),
                             key=lambda t: (node_types[t]["GPU"], node_types[t]["CPU"]))
            if not fitting:
                return f"{actor} ({cpu} CPU, {gpu} GPU): no node type left that fits ({started} started)"
            started[fitting[0]] += 1
            node = dict(node_types[fitting[0]])
            nodes.append(node)
        node["CPU"] -= cpu
        node["GPU"] -= gpu
    return None


def test_placement_reference_cases():
    # the checker itself: a case that fits and two that must not
    types = {"gpu": {"CPU": 8, "GPU": 1, "max": 2}, "cpu": {"CPU": 8, "GPU": 0, "max": 1}}
    assert place([("a", 4, 1), ("b", 4, 1), ("r", 2, 0), ("r", 2, 0)], types) is None
    assert "c" in place([("a", 4, 1), ("b", 4, 1), ("c", 1, 1)], types)  # a third GPU
    assert place([("big", 16, 0)], types) is not None  # wider than any node


@pytest.mark.skipif(not CONFIGS, reason="no configs/*.yaml yet")
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
@pytest.mark.parametrize("cluster", ["aws.yaml", "gcp.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml"])
def test_every_stage_of_every_config_fits_the_cluster(config, cluster):
    # data.path may name a bucket or a folder of another machine; only resources matter here
    cfg = load_config(config, ["data.path=auto:ml-100k"])
    node_types = cluster_capacities()[cluster]
    for stage, actors in stage_actor_requests(cfg).items():
        why = place(actors, node_types)
        assert why is None, f"{config.name} stage {stage} cannot be scheduled on cluster/{cluster}: {why}"


def test_paper_config_needs_gpus_that_the_gpu_node_type_has():
    paper = ROOT / "configs" / "paper_gpu.yaml"
    if not paper.exists():
        pytest.skip("configs/paper_gpu.yaml not written yet")
    cfg = load_config(paper, ["data.path=auto:ml-100k"])
    crrl = stage_actor_requests(cfg)["crrl"]
    assert sum(g for _, _, g in crrl) >= 2, "the paper config should put rollout and learner on GPUs"
    for name, caps in cluster_capacities().items():
        gpu_types = [t for t, c in caps.items() if c["GPU"] >= 1]
        cpu_types = [t for t, c in caps.items() if c["GPU"] == 0]
        assert gpu_types and cpu_types, f"{name} needs a GPU and a CPU-only worker type"
        assert all(caps[t]["max"] >= 1 for t in gpu_types)


# ------------------------------------------------------------------------------- Ray autoscaler YAMLs


@pytest.mark.parametrize("path", AUTOSCALER_YAMLS, ids=lambda p: p.name)
def test_autoscaler_yaml_matches_rays_schema(path):
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cfg = load_yaml(path)
    jsonschema.validate(cfg, schema)
    # what `ray up` does before any cloud call: fill defaults, merge setup commands, validate
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cfg)))


@pytest.mark.parametrize("path", AUTOSCALER_YAMLS, ids=lambda p: p.name)
def test_autoscaler_yaml_node_types(path):
    cfg = load_yaml(path)
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] == "head" and set(types) == {"head", "gpu_worker", "cpu_worker"}
    assert types["head"]["resources"].get("GPU", 0) == 0
    assert types["gpu_worker"]["resources"]["GPU"] >= 1 and types["cpu_worker"]["resources"].get("GPU", 0) == 0
    for name in ("gpu_worker", "cpu_worker"):
        t = types[name]
        assert t["min_workers"] == 0 <= t["max_workers"], f"{name}: scale from zero"
        assert t["max_workers"] >= 1
    assert cfg["max_workers"] >= types["gpu_worker"]["max_workers"], "the global cap must not hide GPU nodes"
    # the package is installed from the mounted working tree on every node, vLLM only on GPU nodes, by the
    # install script (the pinned torch first), in a venv of the image's Python 3.12
    assert cfg["file_mounts"].get("~/reaemb-ray") == "."
    assert "bash ~/reaemb-ray/scripts/install.sh --base" in cfg["setup_commands"]
    assert any("scripts/install.sh --gpu" in c for c in types["gpu_worker"]["worker_setup_commands"])
    assert any("/usr/bin/python3 -m venv" in c for c in cfg["setup_commands"])
    # images with a driver for the CUDA 13.0 torch wheels (>= 580) on GPU nodes, Ubuntu 24.04 everywhere
    images = {name: t["node_config"].get("ImageId") or t["node_config"]["disks"][0]["initializeParams"]["sourceImage"]
              for name, t in types.items()}
    assert all("24.04" in i or "2404" in i for i in images.values()), images
    assert "nvidia-driver" in images["gpu_worker"] or "nvidia-580" in images["gpu_worker"], images
    ray_pins = [c for c in cfg["setup_commands"] if "ray[" in c]
    assert ray_pins and all(f"=={ray.__version__}" in c for c in ray_pins), "cluster Ray must equal the client's"
    for cmd in cfg["head_start_ray_commands"][1:] + cfg["worker_start_ray_commands"][1:]:
        assert "--metrics-export-port=8080" in cmd
    # nothing answers on the network without credentials: the dashboard/job API is on loopback (SSH tunnel)
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head


# ------------------------------------------------------------------------------- KubeRay


def check_ray_cluster_spec(spec: dict, where: str) -> None:
    assert spec["enableInTreeAutoscaling"] is True, f"{where}: autoscaling must be on"
    assert spec["rayVersion"] == ray.__version__, f"{where}: rayVersion must equal the installed Ray"
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", f"{where}: keep actors off the head"
    if head["rayStartParams"].get("dashboard-host") != "127.0.0.1":  # reachable from the pod network
        assert spec.get("authOptions") == {"mode": "token"}, f"{where}: a network-facing dashboard needs token auth"
    assert head["rayStartParams"]["metrics-export-port"] == "8080"
    ports = {p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert {6379, 8265, 8080} <= ports, f"{where}: head must expose GCS, dashboard and metrics ports"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"gpu-workers", "cpu-workers"}, where
    for name, g in groups.items():
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], f"{where}/{name}: min <= replicas <= max"
        assert g["maxReplicas"] >= 1
        c = g["template"]["spec"]["containers"][0]
        assert c["resources"]["requests"] == c["resources"]["limits"], f"{where}/{name}: guaranteed QoS"
        assert g["rayStartParams"]["metrics-export-port"] == "8080"
    assert k8s_quantity(groups["gpu-workers"]["template"]["spec"]["containers"][0]["resources"]["limits"]
                        ["nvidia.com/gpu"]) >= 1
    assert "nvidia.com/gpu" not in groups["cpu-workers"]["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_kuberay_raycluster():
    doc = load_yaml(KUBERAY / "raycluster.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    check_ray_cluster_spec(doc["spec"], "raycluster.yaml")


def test_kuberay_rayjob():
    doc = load_yaml(KUBERAY / "rayjob.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    spec = doc["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert "reaemb run --config configs/" in spec["entrypoint"]
    config = spec["entrypoint"].split("--config ")[1].split()[0]
    assert (ROOT / config).exists(), f"rayjob.yaml runs {config}, which is not in the repository"
    yaml.safe_load(spec["runtimeEnvYAML"])  # a YAML string inside YAML: parse it too
    check_ray_cluster_spec(spec["rayClusterSpec"], "rayjob.yaml")
    # the job's cluster is the long-lived cluster's worker layout
    assert spec["rayClusterSpec"]["workerGroupSpecs"] == load_yaml(KUBERAY / "raycluster.yaml")["spec"]["workerGroupSpecs"]


def test_kuberay_image_is_built_by_the_dockerfile():
    dockerfile = (ROOT / "cluster" / "docker" / "Dockerfile").read_text()
    assert f"rayproject/ray:{ray.__version__}-py312-gpu" in dockerfile  # Python >= 3.11, CUDA base
    assert "scripts/install.sh --gpu" in dockerfile and "COPY --chown=ray:users pyproject.toml README.md" in dockerfile
    for name in ("raycluster.yaml", "rayjob.yaml"):
        text = (KUBERAY / name).read_text()
        assert "reaemb-ray:latest" in text and "/home/ray/reaemb-ray" in dockerfile


def test_submit_script_is_valid_bash():
    import subprocess

    script = ROOT / "cluster" / "submit.sh"
    assert os.access(script, os.X_OK), "cluster/submit.sh must be executable"
    subprocess.run(["bash", "-n", str(script)], check=True)
    usage = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert usage.returncode == 2 and "submit" in usage.stdout
