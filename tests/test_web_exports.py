"""How long the web chat keeps exports (`THREADKEEPER_EXPORT_KEEP_S`), without a browser."""

from __future__ import annotations

import os
import time

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
