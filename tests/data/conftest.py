"""Fixtures of the data tests; the hand-written datasets live in raw_fixture_files.py."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: make raw_fixture_files importable

from raw_fixture_files import FIXTURES, write_dataset  # noqa: E402


@pytest.fixture
def dataset(tmp_path):
    """dataset(reader, extra={file: appended line}) -> folder with that reader's fixture files."""

    made = []

    def make(reader: str, append: dict[str, str] | None = None) -> Path:
        files = dict(FIXTURES[reader])
        for name, line in (append or {}).items():
            files[name] = files[name] + line + "\n"
        made.append(reader)
        return write_dataset(tmp_path / f"{reader}-{len(made)}", files)  # a fresh folder per call

    return make
