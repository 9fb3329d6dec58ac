"""One turn of a conversation, for every door a person chats through: the web chat
and the CLI. No UI here: these say what may be done to a thread and do it, and the
doors say it in their own way (a toast, a line in the terminal).

    turns = Turns(saver, graph)
    thread_id = turns.claim(None, "alice")              # a new thread for alice
    async with turns.slot("alice"):                     # her turns in flight are limited
        async for part in turns.reply(turns.input("hi"), turns.config(thread_id, "alice")):
            ...                                         # Words and ToolResult, as they stream

The ownership rule: a thread id that is not the caller's behaves as one that does
not exist (`NOT_FOUND`), whether it comes from a page, a crafted request or a typo.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, RemoveMessage, ToolMessage

from checkpointers import StoreError, ThreadNotFoundError, ThreadSaver
from checkpointers.storable import check_text
from checkpointers.threads import message_text

log = logging.getLogger("threadkeeper.turns")

NOT_FOUND = "That thread does not exist (or is not yours)."
MAX_MESSAGE_CHARS = 100_000
STOPPED = "stopped"
"""`response_metadata` key of a reply the person stopped: it holds what was shown until then."""
TURNS_PER_USER = 3
"""Default of `THREADKEEPER_TURNS_PER_USER`."""
MAX_STREAMS = 500
"""Default of `THREADKEEPER_MAX_STREAMS`."""


class TurnRefused(ValueError):
    """What a person asked for is not done; the message is one sentence for them."""


def check_message(text: str) -> None:
    """Refuse a message no door sends: too long, or text the store cannot keep."""
    if len(text) > MAX_MESSAGE_CHARS:
        raise TurnRefused(f"That message is {len(text):,} characters; the limit is {MAX_MESSAGE_CHARS:,}.")
    check_text(text)


def _positive(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name} must be a whole number, at least 1, not {raw!r}")
    return value


@dataclass(frozen=True)
class Limits:
    """How many replies stream at once: per person, and for the whole process.

    A reply is mostly waiting for the model, so a process can stream hundreds at
    once (see README, Measured: the web chat under load); the cap keeps a flood
    from taking the memory of everyone else, and the per-person limit keeps one
    person (many tabs, a script) from taking the cap."""

    per_user: int = TURNS_PER_USER
    """Replies one person may have in flight (`THREADKEEPER_TURNS_PER_USER`); one more is refused."""
    streams: int = MAX_STREAMS
    """Replies streaming at once in this process (`THREADKEEPER_MAX_STREAMS`); more wait in the queue."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Limits:
        environ = os.environ if environ is None else environ
        return cls(
            per_user=_positive(environ, "THREADKEEPER_TURNS_PER_USER", TURNS_PER_USER),
            streams=_positive(environ, "THREADKEEPER_MAX_STREAMS", MAX_STREAMS),
        )


@dataclass(frozen=True)
class Words:
    """Words of the model's reply as they stream; `step` changes when a new model step starts."""

    text: str
    step: Any


@dataclass(frozen=True)
class ToolResult:
    message: ToolMessage


def reply_part(chunk: BaseMessage, meta: dict) -> Words | ToolResult | None:
    """What one streamed (message chunk, metadata) pair shows a person, if anything:
    the model node's words and the tools node's results; the rest (the trimming
    node's bookkeeping, tool-call argument chunks) is not shown."""
    node = meta.get("langgraph_node")
    if node == "model" and isinstance(chunk.content, str) and chunk.content:
        return Words(chunk.content, meta.get("langgraph_step"))
    if node == "tools" and isinstance(chunk, ToolMessage):
        return ToolResult(chunk)
    return None


class Turns:
    """The turn logic over one store and one compiled graph: who may write to a
    thread, sending, stopping, retrying, regenerating and editing."""

    def __init__(self, saver: ThreadSaver, graph: Any, limits: Limits | None = None) -> None:
        self.saver = saver
        self.graph = graph
        self.limits = limits or Limits.from_env()
        self._in_flight: Counter[str] = Counter()

    # -- whose thread ------------------------------------------------------------

    @staticmethod
    def config(thread_id: str, user_id: str | None) -> dict:
        configurable = {"thread_id": thread_id}
        if user_id is not None:
            configurable["user_id"] = user_id
        return {"configurable": configurable}

    @staticmethod
    def input(text: str | None) -> dict | None:
        """The graph's input for a message, or for a retry (None: run the pending step)."""
        return None if text is None else {"messages": [HumanMessage(text)]}

    def owned(self, thread_id: str | None, user_id: str | None) -> str:
        """The thread id if the thread is the caller's; `TurnRefused` otherwise."""
        if not thread_id:
            raise TurnRefused("Open or start a thread first.")
        try:
            self.saver.threads.get(thread_id, user_id=user_id)
        except ThreadNotFoundError:
            raise TurnRefused(NOT_FOUND) from None
        return thread_id

    def claimable(self, thread_id: str, user_id: str | None) -> bool:
        """True if the caller may write to this id: theirs, or not taken by anyone."""
        try:
            self.saver.threads.get(thread_id, user_id=user_id)
            return True
        except ThreadNotFoundError:
            try:
                self.saver.threads.get(thread_id)
            except ThreadNotFoundError:
                return True
            return False

    def claim(self, thread_id: str | None, user_id: str | None) -> str:
        """The thread a message goes to: `thread_id` if the caller may write to it, a new id if None."""
        if thread_id is None:
            return str(uuid.uuid4())
        if not self.claimable(thread_id, user_id):
            raise TurnRefused(NOT_FOUND)
        return thread_id

    # -- what a thread holds -------------------------------------------------------

    def messages(self, thread_id: str, user_id: str | None) -> list[BaseMessage]:
        return self.graph.get_state(self.config(thread_id, user_id)).values.get("messages", [])

    def unfinished(self, thread_id: str, user_id: str | None) -> bool:
        """Whether the thread's last turn has no reply yet: the model's step is next, or (a
        process killed between a step's result and its checkpoint) the newest stored
        message still has no reply."""
        state = self.graph.get_state(self.config(thread_id, user_id))
        try:
            newest = self.saver.read_messages(thread_id, user_id=user_id, limit=1).messages
        except ThreadNotFoundError:  # nothing stored yet (or not the caller's): nothing unfinished
            return False
        return bool(state.next) or bool(newest and isinstance(newest[-1], HumanMessage))

    def check_retry(self, thread_id: str, user_id: str | None) -> None:
        """Refuse a retry when the last message was answered (nothing would be resent)."""
        if not self.unfinished(thread_id, user_id):
            raise TurnRefused("There is nothing to retry: the last message was answered.")

    def _drop_from(self, thread_id: str, user_id: str | None, messages: list[BaseMessage], index: int) -> None:
        removed = [RemoveMessage(id=m.id) for m in messages[index:]]
        self.graph.update_state(self.config(thread_id, user_id), {"messages": removed}, as_node="model")

    def drop_last_turn(self, thread_id: str, user_id: str | None) -> str | None:
        """Remove the newest message of mine and everything after it; returns its text (None if I sent none)."""
        messages = self.messages(thread_id, user_id)
        last = max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=None)
        if last is None:
            return None
        self._drop_from(thread_id, user_id, messages, last)
        return message_text(messages[last])

    def regenerate(self, thread_id: str, user_id: str | None) -> str:
        """Take back the last reply: returns the message to answer anew (send it again)."""
        text = self.drop_last_turn(thread_id, user_id)
        if text is None:
            raise TurnRefused("There is no reply to regenerate yet.")
        return text

    def edit(self, thread_id: str, user_id: str | None, mine: int, text: str, *, start: int = 0) -> None:
        """Replace my `mine`-th message counted from message `start` (and all after it) by
        `text`, which is then sent as usual.

        The later turns are replaced, not kept as a branch: a thread stays one line of
        conversation, which is what every door (the CLI, the LangGraph API, exports)
        reads; Regenerate and editing are the two ways to take a different path."""
        text = text.strip()
        if not text:
            raise TurnRefused("An edited message needs some words; it was left as it was.")
        check_message(text)
        messages = self.messages(thread_id, user_id)
        humans = [i for i, m in enumerate(messages) if isinstance(m, HumanMessage) and i >= start]
        if not 0 <= mine < len(humans):
            raise TurnRefused("That message is no longer in this thread; open the thread again.")
        self._drop_from(thread_id, user_id, messages, humans[mine])

    # -- a reply ---------------------------------------------------------------

    @property
    def streaming(self) -> int:
        """Replies in flight in this process, everyone's."""
        return sum(self._in_flight.values())

    def replying(self, user_id: str) -> bool:
        """Whether a reply of this person's is streaming now."""
        return self._in_flight[user_id] > 0

    def busy(self, user_id: str) -> bool:
        """Whether one more turn of this person's would be refused by `slot`."""
        return self._in_flight[user_id] >= self.limits.per_user

    @contextlib.contextmanager
    def slot(self, user_id: str) -> Iterator[None]:
        """Hold one of the person's `Limits.per_user` turns in flight for a reply."""
        if self.busy(user_id):
            n = self.limits.per_user
            log.warning("turn refused: user has %d replies in flight", n)
            raise TurnRefused(f"You have {n} {'reply' if n == 1 else 'replies'} on the way already; wait for one to finish.")
        self._in_flight[user_id] += 1
        try:
            yield
        finally:
            self._in_flight[user_id] -= 1
            if not self._in_flight[user_id]:
                del self._in_flight[user_id]

    async def reply(self, turn_input: dict | None, config: dict) -> AsyncIterator[Words | ToolResult]:
        """Run the turn and yield what it shows as it streams (the graph's async stream:
        waiting for the model holds no thread).

        Closing or cancelling this stops the model's request at once. A stopped reply
        keeps what was shown of the model's current step, marked `STOPPED`, after the
        person's message, which the graph saved before the model started: the thread
        holds what the person saw, and the next message carries on from it. Nothing of
        the reply is kept if the stop came before its first word."""
        shown = ""
        step: Any = None
        try:
            async with contextlib.aclosing(self.graph.astream(turn_input, config, stream_mode="messages")) as stream:
                async for chunk, meta in stream:
                    part = reply_part(chunk, meta)
                    if isinstance(part, Words):
                        if part.step != step:
                            step, shown = part.step, ""
                        shown += part.text
                    if part is not None:
                        yield part
        except (asyncio.CancelledError, GeneratorExit):
            await self._keep_stopped(config, shown)
            raise

    def reply_sync(self, turn_input: dict | None, config: dict) -> Iterator[Words | ToolResult]:
        """`reply` for callers without an event loop (the CLI, scripts); runs to the end."""
        for chunk, meta in self.graph.stream(turn_input, config, stream_mode="messages"):
            part = reply_part(chunk, meta)
            if part is not None:
                yield part

    async def _keep_stopped(self, config: dict, shown: str) -> None:
        thread_id = config["configurable"]["thread_id"]
        try:
            messages = (await self.graph.aget_state(config)).values.get("messages", [])
            if shown and messages and not isinstance(messages[-1], AIMessage):  # the model's step had not finished
                stopped = AIMessage(shown, response_metadata={STOPPED: True})
                await self.graph.aupdate_state(config, {"messages": [stopped]}, as_node="model")
        except StoreError as exc:  # the stop itself goes on; the person's message is kept all the same
            log.warning("a stopped reply in thread %s was not kept: %s", thread_id, exc)
