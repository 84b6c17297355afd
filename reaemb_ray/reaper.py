"""Stops what is left of an embedded Ray whose driver was killed (SIGKILL, the OOM killer).

Such a driver cannot run `ray.shutdown()`, and Ray's dashboard agent and runtime-env agent outlive it: measured
with Ray 2.60, both were still running a minute after the driver, its raylet and GCS were gone (they hold
memory and loopback ports until the machine restarts). `runtime.init_ray` starts this watcher beside an
embedded Ray: `python -m reaemb_ray.reaper <driver pid>` notes the driver's Ray processes every second and,
once the driver is gone, SIGKILLs those still alive. After a normal exit (Ray already shut down) it finds
nothing left. scripts/fault_injection.py reports what outlives a SIGKILLed driver.
"""
from __future__ import annotations

import os
import sys
import time

import psutil


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def watch(pid: int, marker: str = "ray", interval_s: float = 1.0) -> int:
    """Until process `pid` ends, note its descendants whose command line holds `marker`; then kill those still
    running. Returns how many it killed."""
    try:
        driver = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return 0
    noted: set[psutil.Process] = set()  # every one seen, less those that ended (a dead driver has no children)
    while _alive(driver):
        try:
            kids = driver.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        for p in kids:
            try:
                if p.pid != os.getpid() and marker in " ".join(p.cmdline()):
                    noted.add(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        noted = {p for p in noted if _alive(p)}
        time.sleep(interval_s)
    left = [p for p in noted if _alive(p)]  # is_running also checks the start time: a reused pid is not killed
    for p in left:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return len(left)


if __name__ == "__main__":
    watch(int(sys.argv[1]))
