"""`ThreadSaver`: a LangGraph checkpointer over one SQLite file, with a thread index.

Every write is one `BEGIN IMMEDIATE` transaction that also updates the
thread's row in `threads`, so the index never disagrees with the checkpoints.
Sync methods run on the calling thread; the async twins run the same code on a
worker thread. One connection per saver, guarded by a lock; several processes
share the file through WAL and a busy timeout.

This module is the saver itself: construction, `setup` and `close`, the
connection (`connect`) and its transactions (`_read`, `_write`, and
`_write_thread` for a write on one thread), and the public
`BaseCheckpointSaver` methods (`get_tuple`, `list`, `put`, `put_writes`) with
their async twins. Each other concern of the engine is a mixin in a module of
its own that `ThreadSaver` inherits; they share the saver's state, which
`ThreadSaver.__init__` creates:

* `values`: how a checkpoint, its channel values, its messages and a task's
  writes become rows (the storage model, and where blobs are encrypted).
* `reads` and `message_reads`: how checkpoints, values, pending writes,
  messages and message lists are read back (`read_messages`,
  `load_conversation`).
* `deferred`: the deferred writes and their flusher: how a turn becomes one commit.
* `kept`: a thread's newest checkpoint kept in memory for `get_tuple`.
* `operations`: whole-thread operations (delete, copy, prune, garbage
  collection) and giving space back (`erase_traces`, `compact`).
* `thread_write`: one thread's write transaction (`_ThreadTxn`) and what a
  saver keeps of a thread's row between writes (`_ThreadState`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_serializable_checkpoint_metadata,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from checkpointers import checkpoint_codec, encryption, stats
from checkpointers.engines.sqlite import fts
from checkpointers.engines.sqlite import keys, reseal
from checkpointers.codec import db_id
from checkpointers.engines.sqlite.attachments import AttachmentStore
from checkpointers.engines.sqlite.maintenance import SqliteMaintenance
from checkpointers.messages import ListCache as _ListCache, checked_owner as _checked_owner, hands_out_kept, utc_now
from checkpointers.errors import EncryptionKeyError, NotADatabaseError, StoreFullError, StoreUnavailableError
from checkpointers.engines.sqlite.schema import migrate
from checkpointers.storable import check_id, check_ns, check_task_path, checkpoint_metadata_json
from checkpointers.threads import SeenThreads
from checkpointers.sessions import SessionStore
from checkpointers.engines.sqlite.sessions import SqliteSessions
from checkpointers.engines.sqlite.transfer import SqliteTransfer
from checkpointers.engines.sqlite.threads import ThreadIndex
from checkpointers.engines.sqlite.deferred import (
    _OPEN_SAVERS,
    _DeferredPut,
    _DeferredWrites,
    _DeferredWriting,
    _retry_may_help,
)
from checkpointers.engines.sqlite.kept import _KeptCheckpoint, _KeptTuple
from checkpointers.engines.sqlite.message_reads import _MessageReads
from checkpointers.engines.sqlite.operations import _ThreadOperations
from checkpointers.engines.sqlite.reads import _CheckpointReads
from checkpointers.engines.sqlite.thread_write import _StaleThreadState, _ThreadState, _ThreadTxn, _remember
from checkpointers.engines.sqlite.values import _ValueWriting

logger = logging.getLogger(__name__)

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")

DEFERRED_WRITES_FLUSH_AFTER = 0.01
"""Seconds a deferred `put_writes` may wait for a checkpoint to carry it (see `ThreadSaver.put_writes`)."""

FROM_ENVIRONMENT: Any = object()
"""Default of `ThreadSaver(encryption_key=...)`: read `$THREADKEEPER_ENCRYPTION_KEY`."""

_KEY_STATE_SQL = (
    f"SELECT (SELECT value FROM store_meta WHERE key = '{encryption.META_KEY}'), "
    f"EXISTS (SELECT 1 FROM store_meta WHERE key = '{encryption.ROTATION_META_KEY}')"
)


def connect(path: Path, *, synchronous: str = "NORMAL", busy_timeout_ms: int = 30_000) -> sqlite3.Connection:
    """Open (creating if needed) the database file with this project's pragmas.

    Raises `StoreUnavailableError` for a path that cannot be created or written
    and `NotADatabaseError` for a file that is not SQLite; neither touches the file.
    """
    synchronous = synchronous.upper()
    if synchronous not in SYNCHRONOUS_MODES:
        raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, not {synchronous!r}")
    if path.is_dir():
        raise StoreUnavailableError(f"cannot open database {path}: it is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnavailableError(
            f"cannot create the directory {path.parent} for the database: {exc.strerror or exc}"
        ) from exc
    if not os.access(path.parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise StoreUnavailableError(f"cannot open database {path}: the path is not writable")
    is_new = not path.exists() or path.stat().st_size == 0
    try:
        conn = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000
        )
    except sqlite3.Error as exc:
        raise StoreUnavailableError(f"cannot open database {path}: {exc}") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        if is_new:
            # Must precede the switch to WAL and the first table: INCREMENTAL
            # lets `compact()` return freed pages to the OS without a full VACUUM.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("PRAGMA journal_mode = WAL").fetchone()
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        # Deleted data is overwritten, not just unlinked (Debian's default, not everyone's).
        conn.execute("PRAGMA secure_delete = ON")
        # A reset WAL is cut back to nothing, so page images of deleted rows do
        # not outlive the checkpoint that copied them.
        conn.execute("PRAGMA journal_size_limit = 0")
        conn.execute("PRAGMA cache_size = -16000")
        conn.execute("PRAGMA temp_store = MEMORY")
    except sqlite3.DatabaseError as exc:
        conn.close()
        if "not a database" in str(exc) or "malformed" in str(exc):
            raise NotADatabaseError(f"{path} is not a SQLite database") from exc
        raise StoreUnavailableError(f"cannot open database {path}: {exc}") from exc
    return conn


class ThreadSaver(
    _ThreadOperations,
    _KeptCheckpoint,
    _DeferredWriting,
    _ValueWriting,
    _CheckpointReads,
    _MessageReads,
    BaseCheckpointSaver[float],
):
    """LangGraph checkpointer on one SQLite file; `saver.threads` is the thread index.

    Use `checkpointers.open_saver()` / `open_async_saver()` rather than the
    constructor. Both sync and async methods are available on every instance.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        serde: SerializerProtocol | None = None,
        synchronous: str = "NORMAL",
        busy_timeout_ms: int = 30_000,
        cache_messages: int = 200_000,
        encryption_key: str | None | object = FROM_ENVIRONMENT,
        defer_writes: bool = True,
    ) -> None:
        """`encryption_key`: by default `$THREADKEEPER_ENCRYPTION_KEY` (unset or empty: no key);
        None opens the store without a key. Raises `EncryptionKeyError` when the
        key does not fit the store (see `engines.sqlite.keys.unlock`).

        `defer_writes`: let a task's writes ride in the transaction of the
        checkpoint that follows them (see `put_writes`); False writes each at once."""
        super().__init__(serde=serde)
        if encryption_key is FROM_ENVIRONMENT:
            encryption_key = os.environ.get(encryption.KEY_VARIABLE) or None
        self._encryption_key = None if encryption_key is None else encryption.check_key(str(encryption_key))
        self._cipher: encryption.Cipher | None = None
        self._key_record: str | None = None
        self.path = Path(path)
        self.maintenance = SqliteMaintenance(self)
        """Retention, erasure and statistics reads on this file (`engines.base.Maintenance`)."""
        self.conn = connect(self.path, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms)
        self._lock = threading.RLock()
        self._lists = _ListCache(cache_messages)
        self._digests: OrderedDict[tuple[int, bytes], int] = OrderedDict()
        self._thread_states: OrderedDict[str, _ThreadState] = OrderedDict()
        self._seen = SeenThreads()
        self._defer_writes = defer_writes
        self._deferred: list[_DeferredWrites | _DeferredPut] = []
        deferred_lock = threading.Lock()
        self._deferred_cond = threading.Condition(deferred_lock)
        """Guards `_deferred`, `_latest_put` and `_preparing`; the flusher waits on it."""
        self._preparing: Counter[str] = Counter()
        """`put_writes` calls, by thread, that will wait in `_deferred` and are still serialising."""
        self._writes_queued = threading.Condition(deferred_lock)
        """Notified when `_preparing` goes down; a run's last `put` waits on it."""
        self._latest_put: OrderedDict[tuple[str, str], tuple[str, bool]] = OrderedDict()
        """(checkpoint id, waits) by (thread, ns): the newest checkpoint `put` was asked to store,
        and whether it waits for a later transaction (see `_may_defer`)."""
        self._newest: OrderedDict[tuple[str, str], tuple[str | None, int]] = OrderedDict()
        """(checkpoint id, data_version) by (thread, ns): the newest checkpoint as of a
        read at that data_version, followed along the puts whose parent it is."""
        self._kept: OrderedDict[tuple[str, str], _KeptTuple] = OrderedDict()
        self._flusher: threading.Thread | None = None
        self._backlog_rows = 0
        """Search backlog rows this saver wrote since it last merged the backlog."""
        self._backlog_merge_due = False
        self._closing = False
        self.threads = ThreadIndex(self)
        self.attachments = AttachmentStore(self)
        self.sessions = SessionStore(self, SqliteSessions(self))
        self.transfer = SqliteTransfer(self)
        """What import and export ask of this engine (`engines.base.Transfer`)."""
        try:
            self.setup()
        except BaseException:
            self.conn.close()
            raise

    # -- lifecycle ---------------------------------------------------------

    def setup(self) -> None:
        """Create or upgrade the schema; safe to call any number of times."""
        with self._lock:
            try:
                migrate(self.conn, str(self.path))
            except sqlite3.DatabaseError as exc:
                if "not a database" in str(exc):
                    raise NotADatabaseError(f"{self.path} is not a SQLite database") from exc
                raise
            self._cipher, self._key_record = keys.unlock(self.conn, self.path, self._encryption_key)
            if self._cipher is not None and self._cipher.reads_unbound:
                # Values in format 1, not bound to their place: re-seal them all once,
                # then open it again strict (see `checkpointers.engines.sqlite.reseal.upgrade`).
                reseal.upgrade(self.conn, self.path, self._cipher)
                self._cipher, self._key_record = keys.unlock(self.conn, self.path, self._encryption_key)
            self._index_old_messages()

    def _index_old_messages(self) -> None:
        """Index messages stored before the search index existed (once per store)."""
        row = self.conn.execute("SELECT value FROM store_meta WHERE key = 'message_search'").fetchone()
        if row is None or row[0] != "rebuild":
            return
        with self._write():
            if self.conn.execute("SELECT value FROM store_meta WHERE key = 'message_search'").fetchone()[0] != "rebuild":
                return  # another process did it meanwhile
            keys = [k for (k,) in self.conn.execute("SELECT thread_key FROM threads").fetchall()]
            for thread_key in keys:
                fts.add(self.conn, self._thread_search_rows(thread_key))
            self.conn.execute("UPDATE store_meta SET value = 'ready' WHERE key = 'message_search'")

    @property
    def location(self) -> str:
        """Where the store is, for people and logs: the file's absolute path (either engine has it)."""
        return self.maintenance.location

    def close(self) -> None:
        """Write any deferred writes and merge the search backlog, stop the flusher and close the connection."""
        with self._deferred_cond:
            self._closing = True
            self._deferred_cond.notify_all()
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join()
        with self._lock:
            try:
                self.flush()
                if self._backlog_rows:
                    try:
                        self.merge_search_backlog()
                    except (sqlite3.Error, EncryptionKeyError):  # left for the next saver that merges
                        logger.warning("could not merge the search backlog of %s", self.path, exc_info=True)
            finally:
                self.conn.close()
                _OPEN_SAVERS.discard(self)
                # The saver and its `threads`, `attachments` and `sessions` refer to
                # each other, so it is freed by a garbage collection, not at once;
                # what it cached (whole threads' messages) is let go now.
                self._lists = _ListCache(0)
                self._kept.clear()
                self._digests.clear()
                self._thread_states.clear()

    @classmethod
    @contextmanager
    def from_conn_string(cls, conn_string: str, **kwargs: Any) -> Iterator[ThreadSaver]:
        """`with ThreadSaver.from_conn_string("sqlite:///data/x.db") as saver:`"""
        from checkpointers.url import sqlite_path

        saver = cls(sqlite_path(conn_string), **kwargs)
        try:
            yield saver
        finally:
            saver.close()

    # -- transactions ------------------------------------------------------

    @contextmanager
    def _read(self, *, flush: bool = True) -> Iterator[sqlite3.Connection]:
        """A read transaction: every statement inside sees one snapshot.

        Deferred writes are written first, so this process reads what it was
        given; `flush=False` is for a read they cannot change (they hold
        checkpoints, task writes, messages and the thread rows those touch)."""
        with self._lock:
            if flush and self._deferred:
                try:
                    self.flush()
                except StoreUnavailableError:
                    pass  # a full disk: what is committed can still be read (the flusher logs it)
            self.conn.execute("BEGIN")
            try:
                yield self.conn
            finally:
                self.conn.execute("COMMIT")

    @contextmanager
    def _write(self, carried_by: str | None = None) -> Iterator[list]:
        """A write transaction; yields a list of callbacks to run after COMMIT.

        Deferred writes go first, in the same transaction, so whatever the body
        reads or deletes sees them; those of thread `carried_by` are left to the
        caller (`_write_thread`), which writes them with its own thread state.
        """
        with self._lock:
            after_commit: list = []
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    self._check_key_unchanged()
                    if self._deferred:
                        self._write_deferred(after_commit, skip_thread=carried_by)
                    yield after_commit
                    self.conn.execute("COMMIT")
                except BaseException:
                    if self.conn.in_transaction:  # SQLite may have rolled back already (a full disk)
                        self.conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                raise self._unwritable(exc) from exc
            for callback in after_commit:
                callback()

    def _unwritable(self, exc: sqlite3.OperationalError) -> Exception:
        """The store's one-sentence error for a write SQLite refused for want of space
        or a failing disk; `exc` itself for anything else (a locked database...)."""
        text = str(exc)
        if "full" in text:
            return StoreFullError(
                f"The disk holding the database {self.path.name} is full, so nothing was saved; "
                "free some space and try again."
            )
        if "disk I/O error" in text or "readonly" in text:
            return StoreUnavailableError(f"The database {self.path.name} cannot be written ({text}).")
        return exc

    def _check_key_unchanged(self) -> None:
        """Refuse to write if the store's key changed since this saver opened it.

        A process started before `threadkeeper rotate-key` would otherwise
        write values under the old key (or none) into a re-encrypted store.
        """
        record, rotation = self.conn.execute(_KEY_STATE_SQL).fetchone()
        if record != self._key_record or rotation:
            if rotation:
                raise encryption.rotation_unfinished(self.path)
            raise EncryptionKeyError(
                f"the encryption key of {self.path} was changed (threadkeeper rotate-key) after this process "
                f"opened it: restart it with the new {encryption.KEY_VARIABLE}"
            )

    @staticmethod
    def _thread_key(conn: sqlite3.Connection, thread_id: str) -> int | None:
        row = conn.execute("SELECT thread_key FROM threads WHERE thread_id = ?", (thread_id,)).fetchone()
        return row[0] if row else None

    def _write_thread(
        self, thread_id: str, user_id: str | None, body: Callable[[_ThreadTxn], _ThreadState], parent: Any = None
    ) -> None:
        """Run `body` in a write transaction on one thread, starting over once if
        the thread's row changed since this saver last wrote it.

        A write that fails also drops the thread's deferred writes it carried:
        the run they belong to fails with it, so what the caller is told ("nothing
        was saved") stays true; and one that can never be written (see
        `_retry_may_help`), left queued, would fail every later write of every thread."""
        try:
            self._write_thread_now(thread_id, user_id, body, parent)
        except Exception as exc:
            with self._deferred_cond:
                mine = [e for e in self._deferred if e.thread_id == thread_id]
            if mine:
                self._drop_deferred(mine, exc, log=not _retry_may_help(exc))
            raise

    def _write_thread_now(
        self, thread_id: str, user_id: str | None, body: Callable[[_ThreadTxn], _ThreadState], parent: Any = None
    ) -> None:
        for attempt in (1, 2):
            cached = None
            try:
                with self._write(carried_by=thread_id) as after_commit:
                    cached = None if attempt == 2 else self._thread_states.get(thread_id)
                    state = cached or self._read_thread_state(thread_id, user_id, self._goes_on_from(thread_id, parent))
                    txn = _ThreadTxn(self.conn, thread_id, state, after_commit)
                    try:
                        self._carry_deferred(txn)
                        new_state = body(txn)
                    except sqlite3.IntegrityError:
                        if cached is None:
                            raise
                        # Numbers from a stale cache collided with another writer's rows.
                        raise _StaleThreadState(thread_id) from None
                    after_commit.append(lambda: _remember(self._thread_states, thread_id, new_state, 10_000))
                return
            except _StaleThreadState:
                self._drop_cached_thread(thread_id)
                if attempt == 2:
                    raise RuntimeError(f"thread {thread_id!r} changed during a write that held the lock") from None

    def _drop_cached_thread(self, thread_id: str) -> None:
        """Forget what this saver cached of a thread whose row changed under it."""
        stale = self._thread_states.pop(thread_id, None)
        if stale is not None:
            self._forget([stale.thread_key])

    def _read_thread_state(self, thread_id: str, user_id: str | None, parent: Any = None) -> _ThreadState:
        """The thread's row, stored anew when there is none, unless the write goes on from
        `parent`, a checkpoint of a thread deleted meanwhile (`SeenThreads`)."""
        row = self.conn.execute(
            "SELECT thread_key, next_value_no, next_message_no, gc_epoch, title FROM threads WHERE thread_id = ?",
            (thread_id,),
        ).fetchone()
        if row is None:
            self._seen.check_not_deleted(thread_id, parent)
            now = utc_now()
            cur = self.conn.execute(
                "INSERT INTO threads (thread_id, user_id, created_at, updated_at) VALUES (?, ?, ?, ?)",
                (thread_id, user_id, now, now),
            )
            stats.thread_created(self.conn, user_id)  # usage statistics
            row = (cur.lastrowid, 1, 1, 0, None)
        self._seen.saw(thread_id)
        return _ThreadState(*row)

    # -- BaseCheckpointSaver: reads -----------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        configurable = config["configurable"]
        thread_id = check_id(configurable["thread_id"])
        ns = check_ns(configurable.get("checkpoint_ns", ""))
        checkpoint_id = get_checkpoint_id(config)
        with self._lock:
            own = not hands_out_kept(configurable)
            found = self._kept_tuple(thread_id, ns, checkpoint_id, own=own)
            if found is not None:
                self._seen.saw(thread_id)
                return found
            with self._read() as conn:
                (data_version,) = conn.execute("PRAGMA data_version").fetchone()
                thread_key = self._thread_key(conn, thread_id)
                row = thread_key and self._checkpoint_row(
                    conn, thread_key, ns, config, "checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata"
                )
                found = row and self._tuple(
                    conn, thread_key, thread_id, ns, row[0], row[1],
                    *self._load_checkpoint_row(thread_key, ns, row[0], *row[2:]), own=own,
                )
            if found is not None:
                self._seen.saw(thread_id)
            if checkpoint_id is None:
                # A new thread's first put follows "no checkpoint" (parent None).
                newest = (found and found.checkpoint["id"], data_version)
                with self._deferred_cond:
                    _remember(self._newest, (thread_id, ns), newest, 10_000)
            return found

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        where: list[str] = []
        params: list[Any] = []
        configurable = (config or {}).get("configurable", {})
        if "thread_id" in configurable and configurable["thread_id"] is not None:
            where.append("t.thread_id = ?")
            params.append(check_id(configurable["thread_id"]))
        if configurable.get("checkpoint_ns") is not None:
            where.append("c.checkpoint_ns = ?")
            params.append(check_ns(configurable["checkpoint_ns"]))
        if checkpoint_id := configurable.get("checkpoint_id"):
            where.append("c.checkpoint_id = ?")
            params.append(db_id(checkpoint_id))
        if before is not None and (before_id := get_checkpoint_id(before)):
            where.append("c.checkpoint_id < ?")
            params.append(db_id(before_id))
        wanted = checkpoint_codec.checked_filter(filter)
        sql = (
            "SELECT c.thread_key, t.thread_id, c.checkpoint_ns, c.checkpoint_id, c.parent_checkpoint_id, "
            "c.type, c.checkpoint, c.metadata FROM checkpoints c JOIN threads t ON t.thread_key = c.thread_key"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY c.checkpoint_id DESC"
        )
        if limit is not None and not wanted:
            sql += " LIMIT ?"
            params.append(int(limit))
        with self._read() as conn:
            results = []
            # Rows stream from the cursor: with a filter, reading stops once `limit` match.
            for thread_key, thread_id, ns, checkpoint_id, parent_id, *stored in conn.execute(sql, params):
                checkpoint, metadata = self._load_checkpoint_row(thread_key, ns, checkpoint_id, *stored)
                if not checkpoint_codec.matches(metadata, wanted):
                    continue
                results.append(
                    self._tuple(conn, thread_key, thread_id, ns, checkpoint_id, parent_id, checkpoint, metadata, own=True)
                )
                if limit is not None and len(results) >= limit:
                    break
        yield from results

    def get_next_version(self, current: Any, channel: None = None) -> float | str:
        """See `checkpoint_codec.next_version`."""
        return checkpoint_codec.next_version(current)

    # -- BaseCheckpointSaver: writes ----------------------------------------

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store a checkpoint.

        A run's input checkpoint (source "input"), and a step's checkpoint after
        which the run goes on (`checkpoint_codec.run_goes_on`), are captured now and written
        in the transaction of what LangGraph saves next for the thread, or by the
        flusher after `DEFERRED_WRITES_FLUSH_AFTER` (see `put_writes`): a chat
        turn commits once, with the checkpoint that ends it.
        """
        configurable = config["configurable"]
        thread_id = check_id(configurable["thread_id"])
        ns = check_ns(configurable.get("checkpoint_ns", ""))
        full_metadata = get_serializable_checkpoint_metadata(config, metadata)
        metadata_json = checkpoint_metadata_json(full_metadata)
        # The id lives in its own column; the values in channel_values.
        stored = {k: v for k, v in checkpoint.items() if k not in ("channel_values", "id")}
        nones = checkpoint_codec.none_channels(checkpoint)
        type_, blob = self._dump_checkpoint(stored, json.loads(metadata_json), nones, checkpoint["id"])
        values, new_versions = checkpoint_codec.values_to_store(
            checkpoint, new_versions, nones, type_ == checkpoint_codec.TYPE
        )
        run_id = full_metadata.get("run_id")
        entry = _DeferredPut(
            thread_id=thread_id,
            user_id=_checked_owner(full_metadata.get("user_id"), configurable.get("user_id")),
            ns=ns,
            checkpoint_id=checkpoint["id"],
            parent_id=configurable.get("checkpoint_id"),
            run_id=None if run_id is None else str(run_id),
            type_=type_,
            blob=blob,
            metadata_json=metadata_json,
            metadata_column="" if type_ == checkpoint_codec.TYPE else metadata_json,
            new_versions=new_versions,
            values=values,
            updated_at=utc_now(),
            due=time.monotonic() + DEFERRED_WRITES_FLUSH_AFTER,
        )
        waits = self._defer_writes and checkpoint_codec.run_goes_on(checkpoint, full_metadata)
        with self._deferred_cond:  # see `_defer`
            latest = self._latest_put.get((thread_id, ns))
            if latest is None or checkpoint["id"] > latest[0]:
                _remember(self._latest_put, (thread_id, ns), (checkpoint["id"], waits), 10_000)
            self._follow_newest(thread_id, ns, entry)
            if not waits:
                # Task writes of this run still being serialised on other workers go with this checkpoint.
                self._writes_queued.wait_for(lambda: not self._preparing[thread_id])
        if waits:
            entry.values = self._captured_values(entry.values, new_versions)
            self._defer(entry)
        else:

            def write(txn: _ThreadTxn) -> _ThreadState:
                self._insert_checkpoint(txn, entry)
                txn.after_commit.append(lambda: self._keep_tuple(entry, txn.thread_key, txn.lists))
                return txn.close()

            self._write_thread(thread_id, entry.user_id, write, entry.parent_id)
        return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint["id"]}}

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's writes against a checkpoint.

        A running graph's task writes on the thread's newest checkpoint are
        serialised now and written in the transaction of the checkpoint LangGraph
        puts next (the end of the step), or by the flusher after
        `DEFERRED_WRITES_FLUSH_AFTER` if none comes: one commit per step instead
        of one per task. Every read and write of this saver writes them first, so
        this process never sees them missing; another process may, for those few
        milliseconds. A turn LangGraph has finished is durable: its last
        checkpoint carried them. Errors, interrupts and updates are written at once.
        """
        if not writes:
            return
        configurable = config["configurable"]
        thread_id = check_id(configurable["thread_id"])
        ns = check_ns(configurable.get("checkpoint_ns", ""))
        checkpoint_id = configurable["checkpoint_id"]
        task_path = check_task_path(task_path)
        channels = [channel for channel, _ in writes]
        user_id = _checked_owner(configurable.get("user_id"), (config.get("metadata") or {}).get("user_id"))
        reserved = self._reserve(thread_id, ns, checkpoint_id, task_id, task_path, channels)
        try:
            values = [
                (WRITES_IDX_MAP.get(channel, idx), channel, self._pre_encode(value))
                for idx, (channel, value) in enumerate(writes)
            ]
        except BaseException:
            if reserved:
                with self._deferred_cond:
                    self._unreserve(thread_id)
            raise
        entry = _DeferredWrites(
            thread_id=thread_id,
            user_id=user_id,
            ns=ns,
            checkpoint_id=checkpoint_id,
            task_id=task_id,
            task_path=task_path,
            replace=all(c in WRITES_IDX_MAP for c in channels),
            values=values,
            due=time.monotonic() + DEFERRED_WRITES_FLUSH_AFTER,
        )
        if reserved:
            self._defer(entry, reserved=True)
            return

        def write(txn: _ThreadTxn) -> _ThreadState:
            self._insert_writes(txn, entry)
            return txn.close()

        self._write_thread(thread_id, entry.user_id, write, entry.checkpoint_id)

    # -- the thread's attached database ---------------------------------------

    def attachment_path(self, thread_id: str) -> Path | None:
        """The database file attached to the thread, or None (encrypted when the store is)."""
        return self.attachments.path(thread_id)

    def attachment_database(self, thread_id: str) -> Path | bytes | None:
        """What the agent's tools open: the attached file, or its decrypted bytes
        when the store is encrypted (so no plain copy is written to disk); None
        if the thread has no database attached."""
        return self.attachments.database(thread_id)

    # -- async twins --------------------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        results = await asyncio.to_thread(
            lambda: list(self.list(config, filter=filter, before=before, limit=limit))
        )
        for item in results:
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)
