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
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from langgraph.checkpoint.serde.base import SerializerProtocol

from checkpointers import codec, encryption, search
from checkpointers.attachments import CSV_SUFFIXES, ENCRYPTED_FILE_NAME, _safe_name
from checkpointers.encryption import Cipher, KeyRecord
from checkpointers.errors import EncryptionKeyError, StoreUnavailableError
from checkpointers.schema import migrate
from checkpointers.sqlite import ThreadSaver, _segment_rows, connect, load_message

DEFAULT_BATCH_ROWS = 2_000


@dataclass(frozen=True)
class RotationSummary:
    """What a finished `rotate_key` did."""

    threads: int
    values: int
    """Encrypted values rewritten (checkpoints, values, writes, messages, segments, titles)."""
    attachments: int
    resumed: bool
    """Whether this run finished a rotation an earlier run had started."""
    encrypted: bool
    """Whether the store is encrypted now."""
    seconds: float


Progress = Callable[[int, int], None]
"""Called after each committed batch with (threads done, threads in all)."""


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
    if current_key is not None:
        encryption.check_key(current_key)
    if new_key is not None:
        encryption.check_key(new_key, encryption.NEW_KEY_VARIABLE)
    serde = serde or ThreadSaver.serde
    conn = connect(path)
    try:
        migrate(conn, str(path))
        record, rotation = encryption.read_records(conn)
        old = _current_cipher(path, record, current_key)
        resumed = rotation is not None
        if rotation is None:
            if old is None and new_key is None:
                raise EncryptionKeyError(
                    f"{path} is not encrypted: set {encryption.NEW_KEY_VARIABLE} to the key to encrypt it with"
                )
            new = None if new_key is None else Cipher.new(new_key)
            state = _begin(conn, path, record, new)
        else:
            state = json.loads(rotation)
            new = _new_cipher(path, state, new_key)
        total = conn.execute("SELECT count(*) FROM threads").fetchone()[0]
        rewriter = _Rewriter(conn, path.parent / "attachments", old, new, serde)
        rewriter.unlink(state["unlink"])
        done = conn.execute("SELECT count(*) FROM threads WHERE thread_key <= ?", (state["done_upto"],)).fetchone()[0]
        if progress is not None and resumed:
            progress(done, total)
        while True:
            keys = [
                k
                for (k,) in conn.execute(
                    "SELECT thread_key FROM threads WHERE thread_key > ? ORDER BY thread_key LIMIT 500",
                    (state["done_upto"],),
                )
            ]
            if not keys:
                break
            done += rewriter.batch(state, keys, batch_rows)
            rewriter.unlink(state["unlink"])
            if progress is not None:
                progress(done, total)
        _finish(conn, new)
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


def _current_cipher(path: Path, record: str | None, key: str | None) -> Cipher | None:
    if record is None:
        if key is not None:
            raise EncryptionKeyError(
                f"{path} is not encrypted: unset {encryption.KEY_VARIABLE} "
                f"({encryption.NEW_KEY_VARIABLE} is the key to encrypt it with)"
            )
        return None
    if key is None:
        raise EncryptionKeyError(f"{path} is encrypted: set {encryption.KEY_VARIABLE} to its current key")
    stored = KeyRecord.from_json(record)
    cipher = Cipher.for_record(key, stored)
    if not cipher.matches(stored):
        raise EncryptionKeyError(f"{encryption.KEY_VARIABLE} is not the key {path} was encrypted with")
    return cipher


def _new_cipher(path: Path, state: dict, new_key: str | None) -> Cipher | None:
    """The cipher of the unfinished rotation's target, if `new_key` is that target."""
    target = state["key"]
    if target is None or new_key is None:
        if target is None and new_key is None:
            return None
        started_with = "--decrypt" if target is None else f"the {encryption.NEW_KEY_VARIABLE} it was started with"
        raise EncryptionKeyError(
            f"{path} is in the middle of a key rotation to another target: run `threadkeeper rotate-key` "
            f"again with {started_with}"
        )
    record = KeyRecord.from_json(target)
    cipher = Cipher.for_record(new_key, record)
    if not cipher.matches(record):
        raise EncryptionKeyError(
            f"{encryption.NEW_KEY_VARIABLE} is not the key the unfinished rotation of {path} was started with"
        )
    return cipher


def _begin(conn: sqlite3.Connection, path: Path, record: str | None, new: Cipher | None) -> dict:
    """Record the rotation, empty the search index and bump every thread's `gc_epoch`, in one transaction."""
    state = {"version": 1, "key": None if new is None else new.record().to_json(), "done_upto": 0, "unlink": []}
    conn.execute("BEGIN IMMEDIATE")
    try:
        if encryption.read_records(conn) != (record, None):
            raise EncryptionKeyError(f"{path} changed its key while `threadkeeper rotate-key` started: run it again")
        conn.execute(
            "INSERT INTO store_meta (key, value) VALUES (?, ?)", (encryption.ROTATION_META_KEY, json.dumps(state))
        )
        conn.execute("INSERT INTO message_search (message_search) VALUES ('delete-all')")
        conn.execute("DELETE FROM search_backlog")
        # Every thread row changes, so a process that cached one (and would write
        # it without a transaction, see `WRITE_ROWS_SQL`) checks the key first.
        conn.execute("UPDATE threads SET gc_epoch = gc_epoch + 1")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return state


def _finish(conn: sqlite3.Connection, new: Cipher | None) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        search.purge(conn)  # merge the new index fully
        conn.execute("UPDATE store_meta SET value = 'ready' WHERE key = 'message_search'")
        if new is None:
            conn.execute("DELETE FROM store_meta WHERE key = ?", (encryption.META_KEY,))
        else:
            conn.execute(
                "INSERT OR REPLACE INTO store_meta (key, value) VALUES (?, ?)",
                (encryption.META_KEY, new.record().to_json()),
            )
        conn.execute("DELETE FROM store_meta WHERE key = ?", (encryption.ROTATION_META_KEY,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def write_file(target: Path, data: bytes) -> None:
    """Write `data` to `target` atomically: a `.part` file beside it, flushed, then renamed."""
    staging = target.with_name(target.name + ".part")
    with open(staging, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(staging, target)


class _Rewriter:
    """Moves rows and files from the old key (or none) to the new one (or none)."""

    def __init__(
        self, conn: sqlite3.Connection, root: Path, old: Cipher | None, new: Cipher | None, serde: SerializerProtocol
    ) -> None:
        self.conn = conn
        self.root = root
        self.old = old
        self.new = new
        self.serde = serde
        self.values = 0
        self.attachments = 0

    def blob(self, data: bytes) -> bytes:
        plain = data if self.old is None else self.old.open(data)
        return plain if self.new is None else self.new.seal(plain)

    def text(self, text: str) -> str:
        plain = text if self.old is None else self.old.open_text(text)
        return plain if self.new is None else self.new.seal_text(plain)

    def batch(self, state: dict, keys: list[int], batch_rows: int) -> int:
        """Rewrite threads from `keys` until about `batch_rows` rows are done, in one
        transaction that records the progress; returns how many threads it did."""
        conn = self.conn
        unlink: list[str] = []
        done = rows = 0
        values, attachments = self.values, self.attachments
        conn.execute("BEGIN IMMEDIATE")
        try:
            for thread_key in keys:
                rows += self.thread(thread_key, unlink)
                done += 1
                state["done_upto"] = thread_key
                if rows >= batch_rows:
                    break
            state["unlink"] = unlink
            conn.execute(
                "UPDATE store_meta SET value = ? WHERE key = ?", (json.dumps(state), encryption.ROTATION_META_KEY)
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            self.values, self.attachments = values, attachments
            raise
        return done

    def thread(self, thread_key: int, unlink: list[str]) -> int:
        """Rewrite one thread's encrypted values, re-index its messages; returns rows rewritten."""
        conn, blob = self.conn, self.blob
        rows = 0
        for table, keys, column, which in _BLOB_COLUMNS:
            found = conn.execute(
                f"SELECT {', '.join(keys)}, {column} FROM {table} WHERE thread_key = ?{which}", (thread_key,)
            ).fetchall()
            conn.executemany(
                f"UPDATE {table} SET {column} = ? WHERE thread_key = ? AND " + " AND ".join(f"{k} = ?" for k in keys),
                [(blob(r[-1]), thread_key, *r[:-1]) for r in found],
            )
            rows += len(found)
        plain = []
        found = conn.execute("SELECT message_no, type, value FROM messages WHERE thread_key = ?", (thread_key,)).fetchall()
        for no, type_, value in found:
            plain.append((no, type_, value if self.old is None else self.old.open(value)))
        conn.executemany(
            "UPDATE messages SET value = ? WHERE thread_key = ? AND message_no = ?",
            [(blob(value), thread_key, no) for no, _, value in found],
        )
        rows += len(found)
        found = conn.execute(
            "SELECT first_no, nos, value FROM message_segments WHERE thread_key = ?", (thread_key,)
        ).fetchall()
        for _, nos, value in found:
            plain += _segment_rows(codec.unpack_numbers(nos), value if self.old is None else self.old.open(value))
        conn.executemany(
            "UPDATE message_segments SET value = ? WHERE thread_key = ? AND first_no = ?",
            [(blob(value), thread_key, first) for first, _, value in found],
        )
        rows += len(found)
        self.index(plain, thread_key)
        (title,) = conn.execute("SELECT title FROM threads WHERE thread_key = ?", (thread_key,)).fetchone()
        if title is not None:
            conn.execute("UPDATE threads SET title = ? WHERE thread_key = ?", (self.text(title), thread_key))
            rows += 1
        rows += self.attachment(thread_key, unlink)
        self.values += rows
        return rows

    def index(self, messages: list[tuple[int, str, bytes]], thread_key: int) -> None:
        """Add plain message rows to the (emptied) search index under the new key."""
        entries = []
        for no, type_, plain in messages:
            words = search.search_words(load_message(self.serde, type_, plain))
            if words and self.new is not None:
                words = search.hashed_words(words, self.new.search_token)
            if words:
                entries.append((search.rowid(thread_key, no), words))
        search.add(self.conn, entries)

    def attachment(self, thread_key: int, unlink: list[str]) -> int:
        row = self.conn.execute(
            "SELECT name, file, tables FROM attachments WHERE thread_key = ?", (thread_key,)
        ).fetchone()
        if row is None:
            return 0
        name, file, tables = row
        old_path = self.root / file
        if not old_path.is_file():  # lost outside threadkeeper: keep the row readable, nothing to rewrite
            self.conn.execute(
                "UPDATE attachments SET name = ?, tables = ? WHERE thread_key = ?",
                (self.text(name), self.text(tables), thread_key),
            )
            return 2
        plain_name = name if self.old is None else self.old.open_text(name)
        if self.new is not None:
            stored_name = ENCRYPTED_FILE_NAME
        else:
            stored_name = Path(plain_name).stem + ".db" if Path(plain_name).suffix.lower() in CSV_SUFFIXES else plain_name
        tag = "plain" if self.new is None else self.new.key_id.hex()
        prefix = hashlib.sha256(f"{file}\0{tag}".encode()).hexdigest()[:8]
        relative = (Path(file).parent / f"{prefix}-{_safe_name(stored_name)}").as_posix()
        data = old_path.read_bytes()
        write_file(self.root / relative, self.blob(data))
        del data
        self.conn.execute(
            "UPDATE attachments SET name = ?, file = ?, bytes = ?, tables = ? WHERE thread_key = ?",
            (self.text(name), relative, (self.root / relative).stat().st_size, self.text(tables), thread_key),
        )
        if relative != file:
            unlink.append(file)
        self.attachments += 1
        return 2

    def unlink(self, files: list[str]) -> None:
        for file in files:
            (self.root / file).unlink(missing_ok=True)


# Tables whose rows hold serialised values: (table, key columns after
# thread_key, the encrypted column, which rows). Lists of message numbers
# (the other kinds) are not encrypted. Messages and segments are done apart:
# their plain text is re-indexed too.
_BLOB_COLUMNS = (
    ("checkpoints", ("checkpoint_ns", "checkpoint_id"), "checkpoint", ""),
    (
        "channel_values",
        ("value_no",),
        "value",
        f" AND kind IN ({codec.KIND_SERDE}, {codec.KIND_MESSAGE_DICT}) AND value IS NOT NULL",
    ),
    (
        "writes",
        ("checkpoint_ns", "checkpoint_id", "task_id", "idx"),
        "value",
        f" AND kind IN ({codec.KIND_SERDE}, {codec.KIND_MESSAGE_DICT}) AND value IS NOT NULL",
    ),
)
