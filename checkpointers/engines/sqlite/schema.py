"""The database schema, as numbered migrations applied in order and recorded.

Each migration is a small function that receives a connection inside a write
transaction. Append new ones to `MIGRATIONS`; never edit one that has shipped.

Tables a user can query by hand:

* `threads`: one row per conversation (the thread index), owner, title, times.
* `checkpoints`: one row per LangGraph checkpoint, without its channel values.
* `channel_values`: a channel's value at one version, written once when it
  changes. A list of messages is stored as the message numbers it holds, as a
  delta against an earlier list of the same channel (`base_no`, `keep`).
* `messages`: each new message of a thread, serialised once, numbered per thread.
* `message_segments`: older messages, sealed in compressed groups of
  `SEGMENT_SIZE` (`nos` lists the numbers each holds).
* `writes`: pending writes of a task against a checkpoint.
* `attachments`: the SQLite database attached to a thread, if any.
* `message_search`: the full-text index of human and AI messages (FTS5,
  contentless: it knows which words occur in which message, not the text).
* `search_backlog`: words of new messages not yet moved into `message_search`
  (see `checkpointers/search.py`).
* `store_meta`: settings of the store itself, as key and value.
* `message_times`: when a thread's messages were stored (unix milliseconds),
  kept by a trigger on `messages`: a row dates its message and the following
  ones up to the next row (see `m004_session_messages`).
* `sweeps`: one row per retention sweep: when, how many threads, how many bytes.
* `message_metadata`: typed metadata and given creation times of messages
  written through the sessions API or an import (`saver.sessions`).
* `usage_days`, `usage_user_days`, `usage_users`: usage statistics, one row per
  UTC day, per active user and day, and per user, kept as the store writes
  (see `checkpointers/stats.py`).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from datetime import datetime, timezone

from checkpointers.errors import ForeignDatabaseError, SchemaTooNewError

log = logging.getLogger("threadkeeper.schema")


def m001_initial(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE threads (
            thread_key INTEGER PRIMARY KEY AUTOINCREMENT,
            thread_id TEXT NOT NULL UNIQUE,
            user_id TEXT,
            title TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            message_count INTEGER NOT NULL DEFAULT 0,
            pinned INTEGER NOT NULL DEFAULT 0,
            metadata TEXT NOT NULL DEFAULT '{}',
            next_value_no INTEGER NOT NULL DEFAULT 1,
            next_message_no INTEGER NOT NULL DEFAULT 1,
            gc_epoch INTEGER NOT NULL DEFAULT 0
        )
        """
    )
    conn.execute(
        "CREATE INDEX threads_by_user_updated ON threads (user_id, updated_at, thread_id)"
    )
    conn.execute(
        """
        CREATE TABLE checkpoints (
            thread_key INTEGER NOT NULL,
            checkpoint_ns TEXT NOT NULL,
            checkpoint_id TEXT NOT NULL,
            parent_checkpoint_id TEXT,
            run_id TEXT,
            type TEXT NOT NULL,
            checkpoint BLOB NOT NULL,
            metadata TEXT NOT NULL,
            PRIMARY KEY (thread_key, checkpoint_ns, checkpoint_id)
        ) WITHOUT ROWID
        """
    )
    conn.execute(
        "CREATE INDEX checkpoints_by_run ON checkpoints (run_id) WHERE run_id IS NOT NULL"
    )
    conn.execute(
        """
        CREATE TABLE channel_values (
            thread_key INTEGER NOT NULL,
            value_no INTEGER NOT NULL,
            checkpoint_ns TEXT NOT NULL,
            channel TEXT NOT NULL,
            version NOT NULL,
            kind INTEGER NOT NULL,
            type TEXT,
            value BLOB,
            base_no INTEGER,
            keep INTEGER,
            depth INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (thread_key, value_no)
        ) WITHOUT ROWID
        """
    )
    conn.execute(
        # Not unique: a version written twice (a re-put) resolves to the newest
        # row, and older rows stay intact for lists stored as deltas against them.
        "CREATE INDEX channel_values_by_version "
        "ON channel_values (thread_key, checkpoint_ns, channel, version, value_no)"
    )
    conn.execute(
        """
        CREATE TABLE messages (
            thread_key INTEGER NOT NULL,
            message_no INTEGER NOT NULL,
            type TEXT NOT NULL,
            value BLOB NOT NULL,
            PRIMARY KEY (thread_key, message_no)
        ) WITHOUT ROWID
        """
    )
    conn.execute(
        """
        CREATE TABLE message_segments (
            thread_key INTEGER NOT NULL,
            first_no INTEGER NOT NULL,
            last_no INTEGER NOT NULL,
            nos BLOB NOT NULL,
            value BLOB NOT NULL,
            PRIMARY KEY (thread_key, first_no)
        ) WITHOUT ROWID
        """
    )
    conn.execute(
        """
        CREATE TABLE writes (
            thread_key INTEGER NOT NULL,
            checkpoint_ns TEXT NOT NULL,
            checkpoint_id TEXT NOT NULL,
            task_id TEXT NOT NULL,
            idx INTEGER NOT NULL,
            task_path TEXT NOT NULL,
            channel TEXT NOT NULL,
            kind INTEGER NOT NULL,
            type TEXT,
            value BLOB,
            PRIMARY KEY (thread_key, checkpoint_ns, checkpoint_id, task_id, idx)
        ) WITHOUT ROWID
        """
    )


def m002_attachments(conn: sqlite3.Connection) -> None:
    # One database file per thread; the file itself lives beside the store,
    # under `attachments/`, at the path recorded here (relative to the store).
    conn.execute(
        """
        CREATE TABLE attachments (
            thread_key INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            file TEXT NOT NULL,
            bytes INTEGER NOT NULL,
            tables TEXT NOT NULL DEFAULT '[]',
            attached_at TEXT NOT NULL
        )
        """
    )


def m003_message_search(conn: sqlite3.Connection) -> None:
    # rowid = thread_key << 32 | message_no; see checkpointers/search.py.
    conn.execute(
        "CREATE VIRTUAL TABLE message_search USING fts5("
        "body, content='', detail=none, tokenize='unicode61 remove_diacritics 2')"
    )
    conn.execute("CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    # Messages stored before this migration are indexed by the saver on open
    # (it can decode them; this function cannot).
    has_messages = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM messages) OR EXISTS (SELECT 1 FROM message_segments)"
    ).fetchone()[0]
    conn.execute(
        "INSERT INTO store_meta (key, value) VALUES ('message_search', ?)",
        ("rebuild" if has_messages else "ready",),
    )


def m004_session_messages(conn: sqlite3.Connection) -> None:
    # When messages were stored (unix milliseconds), kept by a trigger on
    # `messages`. A row (thread_key, message_no, t) dates message_no and every
    # later message of the thread up to the next row, so messages stored in the
    # same millisecond share one row: a graph turn stores its human message
    # (twice: as input, then with its id) in one write and the reply in
    # another, about two rows of some 20 bytes. Rows outlive the messages they
    # date (sealing into segments deletes from `messages`); they go with the thread.
    conn.execute(
        """
        CREATE TABLE message_times (
            thread_key INTEGER NOT NULL,
            message_no INTEGER NOT NULL,
            created_at INTEGER NOT NULL,
            PRIMARY KEY (thread_key, message_no)
        ) WITHOUT ROWID
        """
    )
    # 'now' is one instant within a statement, so both halves agree.
    now = "(CAST(strftime('%s', 'now') AS INTEGER) * 1000 + CAST(substr(strftime('%f', 'now'), 4) AS INTEGER))"
    conn.execute(
        f"""
        CREATE TRIGGER messages_record_time AFTER INSERT ON messages
        WHEN (SELECT created_at FROM message_times WHERE thread_key = new.thread_key
              ORDER BY message_no DESC LIMIT 1) IS NOT {now}
        BEGIN
            INSERT OR REPLACE INTO message_times (thread_key, message_no, created_at)
            VALUES (new.thread_key, new.message_no, {now});
        END
        """
    )
    # Only messages written through `saver.sessions` or an import have a row:
    # metadata (typed JSON, see checkpointers/metadata.py) and a creation time
    # in microseconds when one was given. Keyed by message id, so a message
    # keeps both when its content is replaced.
    conn.execute(
        """
        CREATE TABLE message_metadata (
            thread_key INTEGER NOT NULL,
            message_id TEXT NOT NULL,
            created_at INTEGER,
            metadata TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (thread_key, message_id)
        ) WITHOUT ROWID
        """
    )


def m005_retention(conn: sqlite3.Connection) -> None:
    # The sweeper asks for the threads least recently updated, of every user;
    # pinned threads are exempt, so they stay out of the index.
    conn.execute("CREATE INDEX threads_by_expiry ON threads (updated_at, thread_id) WHERE pinned = 0")
    conn.execute(
        """
        CREATE TABLE sweeps (
            sweep_no INTEGER PRIMARY KEY,
            started_at TEXT NOT NULL,
            finished_at TEXT NOT NULL,
            strategy TEXT NOT NULL,
            cutoff TEXT NOT NULL,
            threads INTEGER NOT NULL,
            bytes INTEGER NOT NULL,
            dry_run INTEGER NOT NULL,
            host TEXT NOT NULL
        )
        """
    )


def m006_search_backlog(conn: sqlite3.Connection) -> None:
    # A new message's words wait here (one ordinary row, key as in
    # message_search: thread_key << 32 | message_no) until a batch of them is
    # moved into message_search; search reads both. See checkpointers/search.py.
    conn.execute("CREATE TABLE search_backlog (message_key INTEGER PRIMARY KEY, body TEXT NOT NULL)")


def m007_usage_stats(conn: sqlite3.Connection) -> None:
    # Counters only ever grow (see checkpointers/stats.py); they start at this
    # migration, except threads: those already stored are counted on the day
    # they were created, so `threads_created` agrees with the thread index.
    counters = ",\n".join(f"{name} INTEGER NOT NULL DEFAULT 0" for name in (
        "threads_created", "threads_deleted", "threads_swept", "sweeps", "human_messages", "ai_messages",
        "tool_messages", "other_messages", "tokens_in", "tokens_out", "estimated_tokens_in",
        "estimated_tokens_out", "attachments_added",
    ))
    conn.execute(f"CREATE TABLE usage_days (day TEXT PRIMARY KEY, {counters}, database_bytes INTEGER) WITHOUT ROWID")
    conn.execute(
        """
        CREATE TABLE usage_user_days (
            day TEXT NOT NULL,
            user_id TEXT NOT NULL,
            messages INTEGER NOT NULL DEFAULT 0,
            threads_created INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (day, user_id)
        ) WITHOUT ROWID
        """
    )
    # Each user's figures over all time, so "active in the last N days" and "most active
    # ever" read one row per user instead of one per user and day.
    conn.execute(
        """
        CREATE TABLE usage_users (
            user_id TEXT PRIMARY KEY,
            last_day TEXT NOT NULL,
            active_days INTEGER NOT NULL DEFAULT 0,
            messages INTEGER NOT NULL DEFAULT 0,
            threads_created INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID
        """
    )
    conn.execute(
        "INSERT INTO usage_days (day, threads_created) "
        "SELECT substr(created_at, 1, 10), count(*) FROM threads GROUP BY 1"
    )
    conn.execute(
        "INSERT INTO usage_user_days (day, user_id, threads_created) "
        "SELECT substr(created_at, 1, 10), user_id, count(*) FROM threads WHERE user_id IS NOT NULL GROUP BY 1, 2"
    )
    conn.execute(
        "INSERT INTO usage_users (user_id, last_day, active_days, threads_created) "
        "SELECT user_id, max(day), count(*), sum(threads_created) FROM usage_user_days GROUP BY user_id"
    )


def m008_compact_rows(conn: sqlite3.Connection) -> None:
    # Rows written from this version on may be in encodings older versions cannot
    # read (`tk.cp2` checkpoints holding their metadata, no value rows for None,
    # task paths as BLOBs; see checkpointers/checkpoint_codec.py and codec.py):
    # the schema version makes an older threadkeeper refuse the file.
    #
    # The index finding a channel's value by version leaves out the channel: the
    # few rows of one version (one step's writes) are told apart by the table's
    # row, which the lookup reads anyway. About 9 bytes less per value row, four
    # a chat turn.
    conn.execute("DROP INDEX channel_values_by_version")
    conn.execute(
        "CREATE INDEX channel_values_by_version ON channel_values (thread_key, checkpoint_ns, version, value_no)"
    )


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    m001_initial,
    m002_attachments,
    m003_message_search,
    m004_session_messages,
    m005_retention,
    m006_search_backlog,
    m007_usage_stats,
    m008_compact_rows,
]
LATEST_VERSION = len(MIGRATIONS)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def current_version(conn: sqlite3.Connection) -> int:
    has_table = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    if not has_table:
        return 0
    (version,) = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return version


def migrate(conn: sqlite3.Connection, path: str) -> None:
    """Bring the schema up to `LATEST_VERSION`; refuse databases we cannot own.

    Runs in a `BEGIN IMMEDIATE` transaction so two processes opening a new file
    at once apply each migration exactly once.
    """
    version = current_version(conn)
    if version == LATEST_VERSION:
        return
    if version > LATEST_VERSION:
        raise SchemaTooNewError(
            f"{path} has schema version {version}, newer than this threadkeeper "
            f"understands ({LATEST_VERSION}); upgrade threadkeeper to open it"
        )
    if version == 0:
        foreign = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
        if foreign:
            names = ", ".join(sorted(n for (n,) in foreign)[:5])
            raise ForeignDatabaseError(
                f"{path} is a SQLite database that threadkeeper did not create "
                f"(it holds tables: {names}); point THREADKEEPER_DATABASE_URL at a new file"
            )
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = current_version(conn)  # another process may have migrated meanwhile
        if version > LATEST_VERSION:
            raise SchemaTooNewError(
                f"{path} has schema version {version}, newer than this threadkeeper "
                f"understands ({LATEST_VERSION}); upgrade threadkeeper to open it"
            )
        if version == 0:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
        for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
            step(conn)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (number, step.__name__, _now()),
            )
        conn.execute(f"PRAGMA user_version = {LATEST_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    if version < LATEST_VERSION:
        log.info("migrated the schema of %s from version %d to %d", path, version, LATEST_VERSION)
