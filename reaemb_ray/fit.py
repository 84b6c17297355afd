"""Will the actors a stage is about to start fit on this Ray? The decision, free of Ray.

Ray queues an actor that no node can serve and waits for it forever, so a stage that asks for more than the
cluster has would hang silently. Before a stage starts its actors it asks `decide`:

    need_r  = sum over groups of count * per-actor amount of resource r   (r in CPU, GPU)
    have_r  = what the cluster has now (alive nodes, all of it, used or not)
    short   = {r : need_r > have_r}

    short empty                                  -> OK
    embedded local Ray                           -> FAIL   (nothing can be added)
    capacity known (the autoscaler's node types) -> FAIL if need_r > capacity_r for some r, else WAIT
    capacity unknown, autoscaler probed:
        it launched nodes for the request        -> WAIT   (with a visible message, bounded in time)
        it did not                               -> FAIL   (a fixed cluster, or node types without r)
    capacity unknown, not probed yet             -> PROBE

Sums over the cluster ignore how actors pack onto nodes (two 0.75-CPU actors on two 1-CPU nodes fit; one
2-GPU actor on two 1-GPU nodes does not): the check catches what can never fit, Ray's scheduler does the rest.
`runtime.check_fits` is the Ray shell: it reads the cluster, probes the autoscaler with `request_resources`, and
waits or raises.
"""
from __future__ import annotations

from dataclasses import dataclass

RESOURCES = ("CPU", "GPU")
OK, WAIT, FAIL, PROBE = "ok", "wait", "fail", "probe"

# {"3 rollout workers": (3, {"CPU": 1.0, "GPU": 0.5})}: a group of `count` actors, each asking for the dict
Requests = dict[str, tuple[int, dict[str, float]]]


@dataclass(frozen=True)
class Verdict:
    action: str  # OK, WAIT, FAIL or PROBE
    message: str = ""


def group(count: int, resources) -> tuple[int, dict[str, float]]:
    """A group of `count` actors that each ask for a config's `*_resources` (num_cpus, num_gpus)."""
    return count, {"CPU": float(resources.num_cpus), "GPU": float(resources.num_gpus)}


def totals(requests: Requests) -> dict[str, float]:
    """need_r of every resource r in RESOURCES."""
    return {r: sum(n * float(per.get(r, 0.0)) for n, per in requests.values()) for r in RESOURCES}


def bundles(requests: Requests) -> list[dict[str, float]]:
    """One bundle per actor (what the autoscaler packs onto node types), zero amounts left out."""
    out = []
    for n, per in requests.values():
        b = {r: float(v) for r, v in per.items() if v}
        out += [dict(b) for _ in range(n)] if b else []
    return out


def _parts(requests: Requests, r: str) -> str:
    return ", ".join(f"{name}: {n * float(per.get(r, 0.0)):g}" for name, (n, per) in requests.items()
                     if per.get(r, 0.0))


def _missing(requests: Requests, have: dict[str, float]) -> list[str]:
    need = totals(requests)
    return [r for r in RESOURCES if need[r] > have.get(r, 0.0) + 1e-9]


def _lack(requests: Requests, have: dict[str, float], where: str) -> str:
    need = totals(requests)
    return "; ".join(f"the actors need {need[r]:g} {r} in all ({_parts(requests, r)}) but {where} has "
                     f"{have.get(r, 0.0):g}" for r in _missing(requests, have))


_FIX = ("lower the *_resources.num_cpus / num_gpus or the worker counts in the config (fractions such as 0.5 are "
        "fine), or run on a cluster with more nodes")


def decide(requests: Requests, have: dict[str, float], *, embedded: bool,
           capacity: dict[str, float] | None = None, launched: bool | None = None) -> Verdict:
    """The rule of the module docstring. `capacity`: the most of each resource the autoscaler can reach (None when
    the cluster does not say); `launched`: whether the autoscaler launched nodes for these requests (None: not
    asked yet)."""
    if not _missing(requests, have):
        return Verdict(OK)
    if embedded:
        return Verdict(FAIL, f"{_lack(requests, have, 'this Ray')}; {_FIX}")
    if capacity is not None:
        if _missing(requests, capacity):
            return Verdict(FAIL, f"{_lack(requests, capacity, 'the cluster at its largest (its autoscaler node types)')}"
                                 f"; {_FIX}, or add node types that offer it")
        return Verdict(WAIT, f"waiting for the autoscaler: {_lack(requests, have, 'the cluster now')}")
    if launched is None:
        return Verdict(PROBE)
    if launched:
        return Verdict(WAIT, f"waiting for the autoscaler: {_lack(requests, have, 'the cluster now')}")
    return Verdict(FAIL, f"{_lack(requests, have, 'the cluster')} and no autoscaler added nodes for them; {_FIX}")
