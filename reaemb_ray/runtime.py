"""Ray start-up shared by every stage: an embedded local Ray on a laptop, or the existing cluster when
launched with `ray job submit` (RAY_ADDRESS is set) or when `ray.address` names one."""
from __future__ import annotations

import logging
import os
import socket

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
            ray.init(address=address, namespace=ray_cfg.namespace, log_to_driver=True,
                     runtime_env={"env_vars": env_vars})
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConnectionError(
                f"cannot reach the Ray cluster at {address!r} ({e}); check the address and that the head node "
                "is up (`ray status --address ...`), or set ray.address='' to run on an embedded local Ray"
            ) from None
        log.info("connected to Ray cluster at %s", address)
        return
    kwargs = dict(address="local", namespace=ray_cfg.namespace, include_dashboard=ray_cfg.include_dashboard,
                  _node_ip_address="127.0.0.1", runtime_env={"env_vars": env_vars})
    if ray_cfg.num_cpus:
        kwargs["num_cpus"] = ray_cfg.num_cpus
    ray.init(**kwargs)
    log.info("started an embedded local Ray (%s CPUs)", ray.cluster_resources().get("CPU"))


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
