"""Search words, as both engines index them: which words a message holds
(`search_words`), how they are folded (whole words, any case, accents removed:
`fold`, `lexemes`, the same as SQLite FTS5's `unicode61 remove_diacritics 2`
tokenizer, asked of SQLite itself for characters outside ASCII), and, in an
encrypted store, the keyed hashes that stand in for them (`hashed_words`).

Where the words go is each engine's: SQLite's FTS5 index and its backlog in
`checkpointers.engines.sqlite.fts`, PostgreSQL's `tsvector` column in
`checkpointers.engines.postgres`. So both engines find the same threads.

Search matches whole words, case- and accent-insensitively; every word of the
query must occur in one message.

With an encryption key, no word is written to an index: each distinct word of
a message is indexed as an opaque token, the first 10 base32 characters of
HMAC-SHA256 under a search subkey of the key (`hashed_words`), and a query's
words are hashed the same way (`query_lexemes(query, token)`), so whole-word
search still works. The trade-off: tokens are deterministic, so whoever holds
the store learns which messages share a word and how often a token occurs
(equality and frequency), though not the words; and there is no prefix or
substring search of messages. Titles are encrypted too, so with a key they are
matched in Python after decryption, over the user's own threads, not by SQL.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import unicodedata
from collections.abc import Callable

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

MAX_INDEXED_CHARS = 20_000
"""Only the start of a very long message is indexed (a pasted log, a data dump)."""

MAX_QUERY_WORDS = 16

TOKENIZE = "unicode61 remove_diacritics 2"
"""The tokenizer of `message_search` (`schema.m003_message_search`)."""

_WORD = re.compile(r"[^\W_]+")


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


def query_words(query: str, token: Callable[[str], str] | None) -> list[str]:
    """The distinct words of a query that a message must all contain; with `token`
    (an encrypted store), each replaced by its token."""
    words = list(dict.fromkeys(words_of(query)))[:MAX_QUERY_WORDS]
    if token is not None:
        words = [token(without_accents(w)) for w in words]
    return words


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


MAX_LEXEME_CHARS = 500
"""PostgreSQL's `tsvector` and `tsquery` hold words of at most 2,047 bytes: a longer one
(a pasted blob; no one types it) is cut to this many characters, in what is indexed and
in a query alike, so it still finds itself."""


def lexemes(words: str) -> list[str]:
    """The distinct tokens of `words` (from `search_words`) as this module's tokenizer
    makes them: what the PostgreSQL engine indexes for a message, so both engines
    match by the same rules."""
    return list(dict.fromkeys(w[:MAX_LEXEME_CHARS] for w in fold(words).split()))


def query_lexemes(query: str, token: Callable[[str], str] | None = None) -> list[str]:
    """The tokens a message must all hold to match `query` (as `lexemes` makes them);
    with `token` (an encrypted store), each word's keyed hash, as `hashed_words` indexed it."""
    return lexemes(" ".join(query_words(query, token)))


