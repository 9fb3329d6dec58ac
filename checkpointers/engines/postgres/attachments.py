"""`saver.attachments` on PostgreSQL: the attached database's bytes are kept in the
database, so every app process, on any machine, reaches it.

`attach` checks and builds the file as the SQLite engine does (a checked copy of a
SQLite database, or a CSV file's table; the same size limit and sentences), then
stores its bytes with its SHA-256 in `attachments` (one row per thread, replaced
by a new upload, deleted with the thread by `ON DELETE CASCADE`, copied by
`copy_thread`).

The agent's tools open a file, so each process keeps a read-only copy of what
they asked for in a local cache directory, named by the content's hash:
`$THREADKEEPER_ATTACHMENT_CACHE` (default `~/.cache/threadkeeper/attachments`),
one folder per database URL. A copy is written once (to a temporary name, checked
against the hash, then renamed into place), so a process never reads a half
written file, and is reused while its size matches. A process drops its own
copies when it removes or deletes what they were copies of; copies in other
processes' caches are unreachable leftovers (named by a hash no row holds) until
that process deletes something of the store or its cache is cleared.

In an encrypted store, as on SQLite, the file is built in memory and sealed to
the thread before anything is written (no plain copy touches this machine's
disk or the database); the row's `name` and `tables` (a JSON string) are sealed
too, `sha256` and `bytes` are those of the sealed bytes, the local copy is the
sealed file, and the tools get the decrypted bytes in memory (`database()`).
`copy_thread` seals the copy to its own thread (`reseal_copy`).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from checkpointers import stats
from checkpointers.attachments import Attachment, Attachments, build_database, database_image
from checkpointers.encryption import Cipher, attachment_place
from checkpointers.engines.base import FETCH_NONE, FETCH_ONE, Plan, Sql
from checkpointers.engines.postgres import keys
from checkpointers.engines.postgres.connection import neutral, redacted
from checkpointers.errors import StoreError, ThreadNotFoundError
from checkpointers.messages import utc_now
from checkpointers.threads import ANY_USER

CACHE_VARIABLE = "THREADKEEPER_ATTACHMENT_CACHE"

_THREAD_SQL = "SELECT user_id, thread_key FROM threads WHERE thread_id = %s FOR UPDATE"
_NEW_THREAD_SQL = (
    "INSERT INTO threads (thread_id, user_id, created_at, updated_at) VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (thread_id) DO NOTHING"
)
_STORE_SQL = (
    "INSERT INTO attachments (thread_key, name, sha256, bytes, tables, attached_at, data) "
    "VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s) ON CONFLICT (thread_key) DO UPDATE SET name = EXCLUDED.name, "
    "sha256 = EXCLUDED.sha256, bytes = EXCLUDED.bytes, tables = EXCLUDED.tables, "
    "attached_at = EXCLUDED.attached_at, data = EXCLUDED.data"
)
_OF_THREAD = " WHERE thread_key = (SELECT thread_key FROM threads WHERE thread_id = %s)"
_GET_SQL = (
    "SELECT t.user_id, a.name, a.sha256, a.bytes, a.tables::text, a.attached_at, t.thread_key FROM threads t "
    "LEFT JOIN attachments a ON a.thread_key = t.thread_key WHERE t.thread_id = %s"
)
_AS_EXPORTED = "UPDATE attachments SET name = %s, attached_at = %s"
_AS_EXPORTED_SQL = {
    False: _AS_EXPORTED + _OF_THREAD,
    True: _AS_EXPORTED + ", data = %s, sha256 = %s, bytes = %s" + _OF_THREAD,
}
"""Keyed by "the bytes change too"."""
_DATA_SQL = "SELECT data FROM attachments WHERE thread_key = %s AND sha256 = %s"
_IN_USE_SQL = "SELECT DISTINCT sha256 FROM attachments WHERE sha256 = ANY(%s)"


def cache_root() -> Path:
    """Where this machine keeps its copies: `$THREADKEEPER_ATTACHMENT_CACHE`, else the user's cache folder."""
    configured = os.environ.get(CACHE_VARIABLE)
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "threadkeeper" / "attachments"


class PostgresAttachments(Attachments):
    """`Attachments` with the bytes in PostgreSQL and a local, read-only copy per content hash."""

    def __init__(self, url: str, run: Callable[..., Any], cipher: Callable[[], Cipher | None]) -> None:
        """`url`: the store's (it names this store's cache folder); `run(plan, read=...)`: the saver's
        runner; `cipher()`: the store's cipher (None: not encrypted)."""
        self._run = run
        self._cipher = cipher
        self._where = redacted(url)
        # One folder per store: removing one store's copies never touches another's.
        self.root = cache_root() / hashlib.sha256(url.encode()).hexdigest()[:16]

    def _store_cipher(self) -> Cipher | None:
        return self._cipher()

    def _stored_tables(self, tables: list[str], thread_id: str) -> str:
        """The `tables` column's JSON: the list, or in an encrypted store the sealed list as a string."""
        listed = json.dumps(tables)
        return listed if self._cipher() is None else json.dumps(self._seal_text(listed, thread_id, "tables"))

    def _listed_tables(self, stored: str, thread_id: str) -> list[str]:
        value = json.loads(stored)
        if self._cipher() is None:
            return value
        # A list in clear in an encrypted store is refused by `open_text`, as any plain value.
        return json.loads(self._open_text(value if isinstance(value, str) else stored, thread_id, "tables"))

    # -- plans --------------------------------------------------------------

    def _store(self, thread_id: str, user_id: Any, name: str, digest: str, data: bytes, tables: str, now: str) -> Plan[str | None]:
        """Check the owner (creating the thread if new) and store the file; returns the hash it replaced."""
        row = yield Sql(_THREAD_SQL, (thread_id,), FETCH_ONE)
        if row is None:
            owner = None if user_id is ANY_USER else user_id
            created = yield Sql(_NEW_THREAD_SQL, (thread_id, owner, now, now), FETCH_NONE)
            if created:
                yield from neutral(lambda conn: stats.thread_created(conn, owner))  # usage statistics
            row = yield Sql(_THREAD_SQL, (thread_id,), FETCH_ONE)
        if user_id is not ANY_USER and row[0] != user_id:
            raise ThreadNotFoundError(thread_id)
        yield from keys.check_writable(self._cipher(), self._where)  # its row is locked: see `check_writable`
        old = yield Sql("SELECT sha256 FROM attachments WHERE thread_key = %s", (row[1],), FETCH_ONE)
        yield Sql(_STORE_SQL, (row[1], name, digest, len(data), tables, now, data), FETCH_NONE)
        yield from neutral(stats.attachment_added)  # usage statistics
        return old[0] if old else None

    def _delete(self, thread_id: str, user_id: Any) -> Plan[str | None]:
        row = yield Sql(_THREAD_SQL, (thread_id,), FETCH_ONE)
        if row is None or (user_id is not ANY_USER and row[0] != user_id):
            raise ThreadNotFoundError(thread_id)
        gone = yield Sql("DELETE FROM attachments WHERE thread_key = %s RETURNING sha256", (row[1],), FETCH_ONE)
        return gone[0] if gone else None

    def _data(self, thread_key: int, digest: str) -> Plan[bytes | None]:
        row = yield Sql(_DATA_SQL, (thread_key, digest), FETCH_ONE)
        return None if row is None else bytes(row[0])

    def reseal_copy(self, target_key: int, source_id: str, target_id: str) -> Plan[None]:
        """Seal the attachment `copy_thread` just copied from thread `source_id` to its new
        thread (the store is encrypted); it is named by its new hash."""
        row = yield Sql("SELECT name, tables::text, data FROM attachments WHERE thread_key = %s", (target_key,), FETCH_ONE)
        if row is None:
            return
        cipher = self._cipher()
        name = self._seal_text(self._open_text(row[0], source_id, "name"), target_id, "name")
        tables = self._stored_tables(self._listed_tables(row[1], source_id), target_id)
        data = cipher.seal(cipher.open(bytes(row[2]), attachment_place(source_id, "file")), attachment_place(target_id, "file"))
        yield Sql(
            "UPDATE attachments SET name = %s, tables = %s::jsonb, sha256 = %s, bytes = %s, data = %s WHERE thread_key = %s",
            (name, tables, hashlib.sha256(data).hexdigest(), len(data), data, target_key),
            FETCH_NONE,
        )

    def _in_use(self, digests: list[str]) -> Plan[set[str]]:
        return {d for (d,) in (yield Sql(_IN_USE_SQL, (digests,)))}

    # -- Attachments --------------------------------------------------------

    def _attach(self, thread_id: str, user_id: Any, source: Path, display: str, from_csv: bool) -> Attachment:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging = self.root / f".{uuid.uuid4().hex}.part"
        cipher = self._cipher()
        try:
            if cipher is None:
                tables = build_database(source, staging, display, from_csv=from_csv)
                data = staging.read_bytes()
            else:  # built in memory and sealed: no plain copy is written
                image, tables = database_image(source, display, from_csv=from_csv)
                data = cipher.seal(image, attachment_place(thread_id, "file"))
                del image
                staging.write_bytes(data)
            digest = hashlib.sha256(data).hexdigest()
            now = utc_now()
            stored_tables = self._stored_tables(tables, thread_id)
            name = self._seal_text(display, thread_id, "name")
            replaced = self._run(self._store(thread_id, user_id, name, digest, data, stored_tables, now))
            path = self._place(staging, digest)
        finally:
            staging.unlink(missing_ok=True)
        if replaced is not None and replaced != digest:
            self._drop_unused([replaced])
        return Attachment(thread_id, display, path, len(data), tables, now)

    def _get(self, thread_id: str, user_id: Any, *, flush: bool) -> Attachment | None:
        # Every model call asks (graph.agent's tools): one round trip, no transaction.
        row = self._run(_fetch_one(_GET_SQL, (thread_id,)), read=True, single=True)
        if not self._visible(row, thread_id, user_id) or row[1] is None:
            return None
        _owner, name, digest, size, tables, attached_at, thread_key = row
        path = self._local(thread_key, digest, size)
        if path is None:  # removed since the row was read
            return None
        name, tables = self._open_text(name, thread_id, "name"), self._listed_tables(tables, thread_id)
        return Attachment(thread_id, name, path, size, tables, attached_at)

    def _remove(self, thread_id: str, user_id: Any) -> bool:
        gone = self._run(self._delete(thread_id, user_id))
        if gone is None:
            return False
        self._drop_unused([gone])
        return True

    def _as_exported(self, attached: Attachment, name: str, attached_at: str, exact: bytes | None) -> None:
        thread_id, cipher = attached.thread_id, self._cipher()
        params: tuple = (self._seal_text(name, thread_id, "name"), attached_at)
        if exact is not None:
            data = exact if cipher is None else cipher.seal(exact, attachment_place(thread_id, "file"))
            params += (data, hashlib.sha256(data).hexdigest(), len(data))
        self._run(self._rewrite(_AS_EXPORTED_SQL[exact is not None], params + (attached.thread_id,)))
        if exact is not None:
            self._drop_unused([hashlib.sha256(attached.path.read_bytes()).hexdigest()])

    def _rewrite(self, text: str, params: tuple) -> Plan[None]:
        """Run a statement that writes sealed values, then check the key (`keys.check_writable`)."""
        yield from _execute(text, params)
        yield from keys.check_writable(self._cipher(), self._where)

    # -- the local copies ---------------------------------------------------

    def _cached(self, digest: str) -> Path:
        return self.root / f"{digest}.db"  # a hex digest: never a name a user chose

    def _place(self, staging: Path, digest: str) -> Path:
        """Make `staging` (holding the content of `digest`) the read-only copy of that content."""
        target = self._cached(digest)
        staging.chmod(0o444)
        os.replace(staging, target)
        return target

    def _local(self, thread_key: int, digest: str, size: int) -> Path | None:
        """This machine's copy of an attached file: reused if there, else written from the database."""
        target = self._cached(digest)
        try:
            if target.stat().st_size == size:
                return target
        except FileNotFoundError:
            pass
        data = self._run(self._data(thread_key, digest), read=True)
        if data is None:
            return None
        if hashlib.sha256(data).hexdigest() != digest:
            raise StoreError(f"the database attached to this thread is damaged in the store (hash {digest[:12]})")
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging = self.root / f".{uuid.uuid4().hex}.part"
        try:
            staging.write_bytes(data)
            return self._place(staging, digest)
        finally:
            staging.unlink(missing_ok=True)

    def _drop_unused(self, digests: list[str]) -> None:
        """Delete this machine's copies of contents no thread of the store holds any more."""
        in_use = self._run(self._in_use(digests), read=True)
        for digest in set(digests) - in_use:
            self._cached(digest).unlink(missing_ok=True)

    def forget_deleted(self) -> None:
        """After threads were deleted: drop this machine's copies that no thread holds any more."""
        if not self.root.is_dir():
            return
        local = [p.name[: -len(".db")] for p in self.root.glob("*.db")]
        if local:
            self._drop_unused(local)


def _fetch_one(text: str, params: tuple) -> Plan[tuple | None]:
    return (yield Sql(text, params, FETCH_ONE))


def _execute(text: str, params: tuple) -> Plan[None]:
    yield Sql(text, params, FETCH_NONE)
