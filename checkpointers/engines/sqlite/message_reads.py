"""Reading messages and message lists back: loose rows and sealed segments,
a list's delta chain down to a full or cached list, a page of a thread's
newest messages (`read_messages`) and a thread's conversation
(`load_conversation`): the `_MessageReads` part of `ThreadSaver` (see
`checkpointers.engines.sqlite.saver`).

Lists read are added to the list cache (`_lists`), so the next turn stores
only what is new; a reader that gets its own objects (`_own_list`,
`read_messages`) copies what the cache holds instead. Uses of the saver:
`conn`, `serde`, `_cipher`, `_lists`; `_read` (`saver`); `_load_checkpoint`,
`_lookup_value` and `_decode_value` (`reads`); `_search_words` (`values`).
"""

from __future__ import annotations

import asyncio
import gc
import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import ormsgpack
from langchain_core.messages import BaseMessage
from langgraph.checkpoint.serde.types import _DeltaSnapshot

from checkpointers import codec
from checkpointers.engines.sqlite import fts
from checkpointers.codec import KIND_DELTA_SNAPSHOT, KIND_MESSAGE_LIST
from checkpointers.messages import (
    MAX_CHAIN_DEPTH,
    chain_numbers,
    MessagePage,
    StoredList as _StoredList,
    load_message,
    restored as _restored,
    snapshot as _snapshot,
)
from checkpointers.encryption import message_place, segment_place
from checkpointers.errors import ThreadNotFoundError
from checkpointers.storable import check_id
from checkpointers import conversation
from checkpointers.threads import ANY_USER

_PAUSE_GC_FROM = 256
"""Messages read at once from which Python's cyclic collector waits until the read is done."""


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Hold Python's cyclic garbage collector while a long thread's messages are built.

    Each message is a few container objects, and every 700 new ones start a
    collection; reading 2,000 messages ran some sixty of them, including scans
    of older generations whose cost depends on everything else the process
    holds (measured: about half of a cold read's time). Paused, the new objects
    are looked at once, after the read. Nothing is freed late: they are all alive.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


_LIST_CHAIN_SQL = f"""
WITH RECURSIVE chain (value_no, value, base_no, keep, depth, checkpoint_ns, channel) AS (
    SELECT value_no, value, base_no, keep, depth, checkpoint_ns, channel FROM channel_values
    WHERE thread_key = ?1 AND value_no = ?2
    UNION ALL
    SELECT c.value_no, c.value, c.base_no, c.keep, c.depth, c.checkpoint_ns, c.channel
    FROM chain JOIN channel_values AS c ON c.thread_key = ?1 AND c.value_no = chain.base_no
    LIMIT {MAX_CHAIN_DEPTH + 2}
)
SELECT * FROM chain
"""
"""A stored message list and the lists it is a delta of, newest first, down to a full list."""


def _segment_rows(nos: list[int], value: bytes) -> list[tuple[int, str, bytes]]:
    """The (message_no, type, blob) rows in one plain (decrypted) `message_segments` value."""
    return [(no, type_, blob) for no, (type_, blob) in zip(nos, ormsgpack.unpackb(codec.inflate(value)))]


class _MessageReads:
    """Reading stored messages and message lists back (see the module docstring)."""

    def _load_message(self, type_: str, blob: bytes) -> BaseMessage:
        """A message from its plain (decrypted) blob."""
        return load_message(self.serde, type_, blob)

    def _open_rows(self, thread_key: int, rows: Any) -> Any:
        """Rows `(message_no, type, value)` of a thread's `messages` with their values decrypted."""
        cipher = self._cipher
        if cipher is None:
            return rows
        return [(no, type_, cipher.open(blob, message_place(thread_key, no))) for no, type_, blob in rows]

    def _segment_rows(self, thread_key: int, nos_blob: bytes, nos: list[int], value: bytes) -> list[tuple[int, str, bytes]]:
        """The plain `(message_no, type, blob)` rows of one stored segment (`nos`: `nos_blob` unpacked)."""
        if self._cipher is not None:
            value = self._cipher.open(value, segment_place(thread_key, nos_blob))
        return _segment_rows(nos, value)

    def _load_messages(self, conn: sqlite3.Connection, thread_key: int, nos: Sequence[int]) -> dict[int, BaseMessage]:
        """Message objects by number, from loose rows and sealed segments."""
        if len(nos) < _PAUSE_GC_FROM:
            return self._decode_messages(conn, thread_key, nos)
        with _collector_paused():
            return self._decode_messages(conn, thread_key, nos)

    def _decode_messages(self, conn: sqlite3.Connection, thread_key: int, nos: Sequence[int]) -> dict[int, BaseMessage]:
        wanted = set(nos)
        if not wanted:
            return {}
        lo, hi = min(wanted), max(wanted)
        found: dict[int, BaseMessage] = {}
        # Segments do not overlap, so the first one needed is the last to start by `lo`
        # (found in the index alone). Bounding the range with it makes a page of a
        # long thread's newest messages read one or two segment rows: with only
        # `last_no >= lo`, every earlier segment's row is read to be refused.
        for nos_blob, value in conn.execute(
            "SELECT nos, value FROM message_segments WHERE thread_key = ?1 AND first_no <= ?2 "
            "AND first_no >= coalesce((SELECT max(first_no) FROM message_segments "
            "WHERE thread_key = ?1 AND first_no <= ?3), 0) AND last_no >= ?3 ORDER BY first_no",
            (thread_key, hi, lo),
        ):
            segment_nos = codec.unpack_numbers(nos_blob)
            if wanted.isdisjoint(segment_nos):
                continue
            for no, type_, blob in self._segment_rows(thread_key, nos_blob, segment_nos, value):
                if no in wanted:
                    found[no] = self._load_message(type_, blob)
        if len(found) < len(wanted):
            rows = conn.execute(
                "SELECT message_no, type, value FROM messages WHERE thread_key = ? AND message_no BETWEEN ? AND ?"
                if hi - lo < 2 * len(wanted)
                else "SELECT message_no, type, value FROM messages WHERE thread_key = ? "
                "AND message_no IN (SELECT value FROM json_each(?))",
                (thread_key, lo, hi) if hi - lo < 2 * len(wanted) else (thread_key, json.dumps(sorted(wanted))),
            )
            for no, type_, blob in self._open_rows(thread_key, rows):
                if no in wanted:
                    found[no] = self._load_message(type_, blob)
        if len(found) != len(wanted):
            missing = sorted(wanted - found.keys())[:5]
            raise RuntimeError(f"thread {thread_key}: stored value refers to missing messages {missing}")
        return found

    def _stored_message_rows(self, thread_key: int) -> list[tuple[int, str, bytes]]:
        """Every stored message of a thread as (message_no, type, plain blob), loose or sealed."""
        rows = self._open_rows(
            thread_key,
            self.conn.execute("SELECT message_no, type, value FROM messages WHERE thread_key = ?", (thread_key,)).fetchall(),
        )
        for nos_blob, value in self.conn.execute(
            "SELECT nos, value FROM message_segments WHERE thread_key = ?", (thread_key,)
        ).fetchall():
            rows += self._segment_rows(thread_key, nos_blob, codec.unpack_numbers(nos_blob), value)
        return rows

    def _thread_search_rows(self, thread_key: int) -> list[tuple[int, str]]:
        """The search index rows of every stored message of a thread."""
        return self._search_rows(thread_key, self._stored_message_rows(thread_key))

    def _search_rows(self, thread_key: int, rows: Sequence[tuple[int, str, bytes]]) -> list[tuple[int, str]]:
        """The search index rows of stored messages, exactly as `_store_message` added them."""
        found = []
        for no, type_, blob in rows:
            words = self._search_words(self._load_message(type_, blob))
            if words:
                found.append((fts.rowid(thread_key, no), words))
        return found

    def _load_list(self, conn: sqlite3.Connection, thread_key: int, value_no: int) -> _StoredList:
        cached = self._lists.get(thread_key, value_no)
        if cached is not None:
            return cached
        nos, known, ns, channel, depth = self._list_numbers(conn, thread_key, value_no)
        missing = [n for n in nos if n not in known]
        if missing:
            known.update((n, (m, _snapshot(m))) for n, m in self._load_messages(conn, thread_key, missing).items())
        entry = _StoredList(value_no, nos, [known[n][0] for n in nos], depth, [known[n][1] for n in nos])
        self._lists.add(thread_key, ns, channel, entry)
        return entry

    def _own_list(self, conn: sqlite3.Connection, thread_key: int, value_no: int) -> list[BaseMessage]:
        """A stored list as new message objects: copies of what the cache holds, the rest
        decoded. A cold read for a caller (`get_state`) neither copies nor snapshots them."""
        cached = self._lists.get(thread_key, value_no)
        if cached is not None:
            return cached.copies()
        nos, known, *_ = self._list_numbers(conn, thread_key, value_no)
        loaded = self._load_messages(conn, thread_key, [n for n in nos if n not in known])
        return [_restored(*known[n]) if n in known else loaded[n] for n in nos]

    def _list_numbers(
        self, conn: sqlite3.Connection, thread_key: int, value_no: int
    ) -> tuple[list[int], dict[int, tuple[BaseMessage, dict]], str, str, int]:
        """The message numbers of a stored list, walking its delta chain to a cached or full list,
        and the messages (with their snapshots) of that cached list."""
        steps: list[tuple[int, bytes, int | None, int | None, int]] = []
        start = self._lists.get(thread_key, value_no)
        ns = channel = ""
        if start is None:
            # The whole chain in one statement (a cold read walks up to MAX_CHAIN_DEPTH
            # links); it stops at the first link this saver has cached.
            cursor: int | None = value_no
            for link, value, base_no, keep, depth, ns, channel in conn.execute(_LIST_CHAIN_SQL, (thread_key, value_no)):
                if link != cursor:
                    break
                if link != value_no and (start := self._lists.get(thread_key, link)) is not None:
                    break
                steps.append((link, value, base_no, keep, depth))
                cursor = base_no
                if cursor is None:
                    break
            if start is None and cursor is not None:
                raise RuntimeError(f"thread {thread_key}: message list {cursor} is missing")
        nos = chain_numbers(start, [(blob, keep) for _, blob, _base, keep, _depth in steps])
        known = start.known() if start else {}
        return nos, known, ns, channel, steps[0][4] if steps else start.depth

    def read_messages(
        self, thread_id: str, *, user_id: Any = ANY_USER, limit: int = 50, before: int | None = None
    ) -> MessagePage:
        """A page of a thread's latest messages without loading the rest of its history.

        Returns up to `limit` messages ending just before index `before` (default:
        the newest), with `start` (the index of the first one) and `total`, so
        `read_messages(t, before=page.start)` gives the page before. Raises
        ThreadNotFoundError for a missing thread or one owned by another user.
        """
        if not 1 <= limit <= 1000:
            raise ValueError(f"limit must be between 1 and 1000, not {limit}")
        thread_id = check_id(thread_id)
        with self._read() as conn:
            row = conn.execute("SELECT thread_key, user_id FROM threads WHERE thread_id = ?", (thread_id,)).fetchone()
            if row is None or (user_id is not ANY_USER and row[1] != user_id):
                raise ThreadNotFoundError(thread_id)
            thread_key = row[0]
            latest = conn.execute(
                "SELECT checkpoint_id, type, checkpoint FROM checkpoints WHERE thread_key = ? AND checkpoint_ns = '' "
                "ORDER BY checkpoint_id DESC LIMIT 1",
                (thread_key,),
            ).fetchone()
            version = (
                self._load_checkpoint(thread_key, "", *latest)["channel_versions"].get("messages") if latest else None
            )
            found = self._lookup_value(conn, thread_key, "", "messages", version) if version is not None else None
            if found is None:
                return MessagePage([], 0, 0)
            value_no, kind, type_, blob = found
            if kind == KIND_MESSAGE_LIST:
                cached = self._lists.get(thread_key, value_no)
                if cached is not None:
                    nos, known = cached.nos, cached.known()
                else:
                    nos, known, *_ = self._list_numbers(conn, thread_key, value_no)
                end = len(nos) if before is None else max(0, min(before, len(nos)))
                start = max(0, end - limit)
                page = nos[start:end]
                loaded = self._load_messages(conn, thread_key, [n for n in page if n not in known])
                # Objects of the cache are shared with others: the page gets its own.
                return MessagePage(
                    [_restored(*known[n]) if n in known else loaded[n] for n in page], len(nos), start
                )
            value = self._decode_value(conn, thread_key, value_no, kind, type_, blob)
        value = value.value if isinstance(value, _DeltaSnapshot) else value
        messages = list(value) if isinstance(value, list) else []
        end = len(messages) if before is None else max(0, min(before, len(messages)))
        start = max(0, end - limit)
        return MessagePage(messages[start:end], len(messages), start)

    async def aread_messages(self, thread_id: str, **kwargs: Any) -> MessagePage:
        return await asyncio.to_thread(lambda: self.read_messages(thread_id, **kwargs))

    def load_conversation(self, thread_id: str, user_id: Any) -> conversation.Conversation | None:
        """The thread's current messages (see `checkpointers.conversation`); None if the
        thread does not exist or is not the user's (`ANY_USER`: anyone's)."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT thread_key, user_id, created_at FROM threads WHERE thread_id = ?", (str(thread_id),)
            ).fetchone()
            if row is None or (user_id is not ANY_USER and row[1] != user_id):
                return None
            thread_key, owner, created_at = row
            latest = conn.execute(
                "SELECT checkpoint_id, type, checkpoint FROM checkpoints WHERE thread_key = ? AND checkpoint_ns = '' "
                "ORDER BY checkpoint_id DESC LIMIT 1",
                (thread_key,),
            ).fetchone()
            version = self._load_checkpoint(thread_key, "", *latest)["channel_versions"].get("messages") if latest else None
            found = self._lookup_value(conn, thread_key, "", "messages", version) if version is not None else None
            if found is None:
                return conversation.Conversation(thread_key, owner, created_at, [], [])
            value_no, kind, type_, blob = found
            if kind in (KIND_MESSAGE_LIST, KIND_DELTA_SNAPSHOT):
                stored = self._load_list(conn, thread_key, value_no)
                return conversation.Conversation(thread_key, owner, created_at, stored.hand_out(), list(stored.nos))
            value = self._decode_value(conn, thread_key, value_no, kind, type_, blob)
        value = getattr(value, "value", value)
        messages = list(value) if isinstance(value, list) else []
        return conversation.Conversation(thread_key, owner, created_at, messages, [] if not messages else None)

    async def aload_conversation(self, thread_id: str, user_id: Any) -> conversation.Conversation | None:
        return await asyncio.to_thread(self.load_conversation, thread_id, user_id)
