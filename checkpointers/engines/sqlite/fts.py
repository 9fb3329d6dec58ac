"""Full-text search on SQLite: an FTS5 index the saver keeps in step.

The index (`message_search`) is contentless (`content=''`, `detail=none`): it
holds which words occur in which message and nothing else, about 140 bytes a
turn, so message text is not stored a second time. Each row's rowid packs the
thread and the message number (`thread_key << 32 | message_no`), so "does this
thread mention X" is a rowid-range probe that touches one thread's entries.

The words of a new message first go to `search_backlog`, in the transaction
that stores the message, and move into `message_search` in batches
(`merge_backlog`: the saver's flusher thread does it every `BACKLOG_MERGE_AT`
rows, and on close and `purge_search_index`). Adding one row to FTS5 writes a new segment and
its bookkeeping, about 7 pages and 70 µs per commit, as much as the rest of a
chat turn's write; a backlog row is one row of an ordinary table. Search reads
both: the backlog holds each message's words as the tokenizer folds them
(`search.backlog_body`, `search.fold`), space-delimited, so a word is found
there by `instr` exactly when FTS5 would find it after the merge.

Rows are removed in the transaction that deletes their message (thread
deletion, pruning, garbage collection), from the backlog or from the index. A
contentless FTS5 table forgets a row only when told the words it was given, so
removal recomputes them from the stored message with the same
`search.search_words()`: change that function only together with a migration
that rebuilds the index.

Deleted words stay in FTS5's older segments until they are merged, so
deleting threads ends with `purge()` (FTS5's `optimize`), after which a
deleted word is gone from the file. What search matches, and how an encrypted
store's words are hashed, is `checkpointers.search`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable

from checkpointers.search import query_words, fold

BACKLOG_MERGE_AT = 512
"""Backlog rows a saver writes before its flusher moves the backlog into the index."""

ROWID_SHIFT = 32
ROWID_SPAN = 1 << ROWID_SHIFT


def rowid(thread_key: int, message_no: int) -> int:
    return (thread_key << ROWID_SHIFT) | message_no


def match_expression(query: str, token: Callable[[str], str] | None = None) -> str | None:
    """An FTS5 MATCH expression requiring every word of `query` (None: no words).

    Words are quoted, so nothing a user types is read as FTS5 syntax. With
    `token` (an encrypted store), each word is replaced by its token.
    """
    words = query_words(query, token)
    return " AND ".join(f'"{w}"' for w in words) if words else None


def words_probe(query: str, token: Callable[[str], str] | None = None) -> tuple[str, list[str]] | None:
    """SQL true when a thread (`thread_key` of the outer query) has a message holding
    every word of `query`, in the index or in the backlog, and its parameters (None: no words).

    Both halves probe only that thread's key range."""
    match = match_expression(query, token)
    if match is None:
        return None
    # In the backlog a word is found by `instr`, folded as the tokenizer folds it.
    needles = [f" {fold(w)} " for w in query_words(query, token)]
    thread_range = f"BETWEEN thread_key << {ROWID_SHIFT} AND (thread_key << {ROWID_SHIFT}) + {ROWID_SPAN - 1}"
    sql = (
        f"(EXISTS (SELECT 1 FROM message_search WHERE message_search MATCH ? AND message_search.rowid {thread_range})"
        f" OR EXISTS (SELECT 1 FROM search_backlog WHERE message_key {thread_range} AND "
        + " AND ".join(["instr(body, ?) > 0"] * len(needles))
        + "))"
    )
    return sql, [match, *needles]


def add(conn: sqlite3.Connection, rows: Iterable[tuple[int, str]]) -> None:
    """Index `(rowid, words)` pairs now, bypassing the backlog."""
    conn.executemany("INSERT INTO message_search (rowid, body) VALUES (?, ?)", rows)


def merge_backlog(conn: sqlite3.Connection) -> int:
    """Move every backlog row into the index, inside the caller's transaction; returns how many."""
    moved = conn.execute("INSERT INTO message_search (rowid, body) SELECT message_key, body FROM search_backlog").rowcount
    if moved:
        conn.execute("DELETE FROM search_backlog")
    return moved


def remove(conn: sqlite3.Connection, rows: Iterable[tuple[int, str]]) -> None:
    """Forget `(rowid, words)` pairs (words as `search_words` gave them when added),
    whether they still wait in the backlog or are in the index."""
    rows = list(rows)
    if not rows:
        return
    keys = json.dumps([key for key, _ in rows])
    waiting = {
        key for (key,) in conn.execute(
            "SELECT message_key FROM search_backlog WHERE message_key IN (SELECT value FROM json_each(?))", (keys,)
        )
    }
    if waiting:
        conn.execute("DELETE FROM search_backlog WHERE message_key IN (SELECT value FROM json_each(?))", (keys,))
    conn.executemany(
        "INSERT INTO message_search (message_search, rowid, body) VALUES ('delete', ?, ?)",
        [row for row in rows if row[0] not in waiting],
    )


def purge(conn: sqlite3.Connection) -> None:
    """Merge the index into one segment, dropping every trace of removed rows.

    Takes time in proportion to the whole index (about 0.1 s per 200,000
    messages here), so callers run it once after a batch of deletions. It is
    one statement on purpose: FTS5's incremental form ('merge' with a negative
    page count) corrupts the index in SQLite 3.40 when other writes land
    between its steps.
    """
    conn.execute("INSERT INTO message_search (message_search) VALUES ('optimize')")
