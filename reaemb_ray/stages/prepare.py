"""`reaemb prepare`: raw dataset -> `prepared/` (see reaemb_ray/data/prepare.py).

Its record holds the `data` settings and every raw file's size and modification time, so replacing the raw
data in place prepares again (and re-runs everything that reads the prepared tables).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from reaemb_ray import layout
from reaemb_ray.records import changed_fields
from reaemb_ray.stages.base import Stage
from reaemb_ray.storage import Store, is_uri, store_for


def raw_files(data_cfg) -> dict[str, list[int]]:
    """The raw dataset's files: relative name -> [size, mtime in ns] (a URI is listed, not downloaded)."""
    if is_uri(data_cfg.path):
        return {k: list(v) for k, v in Store(data_cfg.path, data_cfg.cache_dir).files().items()}
    from reaemb_ray.data.fetch import resolve_data_path

    root = Path(resolve_data_path(data_cfg))
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            st = (Path(dirpath) / n).stat()
            out[str((Path(dirpath) / n).relative_to(root))] = [st.st_size, st.st_mtime_ns]
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
    return [Stage("prepare", (), reads, run_prepare, cfg, raw_inputs=lambda: raw_files(cfg.data), command="prepare")]
