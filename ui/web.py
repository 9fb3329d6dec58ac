"""The web chat: every visitor lists, opens and resumes their own threads.

    threadkeeper serve                 # http://127.0.0.1:7860
    threadkeeper serve --host 0.0.0.0 --port 8080

Every handler works out the caller's user id on the server (`ui.identity`) and
asks the store with it, so a thread id that is not the caller's behaves as one
that does not exist, whether it comes from the page or a crafted API request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder, is_in_or_equal
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, RemoveMessage, ToolMessage

from checkpointers import (
    ANY_USER,
    AttachmentError,
    StoreError,
    ThreadNotFoundError,
    ThreadSaver,
)
from checkpointers.retention import delete_user
from checkpointers.storable import check_text
from checkpointers.threads import message_text, title_from_messages
from graph import ModelError, Settings, build_graph
from graph.model import OfflineChatModel
from ui import metrics
from ui.identity import Identity, IdentityError, load_secret, load_users

log = logging.getLogger("threadkeeper.web")

PAGE_SIZE = 50
LIST_SIZE = 30
MAX_QUERY_CHARS = 200
MAX_MESSAGE_CHARS = 100_000
NOT_FOUND = "That thread does not exist (or is not yours)."
STOPPED = "stopped"
"""`response_metadata` key of a reply the person stopped: it holds what was shown until then."""
STOPPED_MARK = "\n\n*Stopped*"
MODEL_TROUBLE = {
    "timeout": "not answering (the last reply timed out)",
    "unreachable": "unreachable (the last reply could not connect)",
    "rate_limit": "rate-limiting requests",
    "auth": "refusing the API key",
    "not_found": "unaware of this model name",
    "server_error": "failing (the last reply got a server error)",
}
"""What the banner says while the model's last reply failed, by `ModelError.reason`."""
EXPORT_KEEP_S = 600
"""Default seconds an export stays downloadable (`THREADKEEPER_EXPORT_KEEP_S`)."""


def export_keep_s(environ: dict[str, str] | None = None) -> int:
    """How long exports are kept, from `THREADKEEPER_EXPORT_KEEP_S`; one clear error if it is not a positive integer."""
    raw = (os.environ if environ is None else environ).get("THREADKEEPER_EXPORT_KEEP_S", str(EXPORT_KEEP_S))
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"THREADKEEPER_EXPORT_KEEP_S must be a whole number of seconds, at least 1, not {raw!r}")
    return value

# Send turns into Stop while a reply streams (see CSS): the page's class says which shows.
SHOW_STOP = "() => { document.body.classList.add('replying'); }"
SHOW_SEND = "() => { document.body.classList.remove('replying'); }"

# Every thread has its address, `?thread=ID`: reload reopens it, Back and Forward go
# between threads, a link opens it for its owner. The page's address is the browser's,
# so these run there: READ_ADDRESS hands the address's thread to `open_address` (in place
# of the hidden `address` box's value), SHOW_ADDRESS puts the open thread in the address.
READ_ADDRESS = "(link, ...rest) => [new URLSearchParams(location.search).get('thread') || '', ...rest]"
SHOW_ADDRESS = """
(id) => {
  const url = new URL(location.href);
  if (id) url.searchParams.set('thread', id); else url.searchParams.delete('thread');
  if (url.href !== location.href) history.pushState(null, '', url);
}
"""

# On a phone the open sidebar covers the chat: start with it closed there, and
# close it again once a thread is picked.
CLOSE_SIDEBAR_ON_PHONE = """
(...args) => {
  if (window.innerWidth < 700) {
    const button = document.querySelector('#sidebar.open .toggle-button');
    if (button) button.click();
  }
  return args;
}
"""
ON_PAGE_LOAD = """
() => {
  window.addEventListener('popstate', () => document.querySelector('#open-address')?.click());
  if (window.innerWidth >= 700) return;
  let tries = 0;
  const close = () => {
    const button = document.querySelector('#sidebar.open .toggle-button');
    if (button) button.click(); else if (tries++ < 50) setTimeout(close, 100);
  };
  close();
}
"""

CSS = """
#banner { padding: 6px 12px; border-radius: 8px; }
#banner.warning { background: #fff4e5; }
#thread-list label { width: 100%; }
#thread-header { align-items: center; }
#chat { flex-grow: 1; }
/* The chat's own toolbar holds only Gradio's "clear" (trash) button, which blanks the
   screen but deletes nothing; deleting a thread is a thread action. */
#chat .icon-button-wrapper.top-panel { display: none !important; }
.hidden-control { display: none !important; }
body:not(.replying) #stop, body.replying #send { display: none !important; }
@media (max-width: 640px) {
  /* The message box and Send stay on screen under the longest banner (offline) and title. */
  #chat { height: 45vh !important; }
  #banner p { font-size: 12px !important; line-height: 1.35 !important; }
  #thread-title h3 { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
  #thread-header { flex-direction: column !important; align-items: stretch !important; gap: 4px !important; }
}
"""


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


class Refusal(gr.Error):
    """Something a person asked for that is not done, in one sentence: nothing to
    retry, a file that is not a database, a thread that is not theirs.

    A handler raises it; a caller in Python gets it as the `gr.Error` it is. On
    the page (`on_page`) it becomes a warning toast and leaves every component
    as it was: a raised `gr.Error` would mark every output of the event as
    failed, an "Error" badge on each, in Gradio 6."""

    def __init__(self, message: str) -> None:
        super().__init__(message, print_exception=False)


def check_message(text: str) -> None:
    """Refuse a message the chat does not send: too long, or text the store cannot keep."""
    if len(text) > MAX_MESSAGE_CHARS:
        raise Refusal(f"That message is {len(text):,} characters; the limit is {MAX_MESSAGE_CHARS:,}.")
    check_text(text)


def user_errors(handler):
    """A handler whose store and input errors (a `StoreError` or `ValueError` with one
    sentence) are refusals: `Refusal`, never a traceback."""

    @functools.wraps(handler)
    def wrapped(*args: Any, **kwargs: Any):
        try:
            return handler(*args, **kwargs)
        except gr.Error:  # a Refusal, or who the caller is could not be told; a ValueError too
            raise
        except ThreadNotFoundError as exc:
            raise Refusal(NOT_FOUND) from exc
        except (StoreError, ValueError) as exc:
            raise Refusal(str(exc)) from exc

    return wrapped


def on_page(handler, refused: Any = None):
    """`handler` as an event of the page: a `Refusal` becomes a warning toast and one
    line in the operator's log, and the event's outputs get `refused` (by default
    `gr.skip()`: every output stays as it was). A handler that streams (an async
    generator) yields `refused` once instead."""
    refused = gr.skip() if refused is None else refused

    def tell(exc: Refusal) -> None:
        cause = exc.__cause__
        detail = f" ({type(cause).__name__})" if cause is not None else ""
        log.warning("%s refused%s: %s", handler.__name__, detail, exc.message)
        gr.Warning(exc.message)

    if inspect.isasyncgenfunction(handler):

        @functools.wraps(handler)
        async def streamed(*args: Any, **kwargs: Any):
            try:
                async with contextlib.aclosing(handler(*args, **kwargs)) as stream:
                    async for value in stream:
                        yield value
            except Refusal as exc:
                tell(exc)
                yield refused

        return streamed

    @functools.wraps(handler)
    def answered(*args: Any, **kwargs: Any):
        try:
            return handler(*args, **kwargs)
        except Refusal as exc:
            tell(exc)
            return refused

    return answered


def error_bubble(text: str) -> dict:
    return {"role": "assistant", "content": text, "metadata": {"title": "⚠ Not answered"}}


class StreamedReply:
    """The chat as a turn streams into it: the model's words into the reply's bubble,
    tool calls' results folded in before it."""

    def __init__(self, chat: list | None) -> None:
        self.chat = [*(chat or []), {"role": "assistant", "content": ""}]
        self.at = len(self.chat) - 1
        self.step: Any = None
        self.step_text = ""
        """The words of the model's current step: what a stopped reply keeps (earlier steps are stored)."""

    @property
    def text(self) -> str:
        return self.chat[self.at]["content"]

    def add(self, chunk: BaseMessage, meta: dict) -> bool:
        """Take one streamed (message chunk, metadata) pair; True if the chat changed."""
        node = meta.get("langgraph_node")
        if node == "model" and isinstance(chunk.content, str) and chunk.content:
            if meta.get("langgraph_step") != self.step:
                self.step, self.step_text = meta.get("langgraph_step"), ""
            self.chat[self.at]["content"] += chunk.content
            self.step_text += chunk.content
            return True
        if node == "tools" and isinstance(chunk, ToolMessage):
            self.chat[self.at : self.at] = to_chat([chunk])
            self.at += 1
            return True
        return False

    def failed(self, sentence: str) -> list:
        self.chat[self.at] = error_bubble(sentence)
        return self.chat


class WebChat:
    """The Gradio app over one store and one compiled graph."""

    def __init__(self, saver: ThreadSaver, *, settings: Settings | None = None, model: Any = None, identity: Identity | None = None) -> None:
        self.saver = saver
        self.settings = settings or Settings.from_env()
        if model is None and not self.settings.model_connected:
            model = OfflineChatModel(setup_hint=False)  # the banner says how to connect one, once
        self.graph = build_graph(checkpointer=saver, model=model, settings=self.settings)
        self.model_trouble: str | None = None
        """`ModelError.reason` of the last reply if it failed: the banner says so until one succeeds."""
        self.identity = identity or Identity(load_secret(saver.path.parent), load_users())
        self.exports = Path(tempfile.mkdtemp(prefix="threadkeeper-export-"))
        # Gone with the app (or the process): a server's exports never pile up in /tmp.
        weakref.finalize(self, shutil.rmtree, self.exports, ignore_errors=True)
        self.export_keep_s = export_keep_s()
        self.export_check_s = max(1, min(60, self.export_keep_s // 2))
        """How often Gradio's cache and `exports` are looked through for exports to delete."""
        self._pruner: threading.Thread | None = None

    # -- identity and ownership ---------------------------------------------

    def user(self, token: str | None, request: gr.Request | None) -> str:
        try:
            return self.identity.user_of(token, getattr(request, "username", None))
        except IdentityError as exc:
            # Not a person's mistake: the page always holds its identity before it sends
            # anything, so this is a forged or stale request, and the event fails as a whole.
            log.warning("request refused: %s", exc)
            raise gr.Error(str(exc), print_exception=False) from None

    def owned(self, thread_id: str | None, user_id: str) -> str:
        """The thread id if it is the caller's; `Refusal` otherwise."""
        if not thread_id:
            raise Refusal("Open or start a thread first.")
        try:
            self.saver.threads.get(thread_id, user_id=user_id)
        except ThreadNotFoundError:
            raise Refusal(NOT_FOUND) from None
        return thread_id

    def claimable(self, thread_id: str, user_id: str) -> bool:
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

    def config(self, thread_id: str, user_id: str) -> dict:
        return {"configurable": {"thread_id": thread_id, "user_id": user_id}}

    def banner(self, **props: Any) -> Any:
        """Which model answers; or that none is connected, and how to connect one; or that
        the connected one failed the last reply (until a reply succeeds)."""
        model = self.settings.describe_model()
        if not self.settings.model_connected:
            return gr.Markdown(f"⚠ {model}", elem_classes=["warning"], **props)
        if self.model_trouble:
            trouble = MODEL_TROUBLE.get(self.model_trouble, "not answering")
            return gr.Markdown(f"⚠ {model}: {trouble}", elem_classes=["warning"], **props)
        return gr.Markdown(f"● {model}", elem_classes=[], **props)

    # -- the sidebar ----------------------------------------------------------

    def thread_choices(self, user_id: str, limit: int, query: str = "") -> tuple[list[tuple[str, str]], bool]:
        query = " ".join((query or "").split())[:MAX_QUERY_CHARS]
        if query:
            # Titles and message text, through the store's full-text index.
            page = self.saver.threads.search(user_id, query, limit=min(limit, 500))
            threads = page.threads
        else:
            pinned = self.saver.threads.list(user_id, limit=100, pinned=True).threads
            page = self.saver.threads.list(user_id, limit=min(limit, 500), pinned=False)
            threads = pinned + page.threads
        choices = [(f"{'★ ' if t.pinned else ''}{t.title or 'New chat'} · {ago(t.updated_at)}", t.thread_id) for t in threads]
        return choices, page.next_cursor is not None

    def sidebar(self, user_id: str, limit: int, selected: str | None, query: str = "") -> tuple[Any, Any]:
        choices, more = self.thread_choices(user_id, limit, query)
        value = selected if selected in {v for _, v in choices} else None
        query = " ".join((query or "").split())[:MAX_QUERY_CHARS]
        empty = None if choices else (f"No threads match “{query}”" if query else "No threads yet")
        # The list has no frame; when it is empty its label, in a frame, says why.
        radio = gr.Radio(
            choices=choices, value=value, label=empty or "Threads", show_label=empty is not None, container=empty is not None
        )
        return radio, gr.Button(visible=more)

    def header(self, thread_id: str | None, user_id: str) -> tuple[str, str, Any]:
        if not thread_id:
            return "### New chat", "", gr.Button(visible=False)
        try:
            info = self.saver.threads.get(thread_id, user_id=user_id)
        except ThreadNotFoundError:
            return "### New chat", "", gr.Button(visible=False)
        attached = self.saver.attachments.get(thread_id)
        note = (
            f"Database **{attached.name}** attached · tables: {', '.join(attached.tables) or 'none'}"
            if attached
            else "No database attached"
        )
        pin = "★ " if info.pinned else ""
        return f"### {pin}{info.title or 'New chat'}", note, gr.Button(visible=attached is not None)

    # -- handlers ---------------------------------------------------------------

    @user_errors
    def on_load(self, token: str | None, request: gr.Request):
        if not self.identity.sign_in:
            try:
                self.identity.user_of(token, None)
            except IdentityError:
                token = self.identity.new_token()
        user_id = self.user(token, request)
        radio, more = self.sidebar(user_id, LIST_SIZE, None)
        who = f"Signed in as **{user_id}**" if self.identity.sign_in else "Anonymous: your threads are kept for this browser."
        return token, radio, more, who, *self.open_view(None, user_id), self.banner()

    def open_view(self, thread_id: str | None, user_id: str) -> tuple:
        """(thread, chat, earlier button, start, title, attachment note, remove button)."""
        if not thread_id:
            return None, [], gr.Button(visible=False), 0, *self.header(None, user_id)
        page = self.saver.read_messages(thread_id, user_id=user_id, limit=PAGE_SIZE)
        earlier = gr.Button(f"Load earlier messages ({page.start} more)", visible=page.start > 0)
        return thread_id, to_chat(page.messages), earlier, page.start, *self.header(thread_id, user_id)

    @user_errors
    def open_thread(self, thread_id: str | None, token: str | None, request: gr.Request):
        user_id = self.user(token, request)
        try:
            return self.open_view(self.owned(thread_id, user_id), user_id)
        except ThreadNotFoundError:
            raise Refusal(NOT_FOUND) from None

    @user_errors
    def open_address(self, thread_id: str | None, token: str | None, limit: int, request: gr.Request):
        """The thread the page's address names (`?thread=ID`), for its owner (anyone else is
        told it does not exist), with the list showing it; a new chat if it names none."""
        user_id = self.user(token, request)
        thread_id = self.owned(str(thread_id), user_id) if thread_id else None
        radio, more = self.sidebar(user_id, int(limit or LIST_SIZE), thread_id)
        return radio, more, *self.open_view(thread_id, user_id)

    @user_errors
    def address(self, thread_id: str | None, token: str | None, request: gr.Request):
        """The open thread's id for the page's address, once it is stored as the caller's
        ("" for a new chat; unchanged while a new thread's first turn is still on its way)."""
        user_id = self.user(token, request)
        if not thread_id:
            return ""
        try:
            self.saver.threads.get(thread_id, user_id=user_id)
        except ThreadNotFoundError:
            return gr.skip()
        return thread_id

    @user_errors
    def load_earlier(self, thread_id: str | None, start: int, chat: list, token: str | None, request: gr.Request):
        user_id = self.user(token, request)
        thread_id = self.owned(thread_id, user_id)
        page = self.saver.read_messages(thread_id, user_id=user_id, limit=PAGE_SIZE, before=int(start or 0))
        earlier = gr.Button(f"Load earlier messages ({page.start} more)", visible=page.start > 0)
        return to_chat(page.messages) + list(chat or []), earlier, page.start

    @user_errors
    def new_chat(self, token: str | None, limit: int, request: gr.Request):
        user_id = self.user(token, request)
        radio, more = self.sidebar(user_id, limit, None)
        return radio, more, *self.open_view(None, user_id)

    @user_errors
    def more_threads(self, token: str | None, limit: int, selected: str | None, query: str, request: gr.Request):
        user_id = self.user(token, request)
        limit = int(limit or LIST_SIZE) + LIST_SIZE
        radio, more = self.sidebar(user_id, limit, selected, query)
        return limit, radio, more

    @user_errors
    def search(self, query: str, token: str | None, limit: int, selected: str | None, request: gr.Request):
        user_id = self.user(token, request)
        return self.sidebar(user_id, int(limit or LIST_SIZE), selected, query)

    @user_errors
    def accept(self, text: str, thread_id: str | None, chat: list, editing: bool, token: str | None, request: gr.Request):
        """Check the message and show it at once; the reply streams in `respond`."""
        user_id = self.user(token, request)
        text = (text or "").strip()
        if not text:  # Send on an empty box sends nothing, and there is nothing to say about it
            return gr.skip(), thread_id, gr.skip(), None, gr.skip()
        check_message(text)
        if thread_id and not self.claimable(thread_id, user_id):
            raise Refusal(NOT_FOUND)
        thread_id = thread_id or str(uuid.uuid4())
        chat = list(chat or [])
        if editing:
            self._drop_last_turn(thread_id, user_id)
            chat = to_chat(self.saver.read_messages(thread_id, user_id=user_id, limit=PAGE_SIZE).messages)
        chat.append({"role": "user", "content": text})
        return "", thread_id, chat, {"text": text, "user": user_id}, False

    def _drop_last_turn(self, thread_id: str, user_id: str) -> str | None:
        """Remove the newest human message and everything after it; returns its text."""
        cfg = self.config(thread_id, user_id)
        messages = self.graph.get_state(cfg).values.get("messages", [])
        last = max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=None)
        if last is None:
            return None
        self._drop_from(cfg, messages, last)
        return message_text(messages[last])

    def _drop_from(self, cfg: dict, messages: list[BaseMessage], index: int) -> None:
        self.graph.update_state(cfg, {"messages": [RemoveMessage(id=m.id) for m in messages[index:]]}, as_node="model")

    @user_errors
    def title_now(self, pending: dict | None, thread_id: str | None, token: str | None, request: gr.Request):
        """The thread's title as soon as its first message is sent (the store sets the same
        one when it keeps the message), not after the reply."""
        user_id = self.user(token, request)
        if not pending or pending.get("user") != user_id or not thread_id or not self.claimable(thread_id, user_id):
            return gr.skip()
        try:
            if self.saver.threads.get(thread_id, user_id=user_id).title:
                return self.header(thread_id, user_id)[0]
        except ThreadNotFoundError:
            pass
        return f"### {title_from_messages([HumanMessage(pending['text'])]) or 'New chat'}"

    def _turn(self, pending: dict | None, thread_id: str | None, token: str | None, request: gr.Request | None) -> tuple[str, dict | None] | None:
        """(user id, the graph's input) of the turn `pending` asks for; None if there is none."""
        user_id = self.user(token, request)
        if not pending or not thread_id:
            return None
        # A private event, yet callable by anyone who names it (`fn_index`) with any
        # session: the turn must be this caller's, on a thread this caller may write.
        if pending.get("user") != user_id or not self.claimable(thread_id, user_id):
            raise Refusal(NOT_FOUND)
        return user_id, None if pending.get("retry") else {"messages": [HumanMessage(pending["text"])]}

    def respond(self, pending: dict | None, thread_id: str, chat: list, token: str | None, request: gr.Request) -> Iterator[list]:
        """Run the turn and stream the reply into the chat; errors become one line.

        For callers without an event loop (tests, scripts); the page runs `respond_live`."""
        turn = self._turn(pending, thread_id, token, request)
        if turn is None:
            return
        user_id, turn_input = turn
        reply = StreamedReply(chat)
        timer = metrics.turn(thread_id)  # ops: the turn's metrics (ui/metrics.py)
        try:
            for chunk, meta in self.graph.stream(turn_input, timer.config(self.config(thread_id, user_id)), stream_mode="messages"):
                if reply.add(chunk, meta):
                    yield reply.chat
            timer.answered()  # ops
        except (ModelError, StoreError) as exc:
            yield self._failed(reply, thread_id, exc)
            return
        finally:
            timer.end()  # ops
        yield self._answered(reply, thread_id, user_id)

    async def respond_live(self, pending: dict | None, thread_id: str, chat: list, token: str | None, request: gr.Request) -> AsyncIterator[list]:
        """`respond` for the page, on the graph's async stream: Stop cancels it, and with
        it the model's request, at once.

        A stopped reply keeps what was shown, marked as stopped (`STOPPED`), after the
        person's message, which the graph saved before the model started: the thread
        holds what the person saw, and the next message carries on from it. Nothing of
        the reply is kept if Stop came before its first word."""
        turn = self._turn(pending, thread_id, token, request)
        if turn is None:  # the first step was refused: leave the chat as it is (ending at once would empty it)
            yield gr.skip()
            return
        user_id, turn_input = turn
        config = self.config(thread_id, user_id)
        reply = StreamedReply(chat)
        timer = metrics.turn(thread_id)  # ops: the turn's metrics (ui/metrics.py)
        try:
            async with contextlib.aclosing(self.graph.astream(turn_input, timer.config(config), stream_mode="messages")) as stream:
                async for chunk, meta in stream:
                    if reply.add(chunk, meta):
                        yield reply.chat
            timer.answered()  # ops
        except (ModelError, StoreError) as exc:
            yield self._failed(reply, thread_id, exc)
            return
        except (asyncio.CancelledError, GeneratorExit):
            # Gradio cancels this task while it waits for the next chunk, or closes this
            # generator if Stop came between two; the graph's run is closed either way.
            await self._keep_stopped(config, reply.step_text)
            raise
        finally:
            timer.end()  # ops
        yield self._answered(reply, thread_id, user_id)

    async def _keep_stopped(self, config: dict, shown: str) -> None:
        thread_id = config["configurable"]["thread_id"]
        try:
            messages = (await self.graph.aget_state(config)).values.get("messages", [])
            if shown and messages and not isinstance(messages[-1], AIMessage):  # the model's step had not finished
                stopped = AIMessage(shown, response_metadata={STOPPED: True})
                await self.graph.aupdate_state(config, {"messages": [stopped]}, as_node="model")
        except StoreError as exc:  # the stop itself goes on; the person's message is kept all the same
            log.warning("a stopped reply in thread %s was not kept: %s", thread_id, exc)

    def _failed(self, reply: StreamedReply, thread_id: str, exc: Exception) -> list:
        log.warning("turn failed in thread %s: %r", thread_id, exc)
        metrics.turn_failed(thread_id, exc)  # ops
        if isinstance(exc, ModelError):
            self.model_trouble = exc.reason
        # A model error says how to retry; a store error left nothing of the turn to
        # retry (see ThreadSaver._write_thread) and says to send it again.
        return reply.failed(str(exc))

    def _answered(self, reply: StreamedReply, thread_id: str, user_id: str) -> list:
        self.model_trouble = None
        if reply.text:
            return reply.chat
        return to_chat(self.saver.read_messages(thread_id, user_id=user_id, limit=PAGE_SIZE).messages)

    def _unfinished(self, thread_id: str, user_id: str) -> bool:
        """Whether the thread's last turn has no reply yet: the model's step is next, or (a
        process killed between a step's result and its checkpoint) the newest stored
        message still has no reply."""
        state = self.graph.get_state(self.config(thread_id, user_id))
        newest = self.saver.read_messages(thread_id, user_id=user_id, limit=1).messages
        return bool(state.next) or bool(newest and isinstance(newest[-1], HumanMessage))

    @user_errors
    def again(self, thread_id: str | None, chat: list, token: str | None, request: gr.Request):
        """The retry icon on the last reply: resend a message that was not answered (after
        an error, without sending it twice), or else answer the last message anew."""
        user_id = self.user(token, request)
        if self._unfinished(self.owned(thread_id, user_id), user_id):
            return self.retry(thread_id, chat, token, request)
        return self.regenerate(thread_id, token, request)

    @user_errors
    def edit_message(self, thread_id: str | None, start: int, chat: list, token: str | None, request: gr.Request, edited: gr.EditData):
        """One of my messages, edited in the chat, is sent again from there.

        The later turns are replaced, not kept as a branch: a thread stays one line of
        conversation, which is what every door (the CLI, the LangGraph API, exports)
        reads; Regenerate and this are the two ways to take a different path."""
        user_id = self.user(token, request)
        thread_id = self.owned(thread_id, user_id)
        text = str(edited.value or "").strip()
        if not text:
            raise Refusal("An edited message needs some words; it was left as it was.")
        check_message(text)
        index = edited.index if isinstance(edited.index, int) else edited.index[0]
        chat = list(chat or [])[: max(0, int(index))]
        # The page shows the thread from message `start` on, one bubble per message of mine.
        mine = sum(1 for bubble in chat if bubble.get("role") == "user")
        cfg = self.config(thread_id, user_id)
        messages = self.graph.get_state(cfg).values.get("messages", [])
        humans = [i for i, m in enumerate(messages) if isinstance(m, HumanMessage) and i >= int(start or 0)]
        if mine >= len(humans):
            raise Refusal("That message is no longer in this thread; open the thread again.")
        self._drop_from(cfg, messages, humans[mine])
        return chat + [{"role": "user", "content": text}], {"text": text, "user": user_id}

    @user_errors
    def retry(self, thread_id: str | None, chat: list, token: str | None, request: gr.Request):
        user_id = self.user(token, request)
        thread_id = self.owned(thread_id, user_id)
        if not self._unfinished(thread_id, user_id):
            raise Refusal("There is nothing to retry: the last message was answered.")
        chat = [m for m in (chat or []) if (m.get("metadata") or {}).get("title") != "⚠ Not answered"]
        return chat, {"retry": True, "user": user_id}

    @user_errors
    def regenerate(self, thread_id: str | None, token: str | None, request: gr.Request):
        user_id = self.user(token, request)
        thread_id = self.owned(thread_id, user_id)
        text = self._drop_last_turn(thread_id, user_id)
        if text is None:
            raise Refusal("There is no reply to regenerate yet.")
        chat = to_chat(self.saver.read_messages(thread_id, user_id=user_id, limit=PAGE_SIZE).messages)
        return chat + [{"role": "user", "content": text}], {"text": text, "user": user_id}

    @user_errors
    def edit_last(self, thread_id: str | None, token: str | None, request: gr.Request):
        """My last message, to edit and send with `accept(editing=True)`. The page itself
        edits any message in place (`edit_message`); this stays for callers in Python."""
        user_id = self.user(token, request)
        thread_id = self.owned(thread_id, user_id)
        page = self.saver.read_messages(thread_id, user_id=user_id, limit=PAGE_SIZE)
        humans = [m for m in page.messages if isinstance(m, HumanMessage)]
        if not humans:
            raise Refusal("There is no message of yours to edit.")
        gr.Info("Edit your last message and press Send; the old one and its reply will be replaced.")
        return message_text(humans[-1]), True

    @user_errors
    def refresh(self, thread_id: str | None, token: str | None, limit: int, query: str, request: gr.Request, chat: list | None = None):
        """After a turn: the list, the header, the banner, and a stopped reply's mark."""
        user_id = self.user(token, request)
        radio, more = self.sidebar(user_id, int(limit or LIST_SIZE), thread_id, query)
        return radio, more, *self.header(thread_id, user_id), self.stopped_tail(thread_id, user_id, chat), self.banner()

    def stopped_tail(self, thread_id: str | None, user_id: str, chat: list | None) -> Any:
        """The chat with its last bubble as stored if the newest reply was stopped (what was
        shown, with its mark); `gr.skip()` otherwise."""
        try:
            newest = self.saver.read_messages(thread_id, user_id=user_id, limit=1).messages if thread_id and chat else []
        except ThreadNotFoundError:
            return gr.skip()
        if not (newest and isinstance(newest[-1], AIMessage) and newest[-1].response_metadata.get(STOPPED)):
            return gr.skip()
        return [*chat[:-1], *to_chat(newest)[-1:]]

    @user_errors
    def rename(self, title: str, thread_id: str | None, token: str | None, limit: int, request: gr.Request):
        user_id = self.user(token, request)
        thread_id = self.owned(thread_id, user_id)
        try:
            self.saver.threads.rename(thread_id, title, user_id=user_id)
        except ValueError as exc:
            raise Refusal(str(exc)) from None
        radio, more = self.sidebar(user_id, int(limit or LIST_SIZE), thread_id)
        return "", radio, more, *self.header(thread_id, user_id)

    @user_errors
    def toggle_pin(self, thread_id: str | None, token: str | None, limit: int, request: gr.Request):
        user_id = self.user(token, request)
        thread_id = self.owned(thread_id, user_id)
        info = self.saver.threads.get(thread_id, user_id=user_id)
        self.saver.threads.pin(thread_id, not info.pinned, user_id=user_id)
        radio, more = self.sidebar(user_id, int(limit or LIST_SIZE), thread_id)
        return radio, more, *self.header(thread_id, user_id)

    @user_errors
    def delete(self, thread_id: str | None, token: str | None, limit: int, request: gr.Request):
        user_id = self.user(token, request)
        thread_id = self.owned(thread_id, user_id)
        self.saver.delete_thread(thread_id)
        gr.Info("Thread deleted.")
        radio, more = self.sidebar(user_id, int(limit or LIST_SIZE), None)
        return radio, more, gr.Row(visible=False), *self.open_view(None, user_id)

    @user_errors
    def delete_everything(self, token: str | None, request: gr.Request):
        user_id = self.user(token, request)
        delete_user(self.saver, user_id)
        gr.Info("All your threads and attachments are deleted.")
        radio, more = self.sidebar(user_id, LIST_SIZE, None)
        return radio, more, gr.Row(visible=False), *self.open_view(None, user_id)

    def export(self, thread_id: str | None, fmt: str, token: str | None, request: gr.Request) -> str:
        user_id = self.user(token, request)
        thread_id = self.owned(thread_id, user_id)
        info = self.saver.threads.get(thread_id, user_id=user_id)
        state = self.saver.get_tuple({"configurable": {"thread_id": thread_id}})
        messages = (state.checkpoint["channel_values"].get("messages") if state else None) or []
        safe = "".join(c if c.isalnum() else "-" for c in (info.title or "thread"))[:40].strip("-") or "thread"
        path = self.exports / uuid.uuid4().hex / f"{safe}.{fmt}"
        path.parent.mkdir(parents=True)
        if fmt == "json":
            document = {
                "thread_id": thread_id,
                "title": info.title,
                "created_at": info.created_at,
                "updated_at": info.updated_at,
                "metadata": info.metadata,
                "messages": [m.model_dump(mode="json", exclude_none=True) for m in messages],
            }
            path.write_text(json.dumps(document, indent=2, ensure_ascii=False))
        else:
            lines = [f"# {info.title or 'Untitled thread'}", "", f"_{info.created_at[:19]} – {info.updated_at[:19]} UTC_", ""]
            for m in messages:
                who = {"human": "You", "ai": "Assistant", "tool": "Tool result"}.get(m.type, m.type)
                text = message_text(m)
                if isinstance(m, AIMessage) and m.tool_calls:
                    text += "".join(f"\n\n`{c['name']}({json.dumps(c['args'])})`" for c in m.tool_calls)
                lines += [f"**{who}:**", "", text, ""]
            path.write_text("\n".join(lines))
        return str(path)

    def prune_exports(self) -> int:
        """Remove this server's own copies of exports once Gradio has served them; returns how many.

        Gradio copies a returned file into its cache, and `blocks()` has it delete
        those copies `export_keep_s` seconds after they were made; ours are not
        needed after the copy (a minute at most, or `export_keep_s` if shorter)."""
        cutoff = time.time() - min(60, self.export_keep_s)
        removed = 0
        for folder in list(self.exports.iterdir()):
            try:
                if folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def _prune_exports_forever(self) -> None:
        while True:
            time.sleep(self.export_check_s)
            try:
                self.prune_exports()
            except OSError:
                log.exception("could not remove old exports from %s", self.exports)

    @user_errors
    def export_markdown(self, thread_id: str | None, token: str | None, request: gr.Request):
        return gr.File(self.export(thread_id, "md", token, request), visible=True)

    @user_errors
    def export_json(self, thread_id: str | None, token: str | None, request: gr.Request):
        return gr.File(self.export(thread_id, "json", token, request), visible=True)

    @user_errors
    def upload(self, file: str | None, thread_id: str | None, token: str | None, limit: int, request: gr.Request):
        user_id = self.user(token, request)
        if not file or not is_in_or_equal(str(file), get_upload_folder()):
            if file:  # a crafted request naming a file on the server
                log.warning("upload refused: %r is not an uploaded file", str(file)[:200])
            raise Refusal("No file arrived.")
        if thread_id and not self.claimable(thread_id, user_id):
            raise Refusal(NOT_FOUND)
        thread_id = thread_id or str(uuid.uuid4())
        name = Path(str(file)).name
        attached = self.saver.attachments.attach(thread_id, str(file), user_id=user_id, name=name)
        gr.Info(f"{attached.name} is attached; ask about its data.")
        radio, more = self.sidebar(user_id, int(limit or LIST_SIZE), thread_id)
        return thread_id, radio, more, *self.header(thread_id, user_id)

    @user_errors
    def detach(self, thread_id: str | None, token: str | None, request: gr.Request):
        user_id = self.user(token, request)
        thread_id = self.owned(thread_id, user_id)
        self.saver.attachments.remove(thread_id, user_id=user_id)
        gr.Info("The database is removed from this thread.")
        return self.header(thread_id, user_id)

    # -- layout -------------------------------------------------------------

    def blocks(self) -> gr.Blocks:
        # Exports leave the server after export_keep_s: a deleted or swept thread's
        # downloads do not outlive it by more than that (see README, Retention).
        with gr.Blocks(title="threadkeeper", delete_cache=(self.export_check_s, self.export_keep_s)) as demo:
            token = gr.BrowserState(None, storage_key="threadkeeper-identity", secret=self.identity.browser_secret)
            thread = gr.State(None)
            start = gr.State(0)
            limit = gr.State(LIST_SIZE)
            pending = gr.State(None)
            editing = gr.State(False)
            address = gr.Textbox(elem_id="address", elem_classes=["hidden-control"], show_label=False, container=False)
            open_address = gr.Button(elem_id="open-address", elem_classes=["hidden-control"])
            with gr.Sidebar(label="Threads", open=True, elem_id="sidebar"):
                who = gr.Markdown(elem_id="who")
                new = gr.Button("+ New chat", variant="primary", elem_id="new-chat")
                query = gr.Textbox(placeholder="Search threads", show_label=False, elem_id="search", max_lines=1)
                threads = gr.Radio(choices=[], show_label=False, elem_id="thread-list", container=False)
                more = gr.Button("More", visible=False, size="sm", elem_id="more")
                with gr.Accordion("This thread", open=False, elem_id="thread-actions"):
                    title_box = gr.Textbox(placeholder="New title", show_label=False, max_lines=1, elem_id="rename-box")
                    with gr.Row():
                        rename = gr.Button("Rename", size="sm", elem_id="rename")
                        pin = gr.Button("Pin / unpin", size="sm", elem_id="pin")
                    with gr.Row():
                        md = gr.Button("Export .md", size="sm", elem_id="export-md")
                        js = gr.Button("Export .json", size="sm", elem_id="export-json")
                    exported = gr.File(visible=False, show_label=False, elem_id="exported", interactive=False)
                    delete = gr.Button("Delete thread", size="sm", variant="stop", elem_id="delete")
                    with gr.Row(visible=False) as confirm_delete:
                        sure = gr.Button("Yes, delete it", size="sm", variant="stop", elem_id="delete-yes")
                        keep = gr.Button("Cancel", size="sm", elem_id="delete-no")
                with gr.Accordion("My data", open=False, elem_id="my-data"):
                    wipe = gr.Button("Delete all my data", size="sm", variant="stop", elem_id="wipe")
                    with gr.Row(visible=False) as confirm_wipe:
                        wipe_sure = gr.Button("Yes, delete everything", size="sm", variant="stop", elem_id="wipe-yes")
                        wipe_keep = gr.Button("Cancel", size="sm", elem_id="wipe-no")
            banner = self.banner(elem_id="banner")
            with gr.Row(elem_id="thread-header"):
                title = gr.Markdown("### New chat", elem_id="thread-title")
                attachment = gr.Markdown("", elem_id="attachment")
                # No `file_types`: Gradio's own check of them answers a wrong file with a red
                # "Error" and hides this button; `upload` says what it takes, as a warning.
                upload = gr.UploadButton("Attach database", size="sm", elem_id="upload")
                detach = gr.Button("Remove database", size="sm", visible=False, elem_id="detach")
            earlier = gr.Button("Load earlier messages", visible=False, size="sm", elem_id="earlier")
            # Actions sit on the message they concern: copy on each, edit on mine, and on the
            # last reply a retry icon (`again`: resend after an error, else regenerate).
            chat = gr.Chatbot(
                elem_id="chat", height=520, buttons=["copy"], show_label=False, render_markdown=True, editable="user"
            )
            with gr.Row():
                # Enabled once the page has its identity (see `demo.load` below).
                box = gr.Textbox(placeholder="Message", show_label=False, scale=8, elem_id="message", max_lines=8, interactive=False)
                send = gr.Button("Send", variant="primary", scale=1, elem_id="send", interactive=False)
                stop = gr.Button("Stop", variant="stop", scale=1, elem_id="stop")

            view = [thread, chat, earlier, start, title, attachment, detach]
            private = {"api_visibility": "private"}

            def address_follows(event: Any) -> None:
                """After `event`, a person's own move to another thread (or a new chat), the
                page's address names it: a new entry in the browser's history. Back and
                Forward move through those entries and add none."""
                event.then(on_page(self.address), [thread, token], [address], **private).then(
                    None, [address], None, js=SHOW_ADDRESS
                )

            # The chat box opens only after the identity is in the browser: a message sent
            # while the page still loads would reach the server without one and be refused.
            # Then the thread the address names opens (a reload, a link).
            demo.load(on_page(self.on_load), [token], [token, threads, more, who, *view, banner], **private).then(
                on_page(self.open_address), [address, token, limit], [threads, more, *view], js=READ_ADDRESS, **private
            ).then(lambda: (gr.Textbox(interactive=True), gr.Button(interactive=True)), None, [box, send], **private)
            # Back and Forward (see ON_PAGE_LOAD) open the thread of the address they reach;
            # after several quick ones, the last address wins.
            open_address.click(
                on_page(self.open_address), [address, token, limit], [threads, more, *view], js=READ_ADDRESS,
                trigger_mode="always_last", **private,
            )
            address_follows(threads.select(on_page(self.open_thread), [threads, token], view, api_name="open_thread", js=CLOSE_SIDEBAR_ON_PHONE))
            earlier.click(on_page(self.load_earlier), [thread, start, chat, token], [chat, earlier, start], api_name="load_earlier")
            address_follows(new.click(on_page(self.new_chat), [token, limit], [threads, more, *view], api_name="new_chat"))
            more.click(on_page(self.more_threads), [token, limit, thread, query], [limit, threads, more], api_name="more_threads")
            query.change(on_page(self.search), [query, token, limit, thread], [threads, more], api_name="search")

            # A turn: show the message (accept, edit_message, again), stream the reply
            # (respond_live, which Stop cancels), then bring the list, the header and the
            # banner up to date. A refused first step leaves no turn pending (None), so a
            # pending turn from before is never sent again.
            no_turn = {"accept": (gr.skip(), gr.skip(), gr.skip(), None, gr.skip()), "other": (gr.skip(), None)}
            reply = (on_page(self.respond_live), [pending, thread, chat, token], [chat])
            refresh = (on_page(self.refresh), [thread, token, limit, query, chat], [threads, more, title, attachment, detach, chat, banner])
            replies = []
            sent = gr.on(
                [send.click, box.submit], on_page(self.accept, no_turn["accept"]), [box, thread, chat, editing, token],
                [box, thread, chat, pending, editing], api_name="send",
            )
            sent.success(on_page(self.title_now), [pending, thread, token], [title], **private)
            for first in (
                sent,
                chat.edit(on_page(self.edit_message, no_turn["other"]), [thread, start, chat, token], [chat, pending], api_name="edit_message"),
                chat.retry(on_page(self.again, no_turn["other"]), [thread, chat, token], [chat, pending], api_name="again"),
            ):
                streaming = first.success(*reply, api_name="respond", **private)
                first.success(None, None, None, js=SHOW_STOP)
                address_follows(streaming.then(None, None, None, js=SHOW_SEND).then(*refresh, **private))  # a new thread is stored now
                replies.append(streaming)
            stop.click(None, None, None, cancels=replies)

            rename.click(on_page(self.rename), [title_box, thread, token, limit], [title_box, threads, more, title, attachment, detach], api_name="rename")
            pin.click(on_page(self.toggle_pin), [thread, token, limit], [threads, more, title, attachment, detach], api_name="pin")
            delete.click(lambda: gr.Row(visible=True), None, [confirm_delete], **private)
            keep.click(lambda: gr.Row(visible=False), None, [confirm_delete], **private)
            address_follows(sure.click(on_page(self.delete), [thread, token, limit], [threads, more, confirm_delete, *view], api_name="delete"))
            wipe.click(lambda: gr.Row(visible=True), None, [confirm_wipe], **private)
            wipe_keep.click(lambda: gr.Row(visible=False), None, [confirm_wipe], **private)
            address_follows(wipe_sure.click(on_page(self.delete_everything), [token], [threads, more, confirm_wipe, *view], api_name="delete_all"))
            md.click(on_page(self.export_markdown), [thread, token], [exported], api_name="export_md")
            js.click(on_page(self.export_json), [thread, token], [exported], api_name="export_json")
            address_follows(upload.upload(on_page(self.upload), [upload, thread, token, limit], [thread, threads, more, title, attachment, detach], api_name="upload"))
            detach.click(on_page(self.detach), [thread, token], [title, attachment, detach], api_name="detach")
        return demo

    def launch(self, host: str = "127.0.0.1", port: int = 7860, **kwargs: Any) -> Any:
        demo = self.blocks()
        if self._pruner is None:
            self._pruner = threading.Thread(target=self._prune_exports_forever, name="threadkeeper-exports", daemon=True)
            self._pruner.start()
        auth = self.identity.check_password if self.identity.sign_in else None
        return demo.queue(default_concurrency_limit=8).launch(
            server_name=host,
            server_port=port,
            auth=auth,
            css=CSS,
            max_file_size=f"{int(os.environ.get('THREADKEEPER_MAX_ATTACHMENT_MB', '50'))}mb",
            footer_links=[],
            run_history=False,
            js=ON_PAGE_LOAD,
            **kwargs,
        )
