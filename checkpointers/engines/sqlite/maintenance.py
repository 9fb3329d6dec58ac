"""Retention, erasure and statistics reads on a SQLite store (`saver.maintenance`).

One sweeper at a time per file: a lease row in `store_meta`, taken in a write
transaction, so any number of processes can start sweeps and only one works.
Deleted text is overwritten in the file as it is deleted (`secure_delete`); what
a sweep or an erasure adds is merging the search index, copying the WAL into
the file and truncating it, and giving free pages back (`ThreadSaver.erase_traces`).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from checkpointers import stats
from checkpointers.engines.sqlite.schema import LATEST_VERSION, current_version

if TYPE_CHECKING:
    from checkpointers.engines.sqlite.saver import ThreadSaver

log = logging.getLogger("threadkeeper.retention")

LEASE_SECONDS = 600


def file_bytes(conn: sqlite3.Connection) -> int:
    """The size of the store's main file (pages times page size; the WAL not included)."""
    return conn.execute("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()").fetchone()[0]


class SqliteMaintenance:
    """`engines.base.Maintenance` for one `ThreadSaver` (see the module docstring)."""

    erasure_note = "their text is gone from the database file and its WAL"

    def __init__(self, saver: ThreadSaver) -> None:
        self.saver = saver
        self._wal_conn: sqlite3.Connection | None = None

    @property
    def location(self) -> str:
        return str(self.saver.path.resolve())

    @property
    def data_dir(self) -> str:
        return str(self.saver.path.parent)

    # -- the retention sweep -------------------------------------------------

    def expired(
        self, cutoff: str, limit: int, after: tuple[str, str] | None, *, keep_latest: bool
    ) -> list[tuple[str, str]]:
        sql = "SELECT updated_at, thread_id FROM threads WHERE pinned = 0 AND updated_at < ?"
        params: list[Any] = [cutoff]
        if after is not None:
            sql += " AND (updated_at, thread_id) > (?, ?)"
            params.extend(after)
        if keep_latest:
            sql += (
                " AND (SELECT count(*) FROM (SELECT 1 FROM checkpoints AS c "
                "WHERE c.thread_key = threads.thread_key LIMIT 2)) > 1"
            )
        sql += " ORDER BY updated_at, thread_id LIMIT ?"
        params.append(limit)
        with self.saver._read() as conn:
            return conn.execute(sql, params).fetchall()

    def attachment_bytes(self, thread_ids: Sequence[str], cutoff: str) -> int:
        with self.saver._read() as conn:
            (attached,) = conn.execute(
                "SELECT coalesce(sum(a.bytes), 0) FROM attachments AS a JOIN threads AS t USING (thread_key) "
                "WHERE t.thread_id IN (SELECT value FROM json_each(?)) AND t.updated_at < ?",
                (json.dumps(list(thread_ids)), cutoff),
            ).fetchone()
        return attached

    def take_lease(self, owner: str) -> bool:
        now = time.time()
        with self.saver._write():
            row = self.saver.conn.execute("SELECT value FROM store_meta WHERE key = 'sweep_lease'").fetchone()
            if row is not None:
                lease = json.loads(row[0])
                if lease["owner"] != owner and lease["until"] > now:
                    return False
            self._write_lease(owner, now)
        return True

    def renew_lease(self, owner: str) -> None:
        with self.saver._write():
            self._write_lease(owner, time.time())

    def _write_lease(self, owner: str, now: float) -> None:
        self.saver.conn.execute(
            "INSERT OR REPLACE INTO store_meta (key, value) VALUES ('sweep_lease', ?)",
            (json.dumps({"owner": owner, "until": now + LEASE_SECONDS}),),
        )

    def release_lease(self, owner: str) -> None:
        with self.saver._write():
            self.saver.conn.execute(
                "DELETE FROM store_meta WHERE key = 'sweep_lease' AND json_extract(value, '$.owner') = ?", (owner,)
            )
        if self._wal_conn is not None:
            self._wal_conn.close()
            self._wal_conn = None

    def between_batches(self) -> None:
        """A PASSIVE checkpoint on a connection of the sweeper's own, outside the saver's lock.

        A sweep writes many pages. Left to SQLite, the WAL would be copied into
        the file by whichever commit finds it past 1,000 pages, a chat turn's or
        a sweep batch's, holding up every turn waiting behind it. A PASSIVE
        checkpoint waits for no reader or writer, so chats go on meanwhile.
        """
        if self._wal_conn is None:
            self._wal_conn = sqlite3.connect(self.saver.path, check_same_thread=False, isolation_level=None)
            self._wal_conn.execute("PRAGMA busy_timeout = 0")
        try:
            self._wal_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error:
            log.debug("could not checkpoint the WAL of %s during a sweep", self.saver.path, exc_info=True)

    def bytes_in_use(self) -> int:
        with self.saver._read() as conn:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            size = conn.execute("PRAGMA page_size").fetchone()[0]
        return (pages - free) * size

    def erase_traces(
        self, *, wait: bool = True, between_steps: Callable[[float], None] | None = None, hold_s: float | None = None
    ) -> None:
        """Merge the search index (the words of deleted messages leave it), then empty the
        WAL and give free pages back (`ThreadSaver.erase_traces`)."""
        self.saver.purge_search_index()
        self.saver.erase_traces(wait=wait, between_steps=between_steps, hold_s=hold_s)

    def forget_user(self, user_id: str) -> None:
        with self.saver._write():
            stats.user_erased(self.saver.conn, user_id)

    def record_sweep(self, report: Any, host: str, *, keep_latest: bool) -> None:
        with self.saver._write():
            self.saver.conn.execute(
                "INSERT INTO sweeps (started_at, finished_at, strategy, cutoff, threads, bytes, dry_run, host) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (report.started_at, report.finished_at, report.strategy, report.cutoff, report.threads,
                 report.bytes, int(report.dry_run), host),
            )
            if not report.dry_run:  # usage statistics
                stats.sweep_recorded(self.saver.conn, report.threads, keep_latest, file_bytes(self.saver.conn))

    def recent_sweeps(self, limit: int) -> list[dict[str, Any]]:
        with self.saver._read() as conn:
            cursor = conn.execute(
                "SELECT started_at, finished_at, strategy, cutoff, threads, bytes, dry_run, host FROM sweeps "
                "ORDER BY sweep_no DESC LIMIT ?",
                (limit,),
            )
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]

    # -- statistics and status -------------------------------------------------

    @contextmanager
    def reading(self) -> Iterator[Callable[..., list[tuple]]]:
        with self.saver._read(flush=False) as conn:
            yield lambda sql, params=(): conn.execute(sql, params).fetchall()

    def database_bytes(self) -> int:
        """The file and its WAL."""
        total = 0
        for path in (self.saver.path, self.saver.path.with_name(self.saver.path.name + "-wal")):
            try:
                total += os.stat(path).st_size
            except FileNotFoundError:
                pass
        return total

    def attachment_totals(self, query: Callable[..., list[tuple]]) -> tuple[int, int]:
        ((count, size),) = query("SELECT count(*), coalesce(sum(bytes), 0) FROM attachments")
        return count, size

    def schema_problem(self) -> str | None:
        try:
            with self.saver._read(flush=False) as conn:
                version = current_version(conn)
        except sqlite3.Error as exc:
            return f"the store does not answer: {type(exc).__name__}"
        if version != LATEST_VERSION:
            return f"the store's schema is version {version}, not {LATEST_VERSION}"
        return None

    def describe(self) -> list[tuple[str, str]]:
        with self.saver._read(flush=False) as conn:
            pages, free, size = (
                conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count", "page_size")
            )
            version = current_version(conn)
        return [
            ("database", self.location),
            ("schema version", str(version)),
            ("file", f"{pages * size / 1e6:,.2f} MB ({free:,} free pages)"),
        ]
