from __future__ import annotations

import shutil
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


@pytest.fixture(scope="session")
def _thousand_turn_store(tmp_path_factory) -> Path:
    from tests.chat import long_thread

    path = tmp_path_factory.mktemp("thousand-turns") / "threadkeeper.db"
    long_thread(path, 1000)
    return path


@pytest.fixture
def thousand_turn_thread(_thousand_turn_store: Path, db_path: Path) -> Path:
    """`db_path`, a SQLite store holding one thread, "long" of user alice: 1,000 turns of
    `tests.chat.chat_graph` (2,000 messages). Written once per test session (1,000 turns
    take 6-9 s here) and copied for each test, which may change its copy as it likes."""
    shutil.copyfile(_thousand_turn_store, db_path)
    return db_path


@pytest.fixture(scope="session")
def postgres_database():
    """This test session's own database on the local PostgreSQL server (see tests/postgres.py)."""
    from tests.postgres import session_database

    with session_database() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_database, tmp_path: Path, monkeypatch):
    """A `postgresql://` URL to an empty schema of this test's own (attached databases are
    copied to a cache folder of this test's own too)."""
    from tests.postgres import fresh_schema

    monkeypatch.setenv("THREADKEEPER_ATTACHMENT_CACHE", str(tmp_path / "attachment-cache"))

    with fresh_schema(postgres_database) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path: Path) -> str:
    """The URL of an empty store, once per engine: a SQLite file, a PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'threadkeeper.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(store_url: str):
    """An open saver on an empty store, once per engine (see `store_url`)."""
    from checkpointers import open_saver

    with open_saver(store_url) as opened:
        yield opened


@pytest.fixture
async def async_store(store_url: str):
    """`store` for asyncio tests: opened with `open_async_saver`, so its asyncio pool is closed too."""
    from checkpointers import open_async_saver

    async with open_async_saver(store_url) as opened:
        yield opened
