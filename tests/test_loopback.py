"""An embedded Ray listens on loopback only: every listening TCP socket of the Ray processes a run starts (GCS,
raylet, dashboard and its agent, metrics export, runtime-env agent, workers and actors, and the CRRL learner's
DeepSpeed process group) is on 127.0.0.1."""
from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# started in a fresh process, so this test sees the Ray it started and no other test's
PROBE = """
import json, os, psutil, ray
from reaemb_ray.config import RayConfig
from reaemb_ray.runtime import init_ray

init_ray(RayConfig(num_cpus=2, include_dashboard=True))

@ray.remote
class Echo:
    def pid(self):
        return os.getpid()


@ray.remote
class LearnerGroup:  # what the CRRL learner actor sets up before DeepSpeed
    def pid(self):
        from reaemb_ray.rl.learner import init_single_process_distributed

        init_single_process_distributed()
        return os.getpid()

@ray.remote
def pid():
    return os.getpid()

actors = [Echo.remote(), LearnerGroup.remote()]
pids = ray.get([a.pid.remote() for a in actors] + [pid.remote()])
me = psutil.Process()
sockets = []
for p in [me] + me.children(recursive=True):
    try:
        name = p.name()
        for c in p.net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN:
                sockets.append([name, c.laddr.ip, c.laddr.port, p.pid])
    except psutil.Error:
        pass
print("RESULT " + json.dumps({"sockets": sockets, "pids": pids, "node_ip": ray.util.get_node_ip_address()}))
ray.shutdown()
"""


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def test_embedded_ray_listens_on_loopback_only():
    res = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    line = next((x for x in res.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, res.stderr[-3000:]
    out = json.loads(line.removeprefix("RESULT "))
    names = {s[0] for s in out["sockets"]}
    # not vacuous: the core servers, the dashboard and the learner's process were found and inspected
    assert {"gcs_server", "raylet"} <= names and len(out["sockets"]) >= 8, out["sockets"]
    assert out["pids"][1] in {s[3] for s in out["sockets"]}, "the learner group's gloo sockets were not seen"
    exposed = [s for s in out["sockets"] if not _is_loopback(s[1])]
    assert not exposed, f"listening on non-loopback addresses: {exposed}"
    assert out["node_ip"] == "127.0.0.1"
