"""`PostgresThreadSaver`: the storage model on PostgreSQL, for several app processes.

The same linear storage as the SQLite engine (see `docs/storage.md`):

* A checkpoint row holds the checkpoint without its channel values.
* A channel value is written once, when its version changes (`channel_values`).
* A message list (the `messages` channel, a `DeltaChannel` snapshot) is stored
  as message numbers, a delta against the channel's previous list
  (`messages.encode_list`); each message is stored once per thread, deflated,
  with its search words (lexemes, under a GIN index of their `tsvector`).

A checkpoint is written in one transaction of two statements: the thread's row
is locked (`SELECT ... FOR NO KEY UPDATE`, which also queues writers of the same
thread in any process, while other threads' writes, and this thread's task
writes, go on beside it) and then one statement writes the new messages,
values, the checkpoint and the thread index row together (data-modifying
CTEs), sent with the usage counters and the `COMMIT`: two round trips
(`connection.run_transaction`). The lock read also returns the thread's
`gc_epoch`: a garbage collection (prune, `delete_for_runs`) bumps it, and a
saver whose cached lists of the thread are older drops them.

Every method is written once as a plan (see `connection`): the sync methods
run it on the process's sync pool, the async ones natively on its asyncio
pool.

`saver.maintenance` (`maintenance.py`) is the retention sweep's, erasure's
and the usage statistics' side of this engine; the saver counts usage as it
writes, in the write's transaction.

With an encryption key (`THREADKEEPER_ENCRYPTION_KEY`) the same things are
sealed as on SQLite, with the same cipher, each bound to its place
(`checkpointers.encryption`): checkpoint blobs, serialised channel values and
writes (sealed where their row is built, opened in `_load`), messages
(`_store_message`, `_load_messages`), titles (`encryption.seal_title`) and the
attachment (`engines.postgres.attachments`); the search words are keyed hashes.
The key is checked at open against the record in `store_meta` (`keys.unlock`),
and again by every write, in its first read (`keys.key_record_sql`), so a
process refuses to write once `threadkeeper rotate-key`
(`engines.postgres.key_rotation`) has begun changing the key.
"""

from __future__ import annotations

import hashlib
import json
import asyncio
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    get_serializable_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.types import _DeltaSnapshot
import psycopg

from checkpointers import checkpoint_codec, codec, encryption, search, stats
from checkpointers.codec import KIND_DELTA_SNAPSHOT, KIND_MESSAGE_DICT, KIND_MESSAGE_LIST, KIND_SERDE
from checkpointers.encryption import Cipher, checkpoint_place, message_place, value_place, write_place
from checkpointers.engines.postgres import connection, keys, packed_writes, schema
from checkpointers.engines.postgres.connection import FETCH_LATER, FETCH_NONE, FETCH_ONE, Plan, Sql, neutral
from checkpointers.engines.postgres.attachments import PostgresAttachments
from checkpointers.engines.postgres.maintenance import PostgresMaintenance
from checkpointers.engines.postgres.sessions import PostgresSessions
from checkpointers.engines.postgres.threads import PostgresThreadIndex
from checkpointers.engines.postgres.transfer import PostgresTransfer
from checkpointers.conversation import Conversation
from checkpointers.errors import ThreadExistsError, ThreadNotFoundError
from checkpointers.messages import (
    SERIALISED_KINDS,
    delta_channel_history,
    from_numbered,
    holds_messages,
    is_message_dict,
    numbered,
    referenced_numbers,
    MAX_CHAIN_DEPTH,
    ListCache,
    MessagePage,
    StoredList,
    checked_owner,
    hands_out_kept,
    chain_numbers,
    checkpoint_tuple,
    dump_message,
    encode_list,
    is_message_list,
    load_message,
    restored,
    snapshot,
    utc_now,
)
from checkpointers.sessions import SessionStore
from checkpointers.storable import (
    check_id,
    check_ns,
    check_task_path,
    check_value,
    checkpoint_metadata_json,
)
from checkpointers.threads import ANY_USER, SeenThreads, title_from_messages

MESSAGES_CHANNEL = "messages"
"""The channel whose length and first human message feed the thread index."""


_MISSING = object()


def version_key(version: Any) -> str:
    """A channel version as stored: its JSON, so `1`, `1.0` and `"1"` stay apart."""
    return json.dumps(version)


# -- SQL ------------------------------------------------------------------------

_THREAD_ROW_SQL = (
    f"SELECT thread_key, next_value_no, next_message_no, gc_epoch, title IS NOT NULL, user_id, {keys.key_record_sql} "
    "FROM threads WHERE thread_id = %s FOR NO KEY UPDATE"
)
"""A checkpoint's write locks its thread's row: FOR NO KEY UPDATE queues the thread's other
writes that number its values and messages (checkpoints, and task writes holding messages) but
not its other task writes (`put_writes`, FOR KEY SHARE), which LangGraph sends while the step's
checkpoint is still being written: with FOR UPDATE they waited for it, 2 to 4 ms a turn
measured at turn 10."""
_NEW_THREAD_SQL = (
    "INSERT INTO threads (thread_id, user_id, created_at, updated_at) VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (thread_id) DO NOTHING"
)
# FOR KEY SHARE: a write that checked the key holds a lock on `threads` until it commits,
# so `rotate-key` (which locks the table before it records the rotation) waits for it.
_THREAD_KEY_SQL = f"SELECT thread_key, {keys.key_record_sql} FROM threads WHERE thread_id = %s FOR KEY SHARE"

_NEW_MESSAGES_CTE = """
new_messages AS (
    INSERT INTO messages (thread_key, message_no, type, value, words)
    SELECT %(thread_key)s, m.no, m.type, m.value, m.words
    FROM unnest(%(m_no)s::integer[], %(m_type)s::text[], %(m_value)s::bytea[], %(m_words)s::text[])
        AS m (no, type, value, words)
), named_messages AS (
    UPDATE messages AS m SET type = r.type, value = r.value
    FROM unnest(%(r_no)s::integer[], %(r_type)s::text[], %(r_value)s::bytea[]) AS r (no, type, value)
    WHERE m.thread_key = %(thread_key)s AND m.message_no = r.no
)"""
"""The messages a write stores (`_ThreadTxn.messages`), with their search words, and the
messages it stores again now that they have an id (`_ThreadTxn.named`, see `_store_message`)."""

_WRITE_CHECKPOINT_SQL = f"""
WITH {_NEW_MESSAGES_CTE}, new_values AS (
    INSERT INTO channel_values (thread_key, value_no, checkpoint_ns, channel, version, kind, type, value,
        base_no, keep, depth)
    SELECT %(thread_key)s, v.* FROM unnest(%(v_no)s::integer[], %(v_ns)s::text[], %(v_channel)s::text[],
        %(v_version)s::text[], %(v_kind)s::smallint[], %(v_type)s::text[], %(v_value)s::bytea[],
        %(v_base)s::integer[], %(v_keep)s::integer[], %(v_depth)s::integer[]) AS v
), new_checkpoint AS (
    INSERT INTO checkpoints (thread_key, checkpoint_ns, checkpoint_id, parent_checkpoint_id, run_id, type,
        checkpoint, metadata)
    VALUES (%(thread_key)s, %(ns)s, %(checkpoint_id)s, %(parent_id)s, %(run_id)s, %(type)s, %(checkpoint)s,
        %(metadata)s)
    ON CONFLICT (thread_key, checkpoint_ns, checkpoint_id) DO UPDATE SET
        parent_checkpoint_id = EXCLUDED.parent_checkpoint_id, run_id = EXCLUDED.run_id, type = EXCLUDED.type,
        checkpoint = EXCLUDED.checkpoint, metadata = EXCLUDED.metadata
)
UPDATE threads SET next_value_no = %(next_value_no)s, next_message_no = %(next_message_no)s,
    updated_at = coalesce(%(updated_at)s, updated_at), message_count = coalesce(%(message_count)s, message_count),
    title = coalesce(title, %(title)s), user_id = coalesce(user_id, %(user_id)s)
WHERE thread_key = %(thread_key)s
"""
"""A checkpoint's whole write after its thread's row is locked: one statement, sent with the
usage counters' and the `COMMIT` (nothing of it is read back). `updated_at` is None for a
step's checkpoint the run goes on from (`_sets_updated_at`): the thread's row then changes
no indexed column, so PostgreSQL updates it in place (HOT) without new entries in its two
indexes on `updated_at`. The run's input checkpoint sets the time, and so does the
checkpoint that ends the run, or the run's error or interrupt (`_TOUCH_THREAD_SQL`).
Measured through the agent graph: four updates of `updated_at` a turn took 573 bytes of
index a turn."""
_TOUCH_THREAD_SQL = "UPDATE threads SET updated_at = %s WHERE thread_key = %s"
"""A run's error or interrupt (special writes) ends it without a checkpoint: the thread's row
shows it was updated, as a checkpoint that ends a run does."""


def _sets_updated_at(checkpoint: dict[str, Any], metadata: dict[str, Any]) -> bool:
    """Whether writing this checkpoint sets its thread's `updated_at`: all but the steps a run
    goes on from (`checkpoint_codec.run_goes_on`). The run's input sets it, so a run that
    stops where no checkpoint ends it (a static `interrupt_before`) still moves the thread
    up the list with the message it brought."""
    return metadata.get("source") != "loop" or not checkpoint_codec.run_goes_on(checkpoint, metadata)

_THIS_CHECKPOINT = "thread_key = %(thread_key)s AND checkpoint_ns = %(ns)s AND checkpoint_id = %(checkpoint_id)s"
_PACK_WRITES_CTE = f"""packed AS (
    UPDATE checkpoints SET writes = CASE
        WHEN octet_length(coalesce(writes, ''::bytea)) + octet_length(%(packed)s) <= %(max_bytes)s
        THEN coalesce(writes, ''::bytea) || %(packed)s ELSE %(full)s || coalesce(writes, ''::bytea) END
    WHERE {_THIS_CHECKPOINT} AND (writes IS NULL OR substring(writes FOR 1) <> %(full)s)
    RETURNING substring(writes FOR 1) <> %(full)s AS appended
)"""
"""A task's writes appended to their checkpoint's row (`packed_writes`), unless that would pass
`packed_writes.MAX_BYTES` (the column is then marked full) or it is full already."""
_WRITES_COLUMNS = "(thread_key, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, kind, type, value, after)"
_WRITES_ROWS = (
    "SELECT %(thread_key)s, %(ns)s, %(checkpoint_id)s, %(task_id)s, %(task_path)s, w.*, "
    f"CASE WHEN EXISTS (SELECT FROM checkpoints WHERE {_THIS_CHECKPOINT}) THEN %(after)s::smallint END "
    "FROM unnest(%(w_idx)s::integer[], %(w_channel)s::text[], %(w_kind)s::smallint[], %(w_type)s::text[], "
    "%(w_value)s::bytea[]) AS w WHERE NOT EXISTS (SELECT FROM packed WHERE appended)"
)
"""A task's writes as rows of `writes`, when they were not packed: `after` is NULL while the
checkpoint is not stored (`packed_writes.merged` reads them before its records)."""
_INSERT_WRITES = f"INSERT INTO writes {_WRITES_COLUMNS} {_WRITES_ROWS} ON CONFLICT DO NOTHING"
_REPLACE_WRITES = (
    f"INSERT INTO writes {_WRITES_COLUMNS} {_WRITES_ROWS} ON CONFLICT (thread_key, checkpoint_ns, checkpoint_id, "
    "task_id, idx) DO UPDATE SET task_path = EXCLUDED.task_path, channel = EXCLUDED.channel, "
    "kind = EXCLUDED.kind, type = EXCLUDED.type, value = EXCLUDED.value, after = EXCLUDED.after"
)
"""Special writes (errors, interrupts) replace earlier ones; others never do."""
_PUT_WRITES_SQL = {
    (replace, False): f"WITH {_PACK_WRITES_CTE} {insert}"
    for replace, insert in ((False, _INSERT_WRITES), (True, _REPLACE_WRITES))
} | {
    (replace, True): f"WITH {_NEW_MESSAGES_CTE}, {_PACK_WRITES_CTE}, new_writes AS ({insert}) "
    "UPDATE threads SET next_message_no = %(next_message_no)s WHERE thread_key = %(thread_key)s"
    for replace, insert in ((False, _INSERT_WRITES), (True, _REPLACE_WRITES))
}
"""A task's writes, by (replace, stores messages): packed into their checkpoint's row, or
rows of `writes` while the checkpoint is not stored. Writes holding messages new to the
thread (the model's answer, a run's input) are stored with them: the writes refer to them by
number, as the checkpoint that follows does."""

_CHECKPOINT_COLUMNS = "c.checkpoint_id, c.parent_checkpoint_id, c.type, c.checkpoint, c.metadata, c.writes"
_CHECKPOINT_BY_ID_SQL = (
    f"SELECT t.thread_key, {_CHECKPOINT_COLUMNS} FROM threads t JOIN checkpoints c ON c.thread_key = t.thread_key "
    "WHERE t.thread_id = %s AND c.checkpoint_ns = %s AND c.checkpoint_id = %s"
)
_LATEST_CHECKPOINT_SQL = (
    f"SELECT t.thread_key, {_CHECKPOINT_COLUMNS} FROM threads t CROSS JOIN LATERAL (SELECT * FROM checkpoints "
    "WHERE thread_key = t.thread_key AND checkpoint_ns = %s ORDER BY checkpoint_id DESC LIMIT 1) AS c "
    "WHERE t.thread_id = %s"
)
"""The thread's newest checkpoint: a backward step on the primary key (a plain join with
ORDER BY may sort the whole thread's checkpoints first)."""
_CHECKPOINT_ROW_SQL = (
    "SELECT parent_checkpoint_id, type, checkpoint, metadata, writes FROM checkpoints "
    "WHERE thread_key = %s AND checkpoint_ns = %s AND checkpoint_id = %s"
)
_VALUES_AT_SQL = (
    "SELECT wanted.channel, v.value_no, v.kind, v.type, v.value "
    "FROM unnest(%s::text[], %s::text[]) AS wanted (channel, version) "
    "CROSS JOIN LATERAL (SELECT value_no, kind, type, value FROM channel_values "
    "WHERE thread_key = %s AND checkpoint_ns = %s AND channel = wanted.channel AND version = wanted.version "
    "ORDER BY value_no DESC LIMIT 1) AS v"
)
"""Each channel's value at its version, one index probe per channel (a join would read the
whole thread's values); a version written twice resolves to its newest row."""
_WRITES_OF_SQL = (
    "SELECT task_path, task_id, idx, channel, kind, type, value, after FROM writes "
    "WHERE thread_key = %s AND checkpoint_ns = %s AND checkpoint_id = %s"
)
_LATEST_LIST_SQL = (
    "SELECT value_no FROM channel_values WHERE thread_key = %s AND checkpoint_ns = %s AND channel = %s "
    "AND kind IN (%s, %s) ORDER BY value_no DESC LIMIT 1"
)
_LIST_CHAIN_SQL = f"""
WITH RECURSIVE chain (value_no, value, base_no, keep, depth, checkpoint_ns, channel) AS (
    SELECT value_no, value, base_no, keep, depth, checkpoint_ns, channel FROM channel_values
    WHERE thread_key = %(thread_key)s AND value_no = %(value_no)s
    UNION ALL
    SELECT c.value_no, c.value, c.base_no, c.keep, c.depth, c.checkpoint_ns, c.channel
    FROM chain JOIN channel_values AS c ON c.thread_key = %(thread_key)s AND c.value_no = chain.base_no
)
SELECT * FROM chain LIMIT {MAX_CHAIN_DEPTH + 2}
"""
"""A stored list and the lists it is a delta of, newest first, down to a full list (at most
`MAX_CHAIN_DEPTH` links and the full list)."""
_MESSAGES_SQL = "SELECT message_no, type, value FROM messages WHERE thread_key = %s AND message_no = ANY(%s)"

_THREAD_TABLES_COPIED = {
    "checkpoints": "checkpoint_ns, checkpoint_id, parent_checkpoint_id, run_id, type, checkpoint, metadata, writes",
    "channel_values": "value_no, checkpoint_ns, channel, version, kind, type, value, base_no, keep, depth",
    "messages": "message_no, type, value, words, created_at",
    "message_times": "message_no, created_at",
    "writes": "checkpoint_ns, checkpoint_id, task_id, idx, task_path, channel, kind, type, value, after",
    "message_metadata": "message_id, created_at, metadata",
    "attachments": "name, sha256, bytes, tables, attached_at, data",
}
"""What `copy_thread` copies of each table besides the thread row (names are constants)."""
_COPY_SQL = {
    table: f"INSERT INTO {table} (thread_key, {columns}) SELECT %s, {columns} FROM {table} WHERE thread_key = %s"
    for table, columns in _THREAD_TABLES_COPIED.items()
}


# -- what a write gathers ---------------------------------------------------------


@dataclass(slots=True)
class _ThreadRow:
    """A thread's row as a write found it, locked for the write's transaction."""

    thread_key: int
    next_value_no: int
    next_message_no: int
    gc_epoch: int
    has_title: bool
    user_id: str | None
    key_record: str | None
    """The store's key record as this write read it (see `keys.key_record_sql`)."""


@dataclass
class _ThreadTxn:
    """One thread's write: number allocation, and the rows it writes (one statement)."""

    row: _ThreadRow
    next_value_no: int = 0
    next_message_no: int = 0
    messages: list[tuple[int, str, bytes, str | None]] = field(default_factory=list)
    named: list[tuple[int, str, bytes]] = field(default_factory=list)
    """(number, type, value) of messages stored before without an id, stored again with it."""
    unnamed: dict[int, tuple[weakref.ref, int, bytes]] = field(default_factory=dict)
    """Messages this write stores without an id: id(message) -> (the message, number, digest)."""
    renamed: list[tuple[int, bytes]] = field(default_factory=list)
    """(id(message), digest without its id) of each message in `named`."""
    values: list[tuple] = field(default_factory=list)
    new_digests: dict[bytes, int] = field(default_factory=dict)
    lists: dict[tuple[str, str], StoredList] = field(default_factory=dict)
    """Message lists stored by this write, by (ns, channel), cached after the commit."""
    usage: stats.Tally = field(default_factory=stats.Tally)
    """The messages new to the conversation, for the usage statistics."""

    def __post_init__(self) -> None:
        self.next_value_no = self.row.next_value_no
        self.next_message_no = self.row.next_message_no

    @property
    def thread_key(self) -> int:
        return self.row.thread_key

    def value_no(self) -> int:
        self.next_value_no += 1
        return self.next_value_no - 1

    def message_no(self) -> int:
        self.next_message_no += 1
        return self.next_message_no - 1

    def message_params(self) -> dict[str, list]:
        """The `_NEW_MESSAGES_CTE` parameters of what this write stores of its messages."""
        m_no, m_type, m_value, m_words = _columns(self.messages, 4)
        r_no, r_type, r_value = _columns(self.named, 3)
        return {
            "m_no": m_no, "m_type": m_type, "m_value": m_value, "m_words": m_words,
            "r_no": r_no, "r_type": r_type, "r_value": r_value,
        }


def _stored_id(value: Any) -> bytes | None:
    """A checkpoint, task or run id as its column holds it (`codec.id_bytes`; None stays None)."""
    return None if value is None else codec.id_bytes(check_id(str(value), "checkpoint, task or run id"))


def _columns(rows: list[tuple], width: int) -> list[list]:
    """Rows as one list per column (what `unnest` takes)."""
    return [list(column) for column in zip(*rows)] if rows else [[] for _ in range(width)]


def _indexed(writes: Sequence[tuple[str, Any]]) -> list[tuple[int, str, Any]]:
    """A task's writes with their `idx` (special writes, errors and interrupts, have their own)."""
    return [(WRITES_IDX_MAP.get(channel, idx), channel, value) for idx, (channel, value) in enumerate(writes)]


def _wake(woken: asyncio.Future) -> None:
    if not woken.done():
        woken.set_result(None)


def _thread_of(config: RunnableConfig) -> tuple[str, str]:
    """(thread id, ns) of a config as `_putting` keys them: their text, as `check_id` takes them."""
    configurable = config["configurable"]
    return str(configurable["thread_id"]), str(configurable.get("checkpoint_ns", ""))


def _holds_messages(writes: Sequence[tuple[str, Any]]) -> bool:
    """Whether a task's writes hold messages, stored by number (`messages.numbered`)."""
    return any(holds_messages(value) or is_message_dict(value) for _, value in writes)


def _write_columns(thread_key: int, rows: list[tuple]) -> dict[str, Any]:
    """The `_WRITES_ROWS` parameters of a task's write rows, each (idx, channel, kind, type, value)."""
    w_idx, w_channel, w_kind, w_type, w_value = _columns(rows, 5)
    return {
        "thread_key": thread_key, "w_idx": w_idx, "w_channel": w_channel, "w_kind": w_kind, "w_type": w_type,
        "w_value": w_value,
    }


class PostgresThreadSaver(BaseCheckpointSaver[float]):
    """LangGraph checkpointer on a PostgreSQL database; `saver.threads` is the thread index,
    `saver.sessions` the sessions API (`checkpointers.sessions`), `saver.attachments` the
    databases attached to threads (kept in PostgreSQL, copied locally for the tools).

    Open it with `checkpointers.open_saver("postgresql://...")` (or
    `open_async_saver`); several processes may share the database. Sync and
    async methods are available on every instance; the async ones use the
    process's asyncio pool on the running loop.
    """

    native_async = True
    """Its async methods are native asyncio: engine-neutral modules (`checkpointers.conversation`)
    call them rather than running the sync ones on a worker thread."""

    def __init__(
        self,
        url: str,
        *,
        serde: SerializerProtocol | None = None,
        cache_messages: int = 200_000,
        encryption_key: str | None | object = None,
    ) -> None:
        """`encryption_key`: None opens the store without a key (`open_saver` passes
        `$THREADKEEPER_ENCRYPTION_KEY`). Raises `EncryptionKeyError` for a key too
        short here, and at `setup` when the key does not fit the store (as on SQLite)."""
        super().__init__(serde=serde)
        self._encryption_key = None if encryption_key is None else encryption.check_key(str(encryption_key))
        self._cipher: Cipher | None = None
        """The store's cipher once `setup` checked the key (None: the store is not encrypted)."""
        self._key_record: str | None = None
        self.url = url
        self._pool: Any = None
        self._async_pools: dict[asyncio.AbstractEventLoop, Any] = {}
        """This saver's share of the process's asyncio pool, per event loop."""
        self._cache_lock = threading.Lock()
        self._lists = ListCache(cache_messages)
        self._digests: OrderedDict[tuple[int, bytes], int] = OrderedDict()
        self._unnamed: OrderedDict[tuple[int, int], tuple[weakref.ref, int, bytes]] = OrderedDict()
        """(thread_key, id(message)) -> (the message, its number, digest) of messages stored
        without an id (see `_store_message`)."""
        self._writers: dict[str, list] = {}
        self._async_writers: dict[tuple[asyncio.AbstractEventLoop, str], list] = {}
        """thread id -> [its lock, how many wait for it or hold it] (see `_one_writer`)."""
        self._putting: dict[tuple[str, str], dict[str, int]] = {}
        """(thread id, ns) -> {checkpoint id: how many of this process's puts of it are running} (see `_after_put`)."""
        self._last_put: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
        """(thread id, ns) -> (checkpoint id, `time.monotonic()`) of this process's last finished put."""
        self._put_done = threading.Condition(self._cache_lock)
        self._async_put_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        """Coroutines waiting in `_aafter_put`, woken with `_put_done`'s threads."""
        self._epochs: dict[int, int] = {}
        """thread_key -> the gc_epoch its cached lists and digests belong to."""
        self._seen = SeenThreads()
        cipher = lambda: self._cipher  # noqa: E731 (the store's cipher, once it is known at setup)
        where = connection.redacted(url)
        self.threads = PostgresThreadIndex(self._run, self._arun, cipher, where)
        self.sessions = SessionStore(self, PostgresSessions(self._run, self._arun, cipher, where))
        self.attachments = PostgresAttachments(url, self._run, cipher)
        self.transfer = PostgresTransfer(self._run, self._arun, cipher)
        """What import and export ask of this engine (`engines.base.Transfer`)."""
        self.maintenance = PostgresMaintenance(url, self._run, self._transaction)
        """Retention, erasure and statistics reads on this database (`engines.base.Maintenance`)."""

    @property
    def location(self) -> str:
        """Where the store is, for people and logs: the URL without its password (either engine has it)."""
        return self.maintenance.location

    # -- lifecycle ---------------------------------------------------------

    @classmethod
    @contextmanager
    def from_conn_string(cls, conn_string: str, **kwargs: Any) -> Iterator[PostgresThreadSaver]:
        """`with PostgresThreadSaver.from_conn_string("postgresql://...") as saver:`"""
        saver = cls(conn_string, **kwargs)
        try:
            saver.setup()
            yield saver
        finally:
            saver.close()

    def setup(self) -> None:
        """Create or upgrade the schema and check the encryption key against the store; safe to
        call any number of times, from any number of processes. Raises `EncryptionKeyError`
        (one sentence) for a missing or wrong key, or a key on a store with threads in clear."""
        self._run(schema.migrate())
        self._cipher, self._key_record = self._run(keys.unlock(self._encryption_key, self.location))

    async def asetup(self) -> None:
        await self._arun(schema.migrate())
        self._cipher, self._key_record = await self._arun(keys.unlock(self._encryption_key, self.location))

    def close(self) -> None:
        """Give back this saver's share of the process's sync pool (the last user closes it)."""
        if self._pool is not None:
            self._pool = None
            connection.release(self.url)
        self._forget_everything()

    async def aclose(self) -> None:
        """`close`, and give back this saver's share of the asyncio pool of the running loop."""
        if self._async_pools.pop(asyncio.get_running_loop(), None) is not None:
            await connection.release_async(self.url)
        self.close()

    def _forget_everything(self) -> None:
        with self._cache_lock:
            self._lists = ListCache(self._lists.max_messages)
            self._digests.clear()
            self._unnamed.clear()
            self._epochs.clear()

    # -- running plans -----------------------------------------------------

    def _run(self, plan: Plan[Any], *, read: bool = False, single: bool = False) -> Any:
        """Run a plan in one transaction on a pooled connection (`read`: a read-only
        REPEATABLE READ one, so every statement sees one snapshot), in as few round trips as
        its reads allow (`connection.run_transaction`). `single`: the plan is one statement,
        run without a transaction (one round trip)."""
        if self._pool is None:
            self._pool = connection.acquire(self.url)
        begin, first = _begin(read, single), None
        for _ in range(connection.pool_size()):
            try:
                with connection.checked(self._pool) as conn:
                    return connection.run_transaction(conn, plan, begin, first)
            except connection.LostBeforeStart as lost:  # a connection the server dropped: the pool drops it too
                first, cause = lost.first, lost.cause
        raise connection.refusal(cause, lost=True) or cause

    @contextmanager
    def _transaction(self, *, read: bool = False) -> Iterator[psycopg.Connection]:
        """A pooled connection in one transaction, committed on exit (see `_run`)."""
        if self._pool is None:
            self._pool = connection.acquire(self.url)
        with connection.checked(self._pool) as conn:
            if read:
                conn.isolation_level, conn.read_only = _SNAPSHOT, True
            try:
                with conn.transaction():
                    yield conn
            finally:
                conn.isolation_level, conn.read_only = None, None

    async def _arun(self, plan: Plan[Any], *, read: bool = False, single: bool = False) -> Any:
        """`_run` on the asyncio pool of the running loop."""
        loop = asyncio.get_running_loop()
        pool = self._async_pools.get(loop)
        if pool is None:
            for dead in [other for other in self._async_pools if other.is_closed()]:
                del self._async_pools[dead]  # its pool is closed by the next `acquire_async`
            pool = await connection.acquire_async(self.url)
            if loop in self._async_pools:  # another task of this loop took a share meanwhile
                await connection.release_async(self.url)
            self._async_pools[loop] = pool
        begin, first = _begin(read, single), None
        for _ in range(connection.pool_size()):
            try:
                async with connection.achecked(pool) as conn:
                    return await connection.arun_transaction(conn, plan, begin, first)
            except connection.LostBeforeStart as lost:
                first, cause = lost.first, lost.cause
        raise connection.refusal(cause, lost=True) or cause

    # -- encoding ----------------------------------------------------------

    def _dump(self, value: Any) -> tuple[str, bytes]:
        return codec.compress_blob(*self.serde.dumps_typed(value))

    def _load(self, type_: str, blob: bytes, place: bytes) -> Any:
        """A value stored at `place` (one of `checkpointers.encryption`'s `*_place`; opened there
        when the store is encrypted)."""
        if self._cipher is not None:
            blob = self._cipher.open(blob, place)
        return self.serde.loads_typed(codec.decompress_blob(type_, blob))

    def _load_checkpoint(self, thread_key: int, ns: str, stored_id: bytes, type_: str, blob: bytes) -> Any:
        """A checkpoint row's own value; `stored_id` is its id as the row holds it (`codec.id_bytes`).
        In `checkpoint_codec`'s encoding, its `channel_values` are the channels that hold None."""
        return self._load_checkpoint_row(thread_key, ns, stored_id, type_, blob, None)[0]

    def _load_checkpoint_row(
        self, thread_key: int, ns: str, stored_id: bytes, type_: str, blob: bytes, metadata: Any
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """A checkpoint row's value (as `_load_checkpoint`) and its metadata: held by a
        `tk.cp2` blob since migration m007, else the row's `metadata` column (a dict here)."""
        checkpoint_id = codec.id_text(stored_id)
        if type_ not in checkpoint_codec.TYPES:
            return self._load(type_, blob, checkpoint_place(thread_key, ns, checkpoint_id)), metadata
        if self._cipher is not None:
            blob = self._cipher.open(blob, checkpoint_place(thread_key, ns, checkpoint_id))
        checkpoint, held = checkpoint_codec.decode_row(blob, checkpoint_id)
        return checkpoint, metadata if held is None else held

    def _sealed(self, blob: bytes, place: bytes) -> bytes:
        """A serialised value as its row stores it: sealed to `place` when the store is encrypted."""
        return blob if self._cipher is None else self._cipher.seal(blob, place)

    def _dump_checkpoint(self, checkpoint: Checkpoint, metadata: dict[str, Any], nones: list[str]) -> tuple[str, bytes]:
        """A checkpoint without its id and values, in `checkpoint_codec`'s encoding (with its
        metadata, and which channels hold None) where it fits; not yet sealed. Where it does
        not, the metadata goes to the row's `jsonb` column."""
        stored = {k: v for k, v in checkpoint.items() if k not in ("channel_values", "id")}
        blob = checkpoint_codec.encode(stored, metadata, nones, checkpoint["id"])
        return (checkpoint_codec.TYPE, blob) if blob is not None else self._dump(stored)

    def _store_message(self, txn: _ThreadTxn, message: BaseMessage) -> int:
        """The number of a message in this thread, storing it (and its search words) if it is new.

        A run's input message has no id until LangGraph's reducer gives it one, in place,
        while the input's task write and the `__start__` value holding it may already be
        stored (they are written from other threads). The same object met again with an id
        is stored again in its row, so the write, the value and the history share one row
        (the write then reads back with the id, as on SQLite)."""
        check_value(message)
        type_, blob = dump_message(self.serde, message)
        digest = hashlib.blake2b(type_.encode() + b"\0" + blob, digest_size=16).digest()
        key = (txn.thread_key, id(message))
        if message.id is None:  # stored once per object: equal messages without ids stay apart
            entry = txn.unnamed.get(id(message))
            if entry is None:
                with self._cache_lock:
                    entry = self._unnamed.get(key)
            if entry is not None and entry[0]() is message and entry[2] == digest:
                return entry[1]
            no = txn.message_no()
            txn.unnamed[id(message)] = (weakref.ref(message), no, digest)
        else:
            known = txn.new_digests.get(digest)
            if known is not None:
                return known
            with self._cache_lock:
                known = self._digests.get((txn.thread_key, digest))
                earlier = self._unnamed.get(key)
            if known is not None:
                return known
            if earlier is not None and earlier[0]() is message:
                _ref, no, old_digest = earlier
                txn.named.append((no, type_, self._sealed(codec.deflate(blob), message_place(txn.thread_key, no))))
                txn.renamed.append((id(message), old_digest))
                txn.new_digests[digest] = no
                return no
            no = txn.message_no()
            txn.new_digests[digest] = no
        words = search.indexed_words(message, None if self._cipher is None else self._cipher.search_token)
        lexemes = " ".join(search.lexemes(words)) if words else None
        txn.messages.append((no, type_, self._sealed(codec.deflate(blob), message_place(txn.thread_key, no)), lexemes or None))
        return no

    def _load_message(self, thread_key: int, no: int, type_: str, value: bytes) -> BaseMessage:
        if self._cipher is not None:
            value = self._cipher.open(value, message_place(thread_key, no))
        return load_message(self.serde, type_, codec.inflate(value))

    # -- plans: reading lists and values -------------------------------------

    def _load_messages(self, thread_key: int, nos: Sequence[int]) -> Plan[dict[int, BaseMessage]]:
        if not nos:
            return {}
        rows = yield Sql(_MESSAGES_SQL, (thread_key, list(nos)))
        found = {no: self._load_message(thread_key, no, type_, value) for no, type_, value in rows}
        if len(found) != len(set(nos)):
            missing = sorted(set(nos) - found.keys())[:5]
            raise RuntimeError(f"thread {thread_key}: stored value refers to missing messages {missing}")
        return found

    def _list_numbers(self, thread_key: int, value_no: int) -> Plan[tuple[list[int], StoredList | None, str, str, int]]:
        """The message numbers of a stored list (its delta chain walked down to a cached or
        full list), the cached list the walk stopped at, and the list's ns, channel and depth."""
        rows = yield Sql(_LIST_CHAIN_SQL, {"thread_key": thread_key, "value_no": value_no})
        if not rows:
            raise RuntimeError(f"thread {thread_key}: message list {value_no} is missing")
        steps = []
        start = None
        cursor: int | None = value_no
        for link, value, base_no, keep, depth, ns, channel in rows:
            if link != cursor:
                break
            if link != value_no:
                with self._cache_lock:
                    start = self._lists.get(thread_key, link)
                if start is not None:
                    break
            steps.append((value, keep, depth))
            cursor = base_no
            if cursor is None:
                break
        if start is None and cursor is not None:
            raise RuntimeError(f"thread {thread_key}: message list {cursor} is missing")
        nos = chain_numbers(start, [(value, keep) for value, keep, _depth in steps])
        ns, channel = rows[0][5], rows[0][6]
        return nos, start, ns, channel, steps[0][2]

    def _load_list(self, thread_key: int, value_no: int) -> Plan[StoredList]:
        """A stored list, from the cache or read (and then cached)."""
        with self._cache_lock:
            cached = self._lists.get(thread_key, value_no)
        if cached is not None:
            return cached
        nos, start, ns, channel, depth = yield from self._list_numbers(thread_key, value_no)
        known = start.known() if start else {}
        loaded = yield from self._load_messages(thread_key, [n for n in nos if n not in known])
        known.update((n, (m, snapshot(m))) for n, m in loaded.items())
        entry = StoredList(value_no, nos, [known[n][0] for n in nos], depth, [known[n][1] for n in nos])
        with self._cache_lock:
            self._lists.add(thread_key, ns, channel, entry)
        return entry

    def _decode_value(self, thread_key: int, value_no: int, kind: int, type_: str | None, value: bytes | None, *, own: bool) -> Plan[Any]:
        """A stored channel value; a message list as the cache's objects checked (see `StoredList`), or with `own` copies."""
        if kind not in (KIND_MESSAGE_LIST, KIND_DELTA_SNAPSHOT):
            return (yield from self._decode_stored(thread_key, kind, type_, value, value_place(thread_key, value_no)))
        stored = yield from self._load_list(thread_key, value_no)
        messages = stored.copies() if own else stored.hand_out()
        return messages if kind == KIND_MESSAGE_LIST else _DeltaSnapshot(messages)

    def _decode_stored(self, thread_key: int, kind: int, type_: str | None, value: bytes | None, place: bytes) -> Plan[Any]:
        """A value other than a stored list: serialised (sealed at `place`), or numbered
        (`messages.numbered`), its messages read as new objects (writes: `_pending_writes`)."""
        if kind == KIND_SERDE:
            return self._load(type_, value, place)
        form = self._load(type_, value, place) if kind == KIND_MESSAGE_DICT else value
        loaded = yield from self._load_messages(thread_key, referenced_numbers(kind, form))
        return from_numbered(kind, form, loaded)

    def _channel_values(self, thread_key: int, ns: str, versions: ChannelVersions, *, own: bool) -> Plan[dict[str, Any]]:
        if not versions:
            return {}
        channels = list(versions)
        rows = yield Sql(_VALUES_AT_SQL, (channels, [version_key(versions[c]) for c in channels], thread_key, ns))
        values = {}
        for channel, value_no, kind, type_, value in rows:
            values[channel] = yield from self._decode_value(thread_key, value_no, kind, type_, value, own=own)
        return values

    def _pending_writes(self, thread_key: int, ns: str, stored_id: bytes, packed: bytes | None) -> Plan[list[PendingWrite]]:
        """The writes of the checkpoint whose id is `stored_id` (as its row holds it), and whose
        row holds `packed` (`packed_writes`)."""
        rows = yield Sql(_WRITES_OF_SQL, (thread_key, ns, stored_id))
        checkpoint_id = codec.id_text(stored_id)
        rows = [
            (codec.task_path_from_bytes(path), codec.id_text(task_id), *rest)
            for path, task_id, *rest in packed_writes.merged(rows, packed)
        ]
        rows.sort(key=lambda r: writes_sort_key(r[0], r[1], r[2]))
        forms = []  # each write deserialised, or (kind, form) when it holds message numbers
        for _path, task_id, idx, channel, kind, type_, value in rows:
            place = write_place(thread_key, ns, checkpoint_id, task_id, idx)
            if kind == KIND_SERDE:
                forms.append((task_id, channel, None, self._load(type_, value, place)))
            else:
                form = self._load(type_, value, place) if kind == KIND_MESSAGE_DICT else value
                forms.append((task_id, channel, kind, form))
        numbers = [n for _task, _channel, kind, form in forms if kind is not None for n in referenced_numbers(kind, form)]
        loaded = yield from self._load_messages(thread_key, numbers)  # one read for all the writes
        given: set[int] = set()
        return [
            (task_id, channel, form if kind is None else from_numbered(kind, form, loaded, given))
            for task_id, channel, kind, form in forms
        ]

    def _tuple(self, thread_key: int, thread_id: str, ns: str, row: tuple, *, own: bool) -> Plan[CheckpointTuple]:
        """The tuple of a checkpoint row (`_CHECKPOINT_COLUMNS`)."""
        stored_id, parent_id, type_, blob, metadata, packed = row
        checkpoint, metadata = self._load_checkpoint_row(thread_key, ns, stored_id, type_, blob, metadata)
        return (
            yield from self._decoded_tuple(
                thread_key, thread_id, ns, stored_id, parent_id, checkpoint, metadata, packed, own=own
            )
        )

    def _decoded_tuple(
        self, thread_key: int, thread_id: str, ns: str, stored_id: bytes, parent_id: bytes | None,
        checkpoint: dict[str, Any], metadata: dict[str, Any], packed: bytes | None, *, own: bool,
    ) -> Plan[CheckpointTuple]:
        checkpoint["id"] = codec.id_text(stored_id)
        nones = checkpoint.get("channel_values") or {}  # the channels the row says hold None
        versions = {channel: version for channel, version in checkpoint["channel_versions"].items() if channel not in nones}
        checkpoint["channel_values"] = {**nones, **(yield from self._channel_values(thread_key, ns, versions, own=own))}
        writes = yield from self._pending_writes(thread_key, ns, stored_id, packed)
        return checkpoint_tuple(thread_id, ns, checkpoint, metadata, codec.id_text(parent_id), writes)

    # -- BaseCheckpointSaver: reads -----------------------------------------

    def _get_tuple(self, config: RunnableConfig) -> Plan[CheckpointTuple | None]:
        configurable = config["configurable"]
        thread_id = check_id(configurable["thread_id"])
        ns = check_ns(configurable.get("checkpoint_ns", ""))
        if checkpoint_id := get_checkpoint_id(config):
            row = yield Sql(_CHECKPOINT_BY_ID_SQL, (thread_id, ns, _stored_id(checkpoint_id)), FETCH_ONE)
        else:
            row = yield Sql(_LATEST_CHECKPOINT_SQL, (ns, thread_id), FETCH_ONE)
        if row is None:
            return None
        self._seen.saw(thread_id)
        return (yield from self._tuple(row[0], thread_id, ns, row[1:], own=not hands_out_kept(configurable)))

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._run(self._get_tuple(config), read=True)

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await self._arun(self._get_tuple(config), read=True)

    def _list(
        self, config: RunnableConfig | None, filter: dict[str, Any] | None, before: RunnableConfig | None, limit: int | None
    ) -> Plan[list[CheckpointTuple]]:
        where: list[str] = []
        params: list[Any] = []
        configurable = (config or {}).get("configurable", {})
        if configurable.get("thread_id") is not None:
            where.append("t.thread_id = %s")
            params.append(check_id(configurable["thread_id"]))
        if configurable.get("checkpoint_ns") is not None:
            where.append("c.checkpoint_ns = %s")
            params.append(check_ns(configurable["checkpoint_ns"]))
        if checkpoint_id := configurable.get("checkpoint_id"):
            where.append("c.checkpoint_id = %s")
            params.append(_stored_id(checkpoint_id))
        if before is not None and (before_id := get_checkpoint_id(before)):
            where.append("c.checkpoint_id < %s")
            params.append(_stored_id(before_id))
        wanted = checkpoint_codec.checked_filter(filter)
        # With a filter, rows are read a page at a time (metadata is matched in Python) until
        # `limit` match; the order is made total so that a page starts where the last ended.
        page = _LIST_PAGE if wanted else limit
        found: list[CheckpointTuple] = []
        after: list[Any] = []
        while True:
            conditions = where + (["(c.checkpoint_id, c.thread_key, c.checkpoint_ns) < (%s, %s, %s)"] if after else [])
            sql = (
                f"SELECT t.thread_key, t.thread_id, c.checkpoint_ns, {_CHECKPOINT_COLUMNS} FROM checkpoints c "
                "JOIN threads t ON t.thread_key = c.thread_key"
                + (" WHERE " + " AND ".join(conditions) if conditions else "")
                + " ORDER BY c.checkpoint_id DESC, c.thread_key DESC, c.checkpoint_ns DESC"
                + ("" if page is None else f" LIMIT {int(page)}")
            )
            rows = yield Sql(sql, [*params, *after])
            for thread_key, thread_id, ns, stored_id, parent_id, type_, blob, metadata, packed in rows:
                checkpoint, metadata = self._load_checkpoint_row(thread_key, ns, stored_id, type_, blob, metadata)
                if not checkpoint_codec.matches(metadata, wanted):
                    continue
                found.append((yield from self._decoded_tuple(
                    thread_key, thread_id, ns, stored_id, parent_id, checkpoint, metadata, packed, own=True
                )))
                if limit is not None and len(found) >= limit:
                    return found
            if not wanted or len(rows) < page:
                return found
            last = rows[-1]
            after = [last[3], last[0], last[2]]

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        yield from self._run(self._list(config, filter, before, limit), read=True)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        for item in await self._arun(self._list(config, filter, before, limit), read=True):
            yield item

    def _messages_value(self, thread_key: int, thread_id: str) -> Plan[tuple | None]:
        """(value_no, kind, type, value) of the thread's current `messages` channel, or None."""
        row = yield Sql(_LATEST_CHECKPOINT_SQL, ("", thread_id), FETCH_ONE)
        versions = self._load_checkpoint(thread_key, "", row[1], row[3], row[4])["channel_versions"] if row else {}
        if MESSAGES_CHANNEL not in versions:
            return None
        found = yield Sql(_VALUES_AT_SQL, ([MESSAGES_CHANNEL], [version_key(versions[MESSAGES_CHANNEL])], thread_key, ""))
        return tuple(found[0][1:]) if found else None

    def _decoded_messages(self, thread_key: int, value_no: int, kind: int, type_: str | None, value: Any) -> Plan[list]:
        """A `messages` value not stored as a list of message numbers (a graph's input, say), decoded."""
        decoded = yield from self._decode_value(thread_key, value_no, kind, type_, value, own=True)
        messages = decoded.value if isinstance(decoded, _DeltaSnapshot) else decoded
        return list(messages) if isinstance(messages, list) else []

    def _read_messages(self, thread_id: str, user_id: Any, limit: int, before: int | None) -> Plan[MessagePage]:
        if not 1 <= limit <= 1000:
            raise ValueError(f"limit must be between 1 and 1000, not {limit}")
        thread_id = check_id(thread_id)
        owner = yield Sql("SELECT thread_key, user_id FROM threads WHERE thread_id = %s", (thread_id,), FETCH_ONE)
        if owner is None or (user_id is not ANY_USER and owner[1] != user_id):
            raise ThreadNotFoundError(thread_id)
        found = yield from self._messages_value(owner[0], thread_id)
        if found is None:
            return MessagePage([], 0, 0)
        value_no, kind, type_, value = found
        if kind != KIND_MESSAGE_LIST:
            messages = yield from self._decoded_messages(owner[0], value_no, kind, type_, value)
            end = len(messages) if before is None else max(0, min(before, len(messages)))
            return MessagePage(messages[max(0, end - limit) : end], len(messages), max(0, end - limit))
        with self._cache_lock:
            cached = self._lists.get(owner[0], value_no)
        if cached is not None:
            nos, known = cached.nos, cached.known()
        else:
            nos, start, *_ = yield from self._list_numbers(owner[0], value_no)
            known = start.known() if start else {}
        end = len(nos) if before is None else max(0, min(before, len(nos)))
        start_at = max(0, end - limit)
        page = nos[start_at:end]
        loaded = yield from self._load_messages(owner[0], [n for n in page if n not in known])
        return MessagePage([restored(*known[n]) if n in known else loaded[n] for n in page], len(nos), start_at)

    def read_messages(
        self, thread_id: str, *, user_id: Any = ANY_USER, limit: int = 50, before: int | None = None
    ) -> MessagePage:
        """A page of a thread's latest messages (as `ThreadSaver.read_messages`)."""
        return self._run(self._read_messages(thread_id, user_id, limit, before), read=True)

    async def aread_messages(
        self, thread_id: str, *, user_id: Any = ANY_USER, limit: int = 50, before: int | None = None
    ) -> MessagePage:
        return await self._arun(self._read_messages(thread_id, user_id, limit, before), read=True)

    def _conversation(self, thread_id: str, user_id: Any) -> Plan[Conversation | None]:
        thread_id = check_id(thread_id)
        row = yield Sql("SELECT thread_key, user_id, created_at FROM threads WHERE thread_id = %s", (thread_id,), FETCH_ONE)
        if row is None or (user_id is not ANY_USER and row[1] != user_id):
            return None
        thread_key, owner, created_at = row
        found = yield from self._messages_value(thread_key, thread_id)
        if found is None:
            return Conversation(thread_key, owner, created_at, [], [])
        value_no, kind, type_, value = found
        if kind in (KIND_MESSAGE_LIST, KIND_DELTA_SNAPSHOT):
            stored = yield from self._load_list(thread_key, value_no)
            return Conversation(thread_key, owner, created_at, stored.hand_out(), list(stored.nos))
        messages = yield from self._decoded_messages(thread_key, value_no, kind, type_, value)
        return Conversation(thread_key, owner, created_at, messages, [] if not messages else None)

    def load_conversation(self, thread_id: str, user_id: Any) -> Conversation | None:
        """The thread's current messages (see `checkpointers.conversation`); None if the
        thread does not exist or is not the user's (`ANY_USER`: anyone's)."""
        return self._run(self._conversation(thread_id, user_id), read=True)

    async def aload_conversation(self, thread_id: str, user_id: Any) -> Conversation | None:
        return await self._arun(self._conversation(thread_id, user_id), read=True)

    # -- BaseCheckpointSaver: writes ----------------------------------------

    def _thread_row(self, thread_id: str, user_id: str | None, parent: Any) -> Plan[_ThreadRow]:
        """Lock the thread's row (creating it if new, unless the write goes on from `parent`, a
        checkpoint of a thread deleted meanwhile: `SeenThreads`) and drop what is cached of it if
        a garbage collection ran since it was cached."""
        row = yield Sql(_THREAD_ROW_SQL, (thread_id,), FETCH_ONE)
        if row is None:
            self._seen.check_not_deleted(thread_id, parent)
            yield from self._new_thread(thread_id, user_id)
            row = yield Sql(_THREAD_ROW_SQL, (thread_id,), FETCH_ONE)
        found = _ThreadRow(*row)
        self._seen.saw(thread_id)
        self._check_key_unchanged(found.key_record)
        with self._cache_lock:
            if self._epochs.get(found.thread_key) != found.gc_epoch:
                self._forget_thread(found.thread_key)
                self._epochs[found.thread_key] = found.gc_epoch
        return found

    def _check_key_unchanged(self, record: str | None) -> None:
        """Refuse to write if the store's key record is not the one this saver opened it with
        (another process made the store encrypted after this one opened it without a key, or
        `threadkeeper rotate-key` changed the key), or a rotation is running."""
        keys.check_unchanged(record, self._key_record, self.location)

    def _new_thread(self, thread_id: str, user_id: str | None) -> Plan[None]:
        """Insert a thread's row unless another writer just did, and count it (usage statistics)."""
        now = utc_now()
        inserted = yield Sql(_NEW_THREAD_SQL, (thread_id, user_id, now, now), FETCH_NONE)
        if inserted:
            yield from neutral(lambda conn: stats.thread_created(conn, user_id))

    def _forget_thread(self, thread_key: int) -> None:
        """Drop what is cached of one thread (call holding `_cache_lock`)."""
        self._lists.forget_threads([thread_key])
        for key in [k for k in self._digests if k[0] == thread_key]:
            del self._digests[key]
        for key in [k for k in self._unnamed if k[0] == thread_key]:
            del self._unnamed[key]
        self._epochs.pop(thread_key, None)

    def _base_list(self, txn: _ThreadTxn, ns: str, channel: str) -> Plan[StoredList | None]:
        """The list to store a new value of `channel` against, if one exists."""
        base = txn.lists.get((ns, channel))
        if base is None:
            with self._cache_lock:
                base = self._lists.latest(txn.thread_key, ns, channel)
        if base is not None:
            return base
        row = yield Sql(_LATEST_LIST_SQL, (txn.thread_key, ns, channel, KIND_MESSAGE_LIST, KIND_DELTA_SNAPSHOT), FETCH_ONE)
        if row is None:
            return None
        return (yield from self._load_list(txn.thread_key, row[0]))

    def _value_row(self, txn: _ThreadTxn, ns: str, channel: str, version: Any, value: Any) -> Plan[tuple | None]:
        """The `channel_values` row of a channel's new value (None: nothing to store)."""
        if value is _MISSING:
            return None  # updated but empty: no row at this version means "no value"
        delta = isinstance(value, _DeltaSnapshot)
        messages = value.value if delta else value
        if is_message_list(messages):
            base = yield from self._base_list(txn, ns, channel)
            entry, packed, base_no, keep = encode_list(
                base, messages, lambda m: self._store_message(txn, m), txn.value_no
            )
            txn.lists[(ns, channel)] = entry
            if ns == "" and channel == MESSAGES_CHANNEL:  # usage statistics: messages new to the conversation
                for found in stats.new_messages(base.nos if base is not None else None, messages, entry.nos):
                    txn.usage.add(found)
            kind = KIND_DELTA_SNAPSHOT if delta else KIND_MESSAGE_LIST
            return (entry.value_no, ns, channel, version_key(version), kind, None, packed, base_no, keep, entry.depth)
        value_no = txn.value_no()
        kind, type_, blob = self._encoded(txn, value, value_place(txn.thread_key, value_no))
        return (value_no, ns, channel, version_key(version), kind, type_, blob, None, None, 0)

    def _encoded(self, txn: _ThreadTxn, value: Any, place: bytes) -> tuple[int, str | None, bytes]:
        """A write or a channel value's (kind, type, value) columns, its messages stored by
        number (`messages.numbered`); a serialised one sealed to `place`."""
        kind, form = numbered(value, lambda m: self._store_message(txn, m))
        if kind not in SERIALISED_KINDS:
            return kind, None, form
        check_value(form, "input")
        type_, blob = self._dump(form)
        return kind, type_, self._sealed(blob, place)

    def _put(
        self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata, new_versions: ChannelVersions
    ) -> Plan[tuple[RunnableConfig, _ThreadTxn]]:
        configurable = config["configurable"]
        thread_id = check_id(configurable["thread_id"])
        ns = check_ns(configurable.get("checkpoint_ns", ""))
        full_metadata = get_serializable_checkpoint_metadata(config, metadata)
        metadata_json = checkpoint_metadata_json(full_metadata)
        user_id = checked_owner(full_metadata.get("user_id"), configurable.get("user_id"))
        nones = checkpoint_codec.none_channels(checkpoint)
        type_, blob = self._dump_checkpoint(checkpoint, json.loads(metadata_json), nones)
        values, new_versions = checkpoint_codec.values_to_store(
            checkpoint, new_versions, nones, type_ == checkpoint_codec.TYPE
        )
        run_id = full_metadata.get("run_id")
        txn = _ThreadTxn((yield from self._thread_row(thread_id, user_id, configurable.get("checkpoint_id"))))
        blob = self._sealed(blob, checkpoint_place(txn.thread_key, ns, checkpoint["id"]))
        for channel, version in new_versions.items():
            row = yield from self._value_row(txn, ns, channel, version, values.get(channel, _MISSING))
            if row is not None:
                txn.values.append(row)
        message_count = title = None
        messages = values.get(MESSAGES_CHANNEL)
        messages = messages.value if isinstance(messages, _DeltaSnapshot) else messages
        if ns == "" and MESSAGES_CHANNEL in new_versions and isinstance(messages, list):
            message_count = len(messages)
            if not txn.row.has_title:
                title = title_from_messages(messages)
        (v_no, v_ns, v_channel, v_version, v_kind, v_type, v_value, v_base, v_keep, v_depth) = _columns(txn.values, 10)
        yield Sql(
            _WRITE_CHECKPOINT_SQL,
            {
                "thread_key": txn.thread_key,
                **txn.message_params(),
                "v_no": v_no, "v_ns": v_ns, "v_channel": v_channel, "v_version": v_version, "v_kind": v_kind,
                "v_type": v_type, "v_value": v_value, "v_base": v_base, "v_keep": v_keep, "v_depth": v_depth,
                "ns": ns, "checkpoint_id": _stored_id(checkpoint["id"]), "parent_id": _stored_id(configurable.get("checkpoint_id")),
                "run_id": _stored_id(run_id), "type": type_, "checkpoint": blob,
                "metadata": None if type_ == checkpoint_codec.TYPE else metadata_json,  # else the blob holds it
                "next_value_no": txn.next_value_no, "next_message_no": txn.next_message_no,
                "updated_at": utc_now() if _sets_updated_at(checkpoint, full_metadata) else None,
                "message_count": message_count,
                "title": encryption.seal_title(self._cipher, title, thread_id), "user_id": user_id,
            },
            FETCH_LATER,
        )
        owner = txn.row.user_id if txn.row.user_id is not None else user_id  # as the UPDATE leaves it
        if any(txn.usage.counts):  # usage statistics, in the checkpoint's transaction
            yield from neutral(lambda conn: stats.record_tally(conn, stats.today(), owner, txn.usage))
        next_config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint["id"]}}
        return next_config, txn

    @contextmanager
    def _one_writer(self, thread_id: str) -> Iterator[None]:
        """Hold this process's turn to number a thread's messages (see `_committed`)."""
        lock = self._take_turn(self._writers, thread_id, threading.Lock)
        try:
            with lock:
                yield
        finally:
            self._give_turn(self._writers, thread_id)

    @asynccontextmanager
    async def _one_async_writer(self, thread_id: str) -> AsyncIterator[None]:
        """`_one_writer` for the coroutines of one event loop."""
        key = (asyncio.get_running_loop(), thread_id)
        lock = self._take_turn(self._async_writers, key, asyncio.Lock)
        try:
            async with lock:
                yield
        finally:
            self._give_turn(self._async_writers, key)

    def _take_turn(self, turns: dict, key: Any, new_lock: Any) -> Any:
        """The lock of `key` in `turns`, made if none waits for it or holds it."""
        with self._cache_lock:
            entry = turns.setdefault(key, [new_lock(), 0])
            entry[1] += 1
            return entry[0]

    def _give_turn(self, turns: dict, key: Any) -> None:
        with self._cache_lock:
            turns[key][1] -= 1
            if not turns[key][1]:
                del turns[key]

    def _committed(self, txn: _ThreadTxn) -> None:
        """Cache what a committed write stored: its lists, its new messages' digests, the
        messages it stored without an id, and those it stored again with their id.

        The writes that number a thread's messages (`put`, and `put_writes` holding
        messages) take their turn in this process (`_one_writer`) from before they lock the
        thread's row until this has run. Without it the next write, which LangGraph sends
        from another thread and whose row lock is granted at this one's COMMIT, could read
        the caches before this fills them, and store the same messages again (measured: a
        turn's input message twice in 43% of turns)."""
        key = txn.thread_key
        with self._cache_lock:
            if self._epochs.get(key) != txn.row.gc_epoch:
                return  # the thread was collected meanwhile: nothing of this write is cached
            for (ns, channel), entry in txn.lists.items():
                self._lists.add(key, ns, channel, entry)
            for object_id, old_digest in txn.renamed:  # their row now holds them with their id
                self._digests.pop((key, old_digest), None)
                self._unnamed.pop((key, object_id), None)
            for digest, no in txn.new_digests.items():
                self._digests[(key, digest)] = no
                self._digests.move_to_end((key, digest))
            while len(self._digests) > _DIGESTS_KEPT:
                self._digests.popitem(last=False)
            for object_id, entry in txn.unnamed.items():
                self._unnamed[(key, object_id)] = entry
            while len(self._unnamed) > _UNNAMED_KEPT:
                self._unnamed.popitem(last=False)

    @contextmanager
    def _putting_checkpoint(self, config: RunnableConfig, checkpoint: Checkpoint) -> Iterator[None]:
        """Mark a put of `checkpoint` as running, for the task writes that wait for it (`_after_put`)."""
        thread, checkpoint_id = _thread_of(config), str(checkpoint["id"])
        with self._cache_lock:
            running = self._putting.setdefault(thread, {})
            running[checkpoint_id] = running.get(checkpoint_id, 0) + 1
        try:
            yield
        finally:
            with self._cache_lock:
                running[checkpoint_id] -= 1
                if not running[checkpoint_id]:
                    del running[checkpoint_id]
                    if not running:
                        del self._putting[thread]
                self._last_put[thread] = (checkpoint_id, time.monotonic())
                self._last_put.move_to_end(thread)
                while len(self._last_put) > _LAST_PUTS_KEPT:
                    self._last_put.popitem(last=False)
                self._put_done.notify_all()
                for loop, woken in self._async_put_waiters:
                    with suppress(RuntimeError):  # its loop is closed: nothing waits there any more
                        loop.call_soon_threadsafe(_wake, woken)
                self._async_put_waiters.clear()

    def _put_pending(self, config: RunnableConfig, deadline: float) -> float:
        """How long task writes for `config`'s checkpoint should wait now for its put (see
        `_after_put`; 0 or less: not at all). Call holding `_cache_lock`."""
        checkpoint_id = config["configurable"].get("checkpoint_id")
        if checkpoint_id is None:
            return 0.0  # refused by the write itself
        thread, checkpoint_id = _thread_of(config), str(checkpoint_id)
        running = self._putting.get(thread, {})
        last = self._last_put.get(thread)
        now = time.monotonic()
        if checkpoint_id in running or any(other < checkpoint_id for other in running):
            return deadline - now  # its put is running, or comes after a running one
        if last is not None and last[0] < checkpoint_id and not running:
            return min(deadline, last[1] + _PUT_GAP_S) - now
        return 0.0

    def _after_put(self, config: RunnableConfig) -> None:
        """Wait, up to `_PUT_WAIT_S`, for this process's put of the checkpoint that task writes
        are for, when it is running or coming, so the writes can be packed into the
        checkpoint's row (`packed_writes`) rather than rows of their own.

        LangGraph puts a run's checkpoints one after another, each from a worker thread once
        the one before it is stored, and sends a step's task writes meanwhile: writes for a
        checkpoint newer than this process's running or last put of the thread wait until
        its put has run, or until no put of the thread has run for `_PUT_GAP_S`."""
        deadline = time.monotonic() + _PUT_WAIT_S
        with self._cache_lock:
            while (wait := self._put_pending(config, deadline)) > 0:
                self._put_done.wait(wait)

    async def _aafter_put(self, config: RunnableConfig) -> None:
        """`_after_put` for a coroutine: it waits on its event loop, not on a thread."""
        deadline = time.monotonic() + _PUT_WAIT_S
        loop = asyncio.get_running_loop()
        while True:
            with self._cache_lock:
                wait = self._put_pending(config, deadline)
                if wait <= 0:
                    return
                woken = loop.create_future()
                self._async_put_waiters.append((loop, woken))
            try:
                await asyncio.wait_for(woken, wait)
            except TimeoutError:
                pass
            finally:
                with self._cache_lock, suppress(ValueError):  # woken ones were cleared already
                    self._async_put_waiters.remove((loop, woken))

    def put(
        self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata, new_versions: ChannelVersions
    ) -> RunnableConfig:
        """Store a checkpoint with its new values and messages, and its thread's index row, in one transaction."""
        with self._putting_checkpoint(config, checkpoint), self._one_writer(check_id(config["configurable"]["thread_id"])):
            next_config, txn = self._run(self._put(config, checkpoint, metadata, new_versions))
            self._committed(txn)
        return next_config

    async def aput(
        self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata, new_versions: ChannelVersions
    ) -> RunnableConfig:
        with self._putting_checkpoint(config, checkpoint):
            async with self._one_async_writer(check_id(config["configurable"]["thread_id"])):
                next_config, txn = await self._arun(self._put(config, checkpoint, metadata, new_versions))
                self._committed(txn)
        return next_config

    def _put_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str, numbering: bool
    ) -> Plan[_ThreadTxn | None]:
        """A task's writes; with `numbering` (they hold messages: `_holds_messages`), the write
        transaction is returned, to cache the messages it numbered."""
        configurable = config["configurable"]
        thread_id = check_id(configurable["thread_id"])
        user_id = checked_owner(configurable.get("user_id"), (config.get("metadata") or {}).get("user_id"))
        ns, checkpoint_id = check_ns(configurable.get("checkpoint_ns", "")), configurable["checkpoint_id"]
        params = {
            "ns": ns, "checkpoint_id": _stored_id(checkpoint_id), "task_id": _stored_id(task_id),
            "task_path": codec.task_path_bytes(check_task_path(task_path)),
        }
        replace = all(channel in WRITES_IDX_MAP for channel, _ in writes)
        txn = None
        if numbering:
            # Its messages are numbered and stored with it: the thread's row is locked as
            # for a checkpoint, which numbers messages too.
            txn = _ThreadTxn((yield from self._thread_row(thread_id, user_id, checkpoint_id)))
            thread_key = txn.thread_key
        else:
            row = yield Sql(_THREAD_KEY_SQL, (thread_id,), FETCH_ONE)
            if row is None:
                self._seen.check_not_deleted(thread_id, checkpoint_id)
                yield from self._new_thread(thread_id, user_id)
                row = yield Sql(_THREAD_KEY_SQL, (thread_id,), FETCH_ONE)
            else:
                self._seen.saw(thread_id)
            self._check_key_unchanged(row[1])
            thread_key = row[0]
        rows = [
            (idx, channel, *self._encoded(txn, value, write_place(thread_key, ns, checkpoint_id, task_id, idx)))
            for idx, channel, value in _indexed(writes)
        ]
        if replace:  # before the checkpoint's row: every write locks the thread's row first (no deadlock)
            yield Sql(_TOUCH_THREAD_SQL, (utc_now(), thread_key), FETCH_LATER)
        params |= {
            "packed": packed_writes.record(params["task_id"], params["task_path"], replace, rows),
            "max_bytes": packed_writes.MAX_BYTES, "full": packed_writes.FULL,
            "after": packed_writes.AFTER_RECORDS_REPLACING if replace else packed_writes.AFTER_RECORDS,
        }
        stores_messages = txn is not None and bool(txn.messages or txn.named)
        if stores_messages:
            params |= txn.message_params()
            params["next_message_no"] = txn.next_message_no
        yield Sql(_PUT_WRITES_SQL[(replace, stores_messages)], params | _write_columns(thread_key, rows), FETCH_LATER)
        return txn

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = "") -> None:
        """Store a task's writes against a checkpoint (at once, in their own transaction)."""
        if not writes:
            return
        self._after_put(config)
        if not _holds_messages(writes):
            self._run(self._put_writes(config, writes, task_id, task_path, False))
            return
        with self._one_writer(check_id(config["configurable"]["thread_id"])):
            self._committed(self._run(self._put_writes(config, writes, task_id, task_path, True)))

    async def aput_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        if not writes:
            return
        await self._aafter_put(config)
        if not _holds_messages(writes):
            await self._arun(self._put_writes(config, writes, task_id, task_path, False))
            return
        async with self._one_async_writer(check_id(config["configurable"]["thread_id"])):
            self._committed(await self._arun(self._put_writes(config, writes, task_id, task_path, True)))

    # -- deleting, copying, pruning -----------------------------------------

    def _delete_threads(self, thread_ids: Sequence[str], updated_before: str | None) -> Plan[list[int]]:
        ids = [check_id(t) for t in thread_ids]
        if not ids:
            return []
        if updated_before is None:
            rows = yield Sql("DELETE FROM threads WHERE thread_id = ANY(%s) RETURNING thread_key", (ids,))
        else:
            rows = yield Sql(
                "DELETE FROM threads WHERE thread_id = ANY(%s) AND updated_at < %s AND NOT pinned RETURNING thread_key",
                (ids, updated_before),
            )
        # usage statistics: with `updated_before` this is the retention sweep's delete
        yield from neutral(lambda conn: stats.threads_deleted(conn, len(rows), swept=updated_before is not None))
        return [key for (key,) in rows]

    def delete_threads(self, thread_ids: Sequence[str], *, updated_before: str | None = None, purge: bool = True) -> int:
        """Delete many threads (everything of them) in one transaction; returns how many.

        With `updated_before` (ISO time) only threads last updated before it and
        not pinned are deleted, checked inside the delete. `purge` is accepted for
        the SQLite engine's signature: PostgreSQL's index forgets deleted rows itself."""
        keys = self._run(self._delete_threads(thread_ids, updated_before))
        self._forget_threads(keys)
        if keys:
            self.attachments.forget_deleted()
        return len(keys)

    async def adelete_threads(
        self, thread_ids: Sequence[str], *, updated_before: str | None = None, purge: bool = True
    ) -> int:
        keys = await self._arun(self._delete_threads(thread_ids, updated_before))
        self._forget_threads(keys)
        if keys:
            await asyncio.to_thread(self.attachments.forget_deleted)
        return len(keys)

    def delete_thread(self, thread_id: str) -> None:
        """Delete a thread: its checkpoints, values, messages, writes and index row."""
        self.delete_threads([thread_id])

    async def adelete_thread(self, thread_id: str) -> None:
        await self.adelete_threads([thread_id])

    def _forget_threads(self, keys: Sequence[int]) -> None:
        with self._cache_lock:
            for key in keys:
                self._forget_thread(key)

    def _copy_thread(self, source: str, target: str) -> Plan[None]:
        source, target = check_id(source), check_id(target)
        src = yield Sql("SELECT thread_key FROM threads WHERE thread_id = %s FOR SHARE", (source,), FETCH_ONE)
        if src is None:
            raise ThreadNotFoundError(source)
        yield from keys.check_writable(self._cipher, self.location)  # the copies are sealed with this saver's key
        dst = yield Sql(
            "SELECT thread_key, EXISTS (SELECT 1 FROM checkpoints c WHERE c.thread_key = t.thread_key) "
            "FROM threads t WHERE thread_id = %s FOR UPDATE",
            (target,),
            FETCH_ONE,
        )
        if dst is not None:
            if dst[1]:
                raise ThreadExistsError(f"cannot copy into thread {target!r}: it already exists")
            yield Sql("DELETE FROM threads WHERE thread_key = %s", (dst[0],), FETCH_NONE)
        now = utc_now()
        new_key, owner = yield Sql(
            "INSERT INTO threads (thread_id, user_id, title, created_at, updated_at, message_count, pinned, metadata, "
            "next_value_no, next_message_no) SELECT %s, user_id, title, %s, %s, message_count, pinned, metadata, "
            "next_value_no, next_message_no FROM threads WHERE thread_key = %s RETURNING thread_key, user_id",
            (target, now, now, src[0]),
            FETCH_ONE,
        )
        yield from neutral(lambda conn: stats.thread_created(conn, owner))  # usage statistics
        for table, sql in _COPY_SQL.items():
            yield Sql(sql, (new_key, src[0]), FETCH_NONE)
        if self._cipher is not None:  # sealed values are bound to their thread: seal the copies to theirs
            title = yield Sql("SELECT title FROM threads WHERE thread_key = %s", (new_key,), FETCH_ONE)
            yield Sql(
                "UPDATE threads SET title = %s WHERE thread_key = %s",
                (encryption.seal_title(self._cipher, encryption.open_title(self._cipher, title[0], source), target), new_key),
                FETCH_NONE,
            )
            yield from keys.reseal_copy(self._cipher, src[0], new_key)
            yield from self.attachments.reseal_copy(new_key, source, target)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy a thread with its whole history under a new id (unused, or without checkpoints)."""
        self._run(self._copy_thread(source_thread_id, target_thread_id))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self._arun(self._copy_thread(source_thread_id, target_thread_id))

    def _delete_for_runs(self, run_ids: Sequence[str]) -> Plan[list[int]]:
        ids = [_stored_id(r) for r in run_ids]
        if not ids:
            return []
        rows = yield Sql(
            "SELECT thread_key, checkpoint_ns, checkpoint_id FROM checkpoints WHERE run_id = ANY(%s) "
            "ORDER BY thread_key",
            (ids,),
        )
        touched = sorted({r[0] for r in rows})
        # Lock in key order, so two deletions meeting on the same threads cannot deadlock.
        yield Sql("SELECT 1 FROM threads WHERE thread_key = ANY(%s) ORDER BY thread_key FOR UPDATE", (touched,))
        for thread_key, ns, checkpoint_id in rows:
            yield from self._delete_checkpoint(thread_key, ns, checkpoint_id)
        for thread_key in touched:
            yield from self._collect_garbage(thread_key)
        return touched

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints (and their writes) that the given runs created."""
        self._forget_threads(self._run(self._delete_for_runs(run_ids)))

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        self._forget_threads(await self._arun(self._delete_for_runs(run_ids)))

    def _delete_checkpoint(self, thread_key: int, ns: str, checkpoint_id: bytes) -> Plan[None]:
        for sql in _DELETE_CHECKPOINT_SQL:
            yield Sql(sql, (thread_key, ns, checkpoint_id), FETCH_NONE)

    def _prune(self, thread_ids: Sequence[str], strategy: str, updated_before: str | None) -> Plan[list[int]]:
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"unknown prune strategy {strategy!r}: use 'keep_latest' or 'delete'")
        ids = sorted({check_id(t) for t in thread_ids})
        rows = yield Sql(
            "SELECT thread_key, updated_at, pinned FROM threads WHERE thread_id = ANY(%s) ORDER BY thread_key FOR UPDATE",
            (ids,),
        )
        touched = []
        for thread_key, updated_at, pinned in rows:
            if updated_before is not None and (updated_at >= updated_before or pinned):
                continue
            touched.append(thread_key)
            if strategy == "delete":
                for sql in _DELETE_THREAD_ROWS_SQL.values():  # the thread's attachment stays
                    yield Sql(sql, (thread_key,), FETCH_NONE)
                yield Sql(
                    "UPDATE threads SET message_count = 0, gc_epoch = gc_epoch + 1 WHERE thread_key = %s",
                    (thread_key,),
                    FETCH_NONE,
                )
                continue
            keep: set[tuple[str, str]] = set()
            newest = yield Sql(
                "SELECT DISTINCT ON (checkpoint_ns) checkpoint_ns, checkpoint_id FROM checkpoints WHERE thread_key = %s "
                "ORDER BY checkpoint_ns, checkpoint_id DESC",
                (thread_key,),
            )
            for ns, checkpoint_id in newest:
                ancestry = yield from self._delta_ancestry(thread_key, ns, checkpoint_id)
                keep.update((ns, c) for c in ancestry)
            every = yield Sql("SELECT checkpoint_ns, checkpoint_id FROM checkpoints WHERE thread_key = %s", (thread_key,))
            for ns, checkpoint_id in every:
                if (ns, checkpoint_id) not in keep:
                    yield from self._delete_checkpoint(thread_key, ns, checkpoint_id)
            yield from self._collect_garbage(thread_key)
        return touched

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest", updated_before: str | None = None) -> None:
        """Drop old checkpoints of the given threads (as `ThreadSaver.prune`).

        `keep_latest` keeps each namespace's newest checkpoint and the ancestors its
        `DeltaChannel`s replay from; `delete` removes every checkpoint but keeps the
        thread. With `updated_before`, threads updated since, or pinned, are left alone."""
        self._forget_threads(self._run(self._prune(thread_ids, strategy, updated_before)))

    async def aprune(
        self, thread_ids: Sequence[str], *, strategy: str = "keep_latest", updated_before: str | None = None
    ) -> None:
        self._forget_threads(await self._arun(self._prune(thread_ids, strategy, updated_before)))

    def _delta_ancestry(self, thread_key: int, ns: str, checkpoint_id: bytes) -> Plan[list[bytes]]:
        """The checkpoint plus the ancestors its DeltaChannels replay from (ids as stored)."""
        kept = [checkpoint_id]
        row = yield Sql(_CHECKPOINT_ROW_SQL, (thread_key, ns, checkpoint_id), FETCH_ONE)
        checkpoint, metadata = self._load_checkpoint_row(thread_key, ns, checkpoint_id, row[1], row[2], row[3])
        versions = checkpoint["channel_versions"]
        delta_channels = [c for c in (metadata.get("counters_since_delta_snapshot") or {}) if c in versions]
        found = yield from self._stored_channels(thread_key, ns, versions, delta_channels)
        unseeded = set(delta_channels) - found
        parent = row[0]
        while unseeded and parent:
            row = yield Sql(_CHECKPOINT_ROW_SQL, (thread_key, ns, parent), FETCH_ONE)
            if row is None:
                break
            kept.append(parent)
            versions = self._load_checkpoint(thread_key, ns, parent, row[1], row[2])["channel_versions"]
            unseeded -= yield from self._stored_channels(thread_key, ns, versions, [c for c in unseeded if c in versions])
            parent = row[0]
        return kept

    def _stored_channels(self, thread_key: int, ns: str, versions: ChannelVersions, channels: Sequence[str]) -> Plan[set[str]]:
        """Which of `channels` have a stored value at their version in `versions`."""
        if not channels:
            return set()
        rows = yield Sql(_VALUES_AT_SQL, (list(channels), [version_key(versions[c]) for c in channels], thread_key, ns))
        return {row[0] for row in rows}

    def _collect_garbage(self, thread_key: int) -> Plan[None]:
        """Delete values and messages no remaining checkpoint refers to; bump `gc_epoch` so
        savers (in any process) that cached the thread's lists read them afresh."""
        yield Sql("UPDATE threads SET gc_epoch = gc_epoch + 1 WHERE thread_key = %s", (thread_key,), FETCH_NONE)
        checkpoints = yield Sql(
            "SELECT checkpoint_ns, checkpoint_id, type, checkpoint, writes FROM checkpoints WHERE thread_key = %s",
            (thread_key,),
        )
        wanted = {
            (ns, channel, version_key(version))
            for ns, checkpoint_id, type_, blob, _packed in checkpoints
            for channel, version in self._load_checkpoint(thread_key, ns, checkpoint_id, type_, blob)["channel_versions"].items()
        }
        rows = yield Sql(
            "SELECT value_no, checkpoint_ns, channel, version, kind, value, base_no, type FROM channel_values "
            "WHERE thread_key = %s ORDER BY value_no",
            (thread_key,),
        )
        newest: dict[tuple[str, str, str], int] = {}
        for value_no, ns, channel, version, *_ in rows:
            if (ns, channel, version) in wanted:
                newest[(ns, channel, version)] = value_no  # rows come in order: the last is the newest
        by_no = {row[0]: row for row in rows}
        live = set(newest.values())
        pending = list(live)
        while pending:
            base = by_no[pending.pop()][6]
            if base is not None and base not in live:
                live.add(base)
                pending.append(base)
        live_messages: set[int] = set()
        for no in live:
            kind, value, type_ = by_no[no][4], by_no[no][5], by_no[no][7]
            live_messages.update(self._referenced(kind, type_, value, value_place(thread_key, no)))
        writes = yield Sql(
            "SELECT checkpoint_ns, checkpoint_id, task_id, idx, kind, type, value FROM writes "
            "WHERE thread_key = %s AND kind <> %s",
            (thread_key, KIND_SERDE),
        )
        writes = [tuple(row) for row in writes] + [
            (ns, checkpoint_id, task_id, idx, kind, type_, value)
            for ns, checkpoint_id, _type, _blob, packed in checkpoints
            for task_id, _path, _replace, rows in packed_writes.records(packed)
            for idx, _channel, kind, type_, value in rows
            if kind != KIND_SERDE
        ]
        for ns, checkpoint_id, task_id, idx, kind, type_, value in writes:
            place = write_place(thread_key, ns, codec.id_text(checkpoint_id), codec.id_text(task_id), idx)
            live_messages.update(self._referenced(kind, type_, value, place))
        dead_values = [no for no in by_no if no not in live]
        yield Sql(
            "DELETE FROM channel_values WHERE thread_key = %s AND value_no = ANY(%s)", (thread_key, dead_values), FETCH_NONE
        )
        yield Sql(
            "DELETE FROM messages WHERE thread_key = %s AND NOT (message_no = ANY(%s))",
            (thread_key, sorted(live_messages)),
            FETCH_NONE,
        )

    def _referenced(self, kind: int, type_: str | None, value: bytes | None, place: bytes) -> list[int]:
        """The message numbers a stored value or write (sealed at `place`) refers to."""
        return referenced_numbers(kind, self._load(type_, value, place) if kind == KIND_MESSAGE_DICT else value)

    def _delta_channel_history(self, config: RunnableConfig, channels: list[str]) -> Plan[dict[str, DeltaChannelHistory]]:
        configurable = config["configurable"]
        thread_id = check_id(configurable["thread_id"])
        ns = check_ns(configurable.get("checkpoint_ns", ""))
        collected: dict[str, list[PendingWrite]] = {c: [] for c in channels}
        seeds: dict[str, Any] = {}
        if checkpoint_id := get_checkpoint_id(config):
            target = yield Sql(_CHECKPOINT_BY_ID_SQL, (thread_id, ns, _stored_id(checkpoint_id)), FETCH_ONE)
        else:
            target = yield Sql(_LATEST_CHECKPOINT_SQL, (ns, thread_id), FETCH_ONE)
        thread_key = target[0] if target else None
        cursor = target[2] if target else None  # the target's parent: history before it
        remaining = set(channels)
        visited: set[str] = set()
        while cursor and remaining and cursor not in visited:
            visited.add(cursor)
            row = yield Sql(_CHECKPOINT_ROW_SQL, (thread_key, ns, cursor), FETCH_ONE)
            if row is None:
                break
            writes = yield from self._pending_writes(thread_key, ns, cursor, row[4])
            for write in reversed(writes):
                if write[1] in remaining:
                    collected[write[1]].append(write)
            versions = self._load_checkpoint(thread_key, ns, cursor, row[1], row[2])["channel_versions"]
            present = [c for c in remaining if c in versions]
            if present:
                stored = yield Sql(
                    _VALUES_AT_SQL, (present, [version_key(versions[c]) for c in present], thread_key, ns)
                )
                for channel, value_no, kind, type_, value in stored:
                    seeds[channel] = yield from self._decode_value(thread_key, value_no, kind, type_, value, own=True)
                    remaining.discard(channel)
            cursor = row[0]
        return delta_channel_history(channels, collected, seeds)

    def get_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        """Writes of each channel along the parent chain back to its nearest stored value
        (`BaseCheckpointSaver.get_delta_channel_history`), in one snapshot."""
        if not channels:
            return {}
        return self._run(self._delta_channel_history(config, list(channels)), read=True)

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        if not channels:
            return {}
        return await self._arun(self._delta_channel_history(config, list(channels)), read=True)

    def get_next_version(self, current: Any, channel: None = None) -> float | str:
        """See `checkpoint_codec.next_version`."""
        return checkpoint_codec.next_version(current)

    def attachment_path(self, thread_id: str) -> Path | None:
        """This machine's read-only copy of the database attached to the thread, or None."""
        return self.attachments.path(thread_id)

    def attachment_database(self, thread_id: str) -> Path | None:
        """What the agent's tools open: `attachment_path` (the file is written to this
        machine's cache from the database the first time a process needs it)."""
        return self.attachments.database(thread_id)


_SNAPSHOT = psycopg.IsolationLevel.REPEATABLE_READ


def _begin(read: bool, single: bool) -> str | None:
    """How `_run` starts a plan's transaction (None: a plan of one statement needs none)."""
    if single:
        return None
    return connection.BEGIN_SNAPSHOT if read else connection.BEGIN
_DIGESTS_KEPT = 20_000
_LIST_PAGE = 200
"""Checkpoint rows `list(filter=)` reads at a time (see `_list`)."""
_UNNAMED_KEPT = 1_000
_PUT_WAIT_S = 2.0
"""The longest task writes wait for their checkpoint's put (`_after_put`); past it they are
stored in rows of `writes`, which read the same."""
_PUT_GAP_S = 0.05
"""How long after a thread's last put task writes for a newer checkpoint still expect its put
(`_after_put`): LangGraph's worker puts the next checkpoint as soon as the last put returns."""
_LAST_PUTS_KEPT = 10_000
"""Threads whose last put `_last_put` remembers (the oldest are forgotten)."""

_DELETE_CHECKPOINT_SQL = tuple(
    f"DELETE FROM {table} WHERE thread_key = %s AND checkpoint_ns = %s AND checkpoint_id = %s"
    for table in ("checkpoints", "writes")
)
_DELETE_THREAD_ROWS_SQL = {
    table: f"DELETE FROM {table} WHERE thread_key = %s"
    for table in ("checkpoints", "channel_values", "messages", "writes", "message_times", "message_metadata")
}


@contextmanager
def open_postgres_saver(url: str, **kwargs: Any) -> Iterator[PostgresThreadSaver]:
    """A migrated saver on `url`, closed on exit."""
    saver = PostgresThreadSaver(url, **kwargs)
    try:
        saver.setup()
        yield saver
    finally:
        saver.close()


@asynccontextmanager
async def open_async_postgres_saver(url: str, **kwargs: Any) -> AsyncIterator[PostgresThreadSaver]:
    """A migrated saver on `url` for asyncio use, closed on exit."""
    saver = PostgresThreadSaver(url, **kwargs)
    try:
        await saver.asetup()
        yield saver
    finally:
        await saver.aclose()

