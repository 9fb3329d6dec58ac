"""The web chat in a real browser (Debian's Chromium through Playwright).

Each server is a real `threadkeeper serve` process on a free 127.0.0.1 port;
the model is the local OpenAI-compatible fake, or the offline model.
Screenshots of the main screens go to test-artifacts/.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.chat import human
from tests.fake_openai import FakeOpenAI
from tests.serve import ROOT, Server

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (.ci/run installs it with apt-get)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-background-networking"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def model_server():
    with FakeOpenAI() as s:
        yield s


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory, model_server: FakeOpenAI):
    data = tmp_path_factory.mktemp("web-browser")
    s = Server(data, OPENAI_BASE_URL=model_server.base_url, OPENAI_API_KEY="k", THREADKEEPER_MODEL="fake-model", THREADKEEPER_MODEL_RETRIES="0").start()
    yield s
    s.stop()


@pytest.fixture
def server(shared_server: Server, model_server: FakeOpenAI):
    """One server for the module (a start is 5-6 s): each test is a visitor of its own (a
    new browser context, so a new anonymous person who sees only their threads), and the
    model's plan starts empty."""
    model_server.plan.clear()
    return shared_server


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=False)


def open_app(page: Page, url: str) -> None:
    page.goto(url)
    expect(page.locator("#banner")).to_be_visible(timeout=30_000)
    expect(page.locator("#who")).not_to_be_empty(timeout=30_000)
    expect(page.locator("#send")).to_be_enabled(timeout=30_000)  # the page has its identity


def send(page: Page, text: str) -> None:
    page.locator("#message textarea").fill(text)
    page.locator("#send").click()


def bot_said(page: Page, text: str, timeout: int = 30_000) -> None:
    expect(page.locator('#chat [data-testid="bot"]').last).to_contain_text(text, timeout=timeout)


def thread_labels(page: Page) -> list[str]:
    return page.locator("#thread-list label").all_inner_texts()


def test_a_visitor_chats_and_the_thread_survives_reload_and_restart(browser, server: Server, model_server: FakeOpenAI):
    model_server.plan.extend([("reply", "Lyon has **great** food and old streets"), ("reply", "You asked about Lyon before")])
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    open_app(page, server.url)
    expect(page.locator("#banner")).to_contain_text("Model fake-model")
    send(page, "Plan a weekend in Lyon")
    bot_said(page, "old streets")
    expect(page.locator("#chat strong").last).to_have_text("great")  # Markdown is rendered
    expect(page.locator("#thread-list label")).to_have_count(1)
    expect(page.locator("#thread-list")).to_contain_text("Plan a weekend in Lyon")
    shot(page, "chat-desktop-1280x800")

    page.reload()
    open_app(page, server.url)
    expect(page.locator("#thread-list")).to_contain_text("Plan a weekend in Lyon")

    server.restart()
    page.reload()
    open_app(page, server.url)
    page.locator("#thread-list label").first.click()
    expect(page.locator('#chat [data-testid="user"]').first).to_contain_text("Plan a weekend in Lyon")
    send(page, "What did I ask?")
    bot_said(page, "You asked about Lyon before")
    sent = model_server.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]  # the history went to the model
    context.close()


def test_another_visitor_sees_none_of_it_and_cannot_open_it_by_id(browser, server: Server, model_server: FakeOpenAI):
    first = browser.new_context()
    page = first.new_page()
    open_app(page, server.url)
    send(page, "my private diary entry")
    bot_said(page, "ok")
    expect(page.locator("#thread-list label")).to_have_count(1)
    thread_id = page.locator("#thread-list input").first.get_attribute("value")

    second = browser.new_context()
    other = second.new_page()
    open_app(other, server.url)
    expect(other.locator("#thread-list label")).to_have_count(0)
    token = other.evaluate("() => JSON.stringify(localStorage)")
    assert "diary" not in token

    from gradio_client import Client

    client = Client(server.url, verbose=False)
    for token in (None, "anon-0123456789abcdef01234567.00000000000000000000000000000000"):
        with pytest.raises(Exception) as refused:
            client.predict(thread_id, token, api_name="/open_thread")
        assert "diary" not in str(refused.value)
    with pytest.raises(Exception) as refused:
        client.predict(None, None, api_name="/export_json")
    assert "not issued by this server" in str(refused.value)
    first.close()
    second.close()


def files_holding(folder: Path, text: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def test_rename_pin_search_export_and_delete(browser, model_server: FakeOpenAI, tmp_path: Path):
    model_server.plan.clear()
    temp = tmp_path / "server-temp"  # the server's temporary directory: its exports and Gradio's copies
    temp.mkdir()
    server = Server(
        tmp_path, OPENAI_BASE_URL=model_server.base_url, OPENAI_API_KEY="k", THREADKEEPER_MODEL="fake-model",
        THREADKEEPER_MODEL_RETRIES="0", THREADKEEPER_EXPORT_KEEP_S="3", TMPDIR=str(temp),
    ).start()
    try:
        rename_pin_search_export_and_delete(browser, server, temp)
    finally:
        server.stop()


def rename_pin_search_export_and_delete(browser, server: Server, temp: Path) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page = context.new_page()
    open_app(page, server.url)
    for text in ("recipe for leek soup", "train times to Lyon"):
        page.locator("#new-chat").click()
        send(page, text)
        bot_said(page, "ok")
        expect(page.locator("#thread-list")).to_contain_text(text)
    send(page, "and a seat reservation for the Épernay connection")
    expect(page.locator("#chat")).to_contain_text("Épernay")
    expect(page.locator('#chat [data-testid="bot"]')).to_have_count(2, timeout=30_000)
    # The thread's actions sit under its title; rename starts from the current title.
    page.locator("#rename").click()
    box = page.locator("#rename-box textarea, #rename-box input").first
    expect(box).to_have_value("train times to Lyon")
    shot(page, "thread-actions-rename")
    box.fill("Trains")
    page.locator("#rename-save").click()
    expect(page.locator("#thread-title")).to_contain_text("Trains")
    expect(page.locator("#rename-row")).to_be_hidden()
    expect(page.locator("#pin")).to_have_text("☆ Pin")
    page.locator("#pin").click()
    expect(page.locator("#pin")).to_have_text("★ Pinned")  # the button shows the thread's state
    expect(page.locator("#thread-list label").first).to_contain_text("★ Trains")

    page.locator("#search textarea, #search input").first.fill("leek")
    expect(page.locator("#thread-list label")).to_have_count(1)
    expect(page.locator("#thread-list")).to_contain_text("leek soup")
    search = page.locator("#search textarea, #search input").first
    search.fill("epernay RESERVATION")  # words of a later message, not of a title
    expect(page.locator("#thread-list label")).to_have_count(1)
    expect(page.locator("#thread-list")).to_contain_text("Trains")
    # The result shows the message's words in context, the searched ones marked.
    expect(page.locator("#thread-list")).to_contain_text("a seat reservation for the Épernay connection")
    marked = "() => [...(CSS.highlights.get('search-words') || [])].map((r) => r.toString())"
    page.wait_for_function(f"({marked})().length >= 2")
    assert sorted(page.evaluate(marked)) == ["reservation", "Épernay"]
    shot(page, "search-by-message-text")
    search.fill("no such words anywhere")
    expect(page.locator("#thread-list")).to_contain_text("No threads match “no such words anywhere”")
    expect(page.locator("#thread-list input[type=radio]")).to_have_count(0)
    shot(page, "search-no-match")
    search.fill("")
    expect(page.locator("#thread-list label")).to_have_count(2)
    shot(page, "sidebar-actions")

    page.locator("#thread-list label").first.click()  # the pinned "Trains"
    page.locator("#export-json").click()
    link = page.locator("#exported a").first
    expect(link).to_be_visible(timeout=15_000)
    with page.expect_download() as download:
        link.click()
    exported = json.loads(Path(download.value.path()).read_text())
    assert exported["title"] == "Trains" and exported["messages"][0]["content"] == "train times to Lyon"
    assert files_holding(temp, "train times to Lyon")  # the export sits in the server's temporary files ...

    page.locator("#delete").click()
    page.locator("#delete-yes").click()
    expect(page.locator("#thread-list label")).to_have_count(1)
    expect(page.locator("#thread-list")).not_to_contain_text("Trains")
    # ... until THREADKEEPER_EXPORT_KEEP_S (3 s here) has passed: then no copy is left, and the link is dead.
    deadline = time.monotonic() + 30
    while files_holding(temp, "train times to Lyon") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert files_holding(temp, "train times to Lyon") == []
    assert page.request.get(link.get_attribute("href")).status >= 400
    context.close()


def test_an_uploaded_database_answers_questions(browser, server: Server, model_server: FakeOpenAI, tmp_path: Path):
    db = tmp_path / "sales.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE orders (customer TEXT, total REAL)")
    conn.executemany("INSERT INTO orders VALUES (?, ?)", [("Ada", 120.5), ("Grace", 80.0), ("Ada", 42.25)])
    conn.commit()
    conn.close()
    bad = tmp_path / "notes.db"
    bad.write_text("not a database")
    asked = len(model_server.requests)
    model_server.plan.extend([
        ("tool", ("query_database", {"sql": "SELECT sum(total) FROM orders WHERE customer = 'Ada'"})),
        ("tool_result", "The database says:"),
    ])
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    open_app(page, server.url)
    with page.expect_file_chooser() as chooser:
        page.locator("#upload").click()
    chooser.value.set_files(str(bad))
    expect(page.get_by_text("notes.db is not a SQLite database")).to_be_visible(timeout=15_000)
    expect(page.locator("#attachment")).not_to_contain_text("notes.db")
    with page.expect_file_chooser() as chooser:
        page.locator("#upload").click()
    chooser.value.set_files(str(db))
    expect(page.locator("#attachment")).to_contain_text("sales.db", timeout=15_000)
    expect(page.locator("#attachment")).to_contain_text("orders")
    send(page, "How much did Ada spend?")
    bot_said(page, "162.75")
    shot(page, "database-answer")
    assert model_server.requests[asked]["tools"][2]["function"]["name"] == "query_database"
    page.reload()
    open_app(page, server.url)
    page.locator("#thread-list label").first.click()
    expect(page.locator("#attachment")).to_contain_text("sales.db")  # comes back with the thread
    page.locator("#detach").click()
    expect(page.locator("#attachment")).not_to_contain_text("sales.db")
    expect(page.locator("#detach")).to_be_hidden()
    context.close()


def test_model_errors_are_one_line_and_retry_works(browser, server: Server, model_server: FakeOpenAI):
    model_server.plan.extend([("status", 500), ("reply", "answered on retry")])
    context = browser.new_context()
    page = context.new_page()
    open_app(page, server.url)
    send(page, "are you there?")
    bot_said(page, "The model server failed with HTTP 500. Your message is saved")
    expect(page.locator('#chat [data-testid="user"]').last).to_contain_text("are you there?")
    page.locator('#chat button[aria-label="Retry"]').last.click()  # the retry icon on the unanswered message
    bot_said(page, "answered on retry")
    page.reload()
    open_app(page, server.url)
    page.locator("#thread-list label").first.click()
    expect(page.locator('#chat [data-testid="user"]')).to_have_count(1)
    bot_said(page, "answered on retry")
    context.close()


def test_signed_in_user_opens_a_1000_turn_thread_at_its_newest_messages(browser, thousand_turn_thread: Path):
    server = Server(thousand_turn_thread.parent, THREADKEEPER_USERS="alice:wonderland,bob:builder").start()
    try:
        context = browser.new_context(viewport={"width": 390, "height": 844})
        page = context.new_page()
        page.goto(server.url)
        expect(page.get_by_role("heading", name="threadkeeper")).to_be_visible()  # the product's own name, not a bare "Login"
        shot(page, "login-phone")
        page.get_by_label("username").fill("alice")
        page.get_by_label("password").fill("wonderland")
        page.get_by_role("button", name="Login").click()
        expect(page.locator("#sidebar")).not_to_have_class(re.compile(r"\bopen\b"), timeout=10_000)  # closed on a phone
        shot(page, "empty-phone")
        toggle = page.locator("#sidebar .toggle-button").bounding_box()
        assert toggle and toggle["x"] >= 0 and toggle["x"] + toggle["width"] <= 390  # the toggle is whole
        page.locator("#sidebar .toggle-button").click()
        expect(page.locator("#sidebar")).to_have_class(re.compile(r"\bopen\b"))
        expect(page.locator("#who")).to_contain_text("Signed in as alice", timeout=30_000)
        expect(page.locator("#who")).to_be_in_viewport()
        page.wait_for_timeout(600)  # the sidebar's slide ends before the picture
        shot(page, "sidebar-phone")
        page.locator("#thread-list label").first.click()
        expect(page.locator('#chat [data-testid="user"]').last).to_contain_text(human(999).content[:30], timeout=30_000)
        assert page.locator('#chat [data-testid="user"]').count() == 25
        expect(page.locator("#earlier")).to_contain_text("1950 more")
        for control in ("#message", "#send"):  # on screen without scrolling, under the offline banner
            box = page.locator(control).bounding_box()
            assert box and box["y"] >= 0 and box["y"] + box["height"] <= 844, (control, box)
        page.locator("#earlier").click()
        expect(page.locator('#chat [data-testid="user"]')).to_have_count(50)
        shot(page, "long-thread-phone")
        context.close()
        bob = browser.new_context()
        page = bob.new_page()
        page.goto(server.url)
        page.get_by_label("username").fill("bob")
        page.get_by_label("password").fill("builder")
        page.get_by_role("button", name="Login").click()
        expect(page.locator("#who")).to_contain_text("Signed in as bob", timeout=30_000)
        expect(page.locator("#thread-list label")).to_have_count(0)
        page.locator("#sign-out").click()  # a visible way out: back at the sign-in form, and signed out
        expect(page.get_by_label("username")).to_be_visible(timeout=15_000)
        page.goto(server.url)
        expect(page.get_by_label("username")).to_be_visible(timeout=15_000)
        assert page.locator("#who").count() == 0
        bob.close()
    finally:
        server.stop()
