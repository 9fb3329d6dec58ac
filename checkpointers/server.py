"""The checkpointer factory for `langgraph dev` (see langgraph.json).

The LangGraph server opens the same store as the web chat and Python, so a
thread created through its API shows up in `saver.threads` and in the web
chat's list for the user named in the thread's metadata (`user_id`).

The server does not get the saver itself but a `ServerSaver` around it, for
two things the server's runtime needs and the other doors must not pay for:

* Channel versions as text. The server wraps every custom saver in an adapter
  (`langgraph_api/_checkpointer/_adapter.py`) whose `get_next_version` reads
  the current version as `"<integer>.<anything>"`, and LangGraph takes the
  `max()` of a checkpoint's versions, so one checkpoint may not mix numbers
  and text. This store keeps numbers (what the web chat, the CLI and Python
  write); `ServerSaver` shows them to the server as text that sorts the same
  way and turns the server's text back into numbers when it writes, so a
  thread started at any door goes on at any other with one kind of version.
  Threads written as text by an older server stay text.
* A run's owner. A run started by a signed-in API caller (`ui/server_auth.py`)
  carries the caller in `configurable["langgraph_auth_user_id"]`; on a thread
  that already belongs to someone else it reads and writes nothing
  (`ThreadNotFoundError`), whatever the server's own registry says.

That server's in-memory runtime does not run the TTL sweeps `langgraph.json`
describes, so the factory starts threadkeeper's own sweeper with the same
`checkpointer.ttl` settings; it stops when the server does.

On PostgreSQL the factory is the same: the URL picks the engine, the saver is
native asyncio, and any number of servers and `threadkeeper serve` processes
share the database. Each of them sweeps; the store's lease (an advisory lock
there) lets one work while the others skip, so the sweeps do not multiply.
What a `ServerSaver` remembers of a thread (the kind of its versions, its
owner) may go stale when another process deletes the thread; the owner is
read from the store again for every request by the server's auth hook
(`ui/server_auth.py`), which comes first, so a stale entry lets no one in.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver, ChannelVersions, Checkpoint, CheckpointMetadata, CheckpointTuple

from checkpointers import ThreadNotFoundError, ThreadSaver, open_async_saver
from checkpointers.retention import RetentionPolicy, SweepLoop

_UNITS = 2**53
"""A version's fraction in units of 2**-53: exact for every version >= 1 (their
fractions are multiples of 2**-52), and 16 digits at most."""
_SHOWN_NUMBER = re.compile(r"\d{32}\.\d{16}")
_REMEMBERED = 10_000
"""Threads (and thread-owner pairs) a `ServerSaver` remembers, newest kept."""


def version_text(version: float) -> str:
    """A number version as the server sees it: `"<32-digit integer>.<16-digit fraction>"`.

    Text of this form sorts like the numbers, and its integer part is what the
    server's adapter counts up from. `version_number` gives the number back exactly."""
    whole = int(version)
    return f"{whole:032}.{int((version - whole) * _UNITS):016}"


def version_number(version: str) -> float:
    """The number for a version the server wrote: exact for `version_text`'s form; for
    the adapter's own `"<integer>.<random fraction>"`, its integer plus the fraction
    scaled into [0, 0.999), the range of the store's own versions."""
    whole, _, rest = version.partition(".")
    if _SHOWN_NUMBER.fullmatch(version):
        return int(whole) + int(rest) / _UNITS
    try:
        fraction = min(max(float(rest), 0.0), 1.0) if rest else 0.0
    except ValueError:
        fraction = 0.0
    return (int(whole) if whole.isdigit() else 0) + fraction * 0.999


def _is_number(version: Any) -> bool:
    return type(version) in (int, float)


def _map_versions(checkpoint: Checkpoint, convert: Any) -> Checkpoint:
    """A copy of `checkpoint` with every channel version (also those seen by nodes) converted."""
    return {
        **checkpoint,
        "channel_versions": {k: convert(v) for k, v in checkpoint["channel_versions"].items()},
        "versions_seen": {
            node: {k: convert(v) for k, v in seen.items()} for node, seen in checkpoint["versions_seen"].items()
        },
    }


def _as_text(version: Any) -> Any:
    return version_text(version) if _is_number(version) else version


def _as_number(version: Any) -> Any:
    return version_number(version) if isinstance(version, str) else version


def _has_numbers(checkpoint: Checkpoint) -> bool:
    return any(_is_number(v) for v in checkpoint["channel_versions"].values())


class ServerSaver(BaseCheckpointSaver):
    """The store as the LangGraph server sees it (see the module's docstring).

    Everything the server's adapter does not call (`threads`, `attachment_database`,
    `read_messages`...) is the wrapped `ThreadSaver`'s own."""

    def __init__(self, saver: ThreadSaver) -> None:
        super().__init__(serde=saver.serde)
        self.saver = saver
        self._numbers: OrderedDict[str, bool] = OrderedDict()
        """Whether a thread's versions are numbers in the store, as its last read found."""
        self._owners: OrderedDict[tuple[str, str], None] = OrderedDict()
        """(thread, user) pairs found to be the user's (or not yet anyone's)."""

    def __getattr__(self, name: str) -> Any:
        if name == "saver":  # not set yet (or a copy being made): no saver to ask
            raise AttributeError(name)
        return getattr(self.saver, name)

    @staticmethod
    def _remember(table: OrderedDict, key: Any, value: Any) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > _REMEMBERED:
            table.popitem(last=False)

    async def _check_owner(self, config: RunnableConfig) -> None:
        """`ThreadNotFoundError` if a signed-in caller's run touches a thread of someone else's."""
        configurable = config.get("configurable") or {}
        user = configurable.get("langgraph_auth_user_id")
        if not user:
            return
        thread_id = str(configurable["thread_id"])
        if (thread_id, user) in self._owners:
            return
        try:
            owner = (await self.saver.threads.aget(thread_id)).user_id
        except ThreadNotFoundError:
            owner = user  # a new thread: this run's first checkpoint makes it the caller's
        if owner != user:
            raise ThreadNotFoundError(thread_id)
        self._remember(self._owners, (thread_id, user), None)

    async def _numbers_in_store(self, thread_id: str, checkpoint: Checkpoint) -> bool:
        known = self._numbers.get(thread_id)
        if known is not None:
            return known
        if any(isinstance(v, str) and _SHOWN_NUMBER.fullmatch(v) for v in checkpoint["channel_versions"].values()):
            return True
        latest = await self.saver.aget_tuple({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}})
        numbers = latest is None or _has_numbers(latest.checkpoint)
        self._remember(self._numbers, thread_id, numbers)
        return numbers

    def _shown(self, found: CheckpointTuple) -> CheckpointTuple:
        if not _has_numbers(found.checkpoint):
            return found
        return found._replace(checkpoint=_map_versions(found.checkpoint, _as_text))

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        await self._check_owner(config)
        found = await self.saver.aget_tuple(config)
        configurable = config["configurable"]
        if found is not None:
            self._remember(self._numbers, str(configurable["thread_id"]), _has_numbers(found.checkpoint))
            return self._shown(found)
        if not configurable.get("checkpoint_id"):
            # No checkpoint yet: the thread starts with the store's own kind.
            self._remember(self._numbers, str(configurable["thread_id"]), True)
        return None

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        if config is not None:
            await self._check_owner(config)
        async for found in self.saver.alist(config, filter=filter, before=before, limit=limit):
            yield self._shown(found)

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        await self._check_owner(config)
        if await self._numbers_in_store(str(config["configurable"]["thread_id"]), checkpoint):
            checkpoint = _map_versions(checkpoint, _as_number)
            new_versions = {k: _as_number(v) for k, v in new_versions.items()}
        return await self.saver.aput(config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        await self._check_owner(config)
        await self.saver.aput_writes(config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await self.saver.adelete_thread(thread_id)
        # The id may come back as someone else's new thread.
        self._numbers.pop(str(thread_id), None)
        for pair in [p for p in self._owners if p[0] == str(thread_id)]:
            del self._owners[pair]

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await self.saver.adelete_for_runs(run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self.saver.acopy_thread(source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest", **kwargs: Any) -> None:
        await self.saver.aprune(thread_ids, strategy=strategy, **kwargs)


@asynccontextmanager
async def checkpointer() -> AsyncIterator[ServerSaver]:
    """Yield the store on `$THREADKEEPER_DATABASE_URL` (default ./data/threadkeeper.db; a
    `postgresql://` URL works the same), as the LangGraph server sees it (`ServerSaver`)."""
    policy = RetentionPolicy.from_env()
    async with open_async_saver() as saver:
        sweeping = SweepLoop(saver, policy).start()
        try:
            yield ServerSaver(saver)
        finally:
            await asyncio.to_thread(sweeping.stop)
