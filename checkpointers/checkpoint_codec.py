"""A compact, exact encoding of a checkpoint's bookkeeping (everything but its values).

What a checkpoint row stores is small and regular: a format number, a time
stamp, and which version of which channel each node has seen. Most of its bytes
are the versions themselves: this saver's versions are floats with a random
fraction (see `ThreadSaver.get_next_version`), eight bytes of noise each, and a
checkpoint names the same few versions several times. Encoded generically
(msgpack) such a dict is about 240 bytes, and deflate with a preset dictionary
takes it to about 85, at a cost of tens of microseconds per checkpoint on the
path every chat turn waits for.

This encoding writes each distinct version once, names the usual channels and
nodes by a one-byte code, and the time stamp as an integer of microseconds.
It needs no compression and decodes to a dict equal to the one encoded.
`encode` returns None for any dict it cannot reproduce exactly (other keys,
versions that are not floats, names that are not strings): the caller stores
those the generic way.

Layout: msgpack `[v, ts, versions, indexes, shape]`.

* `ts`: microseconds since the epoch when the stamp is LangGraph's usual UTC
  ISO form (checked by formatting it back), else the string itself. Since
  `tk.cp2`, `[difference]` from the time in the checkpoint's id (a version-6
  UUID, made microseconds after the stamp): 1-3 bytes instead of 9.
* `versions`: the distinct versions as little-endian doubles, one bytes value;
  `indexes`: for each version of `channel_versions` and then of `versions_seen`,
  in order, its place in `versions`.
* `shape`: the names, msgpack `[extra_names, channels, seen, updated]`. It is the
  same for most checkpoints of a graph, so it is encoded once per process and kept.
  A name is a code: `0 <= c < len(NAMES)` is `NAMES[c]`, `c >= len(NAMES)` is
  `extra_names[c - len(NAMES)]`, and a negative code `-1 - c` is `"branch:to:"`
  followed by the name of code `c` (LangGraph's edge channels). `channels` are
  the codes of `channel_versions`' keys; `seen` is flat: for each node its code,
  how many channels it has seen, and their codes. `updated` is the list of codes
  of `updated_channels`, None when that was None, False when it was absent.

Since `tk.cp2` the row also holds what was stored beside the checkpoint (measured
through the agent graph, 1,000 turns, four checkpoints a turn):

* Its metadata, as `[source, step, parents, rest]`: `source` a code of
  `SOURCES`, `step` and `parents` as they are, and every other key in `rest`,
  flat (`[key, value, ...]`, a key of `METADATA_KEYS` as its code). A slot is
  None when the key is absent or unusual, and the key is then in `rest`. The
  JSON text this replaces was about 59 bytes a checkpoint
  (`{"source":"loop","step":118,"parents":{},"user_id":"bench"}`), this is 13.
  Metadata msgpack cannot hold exactly makes the checkpoint one for the generic way.
* Which channels hold None (LangGraph's `branch:to:*` triggers, when set), as a
  bit mask over `channel_versions`: the saver writes no value row for them, which
  were two of the six rows of a turn's values (about 130 bytes with their index).

* Its shape without `updated`, `[extra_names, channels, seen]`, which is the same
  for every checkpoint of a thread of the agent graph: as its place in
  `KNOWN_SHAPES` when it is one of those.

Layout of `tk.cp2`: msgpack `[v, ts, versions, indexes, shape, updated, nones, metadata]`.
`tk.cp1` rows (`[v, ts, versions, indexes, shape]`, `updated` in the shape) still decode.

`NAMES`, `SOURCES` and `METADATA_KEYS` are part of the stored format: never
change them; add a new type tag.
"""

from __future__ import annotations

import random
import struct
from datetime import datetime, timedelta, timezone
from typing import Any

import ormsgpack
from langgraph.checkpoint.serde.types import TASKS

from checkpointers.storable import check_text

TYPE = "tk.cp2"
"""The `checkpoints.type` of a row in this encoding."""
TYPES = ("tk.cp1", TYPE)
"""Every `checkpoints.type` of this encoding: `tk.cp1` rows were written before metadata moved in."""

NAMES = (
    "__start__",
    "__input__",
    "__interrupt__",
    "__pregel_tasks",
    "__root__",
    "messages",
    "model",
    "tools",
    "agent",
    "trim",
)
_CODES = {name: code for code, name in enumerate(NAMES)}
SOURCES = ("input", "loop", "update", "fork")
_SOURCE_CODES = {source: code for code, source in enumerate(SOURCES)}
METADATA_KEYS = ("user_id", "run_id", "thread_id", "graph_id", "assistant_id", "counters_since_delta_snapshot")
_METADATA_CODES = {key: code for code, key in enumerate(METADATA_KEYS)}
_BRANCH = "branch:to:"
_KEYS = ("v", "ts", "channel_versions", "versions_seen", "updated_channels")
_KEY_SET = frozenset(_KEYS)
_REQUIRED = frozenset(_KEYS[:4])
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_SECOND = timedelta(seconds=1)


def _ts_micros(ts: Any) -> int | str | None:
    """A time stamp as microseconds if `_ts_text` gives it back exactly, else as it is."""
    if type(ts) is not str:
        return None
    if len(ts) != 32 or ts[19] != "." or not ts.endswith("+00:00") or not (ts.isascii() and ts[20:26].isdigit()):
        return ts
    seconds = _SECONDS.get(ts[:19])
    if seconds is None:
        try:
            at = datetime.fromisoformat(ts)
        except ValueError:
            return ts
        if at.isoformat() != ts:
            return ts
        seconds = (at.replace(microsecond=0) - _EPOCH) // _SECOND
        if len(_SECONDS) >= 64:
            _SECONDS.clear()
        _SECONDS[ts[:19]] = seconds
    fraction = int(ts[20:26])
    if fraction == 0:  # isoformat() leaves out a zero fraction
        return ts
    return seconds * 1_000_000 + fraction


_SECONDS: dict[str, int] = {}
"""Recent whole seconds of time stamps: a turn's checkpoints share theirs."""


def _ts_text(micros: int) -> str:
    return (_EPOCH + timedelta(microseconds=micros)).isoformat()


_UUID_EPOCH_TICKS = 0x01B21DD213814000
"""100-ns intervals from the UUID epoch (1582-10-15) to the Unix epoch."""


def _id_micros(checkpoint_id: Any) -> int | None:
    """The time in a version-6 UUID (LangGraph's checkpoint ids; as text or as stored, 16
    bytes) in microseconds since the epoch; None for any other id."""
    if type(checkpoint_id) is str and len(checkpoint_id) == 36:
        try:
            checkpoint_id = bytes.fromhex(checkpoint_id.replace("-", ""))
        except ValueError:
            return None
    if type(checkpoint_id) is not bytes or len(checkpoint_id) != 16 or checkpoint_id[6] >> 4 != 6:
        return None
    ticks = int.from_bytes(checkpoint_id[:6], "big") << 12 | (checkpoint_id[6] & 0x0F) << 8 | checkpoint_id[7]
    return (ticks - _UUID_EPOCH_TICKS) // 10


def _shape(
    channels: tuple[str, ...], nodes: tuple[str, ...], seen: tuple[tuple[str, ...], ...], updated: Any
) -> list | None:
    """The names part of an encoding: `[extra_names, channel codes, versions_seen layout, updated]`."""
    extra: list[str] = []
    codes = dict(_CODES)

    def code(name: Any) -> int:
        found = codes.get(name)
        if found is None:
            if type(name) is not str:
                raise TypeError(name)
            target = code(name[len(_BRANCH) :]) if name.startswith(_BRANCH) and len(name) > len(_BRANCH) else -1
            if target >= 0:
                found = -1 - target
            else:
                found = len(NAMES) + len(extra)
                extra.append(name)
            codes[name] = found
        return found

    try:
        channel_codes = [code(channel) for channel in channels]
        layout: list[int] = []
        for node, node_channels in zip(nodes, seen):
            layout += (code(node), len(node_channels), *map(code, node_channels))
        if updated is not None and updated is not False:
            updated = [code(channel) for channel in updated]
    except TypeError:
        return None
    return [extra, channel_codes, layout, updated]


_AGENT_CHANNELS = ("__start__", "messages", "branch:to:trim", "window", "branch:to:model")
_AGENT_SEEN = {"__input__": (), "__start__": ("__start__",), "trim": ("branch:to:trim",), "model": ("branch:to:model",)}
_TOOLS_SEEN = {**_AGENT_SEEN, "tools": ("branch:to:tools",)}
KNOWN_SHAPES = (
    (_AGENT_CHANNELS, _AGENT_SEEN),
    (_AGENT_CHANNELS + ("branch:to:tools",), _TOOLS_SEEN),
    (_AGENT_CHANNELS + ("summary",), _AGENT_SEEN),
    (_AGENT_CHANNELS + ("branch:to:tools", "summary"), _TOOLS_SEEN),
    (_AGENT_CHANNELS + ("summary", "branch:to:tools"), _TOOLS_SEEN),
    (_AGENT_CHANNELS + ("summary", "facts"), _AGENT_SEEN),
    (_AGENT_CHANNELS + ("branch:to:tools", "summary", "facts"), _TOOLS_SEEN),
)
"""The channels and `versions_seen` of threadkeeper's agent graph (`graph/agent.py`) once a
thread has had a turn, without and with tools, summary and kept facts: a `tk.cp2` row
names one of them by its place here (one byte) instead of holding it (about 28 bytes,
in each of a turn's four checkpoints). Any other shape is held by the row. Part of the
stored format: append only."""


def _packed_shape(channels: tuple[str, ...], seen: dict[str, tuple[str, ...]]) -> bytes:
    extra, channel_codes, layout, _ = _shape(channels, tuple(seen), tuple(seen.values()), False)
    return ormsgpack.packb([extra, channel_codes, layout])


_KNOWN_PACKED = [_packed_shape(channels, seen) for channels, seen in KNOWN_SHAPES]
_KNOWN_PLACES = {packed: place for place, packed in enumerate(_KNOWN_PACKED)}

_SHAPES: dict[tuple, tuple[int | bytes, Any] | None] = {}
_SHAPES_KEPT = 512
_MISSING = object()


def encode(
    stored: dict[str, Any], metadata: dict[str, Any] | None = None, nones: Any = (), checkpoint_id: Any = None
) -> bytes | None:
    """The encoding of a checkpoint dict without its id and values; None if it does not fit.

    `metadata`: the checkpoint's metadata as JSON gives it back (None: kept elsewhere);
    `nones`: the channels whose value is None, which `decode` gives back as such;
    `checkpoint_id`: the checkpoint's id, which `decode_row` is then given too."""
    if not (_REQUIRED <= stored.keys() <= _KEY_SET):
        return None
    v, ts = stored["v"], _ts_micros(stored["ts"])
    channel_versions, versions_seen = stored["channel_versions"], stored["versions_seen"]
    updated = stored.get("updated_channels", False)
    if type(v) is not int or ts is None or type(channel_versions) is not dict or type(versions_seen) is not dict:
        return None
    if updated is not None and updated is not False and type(updated) is not list:
        return None
    if not all(type(seen) is dict for seen in versions_seen.values()):
        return None
    seen = tuple(map(dict.keys, versions_seen.values()))
    key = (
        tuple(channel_versions),
        tuple(versions_seen),
        tuple(map(tuple, seen)),
        updated if updated is None or updated is False else tuple(updated),
    )
    shape = _SHAPES.get(key, _MISSING)
    if shape is _MISSING:
        if len(_SHAPES) >= _SHAPES_KEPT:
            _SHAPES.clear()
        shape = _SHAPES[key] = _shape(key[0], key[1], key[2], updated)
        if shape is not None:
            packed = ormsgpack.packb(shape[:3])
            shape = _SHAPES[key] = (_KNOWN_PLACES.get(packed, packed), shape[3])
    if shape is None:
        return None
    shape, updated = shape
    values = [*channel_versions.values()]
    for node_versions in versions_seen.values():
        values += node_versions.values()
    distinct = dict.fromkeys(values)
    # 0.0 and -0.0 are equal keys, so they would come back as one of them.
    if not all(type(value) is float for value in distinct) or 0.0 in distinct:
        return None
    index = {value: i for i, value in enumerate(distinct)}
    mask = 0
    if nones:
        for bit, channel in enumerate(channel_versions):
            if channel in nones:
                mask |= 1 << bit
    base = _id_micros(checkpoint_id) if type(ts) is int else None
    if base is not None and -(2**31) < ts - base < 2**31:
        ts = [ts - base]
    row = [v, ts, struct.pack(f"<{len(index)}d", *index), [index[x] for x in values], shape, updated, mask, None]
    if metadata is not None:
        row[7] = _metadata(metadata)
    try:
        return ormsgpack.packb(row)
    except TypeError:  # metadata msgpack cannot hold (an integer beyond 64 bits)
        return None


def _metadata(metadata: dict[str, Any]) -> list:
    """`[source, step, parents, rest]` (see the module's docstring)."""
    source, step, parents = metadata.get("source"), metadata.get("step"), metadata.get("parents")
    source = _SOURCE_CODES.get(source) if type(source) is str else None
    step = step if type(step) is int else None
    parents = parents if type(parents) is dict else None
    rest: list[Any] = []
    for key, value in metadata.items():
        if (key == "source" and source is not None) or (key == "step" and step is not None) or (
            key == "parents" and parents is not None
        ):
            continue
        rest += (_METADATA_CODES.get(key, key), value)
    return [source, step, parents, rest]


def _unpack_metadata(packed: list) -> dict[str, Any]:
    source, step, parents, rest = packed
    metadata: dict[str, Any] = {}
    if source is not None:
        metadata["source"] = SOURCES[source]
    if step is not None:
        metadata["step"] = step
    if parents is not None:
        metadata["parents"] = parents
    for i in range(0, len(rest), 2):
        key = rest[i]
        metadata[METADATA_KEYS[key] if type(key) is int else key] = rest[i + 1]
    return metadata


def decode(blob: bytes, checkpoint_id: Any = None) -> dict[str, Any]:
    """The checkpoint dict `encode` was given, with `"channel_values"`: the channels
    that held None (`nones`), when there were any."""
    return decode_row(blob, checkpoint_id)[0]


def decode_row(blob: bytes, checkpoint_id: Any = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The checkpoint (as `decode`) and the metadata `encode` was given, None if it was not
    given or could not be held (`tk.cp1` rows: never)."""
    v, ts, packed_versions, indexes, shape, *since_cp2 = ormsgpack.unpackb(blob)
    if since_cp2:
        updated, mask, metadata = since_cp2
        extra, channel_codes, layout = ormsgpack.unpackb(_KNOWN_PACKED[shape] if type(shape) is int else shape)
    else:
        mask, metadata = 0, None
        extra, channel_codes, layout, updated = ormsgpack.unpackb(shape)
    versions = struct.unpack(f"<{len(packed_versions) // 8}d", packed_versions)
    names = NAMES + tuple(extra)

    def name(code: int) -> str:
        return names[code] if code >= 0 else _BRANCH + names[-1 - code]

    values = iter([versions[i] for i in indexes])
    checkpoint: dict[str, Any] = {
        "v": v,
        "ts": ts if type(ts) is str else _ts_text(ts) if type(ts) is int else _ts_text(_id_micros(checkpoint_id) + ts[0]),
        "channel_versions": {name(code): next(values) for code in channel_codes},
    }
    seen: dict[str, dict[str, float]] = {}
    i = 0
    while i < len(layout):
        count = layout[i + 1]
        seen[name(layout[i])] = {name(code): next(values) for code in layout[i + 2 : i + 2 + count]}
        i += 2 + count
    checkpoint["versions_seen"] = seen
    if updated is not False:
        checkpoint["updated_channels"] = None if updated is None else [name(code) for code in updated]
    if mask:
        checkpoint["channel_values"] = {
            channel: None for bit, channel in enumerate(checkpoint["channel_versions"]) if mask >> bit & 1
        }
    return checkpoint, None if metadata is None else _unpack_metadata(metadata)


def next_version(current: Any) -> float | str:
    """The channel version after `current` (LangGraph's `get_next_version`, for both engines).

    Integer part counts updates; a random fraction keeps forked branches apart.
    A number, except after a version string: LangGraph's stock savers (and the
    `langgraph dev` runtime, which wraps a saver) write `"<32 digits>.<fraction>"`,
    and the next version must compare with the thread's others. LangGraph passes
    the checkpoint's highest version as `current`, so one thread keeps one kind."""
    if current is None:
        whole = 0
    elif isinstance(current, (int, float)):
        whole = int(current)
    else:
        return f"{int(str(current).split('.')[0]) + 1:032}.{random.random():.16f}"
    return whole + 1 + random.random() * 0.999


def run_goes_on(checkpoint: dict[str, Any], metadata: dict[str, Any]) -> bool:
    """Whether the run that put this checkpoint goes on after it: it is the run's input
    (source "input"), or a step's that triggered a node (`branch:to:<node>`) or pushed a
    task (`Send`). Such a checkpoint is followed by its tasks' writes and the next step's
    checkpoint, unless the run stops at a static `interrupt_before`/`interrupt_after` or its
    step limit. SQLite defers writing it; PostgreSQL leaves the thread's `updated_at` as it
    is for such a step's checkpoint (the run's input and its end set it)."""
    source = metadata.get("source")
    return source == "input" or (
        source == "loop"
        and any(c == TASKS or c.startswith("branch:to:") for c in checkpoint.get("updated_channels") or ())
    )


def none_channels(checkpoint: dict[str, Any]) -> list[str]:
    """The channels of a checkpoint whose value is None (what `encode` takes as `nones`)."""
    return [c for c, value in checkpoint["channel_values"].items() if value is None and c in checkpoint["channel_versions"]]


def values_to_store(
    checkpoint: dict[str, Any], new_versions: dict[str, Any], nones: list[str], held: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The channel values and new versions a saver writes value rows for. `held`: the checkpoint's
    row says which channels hold None (it is in this encoding), so they get no rows; else every
    None gets one, not only new ones, as a version first stored by a row that could say so has
    none of its own."""
    values = checkpoint["channel_values"]
    if nones and held:
        return {channel: value for channel, value in values.items() if value is not None}, new_versions
    if nones:
        return values, {**new_versions, **{channel: checkpoint["channel_versions"][channel] for channel in nones}}
    return values, new_versions


def checked_filter(filter: dict[str, Any] | None) -> dict[str, Any]:
    """A `list(filter=)` as both engines match it: in Python, against the metadata a `tk.cp2`
    row holds in its (maybe sealed) blob; text that cannot be stored exactly is refused."""
    checked: dict[str, Any] = {}
    for key, value in (filter or {}).items():
        key = check_text(str(key), "filter")
        if isinstance(value, str):
            check_text(value, "filter")
        checked[key] = value
    return checked


def matches(metadata: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether checkpoint metadata matches a `checked_filter` (as LangGraph's savers: a missing key matches None)."""
    return all(metadata.get(key) == value for key, value in wanted.items())
