"""Ray start-up shared by every stage: an embedded local Ray on a laptop, or the existing cluster when
launched with `ray job submit` (RAY_ADDRESS is set) or when `ray.address` names one."""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from pathlib import Path

from reaemb_ray import fit
from reaemb_ray.fit import Requests

log = logging.getLogger(__name__)


def init_ray(ray_cfg) -> None:
    import ray

    _GPU_STAND_IN[0] = ray_cfg.gpu_stand_in  # what check_fits reads as GPUs
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    address = ray_cfg.address or os.environ.get("RAY_ADDRESS", "")
    env_vars = {"PYTHONWARNINGS": "ignore::DeprecationWarning"}
    if address:
        _check_reachable(address)
        try:
            # No runtime_env here: a submitted job already has one (cluster/submit.sh, the RayJob), and Ray
            # refuses to merge two that set the same key ("Failed to merge the Job's runtime env").
            ray.init(address=address, namespace=ray_cfg.namespace, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConnectionError(
                f"cannot reach the Ray cluster at {address!r} ({e}); check the address and that the head node "
                "is up (`ray status --address ...`), or set ray.address='' to run on an embedded local Ray"
            ) from None
        _CONNECTED[0] = True
        log.info("connected to Ray cluster at %s", address)
        return
    # Workers import reaemb_ray and actors from the same checkout as the driver, installed or not.
    root = str(Path(__file__).resolve().parents[1])
    env_vars["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    runtime_env = {"env_vars": env_vars}
    if not ray_cfg.include_dashboard:
        runtime_env["worker_process_setup_hook"] = "reaemb_ray.runtime.quiet_state_api_pollers"
    kwargs = dict(address="local", namespace=ray_cfg.namespace, include_dashboard=ray_cfg.include_dashboard,
                  dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1", runtime_env=runtime_env)
    if ray_cfg.gpu_stand_in:
        raise ValueError(f"ray.gpu_stand_in={ray_cfg.gpu_stand_in!r} stands in for the GPUs of a cluster's nodes; "
                         "an embedded local Ray has none: set ray.address to the cluster or ray.gpu_stand_in=''")
    if ray_cfg.num_cpus:
        kwargs["num_cpus"] = ray_cfg.num_cpus
    with _loopback_only():
        ray.init(**kwargs)
    _start_reaper(env_vars["PYTHONPATH"])
    log.info("started an embedded local Ray (%s CPUs) on 127.0.0.1", ray.cluster_resources().get("CPU"))


def _start_reaper(pythonpath: str) -> None:
    """A watcher process that stops this embedded Ray if the driver is killed (reaemb_ray/reaper.py)."""
    import subprocess
    import sys

    subprocess.Popen([sys.executable, "-m", "reaemb_ray.reaper", str(os.getpid())], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     env=dict(os.environ, PYTHONPATH=pythonpath))


@contextlib.contextmanager
def _loopback_only():
    """Keep every server of an embedded Ray on 127.0.0.1 (GCS, raylet, workers, dashboard and its agent, metrics).

    Ray binds its servers to loopback only when the node address is exactly 127.0.0.1, and it keeps that address
    only when `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER` is off (otherwise it swaps 127.0.0.1 for the host's routable
    address and binds all interfaces). The processes ray.init starts read the variable from the environment; the
    driver read it when `ray` was imported (before init_ray could set it), so its copy is set too, for the
    duration of ray.init (tests/test_loopback.py checks every listening socket).
    """
    from ray._private import ray_constants

    var = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    saved_env, saved_const = os.environ.get(var), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[var], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_const
        if saved_env is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = saved_env


def quiet_state_api_pollers() -> None:
    """Worker setup hook for an embedded Ray without dashboard: the State API lives in the dashboard, so Ray
    Train's PlacementGroupCleaner would warn every few seconds that it cannot query it. Its only job (removing
    the placement group of a controller that died) matters on long-lived clusters, which run a dashboard."""
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)


def gpu_options(num_gpus: float, ray_cfg) -> dict:
    """Ray options (actor, task or Ray Data) for `num_gpus` GPUs: `num_gpus`, or with ray.gpu_stand_in set, that
    custom resource in their place (the scheduler and autoscaler treat it as the request; Ray assigns no GPU, so
    the device rule computes on the CPU)."""
    if not num_gpus or not ray_cfg.gpu_stand_in:
        return {"num_gpus": num_gpus}
    return {"num_gpus": 0, "resources": {ray_cfg.gpu_stand_in: num_gpus}}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on this machine right now (pick it where it is used: another process can take it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _check_reachable(address: str) -> None:
    """Fail in seconds, not minutes: Ray itself retries an unreachable address for a long time."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep:
        host, port = hostport, "10001" if address.startswith("ray://") else "6379"
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError) as e:
        raise ConnectionError(
            f"cannot reach the Ray cluster at {address!r} ({e}); check the address and that the head node is up "
            "(`ray status --address ...`), or set ray.address='' to run on an embedded local Ray"
        ) from None


def check_fits(requests: Requests, wait_s: float = 900.0, probe_s: float = 20.0) -> None:
    """Fail fast, naming the actors, when the actors a stage is about to start cannot all be placed; on a cluster
    whose autoscaler can add what is missing, wait for it (a visible message every 30 s, at most `wait_s`).

    `requests` maps an actor group ("3 rollout workers") to (count, per-actor {"CPU": x, "GPU": y}); the rule is
    `reaemb_ray.fit.decide`. Where the cluster does not publish its largest size, the autoscaler is asked for the
    actors' bundles (`request_resources`) and given `probe_s` to start launching nodes for them.
    """
    import ray

    embedded = not joined_cluster()
    verdict = fit.decide(requests, _resources(ray.cluster_resources()), embedded=embedded,
                         capacity=_cluster_capacity())
    if verdict.action == fit.PROBE:
        verdict = fit.decide(requests, _resources(ray.cluster_resources()), embedded=False,
                             launched=_autoscaler_launches(_bundles(requests), probe_s))
    if verdict.action == fit.FAIL:
        _clear_resource_request()
        raise ValueError(verdict.message)
    if verdict.action == fit.WAIT:
        from ray.autoscaler.sdk import request_resources

        try:
            request_resources(bundles=_bundles(requests))  # the demand the autoscaler scales for (no actor yet)
            _wait_until_fits(requests, verdict.message, wait_s)
        finally:
            _clear_resource_request()


def _cluster_capacity() -> dict[str, float] | None:
    """The most of each resource the cluster's autoscaler can reach, where the cluster publishes it (Ray's
    autoscaler v2 / KubeRay report their node types to the GCS); None otherwise."""
    try:
        from ray._private.state import state

        cap = state.get_max_resources_from_cluster_config()
    except Exception:  # an older or newer Ray without this call: treat as unknown, the probe decides
        return None
    return _resources({k: float(v) for k, v in cap.items()}) if cap else None


def _resources(have: dict) -> dict:
    """A cluster's resources as the fit rule reads them: with ray.gpu_stand_in, that resource counts as GPUs."""
    return {**have, "GPU": have.get(_GPU_STAND_IN[0], 0.0)} if _GPU_STAND_IN[0] else have


def _bundles(requests: Requests) -> list[dict[str, float]]:
    """The actors' bundles as they ask Ray (ray.gpu_stand_in in place of GPU)."""
    if not _GPU_STAND_IN[0]:
        return fit.bundles(requests)
    return [{_GPU_STAND_IN[0] if k == "GPU" else k: v for k, v in b.items()} for b in fit.bundles(requests)]


def _autoscaler_launches(bundles: list[dict[str, float]], probe_s: float) -> bool:
    """Ask the autoscaler for `bundles` and report whether it starts launching nodes within `probe_s` (a fixed
    cluster's read-only autoscaler never does)."""
    import time

    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=bundles)
    deadline = time.monotonic() + probe_s
    while time.monotonic() < deadline:
        if _pending_launches():
            return True
        time.sleep(1.0)
    return False


def _pending_launches() -> bool:
    """Whether the autoscaler is launching nodes now: its status in the GCS (autoscaler v1, what `ray up` and the
    shipped cluster files run) or, under autoscaler v2, its cluster status."""
    import json

    import ray

    try:
        from ray.autoscaler.v2.utils import is_autoscaler_v2

        if is_autoscaler_v2():
            from ray.autoscaler.v2.sdk import get_cluster_status

            st = get_cluster_status(ray.get_runtime_context().gcs_address)
            return bool(st.pending_launches or st.pending_nodes)
    except ImportError:
        pass
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    report = (json.loads(raw) if raw else {}).get("autoscaler_report") or {}
    return bool(report.get("pending_launches") or report.get("pending_nodes"))


def _wait_until_fits(requests: Requests, message: str, wait_s: float) -> None:
    import time

    import ray

    log.warning("%s; waiting up to %.0f s (ray.wait_for_nodes_s)", message, wait_s)
    t0 = last = time.monotonic()
    while fit.decide(requests, _resources(ray.cluster_resources()), embedded=True).action != fit.OK:
        now = time.monotonic()
        if now - t0 > wait_s:
            raise ValueError(f"{message}, and the cluster did not grow enough in {wait_s:.0f} s; check the "
                             "autoscaler (`ray status`, its node types and max_workers), raise ray.wait_for_nodes_s, "
                             "or ask for less")
        if now - last >= 30:
            log.warning("still %s (%.0f s)", message, now - t0)
            last = now
        time.sleep(2.0)
    log.info("the cluster now fits the actors (after %.0f s)", time.monotonic() - t0)


def _clear_resource_request() -> None:
    """Withdraw what _autoscaler_launches asked for: a standing request would keep idle nodes alive."""
    if _CONNECTED[0] or os.environ.get("RAY_ADDRESS"):
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[])


def stop_actors(actors: list, timeout_s: float = 60.0) -> None:
    """Kill `actors` and wait until Ray reports each dead, so their resources are free when the next stage asks:
    on an autoscaling cluster a request made while they are still going would start a node for nothing."""
    import ray

    for a in actors:
        ray.kill(a, no_restart=True)
    deadline = time.monotonic() + timeout_s
    for ref in [a.__ray_ready__.remote() for a in actors]:  # fails once the actor is dead
        try:
            ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass


_CONNECTED = [False]  # set when init_ray joined an existing cluster
_GPU_STAND_IN = [""]  # ray.gpu_stand_in of the config init_ray was last called with


def joined_cluster() -> bool:
    """Whether this process joined a Ray cluster (RAY_ADDRESS, ray.address) rather than starting an embedded one:
    there an autoscaler may add nodes for what does not fit."""
    return bool(os.environ.get("RAY_ADDRESS") or _CONNECTED[0])
