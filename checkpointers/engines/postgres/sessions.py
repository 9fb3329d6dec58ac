"""The SQL of `saver.sessions` on PostgreSQL: each method is a plan fragment that the
engine-neutral `checkpointers.sessions` composes (see `SessionEngine` there for what
each one promises), run natively on the saver's sync or asyncio pool.

Listing a user's sessions walks `threads_by_user_updated` backwards for one user
(`user_id = %s`, or `IS NULL` for sessions without an owner: each a constant
statement, as in `threads.py`). Metadata filters compile to `jsonb` operators
(`JsonbFilter`), with the same meaning as SQLite's: a comparison holds only for a
value of the operand's kind, strings compare by code point (`COLLATE "C"`),
numbers as `numeric` (exact, as Python compares them), and every comparison is a
`CASE` that is true or false, never NULL, and never casts a value of another kind.
"""

from __future__ import annotations

import json
from typing import Any

from checkpointers import encryption, stats
from checkpointers import metadata as md
from checkpointers.engines.base import FETCH_NONE, FETCH_ONE, Plan, Sql
from checkpointers.engines.postgres import keys
from checkpointers.engines.postgres.connection import PostgresRunner, neutral
from checkpointers.sessions import MessageQuery

_COLUMNS = "thread_id, user_id, title, metadata::text, created_at, updated_at, message_count, pinned"
_OWNED_BY = {True: " WHERE user_id IS NULL", False: " WHERE user_id = %s"}
"""Keyed by "the user is None": `= NULL` matches nothing, and `IS NOT DISTINCT FROM` uses no index."""

_JSON_TYPES = {"number": "number", "bool": "boolean", "str": "string", "bytes": "string"}
_SQL_TYPES = {"number": "numeric", "bool": "boolean", "str": 'text COLLATE "C"', "bytes": 'text COLLATE "C"'}

_MESSAGES_SQL = """
WITH dated AS (
    SELECT listed.position,
           coalesce(
               mm.created_at,
               1000 * (
                   SELECT coalesce(m.created_at, (
                       SELECT mt.created_at FROM message_times mt WHERE mt.thread_key = m.thread_key
                       AND mt.message_no <= m.message_no ORDER BY mt.message_no DESC LIMIT 1
                   ))
                   FROM messages m WHERE m.thread_key = %s AND m.message_no = listed.message_no
               ),
               %s
           ) AS created_at,
           coalesce(mm.metadata, '{}'::jsonb) AS metadata
    FROM unnest(%s::integer[], %s::integer[], %s::text[]) AS listed (position, message_no, message_id)
    LEFT JOIN message_metadata mm ON mm.thread_key = %s AND mm.message_id = listed.message_id
)
SELECT position, created_at, metadata::text FROM dated WHERE """
"""One row per listed message, dated by `message_metadata` (given), else `messages.created_at`
(for a message stored before migration m009, `message_times`), else the fallback; the WHERE
clause is built from constants and the compiled filter."""

_DIRECTIONS = {"asc": ("ASC", ">"), "desc": ("DESC", "<")}


class JsonbFilter(md.FilterCompiler):
    """`checkpointers.metadata` filters in PostgreSQL's `jsonb` operators (keys and operands
    are parameters)."""

    TRUE, FALSE = "true", "false"

    def present(self, key: str) -> str:
        self.params.append(key)
        return f"({self.column} -> %s) IS NOT NULL"

    def _value(self, key: str, kind: str) -> str:
        """(the value's jsonb, from which the kind and the text are read); its params appended."""
        if kind == "bytes":
            self.params += [key, md.BYTES_TAG]
            return f"({self.column} -> %s -> %s)"
        self.params.append(key)
        return f"({self.column} -> %s)"

    def _typed(self, key: str, kind: str) -> tuple[str, str]:
        """(the test that the key holds a value of `kind`, the value as its SQL type): the
        cast sits inside a CASE on that test, so no other kind is ever cast."""
        guard = f"jsonb_typeof({self._value(key, kind)}) = '{_JSON_TYPES[kind]}'"
        value = f"({self._value(key, kind)} #>> '{{}}')::{_SQL_TYPES[kind].split()[0]}"
        if kind in ("str", "bytes"):
            value += ' COLLATE "C"'
        return guard, value

    @staticmethod
    def _operand(value: Any, kind: str) -> Any:
        if kind == "bytes":
            return bytes(value).hex()
        if kind == "number":
            return json.dumps(value)  # as stored: the shortest exact text, read as numeric
        return value

    def compare(self, key: str, kind: str, sql_op: str, value: Any) -> str:
        guard, extract = self._typed(key, kind)
        self.params.append(self._operand(value, kind))
        return f"(CASE WHEN {guard} THEN {extract} {sql_op} %s::{_SQL_TYPES[kind]} ELSE false END)"

    def member(self, key: str, kind: str, values: list[Any]) -> str:
        guard, extract = self._typed(key, kind)
        self.params.append([self._operand(v, kind) for v in values])
        array = _SQL_TYPES[kind].split()[0] + "[]"
        return f"(CASE WHEN {guard} THEN {extract} = ANY(%s::{array}) ELSE false END)"


class PostgresSessions(PostgresRunner):
    """`SessionEngine` on a PostgreSQL saver: plans run by the saver's runners."""

    def seal_title(self, title: str | None, session_id: str) -> str | None:
        return encryption.seal_title(self._cipher(), title, session_id)

    def open_title(self, stored: str | None, session_id: str) -> str | None:
        return encryption.open_title(self._cipher(), stored, session_id)

    def session_row(self, session_id: str) -> Plan[tuple | None]:
        return (yield Sql(f"SELECT {_COLUMNS} FROM threads WHERE thread_id = %s", (session_id,), FETCH_ONE))

    def owner_and_metadata(self, session_id: str) -> Plan[tuple | None]:
        return (
            yield Sql("SELECT user_id, metadata::text FROM threads WHERE thread_id = %s FOR UPDATE", (session_id,), FETCH_ONE)
        )

    def insert_session(self, session_id: str, owner: str | None, title: str | None, now: str, stored: str) -> Plan[bool]:
        inserted = yield Sql(
            "INSERT INTO threads (thread_id, user_id, title, created_at, updated_at, metadata) "
            "VALUES (%s, %s, %s, %s, %s, %s::jsonb) ON CONFLICT (thread_id) DO NOTHING",
            (session_id, owner, title, now, now, stored),
            FETCH_NONE,
        )
        if not inserted:
            return False
        yield from self._check_key(title)
        yield from neutral(lambda conn: stats.thread_created(conn, owner))  # usage statistics
        return True

    def update_session(self, session_id: str, stored: str, title: str | None, now: str) -> Plan[None]:
        yield Sql(
            "UPDATE threads SET metadata = %s::jsonb, title = coalesce(%s, title), updated_at = %s WHERE thread_id = %s",
            (stored, title, now, session_id),
            FETCH_NONE,
        )
        yield from self._check_key(title)

    def _check_key(self, title: str | None) -> Plan[None]:
        """A sealed title is written only with the store's key, and not during a rotation
        (`keys.check_writable`; after the statement that locked the row)."""
        if title is not None:
            yield from keys.check_writable(self._cipher(), self._where)

    def _sessions_sql(self, user_id, updated_before, metadata_filter, after, limit) -> tuple[str, list[Any]]:
        sql = f"SELECT {_COLUMNS} FROM threads" + _OWNED_BY[user_id is None]
        params: list[Any] = [] if user_id is None else [user_id]
        if updated_before is not None:
            sql += " AND updated_at < %s"
            params.append(updated_before)
        if after is not None:
            sql += " AND (updated_at, thread_id) < (%s, %s)"
            params.extend(after)
        if metadata_filter is not None:
            clause, extra = md.compile_filter(metadata_filter, "metadata", JsonbFilter)
            sql += f" AND {clause}"
            params.extend(extra)
        return sql + " ORDER BY updated_at DESC, thread_id DESC LIMIT %s", [*params, limit]

    def sessions(self, user_id, *, updated_before, metadata_filter, after, limit) -> Plan[list[tuple]]:
        return (yield Sql(*self._sessions_sql(user_id, updated_before, metadata_filter, after, limit)))

    def explain_sessions(self, user_id, *, updated_before, metadata_filter, limit) -> Plan[list[str]]:
        sql, params = self._sessions_sql(user_id, updated_before, metadata_filter, None, limit)
        return [r[0] for r in (yield Sql("EXPLAIN " + sql, params))]

    def dated(self, thread_key: int, fallback: int, listed: list[tuple], query: MessageQuery) -> Plan[list[tuple]]:
        order, compare = _DIRECTIONS[query.order]
        positions, numbers, ids = ([list(c) for c in zip(*listed)] if listed else [[], [], []])
        params: list[Any] = [thread_key, fallback, positions, numbers, ids, thread_key]
        clauses = ["true"]
        if query.created_after is not None:
            clauses.append("created_at > %s")
            params.append(query.created_after)
        if query.created_before is not None:
            clauses.append("created_at < %s")
            params.append(query.created_before)
        if query.metadata_filter is not None:
            clause, extra = md.compile_filter(query.metadata_filter, "metadata", JsonbFilter)
            clauses.append(clause)
            params.extend(extra)
        if query.after is not None:
            clauses.append(f"(created_at, position) {compare} (%s, %s)")
            params.extend(query.after)
        sql = _MESSAGES_SQL + " AND ".join(clauses) + f" ORDER BY created_at {order}, position {order} LIMIT %s"
        return (yield Sql(sql, [*params, query.limit]))

    def message_metadata(self, thread_key: int, message_id: str) -> Plan[tuple | None]:
        return (
            yield Sql(
                "SELECT created_at, metadata::text FROM message_metadata WHERE thread_key = %s AND message_id = %s",
                (thread_key, message_id),
                FETCH_ONE,
            )
        )

    def put_message_metadata(self, thread_key: int, message_id: str, created: int | None, stored: str) -> Plan[None]:
        yield Sql(
            "INSERT INTO message_metadata (thread_key, message_id, created_at, metadata) VALUES (%s, %s, %s, %s::jsonb) "
            "ON CONFLICT (thread_key, message_id) DO UPDATE SET created_at = EXCLUDED.created_at, "
            "metadata = EXCLUDED.metadata",
            (thread_key, message_id, created, stored),
            FETCH_NONE,
        )

    def delete_message_metadata(self, thread_key: int, message_id: str) -> Plan[None]:
        yield Sql(
            "DELETE FROM message_metadata WHERE thread_key = %s AND message_id = %s", (thread_key, message_id), FETCH_NONE
        )

    def clear_title(self, thread_key: int) -> Plan[None]:
        yield Sql("UPDATE threads SET title = NULL WHERE thread_key = %s", (thread_key,), FETCH_NONE)
