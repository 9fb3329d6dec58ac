"""The page: its components, how their events are wired to `WebChat`'s handlers, and
the parts that run in the browser (its address, the phone layout, search marks)."""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import TYPE_CHECKING, Any

import gradio as gr

from ui.web.events import on_page
from ui.web.handlers import LIST_SIZE

if TYPE_CHECKING:
    from ui.web.handlers import WebChat

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

# Search results mark the words searched for, in titles and snippets alike, matched as
# the store matches them (whole words, any case, any accents). The marks are the
# browser's highlights (CSS Custom Highlight API): the list's own text is not touched.
MARK_WORDS = r"""
(query) => {
  if (!window.CSS || !CSS.highlights) return;
  const fold = (s) => s.normalize('NFD').replace(/[\u0300-\u036f]/g, '').toLowerCase();
  const words = fold(query || '').match(/[\p{L}\p{N}]+/gu) || [];
  CSS.highlights.delete('search-words');
  if (!words.length) return;
  const escaped = words.map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
  const pattern = new RegExp(`(?<![\\p{L}\\p{N}])(?:${escaped.join('|')})(?![\\p{L}\\p{N}])`, 'gu');
  const ranges = [];
  const walker = document.createTreeWalker(document.querySelector('#thread-list') || document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const text = node.textContent;
    let folded = '';
    const origin = [];
    for (let i = 0; i < text.length; i++) {
      const f = fold(text[i]);
      folded += f;
      for (let k = 0; k < f.length; k++) origin.push(i);
    }
    for (const hit of folded.matchAll(pattern)) {
      const range = new Range();
      range.setStart(node, origin[hit.index]);
      range.setEnd(node, origin[hit.index + hit[0].length - 1] + 1);
      ranges.push(range);
    }
  }
  CSS.highlights.set('search-words', new Highlight(...ranges));
}
"""

CSS = """
#banner { padding: 6px 12px; border-radius: 8px; }
#banner.warning { background: #fff4e5; }
#thread-list label { width: 100%; }
/* A search result's second line: the matching words of a message, in context. */
#thread-list label span { white-space: pre-line; }
::highlight(search-words) { background-color: #ffe066; color: inherit; }
#thread-header { align-items: center; }
#thread-actions { gap: 6px !important; flex-wrap: wrap; }
#thread-actions button { flex: 0 0 auto !important; min-width: 0 !important; }
#composer { align-items: flex-end; }
#upload { flex: 0 0 auto !important; min-width: 44px !important; }
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
  #thread-actions button { padding: 2px 8px !important; font-size: 12px !important; }
}
"""


def spare_the_server() -> None:
    """Leave out two things Gradio does for every event that cost a busy chat server
    about 15% of its CPU (py-spy on `bench.load`, 50 people): recomputing its
    analytics summary (a pandas group-by over the last 10,000 events) after each
    event, and trying to import matplotlib, when it is not installed, twice per event."""
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1000")
    if "matplotlib" not in sys.modules and importlib.util.find_spec("matplotlib") is None:
        sys.modules["matplotlib"] = None  # `import matplotlib` fails at once, as it would after the search


def page(chat: WebChat) -> gr.Blocks:
    """The web chat's page, every event wired; `chat` answers them."""
    spare_the_server()
    # Exports leave the server after their time (see ui.web.exports).
    with gr.Blocks(title="threadkeeper", delete_cache=(chat.exports.check_s, chat.exports.keep_s)) as demo:
        token = gr.BrowserState(None, storage_key="threadkeeper-identity", secret=chat.identity.browser_secret)
        thread = gr.State(None)
        start = gr.State(0)
        limit = gr.State(LIST_SIZE)
        pending = gr.State(None)
        editing = gr.State(False)
        address = gr.Textbox(elem_id="address", elem_classes=["hidden-control"], show_label=False, container=False)
        open_address = gr.Button(elem_id="open-address", elem_classes=["hidden-control"])
        with gr.Sidebar(label="Threads", open=True, elem_id="sidebar"):
            who = gr.Markdown(elem_id="who")
            if chat.identity.sign_in:
                gr.Button("Sign out", link="/logout", size="sm", elem_id="sign-out")
            new = gr.Button("+ New chat", variant="primary", elem_id="new-chat")
            query = gr.Textbox(placeholder="Search threads", show_label=False, elem_id="search", max_lines=1)
            threads = gr.Radio(choices=[], show_label=False, elem_id="thread-list", container=False)
            more = gr.Button("More", visible=False, size="sm", elem_id="more")
            with gr.Accordion("My data", open=False, elem_id="my-data"):
                wipe = gr.Button("Delete all my data", size="sm", variant="stop", elem_id="wipe")
                with gr.Row(visible=False) as confirm_wipe:
                    wipe_sure = gr.Button("Yes, delete everything", size="sm", variant="stop", elem_id="wipe-yes")
                    wipe_keep = gr.Button("Cancel", size="sm", elem_id="wipe-no")
        banner = chat.banner(elem_id="banner")
        with gr.Row(elem_id="thread-header"):
            title = gr.Markdown("### New chat", elem_id="thread-title")
        # The open thread's actions, once it is stored: nothing to rename, pin or export before.
        with gr.Row(visible=False, elem_id="thread-actions") as actions:
            rename = gr.Button("✎ Rename", size="sm", elem_id="rename")
            pin = gr.Button("☆ Pin", size="sm", elem_id="pin")
            md = gr.Button("⤓ Markdown", size="sm", elem_id="export-md")
            js = gr.Button("⤓ JSON", size="sm", elem_id="export-json")
            delete = gr.Button("Delete", size="sm", variant="stop", elem_id="delete")
        with gr.Row(visible=False, elem_id="rename-row") as renaming:
            title_box = gr.Textbox(show_label=False, max_lines=1, elem_id="rename-box", scale=4, container=False)
            save_title = gr.Button("Save", size="sm", variant="primary", elem_id="rename-save", scale=0)
            keep_title = gr.Button("Cancel", size="sm", elem_id="rename-cancel", scale=0)
        with gr.Row(visible=False, elem_id="confirm-delete") as confirm_delete:
            gr.Markdown("Delete this thread and everything in it?")
            sure = gr.Button("Yes, delete it", size="sm", variant="stop", elem_id="delete-yes")
            keep = gr.Button("Cancel", size="sm", elem_id="delete-no")
        exported = gr.File(visible=False, show_label=False, elem_id="exported", interactive=False)
        # What the model is sent beyond its window (graph.summary): shown, edited and cleared here.
        with gr.Accordion("What this thread remembers", open=False, elem_id="memory") as memory:
            memory_note = gr.Markdown(elem_id="memory-note")
            summary_box = gr.Textbox(label="Summary of earlier messages", lines=3, max_lines=12, elem_id="summary-box")
            facts_box = gr.Textbox(label="Kept facts, one per line (“remember that …”)", lines=2, max_lines=12, elem_id="facts-box")
            with gr.Row():
                save_memory = gr.Button("Save", size="sm", variant="primary", elem_id="memory-save")
                clear_memory = gr.Button("Clear", size="sm", elem_id="memory-clear")
        with gr.Row(elem_id="attachment-row"):
            attachment = gr.Markdown("", elem_id="attachment")
            detach = gr.Button("Remove database", size="sm", visible=False, elem_id="detach", scale=0)
        earlier = gr.Button("Load earlier messages", visible=False, size="sm", elem_id="earlier")
        # Actions sit on the message they concern: copy on each, edit on mine, and on the
        # last reply a retry icon (`again`: resend after an error, else regenerate).
        chatbot = gr.Chatbot(
            elem_id="chat", height=520, buttons=["copy"], show_label=False, render_markdown=True, editable="user"
        )
        with gr.Row(elem_id="composer"):
            # No `file_types`: Gradio's own check of them answers a wrong file with a red
            # "Error" and hides this button; `upload` says what it takes, as a warning.
            upload = gr.UploadButton("Attach", size="md", elem_id="upload", scale=0)
            # Enabled once the page has its identity (see `demo.load` below).
            box = gr.Textbox(placeholder="Message", show_label=False, scale=8, elem_id="message", max_lines=8, interactive=False)
            send = gr.Button("Send", variant="primary", scale=1, elem_id="send", interactive=False)
            stop = gr.Button("Stop", variant="stop", scale=1, elem_id="stop")

        head = [title, attachment, detach, pin, actions]
        view = [thread, chatbot, earlier, start, *head]
        private: dict[str, Any] = {"api_visibility": "private"}

        def address_follows(event: Any) -> None:
            """After `event`, a person's own move to another thread (or a new chat), the
            page's address names it: a new entry in the browser's history. Back and
            Forward move through those entries and add none."""
            event.then(on_page(chat.address), [thread, token], [address], **private).then(
                None, [address], None, js=SHOW_ADDRESS
            )

        # The chat box opens only after the identity is in the browser: a message sent
        # while the page still loads would reach the server without one and be refused.
        # Then the thread the address names opens (a reload, a link).
        demo.load(on_page(chat.on_load), [token], [token, threads, more, who, *view, banner], **private).then(
            on_page(chat.open_address), [address, token, limit], [threads, more, *view], js=READ_ADDRESS, **private
        ).then(lambda: (gr.Textbox(interactive=True), gr.Button(interactive=True)), None, [box, send], **private)
        # Back and Forward (see ON_PAGE_LOAD) open the thread of the address they reach;
        # after several quick ones, the last address wins.
        opened_by_address = open_address.click(
            on_page(chat.open_address), [address, token, limit], [threads, more, *view], js=READ_ADDRESS,
            trigger_mode="always_last", **private,
        )
        opening = threads.select(on_page(chat.open_thread), [threads, token], view, api_name="open_thread", js=CLOSE_SIDEBAR_ON_PHONE)
        address_follows(opening)
        earlier.click(on_page(chat.load_earlier), [thread, start, chatbot, token], [chatbot, earlier, start], api_name="load_earlier")
        started_new = new.click(on_page(chat.new_chat), [token, limit], [threads, more, *view], api_name="new_chat")
        address_follows(started_new)
        more.click(on_page(chat.more_threads), [token, limit, thread, query], [limit, threads, more], api_name="more_threads").then(
            None, [query], None, js=MARK_WORDS
        )
        query.change(on_page(chat.search), [query, token, limit, thread], [threads, more], api_name="search").then(
            None, [query], None, js=MARK_WORDS
        )

        # A turn: show the message (accept, edit_message, again), stream the reply
        # (respond_live, which Stop cancels), then bring the list, the header and the
        # banner up to date. A refused first step leaves no turn pending (None), so a
        # pending turn from before is never sent again.
        no_turn = {"accept": (gr.skip(), gr.skip(), gr.skip(), None, gr.skip(), gr.skip()), "other": (gr.skip(), None)}
        # As many replies stream at once as the global cap allows (`Limits.streams`);
        # more wait in the queue. Each person's own limit is kept by `Turns.slot`.
        reply = (on_page(chat.respond_live), [pending, thread, chatbot, token], [chatbot])
        streams = {"concurrency_limit": chat.turns.limits.streams, "concurrency_id": "replies"}
        refresh = (on_page(chat.refresh), [thread, token, limit, query, chatbot], [threads, more, *head, chatbot, banner, address])
        replies = []
        sent = gr.on(
            [send.click, box.submit], on_page(chat.accept, no_turn["accept"]), [box, thread, chatbot, editing, token],
            [box, thread, chatbot, pending, editing, title], api_name="send",
        )
        for first in (
            sent,
            chatbot.edit(on_page(chat.edit_message, no_turn["other"]), [thread, start, chatbot, token], [chatbot, pending], api_name="edit_message"),
            chatbot.retry(on_page(chat.again, no_turn["other"]), [thread, chatbot, token], [chatbot, pending], api_name="again"),
        ):
            streaming = first.success(*reply, api_name="respond", **streams, **private)
            first.success(None, None, None, js=SHOW_STOP)
            streaming.then(None, None, None, js=SHOW_SEND).then(*refresh, **private).then(None, [address], None, js=SHOW_ADDRESS)
            replies.append(streaming)
        stop.click(None, None, None, cancels=replies)

        remembered = [memory_note, summary_box, facts_box]
        memory.expand(on_page(chat.show_memory), [thread, token], remembered, api_name="show_memory")
        for opened in (opening, opened_by_address, started_new):
            opened.then(on_page(chat.show_memory), [thread, token], remembered, **private)
        save_memory.click(on_page(chat.save_memory), [summary_box, facts_box, thread, token], remembered, api_name="save_memory")
        clear_memory.click(on_page(chat.clear_memory), [thread, token], remembered, api_name="clear_memory")

        rename.click(on_page(chat.start_rename), [thread, token], [title_box, renaming], api_name="start_rename")
        keep_title.click(lambda: gr.Row(visible=False), None, [renaming], **private)
        gr.on(
            [save_title.click, title_box.submit], on_page(chat.rename), [title_box, thread, token, limit],
            [renaming, threads, more, *head], api_name="rename",
        )
        pin.click(on_page(chat.toggle_pin), [thread, token, limit], [threads, more, *head], api_name="pin")
        delete.click(lambda: gr.Row(visible=True), None, [confirm_delete], **private)
        keep.click(lambda: gr.Row(visible=False), None, [confirm_delete], **private)
        address_follows(sure.click(on_page(chat.delete), [thread, token, limit], [threads, more, confirm_delete, *view], api_name="delete"))
        wipe.click(lambda: gr.Row(visible=True), None, [confirm_wipe], **private)
        wipe_keep.click(lambda: gr.Row(visible=False), None, [confirm_wipe], **private)
        address_follows(wipe_sure.click(on_page(chat.delete_everything), [token], [threads, more, confirm_wipe, *view], api_name="delete_all"))
        md.click(on_page(chat.export_markdown), [thread, token], [exported], api_name="export_md")
        js.click(on_page(chat.export_json), [thread, token], [exported], api_name="export_json")
        address_follows(upload.upload(on_page(chat.upload), [upload, thread, token, limit], [thread, threads, more, *head], api_name="upload"))
        detach.click(on_page(chat.detach), [thread, token], head, api_name="detach")
    return demo

