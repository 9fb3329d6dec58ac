"""The thread index on PostgreSQL (`saver.threads`): the same calls and answers as
`checkpointers.engines.sqlite.threads.ThreadIndex`, in PostgreSQL's SQL.

Rows are written by the saver with each checkpoint; this reads them and applies
a user's edits. Listing walks `threads_by_user_updated` backwards for one user
(`user_id = %s`, or `IS NULL` for threads without an owner, each its own
constant statement so the index is used). Metadata filters compare `jsonb`
values (`metadata -> key = value`). Search matches a title by `ILIKE`, or a
message holding every word of the query through the GIN index of
`messages.words` (`schema.WORDS_TSVECTOR`: lexemes made by `checkpointers.search.lexemes`, the same
whole-word, case- and accent-insensitive rules as SQLite's FTS5 index).
In an encrypted store, as on SQLite, titles are sealed (decrypted as rows are
read, matched in Python after decryption) and `messages.words` holds keyed
hashes of the words, which a query's words are hashed to (`_search_encrypted`).
Async methods are native asyncio.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

from psycopg.types.json import Jsonb

from checkpointers import encryption, search
from checkpointers.encryption import Cipher
from checkpointers.engines.postgres import keys
from checkpointers.engines.postgres.connection import FETCH_NONE, FETCH_ONE, Plan, Sql
from checkpointers.engines.postgres.schema import WORDS_TSVECTOR
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

_SELECT = f"SELECT {THREAD_COLUMNS} FROM threads t"
_OWNED_BY = {True: " WHERE user_id IS NULL", False: " WHERE user_id = %s"}
"""Keyed by "the user is None": `= NULL` matches nothing, and `IS NOT DISTINCT FROM` uses no index."""
_NEWEST_FIRST = " ORDER BY updated_at DESC, thread_id DESC LIMIT %s"


def _rows_of(user_id: Any, cursor: str | None, select: str = _SELECT) -> tuple[str, list[Any]]:
    """The start of every listing: the user's rows (every row for `ANY_USER`), after the cursor."""
    if user_id is ANY_USER:
        sql, params = select + " WHERE true", []
    else:
        sql, params = select + _OWNED_BY[user_id is None], ([] if user_id is None else [user_id])
    if cursor is not None:
        sql += " AND (updated_at, thread_id) < (%s, %s)"
        params.extend(decode_cursor(cursor))
    return sql, params


def _tsquery(lexemes: list[str]) -> str:
    """A tsquery value needing every lexeme (quoted, so nothing is read as tsquery syntax)."""
    return " & ".join("'" + w.replace("\\", "\\\\").replace("'", "''") + "'" for w in lexemes)


def _merged(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch, as SQLite's `json_patch` applies it."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merged(result.get(key), value)
    return result


_SCAN_ROWS = 200
"""Rows an encrypted search reads at a time while it looks for its page of matches."""
_WORDS_HIT = (
    f"EXISTS (SELECT 1 FROM messages WHERE messages.thread_key = t.thread_key AND {WORDS_TSVECTOR} @@ %s::tsquery)"
)
"""A thread with a message holding every word: matched on the expression `messages_by_words` indexes."""


class PostgresThreadIndex:
    """Read and edit the thread index (`saver.threads` on PostgreSQL); see `ThreadIndex`
    for what each call promises. `user_id` scopes every call: another user's thread
    behaves exactly like a thread that does not exist."""

    def __init__(
        self, run: Callable[..., Any], arun: Callable[..., Any], cipher: Callable[[], Cipher | None], where: str = ""
    ) -> None:
        """`run(plan, read=...)` / `arun(...)`: the saver's plan runners; `cipher()`: the store's
        cipher (None: not encrypted), known once the saver checked its key; `where`: the store,
        as refusals name it."""
        self._run = run
        self._arun = arun
        self._cipher = cipher
        self._where = where

    def _info(self, row: tuple) -> ThreadInfo:
        """A row of `THREAD_COLUMNS` as a ThreadInfo, its title decrypted."""
        info = thread_info(row)
        cipher = self._cipher()
        if cipher is None or info.title is None:
            return info
        return dataclasses.replace(info, title=encryption.open_title(cipher, info.title, info.thread_id))

    def _page(self, rows: list[tuple], limit: int) -> ThreadPage:
        threads = [self._info(r) for r in rows[:limit]]
        return ThreadPage(threads, encode_cursor(threads[-1]) if len(rows) > limit else None)

    # -- plans --------------------------------------------------------------

    def _list(
        self, user_id: Any, limit: int, cursor: str | None, metadata: dict[str, Any] | None, pinned: bool | None
    ) -> Plan[ThreadPage]:
        check_limit(limit)
        sql, params = _rows_of(checked_user(user_id), cursor)
        if pinned is not None:
            sql += " AND pinned = %s"
            params.append(bool(pinned))
        for key, value in checked_metadata_filter(metadata):
            if value is None:  # as on SQLite: a missing key matches null
                sql += " AND coalesce(metadata -> %s, 'null'::jsonb) = 'null'::jsonb"
                params.append(key)
            else:
                sql += " AND metadata -> %s = %s"
                params += [key, Jsonb(value)]
        rows = yield Sql(sql + _NEWEST_FIRST, [*params, limit + 1])
        return self._page(rows, limit)

    def _search(self, user_id: Any, query: str, limit: int, cursor: str | None) -> Plan[ThreadPage]:
        check_limit(limit)
        text = one_line(query)
        if not text:
            return (yield from self._list(user_id, limit, cursor, None, None))
        user_id, text = checked_user(user_id), check_text(text, "search")
        cipher = self._cipher()
        if cipher is not None:
            return (yield from self._search_encrypted(cipher, user_id, text, limit, cursor))
        sql, params = _rows_of(user_id, cursor)
        like = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        lexemes = search.query_lexemes(text)
        # A query longer than any title cannot be in one.
        matches = ["title ILIKE %s"] if len(text) <= MAX_TITLE_LENGTH else []
        params += [like] if matches else []
        if lexemes:
            matches.append(_WORDS_HIT)
            params.append(_tsquery(lexemes))
        sql += " AND (" + (" OR ".join(matches) or "false") + ")"
        rows = yield Sql(sql + _NEWEST_FIRST, [*params, limit + 1])
        return self._page(rows, limit)

    def _search_encrypted(self, cipher: Cipher, user_id: Any, text: str, limit: int, cursor: str | None) -> Plan[ThreadPage]:
        """`_search` when titles are sealed (as `ThreadIndex.search` on SQLite): the user's rows
        newest first, `_SCAN_ROWS` at a time in one snapshot, each with the database's answer
        to "does a message hold every word" (keyed hashes), and the title matched here after
        decryption; stops once a page and one more match are found."""
        needle = text.casefold()
        lexemes = search.query_lexemes(text, cipher.search_token)
        hit, hit_params = (_WORDS_HIT, [_tsquery(lexemes)]) if lexemes else ("false", [])
        found: list[ThreadInfo] = []
        while len(found) <= limit:
            sql, params = _rows_of(user_id, cursor, f"SELECT {THREAD_COLUMNS}, {hit} FROM threads t")
            rows = yield Sql(sql + _NEWEST_FIRST, [*hit_params, *params, _SCAN_ROWS])
            gather_matches(rows, self._info, needle, found, limit)
            if len(rows) < _SCAN_ROWS:
                break
            cursor = encode_cursor(thread_info(rows[-1][:-1]))
        return matches_page(found, limit)

    def _get(self, thread_id: str, user_id: Any) -> Plan[ThreadInfo]:
        row = yield Sql(_SELECT + " WHERE thread_id = %s", (check_id(thread_id),), FETCH_ONE)
        if row is None or (user_id is not ANY_USER and row[1] != user_id):
            raise ThreadNotFoundError(str(thread_id))
        return self._info(row)

    def _count(self, user_id: Any) -> Plan[int]:
        user_id = checked_user(user_id)
        sql = "SELECT count(*) FROM threads" + _OWNED_BY[user_id is None]
        (n,) = yield Sql(sql, [] if user_id is None else [user_id], FETCH_ONE)
        return n

    def _update(self, thread_id: str, user_id: Any, changes: Callable[[ThreadInfo], dict[str, Any]]) -> Plan[ThreadInfo]:
        """Lock the thread's row, check its owner, and set the columns `changes(row)` gives."""
        thread_id = check_id(thread_id)
        row = yield Sql(_SELECT + " WHERE thread_id = %s FOR UPDATE", (thread_id,), FETCH_ONE)
        if row is None or (user_id is not ANY_USER and row[1] != user_id):
            raise ThreadNotFoundError(thread_id)
        columns = changes(thread_info(row))
        if "title" in columns:  # sealed: not with a key the store no longer has, nor during a rotation
            yield from keys.check_writable(self._cipher(), self._where)
        assignments = ", ".join(f"{column} = %s" for column in columns)  # names from this module's constants
        yield Sql(f"UPDATE threads SET {assignments} WHERE thread_id = %s", [*columns.values(), thread_id], FETCH_NONE)
        return (yield from self._get(thread_id, ANY_USER))

    # -- calls --------------------------------------------------------------

    def list(
        self,
        user_id: str | None,
        *,
        limit: int = 20,
        cursor: str | None = None,
        metadata: dict[str, Any] | None = None,
        pinned: bool | None = None,
    ) -> ThreadPage:
        """The user's threads, most recently updated first (see `ThreadIndex.list`)."""
        return self._run(self._list(user_id, limit, cursor, metadata, pinned), read=True)

    async def alist(self, user_id: str | None, **kwargs: Any) -> ThreadPage:
        return await self._arun(
            self._list(user_id, kwargs.get("limit", 20), kwargs.get("cursor"), kwargs.get("metadata"), kwargs.get("pinned")),
            read=True,
        )

    def search(self, user_id: str | None, query: str, *, limit: int = 20, cursor: str | None = None) -> ThreadPage:
        """The user's threads whose title contains `query` or one of whose messages holds
        every word of it, most recently updated first (see `ThreadIndex.search`)."""
        return self._run(self._search(user_id, query, limit, cursor), read=True)

    async def asearch(self, user_id: str | None, query: str, *, limit: int = 20, cursor: str | None = None) -> ThreadPage:
        return await self._arun(self._search(user_id, query, limit, cursor), read=True)

    def get(self, thread_id: str, *, user_id: str | None = ANY_USER) -> ThreadInfo:
        """One thread's row; `ThreadNotFoundError` if unknown or not the user's."""
        return self._run(self._get(thread_id, user_id), read=True)

    async def aget(self, thread_id: str, *, user_id: str | None = ANY_USER) -> ThreadInfo:
        return await self._arun(self._get(thread_id, user_id), read=True)

    def count(self, user_id: str | None) -> int:
        """How many threads the user has."""
        return self._run(self._count(user_id), read=True)

    async def acount(self, user_id: str | None) -> int:
        return await self._arun(self._count(user_id), read=True)

    def explain_list(self, user_id: str | None) -> list[str]:
        """PostgreSQL's plan for `list(user_id)`: shows the index is used."""
        sql, params = _rows_of(checked_user(user_id), None)

        def plan() -> Plan[list[str]]:
            rows = yield Sql("EXPLAIN " + sql + _NEWEST_FIRST, [*params, 21])
            return [r[0] for r in rows]

        return self._run(plan(), read=True)

    def rename(self, thread_id: str, title: str, *, user_id: str | None = ANY_USER) -> ThreadInfo:
        """Give the thread a new title (one line, at most 200 characters)."""
        clean = clean_title(title)
        return self._run(self._update(thread_id, user_id, lambda info: {"title": self._sealed_title(clean, info)}))

    async def arename(self, thread_id: str, title: str, *, user_id: str | None = ANY_USER) -> ThreadInfo:
        clean = clean_title(title)
        return await self._arun(self._update(thread_id, user_id, lambda info: {"title": self._sealed_title(clean, info)}))

    def _sealed_title(self, title: str, info: ThreadInfo) -> str:
        """A title as the thread's row stores it (sealed to the thread when the store is encrypted)."""
        return encryption.seal_title(self._cipher(), title, info.thread_id)

    def pin(self, thread_id: str, pinned: bool = True, *, user_id: str | None = ANY_USER) -> ThreadInfo:
        """Pin (or with `pinned=False`, unpin) a thread."""
        return self._run(self._update(thread_id, user_id, lambda _: {"pinned": bool(pinned)}))

    async def apin(self, thread_id: str, pinned: bool = True, *, user_id: str | None = ANY_USER) -> ThreadInfo:
        return await self._arun(self._update(thread_id, user_id, lambda _: {"pinned": bool(pinned)}))

    def update_metadata(self, thread_id: str, changes: dict[str, Any], *, user_id: str | None = ANY_USER) -> ThreadInfo:
        """Merge `changes` into the thread's metadata; a key set to None is removed."""
        patch = metadata_patch(changes)
        return self._run(self._update(thread_id, user_id, lambda info: {"metadata": _patched(info, patch)}))

    async def aupdate_metadata(
        self, thread_id: str, changes: dict[str, Any], *, user_id: str | None = ANY_USER
    ) -> ThreadInfo:
        patch = metadata_patch(changes)
        return await self._arun(self._update(thread_id, user_id, lambda info: {"metadata": _patched(info, patch)}))

    def set_origin(self, thread_id: str, *, user_id: str | None, created_at: str, updated_at: str) -> ThreadInfo:
        """Give a thread brought in from elsewhere its owner and its times there (ISO 8601 with a zone)."""
        owner = checked_user(user_id)
        return self._run(
            self._update(
                thread_id, ANY_USER, lambda _: {"user_id": owner, "created_at": created_at, "updated_at": updated_at}
            )
        )


def _patched(info: ThreadInfo, patch: str) -> Jsonb:
    """The thread's metadata with `patch` (from `metadata_patch`) merged in."""
    return Jsonb(_merged(info.metadata, json.loads(patch)))
