"""`ThreadSaver`: a LangGraph checkpointer over one SQLite file, with a thread index.

Storage is linear in the length of a thread:

* A checkpoint row holds the checkpoint without its channel values.
* A channel value is written once, when its version changes (`channel_values`).
* A list of messages (the `messages` channel, a write of messages, a
  `DeltaChannel` snapshot) is stored as message numbers; each message is
  serialised once per thread (`messages`). A list that grew is stored as
  "the first `keep` numbers of list `base_no`, then these"; every
  `MAX_CHAIN_DEPTH` steps a full (compressed) list of numbers is written
  instead, so reading a list never walks far.

Cost per turn is flat: the saver keeps the message lists it last read or
wrote in memory, so the next turn only serialises messages that are new
(found by identity, then by equality, then by content digest). Messages
handed out by the saver are shared with that cache; treat them as immutable
values, as LangGraph's reducers do.

Every write is one `BEGIN IMMEDIATE` transaction that also updates the
thread's row in `threads`, so the index never disagrees with the checkpoints.
Sync methods run on the calling thread; the async twins run the same code on a
worker thread. One connection per saver, guarded by a lock; several processes
share the file through WAL and a busy timeout.

With an encryption key (`THREADKEEPER_ENCRYPTION_KEY`), every blob that holds
content is encrypted at the few places where blobs meet the database, bound
to its place (table, thread, row key; see `checkpointers.encryption`):
`_insert_checkpoint`/`_load_checkpoint` (checkpoints), `_apply_encoded`/`_load`
(serialised values and writes), `_store_message` and `_open_rows` (loose
messages), `_write_segment`/`_segment_rows` (sealed segments),
`_seal_title`/`_open_title` (titles) and `_search_words` (hashed search
words). Values are serialised ahead of their transaction (`_pre_encode`) and
sealed in it, where the thread's key and the row's number are known.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import hashlib
import json
import logging
import operator
import os
import sqlite3
import threading
import time
import weakref
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import ormsgpack
from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
    PendingWrite,
    get_checkpoint_id,
    writes_sort_key,
    get_serializable_checkpoint_metadata,
)
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.types import TASKS, _DeltaSnapshot

from checkpointers import checkpoint_codec, codec, encryption, search, stats
from checkpointers.engines.sqlite import fts
from checkpointers.engines.sqlite import keys, reseal
from checkpointers.codec import (
    KIND_DELTA_SNAPSHOT,
    KIND_MESSAGE,
    KIND_MESSAGE_DICT,
    KIND_MESSAGE_LIST,
    KIND_SERDE,
    db_id,
    db_task_path,
    py_id,
    py_task_path,
)
from checkpointers.engines.sqlite.attachments import AttachmentStore
from checkpointers.engines.sqlite.maintenance import SqliteMaintenance
from checkpointers.messages import (
    ListCache as _ListCache,
    MAX_CHAIN_DEPTH,
    MessagePage,
    StoredList as _StoredList,
    checked_owner as _checked_owner,
    checkpoint_tuple as _checkpoint_tuple,
    copy_message_list as _copy_message_list,
    dump_message,
    encode_list,
    holds_messages as _holds_messages,
    is_message_dict as _is_message_dict,
    is_message_list as _is_message_list,
    load_message,
    restored as _restored,
    snapshot as _snapshot,
    utc_now,
)
from checkpointers.encryption import checkpoint_place, message_place, segment_place, value_place, write_place
from checkpointers.errors import (
    EncryptionKeyError,
    NotADatabaseError,
    StoreFullError,
    StoreUnavailableError,
    ThreadExistsError,
    ThreadNotFoundError,
    UnstorableInputError,
)
from checkpointers.engines.sqlite.schema import migrate
from checkpointers.storable import check_id, check_text, check_value
from checkpointers import conversation
from checkpointers.sessions import SessionStore
from checkpointers.engines.sqlite.sessions import SqliteSessions
from checkpointers.engines.sqlite.transfer import SqliteTransfer
from checkpointers.engines.sqlite.threads import ThreadIndex
from checkpointers.threads import ANY_USER, title_from_messages

logger = logging.getLogger(__name__)

SEGMENT_SIZE = 64
"""New messages stay in their own rows until this many gather; then they are
sealed into one compressed `message_segments` row (smaller, and one decompression
per 64 messages when a thread is read cold)."""

MESSAGES_CHANNEL = "messages"
"""The channel whose length and first human message feed the thread index."""

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")

DEFERRED_WRITES_FLUSH_AFTER = 0.01
FLUSH_RETRY_MAX_S = 5.0
"""The longest the flusher waits before trying a failed write again."""
"""Seconds a deferred `put_writes` may wait for a checkpoint to carry it (see `ThreadSaver.put_writes`)."""

NULL_TASK_ID = "00000000-0000-0000-0000-000000000000"
"""The task id LangGraph gives writes that belong to no task (updates, resumes)."""

FROM_ENVIRONMENT: Any = object()
"""Default of `ThreadSaver(encryption_key=...)`: read `$THREADKEEPER_ENCRYPTION_KEY`."""


def _remember(cache: OrderedDict, key: Any, value: Any, limit: int) -> None:
    """Put into a least-recently-used map, dropping the oldest beyond `limit`."""
    cache[key] = value
    cache.move_to_end(key)
    if len(cache) > limit:
        cache.popitem(last=False)




_IN_A_RUN = "__pregel_runtime"
"""In the config of the read a LangGraph run starts from. That read gets the list cache's
message objects, checked against their snapshots (see `_StoredList`); every other read
(`get_state`, history, `list`) gets its own copies, as from a stock saver."""


def _retry_may_help(exc: BaseException) -> bool:
    """Whether a failed write may succeed later: the database was busy, full or
    unreachable (or its key changed), as opposed to rows it can never hold."""
    return isinstance(
        exc, (sqlite3.OperationalError, OSError, StoreUnavailableError, EncryptionKeyError, _StaleThreadState)
    )


@dataclass(frozen=True, slots=True)
class _PreMessage:
    """A message as it will be stored: serialised, with its content digest and search words."""

    type_: str
    blob: bytes
    digest: bytes
    words: str | None
    message: BaseMessage | None = None
    """Set instead of `words` when they are left to be worked out if the message is new."""
    unnamed: BaseMessage | None = None
    """The message, if it had no id when serialised: LangGraph's reducer gives a new
    message its id in place, and may do so after a task's writes were encoded on
    another thread. `_store_message` encodes it again if it has one by then, so the
    write and the history hold one row, as when the write waits for nothing."""


@dataclass(slots=True)
class _PreValue:
    """A channel value or write, serialised ahead of its transaction (see `_pre_encode`)."""

    kind: int
    messages: list[_PreMessage] | None = None
    parts: dict[str, _PreValue] | None = None
    rest: dict[str, Any] | None = None
    order: list[str] | None = None
    type_: str | None = None
    blob: bytes | None = None


@dataclass(slots=True, eq=False)
class _DeferredWrites:
    """One `put_writes` call waiting for the transaction that carries it."""

    thread_id: str
    user_id: str | None
    ns: str
    checkpoint_id: str
    task_id: str
    task_path: str
    replace: bool
    """Special writes (errors, interrupts) replace earlier ones; others never do."""
    values: list[tuple[int, str, _PreValue]]
    """(idx, channel, value) of each write."""
    due: float
    """`time.monotonic()` by which the flusher writes it if nothing else has."""


@dataclass(slots=True, eq=False)
class _DeferredPut:
    """One `put`, serialised ahead of its transaction; a run's input checkpoint, and a
    step's checkpoint the run goes on from, wait in `ThreadSaver._deferred` for the
    transaction that carries them."""

    thread_id: str
    user_id: str | None
    ns: str
    checkpoint_id: str
    parent_id: str | None
    run_id: str | None
    type_: str
    blob: bytes
    """The checkpoint serialised (`_dump_checkpoint`), not yet sealed."""
    metadata_json: str
    metadata_column: str
    """What `checkpoints.metadata` holds: `metadata_json`, or '' when `blob` holds the metadata."""
    new_versions: ChannelVersions
    values: dict[str, Any]
    """Channel values: live objects, or (deferred) captured by `ThreadSaver._captured_values`."""
    updated_at: str
    due: float


@dataclass(frozen=True, slots=True)
class _KeptValue:
    """A kept channel value that is not a message list, as the serializer wrote it:
    each `get_tuple` answered from memory decodes a new object, as a read would."""

    type_: str
    blob: bytes


class _KeptList(NamedTuple):
    """A message list of a kept checkpoint: the stored list, bare or as a `_DeltaSnapshot`."""

    stored: _StoredList
    delta: bool

    def hand_out(self, own: bool) -> Any:
        """The list for a run (the kept objects, checked), or with `own` new objects."""
        messages = self.stored.copies() if own else self.stored.hand_out()
        return _DeltaSnapshot(messages) if self.delta else messages


@dataclass(slots=True, eq=False)
class _KeptTuple:
    """A thread's newest checkpoint as the `put` that wrote it had it, for `get_tuple`.

    Served only while this connection has written nothing since (`total_changes`)
    and no other connection has committed since the read that found its chain's
    first checkpoint (`data_version`, SQLite's count of other connections' commits)."""

    entry: _DeferredPut
    values: dict[str, Any]
    """Its channel values: message lists, and anything else serialised (see `ThreadSaver._keep_tuple`)."""
    total_changes: int
    data_version: int


@dataclass
class _ThreadState:
    """What a write needs to know about a thread's row, kept between writes.

    Trusted only until the write that uses it ends: that write's final UPDATE
    matches the row on all four numbers, so a row changed meanwhile (by another
    process, a garbage collection, a deletion) makes the write start over.
    """

    thread_key: int
    next_value_no: int
    next_message_no: int
    gc_epoch: int
    title: str | None
    sealed_upto: int | None = None
    """Every message numbered up to here is sealed in a segment (None: unknown)."""


class _StaleThreadState(Exception):
    """The thread's row changed since it was cached; the write is retried."""


# The statements of a thread write's rows, by table (see `_ThreadTxn.add_row`).
ROW_CHANNEL_VALUE = (
    "INSERT INTO channel_values (thread_key, value_no, checkpoint_ns, channel, version, kind, type, value, "
    "base_no, keep, depth) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
ROW_CHECKPOINT = (
    "INSERT OR REPLACE INTO checkpoints (thread_key, checkpoint_ns, checkpoint_id, parent_checkpoint_id, run_id, "
    "type, checkpoint, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
ROW_MESSAGE = "INSERT INTO messages (thread_key, message_no, type, value) VALUES (?, ?, ?, ?)"
ROW_SEARCH = "INSERT INTO search_backlog (message_key, body) VALUES (?, ?)"
_WRITE_COLUMNS = "(thread_key, checkpoint_ns, checkpoint_id, task_id, idx, task_path, channel, kind, type, value)"
ROW_WRITE_IGNORE = f"INSERT OR IGNORE INTO writes {_WRITE_COLUMNS} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
ROW_WRITE_REPLACE = f"INSERT OR REPLACE INTO writes {_WRITE_COLUMNS} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"

_THREAD_ROW_SQL = (
    "UPDATE threads SET next_value_no = ?, next_message_no = ?, updated_at = coalesce(?, updated_at), "
    "message_count = coalesce(?, message_count), title = coalesce(title, ?), user_id = coalesce(user_id, ?) "
    "WHERE thread_key = ? AND thread_id = ? AND next_value_no = ? AND next_message_no = ? AND gc_epoch = ? "
    "RETURNING user_id"
)
"""A thread write's mark on its row, made only if the row is as the write read it."""


@dataclass
class _ThreadTxn:
    """One thread's write: number allocation, and the rows to write.

    Rows gather in `rows`, by statement, and go to the database with one
    `executemany` per table (`write_rows`) inside the caller's `BEGIN IMMEDIATE`.
    """

    conn: sqlite3.Connection
    thread_id: str
    read: _ThreadState
    after_commit: list
    next_value_no: int = 0
    next_message_no: int = 0
    sealed_upto: int | None = None
    stored_messages: int = 0
    new_digests: dict[bytes, int] = field(default_factory=dict)
    lists: dict[tuple[str, str], _StoredList] = field(default_factory=dict)
    """Message lists stored by this write, by (ns, channel): a later checkpoint in it stores against them."""
    rows: dict[str, list[tuple]] = field(default_factory=dict)
    updated_at: str | None = None
    message_count: int | None = None
    title: str | None = None
    sealed_title: str | None = None
    user_id: str | None = None
    usage: stats.Tally | None = None
    """The new messages this write stores, for the usage statistics (`checkpointers/stats.py`)."""

    def __post_init__(self) -> None:
        self.next_value_no = self.read.next_value_no
        self.next_message_no = self.read.next_message_no
        self.sealed_upto = self.read.sealed_upto
        self.title = self.read.title

    @property
    def thread_key(self) -> int:
        return self.read.thread_key

    def touch(
        self, updated_at: str, message_count: int | None, title: str | None, sealed_title: str | None, user_id: str | None
    ) -> None:
        """What a checkpoint changes in the thread's index row, written by `close`."""
        self.updated_at = updated_at
        if message_count is not None:
            self.message_count = message_count
        if self.title is None and title is not None:
            self.title, self.sealed_title = title, sealed_title
        if self.user_id is None:
            self.user_id = user_id

    def value_no(self) -> int:
        self.next_value_no += 1
        return self.next_value_no - 1

    def message_no(self) -> int:
        self.next_message_no += 1
        return self.next_message_no - 1

    def add_row(self, sql: str, *row: Any) -> None:
        self.rows.setdefault(sql, []).append(row)

    def count_message(self, figures: tuple[int, int, int, int, int] | None) -> None:
        """Usage statistics: one new message of this write (see `stats.figures`)."""
        if figures is None:
            return
        if self.usage is None:
            self.usage = stats.Tally()
        self.usage.add(figures)

    def write_rows(self) -> None:
        """Write the gathered rows."""
        rows, self.rows = self.rows, {}
        for sql, params in rows.items():
            self.conn.executemany(sql, params)

    def close(self) -> _ThreadState:
        """Write the rows, the counters and what `touch` noted, if the thread row is still as it was read."""
        read = self.read
        owner = self.conn.execute(_THREAD_ROW_SQL, (
            self.next_value_no, self.next_message_no, self.updated_at, self.message_count, self.sealed_title,
            self.user_id, read.thread_key, self.thread_id, read.next_value_no, read.next_message_no, read.gc_epoch,
        )).fetchall()  # all: the statement is finished before COMMIT
        if not owner:
            raise _StaleThreadState(self.thread_id)
        self.write_rows()
        # -- usage statistics: the day's counters, in the same transaction as the thread's rows
        if self.usage is not None:
            (database_bytes,) = self.conn.execute(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()"
            ).fetchone()
            stats.record_tally(self.conn, (self.updated_at or utc_now())[:10], owner[0][0], self.usage, database_bytes)
        # --
        return _ThreadState(
            self.thread_key, self.next_value_no, self.next_message_no, self.read.gc_epoch, self.title, self.sealed_upto
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


class ThreadSaver(BaseCheckpointSaver[float]):
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

    def _write_thread(self, thread_id: str, user_id: str | None, body: Callable[[_ThreadTxn], _ThreadState]) -> None:
        """Run `body` in a write transaction on one thread, starting over once if
        the thread's row changed since this saver last wrote it.

        A write that fails also drops the thread's deferred writes it carried:
        the run they belong to fails with it, so what the caller is told ("nothing
        was saved") stays true; and one that can never be written (see
        `_retry_may_help`), left queued, would fail every later write of every thread."""
        try:
            self._write_thread_now(thread_id, user_id, body)
        except Exception as exc:
            with self._deferred_cond:
                mine = [e for e in self._deferred if e.thread_id == thread_id]
            if mine:
                self._drop_deferred(mine, exc, log=not _retry_may_help(exc))
            raise

    def _write_thread_now(self, thread_id: str, user_id: str | None, body: Callable[[_ThreadTxn], _ThreadState]) -> None:
        for attempt in (1, 2):
            cached = None
            try:
                with self._write(carried_by=thread_id) as after_commit:
                    cached = None if attempt == 2 else self._thread_states.get(thread_id)
                    state = cached or self._read_thread_state(thread_id, user_id)
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

    def _read_thread_state(self, thread_id: str, user_id: str | None) -> _ThreadState:
        row = self.conn.execute(
            "SELECT thread_key, next_value_no, next_message_no, gc_epoch, title FROM threads WHERE thread_id = ?",
            (thread_id,),
        ).fetchone()
        if row is None:
            now = utc_now()
            cur = self.conn.execute(
                "INSERT INTO threads (thread_id, user_id, created_at, updated_at) VALUES (?, ?, ?, ?)",
                (thread_id, user_id, now, now),
            )
            stats.thread_created(self.conn, user_id)  # usage statistics
            row = (cur.lastrowid, 1, 1, 0, None)
        return _ThreadState(*row)


    # -- deferred writes ---------------------------------------------------

    def _may_defer(self, thread_id: str, ns: str, checkpoint_id: str, task_id: str, task_path: str, channels: list[str]) -> bool:
        """Whether a `put_writes` call can wait for the next checkpoint of its thread.

        Only a running graph's ordinary task writes (they carry a task path), and
        only while a put that carries them is still to come: the writes are on the
        newest checkpoint this saver was asked to put for the thread (its put may
        still be running on another worker: LangGraph saves in the background and
        puts the next checkpoint right after a step's tasks finish), or that
        newest put waits itself (a worker that started late on a step's writes
        finds the next step's checkpoint already put). Checkpoint ids sort by
        time, so an older one means a later put came first; if that put is
        written at once it may have taken what waited already, so these are
        written at once too. Errors, interrupts, resumes and updates (no task
        path, or the null task) are written at once, since nothing may follow them.
        Call holding `_deferred_cond`.
        """
        latest = self._latest_put.get((thread_id, ns))
        return (
            self._defer_writes
            and latest is not None
            and (checkpoint_id >= latest[0] or latest[1])
            and bool(task_path)
            and task_id != NULL_TASK_ID
            and not any(channel in WRITES_IDX_MAP for channel in channels)
        )

    def _reserve(self, thread_id: str, ns: str, checkpoint_id: str, task_id: str, task_path: str, channels: list[str]) -> bool:
        """Whether a `put_writes` call will wait for the next checkpoint of its thread
        (`_may_defer`); if so it counts in `_preparing` until `_defer(entry, reserved=True)`.

        Asked before the writes are serialised, under the lock `put` holds to
        record a thread's newest checkpoint: serialising lets the graph's thread
        run on (zlib gives up the GIL) and put the run's last checkpoint, and
        that put waits for the writes counted here before it takes what waits
        for the thread. So writes either wait and are carried by it, or (it came
        first) are written at once, never left behind."""
        with self._deferred_cond:
            if not self._may_defer(thread_id, ns, checkpoint_id, task_id, task_path, channels):
                return False
            self._preparing[thread_id] += 1
            return True

    def _unreserve(self, thread_id: str) -> None:
        """A reserved `put_writes` is queued or gave up (call holding `_deferred_cond`)."""
        self._preparing[thread_id] -= 1
        if not self._preparing[thread_id]:
            del self._preparing[thread_id]
        self._writes_queued.notify_all()

    def _defer(self, entry: _DeferredWrites | _DeferredPut, *, reserved: bool = False) -> None:
        """Queue `entry` for the transaction that carries it (`reserved`: see `_reserve`)."""
        with self._deferred_cond:
            if reserved:
                self._unreserve(entry.thread_id)
            if self._closing:
                raise StoreUnavailableError(f"{self.path}: the saver is closed")
            self._deferred.append(entry)
            self._wake_flusher()

    def _backlog_grew(self) -> None:
        """A message's words went to the search backlog; past `BACKLOG_MERGE_AT`, have the flusher merge it."""
        self._backlog_rows += 1
        if self._backlog_rows >= fts.BACKLOG_MERGE_AT and not self._backlog_merge_due:
            with self._deferred_cond:
                if self._closing:
                    return
                self._backlog_merge_due = True
                self._wake_flusher()

    def _wake_flusher(self) -> None:
        """Start the flusher, or wake it (call holding `_deferred_cond`)."""
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_when_due, name="threadkeeper-flush", daemon=True)
            self._flusher.start()
            _OPEN_SAVERS.add(self)
        else:
            self._deferred_cond.notify()

    def _flush_when_due(self) -> None:
        """Flusher thread: write deferred writes nothing carried by their `due` time,
        and merge the search backlog when `_backlog_grew` asks."""
        backoff = 0.0
        logged: tuple[str, float] = ("", 0.0)
        while True:
            with self._deferred_cond:
                if self._closing:
                    return
                merge = self._backlog_merge_due
                if not merge and not self._deferred:
                    self._deferred_cond.wait()
                    continue
                wait = self._deferred[0].due - time.monotonic() if self._deferred else 0.0
                if not merge and wait > 0:
                    self._deferred_cond.wait(wait)
                    continue
            try:
                if merge:
                    self.merge_search_backlog()
                else:
                    self.flush()
                backoff = 0.0
            except Exception as exc:
                # A full disk, a lock held too long: it may clear, so wait longer each
                # time (up to FLUSH_RETRY_MAX_S), and log a failure once a minute at most.
                backoff = min(FLUSH_RETRY_MAX_S, max(0.05, backoff * 2))
                text = f"{type(exc).__name__}: {exc}"
                if text != logged[0] or time.monotonic() - logged[1] > 60:
                    logger.warning("could not write deferred checkpoint writes to %s (%s); retrying", self.path, text)
                    logged = (text, time.monotonic())
                time.sleep(backoff)

    def flush(self) -> None:
        """Write every deferred checkpoint and task write now (reads and other writes do this first anyway)."""
        with self._lock:
            if self._deferred:
                with self._write():
                    pass

    def merge_search_backlog(self) -> int:
        """Move the words of new messages (of every process) from the search backlog
        into the full-text index; returns how many messages moved. Search finds
        them either way; this keeps the backlog small."""
        with self._write():
            return self._merge_backlog()

    def _merge_backlog(self) -> int:
        """`fts.merge_backlog` in the open write transaction, and this saver's count starts over."""
        moved = fts.merge_backlog(self.conn)
        self._backlog_rows = 0
        self._backlog_merge_due = False
        return moved

    def _carry_deferred(self, txn: _ThreadTxn) -> None:
        """Write the deferred writes of `txn`'s thread inside it."""
        if not self._deferred:
            return
        with self._deferred_cond:
            mine = [e for e in self._deferred if e.thread_id == txn.thread_id]
        if mine:
            for entry in mine:
                self._apply_deferred(txn, entry)
            txn.after_commit.append(lambda: self._forget_deferred(mine))

    def _write_deferred(self, after_commit: list, skip_thread: str | None) -> None:
        """Write deferred writes (all but `skip_thread`'s) inside the open transaction."""
        with self._deferred_cond:
            entries = [e for e in self._deferred if e.thread_id != skip_thread]
        by_thread: dict[str, list[_DeferredWrites | _DeferredPut]] = {}
        for entry in entries:
            by_thread.setdefault(entry.thread_id, []).append(entry)
        written: list[_DeferredWrites | _DeferredPut] = []
        for thread_id, group in by_thread.items():
            # Each thread's writes under a savepoint: one that can never be written
            # is dropped alone instead of failing this transaction (and every later one).
            mark = len(after_commit)
            self.conn.execute("SAVEPOINT deferred_thread")
            try:
                # Read the row afresh: no cached numbers, so nothing can be stale.
                txn = _ThreadTxn(self.conn, thread_id, self._read_thread_state(thread_id, group[0].user_id), after_commit)
                for entry in group:
                    self._apply_deferred(txn, entry)
                state = txn.close()
            except Exception as exc:
                if _retry_may_help(exc):
                    raise
                self.conn.execute("ROLLBACK TO deferred_thread")
                self.conn.execute("RELEASE deferred_thread")
                del after_commit[mark:]
                self._drop_deferred(group, exc)
                continue
            self.conn.execute("RELEASE deferred_thread")
            written.extend(group)
            after_commit.append(lambda t=thread_id, s=state: _remember(self._thread_states, t, s, 10_000))
        if written:
            after_commit.append(lambda: self._forget_deferred(written))

    def _apply_deferred(self, txn: _ThreadTxn, entry: _DeferredWrites | _DeferredPut) -> None:
        if type(entry) is _DeferredPut:
            self._insert_checkpoint(txn, entry)
        else:
            self._insert_writes(txn, entry)

    def _drop_deferred(self, entries: list[_DeferredWrites | _DeferredPut], exc: BaseException, *, log: bool = True) -> None:
        """Give up deferred writes that cannot be written, with one log line for the operator
        (`log=False`: the caller of the failed write is told, and the operator by it)."""
        self._forget_deferred(entries)
        self._drop_cached_thread(entries[0].thread_id)
        if not log:
            return
        # Input refused at the door is the user's mistake (a warning); anything else is the store's (an error).
        level = logging.WARNING if isinstance(exc, UnstorableInputError) else logging.ERROR
        logger.log(
            level, "dropped %d unwritable checkpoint writes of thread %r in %s: %s: %s",
            len(entries), entries[0].thread_id, self.path, type(exc).__name__, exc,
        )

    def _forget_deferred(self, written: list[_DeferredWrites | _DeferredPut]) -> None:
        with self._deferred_cond:
            done = set(map(id, written))
            self._deferred = [e for e in self._deferred if id(e) not in done]

    # -- encoding values ---------------------------------------------------

    def _dump(self, value: Any) -> tuple[str, bytes]:
        """A value serialised and compressed; sealed where its row is written (`_apply_encoded`, `_insert_checkpoint`)."""
        return codec.compress_blob(*self.serde.dumps_typed(value))

    def _load(self, type_: str, blob: bytes, place: bytes) -> Any:
        """A value stored at `place` (one of `checkpointers.encryption`'s `*_place`)."""
        if self._cipher is not None:
            blob = self._cipher.open(blob, place)
        return self._decode(type_, blob)

    def _decode(self, type_: str, blob: bytes, checkpoint_id: str | bytes | None = None) -> Any:
        """A value (or the checkpoint `checkpoint_id`) from its plain (decrypted) serialised form."""
        if type_ in checkpoint_codec.TYPES:
            return checkpoint_codec.decode(blob, checkpoint_id)
        return self.serde.loads_typed(codec.decompress_blob(type_, blob))

    def _load_checkpoint(self, thread_key: int, ns: str, checkpoint_id: str | bytes, type_: str, blob: bytes) -> Any:
        """A stored checkpoint (`checkpoint_id` as stored)."""
        if self._cipher is not None:
            blob = self._cipher.open(blob, checkpoint_place(thread_key, ns, checkpoint_id))
        return self._decode(type_, blob, checkpoint_id)

    def _load_checkpoint_row(
        self, thread_key: int, ns: str, checkpoint_id: str | bytes, type_: str, blob: bytes, metadata: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """A stored checkpoint and its metadata (`metadata`: the column; '' when the blob holds it)."""
        if type_ != checkpoint_codec.TYPE:
            return self._load_checkpoint(thread_key, ns, checkpoint_id, type_, blob), json.loads(metadata)
        if self._cipher is not None:
            blob = self._cipher.open(blob, checkpoint_place(thread_key, ns, checkpoint_id))
        checkpoint, held = checkpoint_codec.decode_row(blob, checkpoint_id)
        return checkpoint, json.loads(metadata) if held is None else held

    def _dump_checkpoint(
        self, stored: dict[str, Any], metadata: dict[str, Any], nones: list[str], checkpoint_id: str
    ) -> tuple[str, bytes]:
        """A checkpoint without its id and values, in `checkpoint_codec`'s encoding (with its
        metadata, and which channels hold None) where it fits; not yet sealed."""
        blob = checkpoint_codec.encode(stored, metadata, nones, checkpoint_id)
        if blob is None:
            return self._dump(stored)
        return checkpoint_codec.TYPE, blob

    def _dump_message(self, message: BaseMessage) -> tuple[str, bytes]:
        return dump_message(self.serde, message)

    def _load_message(self, type_: str, blob: bytes) -> BaseMessage:
        """A message from its plain (decrypted) blob."""
        return load_message(self.serde, type_, blob)

    def _open_rows(self, thread_key: int, rows: Any) -> Any:
        """Rows `(message_no, type, value)` of a thread's `messages` with their values decrypted."""
        cipher = self._cipher
        if cipher is None:
            return rows
        return [(no, type_, cipher.open(blob, message_place(thread_key, no))) for no, type_, blob in rows]

    def _segment_rows(self, thread_key: int, nos_blob: bytes, nos: list[int], value: bytes) -> list[tuple[int, str, bytes]]:
        """The plain `(message_no, type, blob)` rows of one stored segment (`nos`: `nos_blob` unpacked)."""
        if self._cipher is not None:
            value = self._cipher.open(value, segment_place(thread_key, nos_blob))
        return _segment_rows(nos, value)

    def _search_words(self, message: BaseMessage) -> str | None:
        """What the search index holds for a message: its words, or their keyed hashes."""
        return search.indexed_words(message, None if self._cipher is None else self._cipher.search_token)

    def _seal_title(self, title: str | None, thread_id: str) -> str | None:
        """A thread's title as stored (encrypted when the store is, bound to the thread)."""
        return encryption.seal_title(self._cipher, title, thread_id)

    def _open_title(self, stored: str | None, thread_id: str) -> str | None:
        return encryption.open_title(self._cipher, stored, thread_id)

    def _pre_message(self, message: BaseMessage, *, words: bool = True) -> _PreMessage:
        """A message serialised, digested and (with `words`) split into search words, outside any transaction."""
        check_value(message)
        type_, blob = self._dump_message(message)
        digest = hashlib.blake2b(type_.encode() + b"\0" + blob, digest_size=16).digest()
        unnamed = message if message.id is None else None
        if words:
            return _PreMessage(type_, blob, digest, self._search_words(message), unnamed=unnamed)
        return _PreMessage(type_, blob, digest, None, message, unnamed)

    def _store_message(self, txn: _ThreadTxn, message: BaseMessage | _PreMessage) -> int:
        """The number of a message in this thread, storing it if it is new.

        Search words are worked out here, for a new message only, unless the
        message was pre-encoded with them (a deferred write)."""
        pre = message if type(message) is _PreMessage else self._pre_message(message, words=False)
        if pre.unnamed is not None and pre.unnamed.id is not None:
            pre = self._pre_message(pre.unnamed, words=pre.message is None)
        known = txn.new_digests.get(pre.digest)
        if known is not None:
            return known
        # Only messages this saver wrote are remembered, and the final UPDATE of
        # the write fails if a garbage collection ran since: no dangling numbers.
        known = self._digests.get((txn.thread_key, pre.digest))
        if known is not None:
            return known
        no = txn.message_no()
        blob = pre.blob if self._cipher is None else self._cipher.seal(pre.blob, message_place(txn.thread_key, no))
        txn.add_row(ROW_MESSAGE, txn.thread_key, no, pre.type_, blob)
        txn.stored_messages += 1
        words = pre.words if pre.message is None else self._search_words(pre.message)
        if words:
            txn.add_row(ROW_SEARCH, fts.rowid(txn.thread_key, no), search.backlog_body(words))
            txn.after_commit.append(self._backlog_grew)
        txn.new_digests[pre.digest] = no
        key = (txn.thread_key, pre.digest)
        txn.after_commit.append(lambda: _remember(self._digests, key, no, 20_000))
        return no

    def _base_list(self, txn: _ThreadTxn, ns: str, channel: str) -> _StoredList | None:
        """The list to store a new value of `channel` against, if one exists."""
        base = txn.lists.get((ns, channel)) or self._lists.latest(txn.thread_key, ns, channel)
        if base is not None:  # rows are never changed, and removed only by GC (see _ThreadTxn.close)
            return base
        row = txn.conn.execute(
            "SELECT value_no FROM channel_values WHERE thread_key = ? AND checkpoint_ns = ? "
            "AND channel = ? AND kind IN (?, ?) ORDER BY value_no DESC LIMIT 1",
            (txn.thread_key, ns, channel, KIND_MESSAGE_LIST, KIND_DELTA_SNAPSHOT),
        ).fetchone()
        if row is None:
            return None
        return self._load_list(txn.conn, txn.thread_key, row[0])

    def _encode_list(
        self, txn: _ThreadTxn, ns: str, channel: str, messages: list[BaseMessage]
    ) -> tuple[_StoredList, bytes, int | None, int | None]:
        """Store the new messages of a list; return it with its row's (value, base_no, keep)."""
        base = self._base_list(txn, ns, channel)
        encoded = encode_list(base, messages, partial(self._store_message, txn), txn.value_no)
        if ns == "" and channel == MESSAGES_CHANNEL:  # usage statistics: messages new to the conversation
            for found in stats.new_messages(base.nos if base is not None else None, messages, encoded[0].nos):
                txn.count_message(found)
        return encoded

    def _pre_encode(self, value: Any, *, words: bool = True) -> _PreValue:
        """A write or a channel value encoded as far as it can be without a transaction:
        serialised (`words`: and its messages split into search words, see
        `_store_message`); `_apply_encoded` stores its new messages and gives its row."""
        if _is_message_list(value):
            return _PreValue(KIND_MESSAGE_LIST, messages=[self._pre_message(m, words=words) for m in value])
        if isinstance(value, BaseMessage):
            return _PreValue(KIND_MESSAGE, messages=[self._pre_message(value, words=words)])
        if _is_message_dict(value):
            # A graph's input as it sits in the __start__ channel: store its
            # messages by number like the rest.
            parts = {key: self._pre_encode(item, words=words) for key, item in value.items() if _holds_messages(item)}
            rest = {key: item for key, item in value.items() if key not in parts}
            return _PreValue(KIND_MESSAGE_DICT, parts=parts, rest=rest, order=list(value))
        check_value(value, "input")
        type_, blob = self._dump(value)
        return _PreValue(KIND_SERDE, type_=type_, blob=blob)

    def _apply_encoded(self, txn: _ThreadTxn, pre: _PreValue, place: bytes | None) -> tuple[int, str | None, bytes | None]:
        """The (kind, type, value) columns of a pre-encoded value, storing its new messages;
        a serialised value is sealed to `place` (None: the store is not encrypted)."""
        if pre.messages is not None:
            return pre.kind, None, codec.pack_numbers([self._store_message(txn, m) for m in pre.messages])
        if pre.parts is not None:
            refs = {key: self._apply_encoded(txn, part, None)[::2] for key, part in pre.parts.items()}
            type_, blob = self._dump({"order": pre.order, "refs": refs, "rest": pre.rest})
            return KIND_MESSAGE_DICT, type_, blob if place is None else self._cipher.seal(blob, place)
        return pre.kind, pre.type_, pre.blob if place is None else self._cipher.seal(pre.blob, place)

    # -- decoding values ---------------------------------------------------

    def _load_messages(self, conn: sqlite3.Connection, thread_key: int, nos: Sequence[int]) -> dict[int, BaseMessage]:
        """Message objects by number, from loose rows and sealed segments."""
        if len(nos) < _PAUSE_GC_FROM:
            return self._decode_messages(conn, thread_key, nos)
        with _collector_paused():
            return self._decode_messages(conn, thread_key, nos)

    def _decode_messages(self, conn: sqlite3.Connection, thread_key: int, nos: Sequence[int]) -> dict[int, BaseMessage]:
        wanted = set(nos)
        if not wanted:
            return {}
        lo, hi = min(wanted), max(wanted)
        found: dict[int, BaseMessage] = {}
        # Segments do not overlap, so the first one needed is the last to start by `lo`
        # (found in the index alone). Bounding the range with it makes a page of a
        # long thread's newest messages read one or two segment rows: with only
        # `last_no >= lo`, every earlier segment's row is read to be refused.
        for nos_blob, value in conn.execute(
            "SELECT nos, value FROM message_segments WHERE thread_key = ?1 AND first_no <= ?2 "
            "AND first_no >= coalesce((SELECT max(first_no) FROM message_segments "
            "WHERE thread_key = ?1 AND first_no <= ?3), 0) AND last_no >= ?3 ORDER BY first_no",
            (thread_key, hi, lo),
        ):
            segment_nos = codec.unpack_numbers(nos_blob)
            if wanted.isdisjoint(segment_nos):
                continue
            for no, type_, blob in self._segment_rows(thread_key, nos_blob, segment_nos, value):
                if no in wanted:
                    found[no] = self._load_message(type_, blob)
        if len(found) < len(wanted):
            rows = conn.execute(
                "SELECT message_no, type, value FROM messages WHERE thread_key = ? AND message_no BETWEEN ? AND ?"
                if hi - lo < 2 * len(wanted)
                else "SELECT message_no, type, value FROM messages WHERE thread_key = ? "
                "AND message_no IN (SELECT value FROM json_each(?))",
                (thread_key, lo, hi) if hi - lo < 2 * len(wanted) else (thread_key, json.dumps(sorted(wanted))),
            )
            for no, type_, blob in self._open_rows(thread_key, rows):
                if no in wanted:
                    found[no] = self._load_message(type_, blob)
        if len(found) != len(wanted):
            missing = sorted(wanted - found.keys())[:5]
            raise RuntimeError(f"thread {thread_key}: stored value refers to missing messages {missing}")
        return found

    def _stored_message_rows(self, thread_key: int) -> list[tuple[int, str, bytes]]:
        """Every stored message of a thread as (message_no, type, plain blob), loose or sealed."""
        rows = self._open_rows(
            thread_key,
            self.conn.execute("SELECT message_no, type, value FROM messages WHERE thread_key = ?", (thread_key,)).fetchall(),
        )
        for nos_blob, value in self.conn.execute(
            "SELECT nos, value FROM message_segments WHERE thread_key = ?", (thread_key,)
        ).fetchall():
            rows += self._segment_rows(thread_key, nos_blob, codec.unpack_numbers(nos_blob), value)
        return rows

    def _thread_search_rows(self, thread_key: int) -> list[tuple[int, str]]:
        """The search index rows of every stored message of a thread."""
        return self._search_rows(thread_key, self._stored_message_rows(thread_key))

    def _search_rows(self, thread_key: int, rows: Sequence[tuple[int, str, bytes]]) -> list[tuple[int, str]]:
        """The search index rows of stored messages, exactly as `_store_message` added them."""
        found = []
        for no, type_, blob in rows:
            words = self._search_words(self._load_message(type_, blob))
            if words:
                found.append((fts.rowid(thread_key, no), words))
        return found

    def _seal_segment(self, txn: _ThreadTxn) -> None:
        """Move loose messages into one compressed segment once enough have gathered."""
        # Message numbers only grow, so fewer than SEGMENT_SIZE numbers handed out
        # since the last sealed one means fewer loose rows: no need to count.
        if txn.sealed_upto is not None and txn.next_message_no - 1 - txn.sealed_upto < SEGMENT_SIZE:
            return
        txn.write_rows()
        count, first, last = txn.conn.execute(
            "SELECT count(*), min(message_no), max(message_no) FROM messages WHERE thread_key = ?",
            (txn.thread_key,),
        ).fetchone()
        if count < SEGMENT_SIZE:
            txn.sealed_upto = (first or txn.next_message_no) - 1
            return
        rows = self._open_rows(
            txn.thread_key,
            txn.conn.execute(
                "SELECT message_no, type, value FROM messages WHERE thread_key = ? ORDER BY message_no",
                (txn.thread_key,),
            ).fetchall(),
        )
        self._write_segment(txn.conn, txn.thread_key, rows)
        txn.conn.execute("DELETE FROM messages WHERE thread_key = ?", (txn.thread_key,))
        txn.sealed_upto = rows[-1][0]

    def _write_segment(self, conn: sqlite3.Connection, thread_key: int, rows: list[tuple[int, str, bytes]]) -> None:
        """Seal plain message rows into one segment (compressed, then encrypted when the store is)."""
        value = codec.deflate(ormsgpack.packb([[type_, blob] for _, type_, blob in rows]))
        nos = codec.pack_numbers([r[0] for r in rows])
        if self._cipher is not None:
            value = self._cipher.seal(value, segment_place(thread_key, nos))
        conn.execute(
            "INSERT INTO message_segments (thread_key, first_no, last_no, nos, value) VALUES (?, ?, ?, ?, ?)",
            (thread_key, rows[0][0], rows[-1][0], nos, value),
        )

    def _load_list(self, conn: sqlite3.Connection, thread_key: int, value_no: int) -> _StoredList:
        cached = self._lists.get(thread_key, value_no)
        if cached is not None:
            return cached
        nos, known, ns, channel, depth = self._list_numbers(conn, thread_key, value_no)
        missing = [n for n in nos if n not in known]
        if missing:
            known.update((n, (m, _snapshot(m))) for n, m in self._load_messages(conn, thread_key, missing).items())
        entry = _StoredList(value_no, nos, [known[n][0] for n in nos], depth, [known[n][1] for n in nos])
        self._lists.add(thread_key, ns, channel, entry)
        return entry

    def _own_list(self, conn: sqlite3.Connection, thread_key: int, value_no: int) -> list[BaseMessage]:
        """A stored list as new message objects: copies of what the cache holds, the rest
        decoded. A cold read for a caller (`get_state`) neither copies nor snapshots them."""
        cached = self._lists.get(thread_key, value_no)
        if cached is not None:
            return cached.copies()
        nos, known, *_ = self._list_numbers(conn, thread_key, value_no)
        loaded = self._load_messages(conn, thread_key, [n for n in nos if n not in known])
        return [_restored(*known[n]) if n in known else loaded[n] for n in nos]

    def _list_numbers(
        self, conn: sqlite3.Connection, thread_key: int, value_no: int
    ) -> tuple[list[int], dict[int, tuple[BaseMessage, dict]], str, str, int]:
        """The message numbers of a stored list, walking its delta chain to a cached or full list,
        and the messages (with their snapshots) of that cached list."""
        steps: list[tuple[int, bytes, int | None, int | None, int]] = []
        start = self._lists.get(thread_key, value_no)
        ns = channel = ""
        if start is None:
            # The whole chain in one statement (a cold read walks up to MAX_CHAIN_DEPTH
            # links); it stops at the first link this saver has cached.
            cursor: int | None = value_no
            for link, value, base_no, keep, depth, ns, channel in conn.execute(_LIST_CHAIN_SQL, (thread_key, value_no)):
                if link != cursor:
                    break
                if link != value_no and (start := self._lists.get(thread_key, link)) is not None:
                    break
                steps.append((link, value, base_no, keep, depth))
                cursor = base_no
                if cursor is None:
                    break
            if start is None and cursor is not None:
                raise RuntimeError(f"thread {thread_key}: message list {cursor} is missing")
        nos = list(start.nos) if start else []
        known = start.known() if start else {}
        for _, blob, _base, keep, _depth in reversed(steps):
            tail = codec.unpack_numbers(blob)
            if keep is None:
                nos = tail
            else:  # in place: a link changes the end of the list, not the thousands before it
                del nos[keep:]
                nos.extend(tail)
        return nos, known, ns, channel, steps[0][4] if steps else start.depth

    def read_messages(
        self, thread_id: str, *, user_id: Any = ANY_USER, limit: int = 50, before: int | None = None
    ) -> MessagePage:
        """A page of a thread's latest messages without loading the rest of its history.

        Returns up to `limit` messages ending just before index `before` (default:
        the newest), with `start` (the index of the first one) and `total`, so
        `read_messages(t, before=page.start)` gives the page before. Raises
        ThreadNotFoundError for a missing thread or one owned by another user.
        """
        if not 1 <= limit <= 1000:
            raise ValueError(f"limit must be between 1 and 1000, not {limit}")
        thread_id = check_id(thread_id)
        with self._read() as conn:
            row = conn.execute("SELECT thread_key, user_id FROM threads WHERE thread_id = ?", (thread_id,)).fetchone()
            if row is None or (user_id is not ANY_USER and row[1] != user_id):
                raise ThreadNotFoundError(thread_id)
            thread_key = row[0]
            latest = conn.execute(
                "SELECT checkpoint_id, type, checkpoint FROM checkpoints WHERE thread_key = ? AND checkpoint_ns = '' "
                "ORDER BY checkpoint_id DESC LIMIT 1",
                (thread_key,),
            ).fetchone()
            version = (
                self._load_checkpoint(thread_key, "", *latest)["channel_versions"].get("messages") if latest else None
            )
            found = self._lookup_value(conn, thread_key, "", "messages", version) if version is not None else None
            if found is None:
                return MessagePage([], 0, 0)
            value_no, kind, type_, blob = found
            if kind == KIND_MESSAGE_LIST:
                cached = self._lists.get(thread_key, value_no)
                if cached is not None:
                    nos, known = cached.nos, cached.known()
                else:
                    nos, known, *_ = self._list_numbers(conn, thread_key, value_no)
                end = len(nos) if before is None else max(0, min(before, len(nos)))
                start = max(0, end - limit)
                page = nos[start:end]
                loaded = self._load_messages(conn, thread_key, [n for n in page if n not in known])
                # Objects of the cache are shared with others: the page gets its own.
                return MessagePage(
                    [_restored(*known[n]) if n in known else loaded[n] for n in page], len(nos), start
                )
            value = self._decode_value(conn, thread_key, value_no, kind, type_, blob)
        value = value.value if isinstance(value, _DeltaSnapshot) else value
        messages = list(value) if isinstance(value, list) else []
        end = len(messages) if before is None else max(0, min(before, len(messages)))
        start = max(0, end - limit)
        return MessagePage(messages[start:end], len(messages), start)

    async def aread_messages(self, thread_id: str, **kwargs: Any) -> MessagePage:
        return await asyncio.to_thread(lambda: self.read_messages(thread_id, **kwargs))

    def _decode_value(
        self, conn: sqlite3.Connection, thread_key: int, value_no: int, kind: int, type_: str | None, blob: bytes | None,
        *, own: bool = False,
    ) -> Any:
        """A channel value; message lists come from (and go to) the list cache, or with
        `own`, as new objects (read from the cache without adding to it)."""
        if kind in (KIND_MESSAGE_LIST, KIND_DELTA_SNAPSHOT):
            messages = self._own_list(conn, thread_key, value_no) if own else self._load_list(conn, thread_key, value_no).hand_out()
            return messages if kind == KIND_MESSAGE_LIST else _DeltaSnapshot(messages)
        place = value_place(thread_key, value_no) if self._cipher is not None and kind in _SEALED_KINDS else None
        return self._decode_write(conn, thread_key, kind, type_, blob, place)

    def _decode_write(
        self, conn: sqlite3.Connection, thread_key: int, kind: int, type_: str | None, blob: bytes | None, place: bytes | None
    ) -> Any:
        """A stored value or write; `place`: where a serialised one is sealed (None: not encrypted)."""
        if kind == KIND_SERDE:
            return self._load(type_, blob, place)
        if kind == KIND_MESSAGE_DICT:
            parts = self._load(type_, blob, place)
            rest = parts["rest"]
            for key, (ref_kind, ref_blob) in parts["refs"].items():
                rest[key] = self._decode_write(conn, thread_key, ref_kind, None, ref_blob, None)
            return {key: rest[key] for key in parts["order"]}
        if kind not in (KIND_MESSAGE, KIND_MESSAGE_LIST):
            raise RuntimeError(f"unknown stored value kind {kind}")
        nos = codec.unpack_numbers(blob)
        found = self._load_messages(conn, thread_key, nos)
        if kind == KIND_MESSAGE:
            return found[nos[0]]
        return [found[n] for n in nos]

    def _lookup_value(
        self, conn: sqlite3.Connection, thread_key: int, ns: str, channel: str, version: Any
    ) -> tuple[int, int, str | None, bytes | None] | None:
        return conn.execute(
            # Without INDEXED BY the planner may walk the primary key backwards
            # for the ORDER BY and read the whole thread.
            "SELECT value_no, kind, type, value FROM channel_values INDEXED BY channel_values_by_version "
            "WHERE thread_key = ? "
            "AND checkpoint_ns = ? AND channel = ? AND version = ? ORDER BY value_no DESC LIMIT 1",
            (thread_key, ns, channel, version),
        ).fetchone()

    def _channel_values(
        self, conn: sqlite3.Connection, thread_key: int, ns: str, versions: ChannelVersions, *, own: bool = False
    ) -> dict[str, Any]:
        """Every channel's value at its version, found with one statement."""
        if not versions:
            return {}
        # One indexed lookup per channel, glued into a single statement so a
        # read costs one round trip into SQLite however many channels there are.
        branch = (
            "SELECT * FROM (SELECT ? AS channel, value_no, kind, type, value FROM channel_values "
            "INDEXED BY channel_values_by_version WHERE thread_key = ? AND checkpoint_ns = ? "
            "AND channel = ? AND version = ? ORDER BY value_no DESC LIMIT 1)"
        )
        params: list[Any] = []
        for channel, version in versions.items():
            params += [channel, thread_key, ns, channel, version]
        rows = conn.execute(" UNION ALL ".join([branch] * len(versions)), params).fetchall()
        return {channel: self._decode_value(conn, thread_key, *rest, own=own) for channel, *rest in rows}

    def _pending_writes(self, conn: sqlite3.Connection, thread_key: int, ns: str, checkpoint_id: str) -> list[PendingWrite]:
        stored_id = db_id(checkpoint_id)
        rows = conn.execute(
            "SELECT task_path, task_id, idx, channel, kind, type, value FROM writes WHERE thread_key = ? "
            "AND checkpoint_ns = ? AND checkpoint_id = ?",
            (thread_key, ns, stored_id),
        ).fetchall()
        rows = [(py_task_path(path), py_id(task), task, *rest) for path, task, *rest in rows]
        rows.sort(key=lambda r: writes_sort_key(r[0], r[1], r[3]))
        sealed = self._cipher is not None
        return [
            (
                task_id,
                channel,
                self._decode_write(
                    conn, thread_key, kind, t, v,
                    write_place(thread_key, ns, stored_id, stored_task, idx) if sealed and kind in _SEALED_KINDS else None,
                ),
            )
            for _path, task_id, stored_task, idx, channel, kind, t, v in rows
        ]

    def _tuple(
        self,
        conn: sqlite3.Connection,
        thread_key: int,
        thread_id: str,
        ns: str,
        checkpoint_id: str | bytes,
        parent_id: str | bytes | None,
        checkpoint: dict[str, Any],
        metadata: dict[str, Any],
        *,
        own: bool = False,
    ) -> CheckpointTuple:
        """A stored checkpoint (ids as stored; the rest as `_load_checkpoint_row` gives it)
        with its values and writes; `own`: its messages new objects (see `_IN_A_RUN`)."""
        checkpoint_id, parent_id = py_id(checkpoint_id), py_id(parent_id)
        checkpoint["id"] = checkpoint_id
        versions = checkpoint["channel_versions"]
        nones = checkpoint.get("channel_values")  # the channels the row says hold None
        if nones:
            versions = {channel: version for channel, version in versions.items() if channel not in nones}
        checkpoint["channel_values"] = {**(nones or {}), **self._channel_values(conn, thread_key, ns, versions, own=own)}
        pending_writes = self._pending_writes(conn, thread_key, ns, checkpoint_id)
        return _checkpoint_tuple(thread_id, ns, checkpoint, metadata, parent_id, pending_writes)

    # -- BaseCheckpointSaver: reads -----------------------------------------

    @staticmethod
    def _checkpoint_row(
        conn: sqlite3.Connection, thread_key: int, ns: str, config: RunnableConfig, columns: str
    ) -> tuple | None:
        """The checkpoint `config` names, or the thread's latest when it names none."""
        if checkpoint_id := get_checkpoint_id(config):
            return conn.execute(
                f"SELECT {columns} FROM checkpoints WHERE thread_key = ? AND checkpoint_ns = ? AND checkpoint_id = ?",
                (thread_key, ns, db_id(checkpoint_id)),
            ).fetchone()
        return conn.execute(
            f"SELECT {columns} FROM checkpoints WHERE thread_key = ? AND checkpoint_ns = ? "
            "ORDER BY checkpoint_id DESC LIMIT 1",
            (thread_key, ns),
        ).fetchone()

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        configurable = config["configurable"]
        thread_id = check_id(configurable["thread_id"])
        ns = configurable.get("checkpoint_ns", "")
        checkpoint_id = get_checkpoint_id(config)
        with self._lock:
            own = _IN_A_RUN not in configurable
            found = self._kept_tuple(thread_id, ns, checkpoint_id, own=own)
            if found is not None:
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
            if checkpoint_id is None:
                # A new thread's first put follows "no checkpoint" (parent None).
                newest = (found and found.checkpoint["id"], data_version)
                with self._deferred_cond:
                    _remember(self._newest, (thread_id, ns), newest, 10_000)
            return found

    def _kept_tuple(self, thread_id: str, ns: str, checkpoint_id: str | None, *, own: bool) -> CheckpointTuple | None:
        """The thread's newest checkpoint as `_keep_tuple` kept it, if nothing can have changed it
        since (call holding `_lock`); else None, and the caller reads it. `own`: see `_tuple`."""
        kept = self._kept.get((thread_id, ns))
        if (
            kept is None
            or self._deferred
            or kept.total_changes != self.conn.total_changes
            or (checkpoint_id is not None and checkpoint_id != kept.entry.checkpoint_id)
            or self.conn.execute("PRAGMA data_version").fetchone()[0] != kept.data_version
        ):
            return None
        entry = kept.entry
        checkpoint = self._decode(entry.type_, entry.blob, entry.checkpoint_id)
        checkpoint["id"] = entry.checkpoint_id
        checkpoint["channel_values"] = {
            **checkpoint.get("channel_values", {}),  # the Nones the row holds
            **{
                channel: self.serde.loads_typed((value.type_, value.blob)) if type(value) is _KeptValue else value.hand_out(own)
                for channel, value in kept.values.items()
            },
        }
        return _checkpoint_tuple(thread_id, ns, checkpoint, entry.metadata_json, entry.parent_id, [])

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
            params.append(configurable["checkpoint_ns"])
        if checkpoint_id := configurable.get("checkpoint_id"):
            where.append("c.checkpoint_id = ?")
            params.append(db_id(checkpoint_id))
        if before is not None and (before_id := get_checkpoint_id(before)):
            where.append("c.checkpoint_id < ?")
            params.append(db_id(before_id))
        # Metadata is matched in Python: a row since `tk.cp2` holds it in its (maybe sealed) blob.
        metadata_filter: dict[str, Any] = {}
        for key, value in (filter or {}).items():
            key = check_text(str(key), "filter")
            if isinstance(value, str):
                check_text(value, "filter")
            metadata_filter[key] = value
        sql = (
            "SELECT c.thread_key, t.thread_id, c.checkpoint_ns, c.checkpoint_id, c.parent_checkpoint_id, "
            "c.type, c.checkpoint, c.metadata FROM checkpoints c JOIN threads t ON t.thread_key = c.thread_key"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY c.checkpoint_id DESC"
        )
        if limit is not None and not metadata_filter:
            sql += " LIMIT ?"
            params.append(int(limit))
        with self._read() as conn:
            results = []
            for thread_key, thread_id, ns, checkpoint_id, parent_id, *stored in conn.execute(sql, params).fetchall():
                checkpoint, metadata = self._load_checkpoint_row(thread_key, ns, checkpoint_id, *stored)
                if any(metadata.get(k) != v for k, v in metadata_filter.items()):
                    continue
                results.append(
                    self._tuple(conn, thread_key, thread_id, ns, checkpoint_id, parent_id, checkpoint, metadata, own=True)
                )
                if limit is not None and len(results) >= limit:
                    break
        yield from results

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
        which the run goes on (`_more_steps_follow`), are captured now and written
        in the transaction of what LangGraph saves next for the thread, or by the
        flusher after `DEFERRED_WRITES_FLUSH_AFTER` (see `put_writes`): a chat
        turn commits once, with the checkpoint that ends it.
        """
        configurable = config["configurable"]
        thread_id = check_id(configurable["thread_id"])
        ns = configurable.get("checkpoint_ns", "")
        full_metadata = get_serializable_checkpoint_metadata(config, metadata)
        metadata_json = check_text(
            json.dumps(full_metadata, ensure_ascii=False, separators=(",", ":"), default=repr), "metadata"
        )
        # The id lives in its own column; the values in channel_values.
        stored = {k: v for k, v in checkpoint.items() if k not in ("channel_values", "id")}
        values = checkpoint["channel_values"]
        nones = [channel for channel, value in values.items() if value is None and channel in checkpoint["channel_versions"]]
        type_, blob = self._dump_checkpoint(stored, json.loads(metadata_json), nones, checkpoint["id"])
        if nones and type_ == checkpoint_codec.TYPE:
            # The row says which channels hold None: no value rows for them.
            values = {channel: value for channel, value in values.items() if value is not None}
        elif nones:
            # A row that cannot say so: rows for every None, not only new ones, as a
            # version first stored by a row that could has none of its own.
            new_versions = {**new_versions, **{channel: checkpoint["channel_versions"][channel] for channel in nones}}
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
        waits = self._defer_writes and (
            full_metadata.get("source") == "input"
            or (full_metadata.get("source") == "loop" and _more_steps_follow(checkpoint))
        )
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

            self._write_thread(thread_id, entry.user_id, write)
        return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint["id"]}}

    def _follow_newest(self, thread_id: str, ns: str, entry: _DeferredPut) -> None:
        """A put makes the thread's known newest checkpoint its own if it follows it, else unknown
        (call holding `_deferred_cond`). What `get_tuple` kept of the thread is stale either way."""
        key = (thread_id, ns)
        self._kept.pop(key, None)
        newest = self._newest.pop(key, None)
        if newest is not None and newest[0] == entry.parent_id:
            self._newest[key] = (entry.checkpoint_id, newest[1])

    def _keep_tuple(self, entry: _DeferredPut, thread_key: int, lists: dict[tuple[str, str], _StoredList]) -> None:
        """After the commit that wrote `entry` (holding `_lock`): keep it for `get_tuple` if it is the
        thread's newest checkpoint. A message list is kept as the stored list of the same
        objects (`lists`: those this write stored), handed out checked against their
        snapshots (see `_StoredList`); any other value is kept serialised and decoded anew."""
        key = (entry.thread_id, entry.ns)
        values: dict[str, Any] = {}
        for channel, value in entry.values.items():
            delta = isinstance(value, _DeltaSnapshot)
            messages = value.value if delta else value
            if _is_message_list(messages):
                stored = lists.get((entry.ns, channel)) or self._lists.latest(thread_key, entry.ns, channel)
                if stored is None or len(stored.objs) != len(messages) or not all(map(operator.is_, messages, stored.objs)):
                    return  # not the list the store holds: get_tuple reads it instead
                values[channel] = _KeptList(stored, delta)
                continue
            try:
                values[channel] = _KeptValue(*self.serde.dumps_typed(value))
            except Exception:  # the serializer refuses it: get_tuple reads the stored row instead
                return
        with self._deferred_cond:
            newest = self._newest.get(key)
            if newest is not None and newest[0] == entry.checkpoint_id:
                kept = _KeptTuple(entry, values, self.conn.total_changes, newest[1])
                _remember(self._kept, key, kept, 1_000)

    def _insert_checkpoint(self, txn: _ThreadTxn, entry: _DeferredPut) -> None:
        """The rows of one checkpoint: its new channel values and itself; and its mark on the thread row."""
        ns, values = entry.ns, entry.values
        for channel, version in entry.new_versions.items():
            if row := self._value_row(txn, ns, channel, version, values.get(channel, _MISSING)):
                txn.add_row(ROW_CHANNEL_VALUE, *row)
        checkpoint_id = db_id(entry.checkpoint_id)
        txn.add_row(
            ROW_CHECKPOINT,
            txn.thread_key,
            ns,
            checkpoint_id,
            None if entry.parent_id is None else db_id(entry.parent_id),
            None if entry.run_id is None else db_id(entry.run_id),
            entry.type_,
            entry.blob if self._cipher is None
            else self._cipher.seal(entry.blob, checkpoint_place(txn.thread_key, ns, checkpoint_id)),
            entry.metadata_column,
        )
        if txn.stored_messages:
            self._seal_segment(txn)
        self._touch_thread(txn, entry)

    def _captured_values(self, values: dict[str, Any], new_versions: ChannelVersions) -> dict[str, Any]:
        """The new channel values of a checkpoint that waits for a later transaction,
        as they are now: LangGraph may change a channel's object in place after
        `put` returns (a `Topic` extends its list), so values are serialised here.
        Message lists, bare or in a graph's input dict, are copied instead: the
        reducer builds new lists rather than changing them, and it gives an input
        message its id in place, which the stored message then carries (one row
        for the input and the history, as when the input is written at once)."""
        captured: dict[str, Any] = {}
        for channel in new_versions:
            value = values.get(channel, _MISSING)
            if value is _MISSING:
                continue
            copied = _copy_message_list(value)
            if copied is not None:
                captured[channel] = copied
            elif _is_message_dict(value):
                captured[channel] = {k: list(v) if _is_message_list(v) else v for k, v in value.items()}
            else:
                captured[channel] = self._pre_encode(value, words=False)
        return captured

    def _value_row(self, txn: _ThreadTxn, ns: str, channel: str, version: Any, value: Any) -> tuple | None:
        """The `channel_values` row for a channel's new value (None: nothing to store)."""
        base_no = keep = None
        depth = 0
        type_: str | None = None
        if value is _MISSING:
            # Updated but empty (a consumed trigger, a DeltaChannel between
            # snapshots): no row at this version means "no value".
            return None
        if _is_message_list(value) or (isinstance(value, _DeltaSnapshot) and _is_message_list(value.value)):
            kind = KIND_MESSAGE_LIST if type(value) is list else KIND_DELTA_SNAPSHOT
            messages = value if kind == KIND_MESSAGE_LIST else value.value
            entry, blob, base_no, keep = self._encode_list(txn, ns, channel, messages)
            value_no, depth = entry.value_no, entry.depth
            key = txn.thread_key
            txn.lists[(ns, channel)] = entry
            txn.after_commit.append(lambda: self._lists.add(key, ns, channel, entry))
        else:
            pre = value if type(value) is _PreValue else self._pre_encode(value, words=False)
            value_no = txn.value_no()
            place = value_place(txn.thread_key, value_no) if self._cipher is not None else None
            kind, type_, blob = self._apply_encoded(txn, pre, place)
        return (txn.thread_key, value_no, ns, channel, version, kind, type_, blob, base_no, keep, depth)

    def _touch_thread(self, txn: _ThreadTxn, entry: _DeferredPut) -> None:
        """Keep the thread's index row in step with a checkpoint (see `_ThreadTxn.touch`)."""
        count = title = None
        if entry.ns == "":
            messages = entry.values.get(MESSAGES_CHANNEL)
            if isinstance(messages, _DeltaSnapshot):
                messages = messages.value
            if MESSAGES_CHANNEL in entry.new_versions and isinstance(messages, list):
                count = len(messages)
                if txn.title is None:
                    title = title_from_messages(messages)
        txn.touch(entry.updated_at, count, title, self._seal_title(title, txn.thread_id), entry.user_id)

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
        ns = configurable.get("checkpoint_ns", "")
        checkpoint_id = configurable["checkpoint_id"]
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

        self._write_thread(thread_id, entry.user_id, write)

    def _insert_writes(self, txn: _ThreadTxn, entry: _DeferredWrites) -> None:
        row_kind = ROW_WRITE_REPLACE if entry.replace else ROW_WRITE_IGNORE
        checkpoint_id, task_id = db_id(entry.checkpoint_id), db_id(entry.task_id)
        task_path = db_task_path(entry.task_path)
        for idx, channel, value in entry.values:
            place = (
                None if self._cipher is None else write_place(txn.thread_key, entry.ns, checkpoint_id, task_id, idx)
            )
            kind, type_, blob = self._apply_encoded(txn, value, place)
            txn.add_row(
                row_kind, txn.thread_key, entry.ns, checkpoint_id, task_id, idx,
                task_path, channel, kind, type_, blob,
            )

    # -- deleting, copying, pruning -----------------------------------------

    def load_conversation(self, thread_id: str, user_id: Any) -> conversation.Conversation | None:
        """The thread's current messages (see `checkpointers.conversation`); None if the
        thread does not exist or is not the user's (`ANY_USER`: anyone's)."""
        return conversation.load(self, thread_id, user_id)

    async def aload_conversation(self, thread_id: str, user_id: Any) -> conversation.Conversation | None:
        return await asyncio.to_thread(self.load_conversation, thread_id, user_id)

    def attachment_path(self, thread_id: str) -> Path | None:
        """The database file attached to the thread, or None (encrypted when the store is)."""
        return self.attachments.path(thread_id)

    def attachment_database(self, thread_id: str) -> Path | bytes | None:
        """What the agent's tools open: the attached file, or its decrypted bytes
        when the store is encrypted (so no plain copy is written to disk); None
        if the thread has no database attached."""
        return self.attachments.database(thread_id)

    def delete_thread(self, thread_id: str) -> None:
        """Delete a thread: its checkpoints, writes, messages and index row."""
        self.delete_threads([thread_id])

    def delete_threads(
        self, thread_ids: Sequence[str], *, updated_before: str | None = None, purge: bool = True
    ) -> int:
        """Delete many threads in one transaction; returns how many were deleted.

        With `updated_before` (an ISO timestamp, as in `ThreadInfo.updated_at`)
        only threads last updated before it, and not pinned, are deleted: the
        check happens inside the delete, so a thread that got a message since
        it was chosen survives. `purge=False` leaves merging the words of the
        deleted messages out of the search index to the caller (`purge_search_index`),
        for callers that delete in many batches.
        """
        ids = [check_id(t) for t in thread_ids]
        if not ids:
            return 0
        with self._write() as after_commit:
            sql = "SELECT thread_key, thread_id FROM threads WHERE thread_id IN (SELECT value FROM json_each(?))"
            params: list[Any] = [json.dumps(ids)]
            if updated_before is not None:
                sql += " AND updated_at < ? AND pinned = 0"
                params.append(updated_before)
            found = self.conn.execute(sql, params).fetchall()
            keys = [k for k, _ in found]
            deleted_ids = [t for _, t in found]
            keys_json = json.dumps(keys)
            files = self.attachments.files_of(keys)
            for thread_key in keys:
                fts.remove(self.conn, self._thread_search_rows(thread_key))
            for table in _THREAD_TABLES + ("threads",):
                self.conn.execute(
                    f"DELETE FROM {table} WHERE thread_key IN (SELECT value FROM json_each(?))", (keys_json,)
                )
            # usage statistics: with `updated_before` this is the retention sweep's delete
            stats.threads_deleted(self.conn, len(keys), swept=updated_before is not None)
            after_commit.append(lambda: self._forget(keys, deleted_ids))
            after_commit.append(lambda: self.attachments._unlink(files))
            if keys and purge:
                after_commit.append(self.purge_search_index)
        return len(keys)

    def purge_search_index(self) -> None:
        """Merge the full-text index (and the backlog into it) so words of deleted messages are gone from the file."""
        with self._write():
            self._merge_backlog()
            fts.purge(self.conn)

    def _forget(self, thread_keys: Sequence[int], deleted_ids: Sequence[str] | None = None) -> None:
        """Drop what is cached of threads whose rows changed, or (`deleted_ids`) that are gone.

        A deleted thread's key is never used again, so its remembered message
        digests can never be looked up; they are left for the cache to evict,
        and forgetting a batch of deleted threads costs the batch, not the cache."""
        self._lists.forget_threads(thread_keys)
        if deleted_ids is not None:
            for thread_id in deleted_ids:
                self._thread_states.pop(thread_id, None)
            return
        gone = set(thread_keys)
        for thread_id in [t for t, state in self._thread_states.items() if state.thread_key in gone]:
            del self._thread_states[thread_id]
        for key in [k for k in self._digests if k[0] in gone]:
            del self._digests[key]

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy a thread with its whole history under a new id (which must be unused)."""
        source, target = check_id(source_thread_id), check_id(target_thread_id)
        txn_failed: list = []
        try:
            self._copy_thread(source, target, txn_failed)
        except BaseException:
            for undo in txn_failed:
                undo()
            raise

    def _copy_thread(self, source: str, target: str, txn_failed: list) -> None:
        with self._write() as after_commit:
            src = self._thread_key(self.conn, source)
            if src is None:
                raise ThreadNotFoundError(source)
            dst = self._thread_key(self.conn, target)
            if dst is not None:
                has_state = self.conn.execute(
                    "SELECT 1 FROM checkpoints WHERE thread_key = ? LIMIT 1", (dst,)
                ).fetchone()
                if has_state:
                    raise ThreadExistsError(f"cannot copy into thread {target!r}: it already exists")
                replaced = self.attachments.files_of([dst])
                for table in ("writes", "attachments", "threads"):
                    self.conn.execute(f"DELETE FROM {table} WHERE thread_key = ?", (dst,))
                after_commit.append(lambda: self.attachments._unlink(replaced))
            now = utc_now()
            dst = self.conn.execute(
                "INSERT INTO threads (thread_id, user_id, title, created_at, updated_at, message_count, pinned, "
                "metadata, next_value_no, next_message_no) SELECT ?, user_id, title, ?, ?, message_count, pinned, "
                "metadata, next_value_no, next_message_no FROM threads WHERE thread_key = ?",
                (target, now, now, src),
            ).lastrowid
            stats.thread_created(self.conn, self.conn.execute(  # usage statistics
                "SELECT user_id FROM threads WHERE thread_key = ?", (dst,)).fetchone()[0])
            for table, columns in _THREAD_TABLE_COLUMNS.items():
                if table == "message_times":
                    # The trigger on `messages` dated the rows just copied now; they keep the source's times.
                    self.conn.execute("DELETE FROM message_times WHERE thread_key = ?", (dst,))
                self.conn.execute(
                    f"INSERT INTO {table} (thread_key, {columns}) SELECT ?, {columns} FROM {table} WHERE thread_key = ?",
                    (dst, src),
                )
            if self._cipher is not None:  # sealed values are bound to their thread: seal the copies to theirs
                reseal.Resealer(self.conn, self.attachments.root, self._cipher, self._cipher).thread(
                    dst, copied_from=(src, source)
                )
            fts.add(self.conn, self._thread_search_rows(dst))
            copied = self.attachments.copy_row(src, dst, target)
            if copied:
                txn_failed.append(lambda: self.attachments._unlink([copied]))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints (and their writes) that the given runs created."""
        ids = [str(r) for r in run_ids]
        if not ids:
            return
        with self._write() as after_commit:
            rows = []
            for run_id in ids:
                rows += self.conn.execute(
                    "SELECT thread_key, checkpoint_ns, checkpoint_id FROM checkpoints WHERE run_id = ?",
                    (db_id(run_id),),
                ).fetchall()
            for thread_key, ns, checkpoint_id in rows:
                self._delete_checkpoint(thread_key, ns, checkpoint_id)
            touched = sorted({r[0] for r in rows})
            for thread_key in touched:
                self._collect_garbage(thread_key)
            after_commit.append(lambda: self._forget(touched))
            if touched:
                after_commit.append(self.purge_search_index)

    def _delete_checkpoint(self, thread_key: int, ns: str, checkpoint_id: str) -> None:
        for table in ("checkpoints", "writes"):
            self.conn.execute(
                f"DELETE FROM {table} WHERE thread_key = ? AND checkpoint_ns = ? AND checkpoint_id = ?",
                (thread_key, ns, checkpoint_id),
            )

    def prune(
        self, thread_ids: Sequence[str], *, strategy: str = "keep_latest", updated_before: str | None = None
    ) -> None:
        """Drop old checkpoints of the given threads.

        `keep_latest` keeps the newest checkpoint of each namespace, plus, for
        threads that use `DeltaChannel`, the ancestors it needs back to the
        nearest snapshot. `delete` removes every checkpoint but keeps the thread.
        With `updated_before`, threads updated since then, or pinned, are left
        alone (checked inside the write, as in `delete_threads`).
        """
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"unknown prune strategy {strategy!r}: use 'keep_latest' or 'delete'")
        ids = [check_id(t) for t in thread_ids]
        if not ids:
            return
        with self._write() as after_commit:
            touched = []
            for thread_id in ids:
                row = self.conn.execute(
                    "SELECT thread_key, updated_at, pinned FROM threads WHERE thread_id = ?", (thread_id,)
                ).fetchone()
                if row is None or (updated_before is not None and (row[1] >= updated_before or row[2])):
                    continue
                thread_key = row[0]
                touched.append(thread_key)
                if strategy == "delete":
                    fts.remove(self.conn, self._thread_search_rows(thread_key))
                    for table in _THREAD_TABLES:
                        if table != "attachments":  # the thread stays, and so does its database
                            self.conn.execute(f"DELETE FROM {table} WHERE thread_key = ?", (thread_key,))
                    self.conn.execute(
                        "UPDATE threads SET message_count = 0, gc_epoch = gc_epoch + 1 WHERE thread_key = ?",
                        (thread_key,),
                    )
                    continue
                keep: set[tuple[str, str]] = set()
                for ns, checkpoint_id in self.conn.execute(
                    "SELECT checkpoint_ns, max(checkpoint_id) FROM checkpoints WHERE thread_key = ? GROUP BY checkpoint_ns",
                    (thread_key,),
                ).fetchall():
                    keep.update((ns, c) for c in self._delta_ancestry(thread_key, ns, checkpoint_id))
                for ns, checkpoint_id in self.conn.execute(
                    "SELECT checkpoint_ns, checkpoint_id FROM checkpoints WHERE thread_key = ?", (thread_key,)
                ).fetchall():
                    if (ns, checkpoint_id) not in keep:
                        self._delete_checkpoint(thread_key, ns, checkpoint_id)
                self._collect_garbage(thread_key)
            after_commit.append(lambda: self._forget(touched))
            if touched:
                after_commit.append(self.purge_search_index)

    def _delta_ancestry(self, thread_key: int, ns: str, checkpoint_id: str) -> list[str]:
        """The checkpoint plus the ancestors its DeltaChannels replay from."""
        kept = [checkpoint_id]
        row = self.conn.execute(
            "SELECT parent_checkpoint_id, type, checkpoint, metadata FROM checkpoints "
            "WHERE thread_key = ? AND checkpoint_ns = ? AND checkpoint_id = ?",
            (thread_key, ns, checkpoint_id),
        ).fetchone()
        checkpoint, metadata = self._load_checkpoint_row(thread_key, ns, checkpoint_id, *row[1:])
        versions = checkpoint["channel_versions"]
        delta_channels = metadata.get("counters_since_delta_snapshot") or {}
        unseeded = {
            ch for ch in delta_channels
            if ch in versions and self._lookup_value(self.conn, thread_key, ns, ch, versions[ch]) is None
        }
        parent = row[0]
        while unseeded and parent:
            row = self.conn.execute(
                "SELECT parent_checkpoint_id, type, checkpoint FROM checkpoints "
                "WHERE thread_key = ? AND checkpoint_ns = ? AND checkpoint_id = ?",
                (thread_key, ns, parent),
            ).fetchone()
            if row is None:
                break
            kept.append(parent)
            versions = self._load_checkpoint(thread_key, ns, parent, row[1], row[2])["channel_versions"]
            for ch in list(unseeded):
                if ch in versions and self._lookup_value(self.conn, thread_key, ns, ch, versions[ch]):
                    unseeded.discard(ch)
            parent = row[0]
        return kept

    def _collect_garbage(self, thread_key: int) -> None:
        """Delete values and messages no remaining checkpoint or write refers to."""
        conn = self.conn
        # Savers (in any process) that remember this thread's rows must reread it.
        conn.execute("UPDATE threads SET gc_epoch = gc_epoch + 1 WHERE thread_key = ?", (thread_key,))
        live: set[int] = set()
        for ns, checkpoint_id, type_, blob in conn.execute(
            "SELECT checkpoint_ns, checkpoint_id, type, checkpoint FROM checkpoints WHERE thread_key = ?", (thread_key,)
        ).fetchall():
            for channel, version in self._load_checkpoint(thread_key, ns, checkpoint_id, type_, blob)["channel_versions"].items():
                found = self._lookup_value(conn, thread_key, ns, channel, version)
                if found is not None:
                    live.add(found[0])
        rows = {
            no: (kind, type_, value, base)
            for no, kind, type_, value, base in conn.execute(
                "SELECT value_no, kind, type, value, base_no FROM channel_values WHERE thread_key = ?", (thread_key,)
            )
        }
        pending = list(live)
        while pending:
            base = rows.get(pending.pop(), (None, None, None, None))[3]
            if base is not None and base not in live:
                live.add(base)
                pending.append(base)
        dead_values = [no for no in rows if no not in live]
        live_messages: set[int] = set()
        sealed = self._cipher is not None
        for no in live:
            kind, type_, value, _ = rows[no]
            place = value_place(thread_key, no) if sealed and kind == KIND_MESSAGE_DICT else None
            live_messages.update(self._message_refs(kind, type_, value, place))
        for ns, checkpoint_id, task_id, idx, kind, type_, value in conn.execute(
            "SELECT checkpoint_ns, checkpoint_id, task_id, idx, kind, type, value FROM writes "
            "WHERE thread_key = ? AND kind != ?",
            (thread_key, KIND_SERDE),
        ):
            place = write_place(thread_key, ns, checkpoint_id, task_id, idx) if sealed and kind == KIND_MESSAGE_DICT else None
            live_messages.update(self._message_refs(kind, type_, value, place))
        dead_rows = self._open_rows(thread_key, [
            row for row in conn.execute("SELECT message_no, type, value FROM messages WHERE thread_key = ?", (thread_key,))
            if row[0] not in live_messages
        ])
        dead_messages = [row[0] for row in dead_rows]
        for first, nos_blob, value in conn.execute(
            "SELECT first_no, nos, value FROM message_segments WHERE thread_key = ?", (thread_key,)
        ).fetchall():
            segment_nos = codec.unpack_numbers(nos_blob)
            if live_messages.issuperset(segment_nos):
                continue
            conn.execute("DELETE FROM message_segments WHERE thread_key = ? AND first_no = ?", (thread_key, first))
            rows = self._segment_rows(thread_key, nos_blob, segment_nos, value)
            kept = [row for row in rows if row[0] in live_messages]
            dead_rows += [row for row in rows if row[0] not in live_messages]
            if kept:
                self._write_segment(conn, thread_key, kept)
        fts.remove(conn, self._search_rows(thread_key, dead_rows))
        conn.execute(
            "DELETE FROM channel_values WHERE thread_key = ? AND value_no IN (SELECT value FROM json_each(?))",
            (thread_key, json.dumps(dead_values)),
        )
        conn.execute(
            "DELETE FROM messages WHERE thread_key = ? AND message_no IN (SELECT value FROM json_each(?))",
            (thread_key, json.dumps(dead_messages)),
        )

    def _message_refs(self, kind: int, type_: str | None, value: bytes | None, place: bytes | None) -> list[int]:
        """The message numbers a stored value or write (sealed at `place`) refers to."""
        if kind in (KIND_MESSAGE_LIST, KIND_DELTA_SNAPSHOT, KIND_MESSAGE):
            return codec.unpack_numbers(value)
        if kind == KIND_MESSAGE_DICT:
            refs = self._load(type_, value, place)["refs"]
            return [n for _, blob in refs.values() for n in codec.unpack_numbers(blob)]
        return []

    def get_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        """Writes of each channel along the parent chain back to its nearest stored value.

        Same contract as `BaseCheckpointSaver.get_delta_channel_history`, in one
        read transaction with one indexed lookup per ancestor.
        """
        if not channels:
            return {}
        channels = list(channels)
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        ns = configurable.get("checkpoint_ns", "")
        collected: dict[str, list[PendingWrite]] = {c: [] for c in channels}
        seeds: dict[str, Any] = {}
        with self._read() as conn:
            thread_key = self._thread_key(conn, thread_id)
            target = None
            if thread_key is not None:
                target = self._checkpoint_row(conn, thread_key, ns, config, "parent_checkpoint_id")
            cursor = target[0] if target else None
            remaining = set(channels)
            visited: set[str] = set()
            while cursor and remaining and cursor not in visited:
                visited.add(cursor)
                row = conn.execute(
                    "SELECT parent_checkpoint_id, type, checkpoint FROM checkpoints WHERE thread_key = ? "
                    "AND checkpoint_ns = ? AND checkpoint_id = ?",
                    (thread_key, ns, cursor),
                ).fetchone()
                if row is None:
                    break
                writes = self._pending_writes(conn, thread_key, ns, cursor)
                for write in reversed(writes):
                    if write[1] in remaining:
                        collected[write[1]].append(write)
                versions = self._load_checkpoint(thread_key, ns, cursor, row[1], row[2])["channel_versions"]
                for ch in list(remaining):
                    if ch not in versions:
                        continue
                    found = self._lookup_value(conn, thread_key, ns, ch, versions[ch])
                    if found is not None:
                        seeds[ch] = self._decode_value(conn, thread_key, *found)
                        remaining.discard(ch)
                cursor = row[0]
        result: dict[str, DeltaChannelHistory] = {}
        for ch in channels:
            entry: DeltaChannelHistory = {"writes": list(reversed(collected[ch]))}
            if ch in seeds:
                entry["seed"] = seeds[ch]
            result[ch] = entry
        return result

    def get_next_version(self, current: Any, channel: None = None) -> float | str:
        """See `checkpoint_codec.next_version`."""
        return checkpoint_codec.next_version(current)

    # -- storage maintenance -------------------------------------------------

    def erase_traces(
        self,
        *,
        wait: bool = True,
        between_steps: Callable[[float], None] | None = None,
        hold_s: float | None = None,
    ) -> None:
        """After deletions: leave deleted text in no file, and shrink the file.

        Deleted rows are already overwritten (`secure_delete`) and the search
        index merged (`purge_search_index`). This copies the WAL into the file
        and truncates it, so old page images there go too, then returns free
        pages to the OS. With `wait=False` (the background sweeper) the
        checkpoint does not wait for readers; the WAL is then emptied at the
        next automatic checkpoint, which truncates it (`journal_size_limit`).
        Free pages go back in steps of 200, or (`hold_s`) of as many as take
        about that long; `between_steps(seconds the step took)` runs after each
        (a sweeper rests there).
        """
        mode = "TRUNCATE" if wait else "PASSIVE"
        with self._lock:
            busy, _, _ = self.conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            if busy:
                logger.info("the WAL of %s is in use; a later checkpoint will empty it", self.path)
        step = 200 if hold_s is None else 16
        while True:
            started = time.perf_counter()
            freed = self.compact(max_pages=step)
            took = time.perf_counter() - started
            if not freed:
                break
            if hold_s is not None:
                step = max(1, min(10_000, int(hold_s * freed / max(took, 1e-6))))
            if between_steps is not None:
                between_steps(took)

    def compact(self, max_pages: int | None = None) -> int:
        """Return freed pages to the OS (incremental vacuum); returns the number freed.

        Freed pages are reused by later writes anyway; this only shrinks the file.
        """
        with self._lock:
            before = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
            arg = "" if max_pages is None else f"({int(max_pages)})"
            self.conn.execute(f"PRAGMA incremental_vacuum{arg}").fetchall()
            after = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
            return before - after

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

    async def adelete_thread(self, thread_id: str) -> None:
        await asyncio.to_thread(self.delete_thread, thread_id)

    async def adelete_threads(self, thread_ids: Sequence[str], **kwargs: Any) -> int:
        return await asyncio.to_thread(lambda: self.delete_threads(thread_ids, **kwargs))

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await asyncio.to_thread(self.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id)

    async def aprune(
        self, thread_ids: Sequence[str], *, strategy: str = "keep_latest", updated_before: str | None = None
    ) -> None:
        await asyncio.to_thread(lambda: self.prune(thread_ids, strategy=strategy, updated_before=updated_before))

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        return await asyncio.to_thread(lambda: self.get_delta_channel_history(config=config, channels=channels))

    async def acompact(self, max_pages: int | None = None) -> int:
        return await asyncio.to_thread(self.compact, max_pages)


_MISSING = object()

_OPEN_SAVERS: weakref.WeakSet[ThreadSaver] = weakref.WeakSet()
"""Savers that have deferred writes at some point: flushed when the interpreter exits."""


@atexit.register
def _flush_open_savers() -> None:
    for saver in list(_OPEN_SAVERS):
        try:
            saver.flush()
        except Exception:  # closed already, or the store is gone: nothing left to do
            logger.debug("flush at exit failed for %s", saver.path, exc_info=True)

_SEALED_KINDS = (KIND_SERDE, KIND_MESSAGE_DICT)
"""Kinds of stored values that are serialised (and sealed in an encrypted store); the others are message numbers."""

_THREAD_TABLES = (
    "checkpoints", "channel_values", "messages", "message_segments", "writes", "attachments",
    "message_times", "message_metadata",
)

_THREAD_TABLE_COLUMNS = {
    "checkpoints": "checkpoint_ns, checkpoint_id, parent_checkpoint_id, run_id, type, checkpoint, metadata",
    "channel_values": "value_no, checkpoint_ns, channel, version, kind, type, value, base_no, keep, depth",
    "messages": "message_no, type, value",
    "message_segments": "first_no, last_no, nos, value",
    "writes": "checkpoint_ns, checkpoint_id, task_id, idx, task_path, channel, kind, type, value",
    "message_times": "message_no, created_at",
    "message_metadata": "message_id, created_at, metadata",
}
"""What `copy_thread` copies of each table (the thread row and attachment are copied on their own)."""


_KEY_STATE_SQL = (
    f"SELECT (SELECT value FROM store_meta WHERE key = '{encryption.META_KEY}'), "
    f"EXISTS (SELECT 1 FROM store_meta WHERE key = '{encryption.ROTATION_META_KEY}')"
)


_PAUSE_GC_FROM = 256
"""Messages read at once from which Python's cyclic collector waits until the read is done."""


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Hold Python's cyclic garbage collector while a long thread's messages are built.

    Each message is a few container objects, and every 700 new ones start a
    collection; reading 2,000 messages ran some sixty of them, including scans
    of older generations whose cost depends on everything else the process
    holds (measured: about half of a cold read's time). Paused, the new objects
    are looked at once, after the read. Nothing is freed late: they are all alive.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


_LIST_CHAIN_SQL = f"""
WITH RECURSIVE chain (value_no, value, base_no, keep, depth, checkpoint_ns, channel) AS (
    SELECT value_no, value, base_no, keep, depth, checkpoint_ns, channel FROM channel_values
    WHERE thread_key = ?1 AND value_no = ?2
    UNION ALL
    SELECT c.value_no, c.value, c.base_no, c.keep, c.depth, c.checkpoint_ns, c.channel
    FROM chain JOIN channel_values AS c ON c.thread_key = ?1 AND c.value_no = chain.base_no
    LIMIT {MAX_CHAIN_DEPTH + 2}
)
SELECT * FROM chain
"""
"""A stored message list and the lists it is a delta of, newest first, down to a full list."""


def _more_steps_follow(checkpoint: Checkpoint) -> bool:
    """Whether the run that put this step's checkpoint goes on to another step:
    it triggered a node (`branch:to:<node>`) or pushed a task (`Send`).

    Such a checkpoint is followed by its tasks' writes and the next step's
    checkpoint unless the run stops at a static `interrupt_before`/`interrupt_after`
    or its step limit; then the flusher writes it within `DEFERRED_WRITES_FLUSH_AFTER`.
    A checkpoint that ends a run is written before `put` returns.
    """
    return any(c == TASKS or c.startswith("branch:to:") for c in checkpoint.get("updated_channels") or ())


def _segment_rows(nos: list[int], value: bytes) -> list[tuple[int, str, bytes]]:
    """The (message_no, type, blob) rows in one plain (decrypted) `message_segments` value."""
    return [(no, type_, blob) for no, (type_, blob) in zip(nos, ormsgpack.unpackb(codec.inflate(value)))]


