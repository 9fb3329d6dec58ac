from __future__ import annotations

from pathlib import Path

import pytest

from checkpointers import ThreadSaver


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "threadkeeper.db"


@pytest.fixture
def saver(db_path: Path):
    s = ThreadSaver(db_path)
    yield s
    s.close()
