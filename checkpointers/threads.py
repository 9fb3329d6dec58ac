"""The thread index: one row per conversation, listed newest first per user.

Rows are written by the saver in the same transaction as each checkpoint
(`ThreadSaver.put`); this module reads them and applies the edits a user makes
(rename, pin, metadata). Every query is scoped to one user through the
`threads_by_user_updated` index, so listing never reads another user's rows.
In an encrypted store titles are stored encrypted: they are decrypted as rows
are read, and searched in Python (see `ThreadIndex.search`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langchain_core.messages import BaseMessage, HumanMessage

from checkpointers import search
from checkpointers.errors import InvalidCursorError, ThreadNotFoundError
from checkpointers.search import message_text
from checkpointers.storable import check_id, check_text

if TYPE_CHECKING:
    from checkpointers.sqlite import ThreadSaver

TITLE_LENGTH = 60
MAX_TITLE_LENGTH = 200
MAX_LIST_LIMIT = 500

ANY_USER: Any = object()
"""Pass as `user_id` to skip the ownership check (operators and tests only)."""


def title_from_messages(messages: list[BaseMessage]) -> str | None:
    """The start of the first human message, on one line, or None if there is none."""
    for message in messages:
        if isinstance(message, HumanMessage):
            text = " ".join(message_text(message).split())
            if not text:
                continue
            return text if len(text) <= TITLE_LENGTH else text[: TITLE_LENGTH - 1].rstrip() + "…"
    return None


@dataclass(frozen=True)
class ThreadInfo:
    """One row of the thread index."""

    thread_id: str
    user_id: str | None
    title: str | None
    created_at: str
    updated_at: str
    message_count: int
    pinned: bool
    metadata: dict[str, Any]


@dataclass(frozen=True)
class ThreadPage:
    """A page of threads, newest first; pass `next_cursor` to get the next page."""

    threads: list[ThreadInfo]
    next_cursor: str | None


THREAD_COLUMNS = "thread_id, user_id, title, created_at, updated_at, message_count, pinned, metadata"


def thread_info(row: tuple) -> ThreadInfo:
    """A row of the thread index (its columns in `THREAD_COLUMNS` order) as a ThreadInfo;
    `metadata` may be JSON text or (PostgreSQL's jsonb) already a dict."""
    metadata = json.loads(row[7]) if isinstance(row[7], str) else row[7]
    return ThreadInfo(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]), metadata)


def gather_matches(
    rows: Iterable[tuple], info_of: Callable[[tuple], ThreadInfo], needle: str, found: list[ThreadInfo], limit: int
) -> None:
    """An encrypted store's search, either engine: add to `found` each row (`THREAD_COLUMNS`,
    then whether a message holds every word, by keyed hashes) whose words match or whose
    title, decrypted by `info_of`, contains `needle` (case-folded); stop at `limit` + 1."""
    for row in rows:
        info = info_of(row[:-1])
        if row[-1] or (info.title is not None and needle in info.title.casefold()):
            found.append(info)
            if len(found) > limit:
                return


def matches_page(found: list[ThreadInfo], limit: int) -> ThreadPage:
    """The page of `gather_matches`'s finds: a cursor when it found one more than the page."""
    threads = found[:limit]
    return ThreadPage(threads, encode_cursor(threads[-1]) if len(found) > limit else None)


def encode_cursor(info: ThreadInfo) -> str:
    """The cursor of the page after `info` (newest first by update time, then id)."""
    raw = json.dumps([info.updated_at, info.thread_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    """`(updated_at, thread_id)` of a cursor; `InvalidCursorError` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        updated_at, thread_id = json.loads(raw)
        if not isinstance(updated_at, str) or not isinstance(thread_id, str):
            raise ValueError
        return updated_at, thread_id
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise InvalidCursorError(f"invalid thread list cursor {cursor[:40]!r}") from exc


def checked_metadata_filter(metadata: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """The `(key, value)` pairs of a thread metadata filter, refused (ValueError) unless
    every key is a string both engines match exactly and every value a string, number,
    boolean or null."""
    pairs = []
    for key, value in (metadata or {}).items():
        if not isinstance(key, str):
            raise ValueError(f"metadata filter keys must be strings, not {key!r}")
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise ValueError(
                f"metadata filter for {key!r} must be a string, number, boolean or null"
            )
        if '"' in key or "\\" in key or (isinstance(value, int) and not -(2**63) <= value < 2**63):
            raise ValueError(f"metadata filter for {key!r} cannot be matched: keys without quotes or backslashes, whole numbers of 64 bits")
        check_text(key, "filter")
        if isinstance(value, str):
            check_text(value, "filter")
        pairs.append((key, value))
    return pairs


def _metadata_clause(metadata: dict[str, Any] | None) -> tuple[str, list[Any]]:
    pairs = checked_metadata_filter(metadata)
    if not pairs:
        return "", []
    sql, params = [], []
    for key, value in pairs:
        path = "$." + json.dumps(key)
        sql.append("json_extract(metadata, ?) IS ?")
        params.extend([path, value])
    return " AND " + " AND ".join(sql), params


def clean_title(title: str, what: str = "thread") -> str:
    """A title a user gave, on one line; ValueError (naming the `what`) if empty or
    longer than `MAX_TITLE_LENGTH`."""
    clean = check_text(" ".join(str(title).split()), "title")
    if not clean:
        raise ValueError(f"a {what} title cannot be empty")
    if "\x00" in clean:  # PostgreSQL's text has no NUL: refused on both engines alike
        raise ValueError(f"a {what} title cannot contain the NUL character")
    if len(clean) > MAX_TITLE_LENGTH:
        raise ValueError(f"a {what} title can be at most {MAX_TITLE_LENGTH} characters, not {len(clean)}")
    return clean


def metadata_patch(changes: dict[str, Any]) -> str:
    """Metadata changes as the JSON merge patch both engines apply (a key set to None is removed)."""
    if not isinstance(changes, dict) or not all(isinstance(k, str) for k in changes):
        raise ValueError("thread metadata must be a dict with string keys")
    try:
        return json.dumps(changes, allow_nan=False)  # neither engine's JSON has NaN or Infinity
    except (TypeError, ValueError) as exc:
        raise ValueError(f"thread metadata must be JSON-serialisable: {exc}") from exc


def check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIST_LIMIT}, not {limit}")


def checked_user(user_id: Any) -> Any:
    """A user id as the store keeps it: None and `ANY_USER` as they are, others checked."""
    return user_id if user_id is None or user_id is ANY_USER else check_id(user_id, "user id")


def _user_rows(user_id: str | None, cursor: str | None) -> tuple[str, list[Any]]:
    """The start of every listing: the user's rows (every row for `ANY_USER`), after the cursor if there is one."""
    sql = f"SELECT {THREAD_COLUMNS} FROM threads WHERE " + ("1" if user_id is ANY_USER else "user_id IS ?")
    params: list[Any] = [] if user_id is ANY_USER else [user_id]
    if cursor is not None:
        sql += " AND (updated_at, thread_id) < (?, ?)"
        params.extend(decode_cursor(cursor))
    return sql, params


def _search_sql(user_id: str | None, query: str, limit: int, cursor: str | None) -> tuple[str, list[Any]]:
    """The query behind `ThreadIndex.search`.

    It walks the user's rows newest first and probes each thread's slice of
    the full-text index by rowid range, so it stops after `limit` hits and
    never reads another user's rows or index entries.
    """
    text = " ".join(str(query).split())
    like = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    probe = search.words_probe(text)
    sql, params = _user_rows(user_id, cursor)
    # A query longer than any title cannot be in one (and SQLite refuses very long patterns).
    sql += " AND (title LIKE ? ESCAPE '\\'" if len(text) <= MAX_TITLE_LENGTH else " AND (0"
    params += [like] if len(text) <= MAX_TITLE_LENGTH else []
    if probe is not None:
        sql += f" OR {probe[0]}"
        params += probe[1]
    sql += ") ORDER BY updated_at DESC, thread_id DESC LIMIT ?"
    params.append(limit + 1)
    return sql, params


class ThreadIndex:
    """Read and edit the thread index of one saver (`saver.threads`).

    `user_id` scopes every call: a thread owned by someone else behaves exactly
    like a thread that does not exist. `user_id=None` means threads that have
    no owner (created without a user).
    """

    def __init__(self, saver: ThreadSaver) -> None:
        self._saver = saver

    # -- reads --------------------------------------------------------------

    def list(
        self,
        user_id: str | None,
        *,
        limit: int = 20,
        cursor: str | None = None,
        metadata: dict[str, Any] | None = None,
        pinned: bool | None = None,
    ) -> ThreadPage:
        """The user's threads, most recently updated first; with `ANY_USER`, every
        user's (for operators: that reads the whole index, not one user's range of it).

        `metadata` keeps threads whose metadata has each given key equal to the
        given value; `pinned` keeps only pinned (True) or unpinned (False) ones.
        """
        check_limit(limit)
        sql, params = _user_rows(checked_user(user_id), cursor)
        if pinned is not None:
            sql += " AND pinned = ?"
            params.append(int(pinned))
        clause, extra = _metadata_clause(metadata)
        sql += clause + " ORDER BY updated_at DESC, thread_id DESC LIMIT ?"
        params.extend(extra)
        params.append(limit + 1)
        with self._saver._read() as conn:
            rows = conn.execute(sql, params).fetchall()
        threads = [self._info(r) for r in rows[:limit]]
        next_cursor = encode_cursor(threads[-1]) if len(rows) > limit else None
        return ThreadPage(threads, next_cursor)

    def _info(self, row: tuple) -> ThreadInfo:
        """A row of `THREAD_COLUMNS` as a ThreadInfo, its title decrypted."""
        info = thread_info(row)
        if self._saver._cipher is None or info.title is None:
            return info
        return dataclasses.replace(info, title=self._saver._open_title(info.title, info.thread_id))

    def search(
        self,
        user_id: str | None,
        query: str,
        *,
        limit: int = 20,
        cursor: str | None = None,
    ) -> ThreadPage:
        """The user's threads whose title contains `query` or one of whose messages
        contains every word of it, most recently updated first.

        Titles match as text (case-insensitive for ASCII); messages match whole
        words, ignoring case and accents (see `checkpointers.search`). An empty
        query lists every thread, like `list`. In an encrypted store titles
        match case-insensitively after decryption, and message words through
        their hashed tokens.
        """
        check_limit(limit)
        if not " ".join(str(query).split()):
            return self.list(user_id, limit=limit, cursor=cursor)
        user_id, query = checked_user(user_id), check_text(str(query), "search")
        if self._saver._cipher is not None:
            return self._search_encrypted(user_id, query, limit, cursor)
        sql, params = _search_sql(user_id, query, limit, cursor)
        with self._saver._read() as conn:
            rows = conn.execute(sql, params).fetchall()
        threads = [self._info(r) for r in rows[:limit]]
        next_cursor = encode_cursor(threads[-1]) if len(rows) > limit else None
        return ThreadPage(threads, next_cursor)

    def _search_encrypted(self, user_id: str | None, query: str, limit: int, cursor: str | None) -> ThreadPage:
        """`search` when titles are encrypted: the user's rows newest first, each
        with SQL's answer to "does a message have every word" (hashed tokens),
        and the title matched here after decryption; stops after `limit` hits."""
        text = " ".join(str(query).split())
        needle = text.casefold()
        probe = search.words_probe(text, self._saver._cipher.search_token)
        words_hit, words_params = probe if probe is not None else ("0", [])
        sql = f"SELECT {THREAD_COLUMNS}, {words_hit} FROM threads WHERE user_id IS ?"
        params: list[Any] = [*words_params, user_id]
        if cursor is not None:
            sql += " AND (updated_at, thread_id) < (?, ?)"
            params.extend(decode_cursor(cursor))
        sql += " ORDER BY updated_at DESC, thread_id DESC"
        found: list[ThreadInfo] = []
        with self._saver._read() as conn:
            rows = conn.execute(sql, params)
            try:
                gather_matches(rows, self._info, needle, found, limit)
            finally:
                rows.close()
        return matches_page(found, limit)

    def explain_search(self, user_id: str | None, query: str) -> list[str]:
        """SQLite's query plan for `search(user_id, query)`."""
        sql, params = _search_sql(user_id, query, 20, None)
        with self._saver._read() as conn:
            return [r[-1] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()]

    def get(self, thread_id: str, *, user_id: str | None = ANY_USER) -> ThreadInfo:
        """One thread's row; `ThreadNotFoundError` if unknown or not the user's."""
        with self._saver._read() as conn:
            row = conn.execute(f"SELECT {THREAD_COLUMNS} FROM threads WHERE thread_id = ?", (check_id(thread_id),)).fetchone()
        if row is None or (user_id is not ANY_USER and row[1] != user_id):
            raise ThreadNotFoundError(str(thread_id))
        return self._info(row)

    def count(self, user_id: str | None) -> int:
        """How many threads the user has."""
        with self._saver._read() as conn:
            (n,) = conn.execute("SELECT count(*) FROM threads WHERE user_id IS ?", (checked_user(user_id),)).fetchone()
        return n

    def explain_list(self, user_id: str | None) -> list[str]:
        """SQLite's query plan for `list(user_id)`: shows the index is used."""
        with self._saver._read() as conn:
            rows = conn.execute(
                f"EXPLAIN QUERY PLAN SELECT {THREAD_COLUMNS} FROM threads WHERE user_id IS ? "
                "ORDER BY updated_at DESC, thread_id DESC LIMIT 21",
                (user_id,),
            ).fetchall()
        return [r[-1] for r in rows]

    # -- edits --------------------------------------------------------------

    def _update(self, thread_id: str, user_id: Any, assignments: str, params: list[Any]) -> ThreadInfo:
        thread_id = check_id(thread_id)
        with self._saver._write():
            row = self._saver.conn.execute(
                "SELECT user_id FROM threads WHERE thread_id = ?", (str(thread_id),)
            ).fetchone()
            if row is None or (user_id is not ANY_USER and row[0] != user_id):
                raise ThreadNotFoundError(str(thread_id))
            self._saver.conn.execute(
                f"UPDATE threads SET {assignments} WHERE thread_id = ?", [*params, str(thread_id)]
            )
        return self.get(thread_id)

    def rename(self, thread_id: str, title: str, *, user_id: str | None = ANY_USER) -> ThreadInfo:
        """Give the thread a new title (one line, at most 200 characters)."""
        clean = clean_title(title)
        return self._update(thread_id, user_id, "title = ?", [self._saver._seal_title(clean, str(thread_id))])

    def pin(self, thread_id: str, pinned: bool = True, *, user_id: str | None = ANY_USER) -> ThreadInfo:
        """Pin (or with `pinned=False`, unpin) a thread."""
        return self._update(thread_id, user_id, "pinned = ?", [int(bool(pinned))])

    def update_metadata(
        self, thread_id: str, changes: dict[str, Any], *, user_id: str | None = ANY_USER
    ) -> ThreadInfo:
        """Merge `changes` into the thread's metadata; a key set to None is removed."""
        patch = metadata_patch(changes)
        return self._update(thread_id, user_id, "metadata = json_patch(metadata, ?)", [patch])

    def set_origin(self, thread_id: str, *, user_id: str | None, created_at: str, updated_at: str) -> ThreadInfo:
        """Give a thread brought in from elsewhere its owner and its times there (ISO
        8601 with a zone), instead of the importing process and the time of the import."""
        return self._update(
            thread_id, ANY_USER, "user_id = ?, created_at = ?, updated_at = ?",
            [checked_user(user_id), created_at, updated_at],
        )

    # -- async twins --------------------------------------------------------

    async def alist(self, user_id: str | None, **kwargs: Any) -> ThreadPage:
        return await asyncio.to_thread(lambda: self.list(user_id, **kwargs))

    async def asearch(self, user_id: str | None, query: str, **kwargs: Any) -> ThreadPage:
        return await asyncio.to_thread(lambda: self.search(user_id, query, **kwargs))

    async def aget(self, thread_id: str, *, user_id: str | None = ANY_USER) -> ThreadInfo:
        return await asyncio.to_thread(lambda: self.get(thread_id, user_id=user_id))

    async def acount(self, user_id: str | None) -> int:
        return await asyncio.to_thread(self.count, user_id)

    async def arename(self, thread_id: str, title: str, *, user_id: str | None = ANY_USER) -> ThreadInfo:
        return await asyncio.to_thread(lambda: self.rename(thread_id, title, user_id=user_id))

    async def apin(self, thread_id: str, pinned: bool = True, *, user_id: str | None = ANY_USER) -> ThreadInfo:
        return await asyncio.to_thread(lambda: self.pin(thread_id, pinned, user_id=user_id))

    async def aupdate_metadata(
        self, thread_id: str, changes: dict[str, Any], *, user_id: str | None = ANY_USER
    ) -> ThreadInfo:
        return await asyncio.to_thread(lambda: self.update_metadata(thread_id, changes, user_id=user_id))
