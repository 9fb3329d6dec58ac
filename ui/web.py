"""The web chat: every visitor lists, opens and resumes their own threads.

    threadkeeper serve                 # http://127.0.0.1:7860
    threadkeeper serve --host 0.0.0.0 --port 8080

Every handler works out the caller's user id on the server (`ui.identity`) and
asks the store with it, so a thread id that is not the caller's behaves as one
that does not exist, whether it comes from the page or a crafted API request.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
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
from checkpointers.threads import message_text
from graph import ModelError, Settings, build_graph
from ui.identity import Identity, IdentityError, load_secret, load_users

log = logging.getLogger("threadkeeper.web")

PAGE_SIZE = 50
LIST_SIZE = 30
MAX_QUERY_CHARS = 200
MAX_MESSAGE_CHARS = 100_000
NOT_FOUND = "That thread does not exist (or is not yours)."
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
#banner.offline { background: #fff4e5; }
#thread-list label { width: 100%; }
#thread-header { align-items: center; }
#chat { flex-grow: 1; }
@media (max-width: 640px) {
  #chat { height: 60vh !important; }
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
                shown.append({"role": "assistant", "content": text})
            for call in message.tool_calls:
                args = call.get("args", {})
                body = f"```sql\n{args['sql']}\n```" if "sql" in args else f"`{json.dumps(args)}`"
                shown.append({"role": "assistant", "content": body, "metadata": {"title": f"Tool call: {call['name']}"}})
        elif isinstance(message, ToolMessage):
            shown.append({"role": "assistant", "content": f"```\n{message_text(message)}\n```", "metadata": {"title": "Tool result"}})
    return shown


def user_errors(handler):
    """A handler whose store and input errors reach the user as one sentence (a toast)
    and the operator as one log line, never a traceback."""

    @functools.wraps(handler)
    def wrapped(*args: Any, **kwargs: Any):
        try:
            return handler(*args, **kwargs)
        except ThreadNotFoundError:
            raise gr.Error(NOT_FOUND) from None
        except (StoreError, ValueError) as exc:
            log.warning("%s refused: %s: %s", handler.__name__, type(exc).__name__, exc)
            raise gr.Error(str(exc)) from None

    return wrapped


def error_bubble(text: str) -> dict:
    return {"role": "assistant", "content": text, "metadata": {"title": "⚠ Not answered"}}


class WebChat:
    """The Gradio app over one store and one compiled graph."""

    def __init__(self, saver: ThreadSaver, *, settings: Settings | None = None, model: Any = None, identity: Identity | None = None) -> None:
        self.saver = saver
        self.settings = settings or Settings.from_env()
        self.graph = build_graph(checkpointer=saver, model=model, settings=self.settings)
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
            raise gr.Error(str(exc)) from None

    def owned(self, thread_id: str | None, user_id: str) -> str:
        """The thread id if it is the caller's; gr.Error otherwise."""
        if not thread_id:
            raise gr.Error("Open or start a thread first.")
        try:
            self.saver.threads.get(thread_id, user_id=user_id)
        except ThreadNotFoundError:
            raise gr.Error(NOT_FOUND) from None
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
        return token, radio, more, who, *self.open_view(None, user_id)

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
            raise gr.Error(NOT_FOUND) from None

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
        if not text:
            raise gr.Error("Type a message first.")
        if len(text) > MAX_MESSAGE_CHARS:
            raise gr.Error(f"That message is {len(text):,} characters; the limit is {MAX_MESSAGE_CHARS:,}.")
        check_text(text)
        if thread_id and not self.claimable(thread_id, user_id):
            raise gr.Error(NOT_FOUND)
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
        self.graph.update_state(cfg, {"messages": [RemoveMessage(id=m.id) for m in messages[last:]]}, as_node="model")
        return message_text(messages[last])

    def respond(self, pending: dict | None, thread_id: str, chat: list, token: str | None, request: gr.Request) -> Iterator[list]:
        """Run the turn and stream the reply into the chat; errors become one line."""
        user_id = self.user(token, request)
        if not pending or not thread_id:
            return
        # A private event, yet callable by anyone who names it (`fn_index`) with any
        # session: the turn must be this caller's, on a thread this caller may write.
        if pending.get("user") != user_id or not self.claimable(thread_id, user_id):
            log.warning("respond refused: thread %r is not the caller's", thread_id)
            raise gr.Error(NOT_FOUND)
        turn_input = None if pending.get("retry") else {"messages": [HumanMessage(pending["text"])]}
        chat = list(chat or [])
        chat.append({"role": "assistant", "content": ""})
        reply = len(chat) - 1
        try:
            for chunk, meta in self.graph.stream(turn_input, self.config(thread_id, user_id), stream_mode="messages"):
                node = meta.get("langgraph_node")
                if node == "model" and isinstance(chunk.content, str) and chunk.content:
                    chat[reply]["content"] += chunk.content
                    yield chat
                elif node == "tools" and isinstance(chunk, ToolMessage):
                    chat[reply:reply] = to_chat([chunk])
                    reply += 1
                    yield chat
        except (ModelError, StoreError) as exc:
            log.warning("turn failed in thread %s: %r", thread_id, exc)
            chat[reply] = error_bubble(f"{exc} Press **Retry** to try again.")
            yield chat
            return
        if not chat[reply]["content"]:
            chat = to_chat(self.saver.read_messages(thread_id, user_id=user_id, limit=PAGE_SIZE).messages)
        yield chat

    @user_errors
    def retry(self, thread_id: str | None, chat: list, token: str | None, request: gr.Request):
        user_id = self.user(token, request)
        thread_id = self.owned(thread_id, user_id)
        state = self.graph.get_state(self.config(thread_id, user_id))
        newest = self.saver.read_messages(thread_id, user_id=user_id, limit=1).messages
        # Unfinished: the model's step is next, or (a process killed between a step's
        # result and its checkpoint) the newest stored message still has no reply.
        if not state.next and not (newest and isinstance(newest[-1], HumanMessage)):
            raise gr.Error("There is nothing to retry: the last message was answered.")
        chat = [m for m in (chat or []) if (m.get("metadata") or {}).get("title") != "⚠ Not answered"]
        return chat, {"retry": True, "user": user_id}

    @user_errors
    def regenerate(self, thread_id: str | None, token: str | None, request: gr.Request):
        user_id = self.user(token, request)
        thread_id = self.owned(thread_id, user_id)
        text = self._drop_last_turn(thread_id, user_id)
        if text is None:
            raise gr.Error("There is no reply to regenerate yet.")
        chat = to_chat(self.saver.read_messages(thread_id, user_id=user_id, limit=PAGE_SIZE).messages)
        return chat + [{"role": "user", "content": text}], {"text": text, "user": user_id}

    @user_errors
    def edit_last(self, thread_id: str | None, token: str | None, request: gr.Request):
        user_id = self.user(token, request)
        thread_id = self.owned(thread_id, user_id)
        page = self.saver.read_messages(thread_id, user_id=user_id, limit=PAGE_SIZE)
        humans = [m for m in page.messages if isinstance(m, HumanMessage)]
        if not humans:
            raise gr.Error("There is no message of yours to edit.")
        gr.Info("Edit your last message and press Send; the old one and its reply will be replaced.")
        return message_text(humans[-1]), True

    @user_errors
    def refresh(self, thread_id: str | None, token: str | None, limit: int, query: str, request: gr.Request):
        user_id = self.user(token, request)
        radio, more = self.sidebar(user_id, int(limit or LIST_SIZE), thread_id, query)
        return radio, more, *self.header(thread_id, user_id)

    @user_errors
    def rename(self, title: str, thread_id: str | None, token: str | None, limit: int, request: gr.Request):
        user_id = self.user(token, request)
        thread_id = self.owned(thread_id, user_id)
        try:
            self.saver.threads.rename(thread_id, title, user_id=user_id)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
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
            raise gr.Error("No file arrived.")
        if thread_id and not self.claimable(thread_id, user_id):
            raise gr.Error(NOT_FOUND)
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
        offline = not self.settings.model_connected
        # Exports leave the server after export_keep_s: a deleted or swept thread's
        # downloads do not outlive it by more than that (see README, Retention).
        with gr.Blocks(title="threadkeeper", delete_cache=(self.export_check_s, self.export_keep_s)) as demo:
            token = gr.BrowserState(None, storage_key="threadkeeper-identity", secret=self.identity.browser_secret)
            thread = gr.State(None)
            start = gr.State(0)
            limit = gr.State(LIST_SIZE)
            pending = gr.State(None)
            editing = gr.State(False)
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
            banner = gr.Markdown(
                ("⚠ " if offline else "● ") + self.settings.describe_model(),
                elem_id="banner",
                elem_classes=["offline"] if offline else [],
            )
            with gr.Row(elem_id="thread-header"):
                title = gr.Markdown("### New chat", elem_id="thread-title")
                attachment = gr.Markdown("", elem_id="attachment")
                upload = gr.UploadButton(
                    "Attach database", file_types=[".db", ".sqlite", ".sqlite3", ".csv"], size="sm", elem_id="upload"
                )
                detach = gr.Button("Remove database", size="sm", visible=False, elem_id="detach")
            earlier = gr.Button("Load earlier messages", visible=False, size="sm", elem_id="earlier")
            chat = gr.Chatbot(elem_id="chat", height=520, buttons=["copy"], show_label=False, render_markdown=True)
            with gr.Row():
                # Enabled once the page has its identity (see `demo.load` below).
                box = gr.Textbox(placeholder="Message", show_label=False, scale=8, elem_id="message", max_lines=8, interactive=False)
                send = gr.Button("Send", variant="primary", scale=1, elem_id="send", interactive=False)
                stop = gr.Button("Stop", variant="stop", scale=1, elem_id="stop")
            with gr.Row():
                again = gr.Button("Regenerate", size="sm", elem_id="regenerate")
                edit = gr.Button("Edit last message", size="sm", elem_id="edit")
                retry = gr.Button("Retry", size="sm", elem_id="retry")

            view = [thread, chat, earlier, start, title, attachment, detach]
            private = {"api_visibility": "private"}
            # The chat box opens only after the identity is in the browser: a message sent
            # while the page still loads would reach the server without one and be refused.
            demo.load(self.on_load, [token], [token, threads, more, who, *view], **private).then(
                lambda: (gr.Textbox(interactive=True), gr.Button(interactive=True)), None, [box, send], **private
            )
            threads.select(self.open_thread, [threads, token], view, api_name="open_thread", js=CLOSE_SIDEBAR_ON_PHONE)
            earlier.click(self.load_earlier, [thread, start, chat, token], [chat, earlier, start], api_name="load_earlier")
            new.click(self.new_chat, [token, limit], [threads, more, *view], api_name="new_chat")
            more.click(self.more_threads, [token, limit, thread, query], [limit, threads, more], api_name="more_threads")
            query.change(self.search, [query, token, limit, thread], [threads, more], api_name="search")
            refresh = (self.refresh, [thread, token, limit, query], [threads, more, title, attachment, detach])

            turn = gr.on(
                [send.click, box.submit], self.accept, [box, thread, chat, editing, token],
                [box, thread, chat, pending, editing], api_name="send",
            ).then(self.respond, [pending, thread, chat, token], [chat], **private).then(*refresh, **private)
            regen = again.click(self.regenerate, [thread, token], [chat, pending], api_name="regenerate").then(
                self.respond, [pending, thread, chat, token], [chat], **private
            ).then(*refresh, **private)
            again_turn = retry.click(self.retry, [thread, chat, token], [chat, pending], api_name="retry").then(
                self.respond, [pending, thread, chat, token], [chat], **private
            ).then(*refresh, **private)
            stop.click(None, None, None, cancels=[turn, regen, again_turn])
            edit.click(self.edit_last, [thread, token], [box, editing], api_name="edit_last")

            rename.click(self.rename, [title_box, thread, token, limit], [title_box, threads, more, title, attachment, detach], api_name="rename")
            pin.click(self.toggle_pin, [thread, token, limit], [threads, more, title, attachment, detach], api_name="pin")
            delete.click(lambda: gr.Row(visible=True), None, [confirm_delete], **private)
            keep.click(lambda: gr.Row(visible=False), None, [confirm_delete], **private)
            sure.click(self.delete, [thread, token, limit], [threads, more, confirm_delete, *view], api_name="delete")
            wipe.click(lambda: gr.Row(visible=True), None, [confirm_wipe], **private)
            wipe_keep.click(lambda: gr.Row(visible=False), None, [confirm_wipe], **private)
            wipe_sure.click(self.delete_everything, [token], [threads, more, confirm_wipe, *view], api_name="delete_all")
            md.click(self.export_markdown, [thread, token], [exported], api_name="export_md")
            js.click(self.export_json, [thread, token], [exported], api_name="export_json")
            upload.upload(self.upload, [upload, thread, token, limit], [thread, threads, more, title, attachment, detach], api_name="upload")
            detach.click(self.detach, [thread, token], [title, attachment, detach], api_name="detach")
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
