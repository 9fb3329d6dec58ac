"""The checkpointer factory for `langgraph dev` (see langgraph.json).

The LangGraph server opens the same store as the web chat and Python, so a
thread created through its API shows up in `saver.threads` and in the web
chat's list for the user named in the thread's metadata (`user_id`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from checkpointers import ThreadSaver, open_async_saver


@asynccontextmanager
async def checkpointer() -> AsyncIterator[ThreadSaver]:
    """Yield the async saver on `$THREADKEEPER_DATABASE_URL` (default ./data/threadkeeper.db)."""
    async with open_async_saver() as saver:
        yield saver
