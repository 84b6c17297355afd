"""Fault injection without Ray (issue #14): where a seeded fault strikes, how a process tree is killed, and
what a rerun must show.

A fault is a process of a stage (`FAULTS`): it is SIGKILLed at a point drawn from the fault's seed
(`kill_point`: a learner step, a checkpoint or an export shard, plus a delay so that it lands anywhere in the
work that follows), then the same command runs again if the stage did not recover by itself. Against an
uninterrupted run of the same config:
- every step (CRRL, LRCL) or item (export) appears exactly once in the outputs (`ledger`: nothing lost,
  nothing twice);
- the final weights or table are bit-equal where the math is deterministic, else within a max abs difference
  (`compare`).
scripts/fault_injection.py runs every fault and prints the table; tests/stages/test_faults.py runs those that
fit the suite.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from typing import Callable, Iterable, Mapping

import numpy as np
import psutil

# fault -> the process killed, and how the run gets past it
FAULTS = {
    "crrl/rollout": "a rollout worker actor (SIGKILL of its pid); the controller replaces it, same batch re-issued",
    "crrl/reward": "a reward worker actor (SIGKILL of its pid); the controller replaces it, same batch re-scored",
    "crrl/learner": "the learner actor (SIGKILL of its pid); the stage fails, the rerun resumes from its checkpoint",
    "crrl/driver": "the `reaemb crrl` process (SIGKILL); the rerun resumes from the last checkpoint",
    "lrcl/train_worker": "a Ray Train worker (SIGKILL); Ray Train restarts the group from the last checkpoint",
    "lrcl/driver": "the `reaemb lrcl` process (SIGKILL); the rerun resumes from the newest complete checkpoint",
    "export/actor": "a Ray Data export actor (SIGKILL); Ray Data restarts it and retries its batches",
    "export/driver": "the `reaemb export` process (SIGKILL); the rerun embeds only the missing shards",
}


def kill_point(seed: int, fault: str, first: int, last: int, max_delay_s: float = 0.0) -> tuple[int, float]:
    """(point, delay): the fault strikes `delay` seconds after the seeded point in [first, last] is reached."""
    rng = random.Random(f"{fault}:{seed}")
    return rng.randint(first, last), round(rng.uniform(0.0, max_delay_s), 2)


def ledger(ids: Iterable[int], expected: Iterable[int]) -> dict[str, list[int]]:
    """Which of the expected step (or item) ids are missing, and which appear more than once (or unexpected)."""
    counts, want = Counter(int(i) for i in ids), {int(i) for i in expected}
    return {"lost": sorted(want - set(counts)),
            "duplicated": sorted(i for i, c in counts.items() if c > 1 or i not in want)}


def compare(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> dict:
    """Arrays by name against the uninterrupted run's: bit-equal, and the max abs difference."""
    if set(got) != set(want):
        raise ValueError(f"different arrays: {sorted(set(got) ^ set(want))}")
    diffs = [float(np.max(np.abs(np.asarray(got[k], np.float64) - np.asarray(want[k], np.float64)), initial=0.0))
             if np.shape(got[k]) == np.shape(want[k]) else float("inf") for k in want]
    equal = all(np.shape(got[k]) == np.shape(want[k]) and np.array_equal(got[k], want[k]) for k in want)
    return {"bit_equal": equal, "max_abs_diff": max(diffs, default=0.0)}


def descendants(pid: int, marker: str = "") -> list[psutil.Process]:
    """The live descendants of `pid` whose command line contains `marker` (Ray titles an actor's process
    `ray::<Class>.<method>`)."""
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in kids:
        try:
            if marker in " ".join(p.cmdline()):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def tagged(var: str, value: str) -> list[int]:
    """Pids of the processes (this one excluded) whose environment has `var`=`value`: a test tags what it starts,
    Ray's processes inherit the tag, so teardown can stop exactly those (never another job's Ray)."""
    pids = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and p.environ().get(var) == value:
                pids.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return pids


def kill_tree(pid: int, grace_s: float = 30.0) -> list[str]:
    """SIGKILL `pid` alone (the fault), then give its descendants `grace_s` to exit on their own (an embedded
    Ray shares its driver's fate); SIGKILL those still alive then. Returns their names (what outlived `pid`)."""
    tree = descendants(pid)
    os.kill(pid, signal.SIGKILL)
    _, alive = psutil.wait_procs(tree, timeout=grace_s)
    names = []
    for p in alive:
        try:
            names.append(" ".join(p.cmdline())[:60] or p.name())
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)
    return names


def run_and_kill(cmd: list[str], reached: Callable[[], bool], delay_s: float, timeout_s: float, log_path,
                 cwd=None, env=None) -> dict:
    """Run `cmd` (its output into `log_path`); once `reached()` holds, wait `delay_s` and SIGKILL it (`kill_tree`).

    Returns {"killed": bool, "returncode": ..., "orphans": names of the descendants that outlived it (`kill_tree`)}.
    Not killed: the command ended first (the point was never reached, or it finished within the delay)."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        deadline = time.monotonic() + timeout_s
        try:
            while proc.poll() is None and not reached():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{' '.join(cmd)}: the kill point was not reached in {timeout_s:.0f} s")
                time.sleep(0.1)
            time.sleep(delay_s)
            if proc.poll() is not None:
                return {"killed": False, "returncode": proc.returncode, "orphans": []}
            orphans = kill_tree(proc.pid)
            return {"killed": True, "returncode": proc.wait(), "orphans": orphans}
        finally:
            if proc.poll() is None:  # a timeout or an error here: do not leave the run behind
                kill_tree(proc.pid)
                proc.wait()


def run_to_end(cmd: list[str], timeout_s: float, log_path, cwd=None, env=None) -> int:
    """Run `cmd` to its end (output appended to `log_path`); its process tree is killed after `timeout_s`."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            proc.wait()
            raise TimeoutError(f"{' '.join(cmd)} did not finish in {timeout_s:.0f} s (log: {log_path})") from None
