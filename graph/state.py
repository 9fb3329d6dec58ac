"""The graph's state: the full conversation, plus the trimming node's decision."""

from __future__ import annotations

from typing_extensions import NotRequired

from langgraph.graph import MessagesState


class ChatState(MessagesState):
    """`messages` is the whole history, never trimmed (the checkpoint keeps it all)."""

    window_start: NotRequired[int]
    """Index in `messages` of the first message the model sees on this step."""

    window_cut: NotRequired[int | None]
    """Characters kept of the newest human message when it alone was over budget."""

    input_note: NotRequired[str | None]
    """Why the model's input was cut, copied into the reply's `response_metadata`."""
