"""The storage model's messages, engine-neutral: how a message is stored, and a stored list.

Both engines store a thread's messages once each, numbered per thread, and a
message list as the numbers it holds (see `docs/storage.md`). This module is
what they share about the Python side of that: which messages are stored as
their bare fields (`MESSAGE_CLASSES`, `dump_message`, `load_message`), a list
as stored and handed out (`StoredList`, `snapshot`, `restored`), and the shape
of what a read returns (`checkpoint_tuple`, `MessagePage`). Nothing here
touches a database.
"""

from __future__ import annotations

import json
import operator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import Checkpoint, CheckpointTuple
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.types import _DeltaSnapshot

from checkpointers.storable import check_id

# Messages of these exact classes are stored as their field values and rebuilt
# by `rebuild_message` (what `model_construct` builds, faster): the fields were validated when the message was made,
# and skipping a second validation makes reading a long thread twice as fast.
# Anything else (subclasses, extra fields) goes through the serializer whole.
MESSAGE_CLASSES: dict[str, type[BaseMessage]] = {
    "human": HumanMessage,
    "ai": AIMessage,
    "system": SystemMessage,
    "tool": ToolMessage,
    "function": FunctionMessage,
    "chat": ChatMessage,
}
MESSAGE_TAGS = {cls: tag for tag, cls in MESSAGE_CLASSES.items()}


def rebuild_message(cls: type[BaseMessage], fields: dict[str, Any]) -> BaseMessage:
    """What `cls.model_construct(**fields)` builds when `fields` holds every field.

    Pydantic's own model_construct spends most of its time looking for missing
    fields and defaults; stored messages have none missing. A test checks that
    the two agree for every class in `MESSAGE_CLASSES`.
    """
    message = cls.__new__(cls)
    object.__setattr__(message, "__dict__", fields)
    object.__setattr__(message, "__pydantic_fields_set__", set(fields))
    object.__setattr__(message, "__pydantic_extra__", {})
    object.__setattr__(message, "__pydantic_private__", None)
    return message

def load_message(serde: SerializerProtocol, type_: str, blob: bytes) -> BaseMessage:
    """A message from its plain stored form (see `dump_message`)."""
    if type_.startswith("lc."):
        tag, _, inner = type_[3:].partition(":")
        return rebuild_message(MESSAGE_CLASSES[tag], serde.loads_typed((inner, blob)))
    return serde.loads_typed((type_, blob))


def dump_message(serde: SerializerProtocol, message: BaseMessage) -> tuple[str, bytes]:
    """A message in its plain stored form: the fields of a `MESSAGE_CLASSES` message
    (typed `lc.<tag>:<serde type>`), anything else through the serializer whole."""
    tag = MESSAGE_TAGS.get(type(message))
    if tag is None or message.__pydantic_extra__:
        return serde.dumps_typed(message)
    type_, blob = serde.dumps_typed(dict(message.__dict__))
    return f"lc.{tag}:{type_}", blob


@dataclass(frozen=True)
class MessagePage:
    """Some of a thread's messages: `messages` are indexes `start`.. of `total`."""

    messages: list[BaseMessage]
    total: int
    start: int


def checked_owner(*candidates: Any) -> str | None:
    """`owner`, refused if the store cannot keep it exactly."""
    found = owner(*candidates)
    return found if found is None else check_id(found, "user id")


def owner(*candidates: Any) -> str | None:
    """The first non-empty user id (the LangGraph server passes "" when there is none)."""
    for candidate in candidates:
        if candidate not in (None, ""):
            return str(candidate)
    return None


def utc_now() -> str:
    """Now, as the store writes times: ISO 8601 in UTC with microseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def is_message_list(value: Any) -> bool:
    if type(value) is not list or not value:
        return False
    return all(issubclass(t, BaseMessage) for t in set(map(type, value)))


def copy_message_list(value: Any) -> Any:
    """A new list of the same messages (in a `_DeltaSnapshot` if it was one); None if `value` is not one."""
    if is_message_list(value):
        return list(value)
    if isinstance(value, _DeltaSnapshot) and is_message_list(value.value):
        return _DeltaSnapshot(list(value.value))
    return None


def holds_messages(value: Any) -> bool:
    """A message, or a list of them."""
    return isinstance(value, BaseMessage) or is_message_list(value)


def is_message_dict(value: Any) -> bool:
    """A dict with messages among its values: a graph's input, e.g. {"messages": [HumanMessage(...)]}."""
    return type(value) is dict and any(map(holds_messages, value.values()))


@dataclass
class StoredList:
    """A message list as stored (`nos`), as Python objects (`objs`), and the
    fields each object had when it was stored (`snaps`, see `snapshot`).

    The objects go to the LangGraph run that starts from the list, and from it
    to whoever called `invoke`, who may change one in place. The snapshots are
    never handed out: an object whose fields no longer equal its snapshot has
    been changed since, and `hand_out` puts back a new one rebuilt from the
    snapshot. Comparing every object's fields with its snapshot is one C-level
    list comparison (0.4 ms for 1,000 messages in a run here), against 2-4 us per
    message to copy them at each hand-out. A copy that comes back changed (the
    human-in-the-loop edit of what `get_state` returned, then `update_state`)
    is stored as a new message by the engine's list encoder; the same object changed in
    place by a node while its run holds it is not stored (nodes return
    updates), and the next read gives the stored version."""

    value_no: int
    nos: list[int]
    objs: list[BaseMessage]
    depth: int
    snaps: list[dict]

    def intact(self) -> bool:
        """Whether no object of the list was changed since it was stored."""
        return list(map(FIELDS, self.objs)) == self.snaps

    def hand_out(self) -> list[BaseMessage]:
        """A new list of the messages as stored: an object a caller changed since is
        replaced (here too) by a new one rebuilt from its snapshot."""
        objs = self.objs
        if not self.intact():
            for i, (obj, snap) in enumerate(zip(objs, self.snaps)):
                if obj.__dict__ != snap:
                    objs[i] = restored(obj, snap)
        return list(objs)

    def copies(self) -> list[BaseMessage]:
        """New objects of the messages as stored (rebuilt from the snapshots, so nothing
        a caller did to the kept objects shows)."""
        return [restored(obj, snap) for obj, snap in zip(self.objs, self.snaps)]

    def known(self) -> dict[int, tuple[BaseMessage, dict]]:
        """Message number -> (object as stored, snapshot)."""
        return dict(zip(self.nos, zip(self.hand_out(), self.snaps)))


FIELDS = operator.attrgetter("__dict__")


def _copy_fields(value: Any) -> Any:
    """`value` with its dicts and lists copied all the way down (other values are shared:
    a message's fields hold JSON-like data, and strings and numbers cannot change)."""
    kind = value.__class__
    if kind is dict:
        return {k: _copy_fields(v) if v.__class__ in _CONTAINERS else v for k, v in value.items()}
    if kind is list:
        return [_copy_fields(v) if v.__class__ in _CONTAINERS else v for v in value]
    return value


_CONTAINERS = frozenset((dict, list))


def snapshot(message: BaseMessage) -> dict:
    """A private copy of a message's fields, equal to them until someone changes the message."""
    return _copy_fields(message.__dict__)


def restored(message: BaseMessage, snap: dict) -> BaseMessage:
    """A new message of the same class whose fields are (a copy of) `snap`."""
    restored = _new_object(message.__class__)
    _set_attribute(restored, "__dict__", _copy_fields(snap))
    _set_attribute(restored, "__pydantic_fields_set__", set(message.__pydantic_fields_set__))
    extra, private = message.__pydantic_extra__, message.__pydantic_private__
    _set_attribute(restored, "__pydantic_extra__", None if extra is None else _copy_fields(extra))
    _set_attribute(restored, "__pydantic_private__", None if private is None else _copy_fields(private))
    return restored


_new_object, _set_attribute = object.__new__, object.__setattr__


def checkpoint_tuple(
    thread_id: str, ns: str, checkpoint: Checkpoint, metadata_json: str, parent_id: str | None, pending_writes: list
) -> CheckpointTuple:
    def config(checkpoint_id: str) -> RunnableConfig:
        return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint_id}}

    return CheckpointTuple(
        config=config(checkpoint["id"]),
        checkpoint=checkpoint,
        metadata=json.loads(metadata_json),
        parent_config=config(parent_id) if parent_id else None,
        pending_writes=pending_writes,
    )
