"""Hostile text through the doors that reach a store's own columns, on both engines.

`tests/test_hostile_input.py` attacks every door of a SQLite store. PostgreSQL's
`text` and `jsonb` refuse what SQLite keeps (a NUL), so the same text is sent here
to both engines: as a chat message (the thread's title comes from it), as run
metadata, as a search, as thread metadata and as a title. Each is stored, or
refused with one sentence of ours, never a driver's error; and another user's
thread still reads and takes a turn afterwards.
"""

from __future__ import annotations

import itertools

from hypothesis import example, given
from hypothesis import strategies as st
from langchain_core.messages import HumanMessage

from graph import Settings, build_graph
from tests.hostile import Refused, attempt, hostile_text, scaled
from tests.scripted import ScriptedChatModel, echo

_numbers = itertools.count()


@given(text=hostile_text())
@example(text="\x00")
@example(text="a\x00b")
@example(text="\\u0000")
@scaled(20)
def test_any_text_reaches_either_engines_columns_or_is_refused_with_one_sentence(store, text: str):
    saver = store
    agent = build_graph(checkpointer=saver, model=ScriptedChatModel(script=echo), settings=Settings())
    if not saver.threads.count("bob"):
        agent.invoke({"messages": [HumanMessage("bob's note")]}, {"configurable": {"thread_id": "bobs", "user_id": "bob"}})
    thread_id = f"t-{next(_numbers)}"
    config = {"configurable": {"thread_id": thread_id, "user_id": "alice"}}
    said = attempt("message", agent.invoke, {"messages": [HumanMessage(text)]}, config)
    if not isinstance(said, Refused):
        assert said["messages"][0].content == text
        title = saver.threads.get(thread_id, user_id="alice").title
        assert title is None or not any(ord(c) < 32 for c in title)
        attempt("thread metadata", saver.threads.update_metadata, thread_id, {"note": text, text: 1}, user_id="alice")
        attempt("title", saver.threads.rename, thread_id, text, user_id="alice")
    run = {"configurable": {"thread_id": f"{thread_id}-m", "user_id": "alice"}, "metadata": {text: text}}
    attempt("run metadata", agent.invoke, {"messages": [HumanMessage("hello")]}, run)
    found = attempt("search", saver.threads.search, "alice", text)
    if not isinstance(found, Refused):
        assert "bobs" not in [t.thread_id for t in found.threads]
    state = agent.invoke({"messages": [HumanMessage("still there?")]}, {"configurable": {"thread_id": "bobs", "user_id": "bob"}})
    assert state["messages"][-1].content.endswith("still there?")
    assert [t.thread_id for t in saver.threads.list("bob").threads] == ["bobs"]


def test_a_checkpoint_namespace_with_a_nul_is_refused_by_either_engine_with_one_sentence(store):
    """A caller's config may name any namespace; PostgreSQL's `text` cannot hold a NUL."""
    saver = store
    agent = build_graph(checkpointer=saver, model=ScriptedChatModel(script=echo), settings=Settings())
    agent.invoke({"messages": [HumanMessage("hello")]}, {"configurable": {"thread_id": "t", "user_id": "alice"}})
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": "a\x00b"}}
    for surface, call in [
        ("get_tuple", lambda: saver.get_tuple(config)),
        ("list", lambda: list(saver.list(config))),
        ("get_state", lambda: agent.get_state(config)),
    ]:
        outcome = attempt(f"namespace: {surface}", call)
        assert isinstance(outcome, Refused), f"{surface} answered {outcome!r}"
    assert agent.get_state({"configurable": {"thread_id": "t"}}).values["messages"][-1].content.endswith("hello")


def test_a_task_path_with_a_nul_is_refused_by_either_engine_with_one_sentence(store):
    """PostgreSQL's column marks LangGraph's usual task path with a leading NUL: a caller's
    path holding one is refused, on both engines alike, and nothing is written."""
    saver = store
    agent = build_graph(checkpointer=saver, model=ScriptedChatModel(script=echo), settings=Settings())
    agent.invoke({"messages": [HumanMessage("hello")]}, {"configurable": {"thread_id": "t", "user_id": "alice"}})
    latest = saver.get_tuple({"configurable": {"thread_id": "t"}}).config
    for path in ("\x00model", "~__pregel_pull, a\x00b"):
        outcome = attempt("task path", saver.put_writes, latest, [("messages", [HumanMessage("x")])], "task-1", path)
        assert isinstance(outcome, Refused), f"{path!r} was taken: {outcome!r}"
    assert saver.get_tuple(latest).pending_writes == []


_LONG_ID = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00"), min_size=300, max_size=1100
)


@given(thread_id=_LONG_ID, user_id=_LONG_ID)
@example(thread_id="𐀀" * 900, user_id="alice")  # 3,600 bytes, past a B-tree entry
@example(thread_id="t", user_id="Ж" * 1000)
@scaled(10)
def test_a_long_id_in_any_script_is_kept_or_refused_with_one_sentence_on_either_engine(store, thread_id, user_id):
    """PostgreSQL keeps at most 2,704 bytes in an index entry, and `threads_by_user_updated` holds a
    user id and a thread id together: 1,000 characters of CJK text or emoji passed it, with a raw
    `ProgramLimitExceeded` at every write. Such ids are refused there with one sentence; SQLite
    keeps them, as it kept them before (ids stored by earlier releases stay reachable)."""
    saver = store
    thread_id = f"{next(_numbers)}{thread_id}"  # each example its own thread
    agent = build_graph(checkpointer=saver, model=ScriptedChatModel(script=echo), settings=Settings())
    config = {"configurable": {"thread_id": thread_id, "user_id": user_id}}
    said = attempt("long ids", agent.invoke, {"messages": [HumanMessage("hello")]}, config)
    if not isinstance(said, Refused):
        assert saver.threads.get(thread_id, user_id=user_id).message_count == 2
    elif max(len(thread_id), len(user_id)) > 1000:
        assert "characters long; the limit is 1,000" in str(said.exc)
    elif "postgres" not in type(saver).__module__ or len(thread_id.encode()) + len(user_id.encode()) < 2_000:
        raise AssertionError(f"refused on {saver.location}: {said}")
    attempt("long session id", saver.sessions.put_session, user_id, thread_id, metadata={"k": "v"})
