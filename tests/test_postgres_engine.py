"""What only the PostgreSQL engine has to promise: migrating once when processes start
together, refusing what it cannot do, and surviving connections the server dropped."""

from __future__ import annotations

import threading

import psycopg
import pytest

from checkpointers import EncryptionKeyError, SchemaTooNewError, StoreUnavailableError, open_saver
from checkpointers.engines.postgres.schema import MIGRATIONS
from tests.chat import chat_graph, human


def test_savers_starting_together_migrate_once(postgres_url):
    errors: list[BaseException] = []

    def start() -> None:
        try:
            with open_saver(postgres_url) as saver:
                saver.threads.count("nobody")
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    starters = [threading.Thread(target=start) for _ in range(6)]
    for t in starters:
        t.start()
    for t in starters:
        t.join()
    assert errors == []
    with psycopg.connect(postgres_url) as conn:
        versions = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    assert versions == [(v,) for v in range(1, len(MIGRATIONS) + 1)]


def test_a_newer_schema_is_refused(postgres_url):
    with open_saver(postgres_url):
        pass
    with psycopg.connect(postgres_url) as conn:
        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (99, 'from the future')")
    with pytest.raises(SchemaTooNewError):
        with open_saver(postgres_url):
            pass


def test_an_encryption_key_from_the_environment_is_used_rather_than_ignored(postgres_url, monkeypatch):
    monkeypatch.setenv("THREADKEEPER_ENCRYPTION_KEY", "a key of at least sixteen characters")
    with open_saver(postgres_url) as saver:
        saver.threads.list("alice")
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT key FROM store_meta").fetchall() == [("encryption",)]
    monkeypatch.delenv("THREADKEEPER_ENCRYPTION_KEY")
    with pytest.raises(EncryptionKeyError, match="is encrypted: set THREADKEEPER_ENCRYPTION_KEY to its key"):
        with open_saver(postgres_url):
            pass


def test_an_unreachable_server_is_one_clear_sentence_without_the_password():
    with pytest.raises(StoreUnavailableError) as raised:
        with open_saver("postgresql://someone:hunter2@127.0.0.1:1/nothing"):
            pass
    assert "hunter2" not in str(raised.value) and "cannot reach the PostgreSQL database" in str(raised.value)


def test_connections_the_server_dropped_never_reach_a_user(postgres_url):
    with open_saver(postgres_url) as saver:
        graph = chat_graph(saver)
        config = {"configurable": {"thread_id": "t", "user_id": "alice"}}
        graph.invoke({"messages": [human(0)]}, config)
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        graph.invoke({"messages": [human(1)]}, config)
        assert saver.threads.get("t").message_count == 4
