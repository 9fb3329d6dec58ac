"""What each event of the web chat does. The turn itself (whose thread, send, stop,
retry, regenerate, edit) is `ui.turns`, shared with the CLI; these wire it to the
page's components, and the page (`ui.web.layout`) wires them to its events."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder, is_in_or_equal
from langchain_core.messages import AIMessage, HumanMessage

from checkpointers import StoreError, ThreadNotFoundError, ThreadSaver
from checkpointers.retention import delete_user
from checkpointers.search import words_of
from checkpointers.threads import message_text, title_from_messages
from graph import ModelError, Settings, build_graph
from graph.model import OfflineChatModel
from graph.summary import ThreadMemory, clear_summary, set_memory, summary_of
from ui import metrics
from ui.identity import Identity, IdentityError, load_secret, load_users
from ui.turns import NOT_FOUND, STOPPED, Limits, ToolResult, TurnRefused, Turns, check_message
from ui.web.events import Refusal, user_errors
from ui.web.exports import Exports
from ui.web.view import MODEL_TROUBLE, NOT_ANSWERED, StreamedReply, ago, holds_words, snippet, to_chat

log = logging.getLogger("threadkeeper.web")

PAGE_SIZE = 50
LIST_SIZE = 30
MAX_QUERY_CHARS = 200
SNIPPETS = 10
"""Search results that show the matching words of a message (the newest first)."""
SNIPPET_DEPTH = 100
"""How many of a thread's newest messages are looked through for a result's snippet."""
STREAM_UPDATE_S = 0.05
"""Least time between two updates of a streaming reply: 20 a second, smooth to the eye."""
STREAM_UPDATES_PER_S = 200
"""Updates a second the server sends across all streaming replies, once that asks for more than `STREAM_UPDATE_S`."""


class WebChat:
    """The Gradio app over one store and one compiled graph."""

    def __init__(
        self,
        saver: ThreadSaver,
        *,
        settings: Settings | None = None,
        model: Any = None,
        identity: Identity | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.saver = saver
        self.settings = settings or Settings.from_env()
        if model is None and not self.settings.model_connected:
            model = OfflineChatModel(setup_hint=False)  # the banner says how to connect one, once
        self.graph = build_graph(checkpointer=saver, model=model, settings=self.settings)
        self.turns = Turns(saver, self.graph, limits)
        self.model_trouble: str | None = None
        """`ModelError.reason` of the last reply if it failed: the banner says so until one succeeds."""
        self.identity = identity or Identity(load_secret(Path(saver.maintenance.data_dir)), load_users())
        self.exports = Exports()

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
        try:
            return self.turns.owned(thread_id, user_id)
        except TurnRefused as exc:
            raise Refusal(str(exc)) from None

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
        choices = []
        for n, t in enumerate(threads):
            label = f"{'★ ' if t.pinned else ''}{t.title or 'New chat'} · {ago(t.updated_at)}"
            excerpt = self.excerpt(t.thread_id, user_id, query) if query and n < SNIPPETS else ""
            choices.append((f"{label}\n{excerpt}" if excerpt else label, t.thread_id))
        return choices, page.next_cursor is not None

    def excerpt(self, thread_id: str, user_id: str, query: str) -> str:
        """The matching words in context, from the newest of the thread's last `SNIPPET_DEPTH`
        messages that holds every word of `query` ('' if the match is older, or the title's)."""
        words = words_of(query)
        if not words:
            return ""
        try:
            page = self.saver.read_messages(thread_id, user_id=user_id, limit=SNIPPET_DEPTH)
        except ThreadNotFoundError:
            return ""
        for message in reversed(page.messages):
            if isinstance(message, (HumanMessage, AIMessage)):
                text = message_text(message)
                if holds_words(text, words):
                    return snippet(text, words)
        return ""

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

    def header(self, thread_id: str | None, user_id: str) -> tuple[Any, ...]:
        """(title, attachment note, remove-database button, pin button, thread actions row)."""
        info = None
        if thread_id:
            try:
                info = self.saver.threads.get(thread_id, user_id=user_id)
            except ThreadNotFoundError:
                pass
        if info is None:  # a new chat: nothing stored yet to rename, pin, export or delete
            return "### New chat", "", gr.Button(visible=False), gr.Button("☆ Pin"), gr.Row(visible=False)
        attached = self.saver.attachments.get(thread_id)
        note = (
            f"Database **{attached.name}** attached · tables: {', '.join(attached.tables) or 'none'}"
            if attached
            else ""
        )
        pin = "★ " if info.pinned else ""
        return (
            f"### {pin}{info.title or 'New chat'}",
            note,
            gr.Button(visible=attached is not None),
            gr.Button("★ Pinned" if info.pinned else "☆ Pin"),
            gr.Row(visible=True),
        )

    # -- opening threads ---------------------------------------------------------

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
        """(thread, chat, earlier button, start, *header)."""
        if not thread_id:
            return None, [], gr.Button(visible=False), 0, *self.header(None, user_id)
        page = self.saver.read_messages(thread_id, user_id=user_id, limit=PAGE_SIZE)
        earlier = gr.Button(f"Load earlier messages ({page.start} more)", visible=page.start > 0)
        return thread_id, to_chat(page.messages), earlier, page.start, *self.header(thread_id, user_id)

    @user_errors
    def open_thread(self, thread_id: str | None, token: str | None, request: gr.Request):
        user_id = self.user(token, request)
        return self.open_view(self.owned(thread_id, user_id), user_id)

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

    # -- a turn -----------------------------------------------------------------

    @user_errors
    def accept(self, text: str, thread_id: str | None, chat: list, editing: bool, token: str | None, request: gr.Request):
        """Check the message and show it at once, with the thread's title (a new thread's
        is the one the store will give it); the reply streams in `respond`."""
        user_id = self.user(token, request)
        text = (text or "").strip()
        if not text:  # Send on an empty box sends nothing, and there is nothing to say about it
            return gr.skip(), thread_id, gr.skip(), None, gr.skip(), gr.skip()
        check_message(text)
        self._check_room(user_id)
        thread_id = self.turns.claim(thread_id or None, user_id)
        chat = list(chat or [])
        if editing:
            self.turns.drop_last_turn(thread_id, user_id)
            chat = to_chat(self.saver.read_messages(thread_id, user_id=user_id, limit=PAGE_SIZE).messages)
        chat.append({"role": "user", "content": text})
        return "", thread_id, chat, {"text": text, "user": user_id}, False, self._title(thread_id, user_id, text)

    def _check_room(self, user_id: str) -> None:
        """Refuse at once, before the message is shown, what `respond` would refuse for the per-person limit."""
        if self.turns.busy(user_id):
            with self.turns.slot(user_id):  # raises TurnRefused with the sentence, and logs it
                pass

    def _title(self, thread_id: str, user_id: str, text: str) -> str:
        """The thread's title as its first message is sent (the store sets the same one
        when it keeps the message), not after the reply."""
        try:
            if self.saver.threads.get(thread_id, user_id=user_id).title:
                return self.header(thread_id, user_id)[0]
        except ThreadNotFoundError:
            pass
        return f"### {title_from_messages([HumanMessage(text)]) or 'New chat'}"

    def _turn(self, pending: dict | None, thread_id: str | None, token: str | None, request: gr.Request | None) -> tuple[str, dict | None] | None:
        """(user id, the graph's input) of the turn `pending` asks for; None if there is none."""
        user_id = self.user(token, request)
        if not pending or not thread_id:
            return None
        # A private event, yet callable by anyone who names it (`fn_index`) with any
        # session: the turn must be this caller's, on a thread this caller may write.
        if pending.get("user") != user_id or not self.turns.claimable(thread_id, user_id):
            raise Refusal(NOT_FOUND)
        return user_id, self.turns.input(None if pending.get("retry") else pending["text"])

    def respond(self, pending: dict | None, thread_id: str, chat: list, token: str | None, request: gr.Request) -> Iterator[list]:
        """Run the turn and stream the reply into the chat; errors become one line.

        For callers without an event loop (tests, scripts); the page runs `respond_live`."""
        turn = self._turn(pending, thread_id, token, request)
        if turn is None:
            return
        user_id, turn_input = turn
        reply = StreamedReply(chat)
        timer = metrics.turn(thread_id)
        try:
            for part in self.turns.reply_sync(turn_input, timer.config(self.turns.config(thread_id, user_id))):
                yield reply.add(part)
            timer.answered()
        except (ModelError, StoreError) as exc:
            yield self._failed(reply, thread_id, exc)
            return
        finally:
            timer.end()
        yield self._answered(reply, thread_id, user_id)

    @user_errors
    async def respond_live(self, pending: dict | None, thread_id: str, chat: list, token: str | None, request: gr.Request) -> AsyncIterator[list]:
        """`respond` for the page, on the graph's async stream (`Turns.reply`): waiting for
        the model holds no thread, and Stop cancels it, and with it the model's request, at
        once; what was shown is kept, marked as stopped."""
        turn = self._turn(pending, thread_id, token, request)
        if turn is None:  # the first step was refused: leave the chat as it is (ending at once would empty it)
            yield gr.skip()
            return
        user_id, turn_input = turn
        reply = StreamedReply(chat)
        shown_at = 0.0
        with self.turns.slot(user_id):
            timer = metrics.turn(thread_id)
            try:
                async with contextlib.aclosing(self.turns.reply(turn_input, timer.config(self.turns.config(thread_id, user_id)))) as parts:
                    async for part in parts:
                        reply.add(part)
                        now = time.monotonic()
                        if now - shown_at >= self._update_every() or isinstance(part, ToolResult):
                            shown_at = now
                            yield reply.chat
                timer.answered()
            except (ModelError, StoreError) as exc:
                yield self._failed(reply, thread_id, exc)
                return
            finally:
                timer.end()
        yield self._answered(reply, thread_id, user_id)

    def _update_every(self) -> float:
        """Seconds between two updates of a streaming reply on the page. Each update costs
        the server about a millisecond of CPU in Gradio's queue whatever it holds (see
        `bench.load`), so with many replies streaming at once the words of each arrive in
        fewer, larger updates, and the server's updates stay near `STREAM_UPDATES_PER_S`."""
        return max(STREAM_UPDATE_S, self.turns.streaming / STREAM_UPDATES_PER_S)

    def _failed(self, reply: StreamedReply, thread_id: str, exc: Exception) -> list:
        log.warning("turn failed in thread %s: %r", thread_id, exc)
        metrics.turn_failed(thread_id, exc)
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

    @user_errors
    def again(self, thread_id: str | None, chat: list, token: str | None, request: gr.Request):
        """The retry icon on the last reply: resend a message that was not answered (after
        an error, without sending it twice), or else answer the last message anew."""
        user_id = self.user(token, request)
        if self.turns.unfinished(self.owned(thread_id, user_id), user_id):
            return self.retry(thread_id, chat, token, request)
        return self.regenerate(thread_id, token, request)

    @user_errors
    def edit_message(self, thread_id: str | None, start: int, chat: list, token: str | None, request: gr.Request, edited: gr.EditData):
        """One of my messages, edited in the chat, is sent again from there; the later turns
        are replaced (`Turns.edit` says why)."""
        user_id = self.user(token, request)
        thread_id = self.owned(thread_id, user_id)
        text = str(edited.value or "").strip()
        index = edited.index if isinstance(edited.index, int) else edited.index[0]
        chat = list(chat or [])[: max(0, int(index))]
        # The page shows the thread from message `start` on, one bubble per message of mine.
        mine = sum(1 for bubble in chat if bubble.get("role") == "user")
        self._check_room(user_id)
        self.turns.edit(thread_id, user_id, mine, text, start=int(start or 0))
        return chat + [{"role": "user", "content": text}], {"text": text, "user": user_id}

    @user_errors
    def retry(self, thread_id: str | None, chat: list, token: str | None, request: gr.Request):
        user_id = self.user(token, request)
        thread_id = self.owned(thread_id, user_id)
        self.turns.check_retry(thread_id, user_id)
        self._check_room(user_id)
        chat = [m for m in (chat or []) if (m.get("metadata") or {}).get("title") != NOT_ANSWERED]
        return chat, {"retry": True, "user": user_id}

    @user_errors
    def regenerate(self, thread_id: str | None, token: str | None, request: gr.Request):
        user_id = self.user(token, request)
        thread_id = self.owned(thread_id, user_id)
        self._check_room(user_id)
        text = self.turns.regenerate(thread_id, user_id)
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
        """After a turn: the list, the header, the banner, a stopped reply's mark, and the page's address."""
        user_id = self.user(token, request)
        radio, more = self.sidebar(user_id, int(limit or LIST_SIZE), thread_id, query)
        address = self.address(thread_id, token, request)  # a new thread is stored now: the page's address names it
        return radio, more, *self.header(thread_id, user_id), self.stopped_tail(thread_id, user_id, chat), self.banner(), address

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

    # -- thread actions ---------------------------------------------------------

    @user_errors
    def start_rename(self, thread_id: str | None, token: str | None, request: gr.Request):
        """The rename box, holding the thread's current title."""
        user_id = self.user(token, request)
        info = self.saver.threads.get(self.owned(thread_id, user_id), user_id=user_id)
        return gr.Textbox(value=info.title or ""), gr.Row(visible=True)

    @user_errors
    def rename(self, title: str, thread_id: str | None, token: str | None, limit: int, request: gr.Request):
        user_id = self.user(token, request)
        thread_id = self.owned(thread_id, user_id)
        self.saver.threads.rename(thread_id, title, user_id=user_id)
        radio, more = self.sidebar(user_id, int(limit or LIST_SIZE), thread_id)
        return gr.Row(visible=False), radio, more, *self.header(thread_id, user_id)

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
        return self.exports.write(info, self.turns.messages(thread_id, user_id), fmt)

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
        thread_id = self.turns.claim(thread_id or None, user_id)
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

    # -- what a thread remembers beyond its window --------------------------------

    def _memory_view(self, memory: ThreadMemory) -> tuple[str, str, str]:
        """(caption, summary, kept facts one per line)."""
        if memory.covered:
            note = f"The summary covers the first {memory.covered:,} messages; the model gets it with every reply."
        else:
            note = "No summary yet: everything said so far still fits in what the model is sent."
        if memory.pending:
            note += " A newer summary arrives with the next message."
        return note, memory.summary, "\n".join(memory.facts)

    def _memory_config(self, thread_id: str | None, token: str | None, request: gr.Request | None) -> dict | None:
        user_id = self.user(token, request)
        if not thread_id:
            return None
        return self.turns.config(self.owned(thread_id, user_id), user_id)

    @user_errors
    def show_memory(self, thread_id: str | None, token: str | None, request: gr.Request):
        config = self._memory_config(thread_id, token, request)
        if config is None:
            return "A new chat remembers nothing yet.", "", ""
        return self._memory_view(summary_of(self.graph, config))

    def _memory_editable(self, config: dict) -> None:
        # An edit while a reply streams would be written beside the turn's own checkpoints and lost.
        if self.turns.replying(config["configurable"]["user_id"]):
            raise Refusal("Wait for the reply to finish, then change what the thread remembers.")

    @user_errors
    def save_memory(self, summary: str, facts: str, thread_id: str | None, token: str | None, request: gr.Request):
        """The summary and kept facts as the person edited them; the next reply uses them."""
        config = self._memory_config(thread_id, token, request)
        if config is None:
            raise Refusal("Send a message first: a new chat has nothing to remember yet.")
        self._memory_editable(config)
        memory = set_memory(self.graph, config, summary=str(summary or ""), facts=str(facts or "").splitlines())
        gr.Info("Saved: the next reply uses this.")
        return self._memory_view(memory)

    @user_errors
    def clear_memory(self, thread_id: str | None, token: str | None, request: gr.Request):
        """Forget the summary and kept facts (the messages themselves stay)."""
        config = self._memory_config(thread_id, token, request)
        if config is None:
            return "A new chat remembers nothing yet.", "", ""
        self._memory_editable(config)
        gr.Info("The summary and kept facts are cleared; the messages themselves stay.")
        return self._memory_view(clear_summary(self.graph, config))

    # -- the page ---------------------------------------------------------------

    def blocks(self) -> gr.Blocks:
        from ui.web.layout import page

        return page(self)

    def launch(self, host: str = "127.0.0.1", port: int = 7860, **kwargs: Any) -> Any:
        from ui.web.layout import CSS, ON_PAGE_LOAD

        demo = self.blocks()
        self.exports.start_pruning()
        auth = self.identity.check_password if self.identity.sign_in else None
        return demo.queue(default_concurrency_limit=8).launch(
            server_name=host,
            server_port=port,
            auth=auth,
            auth_message=SIGN_IN_MESSAGE,
            css=CSS,
            max_file_size=f"{int(os.environ.get('THREADKEEPER_MAX_ATTACHMENT_MB', '50'))}mb",
            footer_links=[],
            run_history=False,
            js=ON_PAGE_LOAD,
            **kwargs,
        )


SIGN_IN_MESSAGE = "<h2>threadkeeper</h2><p>Sign in to see your threads.</p>"
