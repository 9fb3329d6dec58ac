"""The SQL of import and export on SQLite (`checkpointers.engines.base.Transfer`): each
method is a plan fragment that `checkpointers.conversation.restore` and `date_messages`
compose, run in the saver's write transactions under its lock.

Message times and records are written with `executemany` (a function of the
connection, which a SQLite plan may yield): an import dates every message of a thread.
"""

from __future__ import annotations

from checkpointers import stats
from checkpointers.engines.base import FETCH_NONE, Plan, Sql
from checkpointers.engines.sqlite import SqliteRunner

_SET_ORIGIN = "UPDATE threads SET user_id = ?, created_at = ?, updated_at = ?, pinned = ?, metadata = ?"
_SET_ORIGIN_SQL = {
    True: _SET_ORIGIN + " WHERE thread_id = ?",
    False: _SET_ORIGIN + ", title = ? WHERE thread_id = ?",
}
"""Keyed by `keep_title`."""


class SqliteTransfer(SqliteRunner):
    """`Transfer` on a SQLite saver."""

    def seal_title(self, title: str | None, thread_id: str) -> str | None:
        return self._saver._seal_title(title, thread_id)

    def add_thread(self, thread_id: str, owner: str | None, now: str) -> Plan[None]:
        yield Sql(
            "INSERT INTO threads (thread_id, user_id, created_at, updated_at) VALUES (?, ?, ?, ?)",
            (thread_id, owner, now, now),
            FETCH_NONE,
        )
        yield lambda conn: stats.thread_created(conn, owner)  # usage statistics

    def set_origin(
        self, thread_id: str, *, owner: str | None, created_at: str, updated_at: str, pinned: bool,
        metadata_json: str, title: str | None, keep_title: bool,
    ) -> Plan[None]:
        params = (owner, created_at, updated_at, int(pinned), metadata_json) + (() if keep_title else (title,))
        yield Sql(_SET_ORIGIN_SQL[keep_title], params + (thread_id,), FETCH_NONE)

    def date_messages(
        self, thread_key: int, starts: list[tuple[int, int]] | None, records: list[tuple[str, int | None, str]]
    ) -> Plan[None]:
        if starts is not None:
            yield Sql("DELETE FROM message_times WHERE thread_key = ?", (thread_key,), FETCH_NONE)
            yield lambda conn: conn.executemany(
                "INSERT INTO message_times (thread_key, message_no, created_at) VALUES (?, ?, ?)",
                [(thread_key, number, millis) for number, millis in starts],
            )
        yield lambda conn: conn.executemany(
            "INSERT OR REPLACE INTO message_metadata (thread_key, message_id, created_at, metadata) VALUES (?, ?, ?, ?)",
            [(thread_key, *record) for record in records],
        )
