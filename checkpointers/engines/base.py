"""What the engine-neutral modules ask of an engine: plans of statements, and the steps
a call is made of.

Storage logic that needs SQL is written as a *plan*: a generator that yields each
statement (`Sql`) and is sent back its result. Each engine drives plans on its own
connections (`checkpointers.engines.postgres.connection.run`/`arun`, and
`checkpointers.engines.sqlite.run`), so the same plan serves sync and asyncio
callers, and a reader finds the SQL of one engine in one folder.

A call that also goes through the saver's public methods (writing a checkpoint,
pruning, deleting a thread) cannot run inside one transaction: it is written as
*steps*, a generator that yields `Read` and `Write` (a plan in a transaction of
its own) or `Call` (a saver method, with its async twin), and is sent back each
result. `drive` runs steps for sync callers, `adrive` for asyncio ones; this way
the engine-neutral logic (`checkpointers.sessions`, `checkpointers.attachments`,
the imports' `checkpointers.conversation.restore`) is written once for both engines
and both kinds of caller.

The store's upkeep is the other half (`Maintenance`, below, carried by each saver
as `saver.maintenance`). Retention (`checkpointers.retention`), erasure (`delete_user`) and the usage
statistics' reads (`checkpointers.stats`) are written once; what is SQL, or
depends on how an engine keeps its files, is behind this interface, one class
per engine (`engines/sqlite/maintenance.py`, `engines/postgres/maintenance.py`),
in the way Django's backends fill in `base/`. A saver of either engine carries
its engine's as `saver.maintenance`.

Statements that both engines run alike (the statistics' reads) are written
once with `?` marks; `reading()` gives a `query(sql, params)` that runs them in
one read snapshot, the PostgreSQL engine turning each `?` into its `%s` (none of
those statements holds a `?` or a `%` of its own).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

FETCH_ALL, FETCH_ONE, FETCH_NONE, FETCH_LATER = "all", "one", "none", "later"
"""What a plan is sent back for a statement. `FETCH_LATER`: nothing it looks at (its row count,
which it ignores); an engine may send the statement with the ones after it, or with the commit,
and report its error there (PostgreSQL's pipeline: one round trip for all of them)."""


@dataclass(frozen=True, slots=True)
class Sql:
    """One statement of a plan: SQL text from an engine's constants, and its parameters."""

    text: str
    params: Any = ()
    fetch: str = FETCH_ALL
    """`FETCH_ALL` (a list of rows), `FETCH_ONE` (a row or None), `FETCH_NONE` (the row count) or
    `FETCH_LATER` (the row count, or None where the engine sends the statement later)."""


Plan = Generator[Sql, Any, T]
"""A piece of storage logic: yields statements, is sent their results, returns its answer."""


@dataclass(frozen=True, slots=True)
class Read:
    """A step: run `plan` in a read transaction (one snapshot)."""

    plan: Plan[Any]


@dataclass(frozen=True, slots=True)
class Write:
    """A step: run `plan` in a write transaction."""

    plan: Plan[Any]


@dataclass(frozen=True, slots=True)
class Call:
    """A step that goes through the saver: `sync()` for sync callers, `await asynchronous()` for asyncio ones."""

    sync: Callable[[], Any]
    asynchronous: Callable[[], Awaitable[Any]]


Steps = Generator[Read | Write | Call, Any, T]


class PlanRunner(Protocol):
    """How an engine runs the plans of engine-neutral modules."""

    blocking: bool
    """True when the engine's async methods would block the event loop (SQLite): then a
    whole call runs on a worker thread, holding `lock()`, as its sync twin does."""

    def lock(self) -> AbstractContextManager[Any]:
        """Held around a whole sync call: the engine's in-process write lock, if it has one."""

    def run(self, plan: Plan[T], *, write: bool) -> T: ...

    async def arun(self, plan: Plan[T], *, write: bool) -> T: ...


class _Walk:
    """Where a run of steps is: what to send next (a result, or an exception to throw in)."""

    def __init__(self, steps: Steps[Any]) -> None:
        self._steps = steps
        self._advance, self._value = steps.send, None
        self.answer: Any = None

    def next(self) -> Read | Write | Call | None:
        """The next step, or None when the steps returned (their answer in `answer`)."""
        try:
            return self._advance(self._value)
        except StopIteration as done:
            self.answer = done.value
            return None

    def result(self, value: Any) -> None:
        self._advance, self._value = self._steps.send, value

    def failed(self, exc: BaseException) -> None:
        """The step raised: throw it into the steps, which may undo what they did and re-raise."""
        self._advance, self._value = self._steps.throw, exc


def drive(runner: PlanRunner, steps: Steps[T]) -> T:
    """Run `steps` for a sync caller, under the engine's lock."""
    walk = _Walk(steps)
    with runner.lock():
        while (step := walk.next()) is not None:
            try:
                walk.result(step.sync() if isinstance(step, Call) else runner.run(step.plan, write=isinstance(step, Write)))
            except BaseException as exc:  # handed to the steps, which re-raise what they do not handle
                walk.failed(exc)
    return walk.answer


async def adrive(runner: PlanRunner, steps: Steps[T]) -> T:
    """Run `steps` for an asyncio caller: natively where the engine is asyncio, else on a
    worker thread as `drive` does."""
    if runner.blocking:
        import asyncio

        return await asyncio.to_thread(drive, runner, steps)
    walk = _Walk(steps)
    while (step := walk.next()) is not None:
        try:
            if isinstance(step, Call):
                walk.result(await step.asynchronous())
            else:
                walk.result(await runner.arun(step.plan, write=isinstance(step, Write)))
        except BaseException as exc:  # as in `drive`
            walk.failed(exc)
    return walk.answer


class Transfer(PlanRunner, Protocol):
    """What import and export ask of an engine beyond the public API (carried by each
    saver as `saver.transfer`): putting a thread brought in from elsewhere back as it
    was there (`checkpointers.conversation.restore`, `date_messages`). Each method but
    `seal_title` is a plan fragment, run in the write transaction of the step that
    uses it; the SQL is in `engines/sqlite/transfer.py` and `engines/postgres/transfer.py`."""

    def seal_title(self, title: str | None, thread_id: str) -> str | None:
        """The title as the engine stores it (encrypted in an encrypted SQLite store)."""

    def add_thread(self, thread_id: str, owner: str | None, now: str) -> Plan[None]:
        """Insert the index row of a thread that has no messages (no checkpoint made
        one), and count it in the usage statistics."""

    def set_origin(
        self, thread_id: str, *, owner: str | None, created_at: str, updated_at: str, pinned: bool,
        metadata_json: str, title: str | None, keep_title: bool,
    ) -> Plan[None]:
        """Set the thread's owner, times, pin and metadata (JSON text), and its title
        (as stored) unless `keep_title`: the one the saver took from the first message."""

    def date_messages(
        self, thread_key: int, starts: list[tuple[int, int]] | None, records: list[tuple[str, int | None, str]]
    ) -> Plan[None]:
        """Replace the thread's `message_times` by `starts` ((message number, milliseconds):
        that message and the ones after it until the next start were said then), unless
        None; and put each (message id, microseconds or None, metadata JSON) in
        `message_metadata`, replacing the message's earlier record."""


class Maintenance(Protocol):
    location: str
    """Where the store is, for people: the file's absolute path, or the URL without its password."""
    data_dir: str
    """A folder of the server's own beside the store (the web chat's cookie secret lives there)."""
    erasure_note: str
    """What `delete_user` leaves behind, in a few words for the person who ran it."""

    # -- the retention sweep -------------------------------------------------

    def expired(
        self, cutoff: str, limit: int, after: tuple[str, str] | None, *, keep_latest: bool
    ) -> list[tuple[str, str]]:
        """Up to `limit` `(updated_at, thread_id)` of unpinned threads last updated before
        `cutoff`, oldest first, after `after`; with `keep_latest`, only those with more
        than one checkpoint."""

    def attachment_bytes(self, thread_ids: Sequence[str], cutoff: str) -> int:
        """The bytes of the attachments of those of `thread_ids` still expired at `cutoff`."""

    def take_lease(self, owner: str) -> bool:
        """Become the one sweeper of the store (across processes); False if another is."""

    def renew_lease(self, owner: str) -> None:
        """Keep the lease through a long sweep."""

    def release_lease(self, owner: str) -> None:
        """Let another sweeper have the store; also frees what the sweep held."""

    def between_batches(self) -> None:
        """Housework while a sweep rests between batches (SQLite: copy the WAL into the file)."""

    def bytes_in_use(self) -> int:
        """Bytes the store's rows take now (before and after a sweep: what it freed)."""

    def erase_traces(
        self, *, wait: bool = True, between_steps: Callable[[float], None] | None = None, hold_s: float | None = None
    ) -> None:
        """After deletions: take deleted text out of what the engine keeps beside live rows."""

    def forget_user(self, user_id: str) -> None:
        """Take a user's id out of the usage statistics (`stats.user_erased`), in one transaction."""

    def record_sweep(self, report: Any, host: str, *, keep_latest: bool) -> None:
        """Add a row to `sweeps` and, for a real sweep, count it in the usage statistics."""

    def recent_sweeps(self, limit: int) -> list[dict[str, Any]]:
        """The latest rows of `sweeps`, newest first."""

    # -- statistics and status -------------------------------------------------

    def reading(self) -> AbstractContextManager[Callable[..., list[tuple]]]:
        """A `query(sql, params=())` for statements written with `?`, all in one snapshot."""

    def database_bytes(self) -> int:
        """What the store takes on disk."""

    def attachment_totals(self, query: Callable[..., list[tuple]]) -> tuple[int, int]:
        """(attachments, their bytes)."""

    def schema_problem(self) -> str | None:
        """None if the store answers with this release's schema; else one sentence why not."""

    def describe(self) -> list[tuple[str, str]]:
        """(label, value) lines about the store for `threadkeeper status`."""
