"""Connections to PostgreSQL: one pool per database URL for the whole process, and
the runner that lets one piece of storage logic serve sync and async callers.

Storage logic is written once, as a *plan* (`checkpointers.engines.base`): a
generator that yields each statement (`Sql`) and is sent back its result. `run` drives a plan on a
psycopg connection, `arun` on an asyncio one, so the async methods are
native asyncio (no worker threads) and share every line of SQL and
encoding with the sync ones.

Pools are shared by every saver of the process that opens the same URL
(`acquire`/`release`, reference-counted), sized by
`$THREADKEEPER_PG_POOL_SIZE` (default 10). A connection idle for
`CHECK_AFTER_IDLE_S` or more is checked when it is handed out (one empty
round trip; `checked`), and every connection is recycled after `MAX_IDLE_S` idle or
`MAX_LIFETIME_S` in all, so a connection the server or a firewall dropped
is replaced instead of failing a user's request. One in use a moment ago is
handed out as it is: checking it was a tenth of a chat turn's round trips. Nothing serialises a saver
beyond the pool's size: writes to one thread queue on that thread's row lock
in the database, writes to different threads run side by side.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from checkpointers.engines.base import FETCH_ALL, FETCH_LATER, FETCH_NONE, FETCH_ONE, Plan, Sql
from checkpointers.errors import StoreError, StoreFullError, StoreUnavailableError, UnstorableInputError

POOL_SIZE_VARIABLE = "THREADKEEPER_PG_POOL_SIZE"
DEFAULT_POOL_SIZE = 10
MAX_IDLE_S = 300.0
MAX_LIFETIME_S = 1800.0
CONNECT_TIMEOUT_S = 10.0
CHECK_AFTER_IDLE_S = 2.0
"""A connection given back to its pool this recently is handed out again without a check."""

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
            result = await _aresult(cursor, sql.fetch)
    except StopIteration as done:
        return done.value


BEGIN = "BEGIN"
BEGIN_SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"


class LostBeforeStart(Exception):
    """The connection was found closed by the first round trip of a transaction, before the plan
    was sent any result: nothing of it reached the database, and it can start again on another
    connection with the statement it was waiting for (`first`; None: it has not begun)."""

    def __init__(self, first: Sql | None, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.first = first
        self.cause = cause


class _Driving:
    """A plan driven by `run_transaction`: the statement it waits for, how many it gave."""

    def __init__(self, plan: Plan[Any], first: Sql | None) -> None:
        self.plan = plan
        self.waiting = first
        self.sent = 0
        self.value: Any = None

    def next(self, result: Any) -> Sql | None:
        """The next statement to send (`result`: the last one's), or None when the plan is done."""
        if self.waiting is None:
            try:
                self.waiting = self.plan.send(result)
            except StopIteration as done:
                self.value = done.value
                return None
        self.sent += 1
        return self.waiting

    def answered(self) -> None:
        self.waiting = None

    def single(self) -> Sql:
        """The statement of a plan of one (run without a transaction)."""
        sql = self.next(None)
        if sql is None:
            raise RuntimeError("a plan of one statement yielded none")
        return sql

    def last(self, result: Any) -> Any:
        """The answer of a plan of one statement, sent its statement's `result`."""
        self.answered()
        if self.next(result) is not None:
            raise RuntimeError("a plan of one statement yielded a second")
        return self.value

    def lost(self, conn: Any, exc: BaseException) -> LostBeforeStart | None:
        """`LostBeforeStart` when `exc` is the connection's loss before the plan was sent any result."""
        if isinstance(exc, psycopg.OperationalError) and conn.broken:
            if self.sent == 0 or (self.sent == 1 and self.waiting is not None):
                return LostBeforeStart(self.waiting, exc)
        return None


def run_transaction(conn: psycopg.Connection, plan: Plan[T], begin: str | None = BEGIN, first: Sql | None = None) -> T:
    """Drive `plan` in a transaction of its own on a pool's connection (in autocommit), in
    pipeline mode, and commit it: the round trips are the statements whose results the plan
    reads, and one more. `BEGIN` goes with the first statement (psycopg's own would wait for
    it), and the `COMMIT` with the `FETCH_LATER` statements not yet sent. A chat turn through
    the agent graph waited for the server 55 to 60 times (10 of them checking connections);
    now 20 (libpq's trace, at turn 10).

    `begin` None: the plan is one statement, run on its own in autocommit (one round trip).
    `first`: the statement `plan` yielded last and waits for (after `LostBeforeStart`).
    Raises `LostBeforeStart` when the connection turns out closed before anything was read."""
    driving = _Driving(plan, first)
    try:
        if begin is None:
            sql = driving.single()
            return driving.last(_result(conn.execute(sql.text, sql.params), sql.fetch))
        with conn.pipeline() as pipeline:
            conn.execute(begin)
            result: Any = None
            while (sql := driving.next(result)) is not None:
                cursor = conn.execute(sql.text, sql.params)
                if sql.fetch == FETCH_NONE:
                    pipeline.sync()
                result = None if sql.fetch == FETCH_LATER else _result(cursor, sql.fetch)
                driving.answered()
            conn.execute("COMMIT")
        return driving.value
    except BaseException as exc:
        if lost := driving.lost(conn, exc):
            raise lost from exc
        broken = conn.broken  # before `_end`, which closes the connection after any server error
        _end(conn, exc if begin is not None else None)
        if refused := refusal(exc, broken):
            raise refused from exc
        raise


async def arun_transaction(
    conn: psycopg.AsyncConnection, plan: Plan[T], begin: str | None = BEGIN, first: Sql | None = None
) -> T:
    """`run_transaction` on an asyncio connection: the same statements and round trips."""
    driving = _Driving(plan, first)
    try:
        if begin is None:
            sql = driving.single()
            return driving.last(await _aresult(await conn.execute(sql.text, sql.params), sql.fetch))
        async with conn.pipeline() as pipeline:
            await conn.execute(begin)
            result: Any = None
            while (sql := driving.next(result)) is not None:
                cursor = await conn.execute(sql.text, sql.params)
                if sql.fetch == FETCH_NONE:
                    await pipeline.sync()
                result = None if sql.fetch == FETCH_LATER else await _aresult(cursor, sql.fetch)
                driving.answered()
            await conn.execute("COMMIT")
        return driving.value
    except BaseException as exc:
        if lost := driving.lost(conn, exc):
            raise lost from exc
        broken = conn.broken
        await _aend(conn, exc if begin is not None else None)
        if refused := refusal(exc, broken):
            raise refused from exc
        raise


def refusal(exc: BaseException, lost: bool = False) -> StoreError | None:
    """One sentence for a write the server refused for a reason of its own setup (a role
    without the right, a read-only server or standby, a full disk), or for a connection
    `lost` once the call had begun (else `LostBeforeStart` tries again), or None: these came
    to the caller as psycopg's own errors ("cannot exit pipeline mode while busy")."""
    if isinstance(exc, psycopg.errors.DiskFull):
        return StoreFullError(
            "The PostgreSQL server's disk is full, so nothing was saved; free some space on the server and try again."
        )
    reason = " ".join(str(exc).split("\n", 1)[0].split())  # the server's own first line
    if isinstance(exc, (psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction)):
        return StoreUnavailableError(
            f"the PostgreSQL database refused this ({reason}): check the rights of the database role "
            "threadkeeper connects as, and that the server is not a read-only standby"
        )
    if isinstance(exc, psycopg.errors.ProgramLimitExceeded):
        return UnstorableInputError(
            f"This is too long for the PostgreSQL store's index ({reason}); a thread id and a user id "
            "together must stay under about 2,700 bytes of UTF-8."
        )
    if lost and isinstance(exc, psycopg.OperationalError):
        return StoreUnavailableError(
            "the connection to the PostgreSQL database was lost during this call, so what it "
            "was writing may or may not be saved; try again"
        )
    return None


def _end(conn: psycopg.Connection, exc: BaseException | None) -> None:
    """Roll back what a failed `run_transaction` left open; after an error of the server in a
    pipelined transaction (`exc`), close the connection, which the pool then replaces: the
    server skipped what the pipeline sent after the error, statements psycopg meant to prepare
    among them, and psycopg would go on using them by name ("prepared statement _pg3_11 does
    not exist", measured after a deadlock)."""
    if isinstance(exc, psycopg.Error):
        conn.close()
    elif conn.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
        with suppress(psycopg.Error):
            conn.execute("ROLLBACK")


async def _aend(conn: psycopg.AsyncConnection, exc: BaseException | None) -> None:
    if isinstance(exc, psycopg.Error):
        await conn.close()
    elif conn.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
        with suppress(psycopg.Error):
            await conn.execute("ROLLBACK")


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
        self.append(Sql(qmark(text), params, FETCH_LATER))


def _result(cursor: psycopg.Cursor, fetch: str) -> Any:
    if fetch == FETCH_ALL:
        return cursor.fetchall()
    if fetch == FETCH_ONE:
        return cursor.fetchone()
    return cursor.rowcount


async def _aresult(cursor: psycopg.AsyncCursor, fetch: str) -> Any:
    if fetch == FETCH_ALL:
        return await cursor.fetchall()
    if fetch == FETCH_ONE:
        return await cursor.fetchone()
    return cursor.rowcount


def neutral(write: Callable[[Any], None]) -> Plan[None]:
    """Run `write(conn)`, code written once for both engines (e.g. the usage counters of
    `checkpointers.stats`), as statements of this plan: inside its transaction."""
    statements = _Statements()
    write(statements)
    for statement in statements:
        yield statement


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


_given_back: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
"""Each pooled connection's last return to its pool (`time.monotonic()`)."""


def _note_return(conn: psycopg.Connection) -> None:
    _given_back[conn] = time.monotonic()


async def _anote_return(conn: psycopg.AsyncConnection) -> None:
    _given_back[conn] = time.monotonic()


def _idle(conn: Any) -> bool:
    return time.monotonic() - _given_back.get(conn, -CHECK_AFTER_IDLE_S) >= CHECK_AFTER_IDLE_S


@contextmanager
def checked(pool: ConnectionPool) -> Iterator[psycopg.Connection]:
    """A connection of `pool`; one idle for `CHECK_AFTER_IDLE_S` or more is checked first (one
    empty round trip). When it turns out dead, the server dropped the pool's connections (a
    restart, a failover, a proxy's idle timeout): every idle one is checked at once
    (`pool.check()`, which replaces the dead) and a working one is handed out.

    psycopg_pool's own `check=` waits 1, 2, 4, 8... s after each dead connection it finds: ten
    dead ones made the next request fail with `PoolTimeout` after 30 s."""
    with pool.connection() as conn:
        if not _idle(conn) or _answers(conn):
            yield conn
            return
    pool.check()
    with pool.connection() as conn:
        yield conn


@asynccontextmanager
async def achecked(pool: AsyncConnectionPool) -> AsyncIterator[psycopg.AsyncConnection]:
    """`checked` for an asyncio pool."""
    async with pool.connection() as conn:
        if not _idle(conn) or await _aanswers(conn):
            yield conn
            return
    await pool.check()
    async with pool.connection() as conn:
        yield conn


def _answers(conn: psycopg.Connection) -> bool:
    try:
        ConnectionPool.check_connection(conn)
    except psycopg.Error:
        return False
    return True


async def _aanswers(conn: psycopg.AsyncConnection) -> bool:
    try:
        await AsyncConnectionPool.check_connection(conn)
    except psycopg.Error:
        return False
    return True


def _pool_options() -> dict[str, Any]:
    return {
        "min_size": 1,
        "max_size": pool_size(),
        "max_idle": MAX_IDLE_S,
        "max_lifetime": MAX_LIFETIME_S,
        # In autocommit: `run_transaction` sends its own BEGIN, `Saver._transaction` uses `conn.transaction()`.
        "kwargs": {"connect_timeout": int(CONNECT_TIMEOUT_S), "autocommit": True},
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
            _probe(url)
            pool = ConnectionPool(url, reset=_note_return, **_pool_options())
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
        _drop_dead_loops()
        opened = key in _pools
    if not opened:
        await _aprobe(url)
    with _pools_lock:
        shared = _pools.get(key)
        if shared is None:
            pool = AsyncConnectionPool(url, reset=_anote_return, **_pool_options())
            shared = _pools[key] = _Shared(pool)
        shared.users += 1
    try:
        await shared.pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
    except Exception as exc:
        await release_async(url)
        raise unavailable(url, exc) from exc
    return shared.pool


def _drop_dead_loops() -> None:
    """Forget the asyncio pools of event loops that are closed, and close their connections
    (call holding `_pools_lock`). A saver opened without asyncio and called from a new loop
    each time (`asyncio.run` per request) got a pool per loop, kept open for good: eight calls
    held ten connections. A closed loop cannot run its pool's `close()`, so each idle
    connection's libpq handle is closed here directly."""
    for key in [k for k in _pools if isinstance(k, tuple) and k[1].is_closed()]:
        shared = _pools.pop(key)
        for conn in list(getattr(shared.pool, "_pool", ())):  # the pool's idle connections
            conn.pgconn.finish()


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


def _probe(url: str) -> None:
    """Connect once before a pool is opened: a pool retries a refused connection until its
    timeout and then says only that it is not ready, where this fails at once with the
    server's or the network's reason ("Connection refused", an unknown database, a wrong
    password)."""
    try:
        psycopg.connect(url, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT_S)).close()
    except psycopg.Error as exc:
        raise unavailable(url, exc) from exc


async def _aprobe(url: str) -> None:
    try:
        await (await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT_S))).close()
    except psycopg.Error as exc:
        raise unavailable(url, exc) from exc


STORE_FOUND_SQL = "SELECT to_regclass(format('%%I.schema_migrations', current_schema())) IS NOT NULL"
"""Whether the URL's schema holds a store: in this schema only, as `CREATE TABLE IF NOT EXISTS`
looks, not one further down `search_path` (another tenant's)."""


def has_store(url: str) -> bool:
    """Whether the database (the schema its URL's `search_path` names) holds a threadkeeper
    store, found without creating one. Raises `StoreUnavailableError` when unreachable."""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT_S)) as conn:
            (found,) = conn.execute(STORE_FOUND_SQL, ()).fetchone()
    except psycopg.Error as exc:
        raise unavailable(url, exc) from exc
    return found


def unavailable(url: str, exc: BaseException) -> StoreUnavailableError:
    """The store's one sentence for a server that cannot be reached (the password left out; libpq's
    reason on one line). A URL libpq cannot parse gets no reason: libpq's quotes the part it
    could not read, which may be the password."""
    try:
        password = psycopg.conninfo.conninfo_to_dict(url).get("password")
    except psycopg.ProgrammingError:
        return StoreUnavailableError(
            "cannot reach the PostgreSQL database: its URL is not valid (check its syntax, and "
            "percent-encode characters such as % @ : / in the user name and password)"
        )
    reason = " ".join(str(exc).split())
    if password:
        reason = reason.replace(str(password), "***")
    return StoreUnavailableError(f"cannot reach the PostgreSQL database {redacted(url)}: {reason}")


def redacted(url: str) -> str:
    """`url` without its password, for messages and logs."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(an invalid URL)"
    host, port, db, user = (info.get(k, "") for k in ("host", "port", "dbname", "user"))
    return f"postgresql://{user}@{host}{':' + str(port) if port else ''}/{db}"
