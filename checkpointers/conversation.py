"""A thread's conversation, read and written outside a graph run.

`ThreadChatHistory`, `saver.sessions` and the importers add messages to a
thread the way the chat graph does: as a LangGraph checkpoint whose
`messages` channel is the previous list with the update applied by
`add_messages` (append; a message with a known id replaces it in place;
`RemoveMessage` deletes). The checkpoint is made by LangGraph itself, with
`update_state` on a one-node `MessagesState` graph, not assembled by hand, so
its channel versions, `versions_seen` and metadata are what LangGraph expects
and the agent graph, the web chat and `langgraph dev` open the thread as if
it had been chatted into. Only `messages` changes; other channels of the
agent's state (the trimming window) keep their values, because this saver
finds a channel's value by its version. The saver writes the thread index
row in the same transaction: owner, title from the first human message,
message count, update time.

On SQLite every write holds the saver's lock from the ownership check to the
commit, so two writers in one process cannot interleave. Writers in different
processes (and on PostgreSQL, any two writers) can: each checkpoint extends the
newest one it read, and of two that extend the same one, the later wins (as
with any LangGraph checkpointer). `write`, `delete`, `restore`, `date_messages`
and the saver's `load_conversation` work on both engines; the async twins are
native asyncio where the saver's are (`saver.native_async`). `restore` and
`date_messages` (the imports) are written once as steps
(`checkpointers.engines.base`), their SQL the engine's (`saver.transfer`); a
conversation is read by each engine's `load_conversation` (SQLite's in
`checkpointers.engines.sqlite.message_reads`), which returns a `Conversation`.
No SQL is left here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from langchain_core.messages import BaseMessage, convert_to_messages, messages_from_dict

from checkpointers.engines.base import Call, Plan, Steps, Transfer, Write, drive
from checkpointers.errors import ThreadNotFoundError
from checkpointers.threads import ANY_USER
from checkpointers.messages import KEPT_OBJECTS_READ, utc_now

if TYPE_CHECKING:
    from checkpointers.engines.sqlite.saver import ThreadSaver

NODE = "history"
"""The node the checkpoints written here name as their writer."""

_graph = None


def _conversation_graph():
    """One compiled graph for every saver: the saver comes with each call's config."""
    global _graph
    if _graph is None:
        from langgraph.graph import END, START, MessagesState, StateGraph

        builder = StateGraph(MessagesState)
        builder.add_node(NODE, lambda state: {})
        builder.add_edge(START, NODE)
        builder.add_edge(NODE, END)
        _graph = builder.compile(name="threadkeeper-history")
    return _graph


@dataclass(frozen=True)
class Conversation:
    """A thread's current messages, with what is needed to date them."""

    thread_key: int
    user_id: str | None
    created_at: str
    """The thread's creation time (ISO), the date of messages with no recorded time."""
    messages: list[BaseMessage]
    numbers: list[int] | None
    """The stored number of each message (None if the list is not stored by number)."""


def to_micros(moment: datetime | str) -> int:
    """Microseconds since the epoch; a naive datetime is taken as UTC."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    delta = moment - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    seconds, rest = divmod(int(micros), 1_000_000)
    return datetime.fromtimestamp(seconds, timezone.utc).replace(microsecond=rest)


def iso(moment: datetime | str) -> str:
    """A time in the thread index's format (UTC, microseconds), which sorts as text."""
    return from_micros(to_micros(moment)).isoformat(timespec="microseconds")


def as_message(value: Any) -> BaseMessage:
    """A message from a message, a `messages_to_dict` dict, a role dict, a (role, text) pair or a string."""
    if isinstance(value, BaseMessage):
        return value
    if isinstance(value, dict) and "type" in value and isinstance(value.get("data"), dict):
        return messages_from_dict([value])[0]
    try:
        return convert_to_messages([value])[0]
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise ValueError(f"not a chat message: {str(value)[:80]!r}") from exc


def owner_of(saver: ThreadSaver, thread_id: str) -> tuple[bool, str | None]:
    """(whether the thread exists, its owner), on either engine."""
    found = _row_or_none(saver.threads.get, str(thread_id))
    return (found is not None, None if found is None else found.user_id)


def _config(saver: Any, thread_id: str, user_id: Any) -> dict[str, Any]:
    from langgraph.constants import CONFIG_KEY_CHECKPOINTER

    # update_state's read hands its objects to no caller: it may have the kept ones (no copies).
    configurable: dict[str, Any] = {
        "thread_id": thread_id, "checkpoint_ns": "", CONFIG_KEY_CHECKPOINTER: saver, KEPT_OBJECTS_READ: True,
    }
    if user_id is not ANY_USER and user_id is not None:
        configurable["user_id"] = user_id
    return {"configurable": configurable}


def _check_writable(found: Any, thread_id: str, user_id: Any, create: bool) -> None:
    """Raise ThreadNotFoundError unless `user_id` may write to the thread (`found`: its
    index row, or None for a new thread)."""
    if (found is not None and user_id is not ANY_USER and found.user_id != user_id) or (found is None and not create):
        raise ThreadNotFoundError(thread_id)


def _row_or_none(get: Any, thread_id: str) -> Any:
    try:
        return get(thread_id)
    except ThreadNotFoundError:
        return None


def write(
    saver: ThreadSaver, thread_id: str, updates: Sequence[BaseMessage], *, user_id: Any, create: bool = True
) -> None:
    """Apply `updates` to the thread's messages as one checkpoint.

    Raises ThreadNotFoundError if the thread belongs to another user, or does
    not exist and `create` is false; a new thread is owned by `user_id`.
    """
    thread_id = str(thread_id)
    if not updates:
        return
    # SQLite's saver has one connection and an in-process lock: holding it from the
    # check to the commit keeps writers of this process from interleaving. PostgreSQL's
    # saver has none (see the module docstring for what two writers then do).
    with getattr(saver, "_lock", None) or nullcontext():
        _check_writable(_row_or_none(saver.threads.get, thread_id), thread_id, user_id, create)
        _conversation_graph().update_state(_config(saver, thread_id, user_id), {"messages": list(updates)}, as_node=NODE)


def delete(saver: ThreadSaver, thread_id: str, *, user_id: Any) -> bool:
    """Delete the thread (everything of it) if it is the user's; whether it was."""
    thread_id = str(thread_id)
    with getattr(saver, "_lock", None) or nullcontext():
        found = _row_or_none(saver.threads.get, thread_id)
        if found is None or (user_id is not ANY_USER and found.user_id != user_id):
            return False
        return saver.delete_threads([thread_id]) == 1


async def adelete(saver: ThreadSaver, thread_id: str, *, user_id: Any) -> bool:
    """`delete` for asyncio callers (see `awrite`)."""
    if not getattr(saver, "native_async", False):
        return await asyncio.to_thread(lambda: delete(saver, thread_id, user_id=user_id))
    thread_id = str(thread_id)
    try:
        found = await saver.threads.aget(thread_id)
    except ThreadNotFoundError:
        return False
    if user_id is not ANY_USER and found.user_id != user_id:
        return False
    return await saver.adelete_threads([thread_id]) == 1


async def awrite(
    saver: ThreadSaver, thread_id: str, updates: Sequence[BaseMessage], *, user_id: Any, create: bool = True
) -> None:
    """`write` for asyncio callers: native on an engine whose async methods are
    (`saver.native_async`), else `write` on a worker thread."""
    if not getattr(saver, "native_async", False):
        await asyncio.to_thread(lambda: write(saver, thread_id, updates, user_id=user_id, create=create))
        return
    thread_id = str(thread_id)
    if not updates:
        return
    try:
        found = await saver.threads.aget(thread_id)
    except ThreadNotFoundError:
        found = None
    _check_writable(found, thread_id, user_id, create)
    await _conversation_graph().aupdate_state(
        _config(saver, thread_id, user_id), {"messages": list(updates)}, as_node=NODE
    )


DERIVED: Any = object()
"""`restore(title=DERIVED)`: the title the saver takes from the first human message."""


def restore(
    saver: ThreadSaver,
    thread_id: str,
    messages: Sequence[BaseMessage],
    *,
    user_id: str | None,
    created_at: str,
    updated_at: str,
    title: str | None = DERIVED,
    pinned: bool = False,
    metadata_json: str = "{}",
    message_times: Sequence[int] | None = None,
    message_metadata: dict[str, str] | None = None,
) -> None:
    """Write a thread that did not exist, as an import found it.

    `message_times` (microseconds, one per message) dates the messages: whole
    milliseconds go to `message_times`, the rest to `message_metadata`, so an
    export read back gives the same times. `message_metadata` maps message
    ids to their stored metadata JSON. The thread's times, title, pin and
    metadata are set in one transaction after its messages are written.
    Raises ValueError if the thread exists. Works on either engine: the SQL is
    the engine's (`saver.transfer`); on SQLite the saver's lock is held throughout.
    """
    drive(
        saver.transfer,
        _restore(
            saver, str(thread_id), list(messages), user_id=user_id, created_at=created_at, updated_at=updated_at,
            title=title, pinned=pinned, metadata_json=metadata_json, message_times=message_times,
            message_metadata=message_metadata or {},
        ),
    )


def _restore(
    saver: ThreadSaver, thread_id: str, messages: list[BaseMessage], *, user_id: str | None, created_at: str,
    updated_at: str, title: Any, pinned: bool, metadata_json: str, message_times: Sequence[int] | None,
    message_metadata: dict[str, str],
) -> Steps[None]:
    engine = saver.transfer
    if (yield _thread_row(saver, thread_id)) is not None:
        raise ValueError(f"thread {thread_id} already exists")
    if messages:
        writer = ANY_USER if user_id is None else user_id
        yield Call(
            lambda: write(saver, thread_id, messages, user_id=writer),
            lambda: awrite(saver, thread_id, messages, user_id=writer),
        )

    def origin() -> Plan[None]:
        if not messages:  # nothing written: the thread is its index row alone
            yield from engine.add_thread(thread_id, user_id, utc_now())
        yield from engine.set_origin(
            thread_id, owner=user_id, created_at=created_at, updated_at=updated_at, pinned=pinned,
            metadata_json=metadata_json, title=None if title is DERIVED else engine.seal_title(title, thread_id),
            keep_title=title is DERIVED,
        )

    yield Write(origin())
    if not messages:
        return
    stored = yield _current(saver, thread_id)
    if stored.messages:
        yield Write(_dated(engine, stored, message_times, message_metadata))


def date_messages(saver: ThreadSaver, thread_id: str, times: Mapping[str, int]) -> None:
    """Date the thread's current messages by message id (microseconds since the epoch,
    whole milliseconds), instead of when the store wrote them: an import writes
    messages long after they were said. A message missing from `times` takes the
    time of the one before it (the first, the earliest time given). Either engine."""
    if times:
        drive(saver.transfer, _date_by_id(saver, str(thread_id), times))


def _date_by_id(saver: ThreadSaver, thread_id: str, times: Mapping[str, int]) -> Steps[None]:
    stored = yield _current(saver, thread_id)
    if stored is None or not stored.numbers:
        return
    dated, last = [], min(times.values())
    for message in stored.messages:
        last = times.get(message.id, last) if message.id is not None else last
        dated.append(last)
    yield Write(_dated(saver.transfer, stored, dated, {}))


def _thread_row(saver: ThreadSaver, thread_id: str) -> Call:
    """A step: the thread's index row, or None."""

    async def asynchronous() -> Any:
        try:
            return await saver.threads.aget(thread_id)
        except ThreadNotFoundError:
            return None

    return Call(lambda: _row_or_none(saver.threads.get, thread_id), asynchronous)


def _current(saver: ThreadSaver, thread_id: str) -> Call:
    """A step: the thread's conversation as stored now (anyone's), or None."""
    return Call(
        lambda: saver.load_conversation(thread_id, ANY_USER), lambda: saver.aload_conversation(thread_id, ANY_USER)
    )


def _dated(engine: Transfer, stored: Conversation, times: Sequence[int] | None, metadata: dict[str, str]) -> Plan[None]:
    """Record `times` (microseconds, one per stored message; None keeps the times the
    store recorded) and `metadata` (message id -> JSON): whole milliseconds as the
    starts of runs in `message_times`, which dates most messages with a few rows; a
    time finer than that, and any metadata, as the message's record."""
    starts: list[tuple[int, int]] | None = None if times is None or not stored.numbers else []
    exact: dict[str, int] = {}
    last = None
    for message, number, micros in zip(stored.messages, stored.numbers or [], times if starts is not None else []):
        if micros % 1_000 == 0:
            if micros // 1_000 != last:
                last = micros // 1_000
                starts.append((number, last))
        elif message.id is not None:
            exact[message.id] = micros
    records = [(mid, exact.get(mid), metadata.get(mid, "{}")) for mid in sorted(set(exact) | set(metadata))]
    yield from engine.date_messages(stored.thread_key, starts, records)
