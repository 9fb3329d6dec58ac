"""The web chat's per-thread downloads, without a browser: what they hold, on either engine, and
how long the server keeps them (`THREADKEEPER_EXPORT_KEEP_S`)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from graph import Settings
from ui.identity import Identity
from ui.web import EXPORT_KEEP_S, WebChat, export_keep_s


@pytest.mark.parametrize("raw", ["ten", "0", "-5", "1.5", ""])
def test_a_bad_export_lifetime_is_one_clear_error(raw):
    with pytest.raises(ValueError, match=r"^THREADKEEPER_EXPORT_KEEP_S must be a whole number of seconds"):
        export_keep_s({"THREADKEEPER_EXPORT_KEEP_S": raw})
    assert export_keep_s({}) == EXPORT_KEEP_S
    assert export_keep_s({"THREADKEEPER_EXPORT_KEEP_S": "30"}) == 30


def test_the_servers_own_copies_of_exports_go_once_they_are_old(saver, monkeypatch):
    monkeypatch.setenv("THREADKEEPER_EXPORT_KEEP_S", "20")
    chat = WebChat(saver, settings=Settings.from_env({}), identity=Identity(b"test-secret" * 4, {}))
    old, new = chat.exports.folder / "old", chat.exports.folder / "new"
    for folder in (old, new):
        folder.mkdir()
        (folder / "thread.json").write_text("{}")
    past = time.time() - 21
    os.utime(old, (past, past))
    assert chat.exports.prune() == 1
    assert sorted(p.name for p in chat.exports.folder.iterdir()) == ["new"]


def test_a_thread_downloads_as_markdown_and_json_from_either_engine(store):
    from langchain_core.messages import HumanMessage

    from tests.chat import echo_graph

    chat = WebChat(store, settings=Settings.from_env({}), identity=Identity(b"test-secret" * 4, {}))
    token = chat.identity.new_token()
    user = chat.user(token, None)
    config = {"configurable": {"thread_id": "trip", "user_id": user}}
    echo_graph(store, "noted: ").invoke({"messages": [HumanMessage("a weekend in Lyon")]}, config)
    store.threads.update_metadata("trip", {"topic": "travel"}, user_id=user)

    exported = json.loads(Path(chat.export("trip", "json", token, None)).read_text())
    assert (exported["thread_id"], exported["title"], exported["metadata"]) == ("trip", "a weekend in Lyon", {"topic": "travel"})
    assert [(m["type"], m["content"]) for m in exported["messages"]] == [
        ("human", "a weekend in Lyon"), ("ai", "noted: a weekend in Lyon"),
    ]
    text = Path(chat.export("trip", "md", token, None)).read_text()
    assert text.startswith("# a weekend in Lyon") and "**Assistant:**\n\nnoted: a weekend in Lyon" in text
