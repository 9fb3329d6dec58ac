"""The graph's state: the full conversation, plus the trimming node's decision."""

from __future__ import annotations

from typing_extensions import NotRequired

from langgraph.graph import MessagesState


class ChatState(MessagesState):
    """`messages` is the whole history, never trimmed (the checkpoint keeps it all)."""

    window: NotRequired[dict]
    """The trimming node's decision: which messages the model sees (`trimming.Window`)."""
