"""A caller changing the objects a read returned changes nothing, as with LangGraph's stock savers."""

from __future__ import annotations

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph

from checkpointers import open_saver

CONFIG = {"configurable": {"thread_id": "t", "user_id": "alice"}}


def recording_graph(checkpointer):
    """The reply quotes every message the node was given, so any change to the history shows."""

    def model(state: MessagesState) -> dict:
        seen = " | ".join(f"{m.content}{m.additional_kwargs}{getattr(m, 'tool_calls', '')}" for m in state["messages"])
        n = len(state["messages"])
        return {
            "messages": [
                AIMessage(
                    f"seen: {seen}",
                    id=f"ai-{n}",
                    tool_calls=[{"name": "lookup", "args": {"n": n, "tags": ["a"]}, "id": f"call-{n}"}],
                    additional_kwargs={"note": {"n": n}},
                )
            ]
        }

    builder = StateGraph(MessagesState)
    builder.add_node("model", model)
    builder.add_edge(START, "model")
    builder.add_edge("model", END)
    return builder.compile(checkpointer=checkpointer)


def scenario(checkpointer) -> list:
    """A human-in-the-loop session that edits what reads returned, in place; the states seen after each step."""
    graph = recording_graph(checkpointer)
    seen = []
    result = graph.invoke({"messages": [HumanMessage("first", id="h-1")]}, CONFIG)
    # Change the result of invoke in place, then read the state again.
    result["messages"][0].content = "CHANGED IN THE RESULT"
    result["messages"][-1].tool_calls[0]["args"]["tags"].append("from-result")
    seen.append(graph.get_state(CONFIG).values["messages"])

    # Change what get_state returned, without saving it: nothing changes.
    state = graph.get_state(CONFIG)
    last = state.values["messages"][-1]
    last.tool_calls[0]["args"]["n"] = 99
    last.additional_kwargs["note"]["n"] = 99
    last.content = "edited but not saved"
    seen.append(graph.get_state(CONFIG).values["messages"])

    # The human-in-the-loop pattern: edit the last AIMessage's tool call, then update_state with it.
    state = graph.get_state(CONFIG)
    last = state.values["messages"][-1]
    last.tool_calls[0]["args"]["n"] = 42
    last.additional_kwargs["approved"] = True
    graph.update_state(CONFIG, {"messages": [last]})
    last.tool_calls[0]["args"]["n"] = -1  # after saving: must not reach the store
    seen.append(graph.get_state(CONFIG).values["messages"])

    for n in range(2, 5):
        result = graph.invoke({"messages": [HumanMessage(f"turn {n}", id=f"h-{n}")]}, CONFIG)
        result["messages"][1].additional_kwargs["changed"] = n
        seen.append(graph.get_state(CONFIG).values["messages"])
    history = [s.values.get("messages", []) for s in graph.get_state_history(CONFIG)]
    for messages in history[:2]:
        for m in messages:
            m.content = "history edited"
    seen.append([s.values.get("messages", []) for s in graph.get_state_history(CONFIG)])
    return seen


def test_changing_returned_messages_in_place_behaves_as_with_in_memory_saver(store_url):
    expected = scenario(InMemorySaver())
    with open_saver(store_url) as saver:
        assert scenario(saver) == expected
        if hasattr(saver, "flush"):  # SQLite holds the newest checkpoints back until the next write
            saver.flush()
        with open_saver(store_url) as fresh:
            assert recording_graph(fresh).get_state(CONFIG).values["messages"] == expected[-2]
