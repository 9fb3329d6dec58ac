"""The graph's state: the full conversation, the trimming node's decision, and the
memory beyond the window (`graph/summary.py`)."""

from __future__ import annotations

from typing_extensions import NotRequired

from langgraph.graph import MessagesState


class ChatState(MessagesState):
    """`messages` is the whole history, never trimmed (the checkpoint keeps it all)."""

    window: NotRequired[dict]
    """The trimming node's decision: which messages the model sees (`trimming.Window`)."""

    summary: NotRequired[dict]
    """The running summary of what the window leaves out, and which messages it covers
    (`summary.RunningSummary`). An addition to `messages`, never a replacement."""

    facts: NotRequired[list[dict]]
    """Facts the user asked to keep ("remember that ..."), verbatim, with their message's id."""
