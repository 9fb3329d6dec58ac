"""The admin page in Chromium: an administrator sees the charts; anyone else sees one sentence.

Screenshots (desktop and a 390x844 phone) go to test-artifacts/."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.fake_openai import FakeOpenAI
from tests.test_isolation import Browser
from tests.test_web_browser import CHROMIUM, Server, browser, shot  # noqa: F401  (the browser fixture)

TOKEN = "admin-token-0123456789abcdef"


@pytest.fixture
def served(tmp_path: Path):
    with FakeOpenAI() as model:
        s = Server(tmp_path, OPENAI_BASE_URL=model.base_url, OPENAI_API_KEY="k", THREADKEEPER_MODEL="fake-model",
                   THREADKEEPER_MODEL_RETRIES="0", THREADKEEPER_ADMIN_TOKEN=TOKEN).start()
        try:
            for name in ("ann", "ben"):
                person = Browser(s.url, name, "anonymous")
                person.send(f"hello from {name}")
            yield s
        finally:
            s.stop()


def test_the_admin_page_shows_the_charts_to_the_token_holder_only(browser, served: Server):
    for viewport, name in (({"width": 1280, "height": 900}, "admin-desktop"), ({"width": 390, "height": 844}, "admin-phone")):
        page = browser.new_page(viewport=viewport)
        page.goto(served.url + "admin/")
        expect(page.locator("#admin-message")).to_contain_text("admin token", timeout=30_000)
        expect(page.locator("#admin-panel")).to_be_hidden()
        page.locator("#admin-token input").fill("not-the-token-0000000000")
        page.locator("#admin-unlock").click()
        expect(page.locator("#admin-message")).to_contain_text("administrators", timeout=30_000)
        expect(page.locator("#admin-panel")).to_be_hidden()
        page.locator("#admin-token input").fill(TOKEN)
        page.locator("#admin-unlock").click()
        expect(page.locator("#admin-headline")).to_contain_text("threads stored", timeout=30_000)
        expect(page.locator("#admin-headline")).to_contain_text("2 active users")
        for plot in ("messages", "users", "tokens", "database", "sweeps"):
            expect(page.locator(f"#plot-{plot} canvas, #plot-{plot} svg").first).to_be_visible(timeout=30_000)
        page.locator("#admin-period label", has_text="30 d").click()
        expect(page.locator("#admin-headline")).to_contain_text("the last 30 days", timeout=30_000)
        page.wait_for_timeout(500)  # let the plots draw before the picture
        shot(page, name)
        page.close()
