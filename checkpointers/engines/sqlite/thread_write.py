"""One thread's write: the numbers it hands out, the rows it gathers by table
(`_ThreadTxn`), and what a saver keeps of a thread's row between writes
(`_ThreadState`), trusted only as far as the write's last UPDATE confirms.

`ThreadSaver._write_thread` opens one (see `checkpointers.engines.sqlite.saver`);
`values` fills it, and `deferred` opens one per thread for what waits.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from checkpointers import stats
from checkpointers.messages import StoredList as _StoredList, utc_now

def _remember(cache: OrderedDict, key: Any, value: Any, limit: int) -> None:
    """Put into a least-recently-used map, dropping the oldest beyond `limit`."""
    cache[key] = value
    cache.move_to_end(key)
    if len(cache) > limit:
        cache.popitem(last=False)


@dataclass
class _ThreadState:
    """What a write needs to know about a thread's row, kept between writes.

    Trusted only until the write that uses it ends: that write's final UPDATE
    matches the row on all four numbers, so a row changed meanwhile (by another
    process, a garbage collection, a deletion) makes the write start over.
    """

    thread_key: int
    next_value_no: int
    next_message_no: int
    gc_epoch: int
    title: str | None
    sealed_upto: int | None = None
    """Every message numbered up to here is sealed in a segment (None: unknown)."""


class _StaleThreadState(Exception):
    """The thread's row changed since it was cached; the write is retried."""


# The statements of a thread write's rows, by table (see `_ThreadTxn.add_row`).
ROW_CHANNEL_VALUE = (
    "INSERT INTO channel_values (thread_key, value_no, checkpoint_ns, channel, version, kind, type, value, "
    "base_no, keep, depth) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
ROW_CHECKPOINT = (
    "INSERT OR REPLACE INTO checkpoints (thread_key, checkpoint_ns, checkpoint_id, parent_checkpoint_id, run_id, "
    "type, checkpoint, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
ROW_MESSAGE = "INSERT INTO messages (thread_key, message_no, type, value) VALUES (?, ?, ?, ?)"
ROW_SEARCH = "INSERT INTO search_backlog (message_key, body) VALUES (?, ?)"
_WRITE_COLUMNS = "(thread_key, checkpoint_ns, checkpoint_id, task_id, idx, task_path, channel, kind, type, value)"
ROW_WRITE_IGNORE = f"INSERT OR IGNORE INTO writes {_WRITE_COLUMNS} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
ROW_WRITE_REPLACE = f"INSERT OR REPLACE INTO writes {_WRITE_COLUMNS} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"

_THREAD_ROW_SQL = (
    "UPDATE threads SET next_value_no = ?, next_message_no = ?, updated_at = coalesce(?, updated_at), "
    "message_count = coalesce(?, message_count), title = coalesce(title, ?), user_id = coalesce(user_id, ?) "
    "WHERE thread_key = ? AND thread_id = ? AND next_value_no = ? AND next_message_no = ? AND gc_epoch = ? "
    "RETURNING user_id"
)
"""A thread write's mark on its row, made only if the row is as the write read it."""


@dataclass
class _ThreadTxn:
    """One thread's write: number allocation, and the rows to write.

    Rows gather in `rows`, by statement, and go to the database with one
    `executemany` per table (`write_rows`) inside the caller's `BEGIN IMMEDIATE`.
    """

    conn: sqlite3.Connection
    thread_id: str
    read: _ThreadState
    after_commit: list
    next_value_no: int = 0
    next_message_no: int = 0
    sealed_upto: int | None = None
    stored_messages: int = 0
    new_digests: dict[bytes, int] = field(default_factory=dict)
    unnamed: dict[int, int] = field(default_factory=dict)
    """id(message) -> number of each message this write stores without an id (one row per object)."""
    lists: dict[tuple[str, str], _StoredList] = field(default_factory=dict)
    """Message lists stored by this write, by (ns, channel): a later checkpoint in it stores against them."""
    rows: dict[str, list[tuple]] = field(default_factory=dict)
    updated_at: str | None = None
    message_count: int | None = None
    title: str | None = None
    sealed_title: str | None = None
    user_id: str | None = None
    usage: stats.Tally | None = None
    """The new messages this write stores, for the usage statistics (`checkpointers/stats.py`)."""

    def __post_init__(self) -> None:
        self.next_value_no = self.read.next_value_no
        self.next_message_no = self.read.next_message_no
        self.sealed_upto = self.read.sealed_upto
        self.title = self.read.title

    @property
    def thread_key(self) -> int:
        return self.read.thread_key

    def touch(
        self, updated_at: str, message_count: int | None, title: str | None, sealed_title: str | None, user_id: str | None
    ) -> None:
        """What a checkpoint changes in the thread's index row, written by `close`."""
        self.updated_at = updated_at
        if message_count is not None:
            self.message_count = message_count
        if self.title is None and title is not None:
            self.title, self.sealed_title = title, sealed_title
        if self.user_id is None:
            self.user_id = user_id

    def value_no(self) -> int:
        self.next_value_no += 1
        return self.next_value_no - 1

    def message_no(self) -> int:
        self.next_message_no += 1
        return self.next_message_no - 1

    def add_row(self, sql: str, *row: Any) -> None:
        self.rows.setdefault(sql, []).append(row)

    def count_message(self, figures: tuple[int, int, int, int, int] | None) -> None:
        """Usage statistics: one new message of this write (see `stats.figures`)."""
        if figures is None:
            return
        if self.usage is None:
            self.usage = stats.Tally()
        self.usage.add(figures)

    def write_rows(self) -> None:
        """Write the gathered rows."""
        rows, self.rows = self.rows, {}
        for sql, params in rows.items():
            self.conn.executemany(sql, params)

    def close(self) -> _ThreadState:
        """Write the rows, the counters and what `touch` noted, if the thread row is still as it was read."""
        read = self.read
        owner = self.conn.execute(_THREAD_ROW_SQL, (
            self.next_value_no, self.next_message_no, self.updated_at, self.message_count, self.sealed_title,
            self.user_id, read.thread_key, self.thread_id, read.next_value_no, read.next_message_no, read.gc_epoch,
        )).fetchall()  # all: the statement is finished before COMMIT
        if not owner:
            raise _StaleThreadState(self.thread_id)
        self.write_rows()
        # -- usage statistics: the day's counters, in the same transaction as the thread's rows
        if self.usage is not None:
            (database_bytes,) = self.conn.execute(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()"
            ).fetchone()
            stats.record_tally(self.conn, (self.updated_at or utc_now())[:10], owner[0][0], self.usage, database_bytes)
        # --
        return _ThreadState(
            self.thread_key, self.next_value_no, self.next_message_no, self.read.gc_epoch, self.title, self.sealed_upto
        )
