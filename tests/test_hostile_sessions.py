"""Hostile input to `saver.sessions`, on both engines: a result or one clear sentence, never
another user's session, and the store goes on.

Hypothesis draws session ids, user ids, titles, metadata keys and values, filters and
time bounds from `tests.hostile`; every call goes through `attempt` (a result or one
documented exception, one line). Bob's session, written before anything hostile
arrives, must never be listed, read, changed or deleted by anyone else, and must
still read and take a message afterwards. On PostgreSQL every filter and value
reaches the server as a parameter; a value it cannot keep (a NUL in text) is refused
at the door, as on SQLite.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from langchain_core.messages import HumanMessage

from checkpointers import ANY_USER
from tests.hostile import (
    COUNTS,
    HOSTILE,
    Refused,
    attempt,
    hostile_id,
    hostile_text,
    metadata_filters,
    metadata_keys,
    metadata_values,
)

BOB, BOBS_SESSION = "bob", "bobs-session"
BOBS_METADATA = {"topic": "billing", "secret": "4321", "n": 3}
ALICE = "alice"


@pytest.fixture
def sessions(store):
    """The store's sessions, with Bob's session (and its one message) already there."""
    store.sessions.put_session(BOB, BOBS_SESSION, metadata=BOBS_METADATA, title="bob's plans")
    store.sessions.put_message(BOBS_SESSION, HumanMessage("the vault code is 4321", id="bob-1"), user_id=BOB)
    return store.sessions


def bobs_session_is_intact(sessions) -> None:
    """Bob's session reads as he left it and still takes a message."""
    session = sessions.get_session(BOBS_SESSION, user_id=BOB)
    assert (session.user_id, session.metadata) == (BOB, BOBS_METADATA)
    assert [m.message.content for m in sessions.list_messages(BOBS_SESSION, user_id=BOB)][:1] == ["the vault code is 4321"]
    assert BOBS_SESSION in [s.session_id for s in sessions.list_recent_sessions(BOB, metadata_filter={"n": 3})]


def none_of_bobs(found: Any, surface: str) -> None:
    """What an other-than-Bob caller got holds nothing of Bob's."""
    COUNTS.cross_user_attempts["sessions"] += 1
    items = found if isinstance(found, list) else [found]
    leaked = [s for s in items if getattr(s, "session_id", None) == BOBS_SESSION or getattr(s, "user_id", None) == BOB]
    COUNTS.cross_user_reads["sessions"] += bool(leaked)
    assert not leaked, f"{surface} gave Bob's session to someone else: {leaked}"


@HOSTILE
@given(user_id=hostile_id(), session_id=hostile_id())
@example(user_id="bob\x00", session_id=BOBS_SESSION)
@example(user_id="Bob", session_id=BOBS_SESSION)
@example(user_id="bob ", session_id=BOBS_SESSION + " ")
@example(user_id="' OR 1=1 --", session_id="' OR user_id = 'bob' --")
@example(user_id=None, session_id=BOBS_SESSION)
def test_no_user_id_or_session_id_reaches_another_users_session(sessions, user_id: Any, session_id: Any):
    if user_id == BOB:
        return  # Bob himself may, of course
    for surface, call in {
        "get_session": lambda: sessions.get_session(session_id, user_id=user_id),
        "list_recent_sessions": lambda: sessions.list_recent_sessions(user_id, max_count=100),
        "iter_recent_sessions": lambda: list(sessions.iter_recent_sessions(user_id, page_size=3)),
        "list_messages": lambda: sessions.list_messages(session_id, user_id=user_id),
        "get_message": lambda: sessions.get_message(session_id, "bob-1", user_id=user_id),
    }.items():
        found = attempt(f"sessions.{surface}", call, echoed=(user_id, session_id))
        if not isinstance(found, Refused) and found is not None:
            if surface in ("list_messages", "get_message"):
                assert str(session_id) != BOBS_SESSION, f"{surface} opened Bob's session"
            else:
                none_of_bobs(found, surface)
    for surface, call in {
        "put_session": lambda: sessions.put_session(user_id, session_id, metadata={"topic": "mine"}),
        "update_session": lambda: sessions.update_session(session_id, user_id=user_id, metadata={"topic": "mine"}),
        "put_message": lambda: sessions.put_message(session_id, ("human", "mine now"), user_id=user_id),
        "delete_message": lambda: sessions.delete_message(session_id, "bob-1", user_id=user_id),
        "delete_messages": lambda: sessions.delete_messages(session_id, user_id=user_id),
        "delete_session": lambda: sessions.delete_session(session_id, user_id=user_id),
    }.items():
        outcome = attempt(f"sessions.{surface}", call, echoed=(user_id, session_id))
        if str(session_id) == BOBS_SESSION:
            COUNTS.cross_user_attempts["sessions"] += 1
            assert isinstance(outcome, Refused) or outcome in (False, None), f"{surface} touched Bob's session"
    bobs_session_is_intact(sessions)


@HOSTILE
@given(
    title=st.one_of(st.none(), hostile_text()),
    metadata=st.one_of(st.dictionaries(metadata_keys(), metadata_values(), max_size=4), metadata_values()),
)
@example(title="a\x00b", metadata={"k": "v\x00"})
@example(title="'; DROP TABLE threads; --", metadata={"k'); DROP TABLE threads; --": "x"})
@example(title=None, metadata={"secret": "4321", "user_id": BOB})
@example(title=None, metadata={"k": "\ud800"})
@example(title=None, metadata={"n": 2**64})
def test_any_title_and_metadata_are_kept_exactly_or_refused(sessions, title: Any, metadata: Any):
    session = attempt("sessions.put_session", sessions.put_session, ALICE, title=title, metadata=metadata, echoed=(title,))
    if not isinstance(session, Refused):
        again = sessions.get_session(session.session_id, user_id=ALICE)
        assert again == session and again.user_id == ALICE
        stored = {k: bytes(v) if isinstance(v, (bytearray, memoryview)) else v for k, v in (metadata or {}).items()}
        assert again.metadata == stored
        message = attempt(
            "sessions.put_message", sessions.put_message, session.session_id, ("human", "hi"), user_id=ALICE, metadata=metadata
        )
        assert not isinstance(message, Refused) and message.metadata == stored
        listed = sessions.list_recent_sessions(ALICE, max_count=10_000, metadata_filter=stored or None)
        assert session.session_id in [s.session_id for s in listed]
        none_of_bobs(listed, "list_recent_sessions")
    bobs_session_is_intact(sessions)


@HOSTILE
@given(expr=metadata_filters(), before=st.one_of(st.none(), hostile_text(3), st.datetimes()))
@example(expr={"secret": "4321"}, before=None)
@example(expr={"$or": [{"secret": {"$ne": "x"}}, {"n": {"$gte": 0}}]}, before=None)
@example(expr={"k": {"$in": ["a\x00"]}}, before=None)
@example(expr={"k'||'": {"$gt": 2**70}}, before="2026-01-01'; --")
@example(expr={"$not": {}}, before=None)
def test_any_filter_selects_only_the_callers_sessions_or_is_refused(sessions, expr: Any, before: Any):
    mine = sessions.put_session(ALICE, metadata={"topic": "billing", "n": 3, "secret": "4321"})
    sessions.put_message(mine.session_id, ("human", "hi"), user_id=ALICE, metadata={"lang": "en", "n": 1})
    listed = attempt(
        "sessions.list_recent_sessions filter", sessions.list_recent_sessions, ALICE, max_count=10_000,
        metadata_filter=expr, updated_before=before,
    )
    if not isinstance(listed, Refused):
        none_of_bobs(listed, "list_recent_sessions")
        assert all(s.user_id == ALICE for s in listed)
    for surface, call in {
        "list_messages": lambda: sessions.list_messages(mine.session_id, user_id=ALICE, metadata_filter=expr, created_before=before),
        "iter_messages": lambda: list(sessions.iter_messages(mine.session_id, user_id=ALICE, metadata_filter=expr, page_size=1)),
    }.items():
        found = attempt(f"sessions.{surface} filter", call, echoed=(before,))
        if not isinstance(found, Refused):
            assert all(m.session_id == mine.session_id for m in found)
    assert sessions.get_session(mine.session_id, user_id=ANY_USER).user_id == ALICE
    bobs_session_is_intact(sessions)
