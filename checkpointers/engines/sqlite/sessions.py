"""The SQL of `saver.sessions` on SQLite: each method is a plan fragment that the
engine-neutral `checkpointers.sessions` composes (see `SessionEngine` there for what
each one promises).

Listing a user's sessions walks `threads_by_user_updated` newest first (`user_id IS ?`
is one index range in SQLite, NULL included). Metadata filters compile to
`json_type` / `json_extract` (`checkpointers.metadata.FilterCompiler`). A message's
time and metadata come from `message_metadata` (given), else `message_times` (kept by
a trigger on `messages`), else the thread's creation.
"""

from __future__ import annotations

import json
from typing import Any

from checkpointers import metadata as md, stats
from checkpointers.engines.base import FETCH_NONE, FETCH_ONE, Plan, Sql
from checkpointers.engines.sqlite import SqliteRunner
from checkpointers.sessions import MessageQuery

SESSION_COLUMNS = "thread_id, user_id, title, metadata, created_at, updated_at, message_count, pinned"

_MESSAGES_SQL = """
WITH listed AS (
    SELECT json_extract(value, '$[0]') AS position, json_extract(value, '$[1]') AS message_no,
           json_extract(value, '$[2]') AS message_id
    FROM json_each(:listed)
), dated AS (
    SELECT listed.position AS position,
           coalesce(
               mm.created_at,
               1000 * (SELECT mt.created_at FROM message_times mt WHERE mt.thread_key = :thread_key
                          AND mt.message_no <= listed.message_no ORDER BY mt.message_no DESC LIMIT 1),
               :fallback
           ) AS created_at,
           coalesce(mm.metadata, '{}') AS metadata
    FROM listed LEFT JOIN message_metadata mm
        ON mm.thread_key = :thread_key AND mm.message_id = listed.message_id
)
SELECT position, created_at, metadata FROM dated WHERE <where>
ORDER BY created_at <order>, position <order> LIMIT :limit
"""
"""One row per listed message ([position, message number, message id]); `<where>` and
`<order>` are filled from constants and the compiled filter, never from user text."""

_DIRECTIONS = {"asc": ("ASC", ">"), "desc": ("DESC", "<")}


class SqliteSessions(SqliteRunner):
    """`SessionEngine` on a SQLite saver."""

    def seal_title(self, title: str | None, session_id: str) -> str | None:
        return self._saver._seal_title(title, session_id)

    def open_title(self, stored: str | None, session_id: str) -> str | None:
        return self._saver._open_title(stored, session_id)

    def session_row(self, session_id: str) -> Plan[tuple | None]:
        return (yield Sql(f"SELECT {SESSION_COLUMNS} FROM threads WHERE thread_id = ?", (session_id,), FETCH_ONE))

    def owner_and_metadata(self, session_id: str) -> Plan[tuple | None]:
        # A write transaction on SQLite already excludes every other writer.
        return (yield Sql("SELECT user_id, metadata FROM threads WHERE thread_id = ?", (session_id,), FETCH_ONE))

    def insert_session(self, session_id: str, owner: str | None, title: str | None, now: str, stored: str) -> Plan[bool]:
        # Writers take turns (`BEGIN IMMEDIATE`), so the row `owner_and_metadata` did not find
        # is still missing: the insert always happens.
        yield Sql(
            "INSERT INTO threads (thread_id, user_id, title, created_at, updated_at, metadata) VALUES (?, ?, ?, ?, ?, ?)",
            (session_id, owner, title, now, now, stored),
            FETCH_NONE,
        )
        yield lambda conn: stats.thread_created(conn, owner)  # usage statistics
        return True

    def update_session(self, session_id: str, stored: str, title: str | None, now: str) -> Plan[None]:
        yield Sql(
            "UPDATE threads SET metadata = ?, title = coalesce(?, title), updated_at = ? WHERE thread_id = ?",
            (stored, title, now, session_id),
            FETCH_NONE,
        )

    def _sessions_sql(self, user_id, updated_before, metadata_filter, after, limit) -> tuple[str, list[Any]]:
        sql = f"SELECT {SESSION_COLUMNS} FROM threads WHERE user_id IS ?"
        params: list[Any] = [user_id]
        if updated_before is not None:
            sql += " AND updated_at < ?"
            params.append(updated_before)
        if after is not None:
            sql += " AND (updated_at, thread_id) < (?, ?)"
            params.extend(after)
        if metadata_filter is not None:
            clause, extra = md.compile_filter(metadata_filter, "metadata")
            sql += f" AND {clause}"
            params.extend(extra)
        return sql + " ORDER BY updated_at DESC, thread_id DESC LIMIT ?", [*params, limit]

    def sessions(self, user_id, *, updated_before, metadata_filter, after, limit) -> Plan[list[tuple]]:
        return (yield Sql(*self._sessions_sql(user_id, updated_before, metadata_filter, after, limit)))

    def explain_sessions(self, user_id, *, updated_before, metadata_filter, limit) -> Plan[list[str]]:
        sql, params = self._sessions_sql(user_id, updated_before, metadata_filter, None, limit)
        return [r[-1] for r in (yield Sql("EXPLAIN QUERY PLAN " + sql, params))]

    def dated(self, thread_key: int, fallback: int, listed: list[tuple], query: MessageQuery) -> Plan[list[tuple]]:
        order, compare = _DIRECTIONS[query.order]
        clauses, params = ["1"], {}
        if query.created_after is not None:
            clauses.append("created_at > :created_after")
            params["created_after"] = query.created_after
        if query.created_before is not None:
            clauses.append("created_at < :created_before")
            params["created_before"] = query.created_before
        if query.metadata_filter is not None:
            clause, positional = md.compile_filter(query.metadata_filter, "metadata")
            # The compiler emits `?`; this statement uses named parameters.
            for i, value in enumerate(positional):
                clause = clause.replace("?", f":f{i}", 1)
                params[f"f{i}"] = value
            clauses.append(clause)
        if query.after is not None:
            clauses.append(f"(created_at, position) {compare} (:after_created, :after_position)")
            params.update(after_created=query.after[0], after_position=query.after[1])
        sql = _MESSAGES_SQL.replace("<where>", " AND ".join(clauses)).replace("<order>", order)
        params.update(
            listed=json.dumps([list(row) for row in listed], separators=(",", ":")),
            thread_key=thread_key,
            fallback=fallback,
            limit=-1 if query.limit is None else query.limit,
        )
        return (yield Sql(sql, params))

    def message_metadata(self, thread_key: int, message_id: str) -> Plan[tuple | None]:
        return (
            yield Sql(
                "SELECT created_at, metadata FROM message_metadata WHERE thread_key = ? AND message_id = ?",
                (thread_key, message_id),
                FETCH_ONE,
            )
        )

    def put_message_metadata(self, thread_key: int, message_id: str, created: int | None, stored: str) -> Plan[None]:
        yield Sql(
            "INSERT OR REPLACE INTO message_metadata (thread_key, message_id, created_at, metadata) VALUES (?, ?, ?, ?)",
            (thread_key, message_id, created, stored),
            FETCH_NONE,
        )

    def delete_message_metadata(self, thread_key: int, message_id: str) -> Plan[None]:
        yield Sql(
            "DELETE FROM message_metadata WHERE thread_key = ? AND message_id = ?", (thread_key, message_id), FETCH_NONE
        )

    def clear_title(self, thread_key: int) -> Plan[None]:
        yield Sql("UPDATE threads SET title = NULL WHERE thread_key = ?", (thread_key,), FETCH_NONE)
