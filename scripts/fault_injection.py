"""Every fault of `reaemb_ray.faults.FAULTS` on a real local Ray (tiny model, real MovieLens-100k): the process
is SIGKILLed at a point drawn from the seed, the same command runs again when the stage did not recover by
itself, and the outputs are compared with an uninterrupted run of the same config. Prints the table
(docs/ARCHITECTURE.md, "Faults", holds a measured one); exits 1 when a fault lost or repeated anything.

    python scripts/fault_injection.py [--seed 0] [--only crrl/learner,export/driver] [--work DIR]

Actor and Ray Train worker faults run in this process (its own local Ray; the victim is found among this
process's descendants); driver faults run `python -m reaemb_ray.cli <stage> --config F` as a subprocess and
kill it (its Ray dies with it). tests/stages/test_faults.py runs some of these scenarios in the suite.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reaemb_ray import faults, layout  # noqa: E402
from reaemb_ray.config import load_config  # noqa: E402

ML100K = REPO.parent / "shared" / "data" / "ml-100k"
SETTINGS = {  # tiny model, a few steps: each run takes seconds once Ray is up
    "common": {"seed": 0, "data": {"reader": "movielens", "path": str(ML100K), "name": "ml-100k"},
               "model": {"backbone": "tiny", "dtype": "float32", "max_length": 96}, "ray": {"num_cpus": 2}},
    # max_staleness 0: every rollout under the newest weights, so a run is deterministic and can be bit-equal
    "crrl": {"crrl": {"init_from": "backbone", "engine": "torch", "num_rollout_workers": 1, "num_reward_workers": 1,
                      "group_size": 4, "items_per_batch": 8, "max_items": 24, "epochs": 2, "warmup_steps": 1,
                      "lr": 0.01, "eval_items": 8, "eval_every": 3, "checkpoint_every": 2, "max_staleness": 0,
                      # every group gets a reward spread, so each step moves the policy (docs/CRRL.md)
                      "scoring": "centered_cosine", "reward_form": "infonce", "sigma_relative": True, "sigma": 0.5,
                      "rollout_resources": {"num_cpus": 1}, "reward_resources": {"num_cpus": 0.5},
                      "learner_resources": {"num_cpus": 0.5}}},
    "lrcl": {"lrcl": {"num_workers": 2, "steps": 6, "batch_size": 8, "micro_batch_size": 4, "max_items": 20,
                      "checkpoint_every": 2, "warmup_steps": 1, "lr": 0.01, "max_failures": 1}},
    # batches of 16: an actor call (8 batches, stages/export.py SORT_WINDOW) is 128 items, under a shard's 200,
    # so shards finish one by one and a kill lands between them
    "export": {"export": {"method": "raw_llm", "batch_size": 16, "shard_size": 200, "num_actors": 1,
                          "cpus_per_actor": 1}},
}
STAGE = {"crrl": "crrl", "lrcl": "lrcl", "export": "export_raw_llm"}  # command -> the stage it runs
CRRL_STEPS, LRCL_STEPS, EXPORT_SHARDS = 6, 6, 9  # what the settings above plan (1682 items / 200 per shard)
SUBPROCESS_TIMEOUT_S = 600


# ------------------------------------------------------------------------------------------ a run folder


@dataclasses.dataclass
class Run:
    """One output folder with its config file; `command` is what a user types, `stage` runs it in-process."""
    out: Path
    command: str

    @classmethod
    def make(cls, root: Path, name: str, command: str) -> "Run":
        from reaemb_ray.stages.run import run_stage

        out = root / name
        out.mkdir(parents=True)
        settings = dict(SETTINGS["common"], **SETTINGS[command], output_dir=str(out))
        (out / "config.yaml").write_text(yaml.safe_dump(settings))
        run = cls(out, command)
        run_stage(run.cfg(), "prepare")  # no Ray; seconds
        return run

    def cfg(self):
        return load_config(str(self.out / "config.yaml"), [])

    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-m", "reaemb_ray.cli", self.command, "--config", str(self.out / "config.yaml")]

    def stage(self, hooks: dict | None = None) -> str:
        """The command in this process (on this process's Ray); `hooks` go to the CRRL controller."""
        from reaemb_ray.stages.base import run_standalone
        from reaemb_ray.stages.crrl import _summary, run_crrl
        from reaemb_ray.stages.run import catalogue, upstream_of

        stages = catalogue(self.cfg())
        stage = stages[STAGE[self.command]]
        if hooks:
            stage = dataclasses.replace(stage, work=lambda c: _summary(run_crrl(c, stage.name, hooks=hooks)))
        return run_standalone(stage, upstream_of(stages, stage.name))

    def subprocess_env(self) -> dict:
        return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))

    # what a finished run left: the ids that must appear once, and the arrays compared with the uninterrupted run

    def outputs(self) -> tuple[list[int], list[int], dict[str, np.ndarray]]:
        if self.command == "export":
            import pyarrow.parquet as pq

            from reaemb_ray.stages.export import vectors_of
            table = pq.read_table(self.out / layout.embeddings_table("raw_llm"))
            items = pq.read_table(self.out / layout.PREPARED / "items.parquet", columns=["item_id"])
            return (table.column("item_id").to_pylist(), items.column("item_id").to_pylist(),
                    {"vectors": vectors_of(table)})
        from safetensors.numpy import load_file

        folder = self.out / layout.folder(STAGE[self.command])
        rows = [json.loads(x) for x in (folder / layout.METRICS).read_text().splitlines()]
        total = CRRL_STEPS if self.command == "crrl" else LRCL_STEPS
        arrays = {f"attention.{k}": v for k, v in load_file(str(folder / "final" / "thought_attention.safetensors")).items()}
        if (folder / "final" / "adapter_model.safetensors").exists():
            arrays |= {f"lora.{k}": v for k, v in load_file(str(folder / "final" / "adapter_model.safetensors")).items()}
        by_step = {r["step"]: r for r in rows}
        arrays["metrics.loss"] = np.array([by_step[s]["loss"] if s in by_step else np.nan for s in range(1, total + 1)])
        return [r["step"] for r in rows], list(range(1, total + 1)), arrays

    def resume_point(self) -> str:
        """Where a rerun starts: the checkpoint or shards the killed run left."""
        if self.command == "crrl":
            latest = self.out / "crrl" / layout.CRRL_CHECKPOINTS / "latest.json"
            return f"step {json.loads(latest.read_text())['step']}" if latest.exists() else "step 0"
        if self.command == "lrcl":
            from reaemb_ray.stages.lrcl import latest_checkpoint
            from reaemb_ray.storage import store_for
            ckpt = latest_checkpoint(store_for(self.cfg()), layout.join("lrcl", layout.TRAIN_STORAGE, layout.TRAIN_RUN))
            return f"step {int(ckpt.rsplit('_', 1)[1])}" if ckpt else "step 0"
        return f"{len(self.shards())} of {EXPORT_SHARDS} shards"

    # observable progress, for the kill points

    def checkpoint_step(self) -> int:
        if self.command == "crrl":
            latest = self.out / "crrl" / layout.CRRL_CHECKPOINTS / "latest.json"
            try:
                return json.loads(latest.read_text())["step"]
            except (FileNotFoundError, json.JSONDecodeError):
                return 0
        train = self.out / "lrcl" / layout.TRAIN_STORAGE / layout.TRAIN_RUN
        done = [int(p.parent.name.removeprefix("step_")) for p in train.glob("step_*/data_state.json")]
        return max(done, default=0)

    def shards(self) -> list[Path]:
        return sorted((self.out / layout.folder("export_raw_llm") / layout.SHARDS).glob("shard_*.parquet"))


# ------------------------------------------------------------------------------------------ injecting


def _kill_actor(handle) -> int:
    import ray

    pid = ray.get(handle.pid.remote())
    os.kill(pid, signal.SIGKILL)
    return pid


def _kill_descendant_when(reached, marker: str, delay_s: float, timeout_s: float = 600) -> dict:
    """In a thread: once `reached()`, wait `delay_s` and SIGKILL the first descendant of this process whose
    command line holds `marker`; the returned dict says what it killed."""
    out: dict = {}

    def watch():
        deadline = time.monotonic() + timeout_s
        while not reached() and time.monotonic() < deadline and not out.get("stop"):
            time.sleep(0.1)
        time.sleep(delay_s)
        while time.monotonic() < deadline and not out.get("stop"):
            victims = faults.descendants(os.getpid(), marker)
            if victims:
                victims[0].kill()
                out["pid"] = victims[0].pid
                return
            time.sleep(0.1)

    out["thread"] = threading.Thread(target=watch, daemon=True)
    out["thread"].start()
    return out


def _result(fault: str, run: Run, want: dict, where: str, recovery: str, seconds: float) -> dict:
    ids, expected, arrays = run.outputs()
    row = {"fault": fault, "where": where, "recovery": recovery, **faults.ledger(ids, expected),
           **faults.compare(arrays, want), "seconds": round(seconds, 1)}
    return row


def crrl_actor(root: Path, seed: int, want: dict, role: str) -> dict:
    """A rollout or reward worker SIGKILLed right after a seeded learner step; the controller recovers."""
    run = Run.make(root, f"crrl-{role}", "crrl")
    at, _ = faults.kill_point(seed, f"crrl/{role}", 1, CRRL_STEPS - 1)
    killed = {}

    def hook(step, ctl):
        if step == at and not killed:
            pool = ctl.actors.rollout if role == "rollout" else ctl.actors.reward
            killed["pid"] = _kill_actor(pool[0])

    t0 = time.time()
    run.stage(hooks={"after_step": hook})
    assert killed, f"crrl/{role}: the fault was not injected"
    return _result(f"crrl/{role}", run, want, f"after learner step {at}", "in run: worker replaced", time.time() - t0)


def crrl_learner(root: Path, seed: int, want: dict) -> dict:
    """The learner SIGKILLed after a seeded step: the stage fails; the same command again resumes."""
    import ray

    run = Run.make(root, "crrl-learner", "crrl")
    at, _ = faults.kill_point(seed, "crrl/learner", 1, CRRL_STEPS - 1)
    killed = {}

    def hook(step, ctl):
        if step == at and not killed:
            killed["pid"] = _kill_actor(ctl.actors.learner)

    t0 = time.time()
    try:
        run.stage(hooks={"after_step": hook})
        raise AssertionError("crrl/learner: the run finished although its learner was killed")
    except ray.exceptions.RayActorError:  # the stage fails with its learner
        pass
    resumed = run.resume_point()
    run.stage()
    return _result("crrl/learner", run, want, f"after learner step {at}", f"rerun from {resumed}", time.time() - t0)


def driver(root: Path, seed: int, want: dict, command: str) -> dict:
    """`reaemb <command>` SIGKILLed a seeded delay after a seeded checkpoint or shard; then run again to the end."""
    run = Run.make(root, f"{command}-driver", command)
    fault = f"{command}/driver"
    if command == "export":
        at, delay = faults.kill_point(seed, fault, 1, EXPORT_SHARDS - 3, max_delay_s=1.0)
        reached, where = (lambda: len(run.shards()) >= at), f"{at} shards written"
    else:
        # the checkpoints land on even steps (checkpoint_every 2); the last one ends the run
        at, delay = faults.kill_point(seed, fault, 1, (CRRL_STEPS if command == "crrl" else LRCL_STEPS) // 2 - 1,
                                      max_delay_s=3.0)
        at *= 2
        reached, where = (lambda: run.checkpoint_step() >= at), f"checkpoint of step {at}"
    t0 = time.time()
    log = run.out / "driver.log"
    res = faults.run_and_kill(run.argv, reached, delay, SUBPROCESS_TIMEOUT_S, log, cwd=REPO, env=run.subprocess_env())
    if not res["killed"]:
        raise AssertionError(f"{fault}: the run ended (rc {res['returncode']}) before the kill point; see {log}")
    resumed = run.resume_point()
    rc = faults.run_to_end(run.argv, SUBPROCESS_TIMEOUT_S, log, cwd=REPO, env=run.subprocess_env())
    if rc != 0:
        raise AssertionError(f"{fault}: the rerun failed (rc {rc}); see {log}")
    recovery = f"rerun from {resumed}" + (f"; outlived the driver: {', '.join(res['orphans'])}" if res["orphans"] else "")
    return _result(fault, run, want, f"{where} + {delay} s", recovery, time.time() - t0)


def lrcl_train_worker(root: Path, seed: int, want: dict) -> dict:
    """A Ray Train worker SIGKILLed a seeded delay after a seeded checkpoint; Ray Train restarts the group."""
    run = Run.make(root, "lrcl-worker", "lrcl")
    at, delay = faults.kill_point(seed, "lrcl/train_worker", 1, LRCL_STEPS // 2 - 1, max_delay_s=2.0)
    at *= 2
    killed = _kill_descendant_when(lambda: run.checkpoint_step() >= at, "RayTrainWorker", delay)
    t0 = time.time()
    try:
        run.stage()
    finally:
        killed["stop"] = True
    assert "pid" in killed, "lrcl/train_worker: the fault was not injected (the run ended first)"
    return _result("lrcl/train_worker", run, want, f"checkpoint of step {at} + {delay} s",
                   "in run: worker group restarted", time.time() - t0)


def export_actor(root: Path, seed: int, want: dict) -> dict:
    """The Ray Data export actor SIGKILLed a seeded delay after a seeded number of shards; Ray Data retries."""
    run = Run.make(root, "export-actor", "export")
    at, delay = faults.kill_point(seed, "export/actor", 1, EXPORT_SHARDS - 3, max_delay_s=1.0)
    killed = _kill_descendant_when(lambda: len(run.shards()) >= at, "ItemEmbedder", delay)
    t0 = time.time()
    try:
        run.stage()
    finally:
        killed["stop"] = True
    assert "pid" in killed, "export/actor: the fault was not injected (the export ended first)"
    return _result("export/actor", run, want, f"{at} shards written + {delay} s", "in run: actor restarted",
                   time.time() - t0)


def uninterrupted(root: Path, command: str) -> dict:
    """The run every fault is compared with; its training must move the weights (else bit-equal says nothing)."""
    run = Run.make(root, f"{command}-uninterrupted", command)
    run.stage()
    ids, expected, arrays = run.outputs()
    assert faults.ledger(ids, expected) == {"lost": [], "duplicated": []}, ids
    if command == "crrl":
        from safetensors.numpy import load_file
        base = load_file(str(run.out / "crrl" / "base" / "thought_attention.safetensors"))
        assert any(not np.array_equal(arrays[f"attention.{k}"], v) for k, v in base.items()), "CRRL did not learn"
    return arrays


SCENARIOS = {  # fault -> (command, scenario(root, seed, uninterrupted arrays))
    "crrl/rollout": ("crrl", lambda r, s, w: crrl_actor(r, s, w, "rollout")),
    "crrl/reward": ("crrl", lambda r, s, w: crrl_actor(r, s, w, "reward")),
    "crrl/learner": ("crrl", crrl_learner),
    "crrl/driver": ("crrl", lambda r, s, w: driver(r, s, w, "crrl")),
    "lrcl/train_worker": ("lrcl", lrcl_train_worker),
    "lrcl/driver": ("lrcl", lambda r, s, w: driver(r, s, w, "lrcl")),
    "export/actor": ("export", export_actor),
    "export/driver": ("export", lambda r, s, w: driver(r, s, w, "export")),
}
assert set(SCENARIOS) == set(faults.FAULTS)


def table(rows: list[dict]) -> str:
    lines = ["| fault | injected | recovery | lost | duplicated | final vs uninterrupted | seconds |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        same = "bit-equal" if r["bit_equal"] else f"max abs diff {r['max_abs_diff']:.2g}"
        lines.append(f"| {r['fault']} | {r['where']} | {r['recovery']} | {r['lost'] or 'none'} | "
                     f"{r['duplicated'] or 'none'} | {same} | {r['seconds']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    import logging

    from reaemb_ray.runtime import init_ray

    p = argparse.ArgumentParser(description="kill each process of reaemb_ray.faults.FAULTS at a seeded point; "
                                "compare with an uninterrupted run; print the table")
    p.add_argument("--seed", type=int, default=0, help="draws every kill point")
    p.add_argument("--only", default="", help="comma-separated faults (default: all): " + ", ".join(SCENARIOS))
    p.add_argument("--work", default=None, help="folder for the runs (default: a temporary one, removed)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    chosen = [f for f in SCENARIOS if not args.only or f in args.only.split(",")]
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="reaemb-faults-") as tmp:
        root = Path(args.work or tmp)
        init_ray(load_config(None, ["ray.num_cpus=2"]).ray)
        baselines, rows = {}, []
        for fault in chosen:
            command, scenario = SCENARIOS[fault]
            if command not in baselines:
                baselines[command] = uninterrupted(root, command)
            rows.append(scenario(root, args.seed, baselines[command]))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(f"\n{table(rows)}\n\n{len(rows)} faults, seed {args.seed}, {time.time() - t0:.0f} s in all")
    return 0 if all(not r["lost"] and not r["duplicated"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
