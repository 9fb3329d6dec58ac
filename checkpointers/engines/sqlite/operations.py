"""Whole-thread operations: deleting threads (`delete_threads`), copying one
(`copy_thread`), dropping checkpoints (`delete_for_runs`, `prune`) and the
values and messages nothing refers to any more (`_collect_garbage`),
forgetting what the saver cached of them (`_forget`), and giving the space
back (`erase_traces`, `compact`): the `_ThreadOperations` part of
`ThreadSaver` (see `checkpointers.engines.sqlite.saver`).

Uses of the saver: `conn`, `path`, `attachments`, `_lock`, `_cipher`,
`_lists`, `_digests`, `_thread_states`; `_write` and `_thread_key` (`saver`);
the readers of `reads` and `message_reads`; `_write_segment` (`values`);
`_merge_backlog` (`deferred`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from checkpointers import codec, stats
from checkpointers.engines.sqlite import fts
from checkpointers.engines.sqlite import reseal
from checkpointers.codec import (
    KIND_MESSAGE_DICT,
    KIND_SERDE,
    db_id,
)
from checkpointers.messages import referenced_numbers, utc_now
from checkpointers.encryption import value_place, write_place
from checkpointers.errors import ThreadExistsError, ThreadNotFoundError
from checkpointers.storable import check_id

logger = logging.getLogger(__name__)

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


class _ThreadOperations:
    """Whole-thread operations and storage upkeep (see the module docstring)."""

    # -- deleting, copying, pruning -----------------------------------------

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
        return referenced_numbers(kind, self._load(type_, value, place) if kind == KIND_MESSAGE_DICT else value)

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

    async def acompact(self, max_pages: int | None = None) -> int:
        return await asyncio.to_thread(self.compact, max_pages)
