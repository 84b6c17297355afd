"""Checks before any work and before Ray starts: what a command will read or write that the config alone
cannot vouch for.

- the output folder: not a file, not below a file, writable (a URI: its filesystem opens, the node cache is
  writable);
- `model.backbone`: `tiny`, `smollm2`, a local folder with config.json and a tokenizer, or a model name already
  in the local Hugging Face cache (models are loaded offline);
- `crrl.init_from`: empty (the LRCL generator), `backbone`, or a generator folder (a path or a URI);
- the prepared catalogue, once it exists (`check_catalogue`): settings that depend on its size, such as
  `eval.num_sampled_negatives`;
- an embedded Ray: the LRCL workers and export actors fit in its CPUs.

Every failure is a one-line `ConfigError` naming the key and the fix.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from reaemb_ray.errors import ConfigError

# command -> what it reads
NEEDS = {
    "prepare": {"output"},
    "srs_pretrain": {"output", "prepared"},
    "lrcl": {"output", "backbone", "prepared", "cpus"},
    "crrl": {"output", "backbone", "prepared", "init_from"},
    "reason": {"output", "prepared"},
    "export": {"output", "backbone", "prepared", "cpus"},
    "evaluate": {"output", "prepared"},
    "run": {"output", "backbone", "init_from", "cpus"},
    "bench": {"output", "backbone"},
}
BACKBONE_NAMES = ("tiny", "smollm2")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def check(cfg, command: str, quick: bool = False) -> None:
    """Raise a ConfigError for the first input of `command` that cannot work."""
    needs = NEEDS.get(command, set())
    if "output" in needs:
        check_output_dir(cfg)
    if "backbone" in needs and not (command == "bench" and quick):  # bench --quick uses the tiny model
        check_backbone(cfg.model.backbone)
    if "init_from" in needs:
        check_init_from(cfg, standalone=command == "crrl")
    if "cpus" in needs:
        check_embedded_cpus(cfg, command)
    prepared = _local_prepared(cfg)
    if "prepared" in needs and prepared is not None and not (prepared / "summary.json").is_file():
        raise ConfigError(f"{prepared} has no prepared data (summary.json); run `reaemb prepare` with this config "
                          "first, or set output_dir to the folder it wrote")
    if prepared is None or not (prepared / "summary.json").is_file():
        return
    if command in ("evaluate", "crrl", "export"):
        check_catalogue(cfg, prepared)
    if command == "run":
        from reaemb_ray.stages.base import check as stage_check
        from reaemb_ray.stages.run import catalogue
        from reaemb_ray.storage import store_for

        if stage_check(catalogue(cfg)["prepare"], store_for(cfg)).state == "done":
            check_catalogue(cfg, prepared)  # otherwise prepare runs again first, and `run` checks its new catalogue


def _local_prepared(cfg) -> Path | None:
    """The prepared folder when output_dir is local (a URI's is checked by the stages, once fetched)."""
    from reaemb_ray import layout

    return None if "://" in cfg.output_dir else cfg.out / layout.PREPARED


# --------------------------------------------------------------------------------------------- output


def check_output_dir(cfg) -> None:
    """The output folder can be created and written; for a URI, its filesystem opens and the node-local cache
    (data.cache_dir) is writable."""
    if "://" in cfg.output_dir:
        from reaemb_ray.storage import CACHE_FOLDER, Store

        _writable_folder(Path(cfg.data.cache_dir).expanduser() / CACHE_FOLDER, "data.cache_dir (the node-local cache of "
                         "output_dir)")
        try:
            Store(cfg.output_dir, cfg.data.cache_dir)
        except ConnectionError as e:
            raise ConfigError(f"output_dir: {e}") from None
        return
    _writable_folder(cfg.out, "output_dir")


def _writable_folder(path: Path, key: str) -> None:
    path = Path(os.path.abspath(path))
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key} {path} is a file, not a folder; choose a folder path (it is created when missing)")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key} {path} lies below {existing}, which is a file; choose a folder path that is "
                          "not inside a file")
    try:  # a probe file, not os.access: root passes os.access, but not a read-only mount
        fd, probe = tempfile.mkstemp(prefix=".reaemb-write-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{key} {path} is not writable ({existing}: {e.strerror}); choose a folder you can "
                          "write to") from None


# ------------------------------------------------------------------------------------------- backbone


def check_backbone(name: str) -> None:
    """`tiny`, `smollm2`, a local model folder, or a hub-style name resolvable from the local cache."""
    if name in BACKBONE_NAMES:
        return
    fix = ("set model.backbone to tiny, smollm2, a local folder with config.json, or a model name already in the "
           "Hugging Face cache")
    path = Path(name).expanduser()
    looks_local = name.startswith(("/", "./", "../", "~")) or path.exists()
    if looks_local:
        if not path.is_dir():
            raise ConfigError(f"model.backbone {name!r} is not a folder; {fix}")
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.backbone folder {name!r} has no config.json, so it is not a Hugging Face model "
                              f"folder; save the model there with save_pretrained, or {fix}")
        if not any((path / f).is_file() for f in TOKENIZER_FILES):
            raise ConfigError(f"model.backbone folder {name!r} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
                              "save the tokenizer there with tokenizer.save_pretrained")
        return
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(repo_id=name, filename="config.json")
    except HFValidationError:
        raise ConfigError(f"model.backbone {name!r} is neither a folder nor a model name (org/name); {fix}") from None
    if not isinstance(cached, str):
        raise ConfigError(
            f"model.backbone {name!r} is not in the local Hugging Face cache and models are loaded offline; download "
            f"it once (`hf download {name}`, or `huggingface-cli download {name}`), or {fix}")


def check_init_from(cfg, standalone: bool) -> None:
    from reaemb_ray import layout
    from reaemb_ray.model.generator import META_FILE

    src = cfg.crrl.init_from
    if src == "backbone":
        return
    if src == "":
        final = cfg.out / layout.generator("lrcl")
        if standalone and "://" not in cfg.output_dir and not (final / META_FILE).is_file():
            raise ConfigError(f"crrl.init_from is empty, so CRRL starts from the LRCL generator at {final}, which is "
                              "not there; run `reaemb lrcl` first, point crrl.init_from at a generator folder, or set "
                              "crrl.init_from=backbone")
        return
    if "://" in src:
        from reaemb_ray.storage import Store

        try:
            found = Store(src, cfg.data.cache_dir).exists(META_FILE)
        except ConnectionError as e:
            raise ConfigError(f"crrl.init_from: {e}") from None
        if not found:
            raise ConfigError(f"crrl.init_from {src!r} is not a generator folder (no {META_FILE}); point it at an "
                              "lrcl/final folder")
        return
    path = Path(src).expanduser()
    if not path.is_dir():
        raise ConfigError(f"crrl.init_from {src!r} does not exist; point it at a generator folder (an lrcl/final "
                          "folder), leave it empty for this run's LRCL output, or set crrl.init_from=backbone")
    if not (path / META_FILE).is_file():
        raise ConfigError(f"crrl.init_from {src!r} is not a generator folder (no {META_FILE}); point it at an "
                          "lrcl/final folder")


# ----------------------------------------------------------------------------------------------- CPUs


def check_embedded_cpus(cfg, command: str) -> None:
    """On an embedded Ray, a worker group larger than its CPUs would wait forever for resources."""
    if cfg.ray.address or os.environ.get("RAY_ADDRESS"):
        return  # a cluster can autoscale
    have = cfg.ray.num_cpus or os.cpu_count() or 1
    what = "ray.num_cpus" if cfg.ray.num_cpus else f"all {have} cores of this machine (ray.num_cpus=0)"
    methods = set(cfg.eval.methods)
    trains = command == "lrcl" or command == "run" and bool(methods & {"lrcl", "crrl", "llmemb"})
    exports = command == "export" or command == "run" and bool(methods - {"id"})
    groups = []
    if trains:
        groups.append(("lrcl.num_workers x lrcl.cpus_per_worker", cfg.lrcl.num_workers * cfg.lrcl.cpus_per_worker))
    if exports:
        groups.append(("export.num_actors x export.cpus_per_actor", cfg.export.num_actors * cfg.export.cpus_per_actor))
    for keys, need in groups:
        if need > have:
            raise ConfigError(f"{keys} = {need} CPUs, but the embedded Ray has {have} ({what}); lower them or raise "
                              "ray.num_cpus (or run on a cluster with ray.address)")


# ------------------------------------------------------------------------------------------ catalogue


def catalogue_facts(prepared: Path) -> dict:
    """Items, users, and the most distinct items one user has (train + valid + test), from the prepared splits."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for name in ("splits.parquet", "items.parquet"):
        if not (prepared / name).is_file():
            raise FileNotFoundError(f"{prepared / name} is missing; run `reaemb prepare --config ...` first (it "
                                    f"writes {prepared}/)")
    splits = pq.read_table(prepared / "splits.parquet", columns=["train", "valid", "test"])
    train = splits.column("train").combine_chunks()
    rows = np.arange(splits.num_rows)
    users = np.concatenate([pc.list_parent_indices(train).to_numpy(), rows, rows])
    items = np.concatenate([pc.list_flatten(train).to_numpy(), splits.column("valid").to_numpy(),
                            splits.column("test").to_numpy()])
    per_user = pa.table({"user": users, "item": items}).group_by("user").aggregate([("item", "count_distinct")])
    return {"items": pq.read_metadata(prepared / "items.parquet").num_rows, "users": splits.num_rows,
            "max_distinct": int(max(per_user.column("item_count_distinct").to_pylist(), default=0))}


def check_catalogue(cfg, prepared: Path) -> None:
    """Settings that depend on the prepared catalogue: checked as soon as it exists, before any training."""
    f = catalogue_facts(Path(prepared))
    n, room = f["items"], f["items"] - f["max_distinct"]
    neg = cfg.eval.num_sampled_negatives
    if neg > room:
        raise ConfigError(
            f"eval.num_sampled_negatives={neg} is too large for {prepared}: it has {n} items and one user interacted "
            f"with {f['max_distinct']} of them, so at most {room} negatives can be sampled for every user; set "
            f"eval.num_sampled_negatives <= {room}")
    cands = cfg.crrl.num_positives + cfg.crrl.num_negatives
    if cands >= n:
        raise ConfigError(f"crrl.num_positives + crrl.num_negatives = {cands} candidates, but {prepared} has only {n} "
                          "items; lower crrl.num_negatives")
    if cfg.export.pca_dim > n:
        raise ConfigError(f"export.pca_dim={cfg.export.pca_dim} is more than the {n} items of {prepared} (PCA keeps at "
                          f"most one dimension per item); set export.pca_dim <= {n} or 0")
