"""The SQL of import and export on PostgreSQL (`checkpointers.engines.base.Transfer`):
each method is a plan fragment that `checkpointers.conversation.restore` and
`date_messages` compose, run natively on the saver's sync or asyncio pool.

A thread's message times and records go in one statement each, as `unnest` of
arrays (an import dates every message of a thread), whatever their number.
"""

from __future__ import annotations

from checkpointers import encryption, stats
from checkpointers.engines.base import FETCH_NONE, Plan, Sql
from checkpointers.engines.postgres.connection import PostgresRunner, neutral

_SET_ORIGIN = "UPDATE threads SET user_id = %s, created_at = %s, updated_at = %s, pinned = %s, metadata = %s::jsonb"
_SET_ORIGIN_SQL = {
    True: _SET_ORIGIN + " WHERE thread_id = %s",
    False: _SET_ORIGIN + ", title = %s WHERE thread_id = %s",
}
"""Keyed by `keep_title`."""

_MESSAGE_TIMES_SQL = """
WITH points AS (
    SELECT s.message_no, s.created_at, 0 AS is_message
    FROM unnest(%(numbers)s::integer[], %(millis)s::bigint[]) AS s (message_no, created_at)
    UNION ALL
    SELECT message_no, NULL, 1 FROM messages WHERE thread_key = %(thread_key)s
), runs AS (
    SELECT message_no, created_at, is_message, count(created_at) OVER (ORDER BY message_no, is_message) AS run
    FROM points
), dated AS (
    SELECT message_no, is_message, max(created_at) OVER (PARTITION BY run) AS created_at FROM runs
)
UPDATE messages m SET created_at = d.created_at FROM dated d
WHERE d.is_message = 1 AND m.thread_key = %(thread_key)s AND m.message_no = d.message_no
    AND m.created_at IS DISTINCT FROM d.created_at
"""
"""Each message dated by the start it falls after (`date_messages`; before the first: undated),
in one pass over the starts and messages in order (a lookup per message took 2 s for 4,000)."""
_MESSAGE_RECORDS_SQL = (
    "INSERT INTO message_metadata (thread_key, message_id, created_at, metadata) "
    "SELECT %s, r.message_id, r.created_at, r.metadata::jsonb "
    "FROM unnest(%s::text[], %s::bigint[], %s::text[]) AS r (message_id, created_at, metadata) "
    "ON CONFLICT (thread_key, message_id) DO UPDATE SET created_at = EXCLUDED.created_at, metadata = EXCLUDED.metadata"
)


class PostgresTransfer(PostgresRunner):
    """`Transfer` on a PostgreSQL saver: plans run by the saver's runners."""

    def seal_title(self, title: str | None, thread_id: str) -> str | None:
        return encryption.seal_title(self._cipher(), title, thread_id)

    def add_thread(self, thread_id: str, owner: str | None, now: str) -> Plan[None]:
        yield Sql(
            "INSERT INTO threads (thread_id, user_id, created_at, updated_at) VALUES (%s, %s, %s, %s)",
            (thread_id, owner, now, now),
            FETCH_NONE,
        )
        yield from neutral(lambda conn: stats.thread_created(conn, owner))  # usage statistics

    def set_origin(
        self, thread_id: str, *, owner: str | None, created_at: str, updated_at: str, pinned: bool,
        metadata_json: str, title: str | None, keep_title: bool,
    ) -> Plan[None]:
        params = (owner, created_at, updated_at, bool(pinned), metadata_json) + (() if keep_title else (title,))
        yield Sql(_SET_ORIGIN_SQL[keep_title], params + (thread_id,), FETCH_NONE)

    def date_messages(
        self, thread_key: int, starts: list[tuple[int, int]] | None, records: list[tuple[str, int | None, str]]
    ) -> Plan[None]:
        if starts is not None:
            yield Sql("DELETE FROM message_times WHERE thread_key = %s", (thread_key,), FETCH_NONE)  # rows before m009
            numbers, millis = (list(column) for column in zip(*starts)) if starts else ([], [])
            yield Sql(_MESSAGE_TIMES_SQL, {"numbers": numbers, "millis": millis, "thread_key": thread_key}, FETCH_NONE)
        if records:
            ids, micros, metadata = (list(column) for column in zip(*records))
            yield Sql(_MESSAGE_RECORDS_SQL, (thread_key, ids, micros, metadata), FETCH_NONE)
