"""Re-sealing a store's encrypted values: under another key, in the current format, or for another thread.

Three callers rewrite sealed values row by row, and share this code so the
list of what is sealed, and where each value is bound (see
`checkpointers.encryption`), is written once:

* `threadkeeper rotate-key` (`checkpointers.engines.sqlite.key_rotation`): from the old key
  (or none) to the new one (or none);
* `upgrade`, run by a saver that opens a store whose values are still in
  format 1 (not bound to their place): the same key, every value re-sealed
  bound to where it is;
* `ThreadSaver.copy_thread`: the copied rows, re-sealed under the new thread.

The upgrade works like a rotation and uses its record in `store_meta`
(`encryption_rotation`, with `"upgrade": true`): threads in `thread_key`
order, in committed batches that record how far they got, so a killed run
resumes where it stopped, and savers of the previous release, which cannot
write bound values, refuse to open or write the store from its first batch
on. Unlike a rotation, the key stays, so the search index (keyed hashes) is
kept as it is, and a saver that opens the store with its key joins in
instead of refusing; several may, since each batch reads its starting point
inside its own transaction. The last transaction sets the key record to
version 2: from then on a format-1 value is refused wherever it is found.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from checkpointers import codec, encryption
from checkpointers.engines.sqlite.keys import read_records
from checkpointers.attachments import CSV_SUFFIXES, ENCRYPTED_FILE_NAME, safe_name
from checkpointers.encryption import (
    Cipher,
    attachment_place,
    checkpoint_place,
    message_place,
    segment_place,
    title_place,
    value_place,
    write_place,
)

logger = logging.getLogger(__name__)

# Tables whose rows hold serialised values: (table, key columns after
# thread_key, the encrypted column, which rows, the place of a row's value).
# Lists of message numbers (the other kinds) are not encrypted. Messages and
# segments are done apart: a rotation re-indexes their plain text.
_BLOB_COLUMNS: tuple[tuple[str, tuple[str, ...], str, str, Callable[..., bytes]], ...] = (
    ("checkpoints", ("checkpoint_ns", "checkpoint_id"), "checkpoint", "", checkpoint_place),
    (
        "channel_values",
        ("value_no",),
        "value",
        f" AND kind IN ({codec.KIND_SERDE}, {codec.KIND_MESSAGE_DICT}) AND value IS NOT NULL",
        value_place,
    ),
    (
        "writes",
        ("checkpoint_ns", "checkpoint_id", "task_id", "idx"),
        "value",
        f" AND kind IN ({codec.KIND_SERDE}, {codec.KIND_MESSAGE_DICT}) AND value IS NOT NULL",
        write_place,
    ),
)


def write_file(target: Path, data: bytes) -> None:
    """Write `data` to `target` atomically: a `.part` file beside it, flushed, then renamed."""
    staging = target.with_name(target.name + ".part")
    with open(staging, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(staging, target)


class Resealer:
    """Rewrites sealed values from `old` (None: plain) to `new` (None: plain).

    Runs inside the caller's transaction; `values` and `attachments` count
    what it rewrote. Subclasses may look at each thread's plain messages
    (`messages_read`): a key rotation re-indexes them.
    """

    def __init__(self, conn: sqlite3.Connection, root: Path, old: Cipher | None, new: Cipher | None) -> None:
        self.conn = conn
        self.root = root
        self.old = old
        self.new = new
        self.values = 0
        self.attachments = 0

    def _open(self, data: bytes, place: bytes) -> bytes:
        return data if self.old is None else self.old.open(data, place)

    def _seal(self, plain: bytes, place: bytes) -> bytes:
        return plain if self.new is None else self.new.seal(plain, place)

    def _text(self, text: str, at: bytes, to: bytes) -> str:
        plain = text if self.old is None else self.old.open_text(text, at)
        return plain if self.new is None else self.new.seal_text(plain, to)

    def thread(self, thread_key: int, *, copied_from: tuple[int, str] | None = None) -> int:
        """Rewrite one thread's sealed rows and title; returns how many.

        `copied_from`: (thread_key, thread_id) of the thread whose rows these
        are copies of (`copy_thread`): they are opened as sealed there."""
        conn = self.conn
        thread_id, title = conn.execute(
            "SELECT thread_id, title FROM threads WHERE thread_key = ?", (thread_key,)
        ).fetchone()
        from_key, from_id = copied_from or (thread_key, thread_id)
        rows = 0
        for table, keys, column, which, place in _BLOB_COLUMNS:
            found = conn.execute(
                f"SELECT {', '.join(keys)}, {column} FROM {table} WHERE thread_key = ?{which}", (thread_key,)
            ).fetchall()
            updates = []
            for *key, value in found:
                plain = self._open(value, place(from_key, *key))
                updates.append((self._seal(plain, place(thread_key, *key)), thread_key, *key))
            conn.executemany(
                f"UPDATE {table} SET {column} = ? WHERE thread_key = ? AND " + " AND ".join(f"{k} = ?" for k in keys),
                updates,
            )
            rows += len(found)
        loose = [
            (no, type_, self._open(value, message_place(from_key, no)))
            for no, type_, value in conn.execute(
                "SELECT message_no, type, value FROM messages WHERE thread_key = ?", (thread_key,)
            ).fetchall()
        ]
        conn.executemany(
            "UPDATE messages SET value = ? WHERE thread_key = ? AND message_no = ?",
            [(self._seal(plain, message_place(thread_key, no)), thread_key, no) for no, _, plain in loose],
        )
        segments = [
            (first, nos, self._open(value, segment_place(from_key, nos)))
            for first, nos, value in conn.execute(
                "SELECT first_no, nos, value FROM message_segments WHERE thread_key = ?", (thread_key,)
            ).fetchall()
        ]
        conn.executemany(
            "UPDATE message_segments SET value = ? WHERE thread_key = ? AND first_no = ?",
            [(self._seal(plain, segment_place(thread_key, nos)), thread_key, first) for first, nos, plain in segments],
        )
        rows += len(loose) + len(segments)
        self.messages_read(thread_key, loose, [(nos, plain) for _, nos, plain in segments])
        if title is not None:
            conn.execute(
                "UPDATE threads SET title = ? WHERE thread_key = ?",
                (self._text(title, title_place(from_id), title_place(thread_id)), thread_key),
            )
            rows += 1
        self.values += rows
        return rows

    def messages_read(
        self, thread_key: int, loose: list[tuple[int, str, bytes]], segments: list[tuple[bytes, bytes]]
    ) -> None:
        """A thread's plain messages as `thread` met them: loose (message_no, type, blob)
        rows, and segments as (packed numbers, plain segment value)."""

    def attachment(self, thread_key: int, unlink: list[str]) -> int:
        """Rewrite the thread's attachment row and file (to a new file; the old one goes
        to `unlink`, for after the commit); returns rows rewritten."""
        row = self.conn.execute(
            "SELECT t.thread_id, a.name, a.file, a.tables FROM attachments a JOIN threads t USING (thread_key) "
            "WHERE a.thread_key = ?",
            (thread_key,),
        ).fetchone()
        if row is None:
            return 0
        thread_id, name, file, tables = row
        name_place, tables_place = attachment_place(thread_id, "name"), attachment_place(thread_id, "tables")
        old_path = self.root / file
        if not old_path.is_file():  # lost outside threadkeeper: keep the row readable, nothing to rewrite
            self.conn.execute(
                "UPDATE attachments SET name = ?, tables = ? WHERE thread_key = ?",
                (self._text(name, name_place, name_place), self._text(tables, tables_place, tables_place), thread_key),
            )
            return 2
        plain_name = name if self.old is None else self.old.open_text(name, name_place)
        if self.new is not None:
            stored_name = ENCRYPTED_FILE_NAME
        else:
            stored_name = Path(plain_name).stem + ".db" if Path(plain_name).suffix.lower() in CSV_SUFFIXES else plain_name
        tag = "plain" if self.new is None else self.new.key_id.hex()
        prefix = hashlib.sha256(f"{file}\0{tag}".encode()).hexdigest()[:8]
        relative = (Path(file).parent / f"{prefix}-{safe_name(stored_name)}").as_posix()
        file_place = attachment_place(thread_id, "file")
        data = self._seal(self._open(old_path.read_bytes(), file_place), file_place)
        write_file(self.root / relative, data)
        del data
        self.conn.execute(
            "UPDATE attachments SET name = ?, file = ?, bytes = ?, tables = ? WHERE thread_key = ?",
            (
                self._text(name, name_place, name_place),
                relative,
                (self.root / relative).stat().st_size,
                self._text(tables, tables_place, tables_place),
                thread_key,
            ),
        )
        if relative != file:
            unlink.append(file)
        self.attachments += 1
        return 2

    def batch(self, batch_rows: int) -> int | None:
        """Rewrite the next threads of the unfinished rotation (or upgrade) until about
        `batch_rows` rows are done, in one transaction that records the progress;
        returns how many threads it did, None when none are left (or another
        process finished the rotation). Where to start is read inside the
        transaction, so processes running the same rotation share the work."""
        conn = self.conn
        unlink: list[str] = []
        done = rows = 0
        values, attachments = self.values, self.attachments
        conn.execute("BEGIN IMMEDIATE")
        try:
            found = conn.execute(
                "SELECT value FROM store_meta WHERE key = ?", (encryption.ROTATION_META_KEY,)
            ).fetchone()
            state = None if found is None else json.loads(found[0])
            keys = [] if state is None else [
                k
                for (k,) in conn.execute(
                    "SELECT thread_key FROM threads WHERE thread_key > ? ORDER BY thread_key LIMIT 500",
                    (state["done_upto"],),
                )
            ]
            for thread_key in keys:
                rows += self.thread(thread_key) + self.attachment(thread_key, unlink)
                done += 1
                state["done_upto"] = thread_key
                if rows >= batch_rows:
                    break
            if keys:
                state["unlink"] = unlink
                conn.execute(
                    "UPDATE store_meta SET value = ? WHERE key = ?", (json.dumps(state), encryption.ROTATION_META_KEY)
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            self.values, self.attachments = values, attachments
            raise
        self.unlink(unlink)
        return done or None

    def unlink(self, files: list[str]) -> None:
        for file in files:
            (self.root / file).unlink(missing_ok=True)


def upgrade(conn: sqlite3.Connection, path: Path | str, cipher: Cipher, *, batch_rows: int = 2_000) -> int:
    """Re-seal every value of a store in format 1 bound to its place, under the same key
    (see the module docstring); returns how many values. `cipher` is the store's
    (`reads_unbound`). Resumes or joins an upgrade another run started."""
    record_json = cipher.record().to_json()
    conn.execute("BEGIN IMMEDIATE")
    try:
        record, rotation = read_records(conn)
        if rotation is None:
            if record is not None and encryption.KeyRecord.from_json(record).version == encryption.RECORD_VERSION:
                conn.execute("COMMIT")  # another process finished it meanwhile
                return 0
            state = {"version": 1, "key": record_json, "done_upto": 0, "unlink": [], "upgrade": True}
            conn.execute(
                "INSERT INTO store_meta (key, value) VALUES (?, ?)", (encryption.ROTATION_META_KEY, json.dumps(state))
            )
            # As for a rotation: every cached thread row changes, so a saver that
            # opened the store before reads the thread afresh, and its key check
            # (`_check_key_unchanged`) refuses to write while this runs and after.
            conn.execute("UPDATE threads SET gc_epoch = gc_epoch + 1")
        elif not encryption.is_upgrade(rotation):
            raise encryption.rotation_unfinished(path)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    started = time.monotonic()
    logger.info("%s: re-sealing encrypted values bound to their place (once; an interruption resumes)", path)
    resealer = Resealer(conn, Path(path).parent / "attachments", cipher, cipher)
    found = conn.execute("SELECT value FROM store_meta WHERE key = ?", (encryption.ROTATION_META_KEY,)).fetchone()
    if found is not None:
        resealer.unlink(json.loads(found[0])["unlink"])  # left by a run that stopped after a commit
    while resealer.batch(batch_rows) is not None:
        pass
    conn.execute("BEGIN IMMEDIATE")
    try:
        if encryption.is_upgrade(read_records(conn)[1]):
            conn.execute("UPDATE store_meta SET value = ? WHERE key = ?", (record_json, encryption.META_KEY))
            conn.execute("DELETE FROM store_meta WHERE key = ?", (encryption.ROTATION_META_KEY,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    logger.info("%s: re-sealed %d values in %.1f s", path, resealer.values, time.monotonic() - started)
    return resealer.values
