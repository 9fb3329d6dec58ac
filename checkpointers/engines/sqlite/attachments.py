"""Attached databases on SQLite (`saver.attachments`): `checkpointers.attachments`
says what an attachment is and checks every upload; this module keeps the file
under `<data dir>/attachments/<thread>/`, a row of `attachments` naming it, in
the saver's write transaction."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from checkpointers import stats
from checkpointers.attachments import (
    ENCRYPTED_FILE_NAME,
    Attachment,
    Attachments,
    build_database,
    database_image,
    safe_name,
    thread_dir_name,
)
from checkpointers.encryption import Cipher, attachment_place
from checkpointers.errors import ThreadNotFoundError
from checkpointers.messages import utc_now
from checkpointers.threads import ANY_USER

if TYPE_CHECKING:
    from checkpointers.engines.sqlite.saver import ThreadSaver


class AttachmentStore(Attachments):
    """`saver.attachments` on SQLite: one file per thread under `<data dir>/attachments/`."""

    def __init__(self, saver: ThreadSaver) -> None:
        self._saver = saver
        self.root = saver.path.parent / "attachments"

    def _store_cipher(self) -> Cipher | None:
        return self._saver._cipher

    def _owner_row(self, thread_id: str) -> tuple[int, str | None] | None:
        return self._saver.conn.execute(
            "SELECT thread_key, user_id FROM threads WHERE thread_id = ?", (thread_id,)
        ).fetchone()

    def _attach(self, thread_id: str, user_id: Any, source: Path, display: str, from_csv: bool) -> Attachment:
        self.root.mkdir(parents=True, exist_ok=True)
        cipher = self._saver._cipher
        stored_name = Path(display).stem + ".db" if from_csv else display
        if cipher is not None:
            stored_name = ENCRYPTED_FILE_NAME  # the upload's name is content too
        relative = Path(thread_dir_name(thread_id)) / f"{uuid.uuid4().hex[:8]}-{safe_name(stored_name)}"
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(target.name + ".part")
        try:
            if cipher is not None:
                image, tables = database_image(source, display, from_csv=from_csv)
                staging.write_bytes(cipher.seal(image, attachment_place(thread_id, "file")))
                del image
            else:
                tables = build_database(source, staging, display, from_csv=from_csv)
            staging.replace(target)
            stored_bytes = target.stat().st_size
            with self._saver._write() as after_commit:
                row = self._owner_row(thread_id)
                if row is not None and user_id is not ANY_USER and row[1] != user_id:
                    raise ThreadNotFoundError(thread_id)
                now = utc_now()
                if row is None:
                    owner = None if user_id is ANY_USER else user_id
                    thread_key = self._saver.conn.execute(
                        "INSERT INTO threads (thread_id, user_id, created_at, updated_at) VALUES (?, ?, ?, ?)",
                        (thread_id, owner, now, now),
                    ).lastrowid
                    stats.thread_created(self._saver.conn, owner)  # usage statistics
                else:
                    thread_key = row[0]
                old = self._saver.conn.execute(
                    "SELECT file FROM attachments WHERE thread_key = ?", (thread_key,)
                ).fetchone()
                self._saver.conn.execute(
                    "INSERT OR REPLACE INTO attachments (thread_key, name, file, bytes, tables, attached_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        thread_key,
                        self._seal_text(display, thread_id, "name"),
                        relative.as_posix(),
                        stored_bytes,
                        self._seal_text(json.dumps(tables), thread_id, "tables"),
                        now,
                    ),
                )
                stats.attachment_added(self._saver.conn)  # usage statistics
                if old:
                    after_commit.append(lambda: self._unlink([old[0]]))
        except BaseException:
            for leftover in (staging, target):
                leftover.unlink(missing_ok=True)
            self._remove_empty_dir(target.parent)
            raise
        return Attachment(thread_id, display, target, stored_bytes, tables, now)

    def _get(self, thread_id: str, user_id: str | None, *, flush: bool) -> Attachment | None:
        with self._saver._read(flush=flush) as conn:
            row = conn.execute(
                "SELECT t.user_id, a.name, a.file, a.bytes, a.tables, a.attached_at FROM threads t "
                "LEFT JOIN attachments a ON a.thread_key = t.thread_key WHERE t.thread_id = ?",
                (thread_id,),
            ).fetchone()
        if not self._visible(row, thread_id, user_id) or row[1] is None:
            return None
        name, tables = self._open_text(row[1], thread_id, "name"), json.loads(self._open_text(row[4], thread_id, "tables"))
        return Attachment(thread_id, name, self.root / row[2], row[3], tables, row[5])

    def _as_exported(self, attached: Attachment, name: str, attached_at: str, exact: bytes | None) -> None:
        thread_id, stored, size = attached.thread_id, attached.path, None
        if exact is not None:
            cipher = self._store_cipher()
            staging = stored.with_name(stored.name + ".part")
            staging.write_bytes(exact if cipher is None else cipher.seal(exact, attachment_place(thread_id, "file")))
            staging.replace(stored)
            size = stored.stat().st_size
        with self._saver._write():
            self._saver.conn.execute(
                "UPDATE attachments SET name = ?, attached_at = ?, bytes = coalesce(?, bytes) "
                "WHERE thread_key = (SELECT thread_key FROM threads WHERE thread_id = ?)",
                (self._seal_text(name, thread_id, "name"), attached_at, size, thread_id),
            )

    def _remove(self, thread_id: str, user_id: Any) -> bool:
        with self._saver._write() as after_commit:
            row = self._owner_row(thread_id)
            if row is None or (user_id is not ANY_USER and row[1] != user_id):
                raise ThreadNotFoundError(thread_id)
            old = self._saver.conn.execute("SELECT file FROM attachments WHERE thread_key = ?", (row[0],)).fetchone()
            if old is None:
                return False
            self._saver.conn.execute("DELETE FROM attachments WHERE thread_key = ?", (row[0],))
            after_commit.append(lambda: self._unlink([old[0]]))
        return True

    # -- used by the saver inside its own transactions ------------------------

    def files_of(self, thread_keys: list[int]) -> list[str]:
        return [
            f
            for (f,) in self._saver.conn.execute(
                "SELECT file FROM attachments WHERE thread_key IN (SELECT value FROM json_each(?))",
                (json.dumps(thread_keys),),
            )
        ]

    def copy_row(self, source_key: int, target_key: int, target_thread_id: str) -> str | None:
        """Copy the attachment of one thread to another; returns the new file to undo on failure."""
        row = self._saver.conn.execute(
            "SELECT name, file, bytes, tables, attached_at FROM attachments WHERE thread_key = ?", (source_key,)
        ).fetchone()
        if row is None:
            return None
        name, file, size, tables, attached_at = row
        relative = Path(thread_dir_name(target_thread_id)) / f"{uuid.uuid4().hex[:8]}-{Path(file).name.split('-', 1)[-1]}"
        (self.root / relative).parent.mkdir(parents=True, exist_ok=True)
        cipher = self._saver._cipher
        if cipher is None:
            shutil.copyfile(self.root / file, self.root / relative)
        else:  # sealed to the source thread: the copy is sealed to its own
            source_thread_id = self._saver.conn.execute(
                "SELECT thread_id FROM threads WHERE thread_key = ?", (source_key,)
            ).fetchone()[0]
            name = self._seal_text(self._open_text(name, source_thread_id, "name"), target_thread_id, "name")
            tables = self._seal_text(self._open_text(tables, source_thread_id, "tables"), target_thread_id, "tables")
            data = cipher.open((self.root / file).read_bytes(), attachment_place(source_thread_id, "file"))
            (self.root / relative).write_bytes(cipher.seal(data, attachment_place(target_thread_id, "file")))
            del data
            size = (self.root / relative).stat().st_size
        self._saver.conn.execute(
            "INSERT INTO attachments (thread_key, name, file, bytes, tables, attached_at) VALUES (?, ?, ?, ?, ?, ?)",
            (target_key, name, relative.as_posix(), size, tables, attached_at),
        )
        return relative.as_posix()

    def _unlink(self, files: list[str]) -> None:
        self._opened = None
        for file in files:
            path = self.root / file
            path.unlink(missing_ok=True)
            self._remove_empty_dir(path.parent)

    def _remove_empty_dir(self, directory: Path) -> None:
        if directory != self.root and directory.is_dir():
            try:
                directory.rmdir()
            except OSError:
                pass  # not empty: another attachment of the thread is still there
