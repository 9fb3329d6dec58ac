"""Import a folder of `<session-uuid>.json` chat histories (`threadkeeper import-json`).

Each file holds one session's messages as LangChain's `messages_to_dict`
writes them (a list, or `{"messages": [...]}`), and may have a
`<session-uuid>.db` SQLite database beside it. Each becomes a thread:

* its id is the file's uuid (in canonical lowercase form),
* its messages are written as one LangGraph checkpoint, so the chat graph,
  the web chat and `saver.sessions` see them; the title is the start of the
  first human message,
* its times come from the file: updated = the file's modification time,
  created = its birth time where the file system records one, else the same;
  the messages (which carry no times of their own) are dated at creation,
* the `.db` file, if any, is attached to it (`saver.attachments`).

A file whose thread already exists is skipped, so running the import again
adds nothing. A file that is empty, truncated, not JSON, not a list of
LangChain messages, or not named after a uuid is reported by name, in one
line, and the import carries on; if its database cannot be attached, the
session is not imported either (a later run retries it).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.messages import BaseMessage, messages_from_dict

from checkpointers import conversation
from checkpointers.attachments import AttachmentError
from checkpointers.conversation import iso, to_micros

if TYPE_CHECKING:
    from checkpointers.engines.sqlite.saver import ThreadSaver


class BadSessionFile(ValueError):
    """A session file that cannot be imported; the message says why in a few words."""


@dataclass
class ImportSummary:
    imported: int = 0
    skipped: int = 0
    failed: int = 0
    messages: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """The closing line of `threadkeeper import-json`."""
        rate = self.imported / self.seconds if self.seconds > 0 else 0.0
        line = (
            f"imported {self.imported:,} sessions ({self.messages:,} messages), "
            f"skipped {self.skipped:,} already there, failed {self.failed:,}, "
            f"in {self.seconds:.2f} s ({rate:,.0f} sessions/s)"
        )
        if self.imported == 0 and self.failed == 0 and self.skipped:
            line = f"nothing new: all {self.skipped:,} sessions were imported before. " + line
        return line


def json_problem(text: str, exc: json.JSONDecodeError) -> str:
    """What is wrong with text that does not parse: cut short, or not JSON at all."""
    if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string"):
        return "truncated: its JSON ends early"
    return f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"


def read_messages(text: str) -> list[BaseMessage]:
    """The messages of one session file's text; BadSessionFile says what is wrong."""
    if not text.strip():
        raise BadSessionFile("the file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadSessionFile(f"the file is {json_problem(text, exc)}") from None
    if isinstance(data, dict) and isinstance(data.get("messages"), list):
        data = data["messages"]
    if not isinstance(data, list):
        raise BadSessionFile("the file does not hold a list of LangChain messages (messages_to_dict format)")
    if not data:
        raise BadSessionFile("the file holds no messages")
    messages = []
    for number, item in enumerate(data, start=1):
        if not isinstance(item, dict) or not isinstance(item.get("type"), str) or not isinstance(item.get("data"), dict):
            raise BadSessionFile(f"message {number} is not a LangChain message dict (needs 'type' and 'data')")
        try:
            messages.append(messages_from_dict([item])[0])
        except Exception as exc:  # pydantic and LangChain raise several kinds
            reason = str(exc).splitlines()[0][:120]
            raise BadSessionFile(f"message {number} is not a valid LangChain message ({reason})") from None
    return messages


def file_times(path: Path) -> tuple[datetime, datetime]:
    """(created, updated) of a file: birth time where recorded, else the modification time.

    Both to the millisecond, the resolution at which `message_times` dates messages.
    """
    stat = path.stat()
    updated = _to_millisecond(stat.st_mtime_ns)
    born = getattr(stat, "st_birthtime", None)
    created = _to_millisecond(int(born * 1e9)) if born else updated
    return min(created, updated), updated


def _to_millisecond(nanoseconds: int) -> datetime:
    return conversation.from_micros(nanoseconds // 1_000_000 * 1_000)


def session_id_of(path: Path) -> str:
    try:
        return str(uuid.UUID(path.stem))
    except ValueError:
        raise BadSessionFile("the name is not a session uuid (expected <uuid>.json)") from None


def import_json_folder(
    saver: ThreadSaver,
    directory: str | os.PathLike,
    *,
    user_id: str | None = None,
    report: Callable[[str], Any] = print,
) -> ImportSummary:
    """Import every `*.json` file of `directory` (not its subfolders), in name order.

    `report` receives one line per file that was skipped for a reason worth
    reading or that failed. Raises ValueError if `directory` is not a folder.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    summary = ImportSummary()
    started = time.perf_counter()
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() == ".json" and p.is_file()):
        try:
            outcome = _import_file(saver, path, user_id)
        except BadSessionFile as exc:
            summary.failed += 1
            line = f"{path.name}: {exc}"
        except AttachmentError as exc:
            summary.failed += 1
            line = f"{path.name}: not imported, its database cannot be attached: {exc}"
        else:
            if isinstance(outcome, int):
                summary.imported += 1
                summary.messages += outcome
                continue
            summary.skipped += 1
            if outcome is None:
                continue
            line = f"{path.name}: {outcome}"
        summary.problems.append(line)
        report(line)
    summary.seconds = time.perf_counter() - started
    return summary


def _import_file(saver: ThreadSaver, path: Path, user_id: str | None) -> int | str | None:
    """The number of messages imported, or why the file was skipped (None: it was imported before)."""
    session_id = session_id_of(path)
    exists, owner = conversation.owner_of(saver, session_id)
    if exists:
        return None if owner == user_id else "skipped: a thread with this id already exists for another user"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadSessionFile("the file is not UTF-8 text") from None
    except OSError as exc:
        raise BadSessionFile(f"the file cannot be read ({exc.strerror or exc})") from None
    messages = read_messages(text)
    created, updated = file_times(path)
    conversation.restore(
        saver,
        session_id,
        messages,
        user_id=user_id,
        created_at=iso(created),
        updated_at=iso(updated),
        message_times=[to_micros(created)] * len(messages),
    )
    database = path.with_suffix(".db")
    if database.is_file():
        try:
            saver.attachments.attach(session_id, database, user_id=user_id)
        except BaseException:
            saver.delete_threads([session_id])
            raise
    return len(messages)
