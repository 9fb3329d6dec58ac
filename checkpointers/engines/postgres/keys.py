"""Encryption at rest on PostgreSQL: the store's key record, its checks, and re-sealing a thread's rows.

What is sealed, how, and where each value is bound are `checkpointers.encryption`'s,
the same on both engines; this module holds the SQL of it on this engine:

* `unlock`: the key record lives in `store_meta` (key `encryption`), as in the
  SQLite file. A saver checks its key against it when it opens the store, and
  a key given for a store without a record makes the store encrypted, unless it
  holds threads already (`INSERT ... ON CONFLICT DO NOTHING`, then read back,
  so of several processes starting together on a new store, the first one's
  salt wins and the others check their key against it).
* `key_record_sql`: the scalar subquery a write reads its thread's row with, so
  a saver whose key no longer fits the store (another process made the store
  encrypted, or `threadkeeper rotate-key` changed its key, after this one
  opened it) refuses to write, as `ThreadSaver._check_key_unchanged` does on
  SQLite, at no extra round trip. While a rotation runs it reads `ROTATING`,
  and the write is refused too (`check_unchanged`), rather than sealed with
  the old key into rows the rotation may have re-sealed already.
* `reseal_thread`: a thread's sealed rows opened with one cipher and sealed
  with another, written back in one `UPDATE ... FROM unnest` per table:
  `copy_thread` (`reseal_copy`: the copies are bound to the source thread, so
  each is opened there and sealed again for the copy) and `rotate-key`
  (`checkpointers.engines.postgres.key_rotation`: the same thread, the old
  key to the new one, the search words hashed again).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from checkpointers import encryption
from checkpointers.codec import KIND_MESSAGE_DICT, KIND_SERDE, id_text
from checkpointers.encryption import Cipher, KeyRecord, checkpoint_place, message_place, value_place, write_place
from checkpointers.engines.base import FETCH_NONE, FETCH_ONE, Plan, Sql
from checkpointers.engines.postgres import packed_writes
from checkpointers.errors import EncryptionKeyError

_RECORDS_SQL = "SELECT key, value FROM store_meta WHERE key = ANY(%s)"
_HOLDS_THREADS_SQL = "SELECT EXISTS (SELECT 1 FROM threads)"
_NEW_RECORD_SQL = "INSERT INTO store_meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING"

ROTATING = "rotating"
"""What `key_record_sql` reads while `threadkeeper rotate-key` runs (never a key record, which is JSON)."""

key_record_sql = (
    f"(SELECT CASE WHEN bool_or(key = '{encryption.ROTATION_META_KEY}') THEN '{ROTATING}' "
    f"ELSE max(value) FILTER (WHERE key = '{encryption.META_KEY}') END "
    f"FROM store_meta WHERE key IN ('{encryption.META_KEY}', '{encryption.ROTATION_META_KEY}'))"
)
"""The store's key record as a scalar subquery (a constant of this module), for a write's first
read: NULL for a store without a key, `ROTATING` while a rotation runs."""


def _records() -> Plan[tuple[str | None, str | None]]:
    rows = dict((yield Sql(_RECORDS_SQL, ([encryption.META_KEY, encryption.ROTATION_META_KEY],))))
    return rows.get(encryption.META_KEY), rows.get(encryption.ROTATION_META_KEY)


def unlock(key: str | None, where: str) -> Plan[tuple[Cipher | None, str | None]]:
    """Check `key` against the store (in the caller's transaction): its cipher (None: not
    encrypted) and key record, refused in the sentences of `encryption.key_of_store`.
    A key for a store that holds threads in clear is refused (`encryption.unencrypted_store`)."""
    opened = encryption.key_of_store(*(yield from _records()), key, where)
    if opened is not None:
        return opened
    (holds_threads,) = yield Sql(_HOLDS_THREADS_SQL, (), FETCH_ONE)
    if holds_threads:
        raise encryption.unencrypted_store(where)
    record = Cipher.new(key).record().to_json()
    yield Sql(_NEW_RECORD_SQL, (encryption.META_KEY, record), FETCH_NONE)
    # Another process may have made the store encrypted first: its record is the store's.
    return encryption.key_of_store(*(yield from _records()), key, where)


def check_unchanged(read: str | None, opened_with: str | None, where: str) -> None:
    """Refuse a write whose first read found (`key_record_sql`) another key record than the
    one its saver opened the store with, or a key rotation running."""
    if read == ROTATING:
        raise rotation_running(where)
    if read != opened_with:
        raise key_changed(where)


def check_writable(cipher: Cipher | None, where: str) -> Plan[None]:
    """The key check of a write whose first statement does not read `key_record_sql`
    (a rename, a session, an attachment, a copy): run it after the statement that locked
    the thread's row, so a rotation that had begun is seen, and refuse as `check_unchanged`
    does when the store's key is no longer `cipher`'s (None: no key)."""
    (read,) = yield Sql(f"SELECT {key_record_sql}", (), FETCH_ONE)
    if read == ROTATING:
        raise rotation_running(where)
    fits = read is None if cipher is None else read is not None and cipher.matches(KeyRecord.from_json(read))
    if not fits:
        raise key_changed(where)


def rotation_running(where: str) -> EncryptionKeyError:
    """The refusal of a write while `threadkeeper rotate-key` changes the store's key."""
    return EncryptionKeyError(
        f"the encryption key of {where} is being changed by `threadkeeper rotate-key`: this process "
        f"cannot write until it has finished; then restart it with the store's new {encryption.KEY_VARIABLE}"
    )


def key_changed(where: str) -> EncryptionKeyError:
    """The refusal of a write by a saver whose key no longer fits the store's record."""
    return EncryptionKeyError(
        f"the encryption key of {where} was changed after this process opened it: restart it with "
        f"the store's {encryption.KEY_VARIABLE}"
    )


def _write_place(key: int, ns: str, checkpoint_id: bytes, task_id: bytes, idx: int) -> bytes:
    """The place of a task write's value, from its ids as stored (a row of `writes`, or a packed record)."""
    return write_place(key, ns, id_text(checkpoint_id), id_text(task_id), idx)


_SEALED: tuple[tuple[str, tuple[tuple[str, str], ...], str, Callable[..., bytes]], ...] = (
    (
        "checkpoints",
        (("checkpoint_ns", "text"), ("checkpoint_id", "bytea")),
        "checkpoint",
        lambda key, ns, checkpoint_id: checkpoint_place(key, ns, id_text(checkpoint_id)),
    ),
    ("channel_values", (("value_no", "integer"),), "value", value_place),
    ("messages", (("message_no", "integer"),), "value", message_place),
    (
        "writes",
        (("checkpoint_ns", "text"), ("checkpoint_id", "bytea"), ("task_id", "bytea"), ("idx", "integer")),
        "value",
        _write_place,
    ),
)
"""Per-thread tables with a sealed column: (table, its key columns after thread_key with
their types, the sealed column, the place of a row's value: ids in places are the ids'
text, as callers gave them, whatever their column holds). Names are constants."""

_WHICH = {
    table: f" AND kind IN ({KIND_SERDE}, {KIND_MESSAGE_DICT})" for table in ("channel_values", "writes")
}
"""Rows whose value is sealed, where not every row's is (message numbers stay in clear;
`messages.SERIALISED_KINDS`)."""


def reseal_copy(cipher: Cipher, source_key: int, target_key: int) -> Plan[None]:
    """Seal the values of rows copied from thread `source_key` to `target_key` to their new thread."""
    yield from reseal_thread(cipher, cipher, source_key, target_key)


Reindex = Callable[[str, bytes], "str | None"]
"""A message's search lexemes (space-separated; None: none) from its type and plain stored value."""


def reseal_thread(
    old: Cipher | None, new: Cipher | None, source_key: int, target_key: int, reindex: Reindex | None = None
) -> Plan[int]:
    """Re-seal the sealed rows of thread `target_key`: each opened with `old` (None: it is
    plain) where it was sealed, in thread `source_key`, and sealed with `new` (None: left
    plain) to its own place. `reindex`: the messages' `words` are set from it too (a key
    rotation: the keyed hashes change with the key). Returns how many rows."""
    count = 0
    for table, keys, column, place in _SEALED:
        names = [name for name, _ in keys]
        words = reindex is not None and table == "messages"
        rows = yield Sql(
            f"SELECT {', '.join(names)}, {column}{', type' if words else ''} FROM {table} "
            f"WHERE thread_key = %s{_WHICH.get(table, '')} AND {column} IS NOT NULL",
            (target_key,),
        )
        if not rows:
            continue
        width = len(names)
        plain = [bytes(r[width]) if old is None else old.open(bytes(r[width]), place(source_key, *r[:width])) for r in rows]
        sealed = plain if new is None else [new.seal(p, place(target_key, *r[:width])) for p, r in zip(plain, rows)]
        columns = [[r[i] for r in rows] for i in range(width)] + [sealed]
        unnest = ", ".join(f"%s::{kind}[]" for _, kind in keys)
        match = " AND ".join(f"t.{name} = u.{name}" for name in names)
        if words:
            columns.append([reindex(r[width + 1], p) for p, r in zip(plain, rows)])
            unnest, setting, extra = unnest + ", %s::bytea[], %s::text[]", ", words = u.words", ", words"
        else:
            unnest, setting, extra = unnest + ", %s::bytea[]", "", ""
        yield Sql(
            f"UPDATE {table} AS t SET {column} = u.sealed{setting} FROM unnest({unnest}) "
            f"AS u ({', '.join(names)}, sealed{extra}) WHERE t.thread_key = %s AND {match}",
            (*columns, target_key),
            FETCH_NONE,
        )
        count += len(rows)
    rows = yield Sql(
        "SELECT checkpoint_ns, checkpoint_id, writes FROM checkpoints WHERE thread_key = %s AND writes IS NOT NULL",
        (target_key,),
    )
    if rows:  # task writes packed into their checkpoint's row (`packed_writes`)

        def moved(ns: str, checkpoint_id: bytes, task_id: bytes, idx: int, value: bytes) -> bytes:
            plain = value if old is None else old.open(value, _write_place(source_key, ns, checkpoint_id, task_id, idx))
            return plain if new is None else new.seal(plain, _write_place(target_key, ns, checkpoint_id, task_id, idx))

        packed = [packed_writes.resealed(bytes(blob), partial(moved, ns, checkpoint_id)) for ns, checkpoint_id, blob in rows]
        yield Sql(
            "UPDATE checkpoints AS t SET writes = u.writes FROM unnest(%s::text[], %s::bytea[], %s::bytea[]) "
            "AS u (checkpoint_ns, checkpoint_id, writes) WHERE t.thread_key = %s AND t.checkpoint_ns = u.checkpoint_ns "
            "AND t.checkpoint_id = u.checkpoint_id",
            ([r[0] for r in rows], [r[1] for r in rows], packed, target_key),
            FETCH_NONE,
        )
        count += len(rows)
    return count
