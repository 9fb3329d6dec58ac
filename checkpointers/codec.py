"""Compact encodings for lists of message numbers.

A list of messages is stored as the numbers of its messages (see
`schema.messages`). Numbers grow by small steps within a thread, so they are
stored as differences in the narrowest integer array that holds them, and
zlib-compressed when that helps. Everything here runs in C (array, zlib,
itertools): encoding or decoding 2,000 numbers costs microseconds.
"""

from __future__ import annotations

import zlib
from array import array
from itertools import accumulate

# Value kinds, in `channel_values.kind` and `writes.kind`.
KIND_SERDE = 0  # the serializer's own (type, bytes)
KIND_MESSAGE_LIST = 1  # a list of messages: packed message numbers
KIND_DELTA_SNAPSHOT = 2  # LangGraph's _DeltaSnapshot of a list of messages
KIND_EMPTY = 3  # the channel was updated but holds no value
KIND_MESSAGE = 4  # a single message

_TYPECODES = (("b", 1 << 7), ("h", 1 << 15), ("i", 1 << 31), ("q", 1 << 63))
_COMPRESS_ABOVE = 96  # bytes; below this zlib's header costs more than it saves


def pack_numbers(numbers: list[int]) -> bytes:
    """Encode a list of integers; `unpack_numbers` restores it exactly."""
    if not numbers:
        return b""
    deltas = [numbers[0]]
    deltas.extend(b - a for a, b in zip(numbers, numbers[1:]))
    lo, hi = min(deltas), max(deltas)
    for code, bound in _TYPECODES:
        if -bound <= lo and hi < bound:
            break
    raw = array(code, deltas).tobytes()
    if len(raw) > _COMPRESS_ABOVE:
        packed = zlib.compress(raw, 6)
        if len(packed) < len(raw):
            return b"z" + code.encode() + packed
    return b"r" + code.encode() + raw


def unpack_numbers(data: bytes | None) -> list[int]:
    if not data:
        return []
    mode, code, body = data[:1], data[1:2].decode(), data[2:]
    if mode == b"z":
        body = zlib.decompress(body)
    deltas = array(code)
    deltas.frombytes(body)
    return list(accumulate(deltas))
