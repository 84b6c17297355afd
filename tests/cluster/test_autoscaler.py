"""The shipped node types under Ray's real autoscaler, on CPU: a run makes it add the node types its stages ask
for, and the nodes go away once idle.

Ray's fake multi-node provider (`provider: {type: fake_multinode}`, `RAY_FAKE_CLUSTER=1`, what
`ray.cluster_utils.AutoscalingCluster` uses) runs the real autoscaler (v1, the monitor on the head) and launches
each "node" as a real raylet on this machine. The provider config is written here (`AutoscalingCluster.start()`
runs `ray stop --force`, which would stop every Ray on the machine): the worker node types of cluster/aws.yaml,
read from the file, GPUs as the custom resource `gpu_slot` (`ray.gpu_stand_in`), CPUs scaled by CPU_SCALE; a
head with 0 CPUs and zero workers; the files' idle timeout scaled down to IDLE_TIMEOUT_S. The KubeRay
RayCluster's worker groups scale to the same node types (checked below), so this one run stands for both.

The run is `reaemb run --config configs/ci.yaml eval.methods=[crrl]` (prepare, LRCL, CRRL, one export,
evaluate: every stage that uses the cluster) with the GPU requests of configs/paper_gpu.yaml (LRCL workers,
export actors, rollout workers and learner on GPUs; reward workers on CPUs). Every process the test starts
carries a tag in its environment; teardown kills exactly those.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from reaemb_ray.config import ConfigError, load_config
from reaemb_ray.faults import tagged
from reaemb_ray.runtime import free_port, gpu_options

ROOT = Path(__file__).resolve().parents[2]
# the node types as test_cluster_configs reads them from the launch files (tests/ is not a package)
_spec = importlib.util.spec_from_file_location("cluster_configs", Path(__file__).with_name("test_cluster_configs.py"))
_configs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_configs)
autoscaler_node_types, kuberay_node_types, load_yaml = (_configs.autoscaler_node_types, _configs.kuberay_node_types,
                                                        _configs.load_yaml)
RAY = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
STAND_IN = "gpu_slot"
CPU_SCALE = 0.25  # an 8-CPU node type becomes a 2-CPU node here (this machine has 2 cores)
IDLE_TIMEOUT_S = 20.0  # cluster/aws.yaml: 10 minutes, KubeRay: 600 s
HEAD_TYPE = "ray.head.default"  # the fake provider tags its head with this type
TAG = "REAEMB_AUTOSCALER_TEST"
# The CI run's stages that use the cluster, once each: LRCL, CRRL, one export. The full CI plan adds two exports
# on the same node types and evaluates four tables in the driver (one such run: 436 s, 275 s of it evaluating).
STAGES = ["eval.methods=[crrl]"]
# CRRL's rollout pool may grow from 1 to 2 workers: a second GPU worker does not fit the two GPU nodes the
# learner and the first rollout worker hold, so the autoscaler has to add a node for it. 64 steps (of 8 items):
# at 16 (about 6 s) the run ended before the node (7 s after the request) and the worker were up;
# scale_up_after=1: the rollout-bound run asks at once.
CRRL_STEPS = 64
ELASTIC_CRRL = ["crrl.max_items=128", "crrl.epochs=4", "crrl.num_rollout_workers=1", "crrl.max_rollout_workers=2",
                "crrl.scale_up_after=1"]


# ------------------------------------------------------------------------------- the cluster description


def fake_node_types(types: dict[str, dict]) -> dict[str, dict]:
    """Worker node types ({"CPU", "GPU", "max"}) as fake-provider node types: GPUs become STAND_IN."""
    out = {}
    for name, t in types.items():
        res = {"CPU": max(1, math.floor(t["CPU"] * CPU_SCALE)), "object_store_memory": 150 * 2**20}
        if t["GPU"]:
            res[STAND_IN] = t["GPU"]
        out[name] = {"resources": res, "node_config": {}, "min_workers": 0, "max_workers": t["max"]}
    return out


def provider_config(gcs_address: str) -> dict:
    aws = load_yaml(ROOT / "cluster" / "aws.yaml")
    nodes = fake_node_types(autoscaler_node_types(aws))
    nodes[HEAD_TYPE] = {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0}
    return {
        "cluster_name": "reaemb-autoscaler-test", "max_workers": aws["max_workers"], "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_TIMEOUT_S / 60,
        # launch_multiple: without it the fake provider starts one node when the autoscaler asks for several
        "provider": {"type": "fake_multinode", "gcs_address": gcs_address, "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True, "launch_multiple": True},
        "auth": {"ssh_user": "ubuntu"}, "available_node_types": nodes, "head_node_type": HEAD_TYPE,
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [],
        "rsync_filter": [], "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


def gpu_overrides() -> list[str]:
    """The GPU requests of configs/paper_gpu.yaml, for the CI run (ray.gpu_stand_in turns them into STAND_IN)."""
    paper = load_config(ROOT / "configs" / "paper_gpu.yaml", ["data.path=auto:ml-100k"])
    c = paper.crrl
    return [f"lrcl.use_gpu={str(paper.lrcl.use_gpu).lower()}", f"export.use_gpu={str(paper.export.use_gpu).lower()}",
            *(f"crrl.{role}_resources.num_gpus={getattr(c, role + '_resources').num_gpus:g}"
              for role in ("rollout", "reward", "learner"))]


def test_the_kuberay_groups_are_the_same_node_types():
    aws = fake_node_types(autoscaler_node_types(load_yaml(ROOT / "cluster" / "aws.yaml")))
    kube = fake_node_types(kuberay_node_types(load_yaml(ROOT / "cluster" / "kuberay" / "raycluster.yaml")["spec"]))
    assert {k.replace("-workers", "_worker"): v for k, v in kube.items()} == aws
    assert load_yaml(ROOT / "cluster" / "aws.yaml")["idle_timeout_minutes"] * 60 == \
        load_yaml(ROOT / "cluster" / "kuberay" / "raycluster.yaml")["spec"]["autoscalerOptions"]["idleTimeoutSeconds"]


def test_the_provider_config_matches_rays_schema():
    import jsonschema
    import ray

    cfg = provider_config("127.0.0.1:6379")
    jsonschema.validate(cfg, json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text()))
    assert cfg["available_node_types"]["gpu_worker"]["resources"] == {"CPU": 2, STAND_IN: 1,
                                                                       "object_store_memory": 150 * 2**20}
    assert cfg["available_node_types"]["cpu_worker"]["resources"] == {"CPU": 2, "object_store_memory": 150 * 2**20}
    assert cfg["available_node_types"][HEAD_TYPE] == {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0}


def test_the_paper_config_asks_gpus_of_the_gpu_stages():
    # the mapping below is only meaningful if the paper config puts these on GPUs and the rewards on CPUs
    o = dict(x.split("=") for x in gpu_overrides())
    assert o == {"lrcl.use_gpu": "true", "export.use_gpu": "true", "crrl.rollout_resources.num_gpus": "1",
                 "crrl.reward_resources.num_gpus": "0", "crrl.learner_resources.num_gpus": "1"}


def test_gpu_stand_in_replaces_gpu_requests():
    ray_cfg = load_config(None, [f"ray.gpu_stand_in={STAND_IN}"]).ray
    assert gpu_options(1, ray_cfg) == {"num_gpus": 0, "resources": {STAND_IN: 1}}
    assert gpu_options(0.5, ray_cfg) == {"num_gpus": 0, "resources": {STAND_IN: 0.5}}
    assert gpu_options(0, ray_cfg) == {"num_gpus": 0}
    assert gpu_options(1, load_config(None, []).ray) == {"num_gpus": 1}
    with pytest.raises(ConfigError, match="ray.gpu_stand_in='GPU'"):
        load_config(None, ["ray.gpu_stand_in=GPU"])
    from reaemb_ray import runtime
    from reaemb_ray.fit import group
    from reaemb_ray.stages.crrl_pools import worker_request

    with pytest.raises(ValueError, match="an embedded local Ray has none"):
        runtime.init_ray(ray_cfg)  # refused before Ray starts
    # the fit check and the elastic pools count and ask for the stand-in as the actors do
    paper = load_config(ROOT / "configs" / "paper_gpu.yaml", ["data.path=auto:ml-100k", f"ray.gpu_stand_in={STAND_IN}"])
    assert worker_request(paper.crrl.rollout_resources, paper.ray) == {"CPU": 4.0, "GPU": 0, STAND_IN: 1.0}
    assert runtime._GPU_STAND_IN == [STAND_IN]  # recorded by init_ray above
    try:
        assert runtime._bundles({"the learner": group(1, paper.crrl.learner_resources)}) == [{"CPU": 4.0, STAND_IN: 1.0}]
        assert runtime._resources({"CPU": 2.0, STAND_IN: 3.0})["GPU"] == 3.0
    finally:
        runtime._GPU_STAND_IN[0] = ""


# ------------------------------------------------------------------------------- a cluster of our own


@pytest.fixture
def autoscaling_cluster(tmp_path_factory):
    tag = secrets.token_hex(4)
    base = Path(f"/tmp/ras-{tag}")  # short: Ray's socket paths must stay under 108 bytes
    base.mkdir()
    port = free_port()
    from ray._private.services import get_node_ip_address

    address = f"{get_node_ip_address()}:{port}"
    (base / "autoscaler.yaml").write_text(yaml.safe_dump(provider_config(address)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # every node's workers import this checkout; token auth with a token of our own (not ~/.ray/auth_token)
    env.update({TAG: tag, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": secrets.token_hex(32), "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"})
    log = open(base / "head.log", "w")
    head = subprocess.Popen([RAY, "start", "--head", "--block", "--disable-usage-stats", f"--port={port}",
                             "--num-cpus=0", f"--autoscaling-config={base / 'autoscaler.yaml'}",
                             f"--temp-dir={base / 'ray'}", "--include-dashboard=false",
                             f"--ray-client-server-port={free_port()}", "--object-store-memory=150000000"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        monitor_log = _wait_for_monitor(base, head)
        yield address, env, monitor_log
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the head's processes
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.kill()
        for pid in tagged(TAG, tag):  # what outlived it: fake nodes, their workers
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
        shutil.rmtree(base, ignore_errors=True)


def _wait_for_monitor(base: Path, head: subprocess.Popen) -> Path:
    deadline = time.time() + 120
    while time.time() < deadline and head.poll() is None:
        logs = list((base / "ray").glob("session_*/logs/monitor.log"))
        if logs and "The autoscaler took" in logs[0].read_text():  # one update done: GCS and autoscaler are up
            return logs[0]
        time.sleep(1)
    pytest.fail(f"the autoscaling head did not come up:\n{(base / 'head.log').read_text()[-3000:]}")


# ------------------------------------------------------------------------------- what happened


CLUSTER_STATE = """
import json, sys, ray
from ray._private.state import state
from ray._private.worker import global_worker
from ray.core.generated.gcs_pb2 import GcsNodeInfo
ray.init(address=sys.argv[1], log_to_driver=False)
nodes = [{"id": i.hex(), "type": n.node_type_name, "head": n.is_head_node,
          "alive": GcsNodeInfo.GcsNodeState.Name(n.state) == "ALIVE", "resources": dict(n.resources_total),
          "start_ms": n.start_time_ms, "end_ms": n.end_time_ms}
         for i, n in global_worker.gcs_client.get_all_node_info(timeout=60).items()]
actors = [{"class": a["ActorClassName"], "node": a["Address"]["NodeID"], "state": a["State"],
           "start_ms": a["StartTime"], "end_ms": a["EndTime"]} for a in state.actor_table(None).values()]
print(json.dumps({"nodes": nodes, "actors": actors}))
"""


def cluster_state(address: str, env: dict) -> dict:
    """Every node the cluster ever had (type, alive, resources, start/end ms) and every actor (class, node)."""
    res = subprocess.run([sys.executable, "-c", CLUSTER_STATE, address], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def node_events(monitor_log: Path) -> list[tuple[str, int, str, str]]:
    """(action, count, node type, reason, log time) for every launch and removal the autoscaler logged."""
    out = []
    for line in monitor_log.read_text().splitlines():
        when = line[:23]
        if m := re.search(r"event_summary:Adding (\d+) node\(s\) of type (\S+)\.", line):
            out.append(("add", int(m[1]), m[2], "", when))
        elif m := re.search(r"event_summary:Removing (\d+) nodes of type (\S+) \((.+)\)\.", line):
            out.append(("remove", int(m[1]), m[2], m[3], when))
    return out


def peak_alive(nodes: list[dict], node_type: str) -> int:
    """The most nodes of this type that were up at the same time."""
    ours = [n for n in nodes if n["type"] == node_type]
    edges = sorted([(n["start_ms"], 1) for n in ours] + [(n["end_ms"] or math.inf, -1) for n in ours],
                   key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    alive = peak = 0
    for _, step in edges:
        alive += step
        peak = max(peak, alive)
    return peak


def timeline(state: dict, t0_ms: float) -> str:
    """Nodes and actors, by start time in seconds after t0_ms: what to read when a check below fails."""
    types = {n["id"]: "head" if n["head"] else n["type"] for n in state["nodes"]}
    at = lambda ms: f"{(ms - t0_ms) / 1000:7.1f}" if ms else "      -"  # noqa: E731
    rows = [(n["start_ms"], f"{at(n['start_ms'])} .. {at(n['end_ms'])}  node  {types[n['id']]} {n['id'][-4:]}")
            for n in state["nodes"]]
    rows += [(a["start_ms"], f"{at(a['start_ms'])} .. {at(a['end_ms'])}  actor {a['class']} on "
              f"{types.get(a['node'], '?')} {(a['node'] or '')[-4:]}") for a in state["actors"]]
    return "\n".join(r for _, r in sorted(rows))


@pytest.mark.slow
@pytest.mark.timeout(600)  # the hard bound: the run takes about 1.5 minutes, the idle removal under one more
@pytest.mark.skipif(RAY is None, reason="needs the ray command")
def test_a_run_scales_the_node_types_up_and_back_to_zero(autoscaling_cluster, tmp_path):
    address, env, monitor_log = autoscaling_cluster
    t0 = time.time()
    # file://: every node of this cluster sees this machine's disk (a local folder is refused on a cluster)
    run = subprocess.run([sys.executable, "-m", "reaemb_ray.cli", "run", "--config", "configs/ci.yaml",
                          f"output_dir=file://{tmp_path / 'run'}", f"ray.address={address}",
                          f"ray.gpu_stand_in={STAND_IN}", *gpu_overrides(), *STAGES, *ELASTIC_CRRL],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    ran_s = time.time() - t0
    assert run.returncode == 0, run.stderr[-5000:]
    status = re.search(r"reaemb run: finished \((.*)\)", run.stdout)[1]
    stages = dict(kv.split("=") for kv in status.split(", "))
    assert set(stages.values()) == {"ran"}, stages
    assert json.loads((tmp_path / "run" / "eval" / "report.json").read_text())

    state = cluster_state(address, env)
    types = {n["id"]: "head" if n["head"] else n["type"] for n in state["nodes"]}
    on_type: dict[str, set[str]] = {}
    for a in state["actors"]:
        on_type.setdefault(types.get(a["node"], "?"), set()).add(a["class"])
    workers = [n for n in state["nodes"] if not n["head"]]
    print(f"run {ran_s:.0f}s, stages {stages}; actors by node type: {on_type}; nodes: "
          f"{[(n['type'], n['resources'].get('CPU'), n['resources'].get(STAND_IN)) for n in workers]}; "
          f"autoscaler: {node_events(monitor_log)}")
    print(timeline(state, t0 * 1000))
    print("\n".join(line for line in run.stderr.splitlines() if "stage" in line.lower())[-3000:])
    # only the declared worker types were launched, each with its scaled resources
    fake = provider_config(address)["available_node_types"]
    for n in workers:
        assert n["type"] in ("gpu_worker", "cpu_worker"), n
        want = {k: float(v) for k, v in fake[n["type"]]["resources"].items() if k != "object_store_memory"}
        assert {k: n["resources"].get(k) for k in want} == want, n
    # the GPU actors ran on gpu_worker nodes (CRRL's rollout worker and learner, LRCL's Ray Train workers, the
    # export actors), and every GPU node launched but one hosted some of them. The one: Ray's v1 autoscaler can
    # launch a third node for LRCL's two-bundle request while the first two register (seen once in CI: nodes
    # added 2 + 1 three seconds apart, before any actor existed); it goes again once idle, checked below
    assert {"RolloutWorker", "LearnerActor", "RayTrainWorker"} <= on_type.get("gpu_worker", set()), on_type
    assert any("ItemEmbedder" in c for c in on_type.get("gpu_worker", set())), on_type
    assert not any(types.get(a["node"]) == "cpu_worker" and a["class"] in ("RolloutWorker", "LearnerActor")
                   for a in state["actors"])
    hosting = {a["node"] for a in state["actors"]}
    assert sum(n["id"] not in hosting for n in workers if n["type"] == "gpu_worker") <= 1, timeline(state, t0 * 1000)
    # no more GPU nodes at once than a stage asks GPUs at once (LRCL's 2 workers; CRRL's learner and up to 2
    # rollout workers)
    assert peak_alive(workers, "gpu_worker") <= 3, timeline(state, t0 * 1000)
    # the rollout pool grew: its second worker, which did not fit, got a node of its own and rolled out batches;
    # every CRRL step once
    gpu_nodes = {a["node"] for a in state["actors"]
                 if a["class"] in ("RolloutWorker", "LearnerActor") and a["start_ms"]}  # started ones only
    assert len(gpu_nodes) == 3, timeline(state, t0 * 1000)
    rows = [json.loads(x) for x in (tmp_path / "run" / "crrl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, CRRL_STEPS + 1))
    assert max(r["rollout_workers"] for r in rows) == 2 and any(r["rollout_worker"] == 1 for r in rows), rows

    # back to zero workers after the idle timeout, every removal for idleness
    deadline = time.time() + IDLE_TIMEOUT_S + 90
    while time.time() < deadline and any(n["alive"] and not n["head"] for n in cluster_state(address, env)["nodes"]):
        time.sleep(5)
    events = node_events(monitor_log)
    assert not [n for n in cluster_state(address, env)["nodes"] if n["alive"] and not n["head"]], events
    launched = sum(c for action, c, *_ in events if action == "add")
    removed = [(c, reason) for action, c, _, reason, _ in events if action == "remove"]
    assert sum(c for c, _ in removed) == launched and {r for _, r in removed} == {"idle"}, events
