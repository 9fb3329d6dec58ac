"""The thread index on SQLite (`saver.threads`): `checkpointers.threads` says what a
thread's row is and what every listing checks; this module says it in SQLite's SQL.

Every query is scoped to one user through the `threads_by_user_updated` index
(`user_id IS ?` and the row values after a cursor), so listing never reads
another user's rows; search probes each thread's slice of the full-text index
by rowid range. In an encrypted store titles are decrypted as rows are read and
matched in Python (`_search_encrypted`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import TYPE_CHECKING, Any

from checkpointers.engines.sqlite import fts
from checkpointers.errors import ThreadNotFoundError
from checkpointers.storable import check_id, check_text
from checkpointers.threads import (
    ANY_USER,
    MAX_TITLE_LENGTH,
    THREAD_COLUMNS,
    ThreadInfo,
    ThreadPage,
    check_limit,
    checked_metadata_filter,
    checked_user,
    one_line,
    clean_title,
    decode_cursor,
    encode_cursor,
    gather_matches,
    matches_page,
    metadata_patch,
    thread_info,
)

if TYPE_CHECKING:
    from checkpointers.engines.sqlite.saver import ThreadSaver


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
    text = one_line(query)
    like = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    probe = fts.words_probe(text)
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
        if not one_line(query):
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
        text = one_line(query)
        needle = text.casefold()
        probe = fts.words_probe(text, self._saver._cipher.search_token)
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
