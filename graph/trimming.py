"""What the model sees: a window of the newest turns under a token budget.

The full history stays in the checkpoint; only the model's input is trimmed.
The window always starts on a human message, keeps every tool call with its
result, and always includes the newest human message (cut to fit, with a note,
if that message alone is over budget). Choosing it walks back from the newest
message and stops at the first turn that does not fit, so its cost depends on
the window, not on the length of the thread.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from graph.tokens import TokenCounter

CUT_MARK = "\n[... cut here: the rest of this message is over the input budget]"
INTERRUPTED_RESULT = "No result: this tool call was interrupted before it finished."


RECOUNT_EVERY = 50


@dataclass(frozen=True)
class Window:
    start: int
    """Index of the first history message sent to the model."""
    tokens: int
    """Tokens of the history part of the input (by the counter in use)."""
    end: int = 0
    """How many messages the history had when the window was chosen."""
    available: int = 0
    """The budget left for history beside the system prompt."""
    ids: int | None = None
    """`ids_fingerprint` of the window's first message and the history's last one: the
    history only grew since if the same two messages are there (see `_still_valid`)."""
    cut_chars: int | None = None
    """If the newest human message was cut: how many of its characters were kept."""
    note: str | None = None
    """One sentence for the reply's metadata when something had to be cut."""
    recount_in: int = 0
    """Turns left before the window is counted again from scratch."""

    def as_state(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_state(cls, value: dict | None) -> Window | None:
        if not value:
            return None
        if "first_id" in value or "last_id" in value:  # a state saved before `ids`
            value = dict(value)
            value["ids"] = ids_fingerprint(value.pop("first_id", None), value.pop("last_id", None))
        return cls(**value)


def ids_fingerprint(first_id: str | None, last_id: str | None) -> int:
    """64 bits of a hash of two message ids. The window is kept in every checkpoint
    that changes it and in the trimming node's write: the two ids themselves (36 and
    44 characters) made it 137 bytes stored twice a turn, this 57 (measured through
    the agent graph). Mistaking an edited history for a grown one takes a 2**-64
    chance, and would still be corrected by the recount every RECOUNT_EVERY steps."""
    digest = hashlib.blake2b(f"{first_id!r}\x00{last_id!r}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def message_text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return " ".join(
        b if isinstance(b, str) else str(b.get("text", "")) for b in content if isinstance(b, str) or b.get("type") == "text"
    )


def last_human(messages: Sequence[BaseMessage]) -> int | None:
    for i in range(len(messages) - 1, -1, -1):
        if isinstance(messages[i], HumanMessage):
            return i
    return None


def _still_valid(previous: Window | None, messages: Sequence[BaseMessage], available: int) -> bool:
    """Whether `previous` can be extended: same budget, and the history only grew since."""
    return (
        previous is not None
        and previous.recount_in > 0
        and previous.cut_chars is None
        and previous.available == available
        and 0 < previous.end <= len(messages)
        and previous.start < previous.end
        and previous.ids == ids_fingerprint(messages[previous.start].id, messages[previous.end - 1].id)
    )


def choose_window(
    messages: Sequence[BaseMessage], counter: TokenCounter, budget: int, system_tokens: int, previous: Window | None = None
) -> Window:
    """The newest whole turns that fit in `budget` tokens next to the system prompt.

    Given the window chosen on the previous step (`previous`), only the new
    messages are counted and whole turns are dropped from the front until the
    input fits again, so a step costs the same at turn 1,000 as at turn 10. The
    window is counted from scratch every RECOUNT_EVERY steps and whenever the
    history was edited rather than extended.
    """
    available = budget - system_tokens
    n = len(messages)
    newest = last_human(messages)
    if newest is None:
        return Window(start=n, tokens=0, end=n, available=available)
    if _still_valid(previous, messages, available) and previous.start <= newest:
        used = previous.tokens + sum(counter.count(m) for m in messages[previous.end :])
        start, used = drop_oldest_turns(messages, counter, previous.start, used, available, newest)
        if used <= available:
            return _window(messages, start, used, available, previous.recount_in - 1)
    required = sum(counter.count(m) for m in messages[newest:])
    if required > available:
        return _cut_newest(messages, newest, counter, available, required, budget)
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
    return _window(messages, start, used, available, RECOUNT_EVERY)


def drop_oldest_turns(
    messages: Sequence[BaseMessage], counter: TokenCounter, start: int, used: int, limit: int, newest: int
) -> tuple[int, int]:
    """Drop whole turns from `start` on until `used` tokens fit `limit`, never past `newest`.

    A turn runs from a human message to the next one, so a tool call always
    goes with its results. Returns the new start and the tokens left.
    """
    while used > limit and start < newest:
        j = start + 1
        while not isinstance(messages[j], HumanMessage):
            j += 1
        used -= sum(counter.count(m) for m in messages[start:j])
        start = j
    return start, used


def _window(messages: Sequence[BaseMessage], start: int, used: int, available: int, recount_in: int) -> Window:
    return Window(
        start=start,
        tokens=used,
        end=len(messages),
        available=available,
        ids=ids_fingerprint(messages[start].id, messages[-1].id),
        recount_in=recount_in,
    )


def _cut_newest(
    messages: Sequence[BaseMessage], newest: int, counter: TokenCounter, available: int, required: int, budget: int
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
    kept_tokens = rest + counter.count_text(text[:lo] + CUT_MARK) + 4
    return Window(start=newest, tokens=kept_tokens, end=len(messages), available=available, cut_chars=lo, note=note)


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
