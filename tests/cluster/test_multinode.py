"""The main job on a real multi-node Ray cluster that shares no disk, submitted the way users submit it.

What this machine stands in for: a head with 0 CPUs (the autoscaler YAML's head resources and dashboard
binding), two worker nodes, each `ray start` in its own mount namespace with a private tmpfs over its
`~/.cache` and its Ray temp dir (so no node can read what another cached or wrote), loopback addresses
127.0.0.11-13, Ray's token auth on every node and client, and an S3 server (moto) on loopback as the bucket.
The job is `reaemb run --config configs/ci.yaml output_dir=s3://...`, submitted through cluster/submit.sh and
with the RayJob manifest's runtime env. Checked: the job succeeds and leaves report, embeddings and a record
per stage in the bucket; the same job again skips every stage; deleting one stage's record in the bucket
redoes that stage and what reads it, nothing else; each worker node built its own caches.

Every process this test starts lives in a mount namespace it created; teardown kills exactly those.
The node image is this machine's Python; DeepSpeed's JIT-built op is copied into each node's private cache
when this machine has built it (as a node image would ship it), saving about 40 s per node.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from reaemb_ray.runtime import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RAY = shutil.which("ray", path=str(BIN)) or shutil.which("ray")
MOTO = shutil.which("moto_server", path=str(BIN)) or shutil.which("moto_server")
SHARED_DATA = ROOT.parent / "shared" / "data"
HOME = Path.home()
BUCKET, PREFIX = "reaemb-multinode", "run"
OUTPUT = f"s3://{BUCKET}/{PREFIX}"
STAGES = ["prepare", "lrcl", "crrl", "export_raw_llm", "export_lrcl", "export_crrl", "evaluate"]
RECORDS = {"prepare": "prepared", "lrcl": "lrcl", "crrl": "crrl", "export_raw_llm": "embeddings/raw_llm",
           "export_lrcl": "embeddings/lrcl", "export_crrl": "embeddings/crrl", "evaluate": "eval"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(RAY is None or MOTO is None, reason="needs the ray and moto_server commands (pip install -e .[dev])"),
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter"),
                       reason="needs root for unshare -m (private mounts per node)"),
]


def launch_flags() -> tuple[list[str], list[str]]:
    """The `ray start` flags of cluster/aws.yaml that carry over to this machine: the head's resources and
    dashboard binding (ports, autoscaling config and the object manager port belong to the cloud)."""
    cfg = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())
    head_cmd = next(c for c in cfg["head_start_ray_commands"] if "ray start" in c)
    kept = [f for f in shlex.split(head_cmd.split("ray start", 1)[1]) if f.startswith("--dashboard-host")]
    assert kept == ["--dashboard-host=127.0.0.1"], f"cluster/aws.yaml binds the dashboard elsewhere: {kept}"
    head_cpus = cfg["available_node_types"][cfg["head_node_type"]]["resources"]["CPU"]
    return ["--head", f"--num-cpus={head_cpus}", *kept], ["--num-cpus=2"]


@dataclass
class Node:
    name: str
    ip: str
    args: list[str]
    root: Path  # its private temp dir (a tmpfs mountpoint inside its namespace)
    proc: subprocess.Popen | None = None

    def start(self, env: dict) -> None:
        ext = HOME / ".cache" / "torch_extensions"
        stage = f"{self.root}/image"
        script = " && ".join([
            f"mount -t tmpfs tmpfs {self.root}",
            f"mkdir -p {stage}",
            f"(test ! -d {ext} || cp -a {ext} {stage}/torch_extensions)",  # the "image" a node boots with
            f"mount -t tmpfs tmpfs {HOME / '.cache'}",
            f"(test ! -d {stage}/torch_extensions || mv {stage}/torch_extensions {ext})",
            f"mkdir -p {self.root}/ray",
            f"exec {shlex.quote(RAY)} start --block --disable-usage-stats --node-ip-address={self.ip} "
            f"--temp-dir={self.root}/ray --object-store-memory=300000000 " + " ".join(map(shlex.quote, self.args)),
        ])
        log = open(self.root.parent / f"{self.name}.log", "a")
        self.proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                                     env=dict(env, TMPDIR=str(self.root)), stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def sees(self, shell: str) -> str:
        """Run `shell` inside this node's mount namespace (what the node's processes see)."""
        res = subprocess.run(["nsenter", "-t", str(self.proc.pid), "-m", "sh", "-c", shell], capture_output=True,
                             text=True, timeout=30)
        return res.stdout

    def stop(self) -> None:
        if self.proc is None:
            return
        namespace = os.readlink(f"/proc/{self.proc.pid}/ns/mnt") if self.proc.poll() is None else None
        self.proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its node's processes
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if namespace:  # whatever outlived it in that namespace was started by this node
            for pid in _pids_in_namespace(namespace):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _pids_in_namespace(namespace: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.readlink(d / "ns" / "mnt") == namespace:
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def ray_cli(args: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def alive_nodes(url: str, env: dict) -> set[str]:
    res = ray_cli(["list", "nodes", "--address", url, "--format", "json"], env, timeout=60)
    if res.returncode != 0 or not res.stdout.lstrip().startswith("["):  # e.g. "No resource in the cluster"
        return set()
    return {n["node_ip"] for n in json.loads(res.stdout) if n["state"] == "ALIVE"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    proc = subprocess.Popen([MOTO, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    import s3fs

    fs = s3fs.S3FileSystem(key="test", secret="test", endpoint_url=env["AWS_ENDPOINT_URL"])
    deadline = time.time() + 30
    while True:
        try:
            fs.mkdir(BUCKET)
            break
        except Exception:
            if time.time() > deadline or proc.poll() is not None:
                pytest.fail("moto_server did not come up")
            time.sleep(0.5)
    yield fs, env
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


@pytest.fixture(scope="module")
def cluster(s3):
    _, aws = s3
    tag = secrets.token_hex(3)
    base = Path(f"/tmp/rmn-{tag}")  # short: Ray's socket paths must stay under 108 bytes
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env.update(aws, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    head_flags, worker_flags = launch_flags()
    gcs, dash = free_port(), free_port()
    ports = lambda: [f"{k}={free_port()}" for k in ("--node-manager-port", "--object-manager-port",  # noqa: E731
                                                    "--metrics-export-port", "--dashboard-agent-listen-port",
                                                    "--dashboard-agent-grpc-port", "--runtime-env-agent-port")]
    nodes = [Node("head", "127.0.0.11", head_flags + [f"--port={gcs}", f"--dashboard-port={dash}",
                                                      f"--ray-client-server-port={free_port()}", *ports()], base / "head"),
             Node("w1", "127.0.0.12", worker_flags + [f"--address=127.0.0.11:{gcs}", *ports()], base / "w1"),
             Node("w2", "127.0.0.13", worker_flags + [f"--address=127.0.0.11:{gcs}", *ports()], base / "w2")]
    for n in nodes:
        n.root.mkdir(parents=True)
    head_env = dict(env, **({"REAEMB_DATA_DIR": str(SHARED_DATA)} if SHARED_DATA.is_dir() else {}))
    url = f"http://127.0.0.1:{dash}"
    client = dict(env, RAY_ADDRESS=url)
    try:
        nodes[0].start(head_env)
        _wait_for_dashboard(url, nodes[0])
        for n in nodes[1:]:
            n.start(env)
        for _attempt in range(3):  # under load `ray start` can give up waiting for its raylet: start it again
            deadline = time.time() + 120
            while time.time() < deadline and alive_nodes(url, client) != {n.ip for n in nodes}:
                if any(n.proc.poll() is not None for n in nodes[1:]):
                    break
                time.sleep(2)
            dead = [n for n in nodes[1:] if n.proc.poll() is not None]
            if not dead and alive_nodes(url, client) == {n.ip for n in nodes}:
                break
            for n in dead:
                n.start(env)
        else:
            pytest.fail(f"worker nodes did not join: {alive_nodes(url, client)}; logs in {base}")
        yield nodes, client
    finally:
        for n in reversed(nodes):
            n.stop()
        shutil.rmtree(base, ignore_errors=True)


def _wait_for_dashboard(url: str, head: Node) -> None:
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answers (401 without the token): it is up
        except OSError:
            if head.proc.poll() is not None or time.time() > deadline:
                log = (head.root.parent / "head.log").read_text()[-3000:]
                pytest.fail(f"the head did not come up:\n{log}")
            time.sleep(1)


def wait_for_job(job_id: str, env: dict, timeout: float = 900) -> tuple[str, str]:
    t0, status = time.time(), ""
    while time.time() - t0 < timeout:
        res = subprocess.run(["bash", "cluster/submit.sh", "status", job_id], env=env, capture_output=True, text=True,
                             cwd=ROOT, timeout=120)
        status = (res.stdout + res.stderr).upper()
        if any(s in status for s in ("SUCCEEDED", "FAILED", "STOPPED")):
            break
        time.sleep(3)
    logs = ray_cli(["job", "logs", job_id], env).stdout
    return status, logs


def submit_with_script(env: dict) -> str:
    res = subprocess.run(["bash", "cluster/submit.sh", "submit", "configs/ci.yaml", f"output_dir={OUTPUT}"],
                         env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return re.search(r"reaemb-\d{8}-\d{6}-\d+", res.stdout + res.stderr).group(0)


def submit_as_the_rayjob(env: dict) -> str:
    """The RayJob's runtime env (cluster/kuberay/rayjob.yaml) with this tree as the working dir: the image's
    copy of the package is this checkout here."""
    spec = yaml.safe_load((ROOT / "cluster" / "kuberay" / "rayjob.yaml").read_text())["spec"]
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env.get("env_vars"), "the RayJob sets env_vars: the case that used to clash with init_ray"
    runtime_env.update(working_dir=str(ROOT), excludes=["outputs/", "*.gguf", "*.safetensors", ".git/"])
    command = spec["entrypoint"].split("&&")[-1].split("--config")[0].split()  # ["reaemb", "run"]
    job_id = f"rayjob-{secrets.token_hex(4)}"
    res = ray_cli(["job", "submit", "--no-wait", "--submission-id", job_id, "--runtime-env-json",
                   json.dumps(runtime_env), "--", *command, "--config", "configs/ci.yaml", f"output_dir={OUTPUT}"], env)
    assert res.returncode == 0, res.stdout + res.stderr
    return job_id


def finished(logs: str) -> dict[str, str]:
    line = next(x for x in logs.splitlines() if x.startswith("reaemb run: finished ("))
    return dict(kv.split("=") for kv in line.split("(", 1)[1].rstrip(")").split(", "))


def test_the_main_job_runs_shared_nothing_skips_and_redoes_one_stage(cluster, s3):
    nodes, env = cluster
    fs, _ = s3
    t0 = time.time()
    job = submit_with_script(env)
    status, logs = wait_for_job(job, env)
    assert "SUCCEEDED" in status, f"{status}\n{logs[-6000:]}"
    first = time.time() - t0
    fs.invalidate_cache()
    assert finished(logs) == {s: "ran" for s in STAGES}
    assert "runtime_resources" in next(x for x in logs.splitlines() if "reaemb_ray from" in x)  # the uploaded tree
    for rel in ("eval/report.md", "eval/report.json", "embeddings/raw_llm/embeddings.parquet",
                "embeddings/lrcl/embeddings.parquet", "embeddings/crrl/embeddings.parquet", "lrcl/final/reaemb_meta.json",
                "crrl/final/thought_attention.safetensors", *(f"{f}/_record.json" for f in RECORDS.values())):
        assert fs.exists(f"{BUCKET}/{PREFIX}/{rel}"), f"{rel} is not in the bucket"
    report = json.loads(fs.cat(f"{BUCKET}/{PREFIX}/eval/report.json"))
    assert {r["method"] for r in report} == {"id", "raw_llm", "lrcl", "crrl"}
    # the workers ran the actors: each built the tiny backbone in its own private cache, and actors fetched
    # their inputs from the bucket into a node-local cache
    for n in nodes[1:]:
        assert n.sees(f"ls {HOME}/.cache/reaemb_ray/tiny-llama-v1").strip(), f"{n.name} never loaded the backbone"
    assert any(n.sees(f"ls {HOME}/.cache/reaemb_ray/stores").strip() for n in nodes[1:])
    assert not nodes[1].sees(f"ls {nodes[2].root}/ray").strip()  # w2's temp dir is invisible to w1

    t1 = time.time()
    status, logs = wait_for_job(submit_as_the_rayjob(env), env)
    assert "SUCCEEDED" in status, f"{status}\n{logs[-6000:]}"
    assert finished(logs) == {s: "skipped" for s in STAGES}
    second = time.time() - t1

    fs.rm(f"{BUCKET}/{PREFIX}/embeddings/lrcl/_record.json")
    t2 = time.time()
    status, logs = wait_for_job(submit_with_script(env), env)
    assert "SUCCEEDED" in status, f"{status}\n{logs[-6000:]}"
    redo = {"export_lrcl", "evaluate"}  # the stage and what reads it
    assert finished(logs) == {s: "ran" if s in redo else "skipped" for s in STAGES}
    fs.invalidate_cache()
    assert fs.exists(f"{BUCKET}/{PREFIX}/embeddings/lrcl/_record.json")
    print(f"first run {first:.0f}s, rerun {second:.0f}s, redo of export_lrcl {time.time() - t2:.0f}s")
