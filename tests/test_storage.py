"""Storage: URI mirroring with a real pyarrow filesystem (file://), the stage manifest, data on a URI."""
import json

import pytest

from reaemb_ray import storage
from reaemb_ray.config import load_config
from reaemb_ray.data.fetch import resolve_data_path


def test_sync_up_and_down_roundtrip(tmp_path):
    local = tmp_path / "work"
    (local / "lrcl").mkdir(parents=True)
    (local / "lrcl" / "ckpt.bin").write_bytes(b"\x00\x01weights")
    uri = f"file://{tmp_path}/bucket/run1"
    storage.sync_up(local, uri)
    back = tmp_path / "elsewhere"
    storage.sync_down(uri, back)
    assert (back / "lrcl" / "ckpt.bin").read_bytes() == b"\x00\x01weights"


def test_sync_down_of_a_new_uri_is_a_no_op(tmp_path):
    storage.sync_down(f"file://{tmp_path}/never-written", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_bad_uri_names_the_problem(tmp_path):
    with pytest.raises(ConnectionError, match="nosuchscheme://bucket"):
        storage.sync_up(tmp_path, "nosuchscheme://bucket/path")


def test_local_workdir_is_stable_per_uri(tmp_path):
    a = storage.local_workdir("s3://b/run", str(tmp_path))
    assert a == storage.local_workdir("s3://b/run", str(tmp_path))
    assert a != storage.local_workdir("s3://b/other", str(tmp_path))
    assert storage.local_workdir(str(tmp_path / "out")) == (tmp_path / "out").resolve()


def test_manifest_records_and_invalidates(tmp_path):
    m = storage.Manifest(tmp_path)
    fp = storage.fingerprint({"lrcl": {"steps": 3}}, ["upstream"])
    assert not m.is_done("lrcl", fp)
    m.mark("lrcl", fp, 1.234, ["lrcl"])
    again = storage.Manifest(tmp_path)
    assert again.is_done("lrcl", fp)
    assert not again.is_done("lrcl", storage.fingerprint({"lrcl": {"steps": 4}}, ["upstream"]))
    again.start("lrcl", fp)  # running again (e.g. --fresh): not done until marked
    assert not again.is_done("lrcl", fp) and again.recorded("lrcl") == fp
    again.forget("lrcl")
    assert json.loads((tmp_path / "_manifest.json").read_text())["stages"] == {}


def test_corrupt_manifest_is_not_fatal(tmp_path):
    (tmp_path / "_manifest.json").write_text("{not json")
    assert storage.Manifest(tmp_path).stages == {}


def test_raw_data_on_a_uri_is_mirrored_once(tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    (src / "u.data").write_text("1\t1\t5\t10\n")
    cfg = load_config(None, [f"data.path=file://{src}", f"data.cache_dir={tmp_path / 'cache'}"])
    local = resolve_data_path(cfg.data)
    assert (local / "u.data").read_text() == "1\t1\t5\t10\n"
    (src / "u.data").write_text("changed")  # cached: not fetched again
    assert (resolve_data_path(cfg.data) / "u.data").read_text() == "1\t1\t5\t10\n"


def test_missing_raw_uri_is_a_clear_error(tmp_path):
    cfg = load_config(None, [f"data.path=file://{tmp_path}/absent", f"data.cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(FileNotFoundError, match="absent"):
        resolve_data_path(cfg.data)


def test_changed_fields_keeps_only_what_differs_from_defaults():
    cfg = load_config(None, ["lrcl.lr=0.001", "model.lora.r=4", "crrl.variants=[paper/srs]"])
    assert storage.changed_fields(cfg.lrcl) == {"lr": 0.001}
    assert storage.changed_fields(cfg.model) == {"lora": {"r": 4}}  # nested sections recurse
    assert storage.changed_fields(cfg.crrl, drop=("variants",)) == {}
    assert storage.changed_fields(load_config(None, []).lrcl) == {}
    assert "lr" in storage.whole_section(cfg.lrcl) and "steps" in storage.whole_section(cfg.lrcl)


def test_describe_changes_names_each_value():
    old = {"lrcl": {"lr": 0.0002, "steps": 10}, "seed": 1}
    new = {"lrcl": {"lr": 0.0001}, "seed": 1, "model": {"dtype": "bfloat16"}}
    assert storage.describe_changes(old, new) == [
        "lrcl.lr: 0.0002 -> 0.0001", "lrcl.steps: 10 -> (default)", "model.dtype: (default) -> 'bfloat16'"]
    assert storage.describe_changes(old, old) == []
