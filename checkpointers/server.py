"""The checkpointer factory for `langgraph dev` (see langgraph.json).

The LangGraph server opens the same store as the web chat and Python, so a
thread created through its API shows up in `saver.threads` and in the web
chat's list for the user named in the thread's metadata (`user_id`).

That server's in-memory runtime does not run the TTL sweeps `langgraph.json`
describes, so the factory starts threadkeeper's own sweeper with the same
`checkpointer.ttl` settings; it stops when the server does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from checkpointers import ThreadSaver, open_async_saver
from checkpointers.retention import RetentionPolicy, SweepLoop


@asynccontextmanager
async def checkpointer() -> AsyncIterator[ThreadSaver]:
    """Yield the async saver on `$THREADKEEPER_DATABASE_URL` (default ./data/threadkeeper.db)."""
    policy = RetentionPolicy.from_env()
    async with open_async_saver() as saver:
        sweeping = SweepLoop(saver, policy).start()
        try:
            yield saver
        finally:
            await asyncio.to_thread(sweeping.stop)
