"""Encryption at rest on PostgreSQL: the store's key record, and re-sealing a copied thread.

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
  encrypted after this one opened it without a key) refuses to write, as
  `ThreadSaver._check_key_unchanged` does on SQLite, at no extra round trip.
* `reseal_copy`: `copy_thread` copies rows with `INSERT ... SELECT`; their sealed
  values are bound to the source thread, so each is opened there and sealed
  again for the copy, and written back in one `UPDATE ... FROM unnest` per table.

`threadkeeper rotate-key` is not available on this engine yet (the CLI says so):
re-sealing a whole store resumably is `checkpointers.engines.sqlite.key_rotation`'s, on SQLite.
"""

from __future__ import annotations

from collections.abc import Callable

from checkpointers import encryption
from checkpointers.codec import KIND_SERDE
from checkpointers.encryption import Cipher, checkpoint_place, message_place, value_place, write_place
from checkpointers.engines.base import FETCH_NONE, FETCH_ONE, Plan, Sql
from checkpointers.errors import EncryptionKeyError

_RECORDS_SQL = "SELECT key, value FROM store_meta WHERE key = ANY(%s)"
_HOLDS_THREADS_SQL = "SELECT EXISTS (SELECT 1 FROM threads)"
_NEW_RECORD_SQL = "INSERT INTO store_meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING"

key_record_sql = f"(SELECT value FROM store_meta WHERE key = '{encryption.META_KEY}')"
"""The store's key record as a scalar subquery (a constant of this module), for a write's first read."""


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


def key_changed(where: str) -> EncryptionKeyError:
    """The refusal of a write by a saver whose key no longer fits the store's record."""
    return EncryptionKeyError(
        f"the encryption key of {where} was changed after this process opened it: restart it with "
        f"the store's {encryption.KEY_VARIABLE}"
    )


_SEALED: tuple[tuple[str, tuple[tuple[str, str], ...], str, Callable[..., bytes]], ...] = (
    ("checkpoints", (("checkpoint_ns", "text"), ("checkpoint_id", "text")), "checkpoint", checkpoint_place),
    ("channel_values", (("value_no", "integer"),), "value", value_place),
    ("messages", (("message_no", "integer"),), "value", message_place),
    (
        "writes",
        (("checkpoint_ns", "text"), ("checkpoint_id", "text"), ("task_id", "text"), ("idx", "integer")),
        "value",
        write_place,
    ),
)
"""Per-thread tables with a sealed column: (table, its key columns after thread_key with
their types, the sealed column, the place of a row's value). Names are constants."""

_WHICH = {"channel_values": f" AND kind = {KIND_SERDE}"}
"""Rows whose value is sealed, where not every row's is (lists of message numbers stay in clear)."""


def reseal_copy(cipher: Cipher, source_key: int, target_key: int) -> Plan[None]:
    """Seal the values of rows copied from thread `source_key` to `target_key` to their new thread."""
    for table, keys, column, place in _SEALED:
        names = [name for name, _ in keys]
        rows = yield Sql(
            f"SELECT {', '.join(names)}, {column} FROM {table} WHERE thread_key = %s{_WHICH.get(table, '')} "
            f"AND {column} IS NOT NULL",
            (target_key,),
        )
        if not rows:
            continue
        sealed = [cipher.seal(cipher.open(bytes(r[-1]), place(source_key, *r[:-1])), place(target_key, *r[:-1])) for r in rows]
        columns = [[r[i] for r in rows] for i in range(len(names))] + [sealed]
        unnest = ", ".join(f"%s::{kind}[]" for _, kind in keys)
        match = " AND ".join(f"t.{name} = u.{name}" for name in names)
        yield Sql(
            f"UPDATE {table} AS t SET {column} = u.sealed FROM unnest({unnest}, %s::bytea[]) "
            f"AS u ({', '.join(names)}, sealed) WHERE t.thread_key = %s AND {match}",
            (*columns, target_key),
            FETCH_NONE,
        )
