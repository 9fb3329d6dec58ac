"""How the store is shown on the page: threads as list entries, messages as chat bubbles."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from checkpointers.search import without_accents, words_of
from checkpointers.threads import message_text
from ui.turns import STOPPED, ToolResult, Words

STOPPED_MARK = "\n\n*Stopped*"
NOT_ANSWERED = "⚠ Not answered"
MODEL_TROUBLE = {
    "timeout": "not answering (the last reply timed out)",
    "unreachable": "unreachable (the last reply could not connect)",
    "rate_limit": "rate-limiting requests",
    "auth": "refusing the API key",
    "not_found": "unaware of this model name",
    "server_error": "failing (the last reply got a server error)",
}
"""What the banner says while the model's last reply failed, by `ModelError.reason`."""


def ago(stamp: str, now: datetime | None = None) -> str:
    """'just now', '5 min ago', '3 h ago', 'yesterday', '12 Mar'."""
    then = datetime.fromisoformat(stamp)
    now = now or datetime.now(timezone.utc)
    seconds = (now - then).total_seconds()
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    if seconds < 2 * 86400:
        return "yesterday"
    if seconds < 7 * 86400:
        return f"{int(seconds // 86400)} days ago"
    return then.strftime("%d %b %Y")


def to_chat(messages: list[BaseMessage]) -> list[dict]:
    """LangChain messages as Gradio chat messages; tool traffic folds into titled bubbles."""
    shown: list[dict] = []
    for message in messages:
        if isinstance(message, HumanMessage):
            shown.append({"role": "user", "content": message_text(message)})
        elif isinstance(message, AIMessage):
            text = message_text(message)
            if text:
                stopped = STOPPED_MARK if message.response_metadata.get(STOPPED) else ""
                shown.append({"role": "assistant", "content": text + stopped})
            for call in message.tool_calls:
                args = call.get("args", {})
                body = f"```sql\n{args['sql']}\n```" if "sql" in args else f"`{json.dumps(args)}`"
                shown.append({"role": "assistant", "content": body, "metadata": {"title": f"Tool call: {call['name']}"}})
        elif isinstance(message, ToolMessage):
            shown.append({"role": "assistant", "content": f"```\n{message_text(message)}\n```", "metadata": {"title": "Tool result"}})
    return shown


def error_bubble(text: str) -> dict:
    return {"role": "assistant", "content": text, "metadata": {"title": NOT_ANSWERED}}


class StreamedReply:
    """The chat as a turn streams into it: the model's words into the reply's bubble,
    tool calls' results folded in before it."""

    def __init__(self, chat: list | None) -> None:
        self.chat = [*(chat or []), {"role": "assistant", "content": ""}]
        self.at = len(self.chat) - 1

    @property
    def text(self) -> str:
        return self.chat[self.at]["content"]

    def add(self, part: Words | ToolResult) -> list:
        if isinstance(part, Words):
            self.chat[self.at]["content"] += part.text
        else:
            self.chat[self.at : self.at] = to_chat([part.message])
            self.at += 1
        return self.chat

    def failed(self, sentence: str) -> list:
        self.chat[self.at] = error_bubble(sentence)
        return self.chat


def _folded(text: str) -> tuple[str, list[int]]:
    """`text` case-folded and without accents, and for each of its characters the index
    of the character of `text` it came from."""
    folded: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(text):
        for f in without_accents(ch).casefold():
            folded.append(f)
            origin.append(i)
    return "".join(folded), origin


def holds_words(text: str, words: list[str]) -> bool:
    """Whether `text` holds every one of `words` (from `search.words_of`) as a whole word,
    ignoring case and accents, as the store's search matches messages."""
    found = set(words_of(without_accents(text)))
    return all(without_accents(w) in found for w in words)


def snippet(text: str, words: list[str], width: int = 90) -> str:
    """The words of `text` around the first of `words` in it, on one line: what a search
    result shows of the message it matched ('' if none is in it)."""
    folded, origin = _folded(text)
    pattern = "|".join(re.escape(without_accents(w)) for w in words if w)
    hit = re.search(rf"(?<!\w)(?:{pattern})(?!\w)", folded) if pattern else None
    if hit is None:
        return ""
    at = origin[hit.start()]
    start = max(0, at - width // 3)
    end = min(len(text), start + width)
    if start > 0:  # begin at a word
        space = text.find(" ", start, at)
        start = space + 1 if space != -1 else start
    excerpt = " ".join(text[start:end].split())
    return f"{'…' if start > 0 else ''}{excerpt}{'…' if end < len(text) else ''}"
