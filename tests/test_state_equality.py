"""State read back from the SQLite saver equals InMemorySaver's, turn by turn."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, RemoveMessage, ToolMessage
from langgraph.checkpoint.memory import InMemorySaver

from checkpointers import ThreadSaver
from tests.chat import chat_graph, human


def _script():
    """Turns as (input update, as_node) pairs: chat, an edit, removals, a tool exchange."""
    steps = [({"messages": [human(n)]}, None) for n in range(1, 6)]
    steps.append(({"messages": [AIMessage("edited reply", id="ai-2")]}, "model"))
    steps.append(({"messages": [RemoveMessage(id="human-1"), RemoveMessage(id="ai-1")]}, "model"))
    steps += [({"messages": [human(n)]}, None) for n in range(6, 9)]
    steps.append(
        (
            {
                "messages": [
                    AIMessage("", id="call", tool_calls=[{"name": "q", "args": {"sql": "select 1"}, "id": "c1"}]),
                    ToolMessage("1", tool_call_id="c1", id="tool-1"),
                    HumanMessage([{"type": "text", "text": "blocks"}], id="blocks"),
                ]
            },
            "model",
        )
    )
    steps.append(({"messages": [human(9)]}, None))
    steps.append(({"messages": [RemoveMessage(id="ai-4")]}, "model"))
    steps += [({"messages": [human(n)]}, None) for n in range(10, 80)]
    return steps


def _history(graph, config):
    return [(s.values, s.next, s.metadata.get("step")) for s in graph.get_state_history(config)]


@pytest.mark.parametrize("delta", [False, True], ids=["messages-state", "delta-channel"])
def test_state_equals_in_memory_saver_after_every_turn_warm_and_cold(db_path, delta):
    config = {"configurable": {"thread_id": "t1", "user_id": "alice"}}
    reference = chat_graph(InMemorySaver(), delta=delta)
    saver = ThreadSaver(db_path)
    ours = chat_graph(saver, delta=delta)
    try:
        for update, as_node in _script():
            for graph in (reference, ours):
                if as_node is None:
                    graph.invoke(update, config)
                else:
                    graph.update_state(config, update, as_node=as_node)
            expected = reference.get_state(config).values
            assert ours.get_state(config).values == expected
            if not delta:  # a DeltaChannel's list is only whole at its snapshots
                assert saver.threads.get("t1").message_count == len(expected["messages"])
            cold = ThreadSaver(db_path)  # a new saver reads the file alone, no cache
            try:
                assert chat_graph(cold, delta=delta).get_state(config).values == expected
            finally:
                cold.close()
        assert _history(ours, config) == _history(reference, config)
        info = saver.threads.get("t1")
        assert info.user_id == "alice"
        assert info.title == human(1).content[:59].rstrip() + "…"
    finally:
        saver.close()


def test_fast_message_rebuild_matches_pydantic_model_construct():
    from langchain_core.messages import ChatMessage, FunctionMessage, SystemMessage

    from checkpointers.messages import MESSAGE_CLASSES, rebuild_message

    samples = [
        HumanMessage("hi", id="1", name="al"),
        AIMessage("", id="2", tool_calls=[{"name": "f", "args": {"a": 1}, "id": "c"}], usage_metadata={"input_tokens": 1, "output_tokens": 2, "total_tokens": 3}),
        SystemMessage("be brief"),
        ToolMessage("out", tool_call_id="c", status="error", artifact={"rows": [1]}),
        FunctionMessage("r", name="f"),
        ChatMessage("x", role="critic"),
    ]
    assert {type(m) for m in samples} == set(MESSAGE_CLASSES.values())
    for message in samples:
        fields = dict(message.__dict__)
        fast = rebuild_message(type(message), dict(fields))
        slow = type(message).model_construct(**dict(fields))
        assert fast == slow == message
        for attr in ("__dict__", "__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__"):
            assert getattr(fast, attr) == getattr(slow, attr), attr
        assert fast.model_dump() == message.model_dump()
