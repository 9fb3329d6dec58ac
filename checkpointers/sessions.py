"""Sessions and their messages, queried the way agent-memory stores do (`saver.sessions`).

    sessions = saver.sessions
    s = sessions.put_session("alice", metadata={"topic": "billing", "priority": 2})
    sessions.put_message(s.session_id, HumanMessage("hi"), user_id="alice", metadata={"lang": "en"})
    sessions.list_recent_sessions("alice", max_count=20, metadata_filter={"priority": {"$gte": 2}})
    sessions.list_messages(s.session_id, user_id="alice", order="desc", max_count=10)

A session IS a thread: its row in the thread index is the session (id, owner,
title, created and updated times, metadata), and its messages ARE the
thread's messages as the chat graph and the web chat see them. Messages
written here become LangGraph checkpoints (`checkpointers.conversation`), and
a turn chatted through the graph shows up here, so both sides can be used on
the same session.

Ownership: every call names a `user_id`. A session of another user behaves
as one that does not exist: `get_session` and `get_message` return None,
`delete_session` returns False, everything else raises ThreadNotFoundError.
`ANY_USER` skips the check (operators and tests).

Metadata is typed (str, int, float, bool, bytes) and filters are dicts with
`$eq $ne $gt $gte $lt $lte $in $and $or $not`: see `checkpointers.metadata`.
Filters, time bounds, ordering and limits run in SQLite. Listing a user's
sessions walks the `threads_by_user_updated` index newest first and stops at
`max_count` matches.

Times are timezone-aware UTC datetimes; a naive datetime passed in is taken as
UTC. A session's `updated_at` moves when a message is written and when
`put_session`/`update_session` change it. A message's `created_at` is the
time given to `put_message`, else when the store first saved it, to the
millisecond (`message_times`, kept by a trigger, so turns chatted through the
graph are dated too); messages stored before that table existed are dated by
their thread's creation, and those of a `copy_thread` copy by the copy.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.messages import BaseMessage, RemoveMessage

from checkpointers import conversation, metadata as md, stats
from checkpointers.conversation import Conversation, as_message, from_micros, iso, to_micros
from checkpointers.errors import StoreError, ThreadNotFoundError
from checkpointers.metadata import MetadataFilter
from checkpointers.storable import check_id
from checkpointers.threads import ANY_USER, checked_user, clean_title
from checkpointers.messages import utc_now

if TYPE_CHECKING:
    from checkpointers.sqlite import ThreadSaver

MAX_COUNT = 10_000
"""The most a list call returns; iterate (`iter_recent_sessions`, `iter_messages`) for more."""

PAGE_SIZE = 500


class MessageNotFoundError(StoreError, KeyError):
    """No message with that id in the session."""

    def __init__(self, session_id: str, message_id: str) -> None:
        super().__init__(f"no message with id {message_id!r} in session {session_id!r}")
        self.session_id = session_id
        self.message_id = message_id

    def __str__(self) -> str:
        return self.args[0]


@dataclass(frozen=True)
class Session:
    """A session: one thread of the thread index."""

    session_id: str
    user_id: str | None
    title: str | None
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    message_count: int
    pinned: bool


@dataclass(frozen=True)
class SessionMessage:
    """One message of a session, with its creation time and metadata."""

    session_id: str
    message_id: str
    message: BaseMessage
    """Shared with the saver's cache: treat as immutable (copy with `model_copy`)."""
    created_at: datetime
    metadata: dict[str, Any]
    position: int
    """Its index in the conversation (0 is the first message)."""


_SESSION_COLUMNS = "thread_id, user_id, title, metadata, created_at, updated_at, message_count, pinned"




def _check_count(max_count: int | None) -> None:
    if max_count is not None and not 1 <= max_count <= MAX_COUNT:
        raise ValueError(f"max_count must be between 1 and {MAX_COUNT}, not {max_count}")


def _clean_title(title: str | None) -> str | None:
    return None if title is None else clean_title(title, "session")


def _sessions_sql(
    user_id: Any,
    *,
    updated_before: datetime | str | None,
    metadata_filter: MetadataFilter | None,
    after: tuple[str, str] | None,
    limit: int,
) -> tuple[str, list[Any]]:
    """The query behind the session listings: the user's index range, newest first."""
    sql = f"SELECT {_SESSION_COLUMNS} FROM threads WHERE user_id IS ?"
    params: list[Any] = [checked_user(user_id)]
    if updated_before is not None:
        sql += " AND updated_at < ?"
        params.append(iso(updated_before))
    if after is not None:
        sql += " AND (updated_at, thread_id) < (?, ?)"
        params.extend(after)
    if metadata_filter is not None:
        clause, extra = md.compile_filter(metadata_filter, "metadata")
        sql += f" AND {clause}"
        params.extend(extra)
    sql += " ORDER BY updated_at DESC, thread_id DESC LIMIT ?"
    params.append(limit)
    return sql, params


# One row per listed message: [position, message number, message id]. Times
# come from `message_metadata` (given), else `message_times` (the nearest row
# at or before the message's number, in milliseconds), else the thread's creation.
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


class SessionStore:
    """Sessions and messages of one saver (`saver.sessions`); see the module docstring."""

    def __init__(self, saver: ThreadSaver) -> None:
        self._saver = saver

    def _session(self, row: tuple) -> Session:
        """A row of `_SESSION_COLUMNS` as a Session (its title decrypted in an encrypted store)."""
        return Session(
            row[0], row[1], self._saver._open_title(row[2], row[0]), md.loads(row[3]),
            datetime.fromisoformat(row[4]), datetime.fromisoformat(row[5]), row[6], bool(row[7]),
        )

    # -- sessions -----------------------------------------------------------

    def put_session(
        self,
        user_id: str | None,
        session_id: str | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        title: str | None = None,
    ) -> Session:
        """Create a session (a new id unless one is given), or replace an existing
        session's metadata (and title, if given). Raises ThreadNotFoundError if the
        id belongs to another user's session."""
        session_id = check_id(session_id, "session id") if session_id is not None else str(uuid.uuid4())
        user_id = checked_user(user_id)
        stored = md.dumps(metadata)
        title = _clean_title(title)

        with self._saver._write():
            conn = self._saver.conn
            row = conn.execute("SELECT user_id FROM threads WHERE thread_id = ?", (session_id,)).fetchone()
            now = utc_now()
            if row is None:
                conn.execute(
                    "INSERT INTO threads (thread_id, user_id, title, created_at, updated_at, metadata) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        session_id, None if user_id is ANY_USER else user_id, self._saver._seal_title(title, session_id),
                        now, now, stored,
                    ),
                )
                stats.thread_created(conn, None if user_id is ANY_USER else user_id)  # usage statistics
            elif user_id is not ANY_USER and row[0] != user_id:
                raise ThreadNotFoundError(session_id)
            else:
                conn.execute(
                    "UPDATE threads SET metadata = ?, title = coalesce(?, title), updated_at = ? WHERE thread_id = ?",
                    (stored, self._saver._seal_title(title, session_id), now, session_id),
                )
        return self._get(session_id)

    def update_session(
        self,
        session_id: str,
        *,
        user_id: str | None,
        metadata: Mapping[str, Any] | None = None,
        title: str | None = None,
    ) -> Session:
        """Merge `metadata` into the session's (a key set to None is removed) and
        set the title if given. Raises ThreadNotFoundError for an unknown session."""
        session_id = check_id(session_id, "session id")
        changes = dict(metadata or {})
        removed = [k for k, v in changes.items() if v is None]
        md.encode({k: v for k, v in changes.items() if v is not None})  # one clear error before writing
        title = _clean_title(title)

        with self._saver._write():
            conn = self._saver.conn
            row = conn.execute("SELECT user_id, metadata FROM threads WHERE thread_id = ?", (session_id,)).fetchone()
            if row is None or (user_id is not ANY_USER and row[0] != user_id):
                raise ThreadNotFoundError(session_id)
            merged = md.loads(row[1])
            merged.update({k: v for k, v in changes.items() if v is not None})
            for key in removed:
                merged.pop(key, None)
            conn.execute(
                "UPDATE threads SET metadata = ?, title = coalesce(?, title), updated_at = ? WHERE thread_id = ?",
                (md.dumps(merged), self._saver._seal_title(title, session_id), utc_now(), session_id),
            )
        return self._get(session_id)

    def get_session(self, session_id: str, *, user_id: str | None) -> Session | None:
        """The session, or None if there is none with that id for this user."""
        session = self._get(check_id(session_id, "session id"))
        if session is None or (user_id is not ANY_USER and session.user_id != user_id):
            return None
        return session

    def _get(self, session_id: str) -> Session | None:
        with self._saver._read() as conn:
            row = conn.execute(f"SELECT {_SESSION_COLUMNS} FROM threads WHERE thread_id = ?", (session_id,)).fetchone()
        return self._session(row) if row else None

    def delete_session(self, session_id: str, *, user_id: str | None) -> bool:
        """Delete the session and everything of it (messages, history, attachment).
        False if there was no such session for this user."""
        session_id = check_id(session_id, "session id")
        with self._saver._lock:
            exists, owner = conversation.owner_of(self._saver, session_id)
            if not exists or (user_id is not ANY_USER and owner != user_id):
                return False
            return self._saver.delete_threads([session_id]) == 1

    def list_recent_sessions(
        self,
        user_id: str | None,
        *,
        max_count: int = 20,
        updated_before: datetime | str | None = None,
        metadata_filter: MetadataFilter | None = None,
    ) -> list[Session]:
        """The user's sessions, most recently updated first: at most `max_count`,
        only those updated strictly before `updated_before`, only those whose
        metadata matches `metadata_filter`."""
        _check_count(max_count)
        sql, params = _sessions_sql(
            user_id, updated_before=updated_before, metadata_filter=metadata_filter, after=None, limit=max_count
        )
        with self._saver._read() as conn:
            return [self._session(r) for r in conn.execute(sql, params).fetchall()]

    def iter_recent_sessions(
        self,
        user_id: str | None,
        *,
        updated_before: datetime | str | None = None,
        metadata_filter: MetadataFilter | None = None,
        page_size: int = PAGE_SIZE,
    ) -> Iterator[Session]:
        """Every matching session, newest first, read `page_size` at a time.

        No transaction is held between pages. A session is never yielded twice;
        one updated during the iteration moves to the front and may be missed.
        """
        _check_count(page_size)
        after = None
        while True:
            page, after = self._sessions_page(user_id, updated_before, metadata_filter, after, page_size)
            yield from page
            if len(page) < page_size:
                return

    def _sessions_page(
        self, user_id, updated_before, metadata_filter, after, limit
    ) -> tuple[list[Session], tuple[str, str] | None]:
        """A page of sessions and the cursor (updated_at, id as stored) after it."""
        sql, params = _sessions_sql(
            user_id, updated_before=updated_before, metadata_filter=metadata_filter, after=after, limit=limit
        )
        with self._saver._read() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [self._session(r) for r in rows], ((rows[-1][5], rows[-1][0]) if rows else None)

    def explain_recent_sessions(self, user_id: str | None, **kwargs: Any) -> list[str]:
        """SQLite's query plan for `list_recent_sessions(user_id, **kwargs)`."""
        sql, params = _sessions_sql(
            user_id,
            updated_before=kwargs.get("updated_before"),
            metadata_filter=kwargs.get("metadata_filter"),
            after=None,
            limit=kwargs.get("max_count", 20),
        )
        with self._saver._read() as conn:
            return [r[-1] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()]

    # -- messages -----------------------------------------------------------

    def _conversation(self, session_id: str, user_id: Any) -> Conversation:
        found = conversation.load(self._saver, session_id, user_id)
        if found is None:
            raise ThreadNotFoundError(session_id)
        return found

    def _dated(
        self,
        conv: Conversation,
        positions: list[int],
        *,
        where: str = "1",
        params: dict[str, Any] | None = None,
        order: str = "ASC",
        limit: int = -1,
    ) -> list[tuple[int, int, str]]:
        """(position, created_at in microseconds, metadata JSON) of the listed messages that pass `where`."""
        numbers = conv.numbers
        listed = [
            [p, numbers[p] if numbers else None, conv.messages[p].id] for p in positions
        ]
        sql = _MESSAGES_SQL.replace("<where>", where).replace("<order>", order)
        with self._saver._read() as conn:
            return conn.execute(
                sql,
                {
                    "listed": _json(listed),
                    "thread_key": conv.thread_key,
                    "fallback": to_micros(conv.created_at),
                    "limit": limit,
                    **(params or {}),
                },
            ).fetchall()

    def _record(self, session_id: str, conv: Conversation, row: tuple[int, int, str]) -> SessionMessage:
        position, created, metadata = row
        message = conv.messages[position]
        return SessionMessage(session_id, message.id, message, from_micros(created), md.loads(metadata), position)

    def list_messages(
        self,
        session_id: str,
        *,
        user_id: str | None,
        max_count: int | None = None,
        order: Literal["asc", "desc"] = "asc",
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        metadata_filter: MetadataFilter | None = None,
    ) -> list[SessionMessage]:
        """The session's messages ordered by creation time (then conversation order),
        oldest first (`order="asc"`) or newest first; the first `max_count` of them;
        only those created strictly after `created_after` and strictly before
        `created_before`, and whose metadata matches `metadata_filter`."""
        _check_count(max_count)
        return list(
            self._messages(
                session_id, user_id, max_count, order, created_after, created_before, metadata_filter, page_size=None
            )
        )

    def iter_messages(
        self,
        session_id: str,
        *,
        user_id: str | None,
        order: Literal["asc", "desc"] = "asc",
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        metadata_filter: MetadataFilter | None = None,
        page_size: int = PAGE_SIZE,
    ) -> Iterator[SessionMessage]:
        """Like `list_messages` without a limit, read `page_size` at a time, over the
        conversation as it was when the iteration started."""
        _check_count(page_size)
        return self._messages(
            session_id, user_id, None, order, created_after, created_before, metadata_filter, page_size=page_size
        )

    def _messages(
        self, session_id, user_id, max_count, order, created_after, created_before, metadata_filter, *, page_size
    ) -> Iterator[SessionMessage]:
        if order not in ("asc", "desc"):
            raise ValueError(f"order must be 'asc' or 'desc', not {order!r}")
        session_id = check_id(session_id, "session id")
        where, params = self._message_where(created_after, created_before, metadata_filter)
        conv = self._conversation(session_id, user_id)
        positions = list(range(len(conv.messages)))
        direction = order.upper()

        def run() -> Iterator[SessionMessage]:
            if page_size is None:
                rows = self._dated(conv, positions, where=where, params=params, order=direction,
                                   limit=max_count if max_count is not None else -1)
                for row in rows:
                    yield self._record(session_id, conv, row)
                return
            cursor: tuple[int, int] | None = None
            compare = ">" if direction == "ASC" else "<"
            while True:
                page_where, page_params = where, dict(params)
                if cursor is not None:
                    page_where += f" AND (created_at, position) {compare} (:after_created, :after_position)"
                    page_params.update(after_created=cursor[0], after_position=cursor[1])
                rows = self._dated(conv, positions, where=page_where, params=page_params, order=direction, limit=page_size)
                for row in rows:
                    yield self._record(session_id, conv, row)
                if len(rows) < page_size:
                    return
                cursor = (rows[-1][1], rows[-1][0])

        return run()

    @staticmethod
    def _message_where(created_after, created_before, metadata_filter) -> tuple[str, dict[str, Any]]:
        clauses, params = ["1"], {}
        if created_after is not None:
            clauses.append("created_at > :created_after")
            params["created_after"] = to_micros(created_after)
        if created_before is not None:
            clauses.append("created_at < :created_before")
            params["created_before"] = to_micros(created_before)
        if metadata_filter is not None:
            clause, positional = md.compile_filter(metadata_filter, "metadata")
            # The compiler emits `?`; this statement uses named parameters.
            for i, value in enumerate(positional):
                clause = clause.replace("?", f":f{i}", 1)
                params[f"f{i}"] = value
            clauses.append(clause)
        return " AND ".join(clauses), params

    def get_message(self, session_id: str, message_id: str, *, user_id: str | None) -> SessionMessage | None:
        """The message, or None if the session has no message with that id.
        Raises ThreadNotFoundError for an unknown session."""
        session_id = check_id(session_id, "session id")
        conv = self._conversation(session_id, user_id)
        position = _position(conv, message_id)
        if position is None:
            return None
        return self._record(session_id, conv, self._dated(conv, [position])[0])

    def put_message(
        self,
        session_id: str,
        message: BaseMessage | Mapping[str, Any] | tuple | str,
        *,
        user_id: str | None,
        metadata: Mapping[str, Any] | None = None,
        created_at: datetime | str | None = None,
    ) -> SessionMessage:
        """Add a message at the end of the session; one whose id the session already
        has replaces that message in place (keeping its creation time unless
        `created_at` is given). The message is any `langchain_core` message, a
        `messages_to_dict` dict, a role dict or a (role, text) pair; one without an
        id gets a new one. Raises ThreadNotFoundError for an unknown session."""
        session_id = check_id(session_id, "session id")
        message = as_message(message)
        if isinstance(message, RemoveMessage):
            raise ValueError("put_message takes a message to store; use delete_message to remove one")
        if message.id is None:
            message = message.model_copy(update={"id": str(uuid.uuid4())})
        stored = md.dumps(metadata)
        created = None if created_at is None else to_micros(created_at)
        with self._saver._lock:
            conv = self._conversation(session_id, user_id)
            position = _position(conv, message.id)
            if created is None and position is not None:
                created = self._dated(conv, [position])[0][1]
            self._write_message(session_id, conv, message, user_id, created, stored)
        return self.get_message(session_id, message.id, user_id=user_id)

    def update_message(
        self,
        session_id: str,
        message_id: str,
        *,
        user_id: str | None,
        message: BaseMessage | Mapping[str, Any] | str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> SessionMessage:
        """Replace the message's content (`message`: new text, or a whole message,
        which keeps this id) and/or merge `metadata` into its metadata (a key set
        to None is removed). Its position and creation time stay. Raises
        ThreadNotFoundError or MessageNotFoundError."""
        session_id, message_id = check_id(session_id, "session id"), check_id(message_id, "message id")
        changes = dict(metadata or {})
        md.encode({k: v for k, v in changes.items() if v is not None})
        with self._saver._lock:
            conv = self._conversation(session_id, user_id)
            position = _position(conv, message_id)
            if position is None:
                raise MessageNotFoundError(session_id, message_id)
            _, created, stored = self._dated(conv, [position])[0]
            merged = md.loads(stored)
            merged.update({k: v for k, v in changes.items() if v is not None})
            for key in [k for k, v in changes.items() if v is None]:
                merged.pop(key, None)
            if message is None:
                replacement = None
            elif isinstance(message, str):
                replacement = conv.messages[position].model_copy(update={"content": message})
            else:
                replacement = as_message(message).model_copy(update={"id": message_id})
            self._write_message(session_id, conv, replacement, user_id, created, md.dumps(merged))
        return self.get_message(session_id, message_id, user_id=user_id)

    def _write_message(
        self, session_id: str, conv: Conversation, message: BaseMessage | None, user_id: Any,
        created: int | None, stored_metadata: str, *, message_id: str | None = None,
    ) -> None:
        """Write the message's row in `message_metadata` (if it needs one), then its checkpoint.

        The row goes first and is put back if the checkpoint fails, so a message
        is never visible without its metadata.
        """
        message_id = message.id if message is not None else message_id
        conn = self._saver.conn
        needs_row = created is not None or stored_metadata != "{}"
        with self._saver._write():
            before = conn.execute(
                "SELECT created_at, metadata FROM message_metadata WHERE thread_key = ? AND message_id = ?",
                (conv.thread_key, message_id),
            ).fetchone()
            if needs_row:
                conn.execute(
                    "INSERT OR REPLACE INTO message_metadata (thread_key, message_id, created_at, metadata) "
                    "VALUES (?, ?, ?, ?)",
                    (conv.thread_key, message_id, created, stored_metadata),
                )
            else:
                conn.execute(
                    "DELETE FROM message_metadata WHERE thread_key = ? AND message_id = ?", (conv.thread_key, message_id)
                )
        if message is None:
            return
        try:
            conversation.write(self._saver, session_id, [message], user_id=user_id, create=False)
        except BaseException:
            with self._saver._write():
                if before is None:
                    conn.execute(
                        "DELETE FROM message_metadata WHERE thread_key = ? AND message_id = ?",
                        (conv.thread_key, message_id),
                    )
                else:
                    conn.execute(
                        "INSERT OR REPLACE INTO message_metadata (thread_key, message_id, created_at, metadata) "
                        "VALUES (?, ?, ?, ?)",
                        (conv.thread_key, message_id, *before),
                    )
            raise

    def delete_message(self, session_id: str, message_id: str, *, user_id: str | None) -> bool:
        """Remove the message from the session and erase it: the session's older
        checkpoints, which still hold it, are compacted away (`prune`
        "keep_latest"), so time travel on this thread starts again from here.
        False if the session has no such message; ThreadNotFoundError for an
        unknown session."""
        session_id, message_id = check_id(session_id, "session id"), check_id(message_id, "message id")
        with self._saver._lock:
            conv = self._conversation(session_id, user_id)
            if _position(conv, message_id) is None:
                return False
            conversation.write(self._saver, session_id, [RemoveMessage(id=message_id)], user_id=user_id, create=False)
            with self._saver._write():
                self._saver.conn.execute(
                    "DELETE FROM message_metadata WHERE thread_key = ? AND message_id = ?", (conv.thread_key, message_id)
                )
            self._saver.prune([session_id], strategy="keep_latest")
        return True

    def delete_messages(self, session_id: str, *, user_id: str | None) -> int:
        """Erase every message of the session and its history (checkpoints); the
        session stays, with its metadata, pin and attachment. Its title, usually
        the start of the first message, is cleared; the next message sets a new
        one. Returns how many messages there were."""
        session_id = check_id(session_id, "session id")
        with self._saver._lock:
            conv = self._conversation(session_id, user_id)
            self._saver.prune([session_id], strategy="delete")
            with self._saver._write():
                self._saver.conn.execute("UPDATE threads SET title = NULL WHERE thread_key = ?", (conv.thread_key,))
        return len(conv.messages)

    # -- async twins ----------------------------------------------------------

    async def aput_session(self, user_id: str | None, session_id: str | None = None, **kwargs: Any) -> Session:
        return await asyncio.to_thread(lambda: self.put_session(user_id, session_id, **kwargs))

    async def aupdate_session(self, session_id: str, **kwargs: Any) -> Session:
        return await asyncio.to_thread(lambda: self.update_session(session_id, **kwargs))

    async def aget_session(self, session_id: str, *, user_id: str | None) -> Session | None:
        return await asyncio.to_thread(lambda: self.get_session(session_id, user_id=user_id))

    async def adelete_session(self, session_id: str, *, user_id: str | None) -> bool:
        return await asyncio.to_thread(lambda: self.delete_session(session_id, user_id=user_id))

    async def alist_recent_sessions(self, user_id: str | None, **kwargs: Any) -> list[Session]:
        return await asyncio.to_thread(lambda: self.list_recent_sessions(user_id, **kwargs))

    async def aiter_recent_sessions(
        self,
        user_id: str | None,
        *,
        updated_before: datetime | str | None = None,
        metadata_filter: MetadataFilter | None = None,
        page_size: int = PAGE_SIZE,
    ) -> AsyncIterator[Session]:
        _check_count(page_size)
        after = None
        while True:
            page, after = await asyncio.to_thread(
                self._sessions_page, user_id, updated_before, metadata_filter, after, page_size
            )
            for session in page:
                yield session
            if len(page) < page_size:
                return

    async def aput_message(self, session_id: str, message: Any, **kwargs: Any) -> SessionMessage:
        return await asyncio.to_thread(lambda: self.put_message(session_id, message, **kwargs))

    async def aupdate_message(self, session_id: str, message_id: str, **kwargs: Any) -> SessionMessage:
        return await asyncio.to_thread(lambda: self.update_message(session_id, message_id, **kwargs))

    async def aget_message(self, session_id: str, message_id: str, *, user_id: str | None) -> SessionMessage | None:
        return await asyncio.to_thread(lambda: self.get_message(session_id, message_id, user_id=user_id))

    async def adelete_message(self, session_id: str, message_id: str, *, user_id: str | None) -> bool:
        return await asyncio.to_thread(lambda: self.delete_message(session_id, message_id, user_id=user_id))

    async def alist_messages(self, session_id: str, **kwargs: Any) -> list[SessionMessage]:
        return await asyncio.to_thread(lambda: self.list_messages(session_id, **kwargs))

    async def aiter_messages(self, session_id: str, *, page_size: int = PAGE_SIZE, **kwargs: Any) -> AsyncIterator[SessionMessage]:
        iterator = await asyncio.to_thread(lambda: self.iter_messages(session_id, page_size=page_size, **kwargs))
        done = object()
        while True:
            item = await asyncio.to_thread(next, iterator, done)
            if item is done:
                return
            yield item

    async def adelete_messages(self, session_id: str, *, user_id: str | None) -> int:
        return await asyncio.to_thread(lambda: self.delete_messages(session_id, user_id=user_id))


def _position(conv: Conversation, message_id: str) -> int | None:
    for position, message in enumerate(conv.messages):
        if message.id == message_id:
            return position
    return None


def _json(value: Any) -> str:
    import json

    return json.dumps(value, separators=(",", ":"))
