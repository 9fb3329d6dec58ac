"""What the store can keep exactly, checked where ids and text come in.

SQLite keeps text as UTF-8. A lone surrogate (`"\\ud800"`, which Python strings
and JSON allow) has no UTF-8 form: the serialiser silently turns it into `?`,
and the sqlite3 module raises when it binds it, once inside a deferred write
that then failed for every thread of the process. A NUL in an id is kept by
SQLite but cut short by its string functions, so a thread stored under
`"x\\x00y"` could never be deleted. Both are refused at the door, each with one
sentence, before anything is queued or written.
"""

from __future__ import annotations

import json
import re
from typing import Any

from checkpointers.errors import UnstorableInputError

MAX_ID_CHARS = 1000


def check_id(value: Any, what: str = "thread id") -> str:
    """`value` as the id the store keeps; `UnstorableInputError` if it cannot be kept exactly."""
    text = value if type(value) is str else str(value)
    if "\x00" in text:
        raise UnstorableInputError(f"A {what} cannot contain the NUL character.")
    if not text.isascii() and not _encodes(text):
        raise UnstorableInputError(f"A {what} cannot contain a lone surrogate (invalid Unicode).")
    if len(text) > MAX_ID_CHARS:
        raise UnstorableInputError(f"A {what} is {len(text):,} characters long; the limit is {MAX_ID_CHARS:,}.")
    return text


def check_ns(value: Any) -> str:
    """A checkpoint namespace (LangGraph makes them from node names and task ids; a caller's
    config may hold any) as `check_id` takes an id: PostgreSQL's `text` cannot hold a NUL,
    so both engines refuse one alike."""
    return check_id(value, "checkpoint namespace")


def check_task_path(value: Any) -> str:
    """A task's path as `put_writes` takes it (LangGraph's "~__pregel_pull, NODE" and the like):
    any length, but no NUL, which PostgreSQL's column uses to mark the usual path, and no
    lone surrogate; both engines refuse them alike."""
    text = value if type(value) is str else str(value)
    if "\x00" in text:
        raise UnstorableInputError("A task path cannot contain the NUL character.")
    return check_text(text, "task path")


def check_text(text: str, what: str = "message") -> str:
    """`text` unchanged if it can be stored exactly; `UnstorableInputError` otherwise."""
    if not text.isascii() and not _encodes(text):
        raise UnstorableInputError(
            f"The {what} contains a character that is not valid Unicode (a lone surrogate); it cannot be stored."
        )
    return text


def check_value(value: Any, what: str = "message") -> None:
    """Refuse a message or value holding, anywhere inside it, text that cannot be stored exactly."""
    if not _storable(value):
        raise UnstorableInputError(
            f"The {what} contains a character that is not valid Unicode (a lone surrogate); it cannot be stored."
        )


def checkpoint_metadata_json(metadata: dict[str, Any]) -> str:
    """A checkpoint's metadata (with what the run's config adds) as the JSON both engines
    keep; `UnstorableInputError` if it holds a lone surrogate, or a NUL, which PostgreSQL's
    `jsonb` cannot hold (refused on both engines alike, so a store can move)."""
    text = check_text(json.dumps(metadata, ensure_ascii=False, separators=(",", ":"), default=repr), "metadata")
    if _JSON_NUL.search(text):
        raise UnstorableInputError("The run's metadata cannot contain the NUL character.")
    return text


_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
r"""A NUL in JSON text: `\u0000` after an even number of backslashes (`\\u0000` is a backslash, then "u0000")."""


def jsonb_storable(value: Any) -> bool:
    """Whether PostgreSQL's `jsonb` can hold `value` (JSON-like): no NUL and no lone surrogate
    in any key or text of it."""
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return storable_text(text) and not _JSON_NUL.search(text)


def storable_text(text: str) -> bool:
    """Whether `text` can be stored exactly (it has a UTF-8 form)."""
    return text.isascii() or _encodes(text)


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _storable(value: Any) -> bool:
    kind = type(value)
    if kind is str:
        return value.isascii() or _encodes(value)
    if kind is dict:
        return all(_storable(k) and _storable(v) for k, v in value.items())
    if kind is list or kind is tuple:
        return all(_storable(v) for v in value)
    fields = getattr(value, "__dict__", None)
    if fields is not None and kind.__module__.startswith("langchain_core."):
        return _storable(fields)
    return True
