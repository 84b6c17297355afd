"""Peak resident memory of a piece of work, counting every process it starts (Ray workers, vLLM engines).

A sampler thread sums the RSS of this process and all its descendants every `interval` seconds. With an
embedded Ray started by this process, the raylet and all Ray workers are descendants, so a stage's actors
are counted. (Memory shared between processes is counted once per process: an upper bound.)
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import psutil


def tree_rss(root: psutil.Process) -> int:
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


@contextmanager
def peak_memory(interval: float = 0.2):
    """`with peak_memory() as m: ...` then `m["peak_mb"]`, `m["baseline_mb"]`, `m["delta_mb"]`."""
    root = psutil.Process()
    result = {"baseline_mb": tree_rss(root) / 2**20}
    peak = [result["baseline_mb"]]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss(root) / 2**20)
            stop.wait(interval)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    try:
        yield result
    finally:
        stop.set()
        th.join()
        peak[0] = max(peak[0], tree_rss(root) / 2**20)
        result.update(peak_mb=round(peak[0], 1), delta_mb=round(peak[0] - result["baseline_mb"], 1),
                      seconds=round(time.perf_counter() - t0, 2))
        result["baseline_mb"] = round(result["baseline_mb"], 1)
