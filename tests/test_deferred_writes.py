"""A run's input checkpoint and its task writes ride in the next checkpoint's
transaction (`ThreadSaver.put` / `put_writes`): what that may and may not change."""

from __future__ import annotations

import operator
import time
import uuid
from typing import Annotated

import pytest
from langchain_core.messages import HumanMessage
from langgraph.channels import Topic
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict

from checkpointers import ThreadSaver
from checkpointers.errors import ThreadNotFoundError
from checkpointers.engines.sqlite.saver import DEFERRED_WRITES_FLUSH_AFTER
from tests.chat import chat_graph, human

ERROR = "__error__"  # LangGraph's channel for a task's exception


class TopicState(TypedDict):
    seen: Annotated[list, Topic(str, accumulate=True)]
    steps: Annotated[int, operator.add]


def _checkpoint(saver: ThreadSaver, thread_id: str, source: str, parent: str | None = None) -> dict:
    checkpoint = empty_checkpoint()
    config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    if parent:
        config["configurable"]["checkpoint_id"] = parent
    return saver.put(config, checkpoint, {"source": source, "step": -1}, {})


def _task_write(saver: ThreadSaver, config: dict, n: int, node: str = "model") -> None:
    """What a graph's task does when it finishes: one message, under its task path."""
    saver.put_writes(config, [("messages", [human(n)])], str(uuid.uuid4()), f"~__pregel_pull, {node}")


def _stored_checkpoints(db_path, thread_id: str) -> int:
    """What another process sees: a second saver that defers nothing."""
    other = ThreadSaver(db_path, defer_writes=False)
    try:
        return len(list(other.list({"configurable": {"thread_id": thread_id}})))
    finally:
        other.close()


def _stored_writes(db_path, thread_id: str) -> list[tuple[str, object]]:
    other = ThreadSaver(db_path, defer_writes=False)
    try:
        found = other.get_tuple({"configurable": {"thread_id": thread_id}})
        return [] if found is None else [(channel, value) for _, channel, value in found.pending_writes]
    finally:
        other.close()


def _eventually(check, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.005)


def test_a_finished_turn_is_committed_before_invoke_returns(db_path):
    saver = ThreadSaver(db_path)
    graph = chat_graph(saver)
    config = {"configurable": {"thread_id": "t", "user_id": "u"}}
    for n in range(3):
        graph.invoke({"messages": [human(n)]}, config)
        # Nothing of the turn is left waiting in this process ...
        assert saver._deferred == []
    # ... and another process sees every message at once.
    other = ThreadSaver(db_path, defer_writes=False)
    try:
        state = chat_graph(other).get_state(config)
        assert len(state.values["messages"]) == 6 and state.next == ()
    finally:
        other.close()
        saver.close()


def test_this_process_sees_deferred_writes_at_once(db_path):
    saver = ThreadSaver(db_path)
    try:
        config = _checkpoint(saver, "t", "loop")
        _task_write(saver, config, 1)
        assert len(saver._deferred) == 1
        found = saver.get_tuple(config)
        assert [w[1] for w in found.pending_writes] == ["messages"]
        assert saver._deferred == []
    finally:
        saver.close()


def test_deferred_writes_reach_the_file_within_the_flush_delay_without_a_next_checkpoint(db_path):
    saver = ThreadSaver(db_path)
    try:
        config = _checkpoint(saver, "t", "loop")
        _task_write(saver, config, 1)
        started = time.monotonic()
        assert _eventually(lambda: _stored_writes(db_path, "t"))
        # The flusher, not a read of this saver, wrote it; and not much later than promised.
        assert time.monotonic() - started < DEFERRED_WRITES_FLUSH_AFTER + 2.0
        assert saver._deferred == []
    finally:
        saver.close()


def test_the_flusher_finds_writes_deferred_while_it_waits_and_after_it_went_idle(db_path):
    saver = ThreadSaver(db_path)
    try:
        config = _checkpoint(saver, "t", "loop")
        for step in range(3):
            _task_write(saver, config, 2 * step)
            _task_write(saver, config, 2 * step + 1)  # deferred while the flusher waits for the first
            assert _eventually(lambda: len(_stored_writes(db_path, "t")) == 2 * step + 2)
            assert saver._deferred == []
            if step == 1:
                time.sleep(20 * DEFERRED_WRITES_FLUSH_AFTER)  # long enough for it to go idle
    finally:
        saver.close()


def test_an_input_checkpoint_with_nothing_after_it_reaches_the_file(db_path):
    saver = ThreadSaver(db_path)
    try:
        _checkpoint(saver, "t", "input")
        assert len(saver._deferred) == 1
        assert _eventually(lambda: _stored_checkpoints(db_path, "t") == 1)
    finally:
        saver.close()


def test_errors_and_writes_outside_a_task_are_written_at_once(db_path):
    saver = ThreadSaver(db_path)
    try:
        config = _checkpoint(saver, "t", "loop")
        saver.put_writes(config, [(ERROR, ValueError("boom"))], str(uuid.uuid4()), "~__pregel_pull, model")
        assert saver._deferred == []
        assert [c for c, _ in _stored_writes(db_path, "t")] == [ERROR]
        # update_state's writes carry no task path: nothing may follow them
        saver.put_writes(config, [("messages", [human(2)])], str(uuid.uuid4()))
        assert saver._deferred == []
        assert sorted(c for c, _ in _stored_writes(db_path, "t")) == [ERROR, "messages"]
    finally:
        saver.close()


def test_writes_for_an_older_checkpoint_are_written_at_once(db_path):
    saver = ThreadSaver(db_path)
    try:
        first = _checkpoint(saver, "t", "loop")
        _checkpoint(saver, "t", "loop", parent=first["configurable"]["checkpoint_id"])
        _task_write(saver, first, 1)
        assert saver._deferred == []
    finally:
        saver.close()


def test_close_writes_what_is_deferred(db_path):
    saver = ThreadSaver(db_path)
    config = _checkpoint(saver, "t", "input")
    _task_write(saver, config, 1, node="__start__")
    assert len(saver._deferred) == 2
    saver.close()
    assert _stored_checkpoints(db_path, "t") == 1
    assert [c for c, _ in _stored_writes(db_path, "t")] == ["messages"]


def test_a_deleted_thread_is_not_brought_back_by_its_deferred_writes(db_path):
    saver = ThreadSaver(db_path)
    try:
        config = _checkpoint(saver, "t", "input")
        _task_write(saver, config, 1, node="__start__")
        saver.delete_thread("t")
        time.sleep(DEFERRED_WRITES_FLUSH_AFTER * 5)
        with pytest.raises(ThreadNotFoundError):
            saver.threads.get("t")
        assert _stored_checkpoints(db_path, "t") == 0
        assert saver.conn.execute("SELECT count(*) FROM writes").fetchone()[0] == 0
    finally:
        saver.close()


def test_defer_writes_false_writes_every_call_at_once(db_path):
    saver = ThreadSaver(db_path, defer_writes=False)
    try:
        config = _checkpoint(saver, "t", "input")
        _task_write(saver, config, 1, node="__start__")
        assert saver._deferred == [] and saver._flusher is None
        assert _stored_checkpoints(db_path, "t") == 1
    finally:
        saver.close()


def test_a_chat_turn_commits_once(db_path, monkeypatch):
    """A chat turn makes three checkpoints and two sets of task writes; all but
    the checkpoint that ends the run ride along with it, so it commits once.
    (The flusher's delay is made long: on a busy machine a step can outlast its
    10 ms, and the flusher then rightly commits what waits, as for a slow model.)"""
    monkeypatch.setattr("checkpointers.engines.sqlite.saver.DEFERRED_WRITES_FLUSH_AFTER", 60.0)
    saver = ThreadSaver(db_path)
    graph = chat_graph(saver)
    config = {"configurable": {"thread_id": "t", "user_id": "u"}}
    try:
        graph.invoke({"messages": [human(0)]}, config)  # the thread row is now known
        statements: list[str] = []
        conn = saver.conn

        class Counting:
            def execute(self, sql, *args):
                statements.append(sql)
                return conn.execute(sql, *args)

            def __getattr__(self, name):
                return getattr(conn, name)

        saver.conn = Counting()
        graph.invoke({"messages": [human(1)]}, config)
        saver.conn = conn
        assert statements.count("BEGIN IMMEDIATE") == 1, statements
    finally:
        saver.close()


def test_a_run_stopped_by_interrupt_before_is_visible_at_once_and_reaches_the_file(db_path):
    """The step checkpoint before an `interrupt_before` node waits like any step
    that has a next node; it is the run's last, so the flusher writes it."""
    saver = ThreadSaver(db_path)
    graph = chat_graph(saver).copy(update={"interrupt_before_nodes": ["model"]})
    config = {"configurable": {"thread_id": "t", "user_id": "u"}}
    try:
        graph.invoke({"messages": [human(0)]}, config)
        assert graph.get_state(config).next == ("model",)  # this process: the read writes it first
        graph.invoke({"messages": [human(1)]}, config)
        assert _eventually(lambda: _stored_checkpoints(db_path, "t") == 4)
        other = ThreadSaver(db_path, defer_writes=False)
        try:
            state = chat_graph(other).get_state(config)
            assert state.next == ("model",) and [m.id for m in state.values["messages"]] == ["human-0", "human-1"]
        finally:
            other.close()
    finally:
        saver.close()


def test_a_waiting_step_checkpoint_keeps_its_values_as_they_were_at_put(db_path):
    """A `Topic` that accumulates extends its list in place after the checkpoint
    holding it was put; the stored checkpoint still equals InMemorySaver's.
    (Saved with durability "sync": with "async" LangGraph may run `put` after the
    next step changed the list, and then InMemorySaver stores the later list too.)"""
    def step(name: str):
        return lambda state: {"seen": [f"{name}-{len(state['seen'])}"], "steps": 1}

    def build(checkpointer):
        builder = StateGraph(TopicState)
        for name in ("a", "b", "c"):
            builder.add_node(name, step(name))
        builder.add_edge(START, "a")
        builder.add_edge("a", "b")
        builder.add_edge("b", "c")
        builder.add_edge("c", END)
        return builder.compile(checkpointer=checkpointer)

    saver = ThreadSaver(db_path)
    try:
        ours, memory = build(saver), build(InMemorySaver())
        config = {"configurable": {"thread_id": "t"}}
        for graph in (ours, memory):
            graph.invoke({"seen": ["start"], "steps": 0}, config, durability="sync")
            graph.invoke({"seen": ["again"], "steps": 0}, config, durability="sync")

        def history(graph):
            return [(s.metadata["step"], s.values, s.next) for s in graph.get_state_history(config)]

        assert history(ours) == history(memory)
        by_step = {s.metadata["step"]: s.values.get("seen") for s in ours.get_state_history(config)}
        assert by_step[1] == ["start", "a-1"] and by_step[2] == ["start", "a-1", "b-2"]
    finally:
        saver.close()


def test_a_message_given_its_id_after_its_write_was_encoded_is_stored_once(db_path):
    """LangGraph's reducer gives a new message its id in place, and a task's writes are
    encoded on another thread, so a write may be encoded before the id is set. The
    checkpoint's history then holds the message with its id; both are one stored row."""
    saver = ThreadSaver(db_path)
    try:
        config = _checkpoint(saver, "t", "loop")
        message = HumanMessage("a message with no id yet")
        saver.put_writes(config, [("messages", [message])], str(uuid.uuid4()), "~__pregel_pull, model")
        assert len(saver._deferred) == 1
        message.id = "given-by-the-reducer"
        checkpoint = empty_checkpoint()
        checkpoint["channel_values"] = {"messages": [message]}
        checkpoint["channel_versions"] = {"messages": 2.0}
        saver.put(config, checkpoint, {"source": "loop", "step": 0}, {"messages": 2.0})
        with saver._read() as conn:
            stored = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
            backlog = conn.execute("SELECT count(*) FROM search_backlog").fetchone()[0]
        assert (stored, backlog) == (1, 1)
        history = saver.get_tuple({"configurable": {"thread_id": "t"}}).checkpoint["channel_values"]["messages"]
        assert [(m.id, m.content) for m in history] == [("given-by-the-reducer", message.content)]
    finally:
        saver.close()
