"""`ray job submit` against a real Ray head on loopback runs a reaemb stage from the uploaded working dir,
and `init_ray` names the address when it cannot reach a cluster.

The head is this test's own: started with a dedicated --temp-dir and free ports, stopped by killing only
the processes of that temp dir (never a global `ray stop`, which would kill other sessions' clusters).
Ray 2.60 requires a token for the dashboard's job API by default; head and client share one through
RAY_AUTH_TOKEN, as a user does after `ray get-auth-token` on a cloud head.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from reaemb_ray.runtime import free_port

ROOT = Path(__file__).resolve().parents[1]
RAY = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
pytestmark = pytest.mark.slow

# The job: a small `reaemb run` (real MovieLens-100k, tiny LLM, ID baseline + raw-LLM embeddings) after
# printing where reaemb_ray was imported from (it must be the uploaded working dir). One python process:
# `ray job submit` shell-quotes each argument, so no `&&`.
SHARED_ML100K = ROOT.parent / "shared" / "data" / "ml-100k"


def job_command(out: Path) -> list[str]:
    data = str(SHARED_ML100K) if SHARED_ML100K.exists() else "auto:ml-100k"
    # a cluster's nodes share no local disk: the output is a URI (file:// stands for a mount every node shares)
    argv = ["run", "--config", "configs/ci.yaml", f"output_dir=file://{out}", f"data.path={data}",
            "eval.methods=[id,raw_llm]", "srs.epochs=2"]
    code = ("import sys, reaemb_ray; from reaemb_ray.cli import main; "
            f"print('REAEMB_FROM', reaemb_ray.__file__, flush=True); sys.exit(main({argv!r}))")
    return ["python", "-c", code]


def expected_outputs(out: Path) -> list[Path]:
    return [out / "prepared" / "splits.parquet", out / "embeddings" / "raw_llm" / "embeddings.parquet",
            out / "eval" / "report.json", out / "eval" / "report.md", out / "eval" / "_record.json"]



def processes_using(marker: str) -> list[int]:
    """PIDs whose command line mentions `marker` (this head's temp dir / session)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker in (d / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(d.name))
            except OSError:
                pass
    return [p for p in pids if p != os.getpid()]


def stop_head(proc: subprocess.Popen, temp_dir: str) -> None:
    proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its own processes on SIGTERM
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    for sig in (signal.SIGTERM, signal.SIGKILL):  # whatever outlived it, by pid, only this head's
        for pid in processes_using(temp_dir):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(1)


@pytest.fixture(scope="module")
def ray_head():
    if RAY is None:
        pytest.skip("the `ray` command is not installed beside this python")
    temp_dir = tempfile.mkdtemp(prefix="rjs", dir="/tmp")  # short: Ray's unix socket paths must stay < 108 bytes
    dash = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    ports = {flag: free_port() for flag in ("--port", "--ray-client-server-port", "--dashboard-agent-listen-port",
                                             "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
                                             "--metrics-export-port", "--node-manager-port", "--object-manager-port")}
    cmd = [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dash}", "--include-dashboard=true", "--num-cpus=2", f"--temp-dir={temp_dir}",
           "--disable-usage-stats"] + [f"{k}={v}" for k, v in ports.items()]
    log = open(Path(temp_dir) / "ray_start.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/version", timeout=2):
                    break
            except urllib.error.HTTPError:
                break  # the dashboard answers (401 without the token): it is up
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    log.flush()
                    pytest.fail(f"ray head did not come up: {(Path(temp_dir) / 'ray_start.log').read_text()[-3000:]}")
                time.sleep(1)
        yield url, env
    finally:
        stop_head(proc, temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not processes_using(temp_dir), "processes of the test's Ray head outlived teardown"


def ray_cli(args: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_job_submit_runs_the_pipeline_from_the_working_dir(ray_head, tmp_path):
    url, env = ray_head
    out = tmp_path / "out"
    job_id = f"reaemb-test-{secrets.token_hex(4)}"
    t0 = time.time()
    submit = ray_cli(["job", "submit", "--address", url, "--no-wait", "--submission-id", job_id,
                      "--working-dir", str(ROOT),
                      # env_vars in the job's runtime env used to clash with init_ray's own (Ray refuses to merge)
                      "--runtime-env-json", json.dumps({"excludes": ["outputs/", ".git/", "*.gguf", "*.safetensors"],
                                                        "env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning"}}),
                      "--", *job_command(out)], env)
    assert submit.returncode == 0, submit.stdout + submit.stderr
    status = ""
    while time.time() - t0 < 600:
        res = ray_cli(["job", "status", "--address", url, job_id], env)
        status = (res.stdout + res.stderr).upper()  # "... SUCCEEDED" on stdout, "Job '...' failed" on stderr
        if any(s in status for s in ("SUCCEEDED", "FAILED", "STOPPED")):
            break
        time.sleep(2)
    logs = ray_cli(["job", "logs", "--address", url, job_id], env).stdout
    assert "SUCCEEDED" in status, f"job status: {status}\nlogs:\n{logs[-4000:]}"
    print(f"job {job_id} succeeded in {time.time() - t0:.1f}s")
    # the driver ran the uploaded copy of the package, not the checkout it was submitted from
    origin = next(line.split(" ", 1)[1] for line in logs.splitlines() if line.startswith("REAEMB_FROM"))
    assert "runtime_resources" in origin and not origin.startswith(str(ROOT)), origin
    for path in expected_outputs(out):
        assert path.exists(), f"{path} missing after the job; logs:\n{logs[-4000:]}"


def test_job_api_refuses_a_wrong_token(ray_head):
    url, env = ray_head
    wrong = dict(env, RAY_AUTH_TOKEN=secrets.token_hex(32))
    listing = ray_cli(["job", "list", "--address", url], wrong, timeout=60)
    assert listing.returncode != 0
    assert ray_cli(["job", "list", "--address", url], env, timeout=60).returncode == 0


def test_init_ray_names_an_unreachable_address():
    """Fails fast with the address in the message, instead of Ray's own retry loop (many minutes in 2.60)."""
    port = free_port()  # nothing listens here
    address = f"127.0.0.1:{port}"
    code = ("from reaemb_ray.config import RayConfig\nfrom reaemb_ray.runtime import init_ray\n"
            f"try:\n    init_ray(RayConfig(address={address!r}))\nexcept ConnectionError as e:\n"
            "    print('CONNECTION_ERROR', e)\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    t0 = time.time()
    try:
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail(f"init_ray(address={address!r}) still waiting after 90 s; Ray 2.60 retries an unreachable GCS "
                    "for minutes, so reaemb_ray/runtime.py should probe host:port (socket.create_connection, "
                    "a few seconds) before ray.init and raise ConnectionError itself")
    line = next((l for l in res.stdout.splitlines() if l.startswith("CONNECTION_ERROR")), None)
    assert line is not None, f"no ConnectionError (rc={res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    assert address in line and "ray.address" in line, line
    print(f"init_ray failed after {time.time() - t0:.1f}s: {line}")
