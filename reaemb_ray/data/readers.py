"""Readers by name (`data.reader`). Each turns a raw dataset folder into a `RawDataset`; see raw.py."""
from __future__ import annotations

from pathlib import Path

# Importing the modules registers their readers in READERS.
from reaemb_ray.data import amazon, movielens, recbole, yelp  # noqa: F401
from reaemb_ray.data.raw import READERS, BadRows, RawDataset, kcore

__all__ = ["READERS", "read_raw", "read_folder", "RawDataset"]


def read_folder(reader: str, folder: str | Path, on_bad_row: str = "error", name: str = "") -> RawDataset:
    """Run the reader `reader` on `folder`."""
    if reader not in READERS:
        raise ValueError(f"unknown data.reader {reader!r}; known readers: {', '.join(sorted(READERS))}")
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"dataset folder {folder} does not exist; set data.path to the raw dataset folder")
    return READERS[reader](folder, BadRows(on_bad_row), name)


def read_raw(data_cfg) -> tuple[RawDataset, dict[str, int]]:
    """Resolve `data.path` (fetching `auto:` datasets), read it, apply `data.kcore`; returns (raw, kcore stats)."""
    from reaemb_ray.data.fetch import resolve_data_path

    folder = resolve_data_path(data_cfg)
    raw = read_folder(data_cfg.reader, folder, data_cfg.on_bad_row, data_cfg.name)
    return kcore(raw, data_cfg.kcore)
