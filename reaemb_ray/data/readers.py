"""Readers by name (`data.reader`): a registry and one validating entry point, `read_folder`.

Each reader turns a raw dataset folder into a `RawDataset` (the contract and the rules every reader shares are
in raw.py). `read_folder` checks the name and the folder, runs the reader, and refuses a result with no
interactions, saying whether the files were empty or every row was skipped.
"""
from __future__ import annotations

from pathlib import Path

# Importing the modules registers their readers in READERS.
from reaemb_ray.data import amazon, lcrec, movielens, p5, recbole, yelp  # noqa: F401
from reaemb_ray.data.raw import READERS, BadRows, RawDataset, ReadOptions, kcore
from reaemb_ray.errors import DataError

__all__ = ["READERS", "read_raw", "read_folder", "RawDataset"]


def read_folder(reader: str, folder: str | Path, on_bad_row: str = "error", name: str = "",
                item_file: str = "") -> RawDataset:
    """Run the reader `reader` on `folder`."""
    if reader not in READERS:
        raise DataError(f"unknown data.reader {reader!r}; known readers: {', '.join(sorted(READERS))}")
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"dataset folder {folder} does not exist; set data.path to the raw dataset folder")
    if not folder.is_dir():
        raise DataError(f"data.path {folder} is a file; point it at the folder that holds the dataset files "
                        f"({READERS[reader].files})")
    bad = BadRows(on_bad_row)
    raw = READERS[reader].read(folder, bad, ReadOptions(name=name, item_file=item_file))
    if raw.num_interactions == 0:
        skipped = ", ".join(f"{n} {r}" for r, n in sorted(raw.skipped.items()))
        why = f"every row was skipped ({skipped})" if skipped else "the files hold no interactions"
        raise DataError(f"{folder}: no interaction was read from {', '.join(Path(f).name for f in raw.files)}: {why}; "
                        f"check the files ({reader} reads {READERS[reader].files})")
    return raw


def read_raw(data_cfg) -> tuple[RawDataset, dict[str, int]]:
    """Resolve `data.path` (fetching `auto:` datasets), read it, apply `data.kcore`; returns (raw, kcore stats)."""
    from reaemb_ray.data.fetch import resolve_data_path

    folder = resolve_data_path(data_cfg)
    raw = read_folder(data_cfg.reader, folder, data_cfg.on_bad_row, data_cfg.name, data_cfg.item_file)
    return kcore(raw, data_cfg.kcore)
