"""`threadkeeper rotate-key`: re-encrypt a store under a new key, resumably.

    rotate_key(path, current_key, new_key)      # None for "not encrypted"

The same code encrypts an unencrypted store (`current_key=None`), moves an
encrypted one to a new key, and decrypts one (`new_key=None`). It runs with the
store otherwise closed; a process that opened the store before the rotation
began refuses to write once it has begun (`ThreadSaver._check_key_unchanged`).

How it stays resumable and loses nothing:

* The first transaction records the rotation in `store_meta`
  (`encryption_rotation`: the new key's salt and check value, and how far it
  has got) and empties the full-text index. From then on every saver refuses
  to open the store, with either key, until the rotation is finished.
* Threads are re-encrypted in `thread_key` order, in batches of about
  `batch_rows` rows; each batch is one transaction that also records the last
  thread it finished, so a run that is killed resumes after the last
  committed batch, and a batch is either wholly done or not at all. A thread's
  messages are re-indexed in the same transaction, under the new search key.
* An attachment file is re-encrypted to a new file (written beside it, then
  renamed into place) whose name is derived from the old one and the new key,
  so a retry overwrites rather than multiplies it; the row points to it in
  the batch's transaction; the old file is listed in the rotation record in
  that same transaction and deleted after the commit (again on resume).
* The last transaction merges the index, replaces the key record and removes
  the rotation record. The WAL is then checkpointed and truncated, and with
  `secure_delete` on, no value under the old key (or plain) is left in the file.

Values are written in the current format, bound to their place, whatever the
format they were read in: rotating a store in format 1 upgrades it too (an
unfinished upgrade, see `checkpointers.engines.sqlite.reseal`, is finished first). The
rewriting itself is `checkpointers.engines.sqlite.reseal.Resealer`, shared with that upgrade
and with `copy_thread`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

from langgraph.checkpoint.serde.base import SerializerProtocol

from checkpointers import codec, encryption, search
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
from checkpointers.engines.sqlite import fts
from checkpointers.engines.sqlite import keys, reseal
from checkpointers.encryption import Cipher
from checkpointers.errors import EncryptionKeyError, StoreUnavailableError
from checkpointers.engines.sqlite.schema import migrate
from checkpointers.engines.sqlite.message_reads import _segment_rows
from checkpointers.engines.sqlite.saver import ThreadSaver, connect
from checkpointers.messages import load_message


def rotate_key(
    path: str | os.PathLike,
    current_key: str | None,
    new_key: str | None,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    progress: Progress | None = None,
    serde: SerializerProtocol | None = None,
) -> RotationSummary:
    """Re-encrypt the store at `path` from `current_key` to `new_key` (None: no key).

    Raises EncryptionKeyError, changing nothing, when `current_key` is not the
    store's key, or when an unfinished rotation was started towards another key.
    """
    started = time.monotonic()
    path = Path(path)
    if not path.is_file():
        raise StoreUnavailableError(f"there is no database at {path}")
    check_keys(current_key, new_key)
    serde = serde or ThreadSaver.serde
    conn = connect(path)
    try:
        migrate(conn, str(path))
        record, rotation = keys.read_records(conn)
        if encryption.is_upgrade(rotation):  # an interrupted upgrade to bound values: finish it first
            reseal.upgrade(conn, path, current_cipher(path, record, current_key), batch_rows=batch_rows)
            record, rotation = keys.read_records(conn)
        old = current_cipher(path, record, current_key)
        resumed = rotation is not None
        if rotation is None:
            new, state = new_rotation(path, old, new_key)
            _begin(conn, path, record, state)
        else:
            state = json.loads(rotation)
            new = target_cipher(path, state, new_key)
        total = conn.execute("SELECT count(*) FROM threads").fetchone()[0]
        rewriter = _Rotation(conn, path.parent / "attachments", old, new, serde)
        rewriter.unlink(state["unlink"])
        done = conn.execute("SELECT count(*) FROM threads WHERE thread_key <= ?", (state["done_upto"],)).fetchone()[0]
        done = run_batches(lambda: rewriter.batch(batch_rows), done, total, progress, resumed)
        _finish(conn, final_record(new, state))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return RotationSummary(
            threads=done,
            values=rewriter.values,
            attachments=rewriter.attachments,
            resumed=resumed,
            encrypted=new is not None,
            seconds=time.monotonic() - started,
        )
    finally:
        conn.close()


def _begin(conn: sqlite3.Connection, path: Path, record: str | None, state: dict) -> None:
    """Record the rotation, empty the search index and bump every thread's `gc_epoch`, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if keys.read_records(conn) != (record, None):
            raise EncryptionKeyError(f"{path} changed its key while `threadkeeper rotate-key` started: run it again")
        conn.execute(
            "INSERT INTO store_meta (key, value) VALUES (?, ?)", (encryption.ROTATION_META_KEY, json.dumps(state))
        )
        conn.execute("INSERT INTO message_search (message_search) VALUES ('delete-all')")
        conn.execute("DELETE FROM search_backlog")
        # Every thread row changes, so a process that cached one reads it (and the
        # thread's messages, re-sealed by this rotation) afresh before it writes.
        conn.execute("UPDATE threads SET gc_epoch = gc_epoch + 1")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _finish(conn: sqlite3.Connection, record: str | None) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        fts.purge(conn)  # merge the new index fully
        conn.execute("UPDATE store_meta SET value = 'ready' WHERE key = 'message_search'")
        if record is None:
            conn.execute("DELETE FROM store_meta WHERE key = ?", (encryption.META_KEY,))
        else:
            conn.execute("INSERT OR REPLACE INTO store_meta (key, value) VALUES (?, ?)", (encryption.META_KEY, record))
        conn.execute("DELETE FROM store_meta WHERE key = ?", (encryption.ROTATION_META_KEY,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class _Rotation(reseal.Resealer):
    """The rewriting of a key rotation: each thread's messages are re-indexed under the new key too."""

    def __init__(
        self, conn: sqlite3.Connection, root: Path, old: Cipher | None, new: Cipher | None, serde: SerializerProtocol
    ) -> None:
        super().__init__(conn, root, old, new)
        self.serde = serde

    def messages_read(
        self, thread_key: int, loose: list[tuple[int, str, bytes]], segments: list[tuple[bytes, bytes]]
    ) -> None:
        plain = list(loose)
        for nos, value in segments:
            plain += _segment_rows(codec.unpack_numbers(nos), value)
        self.index(plain, thread_key)

    def index(self, messages: list[tuple[int, str, bytes]], thread_key: int) -> None:
        """Add plain message rows to the (emptied) search index under the new key."""
        entries = []
        for no, type_, plain in messages:
            words = search.search_words(load_message(self.serde, type_, plain))
            if words and self.new is not None:
                words = search.hashed_words(words, self.new.search_token)
            if words:
                entries.append((fts.rowid(thread_key, no), words))
        fts.add(self.conn, entries)
