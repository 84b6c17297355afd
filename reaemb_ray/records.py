"""One record per finished stage: `<stage folder>/_record.json`, written last, atomically.

A record holds the stage's inputs and a fingerprint of them:
- `config`: the config values the stage reads, as the fields changed from their defaults (`changed_fields`:
  a field added later at a default that keeps the old behaviour does not invalidate finished work; the flip
  side is that changing a default's value in the code needs a new field name);
- `upstream`: the `run_id` of every stage it reads, so a stage that ran again invalidates what read it;
- `data`: raw inputs outside the pipeline (the raw dataset's files with size and modification time).
and a `run_id` unique to this execution, plus whatever the stage reports (`meta`).

A stage is up to date when its record's fingerprint equals the fingerprint of today's inputs. A stage that
fails leaves no record (the old one is deleted before the stage starts); `_running.json` holds the
fingerprint of the attempt, so a later attempt with the same inputs resumes from the stage's own
checkpoints and one with other inputs starts over.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import secrets
import time
from typing import Any

from reaemb_ray import layout
from reaemb_ray.storage import Store

log = logging.getLogger(__name__)


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def changed_fields(section: Any, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of a config dataclass that differ from their defaults (nested dataclasses recursed)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(section):
        if f.name in drop:
            continue
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            sub = changed_fields(value)
            if sub:
                out[f.name] = sub
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if default is dataclasses.MISSING or value != default:
            out[f.name] = value
    return out


def describe_changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """`["lrcl.lr: 0.0002 -> 0.0001", ...]`: what differs between two recorded config inputs."""
    if isinstance(old, dict) and isinstance(new, dict):
        lines: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(old.get(k, {}), dict) and isinstance(new.get(k, {}), dict):
                lines += describe_changes(old.get(k, {}), new.get(k, {}), key)  # a section appeared or went
            elif k not in old:
                lines.append(f"{key}: (default) -> {new[k]!r}")
            elif k not in new:
                lines.append(f"{key}: {old[k]!r} -> (default)")
            else:
                lines += describe_changes(old[k], new[k], key)
        return lines
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


def why_changed(old_inputs: dict, new_inputs: dict) -> list[str]:
    """Human-readable reasons two input sets differ: config values, re-run upstream stages, changed raw files."""
    reasons = describe_changes(old_inputs.get("config", {}), new_inputs.get("config", {}))
    old_up, new_up = old_inputs.get("upstream", {}), new_inputs.get("upstream", {})
    reasons += [f"upstream stage {s} ran again" for s in new_up if s in old_up and old_up[s] != new_up[s]]
    reasons += [f"upstream stage {s} is new" for s in new_up if s not in old_up]
    old_files, new_files = old_inputs.get("data", {}), new_inputs.get("data", {})
    changed = sorted(k for k in set(old_files) | set(new_files) if old_files.get(k) != new_files.get(k))
    if changed:
        reasons.append(f"raw input files changed: {', '.join(changed[:5])}" + (" ..." if len(changed) > 5 else ""))
    return reasons


def inputs_fingerprint(inputs: dict) -> str:
    return fingerprint(json.loads(json.dumps(inputs, default=str)))


# --------------------------------------------------------------------------------------------- records


def read(store: Store, stage: str) -> dict | None:
    """The stage's record, or None when it has none (or it is unreadable)."""
    rel = layout.record(stage)
    try:
        return store.read_json(rel)
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        log.warning("%s is unreadable; %s counts as not done", store.uri(rel), stage)
        return None


def write(store: Store, stage: str, inputs: dict, meta: dict | None = None, seconds: float = 0.0) -> dict:
    """Record `stage` as finished with `inputs`; call it last, after every output is in place."""
    rec = {"stage": stage, "fingerprint": inputs_fingerprint(inputs),
           "run_id": f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}",
           "inputs": json.loads(json.dumps(inputs, default=str)), "meta": meta or {},
           "seconds": round(seconds, 1), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    store.write_json(layout.record(stage), rec)
    store.delete(layout.running(stage))
    return rec


def delete(store: Store, stage: str) -> None:
    store.delete(layout.record(stage))


def mark_running(store: Store, stage: str, fp: str) -> None:
    store.write_json(layout.running(stage), {"stage": stage, "fingerprint": fp,
                                             "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")})


def running_fingerprint(store: Store, stage: str) -> str | None:
    """The fingerprint of an attempt that started and did not finish (None when there is none)."""
    try:
        return store.read_json(layout.running(stage)).get("fingerprint")
    except (FileNotFoundError, json.JSONDecodeError):
        return None
