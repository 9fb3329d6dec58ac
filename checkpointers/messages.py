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
from collections import OrderedDict
from collections.abc import Callable, Iterable
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
from langgraph.checkpoint.base import Checkpoint, CheckpointTuple, DeltaChannelHistory, PendingWrite
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.types import _DeltaSnapshot

from checkpointers.codec import (
    KIND_DELTA_SNAPSHOT,
    KIND_MESSAGE,
    KIND_MESSAGE_DICT,
    KIND_MESSAGE_LIST,
    KIND_SERDE,
    pack_numbers,
    unpack_numbers,
)
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

MAX_CHAIN_DEPTH = 64
"""A stored message list is a delta against at most this many earlier lists."""


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


def numbered(value: Any, number: Callable[[BaseMessage], int]) -> tuple[int, Any]:
    """A task's write or a channel value with its messages as message numbers, as both engines
    store it: (kind, form). `number(message)` gives a message's number, storing it if it is new.
    The form is the packed numbers of a list (`KIND_MESSAGE_LIST`) or of one message
    (`KIND_MESSAGE`); for a dict holding messages (a graph's input, `KIND_MESSAGE_DICT`) the
    dict to serialise (`message_dict_form`); anything else is itself (`KIND_SERDE`),
    serialised as it is."""
    if is_message_list(value):
        return KIND_MESSAGE_LIST, pack_numbers([number(m) for m in value])
    if isinstance(value, BaseMessage):
        return KIND_MESSAGE, pack_numbers([number(value)])
    if is_message_dict(value):
        return KIND_MESSAGE_DICT, message_dict_form(value, lambda item: numbered(item, number))
    return KIND_SERDE, value


def message_dict_form(
    value: dict, ref: Callable[[Any], Any], is_ref: Callable[[Any], bool] = holds_messages
) -> dict[str, Any]:
    """A dict holding messages as both engines serialise it: `refs`, each message-holding
    key's `ref(item)` (its kind and packed numbers once stored), `rest`, the other keys'
    values, and `flags`, for each key in order whether it is in `refs`. The keys stay keys
    of the two dicts (the serialiser keeps any key a dict may have, a list of them it would not)."""
    refs = {key: ref(item) for key, item in value.items() if is_ref(item)}
    rest = {key: item for key, item in value.items() if key not in refs}
    return {"flags": [key in refs for key in value], "refs": refs, "rest": rest}


SERIALISED_KINDS = (KIND_SERDE, KIND_MESSAGE_DICT)
"""Kinds of stored values and writes that are serialised (and sealed in an encrypted store);
the others are message numbers, stored in clear."""


def referenced_numbers(kind: int, form: Any) -> list[int]:
    """The message numbers a stored value or write refers to: `form` is its column (packed
    numbers), or for `KIND_MESSAGE_DICT` the dict it deserialises to."""
    if kind in (KIND_MESSAGE_LIST, KIND_DELTA_SNAPSHOT, KIND_MESSAGE):
        return unpack_numbers(form)
    if kind == KIND_MESSAGE_DICT:
        return [n for _kind, packed in form["refs"].values() for n in unpack_numbers(packed)]
    return []


def from_numbered(kind: int, form: Any, messages: dict[int, BaseMessage], given: set[int] | None = None) -> Any:
    """A write or value stored by `numbered` (not `KIND_SERDE`), back from its form and its
    messages by number (new objects, each its own: a write is the caller's own). `given`: the
    numbers already handed out from `messages` by earlier calls (updated here)."""
    given = set() if given is None else given

    def message(no: int) -> BaseMessage:
        found = messages[no]
        if no in given:  # the same object twice in a list, stored once: two objects again
            return found.model_copy(deep=True)
        given.add(no)
        return found

    def value(kind: int, form: Any) -> Any:
        if kind == KIND_MESSAGE_DICT:
            refs, rest = form["refs"], form["rest"]
            parts = {key: value(ref_kind, packed) for key, (ref_kind, packed) in refs.items()}
            if "flags" not in form:  # written before `flags`: the keys in order
                return {key: parts[key] if key in parts else rest[key] for key in form["order"]}
            in_refs, in_rest = iter(parts.items()), iter(rest.items())
            return dict(next(in_refs) if flag else next(in_rest) for flag in form["flags"])
        nos = unpack_numbers(form)
        if kind == KIND_MESSAGE:
            return message(nos[0])
        if kind == KIND_MESSAGE_LIST:
            return [message(n) for n in nos]
        raise RuntimeError(f"unknown stored value kind {kind}")

    return value(kind, form)


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

KEPT_OBJECTS_READ = "__threadkeeper_kept_objects"
"""Put in a read's `configurable` by this project's own `update_state` calls (the sessions
API, `ThreadChatHistory`), whose reads hand their objects to no caller (see `hands_out_kept`).
LangGraph keeps keys starting with "__" out of checkpoint metadata."""


def hands_out_kept(configurable: dict[str, Any]) -> bool:
    """Whether a checkpoint read gets the kept objects of its message lists (`StoredList.hand_out`,
    checked against their snapshots) rather than new copies: the read a LangGraph run starts from
    (`__pregel_runtime` in its config), or one marked `KEPT_OBJECTS_READ`. Every other read
    (`get_state`, history, `list`) gets its own copies, as from a stock saver. Copying costs
    2-4 us a message, so a read that copies grows with the thread."""
    return "__pregel_runtime" in configurable or KEPT_OBJECTS_READ in configurable


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
    return _private_copy(message.__dict__)


def _private_copy(value: Any) -> Any:
    """`value` copied all the way down as `_copy_fields` does, except that an empty dict or
    list becomes the one shared `_NO_ITEMS` object of its kind. A snapshot is only
    compared, never changed or handed out (`restored` copies it), and most of a message's
    containers are empty: comparing them with shared objects the processor already
    holds, rather than with one copy per message spread over memory, cuts the cost of
    `StoredList.intact` on a long thread by about a quarter."""
    kind = value.__class__
    if kind is dict:
        return {k: _private_copy(v) if v.__class__ in _CONTAINERS else v for k, v in value.items()} if value else _NO_ITEMS[dict]
    if kind is list:
        return [_private_copy(v) if v.__class__ in _CONTAINERS else v for v in value] if value else _NO_ITEMS[list]
    return value


_NO_ITEMS: dict[type, Any] = {dict: {}, list: []}


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


class ListCache:
    """Recently read or written message lists, bounded by total message count.

    Keys are `(thread_key, value_no)`. Neither number is ever reused (an engine's
    thread keys only grow, value numbers come from a per-thread counter), and value
    rows never change after they are written, so an entry can never go stale.
    Entries are also indexed by thread, so forgetting a thread costs its own
    entries, not a walk over the whole cache.
    """

    def __init__(self, max_messages: int) -> None:
        self.max_messages = max_messages
        self._entries: OrderedDict[tuple[int, int], StoredList] = OrderedDict()
        self._size = 0
        self._by_thread: dict[int, set[int]] = {}
        """thread_key -> value numbers of its entries."""
        self._latest: dict[int, dict[tuple[str, str], int]] = {}
        """thread_key -> (ns, channel) -> newest value number stored or read."""

    def get(self, thread_key: int, value_no: int) -> StoredList | None:
        entry = self._entries.get((thread_key, value_no))
        if entry is not None:
            self._entries.move_to_end((thread_key, value_no))
        return entry

    def latest(self, thread_key: int, ns: str, channel: str) -> StoredList | None:
        value_no = self._latest.get(thread_key, {}).get((ns, channel))
        return None if value_no is None else self.get(thread_key, value_no)

    def add(self, thread_key: int, ns: str, channel: str, entry: StoredList) -> None:
        key = (thread_key, entry.value_no)
        if key not in self._entries:
            self._size += len(entry.nos)
            self._by_thread.setdefault(thread_key, set()).add(entry.value_no)
        self._entries[key] = entry
        self._entries.move_to_end(key)
        latest = self._latest.setdefault(thread_key, {})
        if latest.get((ns, channel), 0) < entry.value_no:
            latest[(ns, channel)] = entry.value_no
        while self._size > self.max_messages and len(self._entries) > 1:
            (old_thread, old_no), old = self._entries.popitem(last=False)
            self._size -= len(old.nos)
            numbers = self._by_thread[old_thread]
            numbers.discard(old_no)
            if not numbers:
                del self._by_thread[old_thread]

    def forget_threads(self, thread_keys: Iterable[int]) -> None:
        for thread_key in thread_keys:
            for value_no in self._by_thread.pop(thread_key, ()):
                self._size -= len(self._entries.pop((thread_key, value_no)).nos)
            self._latest.pop(thread_key, None)


def encode_list(
    base: StoredList | None,
    messages: list[BaseMessage],
    store: Callable[[BaseMessage], int],
    value_no: Callable[[], int],
) -> tuple[StoredList, bytes, int | None, int | None]:
    """A message list to store as a value: the list as stored, its packed numbers, and its
    `(base_no, keep)` when it is a delta of `base` (the channel's newest stored list).

    `store(message)` gives a message's number, storing it if it is new; only messages
    not already in `base` (by identity, or by class and fields) are given to it.
    `value_no()` allocates the new value's number. Every `MAX_CHAIN_DEPTH` links, or
    when more is new than kept, the list is stored whole."""
    nos: list[int]
    snaps: list[dict]
    keep = 0
    if base is not None:
        n_base = len(base.objs)
        # The base's messages, unchanged since stored (see `StoredList`): the same
        # objects, or others with the same class and fields (a copy, a cold read).
        prefix_same = len(messages) >= n_base and (
            all(map(operator.is_, messages, base.objs))
            or (
                list(map(FIELDS, messages[:n_base])) == base.snaps
                and all(map(operator.is_, map(type, messages[:n_base]), map(type, base.objs)))
            )
        )
        if prefix_same:
            fresh = messages[n_base:]
            nos = base.nos + [store(m) for m in fresh]
            snaps = base.snaps + [snapshot(m) for m in fresh]
            keep = n_base
        else:
            intact = {
                id(o): (n, snap)
                for o, n, snap in zip(base.objs, base.nos, base.snaps)
                if o.__dict__ == snap
            }
            nos, snaps = [], []
            for i, m in enumerate(messages):
                found = intact.get(id(m))
                if found is None and i < n_base and type(m) is type(base.objs[i]) and m.__dict__ == base.snaps[i]:
                    found = base.nos[i], base.snaps[i]  # a copy of the stored message, as stored
                nos.append(found[0] if found else store(m))
                snaps.append(found[1] if found else snapshot(m))
            while keep < min(len(nos), len(base.nos)) and nos[keep] == base.nos[keep]:
                keep += 1
    else:
        nos = [store(m) for m in messages]
        snaps = [snapshot(m) for m in messages]
    value_no = value_no()
    appended = len(nos) - keep
    if base is None or base.depth + 1 >= MAX_CHAIN_DEPTH or appended > max(keep, 16):
        entry = StoredList(value_no, nos, list(messages), 0, snaps)
        return entry, pack_numbers(nos), None, None
    entry = StoredList(value_no, nos, list(messages), base.depth + 1, snaps)
    return entry, pack_numbers(nos[keep:]), base.value_no, keep


def chain_numbers(start: StoredList | None, links: list[tuple[bytes, int | None]]) -> list[int]:
    """A stored list's message numbers from its delta chain: `links` newest first, each (packed
    numbers, keep), a whole list where keep is None, else a delta that keeps the first `keep`
    numbers of the list before it; `start` is the cached list the walk stopped at, if any."""
    nos = list(start.nos) if start else []
    for blob, keep in reversed(links):
        tail = unpack_numbers(blob)
        if keep is None:
            nos = tail
        else:  # in place: a link changes the end of the list, not the thousands before it
            del nos[keep:]
            nos.extend(tail)
    return nos


def delta_channel_history(
    channels: Iterable[str], collected: dict[str, list[PendingWrite]], seeds: dict[str, Any]
) -> dict[str, DeltaChannelHistory]:
    """`get_delta_channel_history`'s answer from what an engine's walk up the parent chain
    found: each channel's writes (collected newest first) oldest first, and its seed
    (the value it started from) where one was found."""
    result: dict[str, DeltaChannelHistory] = {}
    for channel in channels:
        entry: DeltaChannelHistory = {"writes": list(reversed(collected[channel]))}
        if channel in seeds:
            entry["seed"] = seeds[channel]
        result[channel] = entry
    return result


def checkpoint_tuple(
    thread_id: str, ns: str, checkpoint: Checkpoint, metadata: dict | str, parent_id: str | None, pending_writes: list
) -> CheckpointTuple:
    """`metadata`: a new dict, or JSON text."""
    def config(checkpoint_id: str) -> RunnableConfig:
        return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint_id}}

    return CheckpointTuple(
        config=config(checkpoint["id"]),
        checkpoint=checkpoint,
        metadata=json.loads(metadata) if type(metadata) is str else metadata,
        parent_config=config(parent_id) if parent_id else None,
        pending_writes=pending_writes,
    )
