"""Copy the threads of a stock LangGraph checkpoint database into the store
(`threadkeeper import-checkpoints`).

    with open_saver(cache_messages=CACHE_MESSAGES) as saver, open_stock_source("sqlite:///old.sqlite") as source:
        summary = import_checkpoints(saver, source, user_key="metadata.user_id")

The source is a database written by `SqliteSaver` (langgraph-checkpoint-sqlite)
or `PostgresSaver` (langgraph-checkpoint-postgres). Checkpoints are read
through those libraries' own `get_tuple`, which know every schema version they
wrote (pending sends of old checkpoints, string channel versions...), on a
connection that cannot write: the SQLite file opened `mode=ro`, a PostgreSQL
session whose transactions are read-only. Their `setup()` is never called: it
writes. Only the keys (thread id, namespace, checkpoint id) come from a query
of this module, because the stock API cannot list threads: `list(None)` would
decode every checkpoint of the database to learn their ids, and
`PostgresSaver.list` fetches its whole result into memory. Threads are read
one checkpoint at a time, so memory stays that of one checkpoint whatever the
size of the source.

Each thread is copied whole: every checkpoint of every namespace, oldest
first, with its parent, metadata and pending writes, through the saver's
`put` and `put_writes`, so the history, forks and time travel are as they
were and the thread continues here (the saver continues string versions).
Its index row gets its owner from a metadata key of its checkpoints (the
first that names one, as the saver itself does), its title from its first
human message, and its created and updated times from its oldest and newest
checkpoints; each message is dated by the first checkpoint that held it, to
the millisecond. What the stock API does not hand out cannot be copied: the
`task_path` of pending writes, so the writes of several tasks on one
checkpoint come back ordered by task id.

Running it again adds nothing, and a run that was interrupted is finished by
the next: a thread whose newest checkpoint and its writes are in the store,
and whose owner and times are set (the last write of a thread's copy), is
left alone; one that is only partly there goes on from its first missing
checkpoint (the store holds a prefix: checkpoints are put oldest first and
each is written before the next). A thread id the store already uses for a
thread that holds none of the source's checkpoints is reported, not merged.

The source file is never written. As for any reader of a WAL-mode SQLite
database, SQLite may leave an empty `-wal` and `-shm` file beside it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langgraph.checkpoint.base import BaseCheckpointSaver, CheckpointTuple

from checkpointers import conversation
from checkpointers.conversation import iso, to_micros
from checkpointers.errors import StoreError, ThreadNotFoundError
from checkpointers.url import sqlite_path

if TYPE_CHECKING:
    from checkpointers.engines.sqlite.saver import ThreadSaver

DEFAULT_USER_KEY = "metadata.user_id"

CACHE_MESSAGES = 10_000
"""The message cache of a store opened for an import (`ThreadSaver(cache_messages=...)`).
An import reads each thread once, so the default (200,000 messages, for a server's
recent threads) only holds threads it is done with: 150 threads of 50 turns peaked at
413 MB and 5.5 threads/s with it, 101 MB and 7.0 threads/s with this."""


class NotACheckpointDatabaseError(StoreError):
    """The source is not a database written by one of LangGraph's stock savers (or cannot be read)."""


class ThreadIdTakenError(StoreError):
    """The store has a thread of that id that did not come from the source."""


# -- the source -----------------------------------------------------------------


class StockSource:
    """A stock saver opened read-only, and the keys of what it holds."""

    saver: BaseCheckpointSaver
    description: str
    """What the source is, for people: "SqliteSaver database /srv/old.sqlite"."""
    _param = "?"

    def _rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        raise NotImplementedError

    def count_threads(self) -> int:
        return self._rows("SELECT count(DISTINCT thread_id) FROM checkpoints")[0][0]

    def thread_ids(self, batch: int = 500) -> Iterator[str]:
        """Every thread id, in order, a batch at a time (a keyset walk of the primary key)."""
        p = self._param
        after = None
        while True:
            if after is None:
                rows = self._rows(f"SELECT DISTINCT thread_id FROM checkpoints ORDER BY thread_id LIMIT {p}", (batch,))
            else:
                rows = self._rows(
                    f"SELECT DISTINCT thread_id FROM checkpoints WHERE thread_id > {p} ORDER BY thread_id LIMIT {p}",
                    (after, batch),
                )
            for (thread_id,) in rows:
                yield thread_id
            if len(rows) < batch:
                return
            after = rows[-1][0]

    def checkpoint_keys(self, thread_id: str) -> list[tuple[str, str]]:
        """(namespace, checkpoint id) of each of the thread's checkpoints, oldest first
        (checkpoint ids sort by creation time)."""
        p = self._param
        rows = self._rows(
            f"SELECT checkpoint_ns, checkpoint_id FROM checkpoints WHERE thread_id = {p} "
            "ORDER BY checkpoint_id, checkpoint_ns",
            (thread_id,),
        )
        return [(ns, checkpoint_id) for ns, checkpoint_id in rows]

    def get(self, thread_id: str, ns: str, checkpoint_id: str) -> CheckpointTuple | None:
        """One checkpoint with its pending writes, as the stock saver reads it."""
        return self.saver.get_tuple(_config(thread_id, ns, checkpoint_id))

    def close(self) -> None:
        raise NotImplementedError


class _SqliteSource(StockSource):
    def __init__(self, path: Path) -> None:
        try:
            from langgraph.checkpoint.sqlite import SqliteSaver
        except ImportError:
            raise NotACheckpointDatabaseError(
                "reading a SqliteSaver database needs langgraph-checkpoint-sqlite: pip install 'threadkeeper[stock]'"
            ) from None
        self.description = f"SqliteSaver database {path.resolve()}"
        if not path.is_file():
            raise NotACheckpointDatabaseError(f"there is no file at {path.resolve()}")
        # `mode=ro`: SQLite itself refuses every write. The URI is built from the
        # path by pathlib, which escapes what a URI would read as syntax (%, ?, #).
        try:
            self.conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
        except sqlite3.Error as exc:
            raise NotACheckpointDatabaseError(f"{path.name} cannot be opened: {exc}") from None
        try:
            has_task_path = self._check_schema(path)
        except BaseException:
            self.conn.close()
            raise
        self.saver = SqliteSaver(self.conn)
        # The stock saver's own provision for a read-only file: `setup()` (which
        # sets journal_mode and creates tables) is skipped, and writes from before
        # the `task_path` column are read without it.
        self.saver.is_setup = True
        self.saver._has_task_path = has_task_path

    def _check_schema(self, path: Path) -> bool:
        try:
            columns = {
                table: {row[1] for row in self.conn.execute("SELECT * FROM pragma_table_info(?)", (table,))}
                for table in ("checkpoints", "writes", "threads")
            }
        except sqlite3.DatabaseError as exc:
            if "not a database" in str(exc) or "malformed" in str(exc):
                raise NotACheckpointDatabaseError(
                    f"{path.name} is not a LangGraph checkpoint database: it is not a SQLite database"
                ) from None
            raise NotACheckpointDatabaseError(f"{path.name} cannot be read: {exc}") from None
        if "thread_key" in columns["checkpoints"] and columns["threads"]:
            raise NotACheckpointDatabaseError(
                f"{path.name} is a threadkeeper store, not a LangGraph checkpoint database "
                "(move threads between stores with threadkeeper export and import)"
            )
        if not _SQLITE_CHECKPOINTS <= columns["checkpoints"] or not _SQLITE_WRITES <= columns["writes"]:
            raise NotACheckpointDatabaseError(
                f"{path.name} is not a LangGraph checkpoint database: it has no checkpoints and writes tables "
                "as SqliteSaver makes them"
            )
        return "task_path" in columns["writes"]

    def _rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self.conn.execute(sql, params).fetchall()

    def close(self) -> None:
        self.conn.close()


_SQLITE_CHECKPOINTS = {"thread_id", "checkpoint_ns", "checkpoint_id", "parent_checkpoint_id", "type", "checkpoint", "metadata"}
_SQLITE_WRITES = {"thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "idx", "channel", "type", "value"}


class _PostgresSource(StockSource):
    _param = "%s"

    def __init__(self, url: str) -> None:
        try:
            import psycopg
            from langgraph.checkpoint.postgres import PostgresSaver
            from psycopg.conninfo import conninfo_to_dict
            from psycopg.rows import dict_row
        except ImportError:
            raise NotACheckpointDatabaseError(
                "reading a PostgreSQL database needs langgraph-checkpoint-postgres and psycopg: "
                "pip install 'threadkeeper[stock]'"
            ) from None
        try:
            params = conninfo_to_dict(url)
        except psycopg.ProgrammingError:
            raise NotACheckpointDatabaseError("the PostgreSQL URL cannot be read (postgresql://user@host:port/database)") from None
        where = params.get("host") or "the local socket"
        where += f":{params['port']}" if params.get("port") else ""
        self.description = f"PostgresSaver database {params.get('dbname', '(default)')!r} on {where}"
        try:
            # The settings PostgresSaver.from_conn_string uses.
            self.conn = psycopg.Connection.connect(url, autocommit=True, prepare_threshold=0, row_factory=dict_row)
        except psycopg.Error as exc:
            reason = (str(exc).strip().splitlines() or ["no reason given"])[-1]
            raise NotACheckpointDatabaseError(f"cannot connect to the {self.description}: {reason}") from None
        try:
            # Every transaction of this session is read-only: PostgreSQL refuses writes.
            self.conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            self._check_schema(len(PostgresSaver.MIGRATIONS) - 1)
        except BaseException:
            self.conn.close()
            raise
        self.saver = PostgresSaver(self.conn)

    def _check_schema(self, latest: int) -> None:
        tables = self.conn.execute(
            "SELECT to_regclass('checkpoints') IS NOT NULL AS checkpoints, "
            "to_regclass('checkpoint_blobs') IS NOT NULL AS blobs, "
            "to_regclass('checkpoint_writes') IS NOT NULL AS writes, "
            "to_regclass('checkpoint_migrations') IS NOT NULL AS migrations"
        ).fetchone()
        if not all(tables.values()):
            raise NotACheckpointDatabaseError(
                f"the {self.description} is not a LangGraph checkpoint database: it has no checkpoints, "
                "checkpoint_blobs, checkpoint_writes and checkpoint_migrations tables as PostgresSaver makes them"
            )
        version = self.conn.execute("SELECT max(v) AS v FROM checkpoint_migrations").fetchone()["v"]
        if version is None or version < latest:
            raise NotACheckpointDatabaseError(
                f"the {self.description} was set up by an older langgraph-checkpoint-postgres (schema {version}, "
                f"this one reads {latest}): run PostgresSaver.setup() on it once, then import again"
            )
        if version > latest:
            raise NotACheckpointDatabaseError(
                f"the {self.description} was set up by a newer langgraph-checkpoint-postgres (schema {version}, "
                f"this one reads {latest}): upgrade langgraph-checkpoint-postgres"
            )

    def _rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        return [tuple(row.values()) for row in self.conn.execute(sql, params).fetchall()]

    def close(self) -> None:
        self.conn.close()


@contextmanager
def open_stock_source(url: str) -> Iterator[StockSource]:
    """The stock checkpoint database at `url`, read-only: `postgresql://...` (or
    `postgres://`), else `sqlite:///path` or a path. Raises
    `NotACheckpointDatabaseError` (one sentence) if it is not one."""
    if url.startswith(("postgresql://", "postgres://")):
        source: StockSource = _PostgresSource(url)
    else:
        try:
            path = sqlite_path(url)
        except ValueError as exc:
            raise NotACheckpointDatabaseError(f"{exc}, or postgresql://...") from None
        source = _SqliteSource(path)
    try:
        yield source
    finally:
        source.close()


# -- the copy -------------------------------------------------------------------


@dataclass
class StockImportSummary:
    imported: int = 0
    """Threads copied whole by this run."""
    completed: int = 0
    """Threads an earlier run had begun (or whose owner or times it had not set yet), finished."""
    unchanged: int = 0
    """Threads already in the store as the source has them."""
    older: int = 0
    """Threads last updated before `since`."""
    failed: int = 0
    checkpoints: int = 0
    writes: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """The closing line of `threadkeeper import-checkpoints`."""
        looked_at = self.imported + self.completed + self.unchanged + self.older + self.failed
        rate = looked_at / self.seconds if self.seconds > 0 else 0.0
        line = (
            f"imported {self.imported:,} threads ({self.checkpoints:,} checkpoints, {self.writes:,} writes), "
            f"completed {self.completed:,} begun before, {self.unchanged:,} already there"
        )
        if self.older:
            line += f", {self.older:,} last updated before --since"
        return line + f", failed {self.failed:,}, in {self.seconds:.1f} s ({rate:,.1f} threads/s)"


def metadata_path(user_key: str) -> list[str]:
    """`metadata.user_id` (or `user_id`) as the keys to follow into checkpoint metadata."""
    keys = user_key.split(".")
    if keys[0] == "metadata":
        keys = keys[1:]
    if not keys or not all(keys):
        raise ValueError(f"--user-key {user_key!r} names no metadata key: write it as metadata.user_id")
    return keys


def import_checkpoints(
    target: ThreadSaver,
    source: StockSource,
    *,
    user_key: str = DEFAULT_USER_KEY,
    since: datetime | None = None,
    report: Callable[[str], Any] = print,
    progress: Callable[[int, int], Any] | None = None,
) -> StockImportSummary:
    """Copy every thread of `source` (last updated at or after `since`, if given) into `target`.

    `report` gets one line per thread that could not be imported; `progress`
    gets (threads done, threads in the source) after each thread.
    """
    keys = metadata_path(user_key)
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=timezone.utc)
    summary = StockImportSummary()
    started = time.perf_counter()
    total = source.count_threads()
    for done, thread_id in enumerate(source.thread_ids(), start=1):
        copy = _ThreadCopy(target, source, thread_id, keys)
        try:
            outcome = copy.run(since)
        except (StoreError, ValueError) as exc:
            summary.failed += 1
            line = f"thread {thread_id}: not imported: {exc}"
            summary.problems.append(line)
            report(line)
        else:
            setattr(summary, outcome, getattr(summary, outcome) + 1)
        summary.checkpoints += copy.checkpoints
        summary.writes += copy.writes
        if progress is not None:
            progress(done, total)
    summary.seconds = time.perf_counter() - started
    return summary


class _ThreadCopy:
    """One thread's copy; `run` says which count of the summary it adds to."""

    def __init__(self, target: ThreadSaver, source: StockSource, thread_id: str, user_keys: list[str]) -> None:
        self.target, self.source, self.thread_id, self.user_keys = target, source, thread_id, user_keys
        self.checkpoints = self.writes = 0
        self._owner: str | None = None
        """The first owner named by the checkpoints read so far, oldest first."""
        self._said_at: dict[str, int] = {}
        """When each message was first in a checkpoint (unix microseconds, whole milliseconds), by id."""
        self._seen: set[tuple[str, str, Any]] = set()
        """(namespace, channel, version) of the values put so far: a checkpoint puts only the others."""

    def run(self, since: datetime | None) -> str:
        keys = self.source.checkpoint_keys(self.thread_id)
        newest = self.source.get(self.thread_id, *keys[-1]) if keys else None
        if newest is None:
            return "unchanged"  # deleted from the source meanwhile
        if since is not None and _moment(newest.checkpoint["ts"]) < since:
            return "older"
        first = self.source.get(self.thread_id, *keys[0]) if len(keys) > 1 else newest
        try:
            row = self.target.threads.get(self.thread_id)
        except ThreadNotFoundError:
            self._copy(keys, first, newest)
            self._finish(first, newest)
            return "imported"
        if (copied := self._target_tuple(keys[-1])) is not None:
            present = len(keys)
            wrote = self._add_missing_writes(newest, copied)
        elif self._target_tuple(keys[0]) is not None:
            present = self._present_prefix(keys)
            last = keys[present - 1]
            self._add_missing_writes(self.source.get(self.thread_id, *last), self._target_tuple(last))
            wrote = True
        else:
            raise ThreadIdTakenError("the store has a different thread with this id")
        if not wrote and (row.user_id, row.created_at) == (self._first_owner(keys, first), iso(first.checkpoint["ts"])):
            return "unchanged"
        for key in keys[:present]:  # what an earlier run copied: for the owner and the message times
            if (item := self._read(key, first, newest)) is not None:
                self._note(item)
        self._copy(keys[present:], first, newest)
        self._finish(first, newest)
        return "completed"

    # -- reading

    def _read(self, key: tuple[str, str], first: CheckpointTuple, newest: CheckpointTuple) -> CheckpointTuple | None:
        if key == _key(first):
            return first
        if key == _key(newest):
            return newest
        return self.source.get(self.thread_id, *key)

    def _note(self, item: CheckpointTuple) -> None:
        """Take the owner and the times of new messages from a checkpoint, in order."""
        if self._owner is None:
            self._owner = _lookup(item.metadata, self.user_keys)
        messages = item.checkpoint["channel_values"].get("messages")
        if isinstance(messages, list):  # in any namespace: a subgraph may say it first
            when = None
            for message in messages:
                message_id = getattr(message, "id", None)
                if message_id is not None and message_id not in self._said_at:
                    when = when or to_micros(item.checkpoint["ts"]) // 1_000 * 1_000
                    self._said_at[message_id] = when

    def _first_owner(self, keys: list[tuple[str, str]], first: CheckpointTuple) -> str | None:
        """The first value of the user key in the thread's checkpoints, oldest first."""
        for key in keys:
            item = first if key == keys[0] else self.source.get(self.thread_id, *key)
            value = _lookup(item.metadata if item else None, self.user_keys)
            if value is not None:
                return value
        return None

    def _target_tuple(self, key: tuple[str, str]) -> CheckpointTuple | None:
        return self.target.get_tuple(_config(self.thread_id, *key))

    def _present_prefix(self, keys: list[tuple[str, str]]) -> int:
        """How many of `keys` (oldest first) the store holds: the first is there, the last is not."""
        there, missing = 0, len(keys) - 1
        while missing - there > 1:
            middle = (there + missing) // 2
            if self._target_tuple(keys[middle]) is not None:
                there = middle
            else:
                missing = middle
        return missing

    # -- writing

    def _copy(self, keys: list[tuple[str, str]], first: CheckpointTuple, newest: CheckpointTuple) -> None:
        """Put the checkpoints of `keys`, oldest first, each followed by its pending writes."""
        for key in keys:
            item = self._read(key, first, newest)
            if item is None:
                continue  # deleted from the source meanwhile
            self._note(item)
            self._put(item)
            self._put_writes(item, item.pending_writes or [])

    def _put(self, item: CheckpointTuple) -> None:
        ns = item.config["configurable"].get("checkpoint_ns", "")
        parent = item.parent_config["configurable"].get("checkpoint_id") if item.parent_config else None
        versions = item.checkpoint["channel_versions"]
        new_versions = {channel: v for channel, v in versions.items() if (ns, channel, v) not in self._seen}
        self.target.put(_config(self.thread_id, ns, parent), item.checkpoint, item.metadata, new_versions)
        self._seen.update((ns, channel, v) for channel, v in versions.items())
        self.checkpoints += 1

    def _put_writes(self, item: CheckpointTuple, writes: list) -> None:
        """The writes of each task in one call, in the source's order."""
        by_task: dict[str, list[tuple[str, Any]]] = {}
        for task_id, channel, value in writes:
            by_task.setdefault(task_id, []).append((channel, value))
        for task_id, task_writes in by_task.items():
            self.target.put_writes(item.config, task_writes, task_id)
            self.writes += len(task_writes)

    def _add_missing_writes(self, item: CheckpointTuple | None, copied: CheckpointTuple | None) -> bool:
        """Put the writes of tasks the store's copy of a checkpoint lacks (a run stopped
        between the checkpoint and its writes); whether there were any."""
        if item is None or copied is None:
            return False
        there = {task_id for task_id, _, _ in copied.pending_writes or []}
        missing = [w for w in item.pending_writes or [] if w[0] not in there]
        self._put_writes(item, missing)
        return bool(missing)

    def _finish(self, first: CheckpointTuple, newest: CheckpointTuple) -> None:
        """Date the messages, then set the owner and times: the last write, by which the
        next run knows the thread was finished."""
        conversation.date_messages(self.target, self.thread_id, self._said_at)
        updated = newest.checkpoint["ts"]
        ours = self.target.get_tuple(_config(self.thread_id, "", None))
        if ours is not None and _moment(ours.checkpoint["ts"]) > _moment(updated):
            updated = ours.checkpoint["ts"]  # the thread went on here after an earlier import
        self.target.threads.set_origin(
            self.thread_id, user_id=self._owner, created_at=iso(first.checkpoint["ts"]), updated_at=iso(updated)
        )


def _lookup(metadata: Any, keys: list[str]) -> str | None:
    value = metadata
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    if value in (None, ""):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"its metadata.{'.'.join(keys)} is not a user id but {type(value).__name__} {str(value)[:40]!r}")


def _config(thread_id: str, ns: str, checkpoint_id: str | None) -> dict[str, Any]:
    configurable = {"thread_id": thread_id, "checkpoint_ns": ns}
    if checkpoint_id is not None:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}


def _key(item: CheckpointTuple) -> tuple[str, str]:
    configurable = item.config["configurable"]
    return configurable.get("checkpoint_ns", ""), configurable["checkpoint_id"]


def _moment(ts: str) -> datetime:
    moment = datetime.fromisoformat(ts)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)
