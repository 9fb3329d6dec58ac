"""Chat graphs whose model is a deterministic stand-in, for storage tests."""

from __future__ import annotations

import functools
import random
from pathlib import Path
from typing import Annotated, Any

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.channels.delta import DeltaChannel
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict

from checkpointers import open_saver

WORDS = "the of and to in is you that it was for on are as with they at be this have from or one had by".split()


def sentence(rng: random.Random, length: int) -> str:
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < length:
        words.append(rng.choice(WORDS))
    return " ".join(words)[:length]


def _add_message_batches(state: list, batches: list) -> list:
    return functools.reduce(add_messages, batches, state)


class DeltaMessagesState(TypedDict):
    messages: Annotated[list, DeltaChannel(_add_message_batches, snapshot_frequency=3)]


def chat_graph(checkpointer: Any, *, seed: int = 0, delta: bool = False):
    """A one-node graph; the reply to the n-th human message has id `ai-<n>`, and
    its text depends only on `seed` and n, so two graphs replay the same chat."""

    def model(state: dict) -> dict:
        humans = sum(isinstance(m, HumanMessage) for m in state["messages"])
        rng = random.Random(seed * 100_003 + humans)
        return {"messages": [AIMessage(sentence(rng, 200), id=f"ai-{humans}")]}

    builder = StateGraph(DeltaMessagesState if delta else MessagesState)
    builder.add_node("model", model)
    builder.add_edge(START, "model")
    builder.add_edge("model", END)
    return builder.compile(checkpointer=checkpointer)


def human(n: int, rng: random.Random | None = None) -> HumanMessage:
    return HumanMessage(sentence(rng or random.Random(n), 100), id=f"human-{n}")


def long_thread(where: Path | str, turns: int) -> list:
    """A thread of `turns` turns in the store at `where` (a SQLite file or a store URL)."""
    with open_saver(where if isinstance(where, str) else f"sqlite:///{where}") as saver:
        graph = chat_graph(saver)
        config = {"configurable": {"thread_id": "long", "user_id": "alice"}}
        for n in range(turns):
            graph.invoke({"messages": [human(n)]}, config)
        return graph.get_state(config).values["messages"]


def echo_graph(checkpointer: Any, prefix: str = "you said: "):
    """A one-node graph whose reply is `prefix` and the last message's text."""

    def model(state: MessagesState) -> dict:
        return {"messages": [AIMessage(prefix + state["messages"][-1].content)]}

    builder = StateGraph(MessagesState)
    builder.add_node("model", model)
    builder.add_edge(START, "model")
    builder.add_edge("model", END)
    return builder.compile(checkpointer=checkpointer)
