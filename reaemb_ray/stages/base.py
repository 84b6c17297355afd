"""What a stage is, when it counts as done, and how it runs: the one check `reaemb run` and every standalone
stage share.

A `Stage` names its upstream stages, the config values it reads and (for raw inputs from outside the
pipeline) a function listing those files; `work(cfg)` does the job, reading its inputs from and writing its
outputs to `layout.folder(name)` of the store, and returns metadata for the record. `check` compares the
stage's record with today's inputs; `execute` runs it so that a failure leaves no record.

Adding a stage (as `reason` was): a module with the work function and `stages(cfg) -> [Stage(...)]`, one line
in `reaemb_ray.stages.run.stage_builders`, one subcommand in `reaemb_ray.cli`; its folder is its name unless
`reaemb_ray.layout` says otherwise. See docs/ARCHITECTURE.md.
"""
from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from reaemb_ray import layout, records
from reaemb_ray.storage import Store, is_uri, store_for

log = logging.getLogger("reaemb.run")


class StageNotReady(RuntimeError):
    """A standalone stage whose upstream stages are missing or stale; the message names the command to run."""


class StageFailed(RuntimeError):
    """Raised by `reaemb run` with the failing stage named."""


def cfg_with(cfg, **changes):
    """A copy of cfg with dotted-key changes, e.g. cfg_with(cfg, **{"model.use_thought": False})."""
    new = copy.deepcopy(cfg)
    for dotted, value in changes.items():
        node = new
        *path, last = dotted.split(".")
        for p in path:
            node = getattr(node, p)
        setattr(node, last, value)
    return new


def output_store(cfg) -> Store:
    """The output store, refusing a local output_dir on a cluster: the other nodes cannot see the driver's disk."""
    if (cfg.ray.address or os.environ.get("RAY_ADDRESS")) and not is_uri(cfg.output_dir):
        raise ValueError(f"output_dir={cfg.output_dir!r} is a folder on the driver's node, which the cluster's other "
                         "nodes cannot read; set output_dir to s3://..., gs://... or file://... (a mount every node "
                         "shares), see docs/CLUSTER.md")
    return store_for(cfg)


@dataclass(frozen=True)
class Stage:
    name: str
    deps: tuple[str, ...]
    reads: dict[str, Any]  # the config values the outputs depend on (fields changed from their defaults)
    work: Callable[[Any], dict | None]  # work(cfg) -> metadata for the record
    cfg: Any  # the config the stage runs with (e.g. llmemb: model.use_thought=false)
    raw_inputs: Callable[[], dict] | None = None  # files outside the pipeline it reads: name -> [size, mtime]
    keep: tuple[str, ...] = ()  # parts of its folder kept when it starts over (results keyed by their own inputs)
    # False: the work replaces its whole folder in one swap, so the previous complete output stays until then
    start_over: bool = True
    # False: the work never continues an earlier attempt (nothing to resume from), so no `_running.json` is kept
    resumable: bool = True
    command: str = ""  # the standalone command that produces it, for messages


@dataclass
class Status:
    state: str  # "done", "missing" (no record), "stale" (record of other inputs) or "blocked" (upstream missing)
    inputs: dict | None = None
    fingerprint: str | None = None
    reasons: list[str] = field(default_factory=list)


def inputs_of(stage: Stage, store: Store) -> tuple[dict | None, list[str]]:
    """Today's inputs of `stage` (config, upstream run ids, raw files), or None and the missing upstream stages."""
    upstream, missing = {}, []
    for dep in stage.deps:
        rec = records.read(store, dep)
        if rec is None:
            missing.append(dep)
        else:
            upstream[dep] = rec["run_id"]
    if missing:
        return None, missing
    inputs = {"config": stage.reads, "upstream": upstream}
    if stage.raw_inputs is not None:
        inputs["data"] = stage.raw_inputs()
    return inputs, []


def check(stage: Stage, store: Store) -> Status:
    inputs, missing = inputs_of(stage, store)
    if inputs is None:
        return Status("blocked", reasons=[f"{d} has no record at {store.uri(layout.record(d))}" for d in missing])
    fp = records.inputs_fingerprint(inputs)
    rec = records.read(store, stage.name)
    if rec is None:
        return Status("missing", inputs, fp, ["it has no record"])
    if rec.get("fingerprint") == fp:
        return Status("done", inputs, fp)
    return Status("stale", inputs, fp, records.why_changed(rec.get("inputs", {}), inputs) or
                  ["its record was made by another version of this code"])


def execute(stage: Stage, store: Store, status: Status, fresh: bool = False) -> dict:
    """Run `stage` and record it; its old record goes first, so a failure leaves none."""
    if status.inputs is None:
        raise StageNotReady(f"{stage.name} cannot start: " + "; ".join(status.reasons))
    records.delete(store, stage.name)
    folder = layout.folder(stage.name)
    resume = stage.resumable and not fresh and records.running_fingerprint(store, stage.name) == status.fingerprint
    if resume:
        log.info("  %s: an interrupted attempt with the same inputs exists; resuming from its checkpoints", stage.name)
    elif stage.start_over:  # outputs or checkpoints of other inputs (or --fresh): start over
        for name in store.listdir(folder):
            if fresh or name not in stage.keep:
                store.delete(layout.join(folder, name))
    if stage.resumable:
        records.mark_running(store, stage.name, status.fingerprint)
    t0 = time.time()
    meta = stage.work(stage.cfg) or {}
    return records.write(store, stage.name, status.inputs, meta, time.time() - t0)


def run_standalone(stage: Stage, upstream: list[Stage], fresh: bool = False) -> str:
    """`reaemb <stage>`: refuse when an upstream stage is not done, skip when up to date, else run and say why.

    Returns "skipped" or "ran"."""
    store = output_store(stage.cfg)
    for up in upstream:
        s = check(up, store)
        if s.state != "done":
            why = "; ".join(s.reasons)
            how = f"`reaemb {up.command}`" if up.command else "`reaemb run`"
            raise StageNotReady(f"{stage.name} needs {up.name}, which is not done ({why}); run {how} with the "
                                "same config first, or `reaemb run` for everything")
    s = check(stage, store)
    if s.state == "done" and not fresh:
        print(f"{stage.name}: up to date (same config and inputs as its record); pass --fresh to redo")
        return "skipped"
    if s.state == "stale" and not fresh:
        print(f"{stage.name}: redoing, because: {'; '.join(s.reasons)}")
    execute(stage, store, s, fresh)
    return "ran"
