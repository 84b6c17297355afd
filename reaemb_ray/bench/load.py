"""What else the machine was doing while a measurement ran: load average and the other processes' CPU share.

The benchmark's ratios are measured side by side, so load hits both sides; the absolute numbers (items/s,
FLOP/s) are only meaningful on a quiet machine. Every section records this next to its numbers.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager

import psutil


def _busy_seconds() -> tuple[float, float]:
    """(CPU seconds all processes spent busy, of which at a positive nice value), from /proc/stat."""
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0) + getattr(t, "steal", 0.0)
    return busy, t.nice


def _own_seconds(root: psutil.Process) -> float:
    """CPU seconds of this process and its live descendants (Ray workers started by an embedded Ray included)."""
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            c = p.cpu_times()
            total += c.user + c.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


@contextmanager
def machine_load():
    """`with machine_load() as load: ...`, then `load` holds the 1-minute load average before and after, and the
    share of all cores' time used by processes outside this process tree (`others_cpu_share`; the part of it at
    a positive nice value, such as the lead's background runs, in `others_niced_share`, an upper bound since our
    own niced children count there too)."""
    root = psutil.Process()
    cores = psutil.cpu_count() or 1
    load: dict = {"loadavg_1min_before": round(os.getloadavg()[0], 2)}
    busy0, nice0 = _busy_seconds()
    own0, t0 = _own_seconds(root), time.perf_counter()
    try:
        yield load
    finally:
        wall = time.perf_counter() - t0
        busy1, nice1 = _busy_seconds()
        own = _own_seconds(root) - own0
        capacity = max(wall * cores, 1e-9)
        load.update(loadavg_1min_after=round(os.getloadavg()[0], 2),
                    others_cpu_share=round(max(0.0, (busy1 - busy0 - own) / capacity), 3),
                    others_niced_share=round(max(0.0, (nice1 - nice0) / capacity), 3),
                    wall_s=round(wall, 1))
