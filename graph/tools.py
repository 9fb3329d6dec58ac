"""The per-thread database tools: read-only questions about an attached SQLite file.

When a thread has a database attached, the model may list its tables, describe
one, and run a query. Every call opens the file read-only (`mode=ro`), and an
authorizer allows only reading: writes, `ATTACH`, and pragmas that change
anything are refused, and a progress handler stops a query at the time limit.
Answers are capped at a row limit. Refusals come back to the model as text, so
it can explain them; they never end the turn.

The database is a file path, or the database's bytes (an encrypted store
decrypts the attachment in memory): bytes are opened in an in-memory SQLite
database (`deserialize`) under the same authorizer and limits, plus
`query_only`, so no plain copy is written to disk.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, tool

# Pragmas that only read the schema; every other pragma is refused.
READ_ONLY_PRAGMAS = {"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo", "foreign_key_list"}
ALLOWED_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
MAX_CELL_CHARS = 200

Database = Path | bytes
"""An attached database: its file, or its bytes."""

AttachmentLocator = Callable[[RunnableConfig], "Database | None"]


class QueryRefused(Exception):
    """The query would change the database, leave the sandbox, or ran too long."""


def _authorizer(action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None) -> int:
    if action in ALLOWED_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in READ_ONLY_PRAGMAS:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def open_read_only(path: Database, timeout_s: float) -> sqlite3.Connection:
    """A connection that can only read `path` (a file, or a database's bytes), and only for `timeout_s` seconds from now."""
    if isinstance(path, (bytes, bytearray)):
        conn = sqlite3.connect(":memory:", check_same_thread=False)
        conn.deserialize(path)
        conn.execute("PRAGMA query_only = ON")
    else:
        # Every character SQLite would decode in a URI (`%XX`, `?`, `#`) is escaped.
        conn = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True, check_same_thread=False)
    conn.set_authorizer(_authorizer)
    deadline = [time.monotonic() + timeout_s]

    def over_time() -> int:
        return 1 if time.monotonic() > deadline[0] else 0

    conn.set_progress_handler(over_time, 1000)
    return conn


def run_query(path: Database, sql: str, *, row_limit: int, timeout_s: float) -> str:
    """Run one read-only statement; the rows as a small text table, or the refusal."""
    started = time.monotonic()
    with closing(open_read_only(path, timeout_s)) as conn:
        try:
            cursor = conn.execute(sql)
            rows = cursor.fetchmany(row_limit + 1)
        except (sqlite3.ProgrammingError, sqlite3.Warning) as exc:
            if "one statement" in str(exc):
                return "Refused: send one SQL statement at a time."
            return f"SQL error: {exc}"
        except sqlite3.DatabaseError as exc:
            text = str(exc)
            if "interrupted" in text:
                return f"Refused: the query ran longer than the {timeout_s:g} s limit and was stopped."
            if "not authorized" in text or "prohibited" in text:
                return "Refused: the attached database is read-only; only SELECT queries and schema pragmas are allowed."
            return f"SQL error: {text}"
        columns = [d[0] for d in cursor.description or []]
    if not columns:
        return "The statement returned no rows."
    shown = rows[:row_limit]
    lines = [" | ".join(columns)]
    for row in shown:
        lines.append(" | ".join(_cell(v) for v in row))
    more = f" (stopped at the {row_limit}-row limit)" if len(rows) > row_limit else ""
    lines.append(f"{len(shown)} row(s){more}, {time.monotonic() - started:.3f} s")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    text = str(value).replace("\n", " ")
    return text if len(text) <= MAX_CELL_CHARS else text[: MAX_CELL_CHARS - 1] + "…"


def table_names(path: Database, timeout_s: float = 5.0) -> list[str]:
    with closing(open_read_only(path, timeout_s)) as conn:
        return [
            n
            for (n,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type IN ('table','view') AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]


def describe(path: Database, table: str, timeout_s: float = 5.0) -> str:
    with closing(open_read_only(path, timeout_s)) as conn:
        names = {n.lower(): n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table','view')")}
        real = names.get(table.strip().strip('"').lower())
        if real is None:
            return f"There is no table named {table!r}; the tables are: {', '.join(sorted(names.values())) or 'none'}."
        # `real` is a name the database itself holds, quoted as an identifier. The
        # table-valued `pragma_table_info(?)` would read better, but SQLite asks the
        # authorizer to update sqlite_master for it, which a read-only sandbox refuses.
        quoted = '"' + real.replace('"', '""') + '"'
        columns = conn.execute(f"PRAGMA table_info({quoted})").fetchall()
        (count,) = conn.execute(f"SELECT count(*) FROM {quoted}").fetchone()
    described = ", ".join(
        f"{name} {kind or 'ANY'}{' PRIMARY KEY' if pk else ''}{' NOT NULL' if notnull else ''}"
        for _, name, kind, notnull, _, pk in columns
    )
    return f"Table {real} ({count:,} rows): {described}"


def database_tools(locate: AttachmentLocator, *, row_limit: int, timeout_s: float) -> list[BaseTool]:
    """The three tools, bound to whatever database `locate(config)` finds for the thread."""

    def attached(config: RunnableConfig) -> Database:
        path = locate(config)
        if isinstance(path, (bytes, bytearray)):
            return path
        if path is None or not Path(path).is_file():
            raise QueryRefused("No database is attached to this thread.")
        return Path(path)

    @tool
    def list_tables(config: RunnableConfig) -> str:
        """List the tables of the database attached to this conversation."""
        try:
            names = table_names(attached(config), timeout_s)
        except QueryRefused as exc:
            return str(exc)
        return json.dumps(names) if names else "The attached database has no tables."

    @tool
    def describe_table(table: str, config: RunnableConfig) -> str:
        """Describe one table of the attached database: its columns, their types and its row count."""
        try:
            return describe(attached(config), table, timeout_s)
        except QueryRefused as exc:
            return str(exc)
        except sqlite3.DatabaseError as exc:
            return f"SQL error: {exc}"

    @tool
    def query_database(sql: str, config: RunnableConfig) -> str:
        """Run one read-only SQL query (SQLite dialect) on the attached database and return the rows."""
        try:
            return run_query(attached(config), sql, row_limit=row_limit, timeout_s=timeout_s)
        except QueryRefused as exc:
            return str(exc)

    return [list_tables, describe_table, query_database]
