"""Full-text search over messages: an SQLite FTS5 index the saver keeps in step.

The index (`message_search`) is contentless (`content=''`, `detail=none`): it
holds which words occur in which message and nothing else, about 140 bytes a
turn, so message text is not stored a second time. Each row's rowid packs the
thread and the message number (`thread_key << 32 | message_no`), so "does this
thread mention X" is a rowid-range probe that touches one thread's entries.

Rows are added in the transaction that first stores a message, and removed in
the transaction that deletes it (thread deletion, pruning, garbage
collection). A contentless FTS5 table forgets a row only when told the exact
words it was given, so removal recomputes them from the stored message with
the same `search_words()`: change that function only together with a
migration that rebuilds the index.

Search matches whole words, case- and accent-insensitively; every word of the
query must occur in one message. Deleted words stay in FTS5's older segments
until they are merged, so deleting threads ends with `purge()` (FTS5's
`optimize`), after which a deleted word is gone from the file.
"""

from __future__ import annotations

import re
import sqlite3
import unicodedata
from collections.abc import Iterable

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

MAX_INDEXED_CHARS = 20_000
"""Only the start of a very long message is indexed (a pasted log, a data dump)."""

MAX_QUERY_WORDS = 16

_WORD = re.compile(r"[^\W_]+")
ROWID_SHIFT = 32
ROWID_SPAN = 1 << ROWID_SHIFT


def message_text(message: BaseMessage) -> str:
    """The plain text of a message, whether its content is a string or blocks."""
    content = message.content
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
    return " ".join(parts)


def words_of(text: str) -> list[str]:
    """The words of a text as the index sees them: NFC, case-folded, split on anything not a letter or digit."""
    return _WORD.findall(unicodedata.normalize("NFC", text).casefold())


def search_words(message: BaseMessage) -> str | None:
    """What is indexed for a message (None: it is not indexed).

    People search what they and the assistant said, so human and AI messages
    are indexed; tool output and system prompts are not.
    """
    if not isinstance(message, (HumanMessage, AIMessage)):
        return None
    words = words_of(message_text(message)[:MAX_INDEXED_CHARS])
    return " ".join(words) or None


def rowid(thread_key: int, message_no: int) -> int:
    return (thread_key << ROWID_SHIFT) | message_no


def match_expression(query: str) -> str | None:
    """An FTS5 MATCH expression requiring every word of `query` (None: no words).

    Words are quoted, so nothing a user types is read as FTS5 syntax.
    """
    words = list(dict.fromkeys(words_of(query)))[:MAX_QUERY_WORDS]
    if not words:
        return None
    return " AND ".join(f'"{w}"' for w in words)


def add(conn: sqlite3.Connection, rows: Iterable[tuple[int, str]]) -> None:
    """Index `(rowid, words)` pairs."""
    conn.executemany("INSERT INTO message_search (rowid, body) VALUES (?, ?)", rows)


def remove(conn: sqlite3.Connection, rows: Iterable[tuple[int, str]]) -> None:
    """Unindex `(rowid, words)` pairs, given exactly as they were added."""
    conn.executemany(
        "INSERT INTO message_search (message_search, rowid, body) VALUES ('delete', ?, ?)", rows
    )


def purge(conn: sqlite3.Connection) -> None:
    """Merge the index into one segment, dropping every trace of removed rows.

    Costs time in proportion to the whole index (about 0.1 s per 200,000
    messages here), so callers run it once after a batch of deletions.
    """
    conn.execute("INSERT INTO message_search (message_search) VALUES ('optimize')")
