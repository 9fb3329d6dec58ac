"""What the model sees: a window of the newest turns under a token budget.

The full history stays in the checkpoint; only the model's input is trimmed.
The window always starts on a human message, keeps every tool call with its
result, and always includes the newest human message (cut to fit, with a note,
if that message alone is over budget). Choosing it walks back from the newest
message and stops at the first turn that does not fit, so its cost depends on
the window, not on the length of the thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from graph.tokens import TokenCounter

CUT_MARK = "\n[... cut here: the rest of this message is over the input budget]"
INTERRUPTED_RESULT = "No result: this tool call was interrupted before it finished."


@dataclass(frozen=True)
class Window:
    start: int
    """Index of the first history message sent to the model."""
    tokens: int
    """Tokens of the whole input, system prompt included (by the counter in use)."""
    cut_chars: int | None = None
    """If the newest human message was cut: how many of its characters were kept."""
    note: str | None = None
    """One sentence for the reply's metadata when something had to be cut."""


def message_text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return " ".join(
        b if isinstance(b, str) else str(b.get("text", "")) for b in content if isinstance(b, str) or b.get("type") == "text"
    )


def _last_human(messages: Sequence[BaseMessage]) -> int | None:
    for i in range(len(messages) - 1, -1, -1):
        if isinstance(messages[i], HumanMessage):
            return i
    return None


def choose_window(messages: Sequence[BaseMessage], counter: TokenCounter, budget: int, system_tokens: int) -> Window:
    """The newest whole turns that fit in `budget` tokens next to the system prompt."""
    available = budget - system_tokens
    newest = _last_human(messages)
    if newest is None:
        return Window(start=len(messages), tokens=system_tokens)
    required = sum(counter.count(m) for m in messages[newest:])
    if required > available:
        return _cut_newest(messages, newest, counter, available, required, system_tokens, budget)
    used, start = required, newest
    while True:
        block, j = 0, start - 1
        while j >= 0 and not isinstance(messages[j], HumanMessage):
            block += counter.count(messages[j])
            j -= 1
        if j < 0:
            break  # nothing but non-human messages before: the window must start on a human
        block += counter.count(messages[j])
        if used + block > available:
            break
        used, start = used + block, j
    return Window(start=start, tokens=used + system_tokens)


def _cut_newest(
    messages: Sequence[BaseMessage], newest: int, counter: TokenCounter, available: int, required: int, system_tokens: int, budget: int
) -> Window:
    human = messages[newest]
    rest = required - counter.count(human)
    text = message_text(human)
    allowed = available - rest - counter.count_text(CUT_MARK) - 8
    lo, hi = 0, len(text)
    while lo < hi:  # the longest prefix that fits
        mid = (lo + hi + 1) // 2
        if counter.count_text(text[:mid]) <= allowed:
            lo = mid
        else:
            hi = mid - 1
    whole = counter.count(human)
    note = (
        f"The newest message is about {whole:,} tokens, over the {budget:,}-token input budget; "
        f"the model saw its first {lo:,} of {len(text):,} characters."
    )
    kept_tokens = system_tokens + rest + counter.count_text(text[:lo] + CUT_MARK) + 4
    return Window(start=newest, tokens=kept_tokens, cut_chars=lo, note=note)


def model_input(system_prompt: str, messages: Sequence[BaseMessage], window: Window) -> list[BaseMessage]:
    """The system prompt and the window, ready for the model.

    Tool results whose call is not in the window (e.g. after the call was
    removed) are dropped, and a call left without a result (a turn interrupted
    mid-tool) gets a stand-in result, so a provider never sees an orphan.
    """
    sent: list[BaseMessage] = [SystemMessage(system_prompt)]
    window_messages = list(messages[window.start :])
    if window.cut_chars is not None and window_messages:
        human = window_messages[0]
        window_messages[0] = HumanMessage(message_text(human)[: window.cut_chars] + CUT_MARK, id=human.id)
    open_calls: list[str] = []
    known_calls: set[str] = set()
    for message in window_messages:
        if isinstance(message, ToolMessage):
            if message.tool_call_id not in known_calls:
                continue
            if message.tool_call_id in open_calls:
                open_calls.remove(message.tool_call_id)
            sent.append(message)
            continue
        _close(sent, open_calls)
        sent.append(message)
        if isinstance(message, AIMessage):
            for call in message.tool_calls:
                if call.get("id"):
                    open_calls.append(call["id"])
                    known_calls.add(call["id"])
    _close(sent, open_calls)
    return sent


def _close(sent: list[BaseMessage], open_calls: list[str]) -> None:
    for call_id in open_calls:
        sent.append(ToolMessage(INTERRUPTED_RESULT, tool_call_id=call_id))
    open_calls.clear()
