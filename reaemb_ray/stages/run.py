"""`reaemb run`: the whole pipeline as a small DAG of stages, resumable and invalidated by fingerprint.

prepare -> srs_pretrain -> {lrcl -> crrl, llmemb} -> export/<method> -> evaluate

Each stage's fingerprint hashes the config sections it reads plus its upstream fingerprints, so changing
`crrl.sigma` re-runs crrl, its export and the evaluation, but not prepare or LRCL. A stage that was
interrupted is re-entered without `--fresh`, and resumes from its own checkpoints (LRCL and CRRL
checkpoints, export shards, finished evaluation runs).
"""
from __future__ import annotations

import argparse
import copy
import importlib
import json
import logging
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

from reaemb_ray import storage
from reaemb_ray.cli import StageFailed
from reaemb_ray.config import Config, InputError

log = logging.getLogger("reaemb.run")


@dataclass
class Stage:
    name: str
    deps: list[str]
    sections: Callable[[Config], dict]  # the config values this stage's output depends on
    run: Callable[[Config, bool], None]  # (cfg, fresh)
    outputs: list[str] = field(default_factory=list)


def _call(module: str, cfg: Config, fresh: bool) -> None:
    importlib.import_module(f"reaemb_ray.stages.{module}").main(cfg, argparse.Namespace(fresh=fresh, quick=False))


def _with(cfg: Config, **changes) -> Config:
    """A copy of cfg with dotted-key changes, e.g. _with(cfg, **{"model.use_thought": False})."""
    new = copy.deepcopy(cfg)
    for dotted, value in changes.items():
        node = new
        *path, last = dotted.split(".")
        for p in path:
            node = getattr(node, p)
        setattr(node, last, value)
    return new


def _pretrain(cfg: Config, fresh: bool) -> None:
    from reaemb_ray.srs.pretrain import pretrain_id_sasrec

    pretrain_id_sasrec(cfg)


def variant_method(variant: str) -> str:
    """`paper/srs` -> the evaluated method name `crrl-paper-srs`."""
    return "crrl-" + variant.replace("/", "-")


def evaluated_methods(cfg: Config) -> list[str]:
    """`eval.methods`, plus one `crrl-<objective>-<reward>` method per CRRL variant when `crrl` is evaluated."""
    extra = [variant_method(v) for v in cfg.crrl.variants] if "crrl" in cfg.eval.methods else []
    return list(cfg.eval.methods) + [m for m in extra if m not in cfg.eval.methods]


def _variant_cfg(cfg: Config, variant: str) -> Config:
    """A CRRL variant works in `variants/<method>/`, sharing prepare, LRCL and the pretrained SRS by symlink."""
    objective, reward = variant.split("/")
    vdir = cfg.out / "variants" / variant_method(variant)
    vdir.mkdir(parents=True, exist_ok=True)
    for shared in ("prepared", "lrcl", "srs_pretrain"):
        link, target = vdir / shared, (cfg.out / shared).resolve()
        if target.exists() and not link.exists():
            link.symlink_to(target, target_is_directory=True)
    return _with(cfg, output_dir=str(vdir), **{"crrl.objective": objective, "crrl.reward": reward,
                                               "crrl.variants": []})


def _run_variant(cfg: Config, fresh: bool, variant: str) -> None:
    _call("crrl", _variant_cfg(cfg, variant), fresh)


def _export_variant(cfg: Config, fresh: bool, variant: str) -> None:
    vcfg = _variant_cfg(cfg, variant)
    _call("export", _with(vcfg, **{"export.method": "crrl"}), fresh)
    link = cfg.out / "embeddings" / variant_method(variant)
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to((vcfg.out / "embeddings" / "crrl").resolve(), target_is_directory=True)


def plan(cfg: Config, fields: Callable = storage.changed_fields) -> list[Stage]:
    """The stages `eval.methods` (and `crrl.variants`) need, in dependency order.

    `fields(section, drop=...)` picks what a stage's fingerprint hashes: the fields changed from their defaults
    (format 2), or `storage.whole_section` (format 1, to recognise work finished before format 2).
    """
    methods = cfg.eval.methods
    model = fields(cfg.model)
    variants = cfg.crrl.variants if "crrl" in methods else []
    stages = [
        Stage("prepare", [], lambda c: {"data": fields(c.data)}, lambda c, f: _call("prepare", c, f), ["prepared"]),
    ]
    rewards = {cfg.crrl.reward} | {v.split("/")[1] for v in variants}
    needs_pretrain = "crrl" in methods and bool(rewards & {"srs", "mix"}) or cfg.srs.align_alpha > 0
    if needs_pretrain:
        stages.append(Stage("srs_pretrain", ["prepare"],
                            lambda c: {"srs": fields(c.srs, drop=("backbones", "seeds")), "seed": c.seed},
                            _pretrain, ["srs_pretrain"]))
    if "llmemb" in methods:
        stages.append(Stage("llmemb", ["prepare"], lambda c: {"model": {**model, "use_thought": False},
                                                              "lrcl": fields(c.lrcl), "seed": c.seed},
                            lambda c, f: _call("lrcl", _with(c, **{"model.use_thought": False}), f), ["llmemb"]))
    if "lrcl" in methods or "crrl" in methods:
        stages.append(Stage("lrcl", ["prepare"], lambda c: {"model": model, "lrcl": fields(c.lrcl), "seed": c.seed},
                            lambda c, f: _call("lrcl", _with(c, **{"model.use_thought": True}), f), ["lrcl"]))
    if "crrl" in methods:
        # only the srs/mix rewards read the pretrained ID-SASRec
        uses_srs = lambda reward: ["srs_pretrain"] if reward in ("srs", "mix") else []  # noqa: E731
        deps = ["lrcl"] + uses_srs(cfg.crrl.reward)
        crrl_sections = fields(cfg.crrl, drop=("variants",))
        stages.append(Stage("crrl", deps, lambda c: {"crrl": crrl_sections},
                            lambda c, f: _call("crrl", c, f), ["crrl"]))
        for v in variants:
            stages.append(Stage(variant_method(v), ["lrcl"] + uses_srs(v.split("/")[1]), lambda c, v=v: {"crrl": crrl_sections, "variant": v},
                                lambda c, f, v=v: _run_variant(c, f, v), [f"variants/{variant_method(v)}"]))
    export = fields(cfg.export, drop=("method",))
    if "reason" in methods:  # the explicit-reasoning mode writes its own table (embeddings/reason)
        stages.append(Stage("reason", ["prepare"], lambda c: {"reason": fields(c.reason), "seed": c.seed,
                                                              "srs": fields(c.srs, drop=("backbones", "seeds"))},
                            lambda c, f: _call("reason", c, f), ["reason", "embeddings/reason"]))
    upstream = {"raw_llm": ["prepare"], "llmemb": ["llmemb"], "lrcl": ["lrcl"], "crrl": ["crrl"]}
    for m in [m for m in methods if m not in ("id", "reason")]:
        stages.append(Stage(f"export_{m}", upstream[m],
                            lambda c, m=m: {"export": export, "method": m,
                                            "backbone": cfg.model.backbone if m == "raw_llm" else None},
                            lambda c, f, m=m: _call("export", _with(c, **{"export.method": m}), f),
                            [f"embeddings/{m}"]))
    for v in variants:
        m = variant_method(v)
        stages.append(Stage(f"export_{m}", [m], lambda c: {"export": export, "method": "crrl"},
                            lambda c, f, v=v: _export_variant(c, f, v), [f"embeddings/{m}"]))
    all_methods = evaluated_methods(cfg)
    deps = ["prepare"] + [f"export_{m}" if m != "reason" else "reason" for m in all_methods if m != "id"] + (
        ["srs_pretrain"] if needs_pretrain else [])
    # evaluate keeps each (method, backbone, seed) result keyed by its inputs, so it is never started "fresh":
    # a changed embedding table re-trains only the recommenders that read it
    stages.append(Stage("evaluate", deps, lambda c: {"srs": fields(c.srs), "eval": fields(c.eval)},
                        lambda c, f: _call("evaluate", _with(c, **{"eval.methods": all_methods}), False),
                        ["eval"]))
    return stages


def fingerprints(stages: list[Stage], cfg: Config) -> dict[str, str]:
    """Each stage's fingerprint: its config inputs plus its upstream stages' fingerprints."""
    fps: dict[str, str] = {}
    for st in stages:
        fps[st.name] = storage.fingerprint(st.sections(cfg), [fps[d] for d in st.deps])
    return fps


def why_stale(manifest: storage.Manifest, st: Stage, inputs: dict, status: dict[str, str]) -> list[str]:
    """Human-readable reasons a finished stage is re-run: changed config values, re-run upstream stages."""
    reasons = [f"upstream stage {d} ran again" for d in st.deps if status.get(d) == "ran"]
    old = manifest.inputs(st.name)
    if old is None:
        reasons.append("its record predates the recorded inputs (config changed since)")
    else:
        reasons += storage.describe_changes(old, json.loads(json.dumps(inputs, default=str)))  # as recorded
    return reasons or ["the code's fingerprint of its inputs changed"]


def run_pipeline(cfg: Config, fresh: bool = False) -> dict[str, str]:
    """Run every stage that is not already done with the same fingerprint; returns stage -> status."""
    from reaemb_ray.preflight import check_catalogue
    from reaemb_ray.runtime import init_ray

    remote = cfg.output_dir if storage.is_uri(cfg.output_dir) else None
    local = storage.local_workdir(cfg.output_dir, cfg.data.cache_dir)
    if remote:
        storage.sync_down(remote, local)
    work_cfg = _with(cfg, output_dir=str(local))
    local.mkdir(parents=True, exist_ok=True)
    manifest = storage.Manifest(local)

    status: dict[str, str] = {}
    stages = plan(cfg)
    fps = fingerprints(stages, cfg)
    fps_format1 = fingerprints(plan(cfg, fields=storage.whole_section), cfg)
    for i, st in enumerate(stages, 1):
        inputs, fp = st.sections(cfg), fps[st.name]
        if not fresh and manifest.recorded(st.name) == fps_format1[st.name] != fp:
            manifest.adopt(st.name, fp, inputs)  # finished before fingerprint format 2, same config
        if not fresh and manifest.is_done(st.name, fp):
            log.info("[%d/%d] %s: up to date, skipped", i, len(stages), st.name)
            status[st.name] = "skipped"
            if st.name == "prepare":
                check_catalogue(work_cfg, local / "prepared")
            continue
        # A recorded but different fingerprint means the config changed: start this stage over. The same
        # fingerprint, still marked running, means it was interrupted: resume from its own checkpoints.
        recorded = manifest.recorded(st.name)
        stale = fresh or (recorded is not None and recorded != fp)
        resume = not stale and recorded == fp
        log.info("[%d/%d] %s: %s", i, len(stages), st.name,
                 "running from scratch" if stale else "resuming" if resume else "running")
        if not fresh and stale:
            log.info("  because: %s", "; ".join(why_stale(manifest, st, inputs, status)))
        manifest.start(st.name, fp, inputs)
        t0 = time.time()
        try:
            if st.name != "prepare":  # prepare reads the data without Ray: a data error stops before Ray starts
                init_ray(cfg.ray)
            st.run(work_cfg, stale)
        except Exception as e:
            if not isinstance(e, InputError):  # bad input is reported in one line by the caller, a bug in full
                log.error("stage %s failed:\n%s", st.name, traceback.format_exc())
            if remote:
                storage.sync_up(local, remote)  # keep what was computed (checkpoints, shards)
            raise StageFailed(f"stage '{st.name}' failed: {type(e).__name__}: {e}") from e
        manifest.mark(st.name, fp, time.time() - t0, st.outputs, inputs)
        status[st.name] = "ran"
        if st.name == "prepare":  # settings that depend on the catalogue, before any training
            check_catalogue(work_cfg, local / "prepared")
        if remote:
            storage.sync_up(local, remote)
    return status


def main(cfg: Config, args) -> None:
    status = run_pipeline(cfg, fresh=getattr(args, "fresh", False))
    where = cfg.output_dir if storage.is_uri(cfg.output_dir) else storage.local_workdir(cfg.output_dir)
    print(f"reaemb run: finished ({', '.join(f'{k}={v}' for k, v in status.items())})")
    print(f"report: {where}/eval/report.md  (records: {where}/eval/report.json)")
