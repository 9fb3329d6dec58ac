"""Checkpoints written by LangGraph's stock savers continue here as they would there."""

from __future__ import annotations

from langgraph.checkpoint.memory import InMemorySaver

from checkpointers import ThreadSaver
from tests.chat import chat_graph, human


def config(thread_id: str) -> dict:
    return {"configurable": {"thread_id": thread_id, "user_id": "alice"}}


def copy_thread_from(source, target: ThreadSaver, thread_id: str) -> int:
    """Every checkpoint and write of a thread, oldest first, as a migration script would copy them."""
    copied = 0
    for item in reversed(list(source.list(config(thread_id)))):
        parent = item.parent_config or {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
        target.put(parent, item.checkpoint, item.metadata, item.checkpoint["channel_versions"])
        by_task: dict[str, list] = {}
        for task_id, channel, value in item.pending_writes or []:
            by_task.setdefault(task_id, []).append((channel, value))
        for task_id, writes in by_task.items():
            target.put_writes(item.config, writes, task_id)
        copied += 1
    return copied


def test_a_thread_from_a_stock_saver_with_string_versions_continues(saver: ThreadSaver):
    stock = InMemorySaver()
    theirs = chat_graph(stock)
    for n in range(1, 4):
        theirs.invoke({"messages": [human(n)]}, config("t"))
    assert any(type(v) is str for v in stock.get_tuple(config("t")).checkpoint["channel_versions"].values())
    assert copy_thread_from(stock, saver, "t") >= 6

    ours = chat_graph(saver)
    assert ours.get_state(config("t")).values == theirs.get_state(config("t")).values
    for n in range(4, 6):
        mine = ours.invoke({"messages": [human(n)]}, config("t"))
        expected = theirs.invoke({"messages": [human(n)]}, config("t"))
        assert mine["messages"] == expected["messages"]
    saver.flush()
    fresh = ThreadSaver(saver.path)
    try:
        assert chat_graph(fresh).get_state(config("t")).values["messages"] == expected["messages"]
    finally:
        fresh.close()
