"""A checkpoint's task writes, packed into its own row (`checkpoints.writes`, migration m008).

Measured through the agent graph (1,000 turns, `python -m bench.postgres --bytes`): a turn's
five task writes took 1,089 bytes as five rows of `writes`, nearly all of it each row's
header, its copy of the thread, namespace and checkpoint ids, and its primary key entry.
Packed into the checkpoint's row they take what they hold.

Each `put_writes` appends one record to the column (`UPDATE ... SET writes = writes || record`,
so writes sent together for one checkpoint queue on its row and none is lost): its length as
a varint, then msgpack of `[task_id, task_path, replace, [[idx, channel, kind, type, value],
...]]`, with ids and the task path as their columns in `writes` hold them (`codec.id_bytes`,
`codec.task_path_bytes`) and each value as `writes.value` holds it (sealed to its
`write_place` in an encrypted store, where it is serialised).

The column stays under `MAX_BYTES`: an append rewrites it whole, so many writes to one
checkpoint (a fan-out of `Send`s) would cost the square of their size. The call that would
pass it marks the column full instead (`FULL`, before its records: a record's first byte, its
length, is never 0) and it and every later call go to the `writes` table. So does a write
whose checkpoint is not stored yet (LangGraph may send a step's writes while the checkpoint's
own write is still in flight on another thread), as every write did before m008. A row's
`after` says which (`AFTER_*`), and so where it stands against the records: a task's write at
an index already written is ignored, unless its call replaces (errors and interrupts:
`replace`), as in a table keyed by (task, idx).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import ormsgpack

from checkpointers.messages import SERIALISED_KINDS

MAX_BYTES = 16_384
"""The most a checkpoint's column holds (a chat turn's writes take about 90 bytes a checkpoint)."""
FULL = b"\0"
"""The first byte of a column that `MAX_BYTES` closed to further records."""
AFTER_RECORDS, AFTER_RECORDS_REPLACING = 1, 2
"""`writes.after` of a row written once the column was full (NULL: before the checkpoint was
stored), from a call that does not replace or that does."""

Write = tuple[bytes, bytes, int, str, int, "str | None", "bytes | None"]
"""(task_path, task_id, idx, channel, kind, type, value), as stored (`writes` table's columns)."""


def record(task_id: bytes, task_path: bytes, replace: bool, rows: list[tuple[int, str, int, str | None, bytes | None]]) -> bytes:
    """One `put_writes` call as appended to the column; `rows` are (idx, channel, kind, type, value)."""
    body = ormsgpack.packb([task_id, task_path, replace, [list(row) for row in rows]])
    size, head = len(body), bytearray()
    while size >= 0x80:
        head.append(size & 0x7F | 0x80)
        size >>= 7
    head.append(size)
    return bytes(head) + body


def records(packed: bytes | None) -> Iterator[tuple[bytes, bytes, bool, list[list[Any]]]]:
    """The records of a column, in the order they were appended."""
    if not packed:
        return
    view = memoryview(packed)
    at = 1 if view[:1] == FULL else 0
    while at < len(view):
        size = shift = 0
        while True:
            byte = view[at]
            at += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        task_id, task_path, replace, rows = ormsgpack.unpackb(view[at : at + size])
        at += size
        yield task_id, task_path, replace, rows


def merged(table_rows: list[tuple], packed: bytes | None) -> list[Write]:
    """A checkpoint's writes from the `writes` table's rows (a `Write` and its `after`) and the
    column's records, in the order they were written: rows from before the checkpoint was
    stored, the records, rows from after the column was full. Each (task, idx) is written
    once unless a later call replaces it."""
    found: dict[tuple[bytes, int], Write] = {(row[1], row[2]): tuple(row[:-1]) for row in table_rows if row[-1] is None}
    for task_id, task_path, replace, rows in records(packed):
        for idx, channel, kind, type_, value in rows:
            if replace or (task_id, idx) not in found:
                found[(task_id, idx)] = (task_path, task_id, idx, channel, kind, type_, value)
    for *row, after in table_rows:
        if after is not None and (after == AFTER_RECORDS_REPLACING or (row[1], row[2]) not in found):
            found[(row[1], row[2])] = tuple(row)
    return list(found.values())


def resealed(packed: bytes, reseal: Callable[[bytes, int, bytes], bytes]) -> bytes:
    """The column with each sealed value passed through `reseal(task_id, idx, value)`."""
    return (FULL if packed[:1] == FULL else b"") + b"".join(
        record(
            task_id,
            task_path,
            replace,
            [
                (idx, channel, kind, type_, reseal(task_id, idx, value) if kind in SERIALISED_KINDS and value is not None else value)
                for idx, channel, kind, type_, value in rows
            ],
        )
        for task_id, task_path, replace, rows in records(packed)
    )
