"""`reaemb prepare`: raw dataset -> `prepared/` (see reaemb_ray/data/prepare.py).

Its record holds the `data` settings and a fingerprint of every raw file, so replacing the raw data in place
prepares again (and re-runs everything that reads the prepared tables). A local file is fingerprinted by its
content (SHA-256, remembered per size and modification time in `{data.cache_dir}/file_digests.json`), so a
copy fetched again on another machine matches; an object on a URI by its size and modification time, which
the object store keeps.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from reaemb_ray import layout
from reaemb_ray.records import changed_fields
from reaemb_ray.stages.base import Stage
from reaemb_ray.storage import Store, is_uri, store_for


def raw_files(data_cfg) -> dict[str, str | list[int]]:
    """The raw dataset's files: relative name -> content digest (local), or [size, mtime in ns] (a URI, listed,
    not downloaded)."""
    if is_uri(data_cfg.path):
        return {k: list(v) for k, v in Store(data_cfg.path, data_cfg.cache_dir).files().items()}
    from reaemb_ray.data.fetch import resolve_data_path

    root = Path(resolve_data_path(data_cfg))
    files = sorted(Path(d) / n for d, _, names in os.walk(root) for n in names)
    digests = file_digests(files, Path(data_cfg.cache_dir).expanduser() / "file_digests.json")
    return {str(f.relative_to(root)): digests[str(f)] for f in files}


def file_digests(files: list[Path], memo: Path) -> dict[str, str]:
    """SHA-256 of each file, reusing the digest remembered in `memo` for the same path, size and mtime."""
    try:
        known = json.loads(memo.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        known = {}
    out, changed = {}, False
    for f in files:
        st = f.stat()
        key = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in known:
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            known[key], changed = h.hexdigest()[:16], True
        out[str(f)] = known[key]
    if changed:  # a lost race only loses remembered digests
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f".{memo.name}.{os.getpid()}")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, memo)
    return out


def run_prepare(cfg) -> dict:
    from reaemb_ray.data.prepare import prepare

    store = store_for(cfg)
    if store.local(layout.PREPARED) is not None:  # written beside and swapped into place
        summary = json.loads((prepare(cfg, store.local(layout.PREPARED)) / "summary.json").read_text())
    else:
        with tempfile.TemporaryDirectory(prefix="reaemb-prepare-") as tmp:
            out = prepare(cfg, Path(tmp) / layout.PREPARED)
            summary = json.loads((out / "summary.json").read_text())
            store.put(out, layout.PREPARED)
    print(json.dumps({k: summary[k] for k in ("name", "users", "items", "interactions")}))
    return {k: summary[k] for k in ("users", "items", "interactions", "source")}


def stages(cfg) -> list[Stage]:
    # where the raw data is cached does not change what is prepared
    reads = {"data": changed_fields(cfg.data, drop=("cache_dir",))}
    return [Stage("prepare", (), reads, run_prepare, cfg, raw_inputs=lambda: raw_files(cfg.data), command="prepare",
                  start_over=False, resumable=False)]  # data.prepare swaps a complete new folder in
