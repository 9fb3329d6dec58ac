"""threadkeeper's storage engine: LangGraph checkpointers with a thread index.

    from checkpointers import open_saver
    with open_saver() as saver:              # ./data/threadkeeper.db by default
        graph = build_graph(checkpointer=saver)
        saver.threads.list("alice")          # her 20 most recent threads

`url` is `sqlite:///path/to/file.db` or `postgresql://user@host:5432/db` (also
`postgres://`); without it `$THREADKEEPER_DATABASE_URL`, then
`sqlite:///data/threadkeeper.db`. On PostgreSQL `$THREADKEEPER_PG_POOL_SIZE`
sizes the process's connection pool (default 10). `THREADKEEPER_SQLITE_SYNCHRONOUS` picks
SQLite's `synchronous` pragma (NORMAL by default; FULL survives power loss).
`THREADKEEPER_ENCRYPTION_KEY` encrypts the conversations in the store (see
`checkpointers.encryption`); `threadkeeper rotate-key` changes the key.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from checkpointers.errors import (
    EncryptionKeyError,
    ForeignDatabaseError,
    InvalidCursorError,
    NotADatabaseError,
    SchemaTooNewError,
    StoreError,
    StoreUnavailableError,
    ThreadDeletedError,
    ThreadExistsError,
    ThreadNotFoundError,
)
from checkpointers.attachments import Attachment, AttachmentError
from checkpointers.engines.sqlite.attachments import AttachmentStore
from checkpointers.encryption import KEY_VARIABLE
from checkpointers.history import ThreadChatHistory, close_shared_savers
from checkpointers.sessions import MessageNotFoundError, Session, SessionMessage, SessionStore
from checkpointers.messages import MessagePage
from checkpointers.engines.sqlite.saver import ThreadSaver
from checkpointers.engines.sqlite.threads import ThreadIndex
from checkpointers.threads import ANY_USER, ThreadInfo, ThreadPage
from checkpointers.url import DEFAULT_URL, is_postgres, resolve_url, sqlite_path

__all__ = [
    "ANY_USER",
    "Attachment",
    "AttachmentError",
    "AttachmentStore",
    "DEFAULT_URL",
    "EncryptionKeyError",
    "ForeignDatabaseError",
    "InvalidCursorError",
    "MessageNotFoundError",
    "MessagePage",
    "NotADatabaseError",
    "SchemaTooNewError",
    "Session",
    "SessionMessage",
    "SessionStore",
    "StoreError",
    "StoreUnavailableError",
    "ThreadChatHistory",
    "ThreadDeletedError",
    "ThreadExistsError",
    "ThreadIndex",
    "ThreadInfo",
    "ThreadNotFoundError",
    "ThreadPage",
    "ThreadSaver",
    "close_shared_savers",
    "open_async_saver",
    "missing_store",
    "open_saver",
]


def _saver_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    options = dict(kwargs)
    if "synchronous" not in options and os.environ.get("THREADKEEPER_SQLITE_SYNCHRONOUS"):
        options["synchronous"] = os.environ["THREADKEEPER_SQLITE_SYNCHRONOUS"]
    return options


def _postgres_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    options = dict(kwargs)
    options.setdefault("encryption_key", os.environ.get(KEY_VARIABLE) or None)
    return options


def missing_store(url: str | None = None) -> str | None:
    """One sentence saying there is no store at `url` (found without creating one), or None.

    For commands that read what is stored: from another directory, or with a
    mistyped URL, they say so instead of answering from a new, empty store."""
    url = resolve_url(url)
    if is_postgres(url):
        from checkpointers.engines.postgres.connection import has_store, redacted

        return None if has_store(url) else f"no threadkeeper store in the PostgreSQL database {redacted(url)}"
    path = sqlite_path(url).resolve()
    return None if path.exists() else f"no store at {path}"


@contextmanager
def open_saver(url: str | None = None, **kwargs: Any) -> Iterator[ThreadSaver]:
    """Open the store for synchronous use; closes it on exit.

    A `postgresql://` URL gives the PostgreSQL engine's saver (same LangGraph
    interface and `saver.threads`; see `checkpointers.engines.postgres`)."""
    url = resolve_url(url)
    if is_postgres(url):
        from checkpointers.engines.postgres import open_postgres_saver

        with open_postgres_saver(url, **_postgres_options(kwargs)) as saver:
            yield saver
        return
    saver = ThreadSaver(sqlite_path(url), **_saver_options(kwargs))
    try:
        yield saver
    finally:
        saver.close()


@asynccontextmanager
async def open_async_saver(url: str | None = None, **kwargs: Any) -> AsyncIterator[ThreadSaver]:
    """Open the store for asyncio use (e.g. `langgraph dev`); closes it on exit.

    On SQLite the async methods run the shared code on worker threads, so the
    event loop never blocks on disk; on PostgreSQL they are native asyncio.
    """
    import asyncio

    url = resolve_url(url)
    if is_postgres(url):
        from checkpointers.engines.postgres import open_async_postgres_saver

        async with open_async_postgres_saver(url, **_postgres_options(kwargs)) as saver:
            yield saver
        return
    saver = await asyncio.to_thread(ThreadSaver, sqlite_path(url), **_saver_options(kwargs))
    try:
        yield saver
    finally:
        await asyncio.to_thread(saver.close)
