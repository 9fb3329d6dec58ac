"""What only the PostgreSQL engine has to promise: migrating once when processes start
together, refusing what it cannot do, surviving connections the server dropped, and
a chat turn in few round trips."""

from __future__ import annotations

import io
import json
import os
import string
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langgraph.graph import START, MessagesState, StateGraph
from psycopg.pq import Trace

from checkpointers import (
    EncryptionKeyError,
    SchemaTooNewError,
    StoreUnavailableError,
    missing_store,
    open_async_saver,
    open_saver,
)
from checkpointers.engines.postgres.schema import MIGRATIONS
from graph import Settings, build_graph
from tests.chat import chat_graph, human
from tests.scripted import ScriptedChatModel, echo


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


async def test_an_unreachable_server_is_one_clear_sentence_with_its_reason_at_once():
    """A refused connection is said at once, with the reason (a pool alone would retry it
    for `CONNECT_TIMEOUT_S` and then say only that it was not ready), without the password."""
    url = "postgresql://someone:hunter2@127.0.0.1:1/nothing"
    with pytest.raises(StoreUnavailableError) as raised:
        with open_saver(url):
            pass
    with pytest.raises(StoreUnavailableError) as araised:
        async with open_async_saver(url):
            pass
    for error in (raised.value, araised.value):
        message = str(error)
        assert "hunter2" not in message and "cannot reach the PostgreSQL database" in message
        assert "refused" in message.lower() and "\n" not in message.strip()


_UNREADABLE_URLS = (
    "postgresql://postgres:{password}%zz@127.0.0.1:5432/{db}",  # a stray % in the password
    "postgresql://postgres:{password}@[::1:5432/{db}",  # an unclosed IPv6 bracket
    "postgresql://postgres@127.0.0.1:5432/{db}?password={password}&bogus=1",  # an unknown parameter
    "postgres://postgres:{password}@127.0.0.1:port/{db}",  # a port that is not a number
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(password=st.text(string.ascii_letters + string.digits, min_size=8, max_size=20), template=st.sampled_from(_UNREADABLE_URLS))
def test_a_url_libpq_cannot_read_is_one_sentence_without_its_password(postgres_database, password, template):
    """libpq's reason quotes the part of a URL it could not read, which may be the password."""
    password = f"Pw{password}"  # a token found nowhere else in the sentence
    url = template.format(password=password, db=postgres_database.rsplit("/", 1)[1])
    for attempt in (lambda: missing_store(url), lambda: open_saver(url).__enter__()):
        with pytest.raises(StoreUnavailableError) as raised:
            attempt()
        message = str(raised.value)
        assert password not in message and "cannot reach the PostgreSQL database" in message and "\n" not in message


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


class _RoundTrips:
    """Counts the times a connection waits for the server, from libpq's trace of each new
    connection (a file of its own): a Sync or Flush the client sends, then reads the answer."""

    def __init__(self, folder, monkeypatch) -> None:
        self.files: list = []
        connect = psycopg.Connection.connect.__func__

        def traced(cls, *args, **kwargs):
            conn = connect(cls, *args, **kwargs)
            trace = open(folder / f"conn{len(self.files)}.trace", "w+")
            self.files.append(trace)
            conn.pgconn.trace(trace.fileno())
            conn.pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS | Trace.REGRESS_MODE)
            return conn

        monkeypatch.setattr(psycopg.Connection, "connect", classmethod(traced))

    def count(self) -> int:
        waits = 0
        for trace in self.files:
            trace.seek(0)
            sent = False
            for line in trace:
                if line.startswith("F\t"):
                    sent = sent or line.split("\t")[2].split(" ")[0].strip() in ("Sync", "Flush", "Query")
                elif line.startswith("B\t") and sent:
                    waits, sent = waits + 1, False
            trace.seek(0, 2)
        return waits


def test_a_chat_turn_waits_for_the_server_at_most_24_times(postgres_url, tmp_path, monkeypatch):
    # Through the product's graph (trim -> model), at its tenth turn: the run's read, two
    # attachment lookups, four checkpoints and three batches of task writes, 20 round trips
    # (and a check of a connection idle for 2 s or more, on a machine that stalled). It was
    # 60: every transaction checked its connection, and waited for BEGIN, each statement and COMMIT.
    trips = _RoundTrips(tmp_path, monkeypatch)
    with open_saver(postgres_url) as saver:
        app = build_graph(checkpointer=saver, model=ScriptedChatModel(script=echo), settings=Settings())
        config = {"configurable": {"thread_id": "t", "user_id": "alice"}}
        for n in range(9):
            app.invoke({"messages": [human(n)]}, config)
        before = trips.count()
        app.invoke({"messages": [human(9)]}, config)
        assert trips.count() - before <= 24


PREVIOUS_RELEASES = {"cbc4702": 5, "b966b69": 6}
"""Commits that wrote earlier schemas, by version: 5 (ids as text), 6 (task writes serialised
whole, their task paths as text)."""

_WRITE_AS_PREVIOUS_RELEASE = """
import json, sys
from checkpointers import open_saver
from tests.chat import chat_graph, human
with open_saver(sys.argv[1], encryption_key=sys.argv[2]) as saver:
    for thread_id, delta in (("old", False), ("old-delta", True)):
        app = chat_graph(saver, delta=delta)
        config = {"configurable": {"thread_id": thread_id, "user_id": "alice"}}
        for n in range(4):
            app.invoke({"messages": [human(n)]}, config)
    state = chat_graph(saver).get_state({"configurable": {"thread_id": "old"}})
    times = [m.created_at.isoformat() for m in saver.sessions.list_messages("old", user_id="alice")]
    print(json.dumps({"contents": [m.content for m in state.values["messages"]], "times": times}))
"""


@pytest.mark.parametrize("release", PREVIOUS_RELEASES)
def test_a_store_of_a_previous_release_opens_and_its_threads_read_back(postgres_url, tmp_path, release):
    """Written by an earlier release's code (sealed with a key), migrated when this release
    opens it: every thread reads back, with its pending writes, and goes on."""
    repo = Path(__file__).resolve().parent.parent
    old_code = tmp_path / "previous-release"
    old_code.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", release, "checkpointers", "tests/chat.py"],
        capture_output=True,
    )
    assert archive.returncode == 0, f"the release's code must be in this clone's history: {archive.stderr!r}"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(old_code, filter="data")
    key = "a key of at least sixteen characters"
    written = subprocess.run(
        [sys.executable, "-c", _WRITE_AS_PREVIOUS_RELEASE, postgres_url, key],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(old_code)}, cwd=old_code, check=True,
    )
    written = json.loads(written.stdout)
    contents = written["contents"]
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone() == (PREVIOUS_RELEASES[release],)
    with open_saver(postgres_url, encryption_key=key) as saver:
        app = chat_graph(saver)
        config = {"configurable": {"thread_id": "old", "user_id": "alice"}}
        assert [m.content for m in app.get_state(config).values["messages"]] == contents
        # each message keeps the time it was stored at (m009 dates new ones in their rows)
        listed = saver.sessions.list_messages("old", user_id="alice")
        assert [m.created_at.isoformat() for m in listed] == written["times"]
        history = list(app.get_state_history(config))
        assert len(history) == 4 * 3  # a run's input, its step into the model, the model's step
        assert [h.parent_config["configurable"]["checkpoint_id"] for h in history[:-1]] == [
            h.config["configurable"]["checkpoint_id"] for h in history[1:]
        ]
        inputs = [t.pending_writes for t in saver.list(config) if t.metadata["source"] == "input"]
        assert [[(channel, [m.content for m in value] if channel == "messages" else value)
                 for _task, channel, value in writes] for writes in inputs] == [
            [("messages", [contents[2 * n]]), ("branch:to:model", None)] for n in reversed(range(4))
        ]
        app.invoke({"messages": [human(4)]}, config)
        assert len(app.get_state(config).values["messages"]) == len(contents) + 2
        delta = chat_graph(saver, delta=True)
        delta_config = {"configurable": {"thread_id": "old-delta", "user_id": "alice"}}
        delta.invoke({"messages": [human(4)]}, delta_config)
        assert [m.content for m in delta.get_state(delta_config).values["messages"]][: len(contents)] == contents


def test_a_turn_moves_the_threads_updated_at_and_so_do_a_failed_run_and_a_static_interrupt(postgres_url):
    """A run's input and the checkpoint that ends it (or its error) set `updated_at`: the steps
    it goes on from update the row in place, so its two indexes on `updated_at` gain two
    entries a turn. A run stopped by a static `interrupt_before` has no ending checkpoint."""

    def fails(state: dict) -> dict:
        raise RuntimeError("the model is down")

    with open_saver(postgres_url) as saver:
        app = chat_graph(saver)
        config = {"configurable": {"thread_id": "t", "user_id": "alice"}}
        app.invoke({"messages": [human(0)]}, config)
        first = saver.threads.get("t")
        app.invoke({"messages": [human(1)]}, config)
        second = saver.threads.get("t")
        assert second.updated_at > first.updated_at and second.message_count == 4
        builder = StateGraph(MessagesState)
        builder.add_node("model", fails)
        builder.add_edge(START, "model")
        with pytest.raises(RuntimeError, match="the model is down"):
            builder.compile(checkpointer=saver).invoke({"messages": [human(2)]}, config)
        third = saver.threads.get("t")
        assert third.updated_at > second.updated_at and third.message_count == 5
        paused = chat_graph(saver).builder.compile(checkpointer=saver, interrupt_before=["model"])
        paused.invoke({"messages": [human(3)]}, config)
        assert paused.get_state(config).next == ("model",)
        fourth = saver.threads.get("t")
        assert fourth.updated_at > third.updated_at and fourth.message_count == 6


def test_async_calls_from_one_event_loop_after_another_hold_no_connections_of_closed_loops(postgres_url):
    """A saver opened without asyncio, called from a new loop each time (`asyncio.run` per request)."""
    import asyncio

    from checkpointers import ThreadChatHistory
    from checkpointers.engines.postgres import connection

    def server_connections() -> int:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            (count,) = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
        return count

    with open_saver(postgres_url) as saver:
        history = ThreadChatHistory("t", user_id="alice", saver=saver)
        history.add_user_message("hello")
        before = server_connections()
        for _ in range(8):
            assert [m.content for m in asyncio.run(history.aget_messages())] == ["hello"]
        assert len([key for key in connection._pools if isinstance(key, tuple)]) <= 1
        assert server_connections() <= before + 1  # the last loop's pool: closed at its next use


def test_a_role_that_may_not_create_tables_and_a_read_only_server_open_a_migrated_store(postgres_url):
    """Operators run the app as a role with the rights on rows only, or point a reader at a
    standby; a write the server refuses is one sentence, not psycopg's traceback."""
    import uuid
    from urllib.parse import parse_qs, quote, urlsplit

    from checkpointers import ThreadChatHistory

    with open_saver(postgres_url) as saver:
        ThreadChatHistory("t", user_id="alice", saver=saver).add_user_message("hello")
    parts = urlsplit(postgres_url)
    options = parse_qs(parts.query)["options"][0]
    schema = options.split("=", 1)[1]
    role = f"tk_rows_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
        admin.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
        admin.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"')
        admin.execute(f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA "{schema}" TO "{role}"')
    try:
        as_role = postgres_url.replace(f"//{parts.username}@", f"//{role}@", 1)
        with open_saver(as_role) as saver:
            history = ThreadChatHistory("t", user_id="alice", saver=saver)
            history.add_user_message("from a role with rights on rows only")
            assert len(history.messages) == 2
        read_only = postgres_url.replace(
            "options=" + quote(options), "options=" + quote(f"{options} -cdefault_transaction_read_only=on"), 1
        )
        with open_saver(read_only) as saver:
            history = ThreadChatHistory("t", user_id="alice", saver=saver)
            assert [m.content for m in history.messages][0] == "hello"
            with pytest.raises(StoreUnavailableError, match="refused this") as raised:
                history.add_user_message("more")
            assert "\n" not in str(raised.value)
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f'DROP OWNED BY "{role}"')
            admin.execute(f'DROP ROLE "{role}"')


class _BackedOff(Exception):
    pass


def _no_backoff(*args, **kwargs):
    raise _BackedOff("psycopg_pool waited before handing out a connection")


def _drop_every_connection(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as admin:
        (dropped,) = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    return dropped


def test_after_the_server_dropped_every_pooled_connection_the_next_call_gets_a_fresh_one_at_once(postgres_url, monkeypatch):
    """A restart, a failover or a proxy's idle timeout: psycopg_pool's own check waited 1, 2, 4...
    s after each dead connection, and ten of them made the next call fail after 30 s."""
    import asyncio

    import psycopg_pool.pool
    import psycopg_pool.pool_async

    from checkpointers.engines.postgres import connection

    monkeypatch.setattr(connection, "CHECK_AFTER_IDLE_S", 0.0)  # every connection is as if idle
    monkeypatch.setattr(psycopg_pool.pool, "sleep", _no_backoff)  # its check loop's wait, and no other
    monkeypatch.setattr(psycopg_pool.pool_async, "asleep", _no_backoff)
    with open_saver(postgres_url) as saver:
        held = [saver._pool.getconn() for _ in range(connection.pool_size())]
        for conn in held:
            saver._pool.putconn(conn)
        assert _drop_every_connection(postgres_url) >= connection.pool_size()
        assert saver.threads.count("alice") == 0

    async def from_asyncio() -> None:
        async with open_async_saver(postgres_url) as asaver:
            assert await asaver.threads.acount("alice") == 0
            pool = asaver._async_pools[asyncio.get_running_loop()]
            held = [await pool.getconn() for _ in range(connection.pool_size())]
            for conn in held:
                await pool.putconn(conn)
            assert _drop_every_connection(postgres_url) >= connection.pool_size()
            assert await asaver.threads.acount("alice") == 0

    asyncio.run(from_asyncio())


def test_a_connection_lost_once_a_call_has_begun_is_one_sentence(postgres_url):
    """Not tried again (it may have written), and not psycopg's "cannot exit pipeline mode while busy"."""
    from checkpointers.engines.base import FETCH_ONE, Sql

    def plan():
        yield Sql("SELECT 1", (), FETCH_ONE)  # an answer read: the call has begun
        yield Sql("SELECT pg_terminate_backend(pg_backend_pid())", (), FETCH_ONE)

    with open_saver(postgres_url) as saver:
        with pytest.raises(StoreUnavailableError, match="was lost during this call") as raised:
            saver._run(plan())
        assert "\n" not in str(raised.value)
        assert saver.threads.count("alice") == 0  # the next call gets a working connection


def test_a_server_error_is_not_called_a_lost_connection(postgres_url):
    """`_end` closes the connection after any server error: whether it was lost is read before."""
    from checkpointers.engines.base import FETCH_NONE, FETCH_ONE, Sql

    def plan():
        yield Sql("SET LOCAL statement_timeout = 10", (), FETCH_NONE)
        yield Sql("SELECT pg_sleep(1)", (), FETCH_ONE)

    with open_saver(postgres_url) as saver:
        with pytest.raises(psycopg.errors.QueryCanceled):
            saver._run(plan())


def test_a_new_schema_before_another_stores_schema_on_the_search_path_gets_its_own_store(postgres_url):
    """`to_regclass` looks along the whole `search_path`; `CREATE TABLE IF NOT EXISTS` in the first
    schema only. A tenant's new schema put before one holding a store must not use that store."""
    import uuid
    from urllib.parse import quote

    from checkpointers import ThreadChatHistory

    with open_saver(postgres_url) as saver:
        ThreadChatHistory("theirs", user_id="bob", saver=saver).add_user_message("bob's")
    base = postgres_url.split("?options=")[0]
    old_schema = psycopg.conninfo.conninfo_to_dict(postgres_url)["options"].split("=", 1)[1]
    new_schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{new_schema}"')
    url = f"{base}?options={quote(f'-csearch_path={new_schema},{old_schema}')}"
    assert missing_store(url) is not None
    with open_saver(url) as saver:
        assert saver.threads.count("bob") == 0
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        (tables,) = admin.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s", (new_schema,)
        ).fetchone()
        admin.execute(f'DROP SCHEMA "{new_schema}" CASCADE')
    assert tables >= 10
