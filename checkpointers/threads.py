"""The thread index, as both engines keep it: one row per conversation, listed newest
first per user (`ThreadInfo`, `ThreadPage`, cursors, titles, the checks every
listing and edit makes). Each engine's `saver.threads` says it in its own SQL:
`checkpointers.engines.sqlite.threads.ThreadIndex` and
`checkpointers.engines.postgres.threads.PostgresThreadIndex`.

Rows are written by the saver in the same transaction as each checkpoint; an
index reads them and applies the edits a user makes (rename, pin, metadata).
Every query is scoped to one user through the `threads_by_user_updated` index,
so listing never reads another user's rows. In an encrypted store titles are
stored encrypted: they are decrypted as rows are read, and searched in Python
(`gather_matches`).
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage

from checkpointers.errors import InvalidCursorError, ThreadDeletedError
from checkpointers.search import message_text
from checkpointers.storable import check_id, check_text, jsonb_storable


TITLE_LENGTH = 60
MAX_TITLE_LENGTH = 200
MAX_LIST_LIMIT = 500

ANY_USER: Any = object()
"""Pass as `user_id` to skip the ownership check (operators and tests only)."""


_CONTROLS_TO_SPACE = dict.fromkeys([*range(32), 127], " ")


class SeenThreads:
    """The ids of threads a saver found stored, newest `size` of them.

    A run reads its thread, then writes a checkpoint (or task writes) going on from the one it
    read. When the thread is deleted in between (its owner deletes it, or erases all their
    data, while a reply is written), the write finds no row: storing one anew brought the
    whole conversation back, title and search words included. A write that goes on from a
    checkpoint (`parent`) of a thread this saver has seen is refused instead; a thread id
    never seen here (an import, a caller's own checkpoints) or a write that starts a thread
    (no parent) stores its row as before."""

    def __init__(self, size: int = 50_000) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def saw(self, thread_id: str) -> None:
        with self._lock:
            self._ids[thread_id] = None
            self._ids.move_to_end(thread_id)
            if len(self._ids) > self._size:
                self._ids.popitem(last=False)

    def check_not_deleted(self, thread_id: str, parent: Any) -> None:
        """Call when a write finds no row for `thread_id`: `ThreadDeletedError` if it goes on
        from a checkpoint (`parent` not None) of a thread this saver has seen stored."""
        if parent is not None:
            with self._lock:
                seen = thread_id in self._ids
            if seen:
                raise ThreadDeletedError(thread_id)


def one_line(text: str) -> str:
    """`text` with each run of white space and control characters made one space, and
    trimmed: a title, or a search for one (a title holds no control character, and
    PostgreSQL's `text` cannot hold NUL)."""
    return " ".join(str(text).translate(_CONTROLS_TO_SPACE).split())


def title_from_messages(messages: list[BaseMessage]) -> str | None:
    """The start of the first human message, on one line, or None if there is none."""
    for message in messages:
        if isinstance(message, HumanMessage):
            text = one_line(message_text(message))
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
        check_id(updated_at, "cursor")  # a NUL or a lone surrogate (a ValueError): neither engine can compare it
        check_id(thread_id, "cursor")
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
        if '"' in key or "\\" in key or "\x00" in key or (isinstance(value, int) and not -(2**63) <= value < 2**63):
            raise ValueError(
                f"metadata filter for {key!r} cannot be matched: keys without quotes, backslashes or NUL, whole numbers of 64 bits"
            )
        if isinstance(value, str) and "\x00" in value:
            raise ValueError(f"metadata filter for {key!r} cannot be matched: text without the NUL character")
        check_text(key, "filter")
        if isinstance(value, str):
            check_text(value, "filter")
        pairs.append((key, value))
    return pairs


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
    if not jsonb_storable(changes):  # refused on both engines alike, so a store can move
        raise ValueError("thread metadata cannot contain the NUL character or invalid Unicode (a lone surrogate)")
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
