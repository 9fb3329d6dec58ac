"""`threadkeeper rotate-key` on PostgreSQL: re-seal a store under a new key, resumably.

    rotate_key(url, current_key, new_key)      # None for "not encrypted"

As on SQLite (`checkpointers.engines.sqlite.key_rotation`; what both decide and
return is `checkpointers.key_rotation`'s), the same code encrypts a store kept
in clear, moves an encrypted one to a new key, and decrypts one. What this
engine does its own way:

* One rotation at a time: the run holds a session advisory lock named after
  the store's schema (`pg_try_advisory_lock`); a second run is refused with
  one sentence instead of racing the first.
* Other processes keep running. The first transaction locks `threads` (EXCLUSIVE
  mode: reads go on, every write waits), so each write that began with the old
  key commits first, then records the rotation in `store_meta`
  (`encryption_rotation`: the target's key record, and `done_upto`, the last
  thread done). Every write reads that record in its first statement
  (`keys.key_record_sql`) and from then on is refused with one sentence rather
  than sealed with the old key; reads that have the old key fail on the rows
  already re-sealed. Savers opening the store are refused until it is done.
* Threads are re-sealed in `thread_key` order, in batches of about `batch_rows`
  rows, each one transaction that also moves `done_upto`: a run that is killed
  resumes after the last committed batch. Each thread's sealed columns
  (`keys.reseal_thread`: checkpoints, values, writes, messages), its messages'
  search words (keyed hashes under the new key's search subkey, from the
  decrypted messages), its title and its attachment (bytes, name, tables) are
  rewritten together.
* The last transaction replaces the key record (or removes it) and the
  rotation record.
"""

from __future__ import annotations

import hashlib
import json
import time

import psycopg
from langgraph.checkpoint.serde.base import SerializerProtocol

from checkpointers import codec, encryption, search
from checkpointers.encryption import Cipher, attachment_place
from checkpointers.engines.postgres import connection, keys
from checkpointers.engines.postgres.saver import PostgresThreadSaver
from checkpointers.errors import EncryptionKeyError, StoreUnavailableError
from checkpointers.key_rotation import (
    DEFAULT_BATCH_ROWS,
    Progress,
    RotationSummary,
    check_keys,
    current_cipher,
    final_record,
    new_rotation,
    run_batches,
    target_cipher,
)
from checkpointers.messages import load_message

LOCK_SQL = "SELECT pg_try_advisory_lock(hashtext(current_schema() || '.threadkeeper rotate-key'))"
"""Takes the session advisory lock a rotation of the store (its schema) holds while it runs; true if free."""
_RECORDS_SQL = "SELECT key, value FROM store_meta WHERE key = ANY(%s)"
_STATE_SQL = "SELECT value FROM store_meta WHERE key = %s FOR UPDATE"
_SAVE_STATE_SQL = "UPDATE store_meta SET value = %s WHERE key = %s"
_NEXT_THREADS_SQL = (
    "SELECT thread_key, thread_id, title FROM threads WHERE thread_key > %s ORDER BY thread_key LIMIT 500 FOR UPDATE"
)
_ATTACHMENT_SQL = "SELECT name, tables::text, data FROM attachments WHERE thread_key = %s"
_SET_ATTACHMENT_SQL = (
    "UPDATE attachments SET name = %s, tables = %s::jsonb, sha256 = %s, bytes = %s, data = %s WHERE thread_key = %s"
)


def rotate_key(
    url: str,
    current_key: str | None,
    new_key: str | None,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    progress: Progress | None = None,
    serde: SerializerProtocol | None = None,
) -> RotationSummary:
    """Re-seal the PostgreSQL store at `url` from `current_key` to `new_key` (None: no key).

    Raises EncryptionKeyError, changing nothing, when `current_key` is not the
    store's key, when an unfinished rotation was started towards another key, or
    when another rotation of the store is running.
    """
    started = time.monotonic()
    where = connection.redacted(url)
    check_keys(current_key, new_key)
    if not connection.has_store(url):
        raise StoreUnavailableError(f"there is no threadkeeper store at {where}")
    serde = serde or PostgresThreadSaver.serde
    with psycopg.connect(url, autocommit=True) as conn:
        if not conn.execute(LOCK_SQL).fetchone()[0]:  # released when the connection closes
            raise EncryptionKeyError(f"another `threadkeeper rotate-key` is running on {where}: let it finish")
        record, rotation = _records(conn)
        old = current_cipher(where, record, current_key)
        resumed = rotation is not None
        if rotation is None:
            new, state = new_rotation(where, old, new_key)
            _begin(conn, where, record, state)
        else:
            state = json.loads(rotation)
            new = target_cipher(where, state, new_key)
        (total,) = conn.execute("SELECT count(*) FROM threads").fetchone()
        (done,) = conn.execute("SELECT count(*) FROM threads WHERE thread_key <= %s", (state["done_upto"],)).fetchone()
        rotation_run = _Rotation(old, new, serde)
        done = run_batches(lambda: rotation_run.batch(conn, batch_rows), done, total, progress, resumed)
        _finish(conn, final_record(new, state))
    return RotationSummary(
        threads=done,
        values=rotation_run.values,
        attachments=rotation_run.attachments,
        resumed=resumed,
        encrypted=new is not None,
        seconds=time.monotonic() - started,
    )


def _records(conn: psycopg.Connection) -> tuple[str | None, str | None]:
    rows = dict(conn.execute(_RECORDS_SQL, ([encryption.META_KEY, encryption.ROTATION_META_KEY],)).fetchall())
    return rows.get(encryption.META_KEY), rows.get(encryption.ROTATION_META_KEY)


def _begin(conn: psycopg.Connection, where: str, record: str | None, state: dict) -> None:
    """Record the rotation once every write in flight has committed (see the module docstring)."""
    with conn.transaction():
        conn.execute("LOCK TABLE threads IN EXCLUSIVE MODE")
        if _records(conn) != (record, None):
            raise EncryptionKeyError(f"{where} changed its key while `threadkeeper rotate-key` started: run it again")
        conn.execute(
            "INSERT INTO store_meta (key, value) VALUES (%s, %s)", (encryption.ROTATION_META_KEY, json.dumps(state))
        )


def _finish(conn: psycopg.Connection, record: str | None) -> None:
    with conn.transaction():
        if record is None:
            conn.execute("DELETE FROM store_meta WHERE key = %s", (encryption.META_KEY,))
        else:
            conn.execute(
                "INSERT INTO store_meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (encryption.META_KEY, record),
            )
        conn.execute("DELETE FROM store_meta WHERE key = %s", (encryption.ROTATION_META_KEY,))


class _Rotation:
    """The rewriting of one rotation, batch by batch; `values` and `attachments` count it."""

    def __init__(self, old: Cipher | None, new: Cipher | None, serde: SerializerProtocol) -> None:
        self.old = old
        self.new = new
        self.serde = serde
        self.values = 0
        self.attachments = 0

    def batch(self, conn: psycopg.Connection, batch_rows: int) -> int | None:
        """Rewrite the next threads until about `batch_rows` rows are done, in one transaction
        that moves `done_upto`; how many threads, None when none are left."""
        values, attachments = self.values, self.attachments
        done = rows = 0
        try:
            with conn.transaction():
                (stored,) = conn.execute(_STATE_SQL, (encryption.ROTATION_META_KEY,)).fetchone()
                state = json.loads(stored)
                for thread_key, thread_id, title in conn.execute(_NEXT_THREADS_SQL, (state["done_upto"],)).fetchall():
                    rows += self.thread(conn, thread_key, thread_id, title)
                    done += 1
                    state["done_upto"] = thread_key
                    if rows >= batch_rows:
                        break
                if done:
                    conn.execute(_SAVE_STATE_SQL, (json.dumps(state), encryption.ROTATION_META_KEY))
        except BaseException:
            self.values, self.attachments = values, attachments
            raise
        return done or None

    def thread(self, conn: psycopg.Connection, thread_key: int, thread_id: str, title: str | None) -> int:
        """Re-seal one thread's rows, title and attachment; returns how many values."""
        rows = connection.run(conn, keys.reseal_thread(self.old, self.new, thread_key, thread_key, self._lexemes))
        if title is not None:
            plain = encryption.open_title(self.old, title, thread_id)
            conn.execute(
                "UPDATE threads SET title = %s WHERE thread_key = %s",
                (encryption.seal_title(self.new, plain, thread_id), thread_key),
            )
            rows += 1
        rows += self.attachment(conn, thread_key, thread_id)
        self.values += rows
        return rows

    def attachment(self, conn: psycopg.Connection, thread_key: int, thread_id: str) -> int:
        """Re-seal the thread's attached database (name, table list, bytes); returns values rewritten."""
        row = conn.execute(_ATTACHMENT_SQL, (thread_key,)).fetchone()
        if row is None:
            return 0
        name, tables, data = row
        name_place, tables_place, file_place = (attachment_place(thread_id, part) for part in ("name", "tables", "file"))
        if self.old is not None:
            name = self.old.open_text(name, name_place)
            tables = self.old.open_text(json.loads(tables), tables_place)  # sealed: a JSON string
            data = self.old.open(bytes(data), file_place)
        if self.new is not None:
            name = self.new.seal_text(name, name_place)
            tables = json.dumps(self.new.seal_text(tables, tables_place))
            data = self.new.seal(bytes(data), file_place)
        data = bytes(data)
        conn.execute(_SET_ATTACHMENT_SQL, (name, tables, hashlib.sha256(data).hexdigest(), len(data), data, thread_key))
        self.attachments += 1
        return 3

    def _lexemes(self, type_: str, plain: bytes) -> str | None:
        """A message's search words as the saver indexes them, hashed with the new key."""
        message = load_message(self.serde, type_, codec.inflate(plain))
        words = search.indexed_words(message, None if self.new is None else self.new.search_token)
        return " ".join(search.lexemes(words)) or None if words else None
