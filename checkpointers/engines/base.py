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
the engine-neutral logic (`checkpointers.sessions`, `checkpointers.attachments`)
is written once for both engines and both kinds of caller.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

FETCH_ALL, FETCH_ONE, FETCH_NONE = "all", "one", "none"


@dataclass(frozen=True, slots=True)
class Sql:
    """One statement of a plan: SQL text from an engine's constants, and its parameters."""

    text: str
    params: Any = ()
    fetch: str = FETCH_ALL
    """`FETCH_ALL` (a list of rows), `FETCH_ONE` (a row or None) or `FETCH_NONE` (the row count)."""


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


def drive(runner: PlanRunner, steps: Steps[T]) -> T:
    """Run `steps` for a sync caller, under the engine's lock. A step that raises has its
    exception thrown into `steps`, which may undo what it did and re-raise."""
    with runner.lock():
        advance, value = steps.send, None
        while True:
            try:
                step = advance(value)
            except StopIteration as done:
                return done.value
            try:
                if isinstance(step, Call):
                    value = step.sync()
                else:
                    value = runner.run(step.plan, write=isinstance(step, Write))
                advance = steps.send
            except BaseException as exc:  # handed to the steps, which re-raise what they do not handle
                advance, value = steps.throw, exc


async def adrive(runner: PlanRunner, steps: Steps[T]) -> T:
    """Run `steps` for an asyncio caller: natively where the engine is asyncio, else on a
    worker thread as `drive` does."""
    if runner.blocking:
        import asyncio

        return await asyncio.to_thread(drive, runner, steps)
    advance, value = steps.send, None
    while True:
        try:
            step = advance(value)
        except StopIteration as done:
            return done.value
        try:
            if isinstance(step, Call):
                value = await step.asynchronous()
            else:
                value = await runner.arun(step.plan, write=isinstance(step, Write))
            advance = steps.send
        except BaseException as exc:  # as in `drive`
            advance, value = steps.throw, exc
