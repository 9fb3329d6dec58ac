"""Reading checkpoints back: a stored checkpoint with its channel values and
pending writes (`_tuple`), the values one at a time, and the writes of a
`DeltaChannel` along a checkpoint's ancestors (`get_delta_channel_history`):
the `_CheckpointReads` part of `ThreadSaver` (see `checkpointers.engines.sqlite.saver`).

Every method but `get_delta_channel_history` works inside a read or write
transaction its caller holds. Uses of the saver: `serde`, `_cipher`; `_read`
and `_thread_key` (`saver`); the message lists of `message_reads`
(`_load_list`, `_own_list`, `_load_messages`).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    ChannelVersions,
    CheckpointTuple,
    DeltaChannelHistory,
    PendingWrite,
    get_checkpoint_id,
    writes_sort_key,
)
from langgraph.checkpoint.serde.types import _DeltaSnapshot

from checkpointers import checkpoint_codec, codec
from checkpointers.codec import (
    KIND_DELTA_SNAPSHOT,
    KIND_MESSAGE_DICT,
    KIND_MESSAGE_LIST,
    KIND_SERDE,
    db_id,
    py_id,
    py_task_path,
)
from checkpointers.messages import (
    SERIALISED_KINDS,
    checkpoint_tuple as _checkpoint_tuple,
    delta_channel_history,
    from_numbered,
    referenced_numbers,
)
from checkpointers.encryption import checkpoint_place, value_place, write_place
from checkpointers.storable import check_ns

class _CheckpointReads:
    """Reading checkpoints, their channel values and pending writes back (see the module docstring)."""

    def _load(self, type_: str, blob: bytes, place: bytes) -> Any:
        """A value stored at `place` (one of `checkpointers.encryption`'s `*_place`)."""
        if self._cipher is not None:
            blob = self._cipher.open(blob, place)
        return self._decode(type_, blob)

    def _decode(self, type_: str, blob: bytes, checkpoint_id: str | bytes | None = None) -> Any:
        """A value (or the checkpoint `checkpoint_id`) from its plain (decrypted) serialised form."""
        if type_ in checkpoint_codec.TYPES:
            return checkpoint_codec.decode(blob, checkpoint_id)
        return self.serde.loads_typed(codec.decompress_blob(type_, blob))

    def _load_checkpoint(self, thread_key: int, ns: str, checkpoint_id: str | bytes, type_: str, blob: bytes) -> Any:
        """A stored checkpoint (`checkpoint_id` as stored)."""
        if self._cipher is not None:
            blob = self._cipher.open(blob, checkpoint_place(thread_key, ns, checkpoint_id))
        return self._decode(type_, blob, checkpoint_id)

    def _load_checkpoint_row(
        self, thread_key: int, ns: str, checkpoint_id: str | bytes, type_: str, blob: bytes, metadata: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """A stored checkpoint and its metadata (`metadata`: the column; '' when the blob holds it)."""
        if type_ != checkpoint_codec.TYPE:
            return self._load_checkpoint(thread_key, ns, checkpoint_id, type_, blob), json.loads(metadata)
        if self._cipher is not None:
            blob = self._cipher.open(blob, checkpoint_place(thread_key, ns, checkpoint_id))
        checkpoint, held = checkpoint_codec.decode_row(blob, checkpoint_id)
        return checkpoint, json.loads(metadata) if held is None else held

    def _decode_value(
        self, conn: sqlite3.Connection, thread_key: int, value_no: int, kind: int, type_: str | None, blob: bytes | None,
        *, own: bool = False,
    ) -> Any:
        """A channel value; message lists come from (and go to) the list cache, or with
        `own`, as new objects (read from the cache without adding to it)."""
        if kind in (KIND_MESSAGE_LIST, KIND_DELTA_SNAPSHOT):
            messages = self._own_list(conn, thread_key, value_no) if own else self._load_list(conn, thread_key, value_no).hand_out()
            return messages if kind == KIND_MESSAGE_LIST else _DeltaSnapshot(messages)
        place = value_place(thread_key, value_no) if self._cipher is not None and kind in SERIALISED_KINDS else None
        return self._decode_write(conn, thread_key, kind, type_, blob, place)

    def _decode_write(
        self, conn: sqlite3.Connection, thread_key: int, kind: int, type_: str | None, blob: bytes | None, place: bytes | None
    ) -> Any:
        """A stored value or write; `place`: where a serialised one is sealed (None: not encrypted)."""
        if kind == KIND_SERDE:
            return self._load(type_, blob, place)
        form = self._load(type_, blob, place) if kind == KIND_MESSAGE_DICT else blob
        return from_numbered(kind, form, self._load_messages(conn, thread_key, referenced_numbers(kind, form)))

    def _lookup_value(
        self, conn: sqlite3.Connection, thread_key: int, ns: str, channel: str, version: Any
    ) -> tuple[int, int, str | None, bytes | None] | None:
        return conn.execute(
            # Without INDEXED BY the planner may walk the primary key backwards
            # for the ORDER BY and read the whole thread.
            "SELECT value_no, kind, type, value FROM channel_values INDEXED BY channel_values_by_version "
            "WHERE thread_key = ? "
            "AND checkpoint_ns = ? AND channel = ? AND version = ? ORDER BY value_no DESC LIMIT 1",
            (thread_key, ns, channel, version),
        ).fetchone()

    def _channel_values(
        self, conn: sqlite3.Connection, thread_key: int, ns: str, versions: ChannelVersions, *, own: bool = False
    ) -> dict[str, Any]:
        """Every channel's value at its version, found with one statement."""
        if not versions:
            return {}
        # One indexed lookup per channel, glued into a single statement so a
        # read costs one round trip into SQLite however many channels there are.
        branch = (
            "SELECT * FROM (SELECT ? AS channel, value_no, kind, type, value FROM channel_values "
            "INDEXED BY channel_values_by_version WHERE thread_key = ? AND checkpoint_ns = ? "
            "AND channel = ? AND version = ? ORDER BY value_no DESC LIMIT 1)"
        )
        params: list[Any] = []
        for channel, version in versions.items():
            params += [channel, thread_key, ns, channel, version]
        rows = conn.execute(" UNION ALL ".join([branch] * len(versions)), params).fetchall()
        return {channel: self._decode_value(conn, thread_key, *rest, own=own) for channel, *rest in rows}

    def _pending_writes(self, conn: sqlite3.Connection, thread_key: int, ns: str, checkpoint_id: str) -> list[PendingWrite]:
        stored_id = db_id(checkpoint_id)
        rows = conn.execute(
            "SELECT task_path, task_id, idx, channel, kind, type, value FROM writes WHERE thread_key = ? "
            "AND checkpoint_ns = ? AND checkpoint_id = ?",
            (thread_key, ns, stored_id),
        ).fetchall()
        rows = [(py_task_path(path), py_id(task), task, *rest) for path, task, *rest in rows]
        rows.sort(key=lambda r: writes_sort_key(r[0], r[1], r[3]))
        sealed = self._cipher is not None
        return [
            (
                task_id,
                channel,
                self._decode_write(
                    conn, thread_key, kind, t, v,
                    write_place(thread_key, ns, stored_id, stored_task, idx) if sealed and kind in SERIALISED_KINDS else None,
                ),
            )
            for _path, task_id, stored_task, idx, channel, kind, t, v in rows
        ]

    def _tuple(
        self,
        conn: sqlite3.Connection,
        thread_key: int,
        thread_id: str,
        ns: str,
        checkpoint_id: str | bytes,
        parent_id: str | bytes | None,
        checkpoint: dict[str, Any],
        metadata: dict[str, Any],
        *,
        own: bool = False,
    ) -> CheckpointTuple:
        """A stored checkpoint (ids as stored; the rest as `_load_checkpoint_row` gives it)
        with its values and writes; `own`: its messages new objects (see `messages.hands_out_kept`)."""
        checkpoint_id, parent_id = py_id(checkpoint_id), py_id(parent_id)
        checkpoint["id"] = checkpoint_id
        versions = checkpoint["channel_versions"]
        nones = checkpoint.get("channel_values")  # the channels the row says hold None
        if nones:
            versions = {channel: version for channel, version in versions.items() if channel not in nones}
        checkpoint["channel_values"] = {**(nones or {}), **self._channel_values(conn, thread_key, ns, versions, own=own)}
        pending_writes = self._pending_writes(conn, thread_key, ns, checkpoint_id)
        return _checkpoint_tuple(thread_id, ns, checkpoint, metadata, parent_id, pending_writes)

    @staticmethod
    def _checkpoint_row(
        conn: sqlite3.Connection, thread_key: int, ns: str, config: RunnableConfig, columns: str
    ) -> tuple | None:
        """The checkpoint `config` names, or the thread's latest when it names none."""
        if checkpoint_id := get_checkpoint_id(config):
            return conn.execute(
                f"SELECT {columns} FROM checkpoints WHERE thread_key = ? AND checkpoint_ns = ? AND checkpoint_id = ?",
                (thread_key, ns, db_id(checkpoint_id)),
            ).fetchone()
        return conn.execute(
            f"SELECT {columns} FROM checkpoints WHERE thread_key = ? AND checkpoint_ns = ? "
            "ORDER BY checkpoint_id DESC LIMIT 1",
            (thread_key, ns),
        ).fetchone()

    def get_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        """Writes of each channel along the parent chain back to its nearest stored value.

        Same contract as `BaseCheckpointSaver.get_delta_channel_history`, in one
        read transaction with one indexed lookup per ancestor.
        """
        if not channels:
            return {}
        channels = list(channels)
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        ns = check_ns(configurable.get("checkpoint_ns", ""))
        collected: dict[str, list[PendingWrite]] = {c: [] for c in channels}
        seeds: dict[str, Any] = {}
        with self._read() as conn:
            thread_key = self._thread_key(conn, thread_id)
            target = None
            if thread_key is not None:
                target = self._checkpoint_row(conn, thread_key, ns, config, "parent_checkpoint_id")
            cursor = target[0] if target else None
            remaining = set(channels)
            visited: set[str] = set()
            while cursor and remaining and cursor not in visited:
                visited.add(cursor)
                row = conn.execute(
                    "SELECT parent_checkpoint_id, type, checkpoint FROM checkpoints WHERE thread_key = ? "
                    "AND checkpoint_ns = ? AND checkpoint_id = ?",
                    (thread_key, ns, cursor),
                ).fetchone()
                if row is None:
                    break
                writes = self._pending_writes(conn, thread_key, ns, cursor)
                for write in reversed(writes):
                    if write[1] in remaining:
                        collected[write[1]].append(write)
                versions = self._load_checkpoint(thread_key, ns, cursor, row[1], row[2])["channel_versions"]
                for ch in list(remaining):
                    if ch not in versions:
                        continue
                    found = self._lookup_value(conn, thread_key, ns, ch, versions[ch])
                    if found is not None:
                        seeds[ch] = self._decode_value(conn, thread_key, *found)
                        remaining.discard(ch)
                cursor = row[0]
        return delta_channel_history(channels, collected, seeds)

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        return await asyncio.to_thread(lambda: self.get_delta_channel_history(config=config, channels=channels))
