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
Filters, time bounds, ordering and limits run in the database, as parameterised
SQL. Listing a user's sessions walks the `threads_by_user_updated` index newest
first and stops at `max_count` matches.

One model, two engines: this module holds everything a caller relies on
(validation, ownership, the Session and SessionMessage it returns, cursors), and
asks the engine for SQL through `SessionEngine` (`checkpointers.engines.sqlite.sessions`,
`checkpointers.engines.postgres.sessions`). Calls are written once as plans and
steps (`checkpointers.engines.base`): on PostgreSQL the async twins are native
asyncio; on SQLite they run the sync call on a worker thread.

Times are timezone-aware UTC datetimes; a naive datetime passed in is taken as
UTC. A session's `updated_at` moves when a message is written and when
`put_session`/`update_session` change it. A message's `created_at` is the
time given to `put_message`, else when the store first saved it, to the
millisecond (`message_times`, kept by a trigger, so turns chatted through the
graph are dated too); messages stored before that table existed are dated by
their thread's creation; a `copy_thread` copy keeps its source's times.

A call that reads and then writes (`put_message`, `delete_message`...) holds the
SQLite saver's lock throughout, so calls of one process never interleave. Calls
of different processes, and on PostgreSQL any two, can: each writes a checkpoint
extending the newest one it read, and of two that extend the same one the later
wins (see `checkpointers.conversation`), as with a LangGraph graph.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from langchain_core.messages import BaseMessage, RemoveMessage

from checkpointers import conversation, metadata as md
from checkpointers.conversation import Conversation, as_message, from_micros, iso, to_micros
from checkpointers.engines.base import Call, Plan, PlanRunner, Read, Steps, Write, adrive, drive
from checkpointers.errors import StoreError, ThreadNotFoundError
from checkpointers.metadata import MetadataFilter
from checkpointers.messages import utc_now
from checkpointers.storable import check_id
from checkpointers.threads import ANY_USER, checked_user, clean_title

if TYPE_CHECKING:
    from checkpointers.engines.sqlite.saver import ThreadSaver

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



def _check_count(max_count: int | None) -> None:
    if max_count is not None and not 1 <= max_count <= MAX_COUNT:
        raise ValueError(f"max_count must be between 1 and {MAX_COUNT}, not {max_count}")


def _clean_title(title: str | None) -> str | None:
    return None if title is None else clean_title(title, "session")


@dataclass(frozen=True)
class MessageQuery:
    """Which of a conversation's messages a listing wants, in which order, how many."""

    order: Literal["asc", "desc"] = "asc"
    created_after: int | None = None
    """Microseconds since the epoch, exclusive (as every time bound here)."""
    created_before: int | None = None
    metadata_filter: MetadataFilter | None = None
    after: tuple[int, int] | None = None
    """A page's cursor: (created_at, position) of the last message of the previous page."""
    limit: int | None = None


class SessionEngine(PlanRunner, Protocol):
    """The SQL `SessionStore` asks of an engine; each method but the title ones is a plan
    fragment, run inside the transaction of the plan that uses it.

    A session row is `(thread_id, user_id, title as stored, metadata JSON text,
    created_at, updated_at, message_count, pinned)`; a dated message row is
    `(position, created_at in microseconds, metadata JSON text)`."""

    def seal_title(self, title: str | None, session_id: str) -> str | None:
        """The title as the engine stores it (sealed to the session in an encrypted store, either engine)."""

    def open_title(self, stored: str | None, session_id: str) -> str | None: ...

    def session_row(self, session_id: str) -> Plan[tuple | None]: ...

    def owner_and_metadata(self, session_id: str) -> Plan[tuple | None]:
        """(user_id, metadata JSON) of the session, locked against other writers until commit."""

    def insert_session(self, session_id: str, owner: str | None, title: str | None, now: str, stored: str) -> Plan[bool]:
        """Insert the session's row unless a row of that id exists (another process made it since
        `owner_and_metadata` looked); whether it did."""

    def update_session(self, session_id: str, stored: str, title: str | None, now: str) -> Plan[None]:
        """Replace metadata, set the title unless None, and set updated_at."""

    def sessions(
        self, user_id: str | None, *, updated_before: str | None, metadata_filter: MetadataFilter | None,
        after: tuple[str, str] | None, limit: int,
    ) -> Plan[list[tuple]]:
        """The user's session rows newest first (by updated_at, then id), before `after`."""

    def explain_sessions(
        self, user_id: str | None, *, updated_before: str | None, metadata_filter: MetadataFilter | None, limit: int
    ) -> Plan[list[str]]: ...

    def dated(self, thread_key: int, fallback: int, listed: list[tuple], query: MessageQuery) -> Plan[list[tuple]]:
        """The dated rows of `listed` messages ((position, message number or None, id))
        that pass `query`, ordered by (created_at, position); `fallback` dates a message
        with no recorded time."""

    def message_metadata(self, thread_key: int, message_id: str) -> Plan[tuple | None]:
        """(created_at, metadata JSON) recorded for the message, if any."""

    def put_message_metadata(self, thread_key: int, message_id: str, created: int | None, stored: str) -> Plan[None]: ...

    def delete_message_metadata(self, thread_key: int, message_id: str) -> Plan[None]: ...

    def clear_title(self, thread_key: int) -> Plan[None]: ...


class SessionStore:
    """Sessions and messages of one saver (`saver.sessions`); see the module docstring."""

    def __init__(self, saver: ThreadSaver, engine: SessionEngine) -> None:
        self._saver = saver
        self._engine = engine

    def _session(self, row: tuple) -> Session:
        """A session row (see `SessionEngine`) as a Session."""
        return Session(
            row[0], row[1], self._engine.open_title(row[2], row[0]), md.loads(row[3]),
            datetime.fromisoformat(row[4]), datetime.fromisoformat(row[5]), row[6], bool(row[7]),
        )

    def _run(self, plan: Plan[Any], *, write: bool = False) -> Any:
        return self._engine.run(plan, write=write)

    async def _arun(self, plan: Plan[Any], *, write: bool = False) -> Any:
        return await self._engine.arun(plan, write=write)

    # -- sessions: plans ------------------------------------------------------

    def _put_session(
        self, user_id: Any, session_id: str | None = None, *, metadata: Any = None, title: str | None = None
    ) -> Plan[Session]:
        session_id = check_id(session_id, "session id") if session_id is not None else str(uuid.uuid4())
        user_id = checked_user(user_id)
        stored = md.dumps(metadata)
        sealed = self._engine.seal_title(_clean_title(title), session_id)
        found = yield from self._engine.owner_and_metadata(session_id)
        now = utc_now()
        if found is None:
            owner = None if user_id is ANY_USER else user_id
            if (yield from self._engine.insert_session(session_id, owner, sealed, now, stored)):
                return self._session((yield from self._engine.session_row(session_id)))
            found = yield from self._engine.owner_and_metadata(session_id)  # another process made it since we looked
        if found is None or (user_id is not ANY_USER and found[0] != user_id):
            raise ThreadNotFoundError(session_id)
        yield from self._engine.update_session(session_id, stored, sealed, now)
        return self._session((yield from self._engine.session_row(session_id)))

    def _update_session(
        self, session_id: str, *, user_id: Any, metadata: Any = None, title: str | None = None
    ) -> Plan[Session]:
        session_id = check_id(session_id, "session id")
        changes = dict(metadata or {})
        md.encode({k: v for k, v in changes.items() if v is not None})  # one clear error before writing
        sealed = self._engine.seal_title(_clean_title(title), session_id)
        found = yield from self._engine.owner_and_metadata(session_id)
        if found is None or (user_id is not ANY_USER and found[0] != user_id):
            raise ThreadNotFoundError(session_id)
        yield from self._engine.update_session(session_id, md.dumps(_merged(md.loads(found[1]), changes)), sealed, utc_now())
        return self._session((yield from self._engine.session_row(session_id)))

    def _get_session(self, session_id: str, user_id: Any) -> Plan[Session | None]:
        row = yield from self._engine.session_row(check_id(session_id, "session id"))
        if row is None or (user_id is not ANY_USER and row[1] != user_id):
            return None
        return self._session(row)

    def _delete_session(self, session_id: str, user_id: Any) -> Steps[bool]:
        session_id = check_id(session_id, "session id")
        row = yield Read(self._engine.session_row(session_id))
        if row is None or (user_id is not ANY_USER and row[1] != user_id):
            return False
        deleted = yield Call(
            lambda: self._saver.delete_threads([session_id]), lambda: self._saver.adelete_threads([session_id])
        )
        return deleted == 1

    def _sessions_page(
        self, user_id: Any, updated_before: Any, metadata_filter: Any, after: tuple[str, str] | None, limit: int
    ) -> Plan[tuple[list[Session], tuple[str, str] | None]]:
        """A page of sessions and the cursor (updated_at, id as stored) after it."""
        if user_id is ANY_USER:
            raise ValueError("sessions are listed one user at a time: give a user id, or None for those without one")
        rows = yield from self._engine.sessions(
            checked_user(user_id),
            updated_before=None if updated_before is None else iso(updated_before),
            metadata_filter=metadata_filter,
            after=after,
            limit=limit,
        )
        return [self._session(r) for r in rows], ((rows[-1][5], rows[-1][0]) if rows else None)

    # -- sessions: calls ------------------------------------------------------

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
        return self._run(self._put_session(user_id, session_id, metadata=metadata, title=title), write=True)

    async def aput_session(self, user_id: str | None, session_id: str | None = None, **kwargs: Any) -> Session:
        return await self._arun(self._put_session(user_id, session_id, **kwargs), write=True)

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
        return self._run(self._update_session(session_id, user_id=user_id, metadata=metadata, title=title), write=True)

    async def aupdate_session(self, session_id: str, **kwargs: Any) -> Session:
        return await self._arun(self._update_session(session_id, **kwargs), write=True)

    def get_session(self, session_id: str, *, user_id: str | None) -> Session | None:
        """The session, or None if there is none with that id for this user."""
        return self._run(self._get_session(session_id, user_id))

    async def aget_session(self, session_id: str, *, user_id: str | None) -> Session | None:
        return await self._arun(self._get_session(session_id, user_id))

    def delete_session(self, session_id: str, *, user_id: str | None) -> bool:
        """Delete the session and everything of it (messages, history, attachment).
        False if there was no such session for this user."""
        return drive(self._engine, self._delete_session(session_id, user_id))

    async def adelete_session(self, session_id: str, *, user_id: str | None) -> bool:
        return await adrive(self._engine, self._delete_session(session_id, user_id))

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
        return self._run(self._sessions_page(user_id, updated_before, metadata_filter, None, max_count))[0]

    async def alist_recent_sessions(self, user_id: str | None, *, max_count: int = 20, **kwargs: Any) -> list[Session]:
        _check_count(max_count)
        plan = self._sessions_page(user_id, kwargs.get("updated_before"), kwargs.get("metadata_filter"), None, max_count)
        return (await self._arun(plan))[0]

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
            page, after = self._run(self._sessions_page(user_id, updated_before, metadata_filter, after, page_size))
            yield from page
            if len(page) < page_size:
                return

    async def aiter_recent_sessions(
        self, user_id: str | None, *, page_size: int = PAGE_SIZE, **kwargs: Any
    ) -> AsyncIterator[Session]:
        _check_count(page_size)
        updated_before, metadata_filter = kwargs.get("updated_before"), kwargs.get("metadata_filter")
        after = None
        while True:
            page, after = await self._arun(self._sessions_page(user_id, updated_before, metadata_filter, after, page_size))
            for session in page:
                yield session
            if len(page) < page_size:
                return

    def explain_recent_sessions(self, user_id: str | None, **kwargs: Any) -> list[str]:
        """The engine's query plan for `list_recent_sessions(user_id, **kwargs)`."""
        updated_before = kwargs.get("updated_before")
        return self._run(
            self._engine.explain_sessions(
                checked_user(user_id),
                updated_before=None if updated_before is None else iso(updated_before),
                metadata_filter=kwargs.get("metadata_filter"),
                limit=kwargs.get("max_count", 20),
            )
        )

    # -- messages: steps ------------------------------------------------------

    def _conversation(self, session_id: str, user_id: Any) -> Steps[Conversation]:
        found = yield Call(
            lambda: self._saver.load_conversation(session_id, user_id),
            lambda: self._saver.aload_conversation(session_id, user_id),
        )
        if found is None:
            raise ThreadNotFoundError(session_id)
        return found

    def _dated(self, conv: Conversation, positions: list[int], query: MessageQuery = MessageQuery()) -> Read:
        """A step: (position, created_at in microseconds, metadata JSON) of the listed messages that pass `query`."""
        numbers = conv.numbers
        listed = [(p, numbers[p] if numbers else None, conv.messages[p].id) for p in positions]
        return Read(self._engine.dated(conv.thread_key, to_micros(conv.created_at), listed, query))

    def _record(self, session_id: str, conv: Conversation, row: tuple[int, int, str]) -> SessionMessage:
        position, created, metadata = row
        message = conv.messages[position]
        return SessionMessage(session_id, message.id, message, from_micros(created), md.loads(metadata), position)

    def _query(self, max_count, order, created_after, created_before, metadata_filter) -> MessageQuery:
        if order not in ("asc", "desc"):
            raise ValueError(f"order must be 'asc' or 'desc', not {order!r}")
        if metadata_filter is not None:
            md.compile_filter(metadata_filter, "metadata")  # one clear error before anything is read
        return MessageQuery(
            order,
            None if created_after is None else to_micros(created_after),
            None if created_before is None else to_micros(created_before),
            metadata_filter,
            None,
            max_count,
        )

    def _list_messages(
        self,
        session_id: str,
        *,
        user_id: Any,
        max_count: int | None = None,
        order: str = "asc",
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        metadata_filter: MetadataFilter | None = None,
    ) -> Steps[list[SessionMessage]]:
        _check_count(max_count)
        query = self._query(max_count, order, created_after, created_before, metadata_filter)
        session_id = check_id(session_id, "session id")
        conv = yield from self._conversation(session_id, user_id)
        rows = yield self._dated(conv, list(range(len(conv.messages))), query)
        return [self._record(session_id, conv, row) for row in rows]

    def _get_message(self, session_id: str, message_id: str, user_id: Any) -> Steps[SessionMessage | None]:
        session_id = check_id(session_id, "session id")
        conv = yield from self._conversation(session_id, user_id)
        position = _position(conv, message_id)
        if position is None:
            return None
        return self._record(session_id, conv, (yield self._dated(conv, [position]))[0])

    def _put_message(
        self, session_id: str, message: Any, *, user_id: Any, metadata: Any = None, created_at: Any = None
    ) -> Steps[SessionMessage]:
        session_id = check_id(session_id, "session id")
        message = as_message(message)
        if isinstance(message, RemoveMessage):
            raise ValueError("put_message takes a message to store; use delete_message to remove one")
        if message.id is None:
            message = message.model_copy(update={"id": str(uuid.uuid4())})
        stored = md.dumps(metadata)
        created = None if created_at is None else to_micros(created_at)
        conv = yield from self._conversation(session_id, user_id)
        position = _position(conv, message.id)
        if created is None and position is not None:
            created = (yield self._dated(conv, [position]))[0][1]
        yield from self._write_message(session_id, conv, message, message.id, user_id, created, stored)
        return (yield from self._get_message(session_id, message.id, user_id))

    def _update_message(
        self, session_id: str, message_id: str, *, user_id: Any, message: Any = None, metadata: Any = None
    ) -> Steps[SessionMessage]:
        session_id, message_id = check_id(session_id, "session id"), check_id(message_id, "message id")
        changes = dict(metadata or {})
        md.encode({k: v for k, v in changes.items() if v is not None})
        conv = yield from self._conversation(session_id, user_id)
        position = _position(conv, message_id)
        if position is None:
            raise MessageNotFoundError(session_id, message_id)
        _, created, stored = (yield self._dated(conv, [position]))[0]
        if message is None:
            replacement = None
        elif isinstance(message, str):
            replacement = conv.messages[position].model_copy(update={"content": message})
        else:
            replacement = as_message(message).model_copy(update={"id": message_id})
        merged = md.dumps(_merged(md.loads(stored), changes))
        yield from self._write_message(session_id, conv, replacement, message_id, user_id, created, merged)
        return (yield from self._get_message(session_id, message_id, user_id))

    def _set_message_metadata(self, thread_key: int, message_id: str, row: tuple | None) -> Plan[tuple | None]:
        """Record (created_at, metadata JSON) for the message, or drop its record (`row`
        None, or nothing worth a row); returns what was recorded before."""
        before = yield from self._engine.message_metadata(thread_key, message_id)
        if row is None or (row[0] is None and row[1] == "{}"):
            yield from self._engine.delete_message_metadata(thread_key, message_id)
        else:
            yield from self._engine.put_message_metadata(thread_key, message_id, *row)
        return before

    def _write_message(
        self, session_id: str, conv: Conversation, message: BaseMessage | None, message_id: str, user_id: Any,
        created: int | None, stored_metadata: str,
    ) -> Steps[None]:
        """Write the message's metadata record (if it needs one), then its checkpoint.

        The record goes first and is put back if the checkpoint fails, so a message
        is never visible without its metadata.
        """
        before = yield Write(self._set_message_metadata(conv.thread_key, message_id, (created, stored_metadata)))
        if message is None:
            return
        try:
            yield self._write_conversation(session_id, [message], user_id)
        except BaseException:
            yield Write(self._set_message_metadata(conv.thread_key, message_id, before))
            raise

    def _write_conversation(self, session_id: str, updates: list[BaseMessage], user_id: Any) -> Call:
        return Call(
            lambda: conversation.write(self._saver, session_id, updates, user_id=user_id, create=False),
            lambda: conversation.awrite(self._saver, session_id, updates, user_id=user_id, create=False),
        )

    def _delete_message(self, session_id: str, message_id: str, user_id: Any) -> Steps[bool]:
        session_id, message_id = check_id(session_id, "session id"), check_id(message_id, "message id")
        conv = yield from self._conversation(session_id, user_id)
        if _position(conv, message_id) is None:
            return False
        yield self._write_conversation(session_id, [RemoveMessage(id=message_id)], user_id)
        yield Write(self._set_message_metadata(conv.thread_key, message_id, None))
        yield self._prune(session_id, "keep_latest")
        return True

    def _prune(self, session_id: str, strategy: str) -> Call:
        return Call(
            lambda: self._saver.prune([session_id], strategy=strategy),
            lambda: self._saver.aprune([session_id], strategy=strategy),
        )

    def _delete_messages(self, session_id: str, user_id: Any) -> Steps[int]:
        session_id = check_id(session_id, "session id")
        conv = yield from self._conversation(session_id, user_id)
        yield self._prune(session_id, "delete")
        yield Write(self._engine.clear_title(conv.thread_key))
        return len(conv.messages)

    # -- messages: calls ------------------------------------------------------

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
        return drive(
            self._engine,
            self._list_messages(
                session_id, user_id=user_id, max_count=max_count, order=order, created_after=created_after,
                created_before=created_before, metadata_filter=metadata_filter,
            ),
        )

    async def alist_messages(self, session_id: str, **kwargs: Any) -> list[SessionMessage]:
        return await adrive(self._engine, self._list_messages(session_id, **kwargs))

    def _pages_start(
        self,
        session_id: str,
        *,
        user_id: Any,
        order: str = "asc",
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        metadata_filter: MetadataFilter | None = None,
        page_size: int = PAGE_SIZE,
    ) -> Steps[tuple[str, Conversation, MessageQuery]]:
        """What a paged listing starts from: the checked id, the conversation as it is now, the first page's query."""
        _check_count(page_size)
        query = self._query(page_size, order, created_after, created_before, metadata_filter)
        session_id = check_id(session_id, "session id")
        return session_id, (yield from self._conversation(session_id, user_id)), query

    def _page(self, conv: Conversation, query: MessageQuery) -> Plan[list[tuple]]:
        return self._dated(conv, list(range(len(conv.messages))), query).plan

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
        session_id, conv, query = drive(
            self._engine,
            self._pages_start(
                session_id, user_id=user_id, order=order, created_after=created_after, created_before=created_before,
                metadata_filter=metadata_filter, page_size=page_size,
            ),
        )

        def pages() -> Iterator[SessionMessage]:
            page = query
            while True:
                rows = self._engine.run(self._page(conv, page), write=False)
                yield from (self._record(session_id, conv, row) for row in rows)
                if len(rows) < page.limit:
                    return
                page = replace(page, after=(rows[-1][1], rows[-1][0]))

        return pages()

    async def aiter_messages(self, session_id: str, **kwargs: Any) -> AsyncIterator[SessionMessage]:
        session_id, conv, page = await adrive(self._engine, self._pages_start(session_id, **kwargs))
        while True:
            rows = await self._engine.arun(self._page(conv, page), write=False)
            for row in rows:
                yield self._record(session_id, conv, row)
            if len(rows) < page.limit:
                return
            page = replace(page, after=(rows[-1][1], rows[-1][0]))

    def get_message(self, session_id: str, message_id: str, *, user_id: str | None) -> SessionMessage | None:
        """The message, or None if the session has no message with that id.
        Raises ThreadNotFoundError for an unknown session."""
        return drive(self._engine, self._get_message(session_id, message_id, user_id))

    async def aget_message(self, session_id: str, message_id: str, *, user_id: str | None) -> SessionMessage | None:
        return await adrive(self._engine, self._get_message(session_id, message_id, user_id))

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
        return drive(
            self._engine, self._put_message(session_id, message, user_id=user_id, metadata=metadata, created_at=created_at)
        )

    async def aput_message(self, session_id: str, message: Any, **kwargs: Any) -> SessionMessage:
        return await adrive(self._engine, self._put_message(session_id, message, **kwargs))

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
        return drive(
            self._engine, self._update_message(session_id, message_id, user_id=user_id, message=message, metadata=metadata)
        )

    async def aupdate_message(self, session_id: str, message_id: str, **kwargs: Any) -> SessionMessage:
        return await adrive(self._engine, self._update_message(session_id, message_id, **kwargs))

    def delete_message(self, session_id: str, message_id: str, *, user_id: str | None) -> bool:
        """Remove the message from the session and erase it: the session's older
        checkpoints, which still hold it, are compacted away (`prune`
        "keep_latest"), so time travel on this thread starts again from here.
        False if the session has no such message; ThreadNotFoundError for an
        unknown session."""
        return drive(self._engine, self._delete_message(session_id, message_id, user_id))

    async def adelete_message(self, session_id: str, message_id: str, *, user_id: str | None) -> bool:
        return await adrive(self._engine, self._delete_message(session_id, message_id, user_id))

    def delete_messages(self, session_id: str, *, user_id: str | None) -> int:
        """Erase every message of the session and its history (checkpoints); the
        session stays, with its metadata, pin and attachment. Its title, usually
        the start of the first message, is cleared; the next message sets a new
        one. Returns how many messages there were."""
        return drive(self._engine, self._delete_messages(session_id, user_id))

    async def adelete_messages(self, session_id: str, *, user_id: str | None) -> int:
        return await adrive(self._engine, self._delete_messages(session_id, user_id))


def _merged(stored: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`stored` with `changes` merged in; a key set to None is removed."""
    merged = {**stored, **{k: v for k, v in changes.items() if v is not None}}
    for key in [k for k, v in changes.items() if v is None]:
        merged.pop(key, None)
    return merged


def _position(conv: Conversation, message_id: str) -> int | None:
    for position, message in enumerate(conv.messages):
        if message.id == message_id:
            return position
    return None
