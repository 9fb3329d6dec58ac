"""Retention, erasure and statistics reads on PostgreSQL (`saver.maintenance`).

One sweeper at a time per store, across every process and machine: a sweep
takes a session-level advisory lock (`pg_try_advisory_lock`, keyed by the
store's schema, so stores in other schemas of the database sweep on their
own) on a connection of its own, held until the sweep ends. A process that
dies mid-sweep loses its session, and with it the lock: there is no lease to
expire. The other sweepers see the lock taken and skip.

Deleting a thread deletes its rows (every table references `threads` with
`ON DELETE CASCADE`). PostgreSQL leaves deleted rows in the table files as
dead tuples until VACUUM; after a sweep or a user's erasure `erase_traces`
runs `VACUUM` on the thread tables, on an autocommit connection (VACUUM
cannot run in a transaction). What that does and does not erase is in
docs/storage.md, "Erasure on PostgreSQL".
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import psycopg

from checkpointers import stats
from checkpointers.engines.postgres import connection, schema
from checkpointers.engines.postgres.connection import FETCH_NONE, FETCH_ONE, Plan, Sql, neutral, qmark
from checkpointers.errors import StoreError

log = logging.getLogger("threadkeeper.retention")

SWEEP_LOCK = 0x746B7377
""""tksw": with the hash of the store's schema, the advisory lock one sweeper holds."""

THREAD_TABLES = (
    "threads", "checkpoints", "channel_values", "messages", "writes", "message_times", "message_metadata", "attachments",
    "usage_user_days", "usage_users",
)
"""The tables a thread's text or a user's id lives in: what VACUUM goes over after deletions."""

_VACUUM = {True: "VACUUM " + ", ".join(THREAD_TABLES), False: "VACUUM (SKIP_LOCKED) " + ", ".join(THREAD_TABLES)}
"""Keyed by `wait`: the background sweeper skips a table another VACUUM holds (autovacuum yields to it)."""

_SCHEMA_BYTES_SQL = (
    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
    "WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'm', 'p')"
)
"""The store's tables with their indexes and TOAST: the schema's share of the database."""


class PostgresMaintenance:
    """`engines.base.Maintenance` for one `PostgresThreadSaver` (see the module docstring)."""

    erasure_note = (
        "their rows are deleted and the tables vacuumed; the server's WAL, replicas and backups keep "
        "old copies until they are recycled (docs/storage.md, Erasure on PostgreSQL)"
    )

    def __init__(
        self,
        url: str,
        run: Callable[..., Any],
        transaction: Callable[..., AbstractContextManager[psycopg.Connection]],
    ) -> None:
        """`run(plan, read=...)` and `transaction(read=...)`: the saver's, on its pool."""
        self.url = url
        self._location = connection.redacted(url)  # every write names it when it checks the key
        self._run = run
        self._transaction = transaction
        self._leases: dict[str, psycopg.Connection] = {}
        self._leases_lock = threading.Lock()

    @property
    def location(self) -> str:
        return self._location

    @property
    def data_dir(self) -> str:
        """No file of the store is on this machine: the web chat's own folder is
        `$THREADKEEPER_DATA_DIR`, else `./data`."""
        return os.environ.get("THREADKEEPER_DATA_DIR") or "data"

    def _own_connection(self) -> psycopg.Connection:
        """A connection outside the pool, in autocommit: for a session lock or a VACUUM."""
        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=int(connection.CONNECT_TIMEOUT_S))
        except psycopg.OperationalError as exc:
            raise connection.unavailable(self.url, exc) from exc

    # -- the retention sweep -------------------------------------------------

    def expired(
        self, cutoff: str, limit: int, after: tuple[str, str] | None, *, keep_latest: bool
    ) -> list[tuple[str, str]]:
        def plan() -> Plan[list[tuple[str, str]]]:
            sql = "SELECT updated_at, thread_id FROM threads WHERE NOT pinned AND updated_at < %s"
            params: list[Any] = [cutoff]
            if after is not None:
                sql += " AND (updated_at, thread_id) > (%s, %s)"
                params.extend(after)
            if keep_latest:
                sql += (
                    " AND (SELECT count(*) FROM (SELECT 1 FROM checkpoints AS c "
                    "WHERE c.thread_key = threads.thread_key LIMIT 2) AS two) > 1"
                )
            rows = yield Sql(sql + " ORDER BY updated_at, thread_id LIMIT %s", [*params, limit])
            return [tuple(row) for row in rows]

        return self._run(plan(), read=True)

    def attachment_bytes(self, thread_ids: Sequence[str], cutoff: str) -> int:
        def plan() -> Plan[int]:
            (attached,) = yield Sql(
                "SELECT coalesce(sum(a.bytes), 0) FROM attachments AS a JOIN threads AS t USING (thread_key) "
                "WHERE t.thread_id = ANY(%s) AND t.updated_at < %s",
                (list(thread_ids), cutoff),
                FETCH_ONE,
            )
            return int(attached)

        return self._run(plan(), read=True)

    def take_lease(self, owner: str) -> bool:
        conn = self._own_connection()
        try:
            (taken,) = conn.execute(
                "SELECT pg_try_advisory_lock(%s, hashtext(current_schema()))", (SWEEP_LOCK,)
            ).fetchone()
        except BaseException:
            conn.close()
            raise
        if not taken:
            conn.close()
            return False
        with self._leases_lock:
            self._leases[owner] = conn
        return True

    def renew_lease(self, owner: str) -> None:
        """The lock lasts as long as its session: keep the session from idling out."""
        with self._leases_lock:
            conn = self._leases.get(owner)
        if conn is not None:
            conn.execute("SELECT 1")

    def release_lease(self, owner: str) -> None:
        with self._leases_lock:
            conn = self._leases.pop(owner, None)
        if conn is None:
            return
        try:
            conn.execute("SELECT pg_advisory_unlock(%s, hashtext(current_schema()))", (SWEEP_LOCK,))
        except psycopg.Error:
            log.debug("could not unlock the sweep of %s; closing the session does", self.location, exc_info=True)
        finally:
            conn.close()

    def between_batches(self) -> None:
        pass  # nothing to copy: PostgreSQL's own checkpointer writes its WAL out

    def bytes_in_use(self) -> int:
        return self.database_bytes()

    def erase_traces(
        self, *, wait: bool = True, between_steps: Callable[[float], None] | None = None, hold_s: float | None = None
    ) -> None:
        """VACUUM the thread tables: dead tuples of deleted rows are removed from their pages
        and indexes (the space is kept for new rows; see docs/storage.md for what remains)."""
        with self._own_connection() as conn:
            conn.execute(_VACUUM[wait])

    def forget_user(self, user_id: str) -> None:
        def plan() -> Plan[None]:
            yield from neutral(lambda conn: stats.user_erased(conn, user_id))

        self._run(plan())

    def record_sweep(self, report: Any, host: str, *, keep_latest: bool) -> None:
        database_bytes = self.database_bytes()

        def plan() -> Plan[None]:
            yield Sql(
                "INSERT INTO sweeps (started_at, finished_at, strategy, cutoff, threads, bytes, dry_run, host) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (report.started_at, report.finished_at, report.strategy, report.cutoff, report.threads,
                 report.bytes, report.dry_run, host),
                FETCH_NONE,
            )
            if not report.dry_run:  # usage statistics
                yield from neutral(lambda conn: stats.sweep_recorded(conn, report.threads, keep_latest, database_bytes))

        self._run(plan())

    def recent_sweeps(self, limit: int) -> list[dict[str, Any]]:
        names = ("started_at", "finished_at", "strategy", "cutoff", "threads", "bytes", "dry_run", "host")

        def plan() -> Plan[list[dict[str, Any]]]:
            rows = yield Sql(f"SELECT {', '.join(names)} FROM sweeps ORDER BY sweep_no DESC LIMIT %s", (limit,))
            return [dict(zip(names, row)) for row in rows]

        return self._run(plan(), read=True)

    # -- statistics and status -------------------------------------------------

    @contextmanager
    def reading(self) -> Iterator[Callable[..., list[tuple]]]:
        with self._transaction(read=True) as conn:
            yield lambda sql, params=(): conn.execute(qmark(sql), params).fetchall()

    def database_bytes(self) -> int:
        """The store's tables, indexes and TOAST (in its schema; the WAL is the server's)."""

        def plan() -> Plan[int]:
            (size,) = yield Sql(_SCHEMA_BYTES_SQL, (), FETCH_ONE)
            return int(size)

        return self._run(plan(), read=True)

    def attachment_totals(self, query: Callable[..., list[tuple]]) -> tuple[int, int]:
        ((count, size),) = query("SELECT count(*), coalesce(sum(bytes), 0) FROM attachments")
        return int(count), int(size)

    def _version(self) -> int:
        def plan() -> Plan[int]:
            (version,) = yield Sql("SELECT coalesce(max(version), 0) FROM schema_migrations", (), FETCH_ONE)
            return version

        return self._run(plan(), read=True)

    def schema_problem(self) -> str | None:
        try:
            version = self._version()
        except (psycopg.Error, StoreError) as exc:
            return f"the store does not answer: {type(exc).__name__}"
        if version != len(schema.MIGRATIONS):
            return f"the store's schema is version {version}, not {len(schema.MIGRATIONS)}"
        return None

    def describe(self) -> list[tuple[str, str]]:
        return [
            ("database", self.location),
            ("schema version", str(self._version())),
            ("tables", f"{self.database_bytes() / 1e6:,.2f} MB with their indexes"),
        ]
