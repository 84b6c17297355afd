"""`reaemb run`: every stage `eval.methods` needs, in dependency order, each skipped when its record matches
today's inputs (`reaemb_ray.stages.base.check`, the same check the standalone commands use).

    prepare -> srs_pretrain -> {lrcl -> crrl (+ variants), llmemb} -> export_<method> -> evaluate

Changing `crrl.sigma` re-runs crrl, its export and the evaluation, but not prepare or LRCL; a stage that ran
again re-runs what reads it; a stage interrupted with the same inputs resumes from its own checkpoints.
"""
from __future__ import annotations

import logging
from pathlib import Path

from reaemb_ray import layout
from reaemb_ray.config import Config, InputError
from reaemb_ray.stages.base import Stage, StageFailed, check, execute, output_store, run_standalone
from reaemb_ray.storage import store_for

log = logging.getLogger("reaemb.run")


def stage_builders():
    from reaemb_ray.stages import crrl, evaluate, export, lrcl, prepare, reason, srs_pretrain

    # each returns its stages for a config; together they are in dependency order
    return [prepare.stages, srs_pretrain.stages, lrcl.stages, crrl.stages, reason.stages, export.stages,
            evaluate.stages]


def catalogue(cfg: Config) -> dict[str, Stage]:
    """Every stage this config can run, by name, in dependency order (builders' order where deps allow: e.g.
    CRRL with hard negatives reads the LRCL export, which its builder lists after CRRL)."""
    built: dict[str, Stage] = {}
    for build in stage_builders():
        for st in build(cfg):
            built[st.name] = st
    out: dict[str, Stage] = {}
    while len(out) < len(built):
        ready = [st for n, st in built.items() if n not in out and all(d in out for d in st.deps)]
        if not ready:
            waiting = {n: [d for d in st.deps if d not in out] for n, st in built.items() if n not in out}
            unknown = {n: [d for d in ds if d not in built] for n, ds in waiting.items()}
            raise RuntimeError("stages with dependencies that do not exist or form a cycle: "
                               + str({n: ds for n, ds in (unknown if any(unknown.values()) else waiting).items() if ds}))
        out[ready[0].name] = ready[0]
    return out


def upstream_of(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stages `name` reads, directly or not, in dependency order."""
    needed, todo = set(), list(stages[name].deps)
    while todo:
        d = todo.pop()
        if d not in needed:
            needed.add(d)
            todo += stages[d].deps
    return [st for n, st in stages.items() if n in needed]


def plan(cfg: Config) -> list[Stage]:
    """The stages `reaemb run` runs: the evaluation and everything it reads."""
    stages = catalogue(cfg)
    return upstream_of(stages, "evaluate") + [stages["evaluate"]]


def run_pipeline(cfg: Config, fresh: bool = False) -> dict[str, str]:
    """Run every stage that is not done with today's inputs; returns stage -> "skipped" | "ran"."""
    from reaemb_ray.preflight import check_catalogue

    store = output_store(cfg)
    log.info("reaemb_ray from %s; outputs in %s", Path(__file__).parents[1], store.uri())
    stages = plan(cfg)
    status: dict[str, str] = {}
    for i, st in enumerate(stages, 1):
        s = check(st, store)
        if s.state == "done" and not fresh:
            log.info("[%d/%d] %s: up to date, skipped", i, len(stages), st.name)
            status[st.name] = "skipped"
            if st.name == "prepare":  # settings that depend on the catalogue, before any training
                check_catalogue(cfg, store.fetch(layout.PREPARED))
            continue
        log.info("[%d/%d] %s: %s", i, len(stages), st.name, "running from scratch (--fresh)" if fresh else
                 "running" if s.state == "missing" else "redoing")
        if s.state == "stale" and not fresh:
            log.info("  because: %s", "; ".join(s.reasons))
        try:
            execute(st, store, s, fresh)
        except Exception as e:
            if not isinstance(e, InputError):  # bad input is reported in one line by the caller, a bug in full
                log.exception("stage %s failed", st.name)
            raise StageFailed(f"stage '{st.name}' failed: {type(e).__name__}: {e}") from e
        status[st.name] = "ran"
        if st.name == "prepare":
            check_catalogue(cfg, store.fetch(layout.PREPARED))
    return status


def run_stage(cfg: Config, name: str, fresh: bool = False) -> str:
    """A standalone stage (`reaemb lrcl`, `reaemb export`, ...): the same check as `run`, refusing to start
    when an upstream stage is not done."""
    stages = catalogue(cfg)
    if name not in stages:
        raise ValueError(f"unknown stage {name!r}; this config has {', '.join(stages)}")
    return run_standalone(stages[name], upstream_of(stages, name), fresh)


def main(cfg: Config, fresh: bool = False) -> None:
    status = run_pipeline(cfg, fresh=fresh)
    store = store_for(cfg)
    print(f"reaemb run: finished ({', '.join(f'{k}={v}' for k, v in status.items())})")
    print(f"report: {store.uri(layout.report())}  (records: {store.uri(layout.report(layout.REPORT_JSON))})")
