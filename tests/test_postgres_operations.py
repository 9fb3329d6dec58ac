"""The operator's side on PostgreSQL: erasure, sweeps from several processes, the
command line and the web chat's server, against a real server (tests/postgres.py)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import psycopg
from langchain_core.messages import HumanMessage
from psycopg import sql

from checkpointers import ANY_USER, open_saver, stats
from checkpointers.engines.postgres.maintenance import THREAD_TABLES
from checkpointers.engines.postgres.schema import MIGRATIONS
from checkpointers.retention import RetentionPolicy, Sweeper, delete_user
from tests.chat import echo_graph

MARKER = "zqxerasuremarker7731"
"""One search word: the thread's title and its message's search words hold it as text."""


def _say(saver, thread_id: str, text: str, user: str) -> None:
    config = {"configurable": {"thread_id": thread_id, "user_id": user}}
    echo_graph(saver, "noted: ").invoke({"messages": [HumanMessage(text)]}, config)


def tables_holding(url: str, text: str) -> set[str]:
    """The store's tables with a row whose text, or any of whose byte strings, holds `text`."""
    found = set()
    with psycopg.connect(url) as conn:
        columns = conn.execute(
            "SELECT table_name, array_agg(column_name::text) FILTER (WHERE data_type = 'bytea') "
            "FROM information_schema.columns WHERE table_schema = current_schema() GROUP BY table_name"
        ).fetchall()
        for table, blobs in columns:
            tests = [sql.SQL("t::text LIKE {}").format(sql.Literal(f"%{text}%"))]
            tests += [
                sql.SQL("position({} IN t.{}) > 0").format(sql.Literal(text.encode()), sql.Identifier(column))
                for column in blobs or ()
            ]
            query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} AS t WHERE {})").format(
                sql.Identifier(table), sql.SQL(" OR ").join(tests)
            )
            if conn.execute(query).fetchone()[0]:
                found.add(table)
    return found


def test_delete_user_leaves_their_text_in_no_table_and_vacuums_the_thread_tables(postgres_url):
    with open_saver(postgres_url) as saver:
        _say(saver, "alices-1", f"my secret is {MARKER}", "alice")
        _say(saver, "alices-2", f"{MARKER} again, in another thread", "alice")
        _say(saver, "bobs", "nothing to see", "bob")
        assert {"threads", "messages"} <= tables_holding(postgres_url, MARKER)  # the check below can fail
        assert delete_user(saver, "alice") == 2
        assert [t.thread_id for t in saver.threads.list(ANY_USER).threads] == ["bobs"]
    assert tables_holding(postgres_url, MARKER) == set()
    with psycopg.connect(postgres_url) as conn:
        vacuumed = conn.execute(
            "SELECT relname FROM pg_stat_user_tables WHERE schemaname = current_schema() AND last_vacuum IS NOT NULL"
        ).fetchall()
    assert set(THREAD_TABLES) <= {name for (name,) in vacuumed}


def test_the_stores_figures_and_readiness_come_from_the_schema(postgres_url):
    with open_saver(postgres_url) as saver:
        assert stats.readiness(saver) is None
        _say(saver, "t", "hello", "alice")
        later = datetime.now(timezone.utc) + timedelta(days=31)
        assert Sweeper(saver, RetentionPolicy(days=30), clock=lambda: later).sweep().threads == 1
        figures = stats.store_figures(saver)
        usage = stats.usage(saver, 7)
    assert figures["threads"] == 0 and figures["sweeps"] == 1 and figures["threads_swept"] == 1
    assert figures["database_bytes"] > 0
    assert usage["store"]["last_sweep"]["threads"] == 1 and usage["days"][-1]["database_bytes"] > 0
    assert usage["totals"]["human_messages"] == 1 and usage["totals"]["active_users"] == 1
    with open_saver(postgres_url) as saver:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (99, 'from the future')")
        assert stats.readiness(saver) == f"the store's schema is version 99, not {len(MIGRATIONS)}"
