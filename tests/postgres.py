"""The PostgreSQL server the tests use: a database of each test session's own on
127.0.0.1:5432 (trust auth), and a schema of each test's own inside it, so runs in
parallel never meet. A server that cannot be reached fails the run, never skips it.
`.ci/run` starts the server when it is down."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

ADMIN_URL = os.environ.get("THREADKEEPER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
"""Where the test databases are created (a database the test user may connect to)."""


def _admin() -> psycopg.Connection:
    try:
        return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"the PostgreSQL server at {ADMIN_URL} is not reachable, and the tests need it "
            f"(start it, e.g. with .ci/run; or set THREADKEEPER_TEST_POSTGRES_URL): {exc}",
            pytrace=False,
        )


@contextmanager
def session_database() -> Iterator[str]:
    """A new database for this test session; dropped afterwards (with any connection to it)."""
    name = f"tk_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with _admin() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _url_with_db(name)
    finally:
        with _admin() as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _url_with_db(name: str) -> str:
    """`ADMIN_URL` naming database `name` instead."""
    head, _, rest = ADMIN_URL.partition("://")
    authority = rest.split("/", 1)[0]
    return f"{head}://{authority}/{name}"


@contextmanager
def fresh_schema(database_url: str) -> Iterator[str]:
    """A URL whose connections work in a new, empty schema of `database_url`; the schema is dropped after."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield f"{database_url}?options={quote(f'-csearch_path={schema}')}"
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


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
