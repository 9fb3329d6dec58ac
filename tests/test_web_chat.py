"""The web chat behaves as people expect a chat app to, in a real browser.

Stop ends a reply at once and the thread keeps what was shown; a person's
mistake (a message over the limit, a file that is not a database, an empty
message) gets one sentence and leaves the page as it was, and the operator's log
one line; the chat shows no button that does not do what it says; actions sit
on the message they concern; every thread has its address; on a phone the
message box and Send (or Stop) are on screen. One `threadkeeper serve` on the
streaming fake model serves these tests (each in its own browser context, so as
its own anonymous visitor); the offline one starts its own. Screenshots go to
test-artifacts/.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.fake_openai import FakeOpenAI
from tests.test_web_browser import CHROMIUM, Server, bot_said, open_app, send, shot

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
BOT = '#chat [data-testid="bot"]'
USER = '#chat [data-testid="user"]'


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def model_server():
    with FakeOpenAI() as s:
        yield s


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_server: FakeOpenAI):
    data = tmp_path_factory.mktemp("web-chat")
    s = Server(data, OPENAI_BASE_URL=model_server.base_url, OPENAI_API_KEY="k", THREADKEEPER_MODEL="fake-model", THREADKEEPER_MODEL_RETRIES="0").start()
    yield s
    s.stop()


@pytest.fixture
def page(browser, server: Server, model_server: FakeOpenAI):
    model_server.plan.clear()
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    open_app(page, server.url)
    yield page
    context.close()


def log_of(server: Server) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(server.data.glob("server-*.log")))


def nothing_failed(page: Page) -> None:
    """No "Error" badge on any component and no red toast: what Gradio shows when an event raised."""
    expect(page.locator(".wrap .error")).to_have_count(0)
    expect(page.locator(".toast-title.error")).to_have_count(0)


def chat_turn(page: Page, text: str, reply: str) -> None:
    send(page, text)
    bot_said(page, reply)
    expect(page.locator("#thread-list label")).to_have_count(1)


def test_stop_ends_the_reply_at_once_and_keeps_what_was_shown(page: Page, server: Server, model_server: FakeOpenAI):
    words = [f"word{n}" for n in range(40)]
    model_server.plan.append(("slow", (" ".join(words), 0.5)))
    expect(page.locator("#stop")).to_be_hidden()
    send(page, "tell me a long story")
    bot_said(page, "word3")
    expect(page.locator("#send")).to_be_hidden()  # Send turns into Stop while the reply streams
    page.locator("#stop").click()
    stopped_at = time.monotonic()
    time.sleep(1.0)  # a chunk already on its way may still land
    shown = page.locator(BOT).last.inner_text()
    time.sleep(2.0)
    assert page.locator(BOT).last.inner_text() == shown, "the reply kept growing after Stop"
    (stream,) = model_server.slow_streams[-1:]
    assert stream.client_left and stream.ended_at is not None and stream.ended_at - stopped_at < 2.0, "the model call went on"
    expect(page.locator(BOT).last).to_contain_text("Stopped")
    expect(page.locator("#send")).to_be_visible()
    expect(page.locator("#stop")).to_be_hidden()
    nothing_failed(page)
    shot(page, "chat-stopped-desktop-1280x800")

    # What was shown is what the thread keeps, marked as stopped, after the person's message.
    page.reload()
    open_app(page, server.url)
    page.locator("#thread-list label").first.click()
    expect(page.locator(USER)).to_have_count(1)
    expect(page.locator(USER).first).to_contain_text("tell me a long story")
    expect(page.locator(BOT).last).to_contain_text("Stopped")
    kept = page.locator(BOT).last.inner_text()
    assert "word3" in kept and "word39" not in kept
    assert [w for w in words if w in kept] == [w for w in words if w in shown]

    # The thread goes on: the next message is answered, with the stopped reply in the history.
    send(page, "shorter please")
    bot_said(page, "ok")
    sent = model_server.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]


def retry_icon(page: Page):
    """The retry icon on the last reply (Gradio's, labelled "Retry")."""
    return page.locator('#chat button[aria-label="Retry"]').last


def test_regenerate_on_a_thread_with_one_turn_gives_a_new_reply(page: Page, server: Server, model_server: FakeOpenAI):
    model_server.plan.extend([("reply", "the first answer"), ("reply", "a better answer")])
    chat_turn(page, "only question", "the first answer")
    retry_icon(page).click()  # on an answered reply: regenerate it
    bot_said(page, "a better answer")
    expect(page.locator(USER)).to_have_count(1)
    expect(page.locator(BOT)).to_have_count(1)
    nothing_failed(page)
    assert "IndexError" not in log_of(server)
    assert [m["role"] for m in model_server.requests[-1]["messages"]] == ["system", "user"]


def test_a_refused_turn_says_why_and_leaves_the_chat_as_it_was(page: Page, server: Server, model_server: FakeOpenAI):
    model_server.plan.append(("reply", "all answered"))
    chat_turn(page, "a question", "all answered")
    asked = len(model_server.requests)
    send(page, "x" * 100_001)
    expect(page.get_by_text("the limit is 100,000")).to_be_visible(timeout=10_000)
    time.sleep(1.0)
    nothing_failed(page)
    expect(page.locator(USER)).to_have_count(1)
    expect(page.locator(BOT)).to_have_count(1)
    bot_said(page, "all answered")
    assert len(model_server.requests) == asked, "a refused message reached the model, or an earlier one was sent again"


def test_editing_an_earlier_message_sends_it_again_from_there(page: Page, server: Server, model_server: FakeOpenAI):
    model_server.plan.extend([("reply", "Paris answer"), ("reply", "Rome answer"), ("reply", "Lisbon answer")])
    chat_turn(page, "a weekend in Paris", "Paris answer")
    send(page, "and then Rome")
    bot_said(page, "Rome answer")
    page.locator('#chat button[aria-label="Edit"]').first.click()
    page.locator("#chat textarea").first.fill("a weekend in Lisbon")
    page.get_by_role("button", name="Submit").click()
    bot_said(page, "Lisbon answer")
    expect(page.locator(USER)).to_have_count(1)  # the later turns are replaced
    expect(page.locator(USER).first).to_contain_text("a weekend in Lisbon")
    nothing_failed(page)
    sent = model_server.requests[-1]["messages"]
    assert [(m["role"], m["content"]) for m in sent[1:]] == [("user", "a weekend in Lisbon")]
    page.reload()  # the thread's address reopens it, as it is stored
    expect(page.locator(USER)).to_have_count(1, timeout=30_000)
    expect(page.locator(USER).first).to_contain_text("a weekend in Lisbon")
    bot_said(page, "Lisbon answer")


def test_a_refused_upload_leaves_every_component_as_it_was(page: Page, server: Server, tmp_path: Path):
    bad = tmp_path / "notes.db"
    bad.write_text("not a database")
    chat_turn(page, "about my notes", "ok")
    # read the title once the turn's last update of it is done (meanwhile Gradio shows its
    # progress, "processing | 0.1s", inside the component)
    expect(page.locator("#thread-title")).to_contain_text("about my notes")
    expect(page.locator("#thread-title")).not_to_contain_text("processing")
    title = page.locator("#thread-title").inner_text()
    with page.expect_file_chooser() as chooser:
        page.locator("#upload").click()
    chooser.value.set_files(str(bad))
    expect(page.get_by_text("notes.db is not a SQLite database")).to_be_visible(timeout=15_000)
    time.sleep(1.0)
    nothing_failed(page)
    expect(page.locator("#thread-list label")).to_have_count(1)
    expect(page.locator("#thread-list")).to_contain_text("about my notes")
    expect(page.locator("#thread-title")).to_have_text(title)
    expect(page.locator("#attachment")).not_to_contain_text("notes.db")
    expect(page.locator("#thread-actions")).to_be_visible()
    shot(page, "refused-upload")


def test_the_chat_shows_no_trash_icon_that_only_blanks_it(page: Page):
    chat_turn(page, "keep this", "ok")
    expect(page.locator('#chat button[aria-label="Clear"]')).to_be_hidden()
    expect(page.locator(USER)).to_have_count(1)


def test_an_empty_message_is_not_sent_and_nothing_is_said(page: Page, model_server: FakeOpenAI):
    asked = len(model_server.requests)
    page.locator("#send").click()
    page.locator("#message textarea").fill("   ")
    page.locator("#message textarea").press("Enter")
    time.sleep(1.5)
    expect(page.locator(".toast-body")).to_have_count(0)
    nothing_failed(page)
    expect(page.locator(USER)).to_have_count(0)
    expect(page.locator("#thread-list label")).to_have_count(0)
    assert len(model_server.requests) == asked


def test_each_mistake_is_one_line_in_the_operators_log(page: Page, server: Server, tmp_path: Path):
    bad = tmp_path / "notes.db"
    bad.write_text("not a database")
    text = tmp_path / "notes.txt"
    text.write_text("just words")
    before = log_of(server)
    send(page, "x" * 100_001)
    expect(page.get_by_text("the limit is 100,000")).to_be_visible(timeout=10_000)
    page.locator("#message textarea").fill("")
    for file, said in ((bad, "notes.db is not a SQLite database"), (text, "notes.txt cannot be attached: upload a SQLite database")):
        page.locator('[data-testid="toast-close"]').first.click()  # the last sentence covers the Attach button
        with page.expect_file_chooser() as chooser:
            page.locator("#upload").click()
        chooser.value.set_files(str(file))
        expect(page.get_by_text(said)).to_be_visible(timeout=15_000)
    time.sleep(1.0)
    logged = log_of(server)[len(before):]
    assert "Traceback" not in logged, logged
    lines = [line for line in logged.splitlines() if line.strip()]
    assert len(lines) == 3 and all("refused" in line for line in lines), logged
    assert "notes.db is not a SQLite database" in lines[1]


def test_a_model_error_is_said_once_and_the_banner_says_the_model_is_not_answering(page: Page, model_server: FakeOpenAI):
    model_server.plan.extend([("status", 500), ("reply", "back again")])
    expect(page.locator("#banner")).to_contain_text("● Model fake-model")
    send(page, "are you there?")
    bot_said(page, "The model server failed with HTTP 500")
    said = page.locator(BOT).last.inner_text()
    assert said.lower().count("retry") == 1 and said.lower().count("try again") <= 1, said
    expect(page.locator("#banner")).to_contain_text("⚠", timeout=10_000)
    expect(page.locator("#banner")).not_to_contain_text("●")
    retry_icon(page).click()
    bot_said(page, "back again")
    expect(page.locator("#banner")).to_contain_text("● Model fake-model", timeout=10_000)


def test_offline_replies_leave_the_set_up_to_the_banner(browser, tmp_path: Path):
    server = Server(tmp_path).start()
    try:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        open_app(page, server.url)
        expect(page.locator("#banner")).to_contain_text("OPENAI_API_KEY")
        send(page, "hello offline")
        bot_said(page, "automatic reply")
        expect(page.locator(BOT).last).to_contain_text('"hello offline" is saved')
        expect(page.locator(BOT).last).not_to_contain_text("OPENAI_API_KEY")
        context.close()
    finally:
        server.stop()


def on_screen(page: Page, selector: str) -> bool:
    box = page.locator(selector).bounding_box()
    view = page.viewport_size
    return box is not None and box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= view["width"] and box["y"] + box["height"] <= view["height"]


def test_on_a_phone_the_message_box_and_send_or_stop_are_on_screen(browser, server: Server, model_server: FakeOpenAI):
    model_server.plan.clear()
    model_server.plan.extend([("reply", "Lyon has **great** food: try a *bouchon* for lunch and climb Fourvière at sunset."), ("slow", ("one two three four five six seven eight nine ten", 0.4))])
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    open_app(page, server.url)
    send(page, "Plan a weekend in Lyon")
    bot_said(page, "sunset")
    send(page, "count to ten")
    bot_said(page, "three")
    assert on_screen(page, "#message") and on_screen(page, "#stop"), "Stop is off the screen while a reply streams"
    shot(page, "chat-replying-phone-390x844")
    page.locator("#stop").click()
    expect(page.locator("#send")).to_be_visible()
    assert on_screen(page, "#message") and on_screen(page, "#send")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390, "the page is wider than the phone"
    assert on_screen(page, "#sidebar .toggle-button")
    shot(page, "chat-phone-390x844")
    context.close()


def test_every_thread_has_its_own_address_for_reload_back_and_links(browser, page: Page, server: Server, model_server: FakeOpenAI):
    model_server.plan.extend([("reply", "about trains"), ("reply", "about soup")])
    chat_turn(page, "train times to Lyon", "about trains")
    expect(page).to_have_url(re.compile(r"\?thread=[0-9a-f-]{36}$"), timeout=10_000)
    trains = page.url
    page.locator("#new-chat").click()
    expect(page).not_to_have_url(re.compile(r"thread="))
    send(page, "leek soup recipe")
    bot_said(page, "about soup")
    expect(page).to_have_url(re.compile(r"\?thread=[0-9a-f-]{36}$"), timeout=10_000)
    soup = page.url
    assert soup != trains

    page.go_back()  # the new chat the soup thread started from
    expect(page).not_to_have_url(re.compile(r"thread="))
    expect(page.locator(USER)).to_have_count(0, timeout=10_000)
    page.go_back()  # the trains thread, as it was
    expect(page).to_have_url(trains)
    expect(page.locator(USER)).to_have_count(1)
    expect(page.locator(USER).first).to_contain_text("train times to Lyon", timeout=10_000)
    expect(page.locator("#thread-title")).to_contain_text("train times to Lyon")
    page.go_forward()
    page.go_forward()
    expect(page).to_have_url(soup)
    expect(page.locator(USER).first).to_contain_text("leek soup recipe", timeout=10_000)

    page.reload()  # reopens the thread in the address
    expect(page.locator(USER).first).to_contain_text("leek soup recipe", timeout=30_000)
    expect(page.locator("#thread-list input:checked")).to_have_value(soup.split("thread=")[1])
    send(page, "and for four people?")
    bot_said(page, "ok")
    expect(page.locator(USER)).to_have_count(2)
    expect(page).to_have_url(soup)

    # The same address in another browser is someone else's: it does not exist for them.
    stranger = browser.new_context(viewport={"width": 1280, "height": 800})
    other = stranger.new_page()
    other.goto(trains)
    expect(other.get_by_text("That thread does not exist (or is not yours).")).to_be_visible(timeout=30_000)
    expect(other.locator("#send")).to_be_enabled()
    expect(other.locator(USER)).to_have_count(0)
    expect(other.locator("#thread-title")).to_contain_text("New chat")
    nothing_failed(other)
    assert "train times" not in other.content()
    stranger.close()


def test_the_title_shows_as_soon_as_the_first_message_is_sent(page: Page, model_server: FakeOpenAI):
    model_server.plan.append(("slow", ("one two three four five six seven eight", 0.5)))
    expect(page.locator("#thread-title")).to_have_text("New chat")
    send(page, "Plan a weekend in Lyon with the children")
    expect(page.locator("#thread-title")).to_have_text("Plan a weekend in Lyon with the children", timeout=3_000)
    expect(page.locator("#stop")).to_be_visible()  # while the reply is still on its way
    bot_said(page, "eight")


def test_the_memory_panel_shows_edits_and_clears_what_the_thread_remembers(page: Page, model_server: FakeOpenAI):
    model_server.plan.extend([("reply", "Noted."), ("reply", "Fine."), ("reply", "Good."), ("reply", "Sure.")])
    send(page, "Please remember that I am allergic to peanuts")
    bot_said(page, "Noted.")
    page.locator("#memory").get_by_text("What this thread remembers").click()
    expect(page.locator("#facts-box textarea")).to_have_value("I am allergic to peanuts", timeout=10_000)
    expect(page.locator("#memory-note")).to_contain_text("No summary yet")
    shot(page, "memory-panel-desktop-1280x800")

    # An edit that does not fit changes nothing (not even the facts sent with it) and says why once.
    page.locator("#facts-box textarea").fill("I am allergic to peanuts\nI live in Oslo")
    page.locator("#summary-box textarea").fill("word " * 5000)
    page.locator("#memory-save").click()
    expect(page.get_by_text("fit beside the kept facts")).to_be_visible(timeout=10_000)
    nothing_failed(page)
    send(page, "what should I cook?")
    bot_said(page, "Fine.")
    system = model_server.requests[-1]["messages"][0]["content"]
    assert "I am allergic to peanuts" in system and "Oslo" not in system

    # An edit that fits is what the next reply is sent.
    page.locator('[data-testid="toast-close"]').first.click()
    page.locator("#facts-box textarea").fill("I am allergic to peanuts\nI live in Oslo")
    page.locator("#summary-box textarea").fill("We planned dinner for six.")
    page.locator("#memory-save").click()
    expect(page.get_by_text("Saved: the next reply uses this.")).to_be_visible(timeout=10_000)
    send(page, "and for drinks?")
    bot_said(page, "Good.")
    system = model_server.requests[-1]["messages"][0]["content"]
    assert "I live in Oslo" in system and "We planned dinner for six." in system
    shot(page, "memory-panel-edited-desktop-1280x800")
    page.locator("#memory-clear").click()
    expect(page.locator("#facts-box textarea")).to_have_value("", timeout=10_000)
    expect(page.locator("#summary-box textarea")).to_have_value("")
    send(page, "and dessert?")
    bot_said(page, "Sure.")
    system = model_server.requests[-1]["messages"][0]["content"]
    assert "peanuts" not in system and "dinner for six" not in system
    assert [m["content"] for m in model_server.requests[-1]["messages"] if m["role"] == "user"][0].startswith("Please remember")
    nothing_failed(page)
