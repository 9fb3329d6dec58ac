"""Full-text search over messages: an SQLite FTS5 index the saver keeps in step.

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
(`backlog_body`, `fold`), space-delimited, so a word is found there by `instr`
exactly when FTS5 would find it after the merge.

Rows are removed in the transaction that deletes their message (thread
deletion, pruning, garbage collection), from the backlog or from the index. A
contentless FTS5 table forgets a row only when told the words it was given, so
removal recomputes them from the stored message with the same
`search_words()`: change that function only together with a migration that
rebuilds the index.

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

import json
import re
import sqlite3
import threading
import unicodedata
from collections.abc import Callable, Iterable

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

MAX_INDEXED_CHARS = 20_000
"""Only the start of a very long message is indexed (a pasted log, a data dump)."""

MAX_QUERY_WORDS = 16

TOKENIZE = "unicode61 remove_diacritics 2"
"""The tokenizer of `message_search` (`schema.m003_message_search`)."""

BACKLOG_MERGE_AT = 512
"""Backlog rows a saver writes before its flusher moves the backlog into the index."""

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


def indexed_words(message: BaseMessage, token: Callable[[str], str] | None = None) -> str | None:
    """What a store indexes for a message (None: nothing): its `search_words`, or with
    `token` (an encrypted store, either engine) their keyed hashes (`hashed_words`)."""
    words = search_words(message)
    if words is None or token is None:
        return words
    return hashed_words(words, token)


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


def _query_words(query: str, token: Callable[[str], str] | None) -> list[str]:
    """The distinct words of a query that a message must all contain; with `token`
    (an encrypted store), each replaced by its token."""
    words = list(dict.fromkeys(words_of(query)))[:MAX_QUERY_WORDS]
    if token is not None:
        words = [token(without_accents(w)) for w in words]
    return words


def match_expression(query: str, token: Callable[[str], str] | None = None) -> str | None:
    """An FTS5 MATCH expression requiring every word of `query` (None: no words).

    Words are quoted, so nothing a user types is read as FTS5 syntax. With
    `token` (an encrypted store), each word is replaced by its token.
    """
    words = _query_words(query, token)
    return " AND ".join(f'"{w}"' for w in words) if words else None


class _Folding:
    """What the tokenizer makes of each character, asked of SQLite once per character.

    FTS5's unicode61 folds case and, for Latin letters, removes diacritics,
    one code point at a time; characters that are not part of a token split
    words. Python has no copy of its tables, so each non-ASCII character met is
    put to an in-memory FTS5 table with the same tokenizer, and the answer kept.
    """

    def __init__(self) -> None:
        self._chars: dict[str, str] = {}
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def char(self, ch: str) -> str:
        folded = self._chars.get(ch)
        if folded is None:
            with self._lock:
                if self._conn is None:
                    self._conn = sqlite3.connect(":memory:", check_same_thread=False)
                    self._conn.execute(f"CREATE VIRTUAL TABLE probe USING fts5(body, tokenize='{TOKENIZE}')")
                    self._conn.execute("CREATE VIRTUAL TABLE probe_terms USING fts5vocab(probe, row)")
                self._conn.execute("DELETE FROM probe")
                self._conn.execute("INSERT INTO probe (body) VALUES (?)", (ch,))
                terms = [t for (t,) in self._conn.execute("SELECT term FROM probe_terms")]
            folded = self._chars[ch] = terms[0] if len(terms) == 1 else " "
        return folded


_FOLDING = _Folding()


def fold(words: str) -> str:
    """Space-separated words (from `search_words`, `hashed_words` or `words_of`) as the
    tokenizer's tokens, space-separated."""
    if words.isascii():
        return " ".join(words.lower().split())
    return " ".join("".join(c.lower() if c.isascii() else _FOLDING.char(c) for c in words).split())


def backlog_body(words: str) -> str:
    """A backlog row's body: the folded words between spaces, so `instr(body, ' w ')` finds word w."""
    return f" {fold(words)} "


def lexemes(words: str) -> list[str]:
    """The distinct tokens of `words` (from `search_words`) as this module's tokenizer
    makes them: what the PostgreSQL engine indexes for a message, so both engines
    match by the same rules."""
    return list(dict.fromkeys(fold(words).split()))


def query_lexemes(query: str, token: Callable[[str], str] | None = None) -> list[str]:
    """The tokens a message must all hold to match `query` (as `lexemes` makes them);
    with `token` (an encrypted store), each word's keyed hash, as `hashed_words` indexed it."""
    return list(dict.fromkeys(fold(" ".join(_query_words(query, token))).split()))


def words_probe(query: str, token: Callable[[str], str] | None = None) -> tuple[str, list[str]] | None:
    """SQL true when a thread (`thread_key` of the outer query) has a message holding
    every word of `query`, in the index or in the backlog, and its parameters (None: no words).

    Both halves probe only that thread's key range."""
    match = match_expression(query, token)
    if match is None:
        return None
    # In the backlog a word is found by `instr`, folded as the tokenizer folds it.
    needles = [f" {fold(w)} " for w in _query_words(query, token)]
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
