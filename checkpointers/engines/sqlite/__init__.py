"""The SQLite halves of the engine-neutral modules: the SQL of sessions, attachments
and import (`transfer.py`), run as plans (`checkpointers.engines.base`) on the saver's one
connection, and the store's upkeep (retention, erasure, statistics: `maintenance.py`).

The SQLite saver itself is `checkpointers.engines.sqlite.saver` (with its parts, listed in
that module's docstring, and `checkpointers.engines.sqlite.schema`);
this package holds only what an engine-neutral module asks of an engine, so its
PostgreSQL counterpart in `checkpointers.engines.postgres` has the same shape.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

from checkpointers.engines.base import FETCH_ALL, FETCH_ONE, Plan, Sql

if TYPE_CHECKING:
    from checkpointers.engines.sqlite.saver import ThreadSaver

T = TypeVar("T")


def run(conn: sqlite3.Connection, plan: Plan[T]) -> T:
    """Drive `plan` on `conn`, inside the transaction the caller holds.

    Besides `Sql`, a SQLite plan may yield a function of the connection, for what
    another SQLite module writes with its own statements (usage statistics)."""
    result: Any = None
    try:
        while True:
            step: Sql | Callable[[sqlite3.Connection], Any] = plan.send(result)
            if callable(step):
                result = step(conn)
                continue
            cursor = conn.execute(step.text, step.params)
            if step.fetch == FETCH_ALL:
                result = cursor.fetchall()
            elif step.fetch == FETCH_ONE:
                result = cursor.fetchone()
            else:
                result = cursor.rowcount
    except StopIteration as done:
        return done.value


class SqliteRunner:
    """Runs plans on a SQLite saver (see `checkpointers.engines.base.PlanRunner`):
    in its read or write transactions, under its lock; the async twins on a worker
    thread, since every call waits on the disk."""

    blocking = True

    def __init__(self, saver: ThreadSaver) -> None:
        self._saver = saver

    def lock(self) -> AbstractContextManager[Any]:
        return self._saver._lock

    def run(self, plan: Plan[T], *, write: bool) -> T:
        if write:
            with self._saver._write():
                return run(self._saver.conn, plan)
        with self._saver._read() as conn:
            return run(conn, plan)

    async def arun(self, plan: Plan[T], *, write: bool) -> T:
        return await asyncio.to_thread(self.run, plan, write=write)
