"""Databases attached to threads: one SQLite file per thread, kept by the store.

A user attaches a SQLite database (or a CSV file, imported into one) to a
thread; the agent's database tools then read it. The store keeps its own copy,
copies it with `copy_thread` and deletes it with the thread, so the attachment
lives exactly as long as the conversation that uses it. What every engine
promises (checks, sentences, ownership) is `Attachments`; the SQLite engine
(`checkpointers.engines.sqlite.attachments.AttachmentStore`) keeps the file under `<data dir>/attachments/<thread>/` and
records it in the `attachments` table; the PostgreSQL engine keeps its bytes in
the database, so every app process reaches it
(`checkpointers.engines.postgres.attachments`).

    saver.attachments.attach("t1", "sales.db", user_id="alice")
    saver.attachments.get("t1", user_id="alice").tables   # ['orders', ...]

In an encrypted store the file is built in memory and written encrypted (no
plain copy touches the disk), under a name that does not repeat the upload's;
its name and table list are encrypted in the `attachments` row, and the agent's
tools get the decrypted bytes (`database()`), which they open in memory.
"""

from __future__ import annotations

import asyncio
import csv
import os
import re
import sqlite3
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from checkpointers.encryption import Cipher, attachment_place
from checkpointers.errors import StoreError, ThreadNotFoundError
from checkpointers.storable import check_id, storable_text
from checkpointers.threads import ANY_USER


SQLITE_HEADER = b"SQLite format 3\x00"
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
MAX_CSV_COLUMNS = 2000
"""SQLite's limit on the columns of a table (SQLITE_MAX_COLUMN as built by default)."""
CSV_SUFFIXES = {".csv"}
SQLITE_SUFFIXES = {".db", ".sqlite", ".sqlite3", ".db3"}
ENCRYPTED_FILE_NAME = "attachment.enc"
"""The stored file's name (after a random prefix) in an encrypted store."""


class AttachmentError(StoreError, ValueError):
    """The file cannot be attached: wrong type, corrupt, or too large."""


@dataclass(frozen=True)
class Attachment:
    """The database attached to one thread."""

    thread_id: str
    name: str
    path: Path
    bytes: int
    tables: list[str]
    attached_at: str


def max_attachment_bytes() -> int:
    """`THREADKEEPER_MAX_ATTACHMENT_MB` (default 50) in bytes."""
    raw = os.environ.get("THREADKEEPER_MAX_ATTACHMENT_MB")
    if not raw:
        return DEFAULT_MAX_BYTES
    try:
        return int(float(raw) * 1024 * 1024)
    except ValueError:
        raise ValueError(f"THREADKEEPER_MAX_ATTACHMENT_MB must be a number of megabytes, not {raw!r}") from None


def thread_dir_name(thread_id: str) -> str:
    """The folder of a thread's attachments: a hash of its id, never the id itself
    (no path is built from what a user sent). Older stores keep their folders:
    the `attachments` row holds each file's path."""
    return "t-" + uuid.uuid5(uuid.NAMESPACE_URL, thread_id).hex


def open_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection to the SQLite file at `path`, which may have any name.

    SQLite reads `mode=ro` only from a `file:` URI, and decodes `%XX`, `?` and `#`
    in one: an upload named `..%2F..%2Fdata%2Fthreadkeeper.db` once opened the
    server's own database. The URI is built from the resolved path with every
    such character escaped (`Path.as_uri`), and the file SQLite opened is
    checked to be `path` itself before anything is read from it."""
    path = Path(path).resolve()
    conn = sqlite3.connect(path.as_uri() + "?mode=ro", uri=True)
    try:
        opened = conn.execute("PRAGMA database_list").fetchone()[2]
        if not opened or not os.path.samefile(opened, path):
            raise AttachmentError(f"{path.name} could not be opened as itself")
    except BaseException:
        conn.close()
        raise
    return conn


def safe_name(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).name).strip("._") or "database"
    return stem[:80]


def _table_name(name: str) -> str:
    stem = re.sub(r"\W+", "_", Path(name).stem).strip("_").lower() or "data"
    return stem if not stem[0].isdigit() else f"t_{stem}"


def _sqlite_int(text: str) -> int:
    """`int(text)` if SQLite can hold it (64 bits); ValueError otherwise, so the column is REAL or TEXT."""
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise ValueError(text)
    return value


def _column_type(values: list[str]) -> str:
    present = [v for v in values if v != ""]
    if not present:
        return "TEXT"
    for kind, convert in (("INTEGER", _sqlite_int), ("REAL", float)):
        try:
            for v in present:
                convert(v)
        except ValueError:
            continue
        return kind
    return "TEXT"


def import_csv(source: Path, target: Path | sqlite3.Connection, display_name: str) -> None:
    """Build a one-table SQLite database (a file, or in an open connection) from a CSV file with a header row."""
    try:
        with open(source, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError:
        raise AttachmentError(f"{display_name} is not a UTF-8 CSV file") from None
    except csv.Error as exc:
        raise AttachmentError(f"{display_name} is not a readable CSV file: {exc}") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise AttachmentError(f"{display_name} is empty: a CSV file needs a header row")
    header = [re.sub(r"\s+", " ", h).strip() or f"column_{i + 1}" for i, h in enumerate(rows[0])]
    if len(header) > MAX_CSV_COLUMNS:
        raise AttachmentError(
            f"{display_name} has {len(header):,} columns; a table can have at most {MAX_CSV_COLUMNS:,}"
        )
    if len(set(h.lower() for h in header)) != len(header):
        raise AttachmentError(f"{display_name} has repeated column names in its header row")
    body = rows[1:]
    for line, row in enumerate(body, start=2):
        if len(row) > len(header):
            raise AttachmentError(
                f"{display_name} is not a well-formed CSV file: row {line} has {len(row)} fields, the header has {len(header)}"
            )
    body = [row + [""] * (len(header) - len(row)) for row in body]
    types = [_column_type([row[i] for row in body]) for i in range(len(header))]
    table = _table_name(display_name)
    columns = ", ".join(f'"{h.replace(chr(34), chr(34) * 2)}" {t}' for h, t in zip(header, types))
    conn = target if isinstance(target, sqlite3.Connection) else sqlite3.connect(target)
    try:
        _fill_table(conn, table, columns, header, types, body)
    except (sqlite3.Error, OverflowError) as exc:
        raise AttachmentError(f"{display_name} cannot be turned into a table ({exc})") from None
    finally:
        if conn is not target:
            conn.close()


def _fill_table(
    conn: sqlite3.Connection, table: str, columns: str, header: list[str], types: list[str], body: list[list[str]]
) -> None:
    """Create the CSV's table and insert its rows, each value as its column's type."""
    conn.execute(f'CREATE TABLE "{table}" ({columns})')
    marks = ", ".join("?" for _ in header)

    def typed(row: list[str]) -> list[Any]:
        out: list[Any] = []
        for value, kind in zip(row, types):
            if value == "":
                out.append(None)
            elif kind == "INTEGER":
                out.append(int(value))
            elif kind == "REAL":
                out.append(float(value))
            else:
                out.append(value)
        return out

    conn.executemany(f'INSERT INTO "{table}" VALUES ({marks})', (typed(r) for r in body))
    conn.commit()


def copy_sqlite(source: Path, target: Path | sqlite3.Connection, display_name: str) -> None:
    """Copy a SQLite database (its WAL included) into a self-contained file (or an open connection)."""
    with open(source, "rb") as f:
        header = f.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        raise AttachmentError(f"{display_name} is not a SQLite database")
    try:
        src = open_read_only(source)
    except (sqlite3.Error, OSError) as exc:
        raise AttachmentError(f"{display_name} cannot be opened as a SQLite database: {exc}") from None
    try:
        dst = target if isinstance(target, sqlite3.Connection) else sqlite3.connect(target)
        try:
            src.backup(dst)
            (verdict,) = dst.execute("PRAGMA quick_check").fetchone()
            if verdict != "ok":
                raise AttachmentError(f"{display_name} is a damaged SQLite database ({verdict})")
            dst.execute("PRAGMA journal_mode = DELETE")  # read later with mode=ro: no -wal/-shm needed
        finally:
            if dst is not target:
                dst.close()
    except sqlite3.DatabaseError as exc:
        raise AttachmentError(f"{display_name} is a damaged SQLite database ({exc})") from None
    finally:
        src.close()


def list_tables(path: Path | sqlite3.Connection) -> list[str]:
    conn = path if isinstance(path, sqlite3.Connection) else open_read_only(path)
    try:
        return [
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
    finally:
        if conn is not path:
            conn.close()


def database_image(source: Path, display_name: str, *, from_csv: bool) -> tuple[bytes, list[str]]:
    """The bytes of the database `attach` stores, built in memory, and its tables."""
    conn = sqlite3.connect(":memory:")
    try:
        if from_csv:
            import_csv(source, conn, display_name)
        else:
            copy_sqlite(source, conn, display_name)
        tables = list_tables(conn)
        image = bytearray(conn.serialize())
    finally:
        conn.close()
    # A copy of a WAL database keeps WAL in its header; an image opens only in rollback mode.
    image[18:20] = b"\x01\x01"
    return bytes(image), tables


def checked_upload(source: str | os.PathLike, name: str | None) -> tuple[Path, str, bool]:
    """(the file, the name to show, whether it is a CSV file) of an upload both engines
    accept; `AttachmentError` with one sentence for a name, type or size they refuse."""
    source = Path(source)
    display = name or source.name
    if not display.isascii() and not storable_text(display):
        raise AttachmentError("The file's name is not valid Unicode; rename the file and try again")
    if "\x00" in display:  # PostgreSQL's text has none: refused on every engine alike
        raise AttachmentError("The file's name cannot contain the NUL character; rename the file and try again")
    suffix = Path(display).suffix.lower()
    if suffix not in CSV_SUFFIXES | SQLITE_SUFFIXES:
        raise AttachmentError(
            f"{display} cannot be attached: upload a SQLite database (.db, .sqlite, .sqlite3) or a .csv file"
        )
    if not source.is_file():
        raise AttachmentError(f"{display} does not exist or is not a file")
    size = source.stat().st_size
    limit = max_attachment_bytes()
    if size > limit:
        raise AttachmentError(f"{display} is {size / 1e6:.1f} MB, over the {limit / 1e6:.0f} MB limit for attachments")
    if size == 0:
        raise AttachmentError(f"{display} is empty")
    return source, display, suffix in CSV_SUFFIXES


def build_database(source: Path, target: Path, display: str, *, from_csv: bool) -> list[str]:
    """Write the database `attach` keeps to `target` (a checked copy, or the CSV's table); its tables."""
    if from_csv:
        import_csv(source, target, display)
    else:
        copy_sqlite(source, target, display)
    return list_tables(target)


class Attachments:
    """Attach, read and remove the database of a thread (`saver.attachments`): what every
    engine promises. Each engine keeps the file its own way (`AttachmentStore` beside the
    SQLite file, `checkpointers.engines.postgres.attachments` in the database).

    `user_id` scopes every call the way the thread index does: a thread owned by
    someone else behaves as if it did not exist. `ANY_USER` skips the check.
    """

    def attach(
        self, thread_id: str, source: str | os.PathLike, *, user_id: str | None = None, name: str | None = None
    ) -> Attachment:
        """Copy `source` (SQLite or CSV) into the store as the thread's database.

        Replaces any earlier attachment of the thread. Creates the thread (owned by
        `user_id`) if it does not exist yet. Raises `AttachmentError` with one
        sentence for a file of the wrong type, a damaged file or one over
        `THREADKEEPER_MAX_ATTACHMENT_MB`; nothing changes in that case.
        """
        thread_id = check_id(thread_id)
        if isinstance(user_id, str):
            check_id(user_id, "user id")
        source, display, from_csv = checked_upload(source, name)
        return self._attach(thread_id, user_id, source, display, from_csv)

    def get(self, thread_id: str, *, user_id: str | None = ANY_USER) -> Attachment | None:
        """The thread's attachment, or None. Raises ThreadNotFoundError for a foreign thread."""
        return self._get(check_id(thread_id), user_id, flush=True)

    def path(self, thread_id: str) -> Path | None:
        """Where the thread's database file is on this machine, or None.

        The agent asks this at every step of a turn: it never writes anything first
        (an attachment is written at once, never deferred)."""
        found = self._get(str(thread_id), ANY_USER, flush=False)
        return found.path if found else None

    _opened: tuple[tuple, bytes] | None = None
    """The last decrypted file, keyed by (path, size, mtime): the tools read it several times a turn."""

    def _store_cipher(self) -> Cipher | None:
        """The store's cipher (None: not encrypted): the file, its name and its table list are
        sealed to the thread with it, the same on every engine."""
        raise NotImplementedError

    def database(self, thread_id: str) -> Path | bytes | None:
        """What the agent's tools open: the file's path, or in an encrypted store its
        decrypted bytes (held in memory only); None if nothing is attached.

        (The file, and on PostgreSQL its local copy, is encrypted when the store is. `path` does not write the turn's
        deferred checkpoints first: they stay in the one commit that ends the turn.)"""
        path = self.path(thread_id)
        cipher = self._store_cipher()
        if path is None or cipher is None:
            return path
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        opened = self._opened
        if opened is not None and opened[0] == key:
            return opened[1]
        data = cipher.open(path.read_bytes(), attachment_place(str(thread_id), "file"))
        self._opened = (key, data)
        return data

    def _seal_text(self, text: str, thread_id: str, part: str) -> str:
        """The attachment's `part` ("name", "tables") as stored: sealed to the thread when the store is encrypted."""
        cipher = self._store_cipher()
        return text if cipher is None else cipher.seal_text(text, attachment_place(thread_id, part))

    def _open_text(self, text: str, thread_id: str, part: str) -> str:
        cipher = self._store_cipher()
        return text if cipher is None else cipher.open_text(text, attachment_place(thread_id, part))

    def remove(self, thread_id: str, *, user_id: str | None = ANY_USER) -> bool:
        """Detach and delete the thread's database; True if there was one."""
        return self._remove(check_id(thread_id), user_id)

    def restore(
        self, thread_id: str, data: bytes, *, name: str, attached_at: str, user_id: str | None = ANY_USER
    ) -> None:
        """Attach a database brought back from an export as it was exported: under its
        name and time, and byte for byte.

        It is checked and stored as an upload is (`attach`; as a database whatever its
        name: one uploaded as CSV was stored converted), with the same `AttachmentError`.
        Checking copies it, and copying renumbers SQLite's 100-byte header (a database
        built from a CSV upload has other counts): when the copy differs from `data` in
        that header only, `data` itself is kept, so exporting again gives the same bytes.
        """
        with tempfile.TemporaryDirectory(prefix="threadkeeper-import-") as folder:
            source = Path(folder) / "attachment.db"
            source.write_bytes(data)
            attached = self.attach(thread_id, source, user_id=user_id)
        stored = self.database(attached.thread_id)
        stored = stored if isinstance(stored, bytes) else stored.read_bytes()
        header_only = stored != data and len(stored) == len(data) and stored[100:] == data[100:]
        # (never expected) more than the header differs: the checked copy stays.
        self._as_exported(attached, name, attached_at, data if header_only else None)

    @staticmethod
    def _visible(row: tuple | None, thread_id: str, user_id: Any) -> bool:
        """Whether a thread's row (None: no such thread; its owner first) shows its attachment
        to `user_id`: ThreadNotFoundError for another user's thread, or an unknown one asked
        for by a user; False for an unknown one asked for with `ANY_USER`."""
        if row is None:
            if user_id is ANY_USER:
                return False
            raise ThreadNotFoundError(thread_id)
        if user_id is not ANY_USER and row[0] != user_id:
            raise ThreadNotFoundError(thread_id)
        return True

    def _attach(self, thread_id: str, user_id: Any, source: Path, display: str, from_csv: bool) -> Attachment:
        raise NotImplementedError

    def _get(self, thread_id: str, user_id: Any, *, flush: bool) -> Attachment | None:
        raise NotImplementedError

    def _remove(self, thread_id: str, user_id: Any) -> bool:
        raise NotImplementedError

    def _as_exported(self, attached: Attachment, name: str, attached_at: str, exact: bytes | None) -> None:
        """Give the attachment `attach` just stored its exported name and time, and
        `exact` as its bytes unless None."""
        raise NotImplementedError

    # -- async twins (the file work blocks: a worker thread on every engine) --------

    async def aattach(self, thread_id: str, source: str | os.PathLike, **kwargs: Any) -> Attachment:
        return await asyncio.to_thread(lambda: self.attach(thread_id, source, **kwargs))

    async def aget(self, thread_id: str, *, user_id: str | None = ANY_USER) -> Attachment | None:
        return await asyncio.to_thread(lambda: self.get(thread_id, user_id=user_id))

    async def aremove(self, thread_id: str, *, user_id: str | None = ANY_USER) -> bool:
        return await asyncio.to_thread(lambda: self.remove(thread_id, user_id=user_id))
