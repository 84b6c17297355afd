"""The fit check against a cluster address (reaemb_ray/runtime.py:check_fits, rule in reaemb_ray/fit.py).

A fixed cluster -- `ray start --head` without an autoscaling config, what a single GPU box runs -- that lacks
what a stage asks for must fail in seconds naming the actors and the resource, not wait forever; what fits
starts at once; and no resource request is left standing with the autoscaler afterwards. (The waiting side, a
cluster whose autoscaler adds the nodes, runs in tests/cluster/test_autoscaler.py, where every stage passes
through this check on Ray's real autoscaler.) Every process started here carries a tag in its environment;
teardown kills exactly those.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from reaemb_ray.faults import tagged
from reaemb_ray.runtime import free_port

ROOT = Path(__file__).resolve().parents[2]
RAY = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
TAG = "REAEMB_FIT_TEST"
pytestmark = pytest.mark.skipif(RAY is None, reason="needs the ray command")

DRIVER = r"""
import json, sys, time
from ray.autoscaler.sdk import request_resources
from reaemb_ray.config import RayConfig
from reaemb_ray.runtime import check_fits, init_ray

import ray
from ray._private import ray_constants
from ray.experimental.internal_kv import _internal_kv_get


def demand():
    time.sleep(6)  # an autoscaler update or so
    status = json.loads(_internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS) or b"{}")
    return status.get("load_metrics_report", {}).get("request_demand")


init_ray(RayConfig(address=sys.argv[1]))
out = {}
request_resources(bundles=[{"CPU": 1, "GPU": 1}])  # the control: a standing request shows in the demand
out["control_demand"] = demand()
request_resources(bundles=[])
t0 = time.monotonic()
try:
    check_fits({"the learner": (1, {"CPU": 1, "GPU": 1}), "4 rollout workers": (4, {"CPU": 0.25, "GPU": 1})},
               wait_s=600, probe_s=6)
    out["gpu"] = "started"
except ValueError as e:
    out["gpu"] = str(e)
out["gpu_seconds"] = time.monotonic() - t0
t0 = time.monotonic()
check_fits({"2 reward workers": (2, {"CPU": 1, "GPU": 0})}, wait_s=600, probe_s=6)
out["cpu_seconds"] = time.monotonic() - t0
out["request_demand"] = demand()  # the probe's request, withdrawn
print("RESULT " + json.dumps(out))
"""


@pytest.fixture
def fixed_cluster():
    """A head node with 2 CPUs, no GPU and no autoscaling config, on loopback."""
    tag, port = secrets.token_hex(8), free_port()
    tmp = tempfile.mkdtemp(prefix="rfit-", dir="/tmp")  # short: Ray's socket paths live under it
    # token auth as the shipped cluster files run it (Ray 2.60 also wants it whenever a token file exists)
    env = {**os.environ, TAG: tag, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen([RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
                             "--node-ip-address=127.0.0.1", f"--temp-dir={tmp}", "--include-dashboard=false",
                             "--disable-usage-stats"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None and time.monotonic() < deadline, "the head node did not start"
                time.sleep(1)
        yield f"127.0.0.1:{port}", env
    finally:
        for _ in range(3):
            for pid in tagged(TAG, tag):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_fixed_cluster_without_gpus_fails_fast_naming_them_and_what_fits_starts(fixed_cluster):
    address, env = fixed_cluster
    proc = subprocess.run([sys.executable, "-c", DRIVER, address], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert proc.returncode == 0 and line, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = json.loads(line[len("RESULT "):])
    assert out["gpu"].startswith("the actors need 5 GPU in all (the learner: 1, 4 rollout workers: 4) but the "
                                 "cluster has 0 and no autoscaler added nodes for them"), out["gpu"]
    assert "CPU" not in out["gpu"].split(";")[0]  # 2 CPUs are enough: only the GPUs are named
    assert out["gpu_seconds"] < 60, out  # the probe's 6 s and a few autoscaler reads, not a hang
    assert out["cpu_seconds"] < 5, out  # fits at once: no probe
    assert out["control_demand"] and not out["request_demand"], out  # the probe's request was withdrawn
