"""Prometheus metrics of the web app, on a registry of the project's own.

    timer = metrics.turn(thread_id)               # a chat turn starts (ui/web.py)
    graph.astream(..., timer.config(config))      # the model's calls are timed through callbacks
    timer.answered()                              # or metrics.turn_failed(thread_id, exc)
    timer.end()                                   # in a `finally`: counted once, `stopped` if neither

    metrics.time_store_calls(saver)               # once, when the app starts
    metrics.render()                              # the text `GET /metrics` returns

Names follow Prometheus' conventions: the `threadkeeper_` prefix, base units
(seconds, bytes), `_total` on counters (prometheus_client adds it). Labels are
small fixed sets (an outcome, an error's kind, a part of a turn, a token
direction); never a user id, a thread id or any text.

A turn's time is split in two parts measured apart: `model` (from the chat
model's start to its end, through LangChain's callbacks, every model call of
the turn) and `store` (inside the saver's methods, as LangGraph calls them for
the turn's thread); `total` is the whole turn, streaming included.

What the store holds (threads, database bytes, sweeps) is read from the store
when Prometheus scrapes, so several processes on one database agree.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger("threadkeeper.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SLOW_TURN_VARIABLE = "THREADKEEPER_SLOW_TURN_S"
SLOW_TURN_S = 30.0
"""A turn longer than this (seconds, `THREADKEEPER_SLOW_TURN_S`) gets a log line."""

disable_created_metrics()  # `_created` series double every counter's lines and say nothing an operator needs
REGISTRY = CollectorRegistry(auto_describe=True)

TURNS = Counter("threadkeeper_turns", "Chat turns, by how they ended (ok, model_error, store_error, stopped).",
                ["outcome"], registry=REGISTRY)
TURN_SECONDS = Histogram(
    "threadkeeper_turn_duration_seconds",
    "Time of a chat turn: the whole turn (total), in the model (model), in the store (store).",
    ["part"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
    registry=REGISTRY,
)
MODEL_ERRORS = Counter("threadkeeper_model_errors", "Model calls that failed, by kind (timeout, rate_limit, ...).",
                       ["kind"], registry=REGISTRY)
STORE_ERRORS = Counter("threadkeeper_store_errors", "Chat turns the store could not save, by kind.",
                       ["kind"], registry=REGISTRY)
TOKENS = Counter(
    "threadkeeper_tokens",
    "Model tokens, in (prompt) and out (reply); source=reported from the model's usage, estimated (4 chars a token) otherwise.",
    ["direction", "source"],
    registry=REGISTRY,
)
ACTIVE_STREAMS = Gauge("threadkeeper_active_streams", "Replies streaming now.", registry=REGISTRY)

for _outcome in ("ok", "model_error", "store_error", "stopped"):
    TURNS.labels(_outcome)
for _part in ("total", "model", "store"):
    TURN_SECONDS.labels(_part)


def slow_turn_s(environ: dict[str, str] | None = None) -> float:
    raw = (os.environ if environ is None else environ).get(SLOW_TURN_VARIABLE, str(SLOW_TURN_S))
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{SLOW_TURN_VARIABLE} must be a number of seconds above 0, not {raw!r}")
    return value


class TurnTimer(BaseCallbackHandler):
    """One turn's clock, from `turn()` to `end()`; as a LangChain callback handler
    (`config()` adds it to the graph's config) it times the model's calls and counts
    their tokens."""

    run_inline = True

    def __init__(self, thread_id: str, slow_s: float | None = None) -> None:
        self.thread_id = thread_id
        self.slow_s = slow_s
        self.started = time.perf_counter()
        self.model_s = 0.0
        self.store_s = 0.0
        self.outcome: str | None = None
        self.ended = False
        try:
            self.task: asyncio.Task | None = asyncio.current_task()
        except RuntimeError:  # no event loop: a synchronous turn
            self.task = None
        self._model_started: dict[UUID, tuple[float, int]] = {}

    def config(self, config: dict) -> dict:
        """The graph's config with this timer among its callbacks."""
        return {**config, "callbacks": [*(config.get("callbacks") or []), self]}

    def answered(self) -> None:
        """The turn's reply is complete (a failure `turn_failed` reported stands)."""
        if self.outcome is None:
            self.outcome = "ok"

    def end(self) -> None:
        """Count the turn (once): `ok` once `answered`, a failure if `turn_failed` said so,
        else `stopped` (cancelled, or its stream closed before the end)."""
        if self.ended:
            return
        self.ended = True
        ACTIVE_STREAMS.dec()
        with _turns_lock:
            if _turns.get(self.thread_id) is self:
                del _turns[self.thread_id]
        total = time.perf_counter() - self.started
        outcome = self.outcome or "stopped"
        TURNS.labels(outcome).inc()
        TURN_SECONDS.labels("total").observe(total)
        TURN_SECONDS.labels("model").observe(self.model_s)
        TURN_SECONDS.labels("store").observe(self.store_s)
        limit = self.slow_s if self.slow_s is not None else slow_turn_s()
        if total > limit:
            log.warning("slow turn: %.1f s (model %.1f s, store %.3f s; threshold %g s), %s",
                        total, self.model_s, self.store_s, limit, outcome)

    def on_chat_model_start(self, serialized: Any, messages: list[list[Any]], *, run_id: UUID, **kwargs: Any) -> None:
        chars = sum(_text_length(m.content) for batch in messages for m in batch)
        self._model_started[run_id] = (time.perf_counter(), chars)

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        started, prompt_chars = self._model_started.pop(run_id, (None, 0))
        if started is not None:
            self.model_s += time.perf_counter() - started
        for generations in getattr(response, "generations", []):
            for generation in generations:
                message = getattr(generation, "message", None)
                usage = getattr(message, "usage_metadata", None)
                if usage:
                    TOKENS.labels("in", "reported").inc(int(usage.get("input_tokens") or 0))
                    TOKENS.labels("out", "reported").inc(int(usage.get("output_tokens") or 0))
                else:
                    text = _text_length(getattr(message, "content", "")) if message is not None else len(generation.text)
                    TOKENS.labels("in", "estimated").inc(-(-prompt_chars // 4))
                    TOKENS.labels("out", "estimated").inc(-(-text // 4))

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        started, _ = self._model_started.pop(run_id, (None, 0))
        if started is not None:
            self.model_s += time.perf_counter() - started


def _text_length(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(p) if isinstance(p, str) else len(str(p.get("text", ""))) for p in content if isinstance(p, (str, dict)))
    return 0


_turns: dict[str, TurnTimer] = {}
"""The turn running on each thread (one at a time per thread), for the store's timer and shutdown."""
_turns_lock = threading.Lock()


def turn(thread_id: str, *, slow_s: float | None = None) -> TurnTimer:
    """Start timing a chat turn on `thread_id`; call `end()` on the timer when it is over."""
    timer = TurnTimer(thread_id, slow_s)
    with _turns_lock:
        _turns[thread_id] = timer
    ACTIVE_STREAMS.inc()
    return timer


def turn_failed(thread_id: str, exc: BaseException) -> None:
    """A model error (by its `reason`) or a store error (by its class) ended the turn on `thread_id`."""
    reason = getattr(exc, "reason", None)
    if reason is not None:
        MODEL_ERRORS.labels(_label(reason)).inc()
        outcome = "model_error"
    else:
        STORE_ERRORS.labels(_label(type(exc).__name__)).inc()
        outcome = "store_error"
    with _turns_lock:
        timer = _turns.get(thread_id)
    if timer is not None:
        timer.outcome = outcome


def active_turns() -> int:
    with _turns_lock:
        return len(_turns)


def cut_turns() -> int:
    """Cancel every turn still streaming (a shutdown past its grace period), as Stop does:
    each keeps the person's message and what its reply had shown. Returns how many."""
    with _turns_lock:
        tasks = [t.task for t in _turns.values() if t.task is not None and not t.task.done()]
    for task in tasks:
        task.get_loop().call_soon_threadsafe(task.cancel)
    return len(tasks)


def _label(value: str) -> str:
    """A label value from a fixed vocabulary (error reasons, class names), bounded all the same."""
    return "".join(c if c.isalnum() or c == "_" else "_" for c in str(value))[:40] or "unknown"


_in_store = contextvars.ContextVar("threadkeeper_in_store", default=False)

STORE_METHODS = ("get_tuple", "put", "put_writes", "aget_tuple", "aput", "aput_writes")


def time_store_calls(saver: Any) -> None:
    """Time the saver's methods LangGraph calls during a turn, for that turn's `store` part.

    Wraps them on this instance only. An async method that runs its sync twin on a
    worker thread (`asyncio.to_thread` copies the context) is timed once, by the outer call."""
    if getattr(saver, "_threadkeeper_timed", False):
        return
    for name in STORE_METHODS:
        method = getattr(saver, name, None)
        if method is not None:
            setattr(saver, name, (_timed_async if name.startswith("a") else _timed_sync)(method))
    saver._threadkeeper_timed = True


def _turn_of(config: Any) -> TurnTimer | None:
    try:
        thread_id = config["configurable"]["thread_id"]
    except (KeyError, TypeError):
        return None
    return _turns.get(str(thread_id)) if _turns else None


def _timed_sync(method: Callable) -> Callable:
    @functools.wraps(method)
    def timed(config: Any, *args: Any, **kwargs: Any) -> Any:
        timer = None if _in_store.get() else _turn_of(config)
        if timer is None:
            return method(config, *args, **kwargs)
        mark = _in_store.set(True)
        started = time.perf_counter()
        try:
            return method(config, *args, **kwargs)
        finally:
            timer.store_s += time.perf_counter() - started
            _in_store.reset(mark)

    return timed


def _timed_async(method: Callable) -> Callable:
    @functools.wraps(method)
    async def timed(config: Any, *args: Any, **kwargs: Any) -> Any:
        timer = None if _in_store.get() else _turn_of(config)
        if timer is None:
            return await method(config, *args, **kwargs)
        mark = _in_store.set(True)
        started = time.perf_counter()
        try:
            return await method(config, *args, **kwargs)
        finally:
            timer.store_s += time.perf_counter() - started
            _in_store.reset(mark)

    return timed


class StoreCollector:
    """What the store holds, read at each scrape: threads, database bytes, sweeps."""

    def __init__(self, read_figures: Callable[[], dict[str, int]]) -> None:
        self._read = read_figures

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[Any]:
        try:
            figures = self._read()
        except Exception:  # a scrape must answer; the store's trouble is logged and counted
            log.warning("metrics: could not read the store's figures", exc_info=True)
            STORE_ERRORS.labels("scrape").inc()
            return
        yield GaugeMetricFamily("threadkeeper_threads", "Threads in the store.", value=figures["threads"])
        yield GaugeMetricFamily("threadkeeper_database_bytes", "Size of the database file and its WAL, in bytes.",
                                value=figures["database_bytes"])
        yield CounterMetricFamily("threadkeeper_sweeps", "Retention sweeps finished (all processes).", value=figures["sweeps"])
        yield CounterMetricFamily("threadkeeper_swept_threads", "Threads deleted or compacted by retention sweeps.",
                                  value=figures["threads_swept"])


_collector: StoreCollector | None = None


def watch_store(read_figures: Callable[[], dict[str, int]]) -> None:
    """Serve the store's figures from `read_figures` (replacing an earlier store's)."""
    global _collector
    if _collector is not None:
        REGISTRY.unregister(_collector)
    _collector = StoreCollector(read_figures)
    REGISTRY.register(_collector)


def render() -> bytes:
    return generate_latest(REGISTRY)
