"""Store: the output folder as a local path or a URI (a real pyarrow filesystem behind file://), node-local
fetch cache, atomic objects; config fingerprints; raw data on a URI."""
import json
import pickle

import pytest

from reaemb_ray import records
from reaemb_ray.config import load_config
from reaemb_ray.data.fetch import resolve_data_path
from reaemb_ray.storage import Store


@pytest.fixture(params=["local", "uri"])
def store(request, tmp_path):
    root = tmp_path / "bucket" / "run1"
    return Store(str(root) if request.param == "local" else f"file://{root}", str(tmp_path / "cache"))


def test_objects_folders_listing_and_delete(store, tmp_path):
    store.write_json("a/_record.json", {"x": 1})
    assert store.read_json("a/_record.json") == {"x": 1} and store.exists("a")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "w.bin").write_bytes(b"\x00\x01weights")
    (src / "m.txt").write_text("m")
    store.put(src, "lrcl/final")
    assert store.listdir("lrcl/final") == ["m.txt", "sub"]
    assert set(store.files("lrcl")) == {"final/m.txt", "final/sub/w.bin"}
    store.copy("lrcl/final", "crrl/base")
    assert store.read_bytes("crrl/base/sub/w.bin") == b"\x00\x01weights"
    store.delete("lrcl")
    assert not store.exists("lrcl/final/m.txt") and store.listdir("lrcl") == []
    store.delete("never/written")  # nothing to delete is fine
    with pytest.raises(FileNotFoundError, match="nope.json"):
        store.read_json("nope.json")


def test_fetch_caches_per_content_and_refetches_changes(tmp_path):
    root = tmp_path / "bucket"
    store = Store(f"file://{root}", str(tmp_path / "cache"))
    store.write_bytes("gen/w.bin", b"v1")
    first = store.fetch("gen")
    assert (first / "w.bin").read_bytes() == b"v1" and str(first).startswith(str(tmp_path / "cache"))
    assert store.fetch("gen") == first  # unchanged: the cached copy
    store.write_bytes("gen/w.bin", b"version 2")  # changed in the bucket: fetched again
    second = store.fetch("gen")
    assert second != first and (second / "w.bin").read_bytes() == b"version 2"
    assert store.fetch("gen/w.bin").read_bytes() == b"version 2"  # a single object
    with pytest.raises(FileNotFoundError, match="absent"):
        store.fetch("absent")
    local = Store(str(root))
    assert local.fetch("gen") == root / "gen"  # a local store is read in place


def test_writing_uploads_only_on_success(tmp_path):
    store = Store(f"file://{tmp_path / 'b'}", str(tmp_path / "cache"))
    with store.writing("eval") as d:
        (d / "report.md").write_text("# report")
    assert store.read_bytes("eval/report.md") == b"# report"
    with pytest.raises(RuntimeError):
        with store.writing("broken") as d:
            (d / "half.txt").write_text("x")
            raise RuntimeError("stage failed")
    assert not store.exists("broken")


def test_a_store_pickles_as_its_root(tmp_path):
    store = Store(f"file://{tmp_path / 'b'}", str(tmp_path / "cache"))
    store.write_json("x.json", [1])
    again = pickle.loads(pickle.dumps(store))
    assert again.read_json("x.json") == [1] and again.uri("x.json") == store.uri("x.json")


def test_bad_uri_names_the_problem():
    with pytest.raises(ConnectionError, match="nosuchscheme://bucket"):
        Store("nosuchscheme://bucket/path")


def test_raw_data_on_a_uri_is_fetched_again_when_it_changes(tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    (src / "u.data").write_text("1\t1\t5\t10\n")
    cfg = load_config(None, [f"data.path=file://{src}", f"data.cache_dir={tmp_path / 'cache'}"])
    local = resolve_data_path(cfg.data)
    assert (local / "u.data").read_text() == "1\t1\t5\t10\n"
    assert resolve_data_path(cfg.data) == local  # unchanged: not fetched again
    (src / "u.data").write_text("2\t1\t5\t10\n")  # replaced in place
    assert (resolve_data_path(cfg.data) / "u.data").read_text() == "2\t1\t5\t10\n"


def test_missing_raw_uri_is_a_clear_error(tmp_path):
    cfg = load_config(None, [f"data.path=file://{tmp_path}/absent", f"data.cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(FileNotFoundError, match="absent"):
        resolve_data_path(cfg.data)


def test_changed_fields_keeps_only_what_differs_from_defaults():
    cfg = load_config(None, ["lrcl.lr=0.001", "model.lora.r=4", "crrl.variants=[paper/srs]"])
    assert records.changed_fields(cfg.lrcl) == {"lr": 0.001}
    assert records.changed_fields(cfg.model) == {"lora": {"r": 4}}  # nested sections recurse
    assert records.changed_fields(cfg.crrl, drop=("variants",)) == {}
    assert records.changed_fields(load_config(None, []).lrcl) == {}


def test_describe_changes_names_each_value():
    old = {"lrcl": {"lr": 0.0002, "steps": 10}, "seed": 1}
    new = {"lrcl": {"lr": 0.0001}, "seed": 1, "model": {"dtype": "bfloat16"}}
    assert records.describe_changes(old, new) == [
        "lrcl.lr: 0.0002 -> 0.0001", "lrcl.steps: 10 -> (default)", "model.dtype: (default) -> 'bfloat16'"]
    assert records.describe_changes(old, old) == []


def test_why_changed_names_config_upstream_and_raw_files():
    old = {"config": {"data": {"kcore": 5}}, "upstream": {"prepare": "r1"}, "data": {"u.data": [10, 1]}}
    new = {"config": {"data": {"kcore": 5}}, "upstream": {"prepare": "r2"}, "data": {"u.data": [11, 2]}}
    assert records.why_changed(old, new) == ["upstream stage prepare ran again", "raw input files changed: u.data"]
    assert records.why_changed(old, json.loads(json.dumps(old))) == []
