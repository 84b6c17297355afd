"""Ray start-up shared by every stage: an embedded local Ray on a laptop, or the existing cluster when
launched with `ray job submit` (RAY_ADDRESS is set) or when `ray.address` names one."""
from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path

log = logging.getLogger(__name__)


def init_ray(ray_cfg) -> None:
    import ray

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
    if ray_cfg.num_cpus:
        kwargs["num_cpus"] = ray_cfg.num_cpus
    with _loopback_only():
        ray.init(**kwargs)
    log.info("started an embedded local Ray (%s CPUs) on 127.0.0.1", ray.cluster_resources().get("CPU"))


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


def check_fits(requests: dict[str, dict[str, float]], embedded_only: bool = True) -> None:
    """Fail fast, naming the actors, when the actors a stage is about to start cannot all be placed.

    `requests` maps an actor group ("3 rollout workers") to its total {"CPU": x, "GPU": y}. On an
    autoscaling cluster, missing resources are added by the autoscaler, so only an embedded local Ray (or
    `embedded_only=False`) is checked; there, a request that does not fit would otherwise hang forever.
    """
    import ray

    if embedded_only and (os.environ.get("RAY_ADDRESS") or _CONNECTED[0]):
        return
    have = ray.cluster_resources()
    for res in ("CPU", "GPU"):
        need = sum(r.get(res, 0.0) for r in requests.values())
        if need > have.get(res, 0.0) + 1e-9:
            parts = ", ".join(f"{k}: {v.get(res, 0.0):g}" for k, v in requests.items() if v.get(res, 0.0))
            raise ValueError(
                f"the actors need {need:g} {res} in all ({parts}) but this Ray has {have.get(res, 0.0):g}; lower "
                f"the *_resources.num_{res.lower()}s or the worker counts in the config (fractions such as 0.5 are "
                "fine), or run on a cluster with more nodes"
            )


_CONNECTED = [False]  # set when init_ray joined an existing cluster
