"""A person's mistake on the page: one warning for them, one log line for the operator,
and every component left as it was."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from typing import Any

import gradio as gr

from checkpointers import StoreError, ThreadNotFoundError
from ui.turns import NOT_FOUND

log = logging.getLogger("threadkeeper.web")


class Refusal(gr.Error):
    """Something a person asked for that is not done, in one sentence: nothing to
    retry, a file that is not a database, a thread that is not theirs.

    A handler raises it; a caller in Python gets it as the `gr.Error` it is. On
    the page (`on_page`) it becomes a warning toast and leaves every component
    as it was: a raised `gr.Error` would mark every output of the event as
    failed, an "Error" badge on each, in Gradio 6."""

    def __init__(self, message: str) -> None:
        super().__init__(message, print_exception=False)


def _as_refusal(exc: Exception) -> Refusal:
    if isinstance(exc, ThreadNotFoundError):
        return Refusal(NOT_FOUND)
    return Refusal(str(exc))


def user_errors(handler):
    """A handler whose store and input errors (a `StoreError`, or a `ValueError` such as
    `ui.turns.TurnRefused`, with one sentence) are refusals: `Refusal`, never a traceback."""

    if inspect.isasyncgenfunction(handler):

        @functools.wraps(handler)
        async def streamed(*args: Any, **kwargs: Any):
            try:
                async with contextlib.aclosing(handler(*args, **kwargs)) as stream:
                    async for value in stream:
                        yield value
            except gr.Error:
                raise
            except (StoreError, ValueError) as exc:
                raise _as_refusal(exc) from exc

        return streamed

    @functools.wraps(handler)
    def wrapped(*args: Any, **kwargs: Any):
        try:
            return handler(*args, **kwargs)
        except gr.Error:  # a Refusal, or who the caller is could not be told
            raise
        except (StoreError, ValueError) as exc:
            raise _as_refusal(exc) from exc

    return wrapped


def on_page(handler, refused: Any = None):
    """`handler` as an event of the page: a `Refusal` becomes a warning toast and one
    line in the operator's log, and the event's outputs get `refused` (by default
    `gr.skip()`: every output stays as it was). A handler that streams (an async
    generator) yields `refused` once instead."""
    refused = gr.skip() if refused is None else refused

    def tell(exc: Refusal) -> None:
        cause = exc.__cause__
        detail = f" ({type(cause).__name__})" if cause is not None else ""
        log.warning("%s refused%s: %s", handler.__name__, detail, exc.message)
        gr.Warning(exc.message)

    if inspect.isasyncgenfunction(handler):

        @functools.wraps(handler)
        async def streamed(*args: Any, **kwargs: Any):
            try:
                async with contextlib.aclosing(handler(*args, **kwargs)) as stream:
                    async for value in stream:
                        yield value
            except Refusal as exc:
                tell(exc)
                yield refused

        return streamed

    @functools.wraps(handler)
    def answered(*args: Any, **kwargs: Any):
        try:
            return handler(*args, **kwargs)
        except Refusal as exc:
            tell(exc)
            return refused

    return answered
