"""Files and paths a user can point the store at: one clear error, nothing changed
(SQLite's files; PostgreSQL's own refusals are in test_postgres_engine.py), and ids
that name nothing, on both engines."""

from __future__ import annotations

import sqlite3

import pytest

from checkpointers import (
    ForeignDatabaseError,
    NotADatabaseError,
    SchemaTooNewError,
    StoreUnavailableError,
    ThreadSaver,
    open_saver,
)
from checkpointers.url import DEFAULT_URL, resolve_url, sqlite_path
from tests.chat import chat_graph, human


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text
    return text


def test_a_file_that_is_not_sqlite(tmp_path):
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database\n" * 100)
    before = path.read_bytes()
    with pytest.raises(NotADatabaseError) as raised:
        ThreadSaver(path)
    assert "is not a SQLite database" in _one_line(raised.value)
    assert path.read_bytes() == before


def test_a_database_from_a_newer_threadkeeper(db_path):
    saver = ThreadSaver(db_path)
    chat_graph(saver).invoke({"messages": [human(1)]}, {"configurable": {"thread_id": "t", "user_id": "u"}})
    saver.conn.execute("INSERT INTO schema_migrations VALUES (99, 'm099_future', 'later')")
    saver.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    saver.close()
    before = db_path.read_bytes()
    with pytest.raises(SchemaTooNewError) as raised:
        ThreadSaver(db_path)
    assert "schema version 99" in _one_line(raised.value)
    assert db_path.read_bytes() == before


def test_a_database_that_another_program_made(db_path):
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE checkpoints (thread_id TEXT, checkpoint BLOB)")
    conn.execute("INSERT INTO checkpoints VALUES ('x', x'00')")
    conn.commit()
    conn.close()
    with pytest.raises(ForeignDatabaseError) as raised:
        ThreadSaver(db_path)
    assert "did not create" in _one_line(raised.value)
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall() == [("checkpoints",)]
    assert conn.execute("SELECT count(*) FROM checkpoints").fetchone() == (1,)


def test_an_unwritable_path(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(StoreUnavailableError) as raised:
        ThreadSaver(blocker / "sub" / "threadkeeper.db")
    assert "cannot create the directory" in _one_line(raised.value)
    with pytest.raises(StoreUnavailableError) as raised:
        ThreadSaver(tmp_path)
    assert "is a directory" in _one_line(raised.value)


def test_unknown_threads_read_as_absent(store):
    saver = store
    assert saver.get_tuple({"configurable": {"thread_id": "never"}}) is None
    assert list(saver.list({"configurable": {"thread_id": "never"}})) == []
    assert chat_graph(saver).get_state({"configurable": {"thread_id": "never"}}).values == {}
    saver.delete_thread("never")  # deleting what is not there is not an error
    assert saver.threads.count(None) == 0


@pytest.mark.parametrize(
    "url, message",
    [
        ("postgres://x/y", "unsupported database URL scheme 'postgres'"),
        ("sqlite://relative.db", "use sqlite:///path/to/file.db"),
        ("sqlite:///:memory:", "names no file"),
    ],
)
def test_bad_database_urls(url, message):
    with pytest.raises(ValueError, match=message):
        sqlite_path(url)


def test_default_url_and_environment_override(tmp_path, monkeypatch):
    monkeypatch.delenv("THREADKEEPER_DATABASE_URL", raising=False)
    assert resolve_url() == DEFAULT_URL
    assert sqlite_path(DEFAULT_URL).as_posix() == "data/threadkeeper.db"
    target = tmp_path / "env.db"
    monkeypatch.setenv("THREADKEEPER_DATABASE_URL", f"sqlite:///{target}")
    with open_saver() as saver:
        assert saver.path == target
    assert target.exists()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("THREADKEEPER_DATABASE_URL")
    with open_saver() as saver:
        assert saver.path.resolve() == (tmp_path / "data" / "threadkeeper.db").resolve()


def test_the_synchronous_pragma_is_configurable(tmp_path, monkeypatch):
    monkeypatch.setenv("THREADKEEPER_SQLITE_SYNCHRONOUS", "full")
    with open_saver(f"sqlite:///{tmp_path / 'x.db'}") as saver:
        assert saver.conn.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert saver.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert saver.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
        assert saver.conn.execute("PRAGMA secure_delete").fetchone()[0] == 1
        assert saver.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    monkeypatch.setenv("THREADKEEPER_SQLITE_SYNCHRONOUS", "sometimes")
    with pytest.raises(ValueError, match="synchronous must be one of"):
        with open_saver(f"sqlite:///{tmp_path / 'y.db'}"):
            pass
