"""Hostile inputs and the one rule every door must keep with them.

The rule (DESIGN.md, "Rules that keep the doors sound"): whatever a caller
sends, the answer is a result or one clear exception of the store's documented
kinds (`StoreError` and its subclasses, or a `ValueError` of our own with one
short sentence), never another exception type, never a hang; and afterwards the
store still works for everyone else.

`attempt()` applies the rule to one call and counts it; `COUNTS` is what
`bench/hostile.py` prints (and what the test session writes to
`$THREADKEEPER_HOSTILE_COUNTS`, if set). The Hypothesis profile is chosen by
`$THREADKEEPER_HOSTILE_PROFILE`: `default` keeps `make test` quick on two
cores, `bench` tries many more inputs (`$THREADKEEPER_HOSTILE_EXAMPLES` per property).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from checkpointers import StoreError

# -- Hypothesis profiles -------------------------------------------------------

_QUIET = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]
DEFAULT_EXAMPLES = 30
BENCH_EXAMPLES = int(os.environ.get("THREADKEEPER_HOSTILE_EXAMPLES") or 300)
# No example database: a run leaves nothing behind in the project directory. `make test`
# draws the same inputs every run (a failure there is never luck); the bench draws new ones.
settings.register_profile("hostile", max_examples=DEFAULT_EXAMPLES, deadline=None, suppress_health_check=_QUIET,
                          database=None, derandomize=True)
settings.register_profile("hostile-bench", max_examples=BENCH_EXAMPLES, deadline=None, suppress_health_check=_QUIET,
                          database=None)
PROFILE = "bench" if os.environ.get("THREADKEEPER_HOSTILE_PROFILE") == "bench" else "default"
HOSTILE = settings.get_profile("hostile-bench" if PROFILE == "bench" else "hostile")
"""Use as `@HOSTILE` on a property test."""


def scaled(examples: int) -> settings:
    """A slow property's own example count, scaled up in the bench profile as the others are."""
    if PROFILE == "bench":
        examples = max(examples, examples * BENCH_EXAMPLES // DEFAULT_EXAMPLES)
    return settings(HOSTILE, max_examples=examples)


# -- what to send ---------------------------------------------------------------

SPECIALS = [
    "\ud800", "\udfff", "\udc80", "\udcff", "\x00", "\n", "\r\n", "\t", "\x1b[31m", "\u202e", "\ufeff",
    "\u0301", "e\u0301", "\u200b", "💥", "👩‍👩‍👧", "\U0010ffff", "Ω", "ß", "İ", "'", '"', "\\", "`", "%",
    "%2F", "%00", "%s", "?", "#", "/", "..", "../", "..\\", "*", "^", ":", "(", ")", "{", "}", "[", "]",
    "-", "+", "NEAR", "NEAR(a b, 2)", "OR", "AND", "NOT", "body:", "col*", '"unterminated', "'; DROP TABLE threads; --",
    "$", "$gt", "$.a", "json_extract(", "NULL", "null", "None", "0x00", "🙂" * 3, " ", "",
]
"""Pieces that have broken text-handling code somewhere: encodings, URIs, SQL, FTS5 and JSON paths."""

BIG = ["x" * 200_000, "\ud800" * 1000 + "x", "word " * 50_000, "é" * 100_000]


def hostile_text(max_pieces: int = 12) -> st.SearchStrategy[str]:
    """Any text, weighted towards the pieces above (Hypothesis alone rarely draws a lone surrogate)."""
    piece = st.one_of(
        st.text(st.characters(exclude_categories=[]), max_size=8),
        st.sampled_from(SPECIALS),
    )
    return st.one_of(
        st.lists(piece, max_size=max_pieces).map("".join),
        st.text(max_size=40),
    )


def hostile_text_or_big() -> st.SearchStrategy[str]:
    return st.one_of(hostile_text(), st.sampled_from(BIG))


def hostile_id() -> st.SearchStrategy[Any]:
    """Thread and user ids as a crafted request or a Python caller can send them."""
    return st.one_of(
        hostile_text(6),
        st.sampled_from(["x\x00y", "\x00", "\ud800", "a\udcffb", "", " ", "../../etc/passwd", "%2F..%2F", "*", "%",
                         "'", "NULL", "x" * 5000, "\u202eevil"]),
        st.integers(min_value=-(2**70), max_value=2**70),
    )


def json_value(leaves: st.SearchStrategy | None = None) -> st.SearchStrategy[Any]:
    """Any JSON value (what a browser can put in a request)."""
    base = leaves or st.one_of(
        st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False), hostile_text(4),
    )
    return st.recursive(base, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(hostile_text(3), inner, max_size=3)), max_leaves=6)


def metadata_values() -> st.SearchStrategy[Any]:
    """Values for typed metadata and filters: the allowed kinds and some that are not."""
    return st.one_of(
        st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(), hostile_text(4), st.binary(max_size=8), st.just(bytearray(b"\x00\xff")),
        st.just(object()), st.just(float("nan")), st.sets(st.integers(), max_size=2),
    )


def metadata_keys() -> st.SearchStrategy[Any]:
    return st.one_of(
        hostile_text(4),
        st.sampled_from(["topic", "a", "$and", "$or", "$not", "$in", "$gt", "$eq", "$ne", "$bogus", "a.b", 'a"b', "a\\",
                         "a'b", "$.x", "x" * 200, "\x00", "\ud800", "é", "a[0]"]),
        st.integers(), st.none(),
    )


def metadata_filters() -> st.SearchStrategy[Any]:
    """Filters in the `$and/$or/$not/$in/$gt...` syntax, well-formed or not."""
    operand = st.one_of(metadata_values(), st.lists(metadata_values(), max_size=3))
    comparison = st.dictionaries(st.sampled_from(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$", "gt"]), operand, max_size=2)
    leaf = st.dictionaries(metadata_keys(), st.one_of(operand, comparison), max_size=3)

    def combine(inner: st.SearchStrategy) -> st.SearchStrategy:
        return st.one_of(
            st.builds(lambda op, items: {op: items}, st.sampled_from(["$and", "$or"]), st.lists(inner, max_size=3)),
            st.builds(lambda item: {"$not": item}, inner),
            st.builds(lambda op, item: {op: item}, st.sampled_from(["$and", "$or", "$not"]), metadata_values()),
        )

    return st.one_of(st.recursive(leaf, combine, max_leaves=6), metadata_values(), st.lists(leaf, max_size=2))


def tokens() -> st.SearchStrategy[Any]:
    """What a crafted request can put where the page keeps its identity (a BrowserState)."""
    return st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), hostile_text(6),
        st.sampled_from(["anon-x.y", "anon-é.ab", ".", "a.", ".b", "anon-\x00.ff", "\ud800.\udc00", "x" * 100_000 + ".y"]),
        st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    )


# -- the rule ---------------------------------------------------------------

RAW_PHRASES = (
    "surrogates not allowed", "codec can't", "embedded null", "null character", "Traceback", "sqlite3.",
    "OperationalError", "too many columns", "database or disk is full", "disk I/O error",
    "object has no attribute", "not subscriptable", "unhashable type", "'NoneType' object",
)
"""Phrases that mean a library's raw error reached the caller instead of our sentence."""

MAX_SENTENCE = 300


def documented(exc: BaseException) -> bool:
    """A store error, or a ValueError of our own or plainly raised (never a UnicodeError, a JSON or pydantic error)."""
    if isinstance(exc, StoreError):
        return True
    if not isinstance(exc, ValueError) or isinstance(exc, UnicodeError):
        return False
    return type(exc) is ValueError or type(exc).__module__.split(".")[0] in ("checkpointers", "graph", "ui")


def sentence_problem(message: str, echoed: tuple = ()) -> str | None:
    """Why `message` is not one clear sentence, or None. What the caller sent may be quoted in it."""
    rest = message
    quoted = {v for v in echoed if isinstance(v, str) and v}
    quoted |= {os.path.basename(v) for v in quoted if os.path.basename(v)}  # a file named by its path
    for value in sorted(quoted, key=len, reverse=True):
        rest = rest.replace(repr(value), "«»").replace(value, "«»")
    if not message.strip():
        return "the message is empty"
    if "\n" in rest:
        return "the message has more than one line"
    if len(rest) > MAX_SENTENCE:
        return f"the message is {len(rest)} characters long"
    for phrase in RAW_PHRASES:
        if phrase.lower() in rest.lower():
            return f"the message is a raw library error ({phrase!r})"
    return None


@dataclass
class Counts:
    tried: Counter = field(default_factory=Counter)
    """Inputs tried, by surface."""
    refused: Counter = field(default_factory=Counter)
    tracebacks: Counter = field(default_factory=Counter)
    """Exceptions of another kind, or raw messages, that reached the caller."""
    hangs: int = 0
    cross_user_attempts: Counter = field(default_factory=Counter)
    """Attempts to reach another user's thread, by door."""
    cross_user_reads: Counter = field(default_factory=Counter)
    """Attempts that got something of the other user's (must stay 0)."""
    cross_user_writes: Counter = field(default_factory=Counter)
    """Attempts that changed the other user's thread (must stay 0)."""
    problems: Counter = field(default_factory=Counter)
    """Each distinct way the rule was broken (surface, exception, message), with how often it was met."""

    def broke(self, surface: str, what: str) -> None:
        """Count one call that broke the rule (Hypothesis replays a failing input while it shrinks it)."""
        self.tracebacks[surface] += 1
        self.problems[f"{surface}: {what[:120]}"] += 1

    def as_dict(self) -> dict:
        return {
            "tried": dict(self.tried),
            "refused": dict(self.refused),
            "tracebacks": dict(self.tracebacks),
            "hangs": self.hangs,
            "cross_user_attempts": dict(self.cross_user_attempts),
            "cross_user_reads": dict(self.cross_user_reads),
            "cross_user_writes": dict(self.cross_user_writes),
            "problems": dict(self.problems),
        }

    def save(self) -> None:
        """Add these counts to the file named by `$THREADKEEPER_HOSTILE_COUNTS` (one JSON object)."""
        target = os.environ.get("THREADKEEPER_HOSTILE_COUNTS")
        if not target:
            return
        try:
            with open(target) as f:
                total = json.load(f)
        except (OSError, ValueError):
            total = {}
        for key, value in self.as_dict().items():
            if isinstance(value, dict):
                merged = Counter(total.get(key, {}))
                merged.update(value)
                total[key] = dict(merged)
            else:
                total[key] = total.get(key, 0) + value
        with open(target, "w") as f:
            json.dump(total, f, indent=1, sort_keys=True)


COUNTS = Counts()


class Refused:
    """A call that ended in one documented exception."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __repr__(self) -> str:
        return f"Refused({type(self.exc).__name__}: {self.exc})"


TIMEOUT_S = 60.0


def within(seconds: float, fn, *args: Any, **kwargs: Any) -> Any:
    """fn(*args, **kwargs), on a daemon thread so a hang fails the test instead of the run."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the caller below
            box["exc"] = exc

    worker = threading.Thread(target=run, daemon=True, name="hostile-call")
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        COUNTS.hangs += 1
        raise AssertionError(f"{getattr(fn, '__qualname__', fn)} gave no answer within {seconds:g} s")
    if "exc" in box:
        raise box["exc"]
    return box["value"]


def attempt(surface: str, fn, *args: Any, echoed: tuple = (), **kwargs: Any) -> Any:
    """Call `fn` under the rule: its result, or `Refused` for one documented exception.

    Anything else (another exception type, a raw or many-line message, a hang)
    fails the test, naming the surface. Iterators are drained inside the call."""
    COUNTS.tried[surface] += 1

    def call() -> Any:
        value = fn(*args, **kwargs)
        if hasattr(value, "__next__"):
            value = list(value)
        return value

    try:
        return within(TIMEOUT_S, call)
    except AssertionError:
        raise
    except BaseException as exc:
        if not documented(exc):
            COUNTS.broke(surface, f"{type(exc).__name__}: {exc}")
            raise AssertionError(f"{surface}: {type(exc).__name__} reached the caller: {str(exc)[:300]}") from exc
        problem = sentence_problem(str(exc), echoed + args + tuple(kwargs.values()))
        if problem:
            COUNTS.broke(surface, f"{type(exc).__name__}: {problem}")
            raise AssertionError(f"{surface}: {type(exc).__name__}: {problem}: {str(exc)[:300]!r}") from exc
        COUNTS.refused[surface] += 1
        return Refused(exc)


def run_cli(argv: list[str], stdin: str = "") -> tuple[int, str, str]:
    """`threadkeeper ARGV` in this process: (exit status, stdout, stderr). An exception is a traceback to the user."""
    from ui.cli import main

    out, err = io.StringIO(), io.StringIO()
    real_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main(argv)
            except SystemExit as exc:  # argparse
                status = exc.code if isinstance(exc.code, int) else 2
    finally:
        sys.stdin = real_stdin
    return status, out.getvalue(), err.getvalue()
