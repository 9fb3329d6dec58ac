"""The deferred writes: how a chat turn becomes one commit. The `_DeferredWriting`
part of `ThreadSaver` (see `checkpointers.engines.sqlite.saver`).

A run's input checkpoint, a step's checkpoint the run goes on from
(`checkpoint_codec.run_goes_on`), and a running graph's task writes (`_may_defer`) are
serialised when LangGraph hands them over and wait in `_deferred` for the
transaction of what the thread saves next (`_carry_deferred`), or for any
other write of the saver (`_write_deferred`); what nothing carries within
`DEFERRED_WRITES_FLUSH_AFTER` the flusher thread writes (`_flush_when_due`),
which also merges the search backlog when it has grown. `put` and
`put_writes` (in `saver`) decide what waits; this module holds the waiting.

Uses of the saver: `conn`, `path`, `_lock`, `_defer_writes`, `_deferred`,
`_deferred_cond` (which guards `_deferred`, `_latest_put` and `_preparing`),
`_writes_queued`, `_flusher`, `_closing`, `_backlog_rows`,
`_backlog_merge_due`, `_thread_states`; `_write`, `_read_thread_state` and
`_drop_cached_thread` (`saver`); `_insert_checkpoint`, `_insert_writes` and
`_pre_encode` (`values`).
"""

from __future__ import annotations

import atexit
import logging
import sqlite3
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langgraph.checkpoint.base import WRITES_IDX_MAP, ChannelVersions

from checkpointers.engines.sqlite import fts
from checkpointers.messages import (
    copy_message_list as _copy_message_list,
    is_message_dict as _is_message_dict,
    is_message_list as _is_message_list,
)
from checkpointers.errors import EncryptionKeyError, StoreUnavailableError, ThreadDeletedError, UnstorableInputError
from checkpointers.engines.sqlite.thread_write import _StaleThreadState, _ThreadTxn, _remember
from checkpointers.engines.sqlite.values import _MISSING, _PreValue

if TYPE_CHECKING:
    from checkpointers.engines.sqlite.saver import ThreadSaver

logger = logging.getLogger(__name__)

FLUSH_RETRY_MAX_S = 5.0
"""The longest the flusher waits before trying a failed write again."""

NULL_TASK_ID = "00000000-0000-0000-0000-000000000000"
"""The task id LangGraph gives writes that belong to no task (updates, resumes)."""


def _retry_may_help(exc: BaseException) -> bool:
    """Whether a failed write may succeed later: the database was busy, full or
    unreachable (or its key changed), as opposed to rows it can never hold."""
    return isinstance(
        exc, (sqlite3.OperationalError, OSError, StoreUnavailableError, EncryptionKeyError, _StaleThreadState)
    )


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


def _goes_on(waiting: list[_DeferredWrites | _DeferredPut], parent: Any) -> Any:
    """What writes of one thread waiting to be carried go on from (`SeenThreads`): None when
    one of them starts the thread (a put with no parent: task writes of the new run may be
    queued before it while it is serialised), else the oldest's parent or checkpoint, else
    `parent` (nothing waits)."""
    if any(type(e) is _DeferredPut and e.parent_id is None for e in waiting):
        return None
    if not waiting:
        return parent
    oldest = waiting[0]
    return oldest.parent_id if type(oldest) is _DeferredPut else oldest.checkpoint_id


class _DeferredWriting:
    """Deferred writes and the flusher: how a turn becomes one commit (see the module docstring)."""

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
                state = self._read_thread_state(thread_id, group[0].user_id, _goes_on(group, None))
                txn = _ThreadTxn(self.conn, thread_id, state, after_commit)
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
        # Input refused at the door is the user's mistake (a warning); a thread deleted while its
        # run wrote it is nobody's (the run's caller is told); anything else is the store's (an error).
        if isinstance(exc, ThreadDeletedError):
            level = logging.INFO
        else:
            level = logging.WARNING if isinstance(exc, UnstorableInputError) else logging.ERROR
        logger.log(
            level, "dropped %d unwritable checkpoint writes of thread %r in %s: %s: %s",
            len(entries), entries[0].thread_id, self.path, type(exc).__name__, exc,
        )

    def _goes_on_from(self, thread_id: str, parent: Any) -> Any:
        """What a write of the thread goes on from (`SeenThreads`): the parent of the oldest of
        its writes waiting to be carried, which the write carries first, else `parent`. A new
        thread's input checkpoint (no parent) waits for the step after it, whose parent is set."""
        with self._deferred_cond:
            waiting = [e for e in self._deferred if e.thread_id == thread_id]
        return _goes_on(waiting, parent)

    def _forget_deferred(self, written: list[_DeferredWrites | _DeferredPut]) -> None:
        with self._deferred_cond:
            done = set(map(id, written))
            self._deferred = [e for e in self._deferred if id(e) not in done]

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


_OPEN_SAVERS: weakref.WeakSet[ThreadSaver] = weakref.WeakSet()
"""Savers that have deferred writes at some point: flushed when the interpreter exits."""


@atexit.register
def _flush_open_savers() -> None:
    for saver in list(_OPEN_SAVERS):
        try:
            saver.flush()
        except Exception:  # closed already, or the store is gone: nothing left to do
            logger.debug("flush at exit failed for %s", saver.path, exc_info=True)
