"""Hostile input at every door: a result or one clear sentence, and the store goes on for everyone.

Property tests (Hypothesis) over each surface a caller can reach: message
text, titles, thread and user ids, search queries, metadata and filters,
uploads (names as hostile as the filesystem allows, and the `name=` shown),
the CLI's arguments and the web chat's handlers. Every call must end in a
result or one documented exception (`tests.hostile.attempt`); what is accepted
must come back exactly as sent; and after every input the other user's thread,
written first, can still be read and continued and `PRAGMA integrity_check`
says ok. Real SQLite files in tmp_path; only the model is scripted.

    THREADKEEPER_HOSTILE_PROFILE=bench pytest tests/test_hostile_input.py   # 10x the inputs
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st
from langchain_core.messages import HumanMessage

from checkpointers import ANY_USER, ThreadNotFoundError, ThreadSaver, open_saver
from checkpointers.retention import delete_user
from graph import Settings, build_graph
from graph.tools import describe, table_names
from tests.hostile import (
    COUNTS,
    HOSTILE,
    TIMEOUT_S,
    Refused,
    attempt,
    hostile_id,
    hostile_text,
    hostile_text_or_big,
    json_value,
    metadata_filters,
    metadata_keys,
    metadata_values,
    run_cli,
    scaled,
    sentence_problem,
    tokens,
    within,
)
from tests.scripted import ScriptedChatModel, echo
from ui.identity import Identity
from ui.web import WebChat

ROOT = Path(__file__).resolve().parent.parent
USER = "alice"
OTHER_USER = "bob"
OTHER_THREAD = "bobs-thread"
OTHER_TEXT = "bob's note: the vault code is 4321"
OWN_THREAD = "alices-thread"


def config(thread_id: Any, user_id: Any = USER) -> dict:
    return {"configurable": {"thread_id": thread_id, "user_id": user_id}}


def owner_as_stored(user_id: Any) -> str | None:
    """The owner a thread written with this `user_id` in its config gets (`None` and "" mean none)."""
    return None if user_id in (None, "") else str(user_id)


class Store:
    """A real store under `root` (a SQLite file, or with `url` a PostgreSQL schema), the
    agent graph on it (scripted model), and another user's thread written before anything
    hostile arrives."""

    def __init__(self, root: Path, url: str | None = None) -> None:
        self.root = root
        self.path = root / "data" / "threadkeeper.db"
        self._opened = contextlib.ExitStack()
        if url is None:
            self.saver = ThreadSaver(self.path, encryption_key=None)
            self._opened.callback(self.saver.close)
        else:
            self.saver = self._opened.enter_context(open_saver(url, encryption_key=None))
        self.graph = build_graph(checkpointer=self.saver, model=ScriptedChatModel(script=echo), settings=Settings())
        self.turn(OTHER_TEXT, OTHER_THREAD, OTHER_USER)
        self.turn("my own first thread", OWN_THREAD, USER)

    def turn(self, text: Any, thread_id: Any, user_id: Any = USER) -> dict:
        return self.graph.invoke({"messages": [HumanMessage(text)]}, config(thread_id, user_id))

    def check_usable(self) -> None:
        """The other user's thread reads and takes a turn, and the file is sound."""
        within(TIMEOUT_S, self._check_usable)

    def _check_usable(self) -> None:
        saver = self.saver
        before = saver.threads.get(OTHER_THREAD, user_id=OTHER_USER).message_count
        state = self.turn("are you still there?", OTHER_THREAD, OTHER_USER)
        assert state["messages"][-1].content.endswith(": are you still there?")
        assert saver.threads.get(OTHER_THREAD, user_id=OTHER_USER).message_count == before + 2
        first = saver.read_messages(OTHER_THREAD, user_id=OTHER_USER, before=1, limit=1).messages
        assert [m.content for m in first] == [OTHER_TEXT]
        assert OTHER_THREAD in [t.thread_id for t in saver.threads.list(OTHER_USER).threads]
        assert [t.thread_id for t in saver.threads.search(OTHER_USER, "vault").threads] == [OTHER_THREAD]
        if not isinstance(saver, ThreadSaver):
            return
        conn = sqlite3.connect(self.path)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            conn.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):  # a poisoned saver has failed its test already
            within(TIMEOUT_S, self._opened.close)


@pytest.fixture
def store(request, tmp_path: Path):
    """SQLite, or PostgreSQL for a test marked `BOTH_ENGINES`."""
    engine = getattr(request, "param", "sqlite")
    s = Store(tmp_path, request.getfixturevalue("postgres_url") if engine == "postgres" else None)
    yield s
    s.close()


BOTH_ENGINES = pytest.mark.parametrize("store", ["sqlite", "postgres"], indirect=True)
"""On a test whose inputs reach the store's own columns: PostgreSQL's `text` and `jsonb`
refuse some of what SQLite keeps, and its errors must become our sentences too."""


@pytest.fixture(scope="module", autouse=True)
def _save_counts():
    yield
    COUNTS.save()


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path: Path):
    """The CLI and the web chat read the environment: no real model, no key, no other store;
    and their scratch files (web exports, Gradio's uploads) stay in tmp_path."""
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "THREADKEEPER_")):
            monkeypatch.delenv(name)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))


def refused_with(result: Any, kind: type[BaseException]) -> bool:
    return isinstance(result, Refused) and isinstance(result.exc, kind)


def not_other_users(threads: list, surface: str) -> None:
    """A listing reached through another user id holds nothing of the other user's."""
    COUNTS.cross_user_attempts["library"] += 1
    ids = {getattr(t, "thread_id", None) or getattr(t, "session_id", None) for t in threads}
    if OTHER_THREAD in ids:
        COUNTS.cross_user_reads["library"] += 1
    assert OTHER_THREAD not in ids, f"{surface} listed the other user's thread"


# -- messages -------------------------------------------------------------------


@BOTH_ENGINES
@HOSTILE
@given(text=hostile_text_or_big())
@example(text="\ud800")
@example(text="a\x00b")
@example(text="x" * 1_000_000)
@example(text="\ud83d\ude00 ok, then a lone \udfff")
def test_any_message_is_stored_exactly_or_refused_and_the_store_goes_on(store: Store, text: str):
    thread = f"msg-{uuid.uuid4()}"
    result = attempt("message: graph.invoke", store.turn, text, thread, echoed=(text,))
    if isinstance(result, Refused):
        kept = attempt("message: read_messages", store.saver.read_messages, thread, user_id=USER)
        assert isinstance(kept, Refused) or text not in [m.content for m in kept.messages]
    else:
        stored = store.saver.read_messages(thread, user_id=USER).messages
        assert [m.type for m in stored] == ["human", "ai"]
        assert stored[0].content == text

    session = store.saver.sessions.put_session(USER)
    put = attempt("message: sessions.put_message", store.saver.sessions.put_message, session.session_id, ("human", text), user_id=USER, echoed=(text,))
    if not isinstance(put, Refused):
        listed = store.saver.sessions.list_messages(session.session_id, user_id=USER)
        assert [m.message.content for m in listed] == [text]
    store.check_usable()


# -- titles -------------------------------------------------------------------------


@BOTH_ENGINES
@HOSTILE
@given(title=hostile_text_or_big())
@example(title="\ud800")
@example(title="  \n\t ")
@example(title="a\x00b")
def test_any_title_is_kept_as_one_line_or_refused(store: Store, title: str):
    renamed = attempt("title: threads.rename", store.saver.threads.rename, OWN_THREAD, title, user_id=USER, echoed=(title,))
    if not isinstance(renamed, Refused):
        assert renamed.title == " ".join(title.split()) == store.saver.threads.get(OWN_THREAD, user_id=USER).title
    session = attempt("title: sessions.put_session", store.saver.sessions.put_session, USER, title=title, echoed=(title,))
    if not isinstance(session, Refused):
        assert session.title == " ".join(title.split())
        updated = attempt("title: sessions.update_session", store.saver.sessions.update_session, session.session_id, user_id=USER, title=title + "!", echoed=(title,))
        assert not isinstance(updated, Refused) and updated.title == " ".join((title + "!").split())
    store.check_usable()


# -- thread ids -----------------------------------------------------------------------


@BOTH_ENGINES
@HOSTILE
@given(thread_id=hostile_id())
@example(thread_id="x\x00y")
@example(thread_id="é\x00x")
@example(thread_id="\ud800")
@example(thread_id="%2F..%2F")
@example(thread_id=12345)
def test_any_thread_id_round_trips_or_is_refused_everywhere(store: Store, thread_id: Any):
    assume(str(thread_id) not in (OTHER_THREAD, OWN_THREAD))
    saver = store.saver
    result = attempt("thread id: graph.invoke", store.turn, "hello", thread_id, echoed=(thread_id,))
    if not isinstance(result, Refused):
        # Whatever was accepted can be found, copied and deleted under the same id.
        info = attempt("thread id: threads.get", saver.threads.get, thread_id, user_id=USER)
        assert not isinstance(info, Refused) and info.thread_id == str(thread_id)
        state = attempt("thread id: get_state", store.graph.get_state, config(thread_id))
        assert [m.content for m in state.values["messages"]][0] == "hello"
        copy = f"copy-{uuid.uuid4()}"
        assert not isinstance(attempt("thread id: copy_thread", saver.copy_thread, thread_id, copy), Refused)
        assert saver.threads.get(copy, user_id=USER).message_count == info.message_count
        saver.delete_thread(copy)
        assert not isinstance(attempt("thread id: delete_thread", saver.delete_thread, thread_id), Refused)
        assert refused_with(attempt("thread id: threads.get", saver.threads.get, thread_id), ThreadNotFoundError)
        assert saver.get_tuple(config(thread_id)) is None

    # The id now names nothing: every door says so, or refuses the id.
    absent = [
        attempt("thread id: get_state", store.graph.get_state, config(thread_id)),
        attempt("thread id: get_tuple", saver.get_tuple, config(thread_id)),
        attempt("thread id: saver.list", saver.list, config(thread_id)),
        attempt("thread id: threads.get", saver.threads.get, thread_id, user_id=USER),
        attempt("thread id: threads.rename", saver.threads.rename, thread_id, "t", user_id=USER),
        attempt("thread id: threads.pin", saver.threads.pin, thread_id, user_id=USER),
        attempt("thread id: threads.update_metadata", saver.threads.update_metadata, thread_id, {"k": 1}, user_id=USER),
        attempt("thread id: read_messages", saver.read_messages, thread_id, user_id=USER),
        attempt("thread id: attachments.get", saver.attachments.get, thread_id, user_id=USER),
        attempt("thread id: sessions.get_session", saver.sessions.get_session, thread_id, user_id=USER),
        attempt("thread id: sessions.delete_session", saver.sessions.delete_session, thread_id, user_id=USER),
        attempt("thread id: sessions.list_messages", saver.sessions.list_messages, thread_id, user_id=USER),
        attempt("thread id: copy_thread from", saver.copy_thread, thread_id, f"copy-{uuid.uuid4()}"),
        attempt("thread id: delete_thread", saver.delete_thread, thread_id),
    ]
    for outcome in absent:
        assert isinstance(outcome, Refused) or outcome in (None, [], False) or getattr(outcome, "values", None) == {}
    copied = attempt("thread id: copy_thread to", saver.copy_thread, OWN_THREAD, thread_id)
    if not isinstance(copied, Refused):
        assert saver.threads.get(thread_id, user_id=USER).thread_id == str(thread_id)
        saver.delete_thread(thread_id)
        assert refused_with(attempt("thread id: threads.get", saver.threads.get, thread_id), ThreadNotFoundError)
    store.check_usable()


BAD_IDS = ["x\x00y", "\x00", "a\ud800", "é\x00x"]


@BOTH_ENGINES
@pytest.mark.parametrize("bad", BAD_IDS)
def test_an_id_that_cannot_be_stored_exactly_is_refused_by_every_write(store: Store, bad: str, tmp_path: Path):
    """A NUL or a lone surrogate in an id: refused with one sentence, never written, never silently ignored."""
    saver = store.saver
    upload = tmp_path / "upload.db"
    sqlite3.connect(upload).execute("CREATE TABLE t (x)").connection.commit()
    writes = {
        "graph.invoke thread": lambda: store.turn("hi", bad),
        "graph.invoke user": lambda: store.turn("hi", f"t-{uuid.uuid4()}", bad),
        "delete_thread": lambda: saver.delete_thread(bad),
        "delete_threads": lambda: saver.delete_threads([bad]),
        "copy_thread to": lambda: saver.copy_thread(OWN_THREAD, bad),
        "attachments.attach thread": lambda: saver.attachments.attach(bad, upload, user_id=USER),
        "attachments.attach user": lambda: saver.attachments.attach(f"t-{uuid.uuid4()}", upload, user_id=bad),
        "sessions.put_session user": lambda: saver.sessions.put_session(bad),
        "sessions.put_session id": lambda: saver.sessions.put_session(USER, bad),
        "delete_user": lambda: delete_user(saver, bad),
    }
    for name, write in writes.items():
        outcome = attempt(f"bad id: {name}", write, echoed=(bad,))
        assert isinstance(outcome, Refused), f"{name} accepted an id with {bad!r} (returned {outcome!r})"
    ids = [i for t in saver.threads.list(ANY_USER, limit=500).threads for i in (t.thread_id, t.user_id)]
    assert not [i for i in ids if isinstance(i, str) and "\x00" in i], "an id with NUL was written"
    store.check_usable()


# -- user ids ------------------------------------------------------------------------


@BOTH_ENGINES
@HOSTILE
@given(user_id=hostile_id())
@example(user_id="")
@example(user_id="a\x00b")
@example(user_id="é\x00b")
@example(user_id="\udcff")
@example(user_id=7)
def test_any_user_id_owns_exactly_its_threads_or_is_refused(store: Store, user_id: Any):
    assume(str(user_id) != OTHER_USER)
    saver = store.saver
    thread = f"user-{uuid.uuid4()}"
    result = attempt("user id: graph.invoke", store.turn, "hello there", thread, user_id, echoed=(user_id,))
    owner = owner_as_stored(user_id)
    if not isinstance(result, Refused):
        assert saver.threads.get(thread, user_id=owner).user_id == owner
        assert thread in [t.thread_id for t in saver.threads.list(owner, limit=500).threads]
    for surface, call in {
        "user id: threads.list": lambda: saver.threads.list(user_id).threads,
        "user id: threads.list pinned": lambda: saver.threads.list(user_id, pinned=True).threads,
        "user id: threads.search": lambda: saver.threads.search(user_id, "vault code").threads,
        "user id: sessions.list_recent_sessions": lambda: saver.sessions.list_recent_sessions(user_id),
        "user id: sessions.iter_recent_sessions": lambda: list(saver.sessions.iter_recent_sessions(user_id)),
    }.items():
        listed = attempt(surface, call, echoed=(user_id,))
        if not isinstance(listed, Refused):
            not_other_users(listed, surface)
    attempt("user id: threads.count", saver.threads.count, user_id, echoed=(user_id,))
    for surface, call in {
        "user id: threads.get": saver.threads.get,
        "user id: read_messages": saver.read_messages,
        "user id: attachments.get": saver.attachments.get,
        "user id: sessions.list_messages": saver.sessions.list_messages,
    }.items():
        COUNTS.cross_user_attempts["library"] += 1
        opened = attempt(surface, call, OTHER_THREAD, user_id=user_id, echoed=(user_id,))
        COUNTS.cross_user_reads["library"] += not isinstance(opened, Refused)
        assert isinstance(opened, Refused), f"{surface} opened the other user's thread"
    session = attempt("user id: sessions.put_session", saver.sessions.put_session, user_id, echoed=(user_id,))
    if not isinstance(session, Refused):
        assert saver.sessions.get_session(session.session_id, user_id=session.user_id) == session
    attempt("user id: delete_user", delete_user, saver, user_id, echoed=(user_id,))
    store.check_usable()


# -- search queries -------------------------------------------------------------------


@BOTH_ENGINES
@HOSTILE
@given(query=hostile_text_or_big())
@example(query='"')
@example(query="NEAR(vault code)")
@example(query="vault OR *")
@example(query="code* ^vault")
@example(query="body: vault")
@example(query="\ud800 vault")
@example(query="%_\\")
@example(query="x" * 200_000)
def test_any_search_query_answers_from_the_callers_threads_only(store: Store, query: str):
    for q in (query, f"{query} vault", f"vault {query}"):
        page = attempt("search query", store.saver.threads.search, USER, q, echoed=(q,))
        if not isinstance(page, Refused):
            not_other_users(page.threads, "threads.search")
            assert all(t.user_id == USER for t in page.threads)
    store.check_usable()


@BOTH_ENGINES
@HOSTILE
@given(cursor=st.one_of(hostile_text(), st.builds(lambda v: base64.urlsafe_b64encode(json.dumps(v).encode()).decode(), json_value())),
       limit=st.one_of(st.integers(min_value=-3, max_value=2**70), st.just(20)))
@example(cursor=base64.urlsafe_b64encode(json.dumps(["\x00", "x"]).encode()).decode(), limit=20)  # PostgreSQL's text has no NUL
@example(cursor=base64.urlsafe_b64encode(json.dumps(["2026", "\ud800"]).encode()).decode(), limit=20)
def test_any_listing_cursor_or_limit_is_refused_or_pages_the_callers_threads(store: Store, cursor: str, limit: int):
    for surface, call in {
        "cursor: threads.list": lambda: store.saver.threads.list(USER, cursor=cursor, limit=limit),
        "cursor: threads.search": lambda: store.saver.threads.search(USER, "thread", cursor=cursor, limit=limit),
    }.items():
        page = attempt(surface, call, echoed=(cursor,))
        if not isinstance(page, Refused):
            not_other_users(page.threads, surface)
    store.check_usable()


# -- metadata and filters ---------------------------------------------------------------


def as_stored(value: Any) -> Any:
    return bytes(value) if isinstance(value, (bytearray, memoryview)) else value


@BOTH_ENGINES
@HOSTILE
@given(metadata=st.one_of(st.dictionaries(metadata_keys(), metadata_values(), max_size=4), metadata_values()))
@example(metadata={"k": "\ud800"})
@example(metadata={"\x00": 1})
@example(metadata={"big": 2**64})
@example(metadata={"x": float("nan")})
@example(metadata={"x": float("-inf")})
def test_any_metadata_is_kept_exactly_or_refused(store: Store, metadata: Any):
    saver = store.saver
    session = attempt("metadata: sessions.put_session", saver.sessions.put_session, USER, metadata=metadata)
    if not isinstance(session, Refused):
        assert session.metadata == {k: as_stored(v) for k, v in (metadata or {}).items()}
        assert saver.sessions.get_session(session.session_id, user_id=USER).metadata == session.metadata
        message = attempt("metadata: sessions.put_message", saver.sessions.put_message, session.session_id, ("human", "hi"), user_id=USER, metadata=metadata)
        assert not isinstance(message, Refused) and message.metadata == session.metadata
    attempt("metadata: threads.update_metadata", saver.threads.update_metadata, OWN_THREAD, metadata, user_id=USER)
    store.check_usable()


@BOTH_ENGINES
@HOSTILE
@given(expr=metadata_filters())
@example(expr={"$or": [{"a\\": 1}, {"$not": {"k": {"$in": ["\ud800"]}}}]})
@example(expr={"k": {"$gt": 2**70}})
@example(expr={"$and": "not a list"})
def test_any_session_filter_selects_the_callers_sessions_or_is_refused(store: Store, expr: Any):
    saver = store.saver
    session = saver.sessions.put_session(USER, metadata={"topic": "billing", "n": 3})
    saver.sessions.put_message(session.session_id, ("human", "hi"), user_id=USER, metadata={"lang": "en"})
    listed = attempt("filter: sessions.list_recent_sessions", saver.sessions.list_recent_sessions, USER, metadata_filter=expr)
    if not isinstance(listed, Refused):
        not_other_users(listed, "sessions.list_recent_sessions")
    attempt("filter: sessions.list_messages", saver.sessions.list_messages, session.session_id, user_id=USER, metadata_filter=expr)
    attempt("filter: sessions.iter_messages", saver.sessions.iter_messages, session.session_id, user_id=USER, metadata_filter=expr)
    store.check_usable()


@BOTH_ENGINES
@HOSTILE
@given(expr=st.dictionaries(st.one_of(hostile_text(4), metadata_keys().filter(lambda k: isinstance(k, str))), json_value(), max_size=3))
@example(expr={"a\\": 1})
@example(expr={"a\x00": 1})
@example(expr={"a'); DROP TABLE threads; --": 1})
@example(expr={"source": "\ud800"})
@example(expr={"step": 2**70})
@example(expr={"user_id": {"$ne": "x"}})
def test_any_checkpoint_filter_is_answered_or_refused(store: Store, expr: dict):
    """`saver.list(filter=...)`: what the LangGraph server passes on from a client's history request."""
    saver = store.saver
    attempt("filter: saver.list", saver.list, None, filter=expr)
    attempt("filter: saver.list thread", saver.list, config(OWN_THREAD), filter=expr)
    page = attempt("filter: threads.list metadata", saver.threads.list, USER, metadata=expr)
    if not isinstance(page, Refused):
        not_other_users(page.threads, "threads.list(metadata=...)")
    store.check_usable()


# -- uploads ------------------------------------------------------------------------------

TRAVERSALS = [
    "..%2F..%2Fdata%2Fthreadkeeper.db",
    "%2e%2e%2f%2e%2e%2fdata%2fthreadkeeper.db",
    "..%2F..%2Fstray.db?mode=rwc#.db",
    "a?mode=rwc#x.db",
    "a%3Fmode%3Drwc.db",
    "x.db?vfs=unix-none",
    "x.db#",
    "?.db",
    "#.db",
    "%00.db",
    "..\\..\\data\\threadkeeper.db",
    "file:x.db",
    "x.db?cache=shared&immutable=1",
    "%41.db",
]
SUFFIXES = [".db", ".csv", ".sqlite", ".sqlite3", ".DB", ".db.txt", ""]


def upload_names() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(TRAVERSALS),
        st.builds(lambda stem, suffix: stem + suffix, hostile_text(6), st.sampled_from(SUFFIXES)),
    )


def disk_name(name: str) -> bool:
    """Whether a file can have this name here (one path component, encodable, not too long)."""
    if not name or name in (".", "..") or "/" in name or "\x00" in name:
        return False
    try:
        return len(os.fsencode(name)) <= 200
    except UnicodeEncodeError:
        return False


def files_under(root: Path) -> set[str]:
    """Every file under `root`, except what the store itself keeps and changes (its attachments, WAL, SHM)."""
    found = set()
    for path in root.rglob("*"):
        relative = path.relative_to(root).as_posix()
        if relative.startswith("data/attachments") or relative.startswith("data/threadkeeper.db"):
            continue
        found.add(relative)
    return found


def database_bytes(folder: Path, table: str, value: str) -> bytes:
    scratch = folder / f"scratch-{uuid.uuid4().hex}.sqlite"
    conn = sqlite3.connect(scratch)
    conn.execute(f'CREATE TABLE "{table}" (secret TEXT)')
    conn.execute(f'INSERT INTO "{table}" VALUES (?)', (value,))
    conn.commit()
    conn.close()
    data = scratch.read_bytes()
    scratch.unlink()
    return data


def attached_rows(path: Path) -> tuple[list[str], list]:
    conn = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)
    try:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        rows = [r for t in tables for r in conn.execute(f'SELECT * FROM "{t}"').fetchall()]
        return tables, rows
    finally:
        conn.close()


@scaled(40)
@given(name=upload_names(), kind=st.sampled_from(["sqlite", "csv", "junk", "empty"]), shown=st.one_of(st.none(), hostile_text(6), st.sampled_from(TRAVERSALS)), junk=st.binary(max_size=64))
@example(name="..%2F..%2Fdata%2Fthreadkeeper.db", kind="sqlite", shown=None, junk=b"")
@example(name="a?mode=rwc#x.db", kind="sqlite", shown=None, junk=b"")
@example(name="..%2F..%2Fstray.db?mode=rwc#.db", kind="sqlite", shown=None, junk=b"")
@example(name="report.csv", kind="csv", shown="..%2F..%2Fdata%2Fthreadkeeper.db", junk=b"")
@example(name="data.db", kind="sqlite", shown="x\x00y/\\..\ud800.db", junk=b"")
def test_an_upload_attaches_exactly_its_own_content_or_is_refused(store: Store, name: str, kind: str, shown: str | None, junk: bytes):
    assume(disk_name(name))
    folder = store.root / "uploads" / uuid.uuid4().hex
    folder.mkdir(parents=True)
    marker = "m" + uuid.uuid4().hex[:10]
    content = {
        "sqlite": lambda: database_bytes(folder, marker, marker),
        "csv": lambda: f"secret,n\n{marker},1\n".encode(),
        "junk": lambda: junk,
        "empty": lambda: b"",
    }[kind]()
    source = folder / name
    try:
        source.write_bytes(content)
    except OSError:
        assume(False)
    before = files_under(store.root)
    thread = f"upload-{uuid.uuid4()}"

    attached = attempt("upload: attachments.attach", store.saver.attachments.attach, thread, source, user_id=USER, name=shown, echoed=(name, shown, str(source)))

    assert files_under(store.root) == before, "the upload created or removed a file outside the store's attachments"
    assert source.read_bytes() == content, "the upload itself was changed"
    if isinstance(attached, Refused):
        assert store.saver.attachments.get(thread) is None
    else:
        assert kind != "empty", "an empty file was attached"
        assert attached.name == (shown or name)
        tables, rows = attached_rows(attached.path)
        assert "threads" not in tables and "checkpoints" not in tables, "the store's own database was attached"
        read_as = Path(shown or name).suffix.lower()
        if kind == "sqlite" and read_as != ".csv":
            assert (tables, rows) == ([marker], [(marker,)])
        elif kind == "csv" and read_as == ".csv":
            assert len(tables) == 1 and rows == [(marker, 1)]
        else:  # bytes read as a CSV: at most the one table of that CSV
            assert read_as == ".csv" and len(tables) <= 1
        assert store.saver.attachments.get(thread, user_id=USER).tables == attached.tables == tables
        database = store.saver.attachment_database(thread)  # what the agent's tools open
        assert table_names(database) == tables
        for table in tables:
            assert describe(database, table).startswith(f"Table {table} ("), describe(database, table)
    store.check_usable()


def test_a_csv_with_thousands_of_columns_gets_one_sentence(store: Store, tmp_path: Path):
    source = tmp_path / "wide.csv"
    source.write_text(",".join(f"c{i}" for i in range(2500)) + "\n" + ",".join("1" for _ in range(2500)) + "\n")
    outcome = attempt("upload: wide csv", store.saver.attachments.attach, "wide", source, user_id=USER)
    assert isinstance(outcome, Refused) and "wide.csv" in str(outcome.exc)
    assert store.saver.attachments.get("wide") is None
    store.check_usable()


# -- the command line -----------------------------------------------------------------------


def cli_ids() -> st.SearchStrategy[str]:
    return st.one_of(
        hostile_text(6),
        st.sampled_from(["x\x00y", "\udcff", "\ud800", "", "-", "--", "%2F..%2F", "'", "x" * 5000, "a\nb"]),
    ).filter(lambda s: s not in (OTHER_USER, OTHER_THREAD))


def cli_calls(store: Store) -> st.SearchStrategy[tuple[list[str], str]]:
    db = f"sqlite:///{store.path}"
    files = store.root / "cli"

    def path(name: str) -> str:
        return str(files / name)

    ids, text = cli_ids(), hostile_text()
    paths = st.one_of(cli_ids().map(path), st.sampled_from([str(store.path), str(store.root), "/dev/null", path("doc.json"), path("sessions")]))
    return st.one_of(
        st.builds(lambda t, u: (["--db", db, "show", f"--user={u}", "--", t], ""), ids, ids),
        st.builds(lambda t: (["--db", db, "show", "--", t], ""), ids),
        st.builds(lambda u, n: (["--db", db, "threads", f"--user={u}", "--limit", str(n)], ""), ids, st.integers(-5, 10**6)),
        st.builds(
            lambda t, u, lines, f: (["--db", db, "chat", f"--thread={t}", f"--user={u}"], "\n".join([*lines, f"/attach {f}", "/retry", "/new", *lines, "/quit"]) + "\n"),
            ids, ids, st.lists(text, max_size=3), paths,
        ),
        st.builds(lambda t, u, f: (["--db", db, "attach", f"--user={u}", "--", t, f], ""), ids, ids, paths),
        st.builds(lambda u: (["--db", db, "export", f"--user={u}", "--output", path("export.json")], ""), ids),
        st.builds(lambda u: (["--db", db, "delete-user", "--yes", "--", u], ""), ids),
        st.builds(lambda f, u: (["--db", db, "import", f"--user={u}", "--", f], ""), paths, ids),
        st.builds(lambda f, u: (["--db", db, "import-json", f"--user={u}", "--", f], ""), paths, ids),
    )


@scaled(40)
@given(data=st.data(), document=json_value())
def test_the_cli_answers_any_argument_with_output_or_one_line(store: Store, data: st.DataObject, document: Any):
    files = store.root / "cli"
    (files / "sessions").mkdir(parents=True, exist_ok=True)
    (files / "doc.json").write_text(json.dumps(document))
    (files / "sessions" / f"{uuid.uuid4()}.json").write_text(json.dumps(document))
    argv, stdin = data.draw(cli_calls(store))
    COUNTS.tried["cli"] += 1
    try:
        status, out, err = within(TIMEOUT_S, run_cli, argv, stdin)
    except AssertionError:
        raise
    except BaseException as exc:
        COUNTS.broke("cli", f"{argv[2]}: {type(exc).__name__}: {exc}")
        raise AssertionError(f"threadkeeper {argv[2:]!r}: {type(exc).__name__} reached the terminal: {exc}") from exc
    assert "Traceback" not in out + err
    assert status in (0, 1, 2), status
    if err.strip():
        lines = err.rstrip("\n").split("\n")
        assert len(lines) == 1, f"threadkeeper {argv[2:]!r} wrote {len(lines)} lines to stderr: {err[:500]!r}"
        problem = sentence_problem(lines[0].removeprefix("threadkeeper: "), tuple(argv) + tuple(stdin.split("\n")))
        if problem:
            COUNTS.broke("cli", f"{argv[2]}: {problem}")
        assert problem is None, f"threadkeeper {argv[2:]!r}: {problem}: {err[:300]!r}"
        COUNTS.refused["cli"] += 1
    store.check_usable()


@pytest.mark.parametrize(
    "argv, stdin",
    [
        (["export", "--user=\udcff"], ""),
        (["threads", "--user=\udcff"], ""),
        (["show", "--", "é\x00x"], ""),
        (["delete-user", "--yes", "--", "x\x00y"], ""),
        (["attach", "--", "t1", "a\nb.db"], ""),
        (["import", "--", "\ud800.json"], ""),
        (["chat", "--user=alice"], "hello \udcff\n/quit\n"),
    ],
)
def test_the_cli_answers_these_arguments_with_one_line(store: Store, argv: list[str], stdin: str):
    """Arguments Hypothesis once found (or the brief named); `main([...])` as Python callers use it."""
    code, out, err = within(TIMEOUT_S, run_cli, ["--db", f"sqlite:///{store.path}", *argv], stdin)
    COUNTS.tried["cli"] += 1
    assert "Traceback" not in out + err and code in (0, 1, 2)
    if err.strip():
        lines = err.rstrip("\n").split("\n")
        assert len(lines) == 1, f"{len(lines)} lines on stderr: {err!r}"
        assert sentence_problem(lines[0].removeprefix("threadkeeper: "), tuple(argv)) is None, err
    store.check_usable()


@pytest.mark.parametrize(
    "argv",
    [
        [b"show", b"\xff"],
        [b"show", b"x\xed\xa0\x80y"],
        [b"threads", b"--user", b"\xff"],
        [b"chat", b"--thread", b"t\xff", b"--user", b"alice"],
        [b"show", b"..%2F..%2Fdata%2Fthreadkeeper.db"],
        [b"attach", b"t1", b"a?mode=rwc#x.db", b"--user", b"alice"],
    ],
)
def test_the_real_command_answers_undecodable_arguments_with_one_line(tmp_path: Path, argv: list[bytes]):
    """From a shell, bytes that are not UTF-8 reach Python as lone surrogates (and go back out to a UTF-8 terminal)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "THREADKEEPER_", "PYTHONUTF8", "PYTHONIOENCODING", "LC_"))}
    workdir = tmp_path / "run"
    workdir.mkdir()
    env.update(LANG="C.UTF-8", THREADKEEPER_DATABASE_URL=f"sqlite:///{workdir / 'threadkeeper.db'}")
    run = subprocess.run([sys.executable.encode(), b"-m", b"ui.cli", *argv], cwd=workdir, env={**env, "PYTHONPATH": str(ROOT)},
                         input=b"/quit\n", capture_output=True, timeout=120)
    COUNTS.tried["cli (real process)"] += 1
    err = run.stderr.decode("utf-8", "replace")
    assert b"Traceback" not in run.stderr + run.stdout, err
    assert run.returncode in (0, 1, 2)
    if err.strip():
        lines = err.rstrip("\n").split("\n")
        assert len(lines) == 1, err
        assert sentence_problem(lines[0].removeprefix("threadkeeper: ")) is None, err
    assert {p.name for p in workdir.iterdir()} <= {"threadkeeper.db", "threadkeeper.db-shm", "threadkeeper.db-wal"}


# -- the web chat's handlers ------------------------------------------------------------------


class Told:
    """What the web chat said to the person in toasts (gr.Info / gr.Warning), outside a running app."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def __call__(self, message: str = "", *args: Any, **kwargs: Any) -> None:
        self.messages.append(str(message))


@pytest.fixture
def web(store: Store, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(store.root / "gradio-cache"))  # where the page's uploads land
    told = Told()
    monkeypatch.setattr(gr, "Info", told)
    monkeypatch.setattr(gr, "Warning", told)
    chat = WebChat(store.saver, settings=Settings(), model=ScriptedChatModel(script=echo), identity=Identity(b"s" * 32))
    chat.told = told
    return chat


def web_attempt(surface: str, fn, *args: Any, echoed: tuple = ()) -> Any:
    """A handler call under the rule, where the one allowed exception is `gr.Error` with one sentence."""
    COUNTS.tried[surface] += 1

    def call() -> Any:
        value = fn(*args)
        return list(value) if hasattr(value, "__next__") else value

    try:
        value = within(TIMEOUT_S, call)
    except AssertionError:
        raise
    except gr.Error as exc:
        problem = sentence_problem(str(exc.message), echoed + args)
        if problem:
            COUNTS.broke(surface, f"gr.Error: {problem}")
        assert problem is None, f"{surface}: gr.Error {problem}: {exc.message!r}"
        COUNTS.refused[surface] += 1
        return Refused(exc)
    except BaseException as exc:
        COUNTS.broke(surface, f"{type(exc).__name__}: {exc}")
        raise AssertionError(f"{surface}: {type(exc).__name__} reached the page: {str(exc)[:300]}") from exc
    assert OTHER_TEXT not in str(value) and "vault code" not in str(value), f"{surface} showed the other user's text"
    return value


def storable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@scaled(25)
@given(token=tokens(), text=hostile_text_or_big(), title=hostile_text(), query=hostile_text(), picked=hostile_id())
@example(token=None, text="\ud800", title="x", query="vault", picked="bobs-thread")
@example(token=12, text="hi \udfff there", title="\ud800", query="\ud800", picked="x\x00y")
@example(token="anon-é.ab", text="a\x00b", title="a\x00b", query='"', picked="\ud800")
@example(token=["x"], text="hello", title="t", query="NEAR(a b)", picked=0)
def test_the_web_handlers_answer_any_input_with_a_result_or_one_sentence(web: WebChat, store: Store, token: Any, text: str, title: str, query: str, picked: Any):
    # Any identity value a crafted request sends: a fresh identity, or one sentence.
    loaded = web_attempt("web: identity on load", web.on_load, token, None, echoed=(token,))
    assert not isinstance(loaded, Refused), "the page could not load with a bad stored identity"
    for surface, call in {
        "web: identity search": lambda: web.search("", token, 30, None, None),
        "web: identity open": lambda: web.open_thread(OTHER_THREAD, token, None),
        "web: identity send": lambda: web.accept("hi", None, [], False, token, None),
    }.items():
        web_attempt(surface, call, echoed=(token,))
    mine = web.identity.new_token()
    user = web.user(mine, None)

    # A message: stored exactly (as typed, less outer spaces) or refused, and the person is told.
    told_before = len(web.told.messages)
    accepted = web_attempt("web: message", web.accept, text, None, [], False, mine, None, echoed=(text,))
    if not isinstance(accepted, Refused) and isinstance(accepted, tuple) and accepted[1]:
        _, thread, chat, pending, *_ = accepted
        shown = web_attempt("web: message respond", web.respond, pending, thread, chat, mine, None, echoed=(text,))
        try:
            stored = store.saver.read_messages(thread, user_id=user).messages
        except ThreadNotFoundError:
            stored = []
        if stored:
            assert stored[0].content == text.strip()
        else:
            said = isinstance(shown, Refused) or len(web.told.messages) > told_before or any(
                (m.get("metadata") or {}).get("title") for m in (shown[-1] if shown else []))
            assert said, "a message was dropped without a word"
    if not storable(text) and text.strip():
        assert not [t for t in store.saver.threads.list(user).threads if t.message_count], "an unstorable message was kept"

    # A title for the person's own thread, a search, a picked thread id.
    thread = f"web-{uuid.uuid4()}"
    store.turn("my thread", thread, user)
    renamed = web_attempt("web: title", web.rename, title, thread, mine, 30, None, echoed=(title,))
    if not isinstance(renamed, Refused) and " ".join(title.split()):
        assert store.saver.threads.get(thread).title == " ".join(title.split())
    found = web_attempt("web: search", web.search, query, mine, 30, None, None, echoed=(query,))
    if not isinstance(found, Refused):
        COUNTS.cross_user_attempts["web handlers"] += 1
        assert OTHER_THREAD not in str(found[0])
    opened = web_attempt("web: pick thread", web.open_thread, picked, mine, None, echoed=(picked,))
    if str(picked) == OTHER_THREAD:
        COUNTS.cross_user_attempts["web handlers"] += 1
        assert isinstance(opened, Refused)
    store.check_usable()


@scaled(25)
@given(name=upload_names())
@example(name="..%2F..%2Fdata%2Fthreadkeeper.db")
@example(name="a?mode=rwc#x.db")
def test_a_web_upload_with_any_name_attaches_its_own_content_or_says_why(web: WebChat, store: Store, name: str):
    assume(disk_name(name))
    folder = store.root / "gradio-cache" / uuid.uuid4().hex
    folder.mkdir(parents=True)
    marker = "m" + uuid.uuid4().hex[:10]
    source = folder / name
    try:
        source.write_bytes(database_bytes(folder, marker, marker))
    except OSError:
        assume(False)
    before = files_under(store.root)
    mine = web.identity.new_token()
    result = web_attempt("web: upload", web.upload, str(source), None, mine, 30, None, echoed=(name,))
    assert files_under(store.root) == before, "the upload created or removed a file outside the store's attachments"
    if not isinstance(result, Refused):
        attached = store.saver.attachments.get(result[0], user_id=web.user(mine, None))
        assert attached_rows(attached.path) == ([marker], [(marker,)])
    store.check_usable()
