"""`ThreadChatHistory`: a LangChain chat message history kept in a thread.

    from langchain_core.runnables.history import RunnableWithMessageHistory
    from checkpointers import ThreadChatHistory

    chain_with_history = RunnableWithMessageHistory(
        prompt | model,
        lambda session_id: ThreadChatHistory(session_id, user_id="alice"),
        input_messages_key="question",
        history_messages_key="chat_history",
    )

Each session is a thread: the messages are written as LangGraph checkpoints
(see `checkpointers.conversation`), so the chat graph, the web chat and
`saver.sessions` see the same conversation, and the thread shows in its
user's thread list with a title taken from the first human message.

Pass `saver=` to use a saver the application already has open (the usual
case in a server). Otherwise the history opens the store at `url` (default
`$THREADKEEPER_DATABASE_URL`, then `sqlite:///data/threadkeeper.db`; a
`postgresql://` URL works the same) on first use and keeps it open for the
rest of the process, one saver per file or database URL, shared by every
history on it; `close_shared_savers()` closes them (it also
runs at exit), and a history used afterwards opens its file again.

Ownership: a history's `user_id` must own the thread. A thread of another
user reads as empty, `clear()` leaves it alone, and adding messages to it
raises ThreadNotFoundError. `user_id=None` means threads without an owner.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import BaseMessage

from checkpointers import conversation

if TYPE_CHECKING:
    from checkpointers.engines.sqlite.saver import ThreadSaver

_shared: dict[tuple[int, Path | str], tuple[ThreadSaver, ExitStack]] = {}
_shared_lock = threading.Lock()
_close_registered = False


def shared_saver(url: str | None = None) -> ThreadSaver:
    """The process's saver for the store at `url`, opened with `open_saver` on first use."""
    global _close_registered
    from checkpointers import open_saver
    from checkpointers.url import is_postgres, resolve_url, sqlite_path

    resolved = resolve_url(url)
    # A connection must not cross a fork: a child process opens its own.
    key = (os.getpid(), resolved if is_postgres(resolved) else sqlite_path(resolved).resolve())
    with _shared_lock:
        found = _shared.get(key)
        if found is not None:
            return found[0]
        stack = ExitStack()
        saver = stack.enter_context(open_saver(resolved))
        _shared[key] = (saver, stack)
        if not _close_registered:
            atexit.register(close_shared_savers)
            _close_registered = True
        return saver


def close_shared_savers() -> None:
    """Close every saver `ThreadChatHistory` opened from a URL in this process."""
    with _shared_lock:
        opened = [entry for key, entry in _shared.items() if key[0] == os.getpid()]
        _shared.clear()
    for _saver, stack in opened:
        stack.close()


class ThreadChatHistory(BaseChatMessageHistory):
    """The messages of one thread (`session_id`), owned by `user_id`.

    `messages` is the thread's whole conversation, oldest first (the message
    objects are shared with the saver's cache: copy one before changing it).
    `add_messages` appends (a message whose id the thread already has replaces
    it, as in LangGraph's `add_messages`), in one checkpoint per call.
    `clear()` deletes the thread: its messages, history, title and attachment
    are erased (not just hidden behind a newer checkpoint), and the session
    starts afresh with its next message. Async twins (`aget_messages`,
    `aadd_messages`, `aclear`) are native asyncio on PostgreSQL and run on a
    worker thread on SQLite.
    """

    def __init__(
        self,
        session_id: str,
        *,
        user_id: str | None = None,
        url: str | None = None,
        saver: ThreadSaver | None = None,
    ) -> None:
        if saver is not None and url is not None:
            raise ValueError("pass either url or saver to ThreadChatHistory, not both")
        if session_id is None or not str(session_id).strip():
            raise ValueError("ThreadChatHistory needs a session id")
        self.session_id = str(session_id)
        self.user_id = user_id
        self._url = url
        self._saver = saver

    @property
    def saver(self) -> ThreadSaver:
        return self._saver if self._saver is not None else shared_saver(self._url)

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        found = self.saver.load_conversation(self.session_id, self.user_id)
        return [] if found is None else list(found.messages)

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        conversation.write(self.saver, self.session_id, list(messages), user_id=self.user_id)

    def clear(self) -> None:
        conversation.delete(self.saver, self.session_id, user_id=self.user_id)

    async def aget_messages(self) -> list[BaseMessage]:
        found = await self.saver.aload_conversation(self.session_id, self.user_id)
        return [] if found is None else list(found.messages)

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        await conversation.awrite(self.saver, self.session_id, list(messages), user_id=self.user_id)

    async def aclear(self) -> None:
        await conversation.adelete(self.saver, self.session_id, user_id=self.user_id)

    def __repr__(self) -> str:
        return f"ThreadChatHistory({self.session_id!r}, user_id={self.user_id!r})"
