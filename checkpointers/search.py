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

With an encryption key, no word is written to the index: each distinct word of
a message is indexed as an opaque token, the first 10 base32 characters of
HMAC-SHA256 under a search subkey of the key (`hashed_words`), and a query's
words are hashed the same way (`match_expression(query, token)`), so whole-word
search still works. The trade-off: tokens are deterministic, so whoever holds
the file learns which messages share a word and how often a token occurs
(equality and frequency), though not the words; and there is no prefix or
substring search of messages. Titles are encrypted too, so with a key they are
matched in Python after decryption, over the user's own threads
(`ThreadIndex.search`), not by SQL `LIKE`.
"""

from __future__ import annotations

import re
import sqlite3
import unicodedata
from collections.abc import Callable, Iterable

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


def without_accents(word: str) -> str:
    """The word with combining marks removed, as the tokenizer's `remove_diacritics` sees it."""
    if word.isascii():
        return word
    decomposed = unicodedata.normalize("NFD", word)
    return unicodedata.normalize("NFC", "".join(c for c in decomposed if not unicodedata.combining(c)))


def hashed_words(words: str, token: Callable[[str], str]) -> str:
    """What an encrypted store indexes for `words` (from `search_words`): the token of each
    distinct word without accents. Like `search_words`, change it only with a rebuild of the index."""
    return " ".join(dict.fromkeys(token(without_accents(w)) for w in words.split()))


def match_expression(query: str, token: Callable[[str], str] | None = None) -> str | None:
    """An FTS5 MATCH expression requiring every word of `query` (None: no words).

    Words are quoted, so nothing a user types is read as FTS5 syntax. With
    `token` (an encrypted store), each word is replaced by its token.
    """
    words = list(dict.fromkeys(words_of(query)))[:MAX_QUERY_WORDS]
    if not words:
        return None
    if token is not None:
        words = [token(without_accents(w)) for w in words]
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

    Takes time in proportion to the whole index (about 0.1 s per 200,000
    messages here), so callers run it once after a batch of deletions. It is
    one statement on purpose: FTS5's incremental form ('merge' with a negative
    page count) corrupts the index in SQLite 3.40 when other writes land
    between its steps.
    """
    conn.execute("INSERT INTO message_search (message_search) VALUES ('optimize')")
