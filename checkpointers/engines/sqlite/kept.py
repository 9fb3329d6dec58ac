"""A thread's newest checkpoint kept in memory by the `put` that wrote it, and
handed out again by `get_tuple` while nothing can have changed it: the
`_KeptCheckpoint` part of `ThreadSaver` (see `checkpointers.engines.sqlite.saver`).

Uses of the saver: `conn`, `serde`, `_lists`, `_kept`, `_newest`,
`_deferred` and `_deferred_cond`; `_decode` (`reads`).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from langgraph.checkpoint.base import CheckpointTuple
from langgraph.checkpoint.serde.types import _DeltaSnapshot

from checkpointers.messages import (
    StoredList as _StoredList,
    checkpoint_tuple as _checkpoint_tuple,
    is_message_list as _is_message_list,
)
from checkpointers.engines.sqlite.thread_write import _remember

if TYPE_CHECKING:
    from checkpointers.engines.sqlite.deferred import _DeferredPut

@dataclass(frozen=True, slots=True)
class _KeptValue:
    """A kept channel value that is not a message list, as the serializer wrote it:
    each `get_tuple` answered from memory decodes a new object, as a read would."""

    type_: str
    blob: bytes


class _KeptList(NamedTuple):
    """A message list of a kept checkpoint: the stored list, bare or as a `_DeltaSnapshot`."""

    stored: _StoredList
    delta: bool

    def hand_out(self, own: bool) -> Any:
        """The list for a run (the kept objects, checked), or with `own` new objects."""
        messages = self.stored.copies() if own else self.stored.hand_out()
        return _DeltaSnapshot(messages) if self.delta else messages


@dataclass(slots=True, eq=False)
class _KeptTuple:
    """A thread's newest checkpoint as the `put` that wrote it had it, for `get_tuple`.

    Served only while this connection has written nothing since (`total_changes`)
    and no other connection has committed since the read that found its chain's
    first checkpoint (`data_version`, SQLite's count of other connections' commits)."""

    entry: _DeferredPut
    values: dict[str, Any]
    """Its channel values: message lists, and anything else serialised (see `ThreadSaver._keep_tuple`)."""
    total_changes: int
    data_version: int


class _KeptCheckpoint:
    """A thread's newest checkpoint kept in memory for `get_tuple` (see the module docstring)."""

    def _follow_newest(self, thread_id: str, ns: str, entry: _DeferredPut) -> None:
        """A put makes the thread's known newest checkpoint its own if it follows it, else unknown
        (call holding `_deferred_cond`). What `get_tuple` kept of the thread is stale either way."""
        key = (thread_id, ns)
        self._kept.pop(key, None)
        newest = self._newest.pop(key, None)
        if newest is not None and newest[0] == entry.parent_id:
            self._newest[key] = (entry.checkpoint_id, newest[1])

    def _keep_tuple(self, entry: _DeferredPut, thread_key: int, lists: dict[tuple[str, str], _StoredList]) -> None:
        """After the commit that wrote `entry` (holding `_lock`): keep it for `get_tuple` if it is the
        thread's newest checkpoint. A message list is kept as the stored list of the same
        objects (`lists`: those this write stored), handed out checked against their
        snapshots (see `_StoredList`); any other value is kept serialised and decoded anew."""
        key = (entry.thread_id, entry.ns)
        values: dict[str, Any] = {}
        for channel, value in entry.values.items():
            delta = isinstance(value, _DeltaSnapshot)
            messages = value.value if delta else value
            if _is_message_list(messages):
                stored = lists.get((entry.ns, channel)) or self._lists.latest(thread_key, entry.ns, channel)
                if stored is None or len(stored.objs) != len(messages) or not all(map(operator.is_, messages, stored.objs)):
                    return  # not the list the store holds: get_tuple reads it instead
                values[channel] = _KeptList(stored, delta)
                continue
            try:
                values[channel] = _KeptValue(*self.serde.dumps_typed(value))
            except Exception:  # the serializer refuses it: get_tuple reads the stored row instead
                return
        with self._deferred_cond:
            newest = self._newest.get(key)
            if newest is not None and newest[0] == entry.checkpoint_id:
                kept = _KeptTuple(entry, values, self.conn.total_changes, newest[1])
                _remember(self._kept, key, kept, 1_000)

    def _kept_tuple(self, thread_id: str, ns: str, checkpoint_id: str | None, *, own: bool) -> CheckpointTuple | None:
        """The thread's newest checkpoint as `_keep_tuple` kept it, if nothing can have changed it
        since (call holding `_lock`); else None, and the caller reads it. `own`: see `_tuple`."""
        kept = self._kept.get((thread_id, ns))
        if (
            kept is None
            or self._deferred
            or kept.total_changes != self.conn.total_changes
            or (checkpoint_id is not None and checkpoint_id != kept.entry.checkpoint_id)
            or self.conn.execute("PRAGMA data_version").fetchone()[0] != kept.data_version
        ):
            return None
        entry = kept.entry
        checkpoint = self._decode(entry.type_, entry.blob, entry.checkpoint_id)
        checkpoint["id"] = entry.checkpoint_id
        checkpoint["channel_values"] = {
            **checkpoint.get("channel_values", {}),  # the Nones the row holds
            **{
                channel: self.serde.loads_typed((value.type_, value.blob)) if type(value) is _KeptValue else value.hand_out(own)
                for channel, value in kept.values.items()
            },
        }
        return _checkpoint_tuple(thread_id, ns, checkpoint, entry.metadata_json, entry.parent_id, [])
