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
