"""Connections to PostgreSQL: one pool per database URL for the whole process, and
the runner that lets one piece of storage logic serve sync and async callers.

Storage logic is written once, as a *plan* (`checkpointers.engines.base`): a
generator that yields each statement (`Sql`) and is sent back its result. `run` drives a plan on a
psycopg connection, `arun` on an asyncio one, so the async methods are
native asyncio (no worker threads) and share every line of SQL and
encoding with the sync ones.

Pools are shared by every saver of the process that opens the same URL
(`acquire`/`release`, reference-counted), sized by
`$THREADKEEPER_PG_POOL_SIZE` (default 10). A connection is checked when it
is handed out (one empty round trip) and recycled after `MAX_IDLE_S` idle or
`MAX_LIFETIME_S` in all, so a connection the server or a firewall dropped
is replaced instead of failing a user's request. Nothing serialises a saver
beyond the pool's size: writes to one thread queue on that thread's row lock
in the database, writes to different threads run side by side.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from checkpointers.engines.base import FETCH_ALL, FETCH_NONE, FETCH_ONE, Plan, Sql
from checkpointers.errors import StoreUnavailableError

POOL_SIZE_VARIABLE = "THREADKEEPER_PG_POOL_SIZE"
DEFAULT_POOL_SIZE = 10
MAX_IDLE_S = 300.0
MAX_LIFETIME_S = 1800.0
CONNECT_TIMEOUT_S = 10.0

T = TypeVar("T")


def run(conn: psycopg.Connection, plan: Plan[T]) -> T:
    """Drive `plan` on a sync connection (inside whatever transaction the caller holds)."""
    result: Any = None
    try:
        while True:
            sql = plan.send(result)
            cursor = conn.execute(sql.text, sql.params)
            result = _result(cursor, sql.fetch)
    except StopIteration as done:
        return done.value


async def arun(conn: psycopg.AsyncConnection, plan: Plan[T]) -> T:
    """Drive `plan` on an asyncio connection; same statements as `run`."""
    result: Any = None
    try:
        while True:
            sql = plan.send(result)
            cursor = await conn.execute(sql.text, sql.params)
            if sql.fetch == FETCH_ALL:
                result = await cursor.fetchall()
            elif sql.fetch == FETCH_ONE:
                result = await cursor.fetchone()
            else:
                result = cursor.rowcount
    except StopIteration as done:
        return done.value


def qmark(text: str) -> str:
    """A statement written for both engines (`?` marks, no `%` of its own) in psycopg's style."""
    return text.replace("%", "%%").replace("?", "%s")


class PostgresRunner:
    """Runs the plans of an engine-neutral module on a PostgreSQL saver (see
    `checkpointers.engines.base.PlanRunner`): natively on its sync or asyncio pool."""

    blocking = False

    def __init__(
        self, run: Callable[..., Any], arun: Callable[..., Any], cipher: Callable[[], Any] = lambda: None, where: str = ""
    ) -> None:
        """`run(plan, read=...)` / `arun(...)`: the saver's plan runners; `cipher()`: the store's
        cipher (None: not encrypted); `where`: the store, as refusals name it (`redacted`)."""
        self._run = run
        self._arun = arun
        self._cipher = cipher
        self._where = where

    def lock(self) -> AbstractContextManager[Any]:
        # Writers of one thread queue on its row in the database, in every process alike.
        return nullcontext()

    def run(self, plan: Plan[T], *, write: bool) -> T:
        return self._run(plan, read=not write)

    async def arun(self, plan: Plan[T], *, write: bool) -> T:
        return await self._arun(plan, read=not write)


class _Statements(list):
    """Stands in for a connection to engine-neutral code that writes with `conn.execute(sql, params)`:
    keeps each statement for a plan to yield."""

    def execute(self, text: str, params: Any = ()) -> None:
        self.append(Sql(qmark(text), params, FETCH_NONE))


def neutral(write: Callable[[Any], None]) -> Plan[None]:
    """Run `write(conn)`, code written once for both engines (e.g. the usage counters of
    `checkpointers.stats`), as statements of this plan: inside its transaction."""
    statements = _Statements()
    write(statements)
    for statement in statements:
        yield statement


def _result(cursor: psycopg.Cursor, fetch: str) -> Any:
    if fetch == FETCH_ALL:
        return cursor.fetchall()
    if fetch == FETCH_ONE:
        return cursor.fetchone()
    return cursor.rowcount


def pool_size() -> int:
    """The size of each pool: `$THREADKEEPER_PG_POOL_SIZE`, else `DEFAULT_POOL_SIZE`."""
    raw = os.environ.get(POOL_SIZE_VARIABLE) or str(DEFAULT_POOL_SIZE)
    try:
        size = int(raw)
    except ValueError:
        size = 0
    if size < 1:
        raise ValueError(f"{POOL_SIZE_VARIABLE} must be a whole number of at least 1, not {raw!r}")
    return size


def _pool_options() -> dict[str, Any]:
    return {
        "min_size": 1,
        "max_size": pool_size(),
        "max_idle": MAX_IDLE_S,
        "max_lifetime": MAX_LIFETIME_S,
        "kwargs": {"connect_timeout": int(CONNECT_TIMEOUT_S)},
        "open": False,
    }


@dataclass
class _Shared:
    pool: Any
    users: int = 0


_pools: dict[Any, _Shared] = {}
_pools_lock = threading.Lock()


def acquire(url: str) -> ConnectionPool:
    """The process's sync pool for `url`, opened on first use; pair with `release`.

    Raises `StoreUnavailableError` (one sentence) when the server cannot be reached."""
    with _pools_lock:
        shared = _pools.get(url)
        if shared is None:
            pool = ConnectionPool(url, check=ConnectionPool.check_connection, **_pool_options())
            try:
                pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
            except Exception as exc:
                pool.close()
                raise unavailable(url, exc) from exc
            shared = _pools[url] = _Shared(pool)
        shared.users += 1
        return shared.pool


def release(url: str) -> None:
    """One user of `url`'s sync pool is done; the last one closes it."""
    with _pools_lock:
        shared = _pools.get(url)
        if shared is None:
            return
        shared.users -= 1
        if shared.users > 0:
            return
        del _pools[url]
    shared.pool.close()


async def acquire_async(url: str) -> AsyncConnectionPool:
    """The asyncio pool for `url` on the running event loop, opened on first use; pair with
    `release_async`. Raises `StoreUnavailableError` when the server cannot be reached."""
    key = (url, asyncio.get_running_loop())
    with _pools_lock:
        shared = _pools.get(key)
        if shared is None:
            pool = AsyncConnectionPool(url, check=AsyncConnectionPool.check_connection, **_pool_options())
            shared = _pools[key] = _Shared(pool)
        shared.users += 1
    try:
        await shared.pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
    except Exception as exc:
        await release_async(url)
        raise unavailable(url, exc) from exc
    return shared.pool


async def release_async(url: str) -> None:
    """One user of `url`'s pool on this event loop is done; the last one closes it."""
    key = (url, asyncio.get_running_loop())
    with _pools_lock:
        shared = _pools.get(key)
        if shared is None:
            return
        shared.users -= 1
        if shared.users > 0:
            return
        del _pools[key]
    await shared.pool.close()


def has_store(url: str) -> bool:
    """Whether the database (the schema its URL's `search_path` names) holds a threadkeeper
    store, found without creating one. Raises `StoreUnavailableError` when unreachable."""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT_S)) as conn:
            (found,) = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    except psycopg.OperationalError as exc:
        raise unavailable(url, exc) from exc
    return found


def unavailable(url: str, exc: BaseException) -> StoreUnavailableError:
    """The store's one sentence for a server that cannot be reached (the password left out)."""
    return StoreUnavailableError(f"cannot reach the PostgreSQL database {redacted(url)}: {exc}")


def redacted(url: str) -> str:
    """`url` without its password, for messages and logs."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(an invalid URL)"
    host, port, db, user = (info.get(k, "") for k in ("host", "port", "dbname", "user"))
    return f"postgresql://{user}@{host}{':' + str(port) if port else ''}/{db}"
