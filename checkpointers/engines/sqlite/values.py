"""How a checkpoint, its channel values, its messages and a task's writes become
rows: the `_ValueWriting` part of `ThreadSaver` (see `checkpointers.engines.sqlite.saver`).

Storage is linear in the length of a thread:

* A checkpoint row holds the checkpoint without its channel values.
* A channel value is written once, when its version changes (`channel_values`).
* A list of messages (the `messages` channel, a write of messages, a
  `DeltaChannel` snapshot) is stored as message numbers; each message is
  serialised once per thread (`messages`). A list that grew is stored as
  "the first `keep` numbers of list `base_no`, then these"; every
  `MAX_CHAIN_DEPTH` steps a full (compressed) list of numbers is written
  instead, so reading a list never walks far.

Cost per turn is flat: the saver keeps the message lists it last read or
wrote in memory, so the next turn only serialises messages that are new
(found by identity, then by equality, then by content digest). Messages
handed out by the saver are shared with that cache; treat them as immutable
values, as LangGraph's reducers do.

With an encryption key (`THREADKEEPER_ENCRYPTION_KEY`), every blob that holds
content is encrypted at the few places where blobs meet the database, bound
to its place (table, thread, row key; see `checkpointers.encryption`):
`_insert_checkpoint`/`_load_checkpoint` (checkpoints), `_apply_encoded`/`_load`
(serialised values and writes), `_store_message` and `_open_rows` (loose
messages), `_write_segment`/`_segment_rows` (sealed segments),
`_seal_title`/`_open_title` (titles) and `_search_words` (hashed search
words); the readers are in `reads` and `message_reads`. Values are serialised
ahead of their transaction (`_pre_encode`) and sealed in it, where the
thread's key and the row's number are known.

Uses of the saver: `serde`, `_cipher`, the list cache `_lists` and the
message digests `_digests`; `_load_list` and `_open_rows` (`message_reads`)
and `_backlog_grew` (`deferred`). Rows gather in the caller's `_ThreadTxn`.
"""

from __future__ import annotations

import hashlib
import sqlite3
from functools import partial
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ormsgpack
from langchain_core.messages import BaseMessage
from langgraph.checkpoint.serde.types import _DeltaSnapshot

from checkpointers import checkpoint_codec, codec, encryption, search, stats
from checkpointers.engines.sqlite import fts
from checkpointers.codec import (
    KIND_DELTA_SNAPSHOT,
    KIND_MESSAGE,
    KIND_MESSAGE_DICT,
    KIND_MESSAGE_LIST,
    KIND_SERDE,
    db_id,
    db_task_path,
)
from checkpointers.messages import (
    StoredList as _StoredList,
    dump_message,
    encode_list,
    holds_messages as _holds_messages,
    is_message_dict as _is_message_dict,
    is_message_list as _is_message_list,
    message_dict_form,
)
from checkpointers.encryption import checkpoint_place, message_place, segment_place, value_place, write_place
from checkpointers.storable import check_value
from checkpointers.threads import title_from_messages
from checkpointers.engines.sqlite.thread_write import (
    ROW_CHANNEL_VALUE,
    ROW_CHECKPOINT,
    ROW_MESSAGE,
    ROW_SEARCH,
    ROW_WRITE_IGNORE,
    ROW_WRITE_REPLACE,
    _remember,
    _ThreadTxn,
)

if TYPE_CHECKING:
    from checkpointers.engines.sqlite.deferred import _DeferredPut, _DeferredWrites

SEGMENT_SIZE = 64
"""New messages stay in their own rows until this many gather; then they are
sealed into one compressed `message_segments` row (smaller, and one decompression
per 64 messages when a thread is read cold)."""

MESSAGES_CHANNEL = "messages"
"""The channel whose length and first human message feed the thread index."""

_MISSING = object()


@dataclass(frozen=True, slots=True)
class _PreMessage:
    """A message as it will be stored: serialised, with its content digest and search words."""

    type_: str
    blob: bytes
    digest: bytes
    words: str | None
    message: BaseMessage | None = None
    """Set instead of `words` when they are left to be worked out if the message is new."""
    unnamed: BaseMessage | None = None
    """The message, if it had no id when serialised: LangGraph's reducer gives a new
    message its id in place, and may do so after a task's writes were encoded on
    another thread. `_store_message` encodes it again if it has one by then, so the
    write and the history hold one row, as when the write waits for nothing."""


@dataclass(slots=True)
class _PreValue:
    """A channel value or write, serialised ahead of its transaction (see `_pre_encode`)."""

    kind: int
    messages: list[_PreMessage] | None = None
    parts: dict[Any, Any] | None = None
    """A dict holding messages: its items in order, those holding messages pre-encoded."""
    type_: str | None = None
    blob: bytes | None = None


class _ValueWriting:
    """How a checkpoint, its values and a task's writes become rows (see the module docstring)."""

    def _dump(self, value: Any) -> tuple[str, bytes]:
        """A value serialised and compressed; sealed where its row is written (`_apply_encoded`, `_insert_checkpoint`)."""
        return codec.compress_blob(*self.serde.dumps_typed(value))

    def _dump_checkpoint(
        self, stored: dict[str, Any], metadata: dict[str, Any], nones: list[str], checkpoint_id: str
    ) -> tuple[str, bytes]:
        """A checkpoint without its id and values, in `checkpoint_codec`'s encoding (with its
        metadata, and which channels hold None) where it fits; not yet sealed."""
        blob = checkpoint_codec.encode(stored, metadata, nones, checkpoint_id)
        if blob is None:
            return self._dump(stored)
        return checkpoint_codec.TYPE, blob

    def _dump_message(self, message: BaseMessage) -> tuple[str, bytes]:
        return dump_message(self.serde, message)

    def _search_words(self, message: BaseMessage) -> str | None:
        """What the search index holds for a message: its words, or their keyed hashes."""
        return search.indexed_words(message, None if self._cipher is None else self._cipher.search_token)

    def _seal_title(self, title: str | None, thread_id: str) -> str | None:
        """A thread's title as stored (encrypted when the store is, bound to the thread)."""
        return encryption.seal_title(self._cipher, title, thread_id)

    def _open_title(self, stored: str | None, thread_id: str) -> str | None:
        return encryption.open_title(self._cipher, stored, thread_id)

    def _pre_message(self, message: BaseMessage, *, words: bool = True) -> _PreMessage:
        """A message serialised, digested and (with `words`) split into search words, outside any transaction."""
        check_value(message)
        type_, blob = self._dump_message(message)
        digest = hashlib.blake2b(type_.encode() + b"\0" + blob, digest_size=16).digest()
        unnamed = message if message.id is None else None
        if words:
            return _PreMessage(type_, blob, digest, self._search_words(message), unnamed=unnamed)
        return _PreMessage(type_, blob, digest, None, message, unnamed)

    def _store_message(self, txn: _ThreadTxn, message: BaseMessage | _PreMessage) -> int:
        """The number of a message in this thread, storing it if it is new.

        Search words are worked out here, for a new message only, unless the
        message was pre-encoded with them (a deferred write)."""
        pre = message if type(message) is _PreMessage else self._pre_message(message, words=False)
        if pre.unnamed is not None and pre.unnamed.id is not None:
            pre = self._pre_message(pre.unnamed, words=pre.message is None)
        unnamed = pre.unnamed  # still without an id: stored once per object, never merged by content
        if unnamed is not None:
            known = txn.unnamed.get(id(unnamed))
        else:
            known = txn.new_digests.get(pre.digest)
            if known is None:
                # Only messages this saver wrote are remembered, and the final UPDATE of
                # the write fails if a garbage collection ran since: no dangling numbers.
                known = self._digests.get((txn.thread_key, pre.digest))
        if known is not None:
            return known
        no = txn.message_no()
        blob = pre.blob if self._cipher is None else self._cipher.seal(pre.blob, message_place(txn.thread_key, no))
        txn.add_row(ROW_MESSAGE, txn.thread_key, no, pre.type_, blob)
        txn.stored_messages += 1
        words = pre.words if pre.message is None else self._search_words(pre.message)
        if words:
            txn.add_row(ROW_SEARCH, fts.rowid(txn.thread_key, no), search.backlog_body(words))
            txn.after_commit.append(self._backlog_grew)
        if unnamed is not None:
            txn.unnamed[id(unnamed)] = no
            return no
        txn.new_digests[pre.digest] = no
        key = (txn.thread_key, pre.digest)
        txn.after_commit.append(lambda: _remember(self._digests, key, no, 20_000))
        return no

    def _base_list(self, txn: _ThreadTxn, ns: str, channel: str) -> _StoredList | None:
        """The list to store a new value of `channel` against, if one exists."""
        base = txn.lists.get((ns, channel)) or self._lists.latest(txn.thread_key, ns, channel)
        if base is not None:  # rows are never changed, and removed only by GC (see _ThreadTxn.close)
            return base
        row = txn.conn.execute(
            "SELECT value_no FROM channel_values WHERE thread_key = ? AND checkpoint_ns = ? "
            "AND channel = ? AND kind IN (?, ?) ORDER BY value_no DESC LIMIT 1",
            (txn.thread_key, ns, channel, KIND_MESSAGE_LIST, KIND_DELTA_SNAPSHOT),
        ).fetchone()
        if row is None:
            return None
        return self._load_list(txn.conn, txn.thread_key, row[0])

    def _encode_list(
        self, txn: _ThreadTxn, ns: str, channel: str, messages: list[BaseMessage]
    ) -> tuple[_StoredList, bytes, int | None, int | None]:
        """Store the new messages of a list; return it with its row's (value, base_no, keep)."""
        base = self._base_list(txn, ns, channel)
        encoded = encode_list(base, messages, partial(self._store_message, txn), txn.value_no)
        if ns == "" and channel == MESSAGES_CHANNEL:  # usage statistics: messages new to the conversation
            for found in stats.new_messages(base.nos if base is not None else None, messages, encoded[0].nos):
                txn.count_message(found)
        return encoded

    def _pre_encode(self, value: Any, *, words: bool = True) -> _PreValue:
        """A write or a channel value encoded as far as it can be without a transaction:
        serialised (`words`: and its messages split into search words, see
        `_store_message`); `_apply_encoded` stores its new messages and gives its row."""
        if _is_message_list(value):
            return _PreValue(KIND_MESSAGE_LIST, messages=[self._pre_message(m, words=words) for m in value])
        if isinstance(value, BaseMessage):
            return _PreValue(KIND_MESSAGE, messages=[self._pre_message(value, words=words)])
        if _is_message_dict(value):
            # A graph's input as it sits in the __start__ channel: store its
            # messages by number like the rest.
            parts = {
                key: self._pre_encode(item, words=words) if _holds_messages(item) else item
                for key, item in value.items()
            }
            return _PreValue(KIND_MESSAGE_DICT, parts=parts)
        check_value(value, "input")
        type_, blob = self._dump(value)
        return _PreValue(KIND_SERDE, type_=type_, blob=blob)

    def _apply_encoded(self, txn: _ThreadTxn, pre: _PreValue, place: bytes | None) -> tuple[int, str | None, bytes | None]:
        """The (kind, type, value) columns of a pre-encoded value, storing its new messages;
        a serialised value is sealed to `place` (None: the store is not encrypted)."""
        if pre.messages is not None:
            return pre.kind, None, codec.pack_numbers([self._store_message(txn, m) for m in pre.messages])
        if pre.parts is not None:
            form = message_dict_form(
                pre.parts, lambda part: self._apply_encoded(txn, part, None)[::2], lambda item: type(item) is _PreValue
            )
            type_, blob = self._dump(form)
            return KIND_MESSAGE_DICT, type_, blob if place is None else self._cipher.seal(blob, place)
        return pre.kind, pre.type_, pre.blob if place is None else self._cipher.seal(pre.blob, place)

    def _seal_segment(self, txn: _ThreadTxn) -> None:
        """Move loose messages into one compressed segment once enough have gathered."""
        # Message numbers only grow, so fewer than SEGMENT_SIZE numbers handed out
        # since the last sealed one means fewer loose rows: no need to count.
        if txn.sealed_upto is not None and txn.next_message_no - 1 - txn.sealed_upto < SEGMENT_SIZE:
            return
        txn.write_rows()
        count, first, last = txn.conn.execute(
            "SELECT count(*), min(message_no), max(message_no) FROM messages WHERE thread_key = ?",
            (txn.thread_key,),
        ).fetchone()
        if count < SEGMENT_SIZE:
            txn.sealed_upto = (first or txn.next_message_no) - 1
            return
        rows = self._open_rows(
            txn.thread_key,
            txn.conn.execute(
                "SELECT message_no, type, value FROM messages WHERE thread_key = ? ORDER BY message_no",
                (txn.thread_key,),
            ).fetchall(),
        )
        self._write_segment(txn.conn, txn.thread_key, rows)
        txn.conn.execute("DELETE FROM messages WHERE thread_key = ?", (txn.thread_key,))
        txn.sealed_upto = rows[-1][0]

    def _write_segment(self, conn: sqlite3.Connection, thread_key: int, rows: list[tuple[int, str, bytes]]) -> None:
        """Seal plain message rows into one segment (compressed, then encrypted when the store is)."""
        value = codec.deflate(ormsgpack.packb([[type_, blob] for _, type_, blob in rows]))
        nos = codec.pack_numbers([r[0] for r in rows])
        if self._cipher is not None:
            value = self._cipher.seal(value, segment_place(thread_key, nos))
        conn.execute(
            "INSERT INTO message_segments (thread_key, first_no, last_no, nos, value) VALUES (?, ?, ?, ?, ?)",
            (thread_key, rows[0][0], rows[-1][0], nos, value),
        )

    # -- the rows of a checkpoint and of a task's writes ---------------------

    def _insert_checkpoint(self, txn: _ThreadTxn, entry: _DeferredPut) -> None:
        """The rows of one checkpoint: its new channel values and itself; and its mark on the thread row."""
        ns, values = entry.ns, entry.values
        for channel, version in entry.new_versions.items():
            if row := self._value_row(txn, ns, channel, version, values.get(channel, _MISSING)):
                txn.add_row(ROW_CHANNEL_VALUE, *row)
        checkpoint_id = db_id(entry.checkpoint_id)
        txn.add_row(
            ROW_CHECKPOINT,
            txn.thread_key,
            ns,
            checkpoint_id,
            None if entry.parent_id is None else db_id(entry.parent_id),
            None if entry.run_id is None else db_id(entry.run_id),
            entry.type_,
            entry.blob if self._cipher is None
            else self._cipher.seal(entry.blob, checkpoint_place(txn.thread_key, ns, checkpoint_id)),
            entry.metadata_column,
        )
        if txn.stored_messages:
            self._seal_segment(txn)
        self._touch_thread(txn, entry)

    def _value_row(self, txn: _ThreadTxn, ns: str, channel: str, version: Any, value: Any) -> tuple | None:
        """The `channel_values` row for a channel's new value (None: nothing to store)."""
        base_no = keep = None
        depth = 0
        type_: str | None = None
        if value is _MISSING:
            # Updated but empty (a consumed trigger, a DeltaChannel between
            # snapshots): no row at this version means "no value".
            return None
        if _is_message_list(value) or (isinstance(value, _DeltaSnapshot) and _is_message_list(value.value)):
            kind = KIND_MESSAGE_LIST if type(value) is list else KIND_DELTA_SNAPSHOT
            messages = value if kind == KIND_MESSAGE_LIST else value.value
            entry, blob, base_no, keep = self._encode_list(txn, ns, channel, messages)
            value_no, depth = entry.value_no, entry.depth
            key = txn.thread_key
            txn.lists[(ns, channel)] = entry
            txn.after_commit.append(lambda: self._lists.add(key, ns, channel, entry))
        else:
            pre = value if type(value) is _PreValue else self._pre_encode(value, words=False)
            value_no = txn.value_no()
            place = value_place(txn.thread_key, value_no) if self._cipher is not None else None
            kind, type_, blob = self._apply_encoded(txn, pre, place)
        return (txn.thread_key, value_no, ns, channel, version, kind, type_, blob, base_no, keep, depth)

    def _touch_thread(self, txn: _ThreadTxn, entry: _DeferredPut) -> None:
        """Keep the thread's index row in step with a checkpoint (see `_ThreadTxn.touch`)."""
        count = title = None
        if entry.ns == "":
            messages = entry.values.get(MESSAGES_CHANNEL)
            if isinstance(messages, _DeltaSnapshot):
                messages = messages.value
            if MESSAGES_CHANNEL in entry.new_versions and isinstance(messages, list):
                count = len(messages)
                if txn.title is None:
                    title = title_from_messages(messages)
        txn.touch(entry.updated_at, count, title, self._seal_title(title, txn.thread_id), entry.user_id)

    def _insert_writes(self, txn: _ThreadTxn, entry: _DeferredWrites) -> None:
        row_kind = ROW_WRITE_REPLACE if entry.replace else ROW_WRITE_IGNORE
        checkpoint_id, task_id = db_id(entry.checkpoint_id), db_id(entry.task_id)
        task_path = db_task_path(entry.task_path)
        for idx, channel, value in entry.values:
            place = (
                None if self._cipher is None else write_place(txn.thread_key, entry.ns, checkpoint_id, task_id, idx)
            )
            kind, type_, blob = self._apply_encoded(txn, value, place)
            txn.add_row(
                row_kind, txn.thread_key, entry.ns, checkpoint_id, task_id, idx,
                task_path, channel, kind, type_, blob,
            )
