"""A user's data as one JSON document: `threadkeeper export` and `threadkeeper import`.

    {
      "format": "threadkeeper-export", "version": 1,
      "exported_at": "2026-03-01T09:30:00.000000+00:00",
      "user_id": "alice",
      "threads": [
        {
          "thread_id": "3f2c...", "title": "Trip plans",
          "created_at": "...", "updated_at": "...", "pinned": false,
          "metadata": {"topic": "travel", "photo": {"$bytes": "89504e47"}},
          "messages": [{"type": "human", "data": {"content": "...", "id": "..."}}, ...],
          "message_times": ["2026-02-27T18:01:02.345000+00:00", ...],
          "message_metadata": {"<message id>": {"lang": "en"}},
          "attachment": {"name": "sales.db", "attached_at": "...", "base64": "U1FMaXRl..."}
        }
      ]
    }

Threads are listed newest first. `messages` is LangChain's `messages_to_dict`
form; `message_times` gives each message's creation time; metadata is stored
JSON, bytes tagged as in `checkpointers.metadata`; `attachment` is null or the
attached database, byte for byte. Reading a document back restores all of it,
so exporting again gives the same document apart from `exported_at`. What is
not exported: a thread's earlier checkpoints (time travel) and the agent's
working state, which the next turn recomputes.

Importing validates the whole document before writing anything: a document
that is not one of these, or is damaged, is refused with one sentence. A
thread whose id already exists is skipped and reported, unless `replace` is
set and it is the same user's.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from langchain_core.messages import BaseMessage, messages_from_dict, messages_to_dict

from checkpointers import conversation, metadata as md
from checkpointers.attachments import SQLITE_HEADER, AttachmentError
from checkpointers.conversation import iso, to_micros
from checkpointers.importer import json_problem
from checkpointers.threads import ANY_USER
from checkpointers.messages import utc_now

if TYPE_CHECKING:
    from checkpointers.engines.sqlite.saver import ThreadSaver

FORMAT = "threadkeeper-export"
VERSION = 1


class ExportFormatError(ValueError):
    """A document that is not a threadkeeper export this version can read."""


@dataclass
class TransferSummary:
    threads: int = 0
    messages: int = 0
    attachments: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


# -- export -------------------------------------------------------------------


def export_user(saver: ThreadSaver, user_id: str | None) -> dict[str, Any]:
    """Every thread of `user_id` as one export document (see the module docstring)."""

    threads = [
        export_thread(saver, session.session_id)
        for session in saver.sessions.iter_recent_sessions(user_id)
    ]
    return {"format": FORMAT, "version": VERSION, "exported_at": utc_now(), "user_id": user_id, "threads": threads}


def export_thread(saver: ThreadSaver, thread_id: str) -> dict[str, Any]:
    info = saver.threads.get(thread_id)
    listed = sorted(saver.sessions.iter_messages(thread_id, user_id=ANY_USER), key=lambda m: m.position)
    attachment = saver.attachments.get(thread_id)
    # The database as attached: its file, decrypted in an encrypted store.
    database = saver.attachments.database(thread_id) if attachment is not None else None
    return {
        "thread_id": info.thread_id,
        "title": info.title,
        "created_at": info.created_at,
        "updated_at": info.updated_at,
        "pinned": info.pinned,
        "metadata": info.metadata,
        "messages": messages_to_dict([m.message for m in listed]),
        "message_times": [iso(m.created_at) for m in listed],
        "message_metadata": {m.message_id: md.encode(m.metadata) for m in listed if m.metadata},
        "attachment": None
        if attachment is None
        else {
            "name": attachment.name,
            "attached_at": attachment.attached_at,
            "base64": base64.b64encode(database if isinstance(database, bytes) else database.read_bytes()).decode("ascii"),
        },
    }


def summarize(document: dict[str, Any]) -> TransferSummary:
    threads = document["threads"]
    return TransferSummary(
        threads=len(threads),
        messages=sum(len(t["messages"]) for t in threads),
        attachments=sum(t["attachment"] is not None for t in threads),
    )


# -- import -------------------------------------------------------------------


@dataclass(frozen=True)
class _Thread:
    thread_id: str
    title: str | None
    created_at: str
    updated_at: str
    pinned: bool
    metadata_json: str
    messages: list[BaseMessage]
    message_times: list[int]
    message_metadata: dict[str, str]
    attachment: tuple[str, str, bytes] | None
    """(name, attached_at, the database file's bytes)."""


@dataclass(frozen=True)
class ExportDocument:
    user_id: str | None
    threads: list[_Thread]


def read_document(text: str, source: str = "the document") -> ExportDocument:
    """Parse and check a whole export; ExportFormatError says what is wrong in one sentence."""

    def fail(problem: str) -> ExportFormatError:
        return ExportFormatError(f"{source} cannot be imported: {problem}")

    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(f"it is {json_problem(text, exc)}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise fail(f"it is not a threadkeeper export (no \"format\": \"{FORMAT}\")")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise fail("it has no format version")
    if version > VERSION:
        raise fail(f"it is format version {version}, newer than this threadkeeper reads ({VERSION}); upgrade to import it")
    user_id = data.get("user_id")
    if user_id is not None and not isinstance(user_id, str):
        raise fail("its user_id is not a string")
    raw_threads = data.get("threads")
    if not isinstance(raw_threads, list):
        raise fail("it has no list of threads")
    threads, seen = [], set()
    for number, raw in enumerate(raw_threads, start=1):
        where = f"thread {number}"
        if isinstance(raw, dict) and isinstance(raw.get("thread_id"), str):
            where += f" ({raw['thread_id']})"
        try:
            thread = _read_thread(raw)
        except ExportFormatError as exc:
            raise fail(f"{where}: {exc}") from None
        if thread.thread_id in seen:
            raise fail(f"{where}: the thread id appears twice")
        seen.add(thread.thread_id)
        threads.append(thread)
    return ExportDocument(user_id, threads)


def _time(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ExportFormatError(f"{name} is not a time")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ExportFormatError(f"{name} {value[:40]!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise ExportFormatError(f"{name} {value[:40]!r} has no time zone")
    return value


def _read_thread(raw: Any) -> _Thread:
    if not isinstance(raw, dict):
        raise ExportFormatError("it is not an object")
    thread_id = raw.get("thread_id")
    if not isinstance(thread_id, str) or not thread_id.strip():
        raise ExportFormatError("it has no thread_id")
    title = raw.get("title")
    if title is not None and not isinstance(title, str):
        raise ExportFormatError("its title is not a string")
    pinned = raw.get("pinned", False)
    if not isinstance(pinned, bool):
        raise ExportFormatError("pinned is not true or false")
    metadata = raw.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ExportFormatError("its metadata is not an object")
    items = raw.get("messages")
    if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("data"), dict) for i in items):
        raise ExportFormatError("its messages are not a list of LangChain message dicts")
    try:
        messages = messages_from_dict(items)
    except Exception as exc:  # pydantic and LangChain raise several kinds
        raise ExportFormatError(f"a message is not valid ({str(exc).splitlines()[0][:120]})") from None
    times = raw.get("message_times")
    if not isinstance(times, list) or len(times) != len(messages):
        raise ExportFormatError("message_times does not give one time per message")
    message_times = [to_micros(_time(t, "a message time")) for t in times]
    message_metadata = raw.get("message_metadata", {})
    if not isinstance(message_metadata, dict) or not all(isinstance(v, dict) for v in message_metadata.values()):
        raise ExportFormatError("message_metadata is not an object of objects")
    attachment = raw.get("attachment")
    stored_attachment = None
    if attachment is not None:
        if not isinstance(attachment, dict) or not isinstance(attachment.get("name"), str):
            raise ExportFormatError("its attachment has no name")
        try:
            data = base64.b64decode(attachment.get("base64", ""), validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise ExportFormatError(f"the data of attachment {attachment['name']!r} is not base64") from None
        if not data.startswith(SQLITE_HEADER):
            raise ExportFormatError(f"attachment {attachment['name']!r} is not a SQLite database")
        stored_attachment = (attachment["name"], _time(attachment.get("attached_at"), "attached_at"), data)
    return _Thread(
        thread_id=thread_id,
        title=title,
        created_at=_time(raw.get("created_at"), "created_at"),
        updated_at=_time(raw.get("updated_at"), "updated_at"),
        pinned=pinned,
        metadata_json=_compact(metadata),
        messages=messages,
        message_times=message_times,
        message_metadata={str(k): _compact(v) for k, v in message_metadata.items()},
        attachment=stored_attachment,
    )


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def import_document(
    saver: ThreadSaver,
    document: ExportDocument,
    *,
    user_id: str | None = None,
    replace: bool = False,
    report: Callable[[str], Any] = print,
) -> TransferSummary:
    """Write the document's threads for `user_id` (default: the document's user).

    A thread id that exists is skipped (one line to `report`), or with
    `replace` deleted and written again when it is the same user's. A thread
    whose database cannot be attached is not kept, and reported.
    """
    owner = document.user_id if user_id is None else user_id
    summary = TransferSummary()
    started = time.perf_counter()
    for thread in document.threads:
        exists, current = conversation.owner_of(saver, thread.thread_id)
        if exists and (not replace or current != owner):
            summary.skipped += 1
            why = "already exists" if current == owner else "already exists for another user"
            line = f"thread {thread.thread_id}: skipped, it {why}" + ("" if replace or current != owner else " (use --replace)")
            summary.problems.append(line)
            report(line)
            continue
        if exists:
            saver.delete_threads([thread.thread_id])
        try:
            _write_thread(saver, thread, owner)
        except AttachmentError as exc:
            saver.delete_threads([thread.thread_id])
            summary.failed += 1
            line = f"thread {thread.thread_id}: not imported, its database cannot be attached: {exc}"
            summary.problems.append(line)
            report(line)
            continue
        summary.threads += 1
        summary.messages += len(thread.messages)
        summary.attachments += thread.attachment is not None
    summary.seconds = time.perf_counter() - started
    return summary


def _write_thread(saver: ThreadSaver, thread: _Thread, owner: str | None) -> None:
    conversation.restore(
        saver,
        thread.thread_id,
        thread.messages,
        user_id=owner,
        created_at=thread.created_at,
        updated_at=thread.updated_at,
        title=thread.title,
        pinned=thread.pinned,
        metadata_json=thread.metadata_json,
        message_times=thread.message_times,
        message_metadata=thread.message_metadata,
    )
    if thread.attachment is not None:
        name, attached_at, data = thread.attachment
        saver.attachments.restore(thread.thread_id, data, name=name, attached_at=attached_at, user_id=owner)
