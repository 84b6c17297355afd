"""Where outputs live, and what each stage has already produced.

`output_dir` may be a local path or any pyarrow/fsspec URI (s3://, gs://, file://). Stages always work on
a local folder; for a URI, `run` mirrors that folder to the URI after every stage and pulls it back before
resuming, so a job that lands on another node of the cluster continues where the last one stopped.

The manifest (`_manifest.json` in the output folder) maps each finished stage to a fingerprint of the
config it depended on; a changed fingerprint invalidates that stage and everything downstream of it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def is_uri(path: str) -> bool:
    return "://" in path


def local_workdir(output_dir: str, cache_dir: str = "~/.cache/reaemb_ray") -> Path:
    """The local folder a stage writes to: the output folder itself, or a cache mirror of a URI."""
    if not is_uri(output_dir):
        return Path(output_dir).expanduser().resolve()
    digest = hashlib.sha1(output_dir.encode()).hexdigest()[:12]
    return Path(cache_dir).expanduser() / "runs" / digest


def _fs(uri: str):
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError with its own wording
        raise ConnectionError(
            f"cannot open storage {uri!r} ({e}); check the URI scheme and credentials "
            "(s3:// needs AWS credentials, gs:// needs GCP credentials), or use a local output_dir"
        ) from None


def sync_down(uri: str, local: Path) -> None:
    """Copy what already exists at `uri` into `local` (nothing when the URI is empty or new)."""
    import pyarrow.fs as pafs

    fs, root = _fs(uri)
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        return
    local.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(root, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    log.info("pulled %s -> %s", uri, local)


def sync_up(local: Path, uri: str) -> None:
    import pyarrow.fs as pafs

    fs, root = _fs(uri)
    fs.create_dir(root, recursive=True)
    pafs.copy_files(str(local), root, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    log.info("pushed %s -> %s", local, uri)


def fingerprint(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def changed_fields(section: Any, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of a config dataclass that differ from their defaults (nested dataclasses recursed).

    Fingerprints hash these rather than the whole section, so a field added in a later version at a default
    that keeps the old behaviour does not invalidate finished work. The flip side: changing a default's
    value in the code must come with a new name or an explicit version, or finished stages stay "done".
    """
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


# Fields added after format 1 was retired: format 1 never hashed them, so at their default they are left out.
ADDED_AFTER_FORMAT1 = {("EvalConfig", "main_backbones"), ("CRRLConfig", "vllm_gpu_memory_utilization"),
                       ("SRSConfig", "task_resources")}


def whole_section(section: Any, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """Fingerprint format 1 (every field, defaults included): still read, to adopt work finished before
    format 2 (`changed_fields`)."""
    changed = changed_fields(section)
    later = {name for cls, name in ADDED_AFTER_FORMAT1 if cls == type(section).__name__ and name not in changed}
    return {k: v for k, v in dataclasses.asdict(section).items() if k not in drop and k not in later}


def describe_changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """`["lrcl.lr: 0.0002 -> 0.0001", ...]`: what differs between two recorded stage inputs."""
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


class Manifest:
    """Finished stages with their fingerprints, saved atomically after every change."""

    def __init__(self, out: Path):
        self.path = out / "_manifest.json"
        self.stages: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            try:
                self.stages = json.loads(self.path.read_text()).get("stages", {})
            except json.JSONDecodeError:
                log.warning("%s is unreadable; every stage will be checked again", self.path)

    def is_done(self, stage: str, fp: str) -> bool:
        rec = self.stages.get(stage)
        return rec is not None and rec.get("fingerprint") == fp and rec.get("state", "done") == "done"

    def recorded(self, stage: str) -> str | None:
        rec = self.stages.get(stage)
        return rec.get("fingerprint") if rec else None

    def inputs(self, stage: str) -> Any:
        """The config values the stage's recorded fingerprint hashed (None for records before format 2)."""
        return (self.stages.get(stage) or {}).get("inputs")

    def start(self, stage: str, fp: str, inputs: Any = None) -> None:
        """Record a stage as running with this fingerprint: if it is interrupted, the next run resumes it only
        when the fingerprint is still the same (its checkpoints were made with the same settings)."""
        self.stages[stage] = {"fingerprint": fp, "state": "running", "inputs": inputs,
                              "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self._save()

    def mark(self, stage: str, fp: str, seconds: float, outputs: list[str], inputs: Any = None) -> None:
        self.stages[stage] = {"fingerprint": fp, "state": "done", "seconds": round(seconds, 1), "outputs": outputs,
                              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "inputs": inputs}
        self._save()

    def adopt(self, stage: str, fp: str, inputs: Any) -> None:
        """Re-key a record written under fingerprint format 1 whose inputs match today's config."""
        self.stages[stage].update(fingerprint=fp, inputs=inputs, adopted_from_format=1)
        self._save()

    def forget(self, stage: str) -> None:
        if self.stages.pop(stage, None) is not None:
            self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"stages": self.stages}, indent=2))
        os.replace(tmp, self.path)
