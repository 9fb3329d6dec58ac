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
KIND_MESSAGE = 4  # a single message
KIND_MESSAGE_DICT = 5  # a dict holding messages, e.g. a graph's input

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


# -- compressed blobs ---------------------------------------------------------
#
# Serialised messages and checkpoints are small (a few hundred bytes) and repeat
# the same keys and class names, which plain zlib cannot exploit at that size.
# Deflate with a preset dictionary of those keys halves them. The dictionary is
# part of the file format: never edit ZDICT_V1; add a ZDICT_V2 and a new suffix.

ZDICT_V1 = (
    b'\x87\xa1v\x04\xa2ts\xd9 2026-01-01T00:00:00.000000+00:00\xa2id\xa0\xb0channel_versions\x85\xa9__start__\xcb?\xf8\x00\x00\x00\x00\x00\x00\xa8messages\xcb?\xf8\x00\x00\x00\x00\x00\x00\xafbranch:to:model\xcb?\xf8\x00\x00\x00\x00\x00\x00\xafbranch:to:tools\xcb?\xf8\x00\x00\x00\x00\x00\x00\xaebranch:to:trim\xcb?\xf8\x00\x00\x00\x00\x00\x00\xadversions_seen\x84\xa9__input__\x80\xa9__start__\x81\xa9__start__\xcb?\xf8\x00\x00\x00\x00\x00\x00\xa5model\x81\xafbranch:to:model\xcb?\xf8\x00\x00\x00\x00\x00\x00\xa5tools\x81\xafbranch:to:tools\xcb?\xf8\x00\x00\x00\x00\x00\x00\xb0updated_channels\x91\xa8messages\xadpending_sends\x90\x81\xa8messages\x90\xc7\xae\x05\x94\xbclangchain_core.messages.tool\xabToolMessage\x89\xa7content\xa0\xb1additional_kwargs\x80\xb1response_metadata\x80\xa4type\xa4tool\xa4name\xa0\xa2id\xa0\xactool_call_id\xa5call_\xa8artifact\xc0\xa6status\xa7success\xb3model_validate_json\xc7\x88\x05\x94\xbelangchain_core.messages.system\xadSystemMessage\x86\xa7content\xa0\xb1additional_kwargs\x80\xb1response_metadata\x80\xa4type\xa6system\xa4name\xc0\xa2id\xa0\xb3model_validate_json\xc8\x01Z\x05\x94\xbalangchain_core.messages.ai\xa9AIMessage\x89\xa7content\xa0\xb1additional_kwargs\x80\xb1response_metadata\x85\xaamodel_name\xa0\xadfinish_reason\xa4stop\xabtoken_usage\x80\xb2system_fingerprint\xc0\xaemodel_provider\xa6openai\xa4type\xa2ai\xa4name\xc0\xa2id\xa8lc_run--\xaatool_calls\x91\x84\xa4name\xa0\xa4args\x80\xa2id\xa5call_\xa4type\xa9tool_call\xb2invalid_tool_calls\x90\xaeusage_metadata\x83\xacinput_tokens\x00\xadoutput_tokens\x00\xactotal_tokens\x00\xb3model_validate_json\xc7\x85\x05\x94\xbdlangchain_core.messages.human\xacHumanMessage\x86\xa7content\xa0\xb1additional_kwargs\x80\xb1response_metadata\x80\xa4type\xa5human\xa4name\xc0\xa2id\xa0\xb3model_validate_json\xc7\xb4\x05\x94\xbalangchain_core.messages.ai\xa9AIMessage\x89\xa7content\xa0\xb1additional_kwargs\x80\xb1response_metadata\x80\xa4type\xa2ai\xa4name\xc0\xa2id\xa8lc_run--\xaatool_calls\x90\xb2invalid_tool_calls\x90\xaeusage_metadata\xc0\xb3model_validate_json'
)
COMPRESSED_SUFFIX = "+z1"
_COMPRESS_MIN = 48


def deflate(data: bytes) -> bytes:
    """Raw deflate with the preset dictionary; `inflate` reverses it."""
    packer = zlib.compressobj(6, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, ZDICT_V1)
    return packer.compress(data) + packer.flush()


def inflate(data: bytes) -> bytes:
    unpacker = zlib.decompressobj(-15, ZDICT_V1)
    return unpacker.decompress(data) + unpacker.flush()


def compress_blob(type_: str, data: bytes) -> tuple[str, bytes]:
    """Deflate a serializer's (type, bytes) when that makes it smaller; the type says so."""
    if len(data) < _COMPRESS_MIN:
        return type_, data
    packed = deflate(data)
    if len(packed) >= len(data):
        return type_, data
    return type_ + COMPRESSED_SUFFIX, packed


def decompress_blob(type_: str, data: bytes) -> tuple[str, bytes]:
    if not type_.endswith(COMPRESSED_SUFFIX):
        return type_, data
    return type_[: -len(COMPRESSED_SUFFIX)], inflate(data)


# -- checkpoint and task ids ---------------------------------------------------
#
# LangGraph's ids are canonical UUID strings (36 characters); stored as their 16
# bytes they take less than half the room in every key. Byte order equals the
# text order of lowercase hex, so ORDER BY still sorts them as the text would.
# Any other string is stored as it is.

def db_id(value: str) -> str | bytes:
    if len(value) == 36 and value[8] == value[13] == value[18] == value[23] == "-":
        digits = value.replace("-", "")
        if len(digits) == 32 and digits == digits.lower():
            try:
                raw = bytes.fromhex(digits)
            except ValueError:
                return value
            if len(raw) == 16:  # fromhex skips spaces between pairs: fewer bytes
                return raw
    return value


def py_id(value: str | bytes | None) -> str | None:
    if isinstance(value, bytes):
        h = value.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    return value


# A column of PostgreSQL has one type, so there an id is always `bytea`: a UUID's
# 16 bytes as above, any other id its UTF-8, with a NUL byte after it when that
# is 16 bytes long, so that only a UUID is (ids hold no NUL: `storable.check_id`).
# `id_bytes_sql` is the same in SQL, for the migration that converted the text ids.

def id_bytes(value: str) -> bytes:
    """An id as PostgreSQL stores it (`id_text` gives it back)."""
    stored = db_id(value)
    if type(stored) is bytes:
        return stored
    raw = stored.encode()
    return raw + b"\0" if len(raw) == 16 else raw


def id_text(stored: bytes | None) -> str | None:
    """An id stored by `id_bytes`, as the caller gave it."""
    if stored is None or len(stored) == 16:
        return py_id(None if stored is None else bytes(stored))
    return bytes(stored).removesuffix(b"\0").decode()


def id_bytes_sql(column: str) -> str:
    """`id_bytes` of a text column, as a SQL expression (`column` is a constant name)."""
    return (
        f"CASE WHEN {column} ~ '^[0-9a-f]{{8}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{12}}$' "
        f"THEN decode(replace({column}, '-', ''), 'hex') "
        f"WHEN octet_length({column}) = 16 THEN convert_to({column}, 'UTF8') || '\\x00'::bytea "
        f"ELSE convert_to({column}, 'UTF8') END"
    )


# -- task paths ------------------------------------------------------------------
#
# Almost every write's task path is LangGraph's "~__pregel_pull, NODE" (a node
# run because a channel it reads was written). Stored as NODE's UTF-8 bytes, a
# BLOB where every other path is TEXT, it takes 16 bytes less in each of a chat
# turn's five write rows (about 80 bytes a turn through the agent graph). Rows
# written before hold the whole text and read back as ever.

_PULL_PREFIX = "~__pregel_pull, "


def db_task_path(path: str) -> str | bytes:
    if path.startswith(_PULL_PREFIX):
        return path[len(_PULL_PREFIX) :].encode("utf-8", "surrogatepass")
    return path


def py_task_path(stored: str | bytes) -> str:
    if isinstance(stored, bytes):
        return _PULL_PREFIX + stored.decode("utf-8", "surrogatepass")
    return stored


# PostgreSQL's `writes.task_path` is `bytea` (migration m007): the usual path as a NUL and
# NODE's bytes, any other as its UTF-8 (a path holding a NUL is refused before it is stored,
# as PostgreSQL's text never held one, so only the usual path starts with one).


def task_path_bytes(path: str) -> bytes:
    if path.startswith(_PULL_PREFIX):
        return b"\0" + path[len(_PULL_PREFIX) :].encode("utf-8")
    return path.encode("utf-8")


def task_path_from_bytes(stored: bytes) -> str:
    if stored[:1] == b"\0":
        return _PULL_PREFIX + stored[1:].decode("utf-8")
    return stored.decode("utf-8")
