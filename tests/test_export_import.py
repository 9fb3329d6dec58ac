"""`threadkeeper export` and `threadkeeper import`: a user's data as one document, losslessly,
on either engine and from one engine to the other.

Every test runs once per engine (`store_url`, tests/conftest.py); `other_engine_url` is an
empty store of the other engine, `empty_url` another empty store of the same one.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from checkpointers import ANY_USER, ThreadSaver, open_saver
from tests.chat import chat_graph, human
from ui.cli import main


def sqlite_file(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE pets (name TEXT, legs INTEGER)")
    conn.executemany("INSERT INTO pets VALUES (?, ?)", [("cat", 4), ("bird", 2)])
    conn.commit()
    conn.close()
    return path


@pytest.fixture
def alice_and_bob(store_url: str, tmp_path: Path) -> str:
    """Alice's threads made every way the store allows, and one of Bob's; the store's URL."""
    with open_saver(store_url) as saver:
        graph = chat_graph(saver)
        for n in range(3):
            graph.invoke({"messages": [human(n)]}, {"configurable": {"thread_id": f"chat-{n}", "user_id": "alice"}})
        graph.invoke({"messages": [human(9)]}, {"configurable": {"thread_id": "chat-0", "user_id": "alice"}})
        saver.threads.rename("chat-1", "Renamed by hand")
        saver.threads.pin("chat-2")
        saver.attachments.attach("chat-0", sqlite_file(tmp_path / "pets.db"), user_id="alice")
        csv = tmp_path / "sales.csv"
        csv.write_text("region,total\nnorth,12.5\nsouth,7\n")
        saver.attachments.attach("chat-1", csv, user_id="alice")
        sessions = saver.sessions
        sessions.put_session("alice", "typed", metadata={"blob": b"\x00\xff", "n": 3, "x": 0.25, "ok": True, "s": "café"})
        sessions.put_message(
            "typed", HumanMessage("exact time"), user_id="alice", metadata={"lang": "fr", "raw": b"\x01"},
            created_at=datetime(2024, 2, 29, 12, 0, 0, 123457, tzinfo=timezone.utc),
        )
        sessions.put_message("typed", AIMessage("d'accord", response_metadata={"model_name": "m"}), user_id="alice")
        sessions.put_session("alice", "empty", title="Nothing said yet", metadata={"k": "v"})
        graph.invoke({"messages": [human(5)]}, {"configurable": {"thread_id": "bobs", "user_id": "bob"}})
    return store_url


@pytest.fixture
def other_engine_url(store_url: str, request, tmp_path: Path) -> str:
    """An empty store of the engine `store_url` is not."""
    if store_url.startswith("sqlite:"):
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path / 'other.db'}"


@pytest.fixture
def empty_url(store_url: str, request, tmp_path: Path) -> Iterator[str]:
    """Another empty store of `store_url`'s engine."""
    if store_url.startswith("sqlite:"):
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    from tests.postgres import fresh_schema

    with fresh_schema(request.getfixturevalue("postgres_database")) as url:
        yield url


def cli(url: str, *args: str) -> int:
    return main(["--db", url, *args])


def export(url: str, target: Path, capsys) -> dict:
    assert cli(url, "export", "--user", "alice", "--output", str(target)) == 0
    capsys.readouterr()
    return json.loads(target.read_text())


def test_a_round_trip_loses_nothing(alice_and_bob, tmp_path, capsys):
    url = alice_and_bob
    first = export(url, tmp_path / "alice.json", capsys)
    assert (first["format"], first["version"], first["user_id"]) == ("threadkeeper-export", 1, "alice")
    assert sorted(t["thread_id"] for t in first["threads"]) == ["chat-0", "chat-1", "chat-2", "empty", "typed"]
    by_id = {t["thread_id"]: t for t in first["threads"]}
    assert by_id["chat-1"]["title"] == "Renamed by hand" and by_id["chat-2"]["pinned"] is True
    assert by_id["chat-1"]["attachment"]["name"] == "sales.csv"
    assert by_id["typed"]["metadata"]["blob"] == {"$bytes": "00ff"}
    with open_saver(url) as saver:
        stored_attachment = saver.attachments.get("chat-0").path.read_bytes()
        assert saver.delete_threads(list(by_id)) == 5

    assert cli(url, "import", str(tmp_path / "alice.json")) == 0
    assert capsys.readouterr().out.strip() == (
        "imported 5 threads (10 messages, 2 attachments) for 'alice', skipped 0, failed 0"
    )
    second = export(url, tmp_path / "again.json", capsys)
    first.pop("exported_at"), second.pop("exported_at")
    assert second == first
    assert base64.b64decode(by_id["chat-0"]["attachment"]["base64"]) == stored_attachment

    with open_saver(url) as saver:
        typed = saver.sessions.get_session("typed", user_id="alice")
        assert typed.metadata == {"blob": b"\x00\xff", "n": 3, "x": 0.25, "ok": True, "s": "café"}
        [exact, _] = saver.sessions.list_messages("typed", user_id="alice")
        assert exact.created_at == datetime(2024, 2, 29, 12, 0, 0, 123457, tzinfo=timezone.utc)
        assert exact.metadata == {"lang": "fr", "raw": b"\x01"}
        assert saver.attachments.get("chat-1", user_id="alice").tables == ["sales"]
        # An imported thread carries on like any other.
        chat_graph(saver).invoke({"messages": [human(7)]}, {"configurable": {"thread_id": "chat-0", "user_id": "alice"}})
        assert saver.threads.get("chat-0", user_id="alice").message_count == 6
        assert saver.threads.get("bobs", user_id="bob").message_count == 2


def test_a_document_moves_to_the_other_engine_and_back_unchanged(alice_and_bob, other_engine_url, empty_url, tmp_path, capsys):
    """SQLite -> PostgreSQL -> SQLite, and PostgreSQL -> SQLite -> PostgreSQL: every export
    the same document (messages, their times and metadata, titles, pins, attachments)."""
    first = export(alice_and_bob, tmp_path / "here.json", capsys)
    assert cli(other_engine_url, "import", str(tmp_path / "here.json")) == 0
    assert capsys.readouterr().out.strip().endswith("for 'alice', skipped 0, failed 0")
    there = export(other_engine_url, tmp_path / "there.json", capsys)
    assert cli(empty_url, "import", str(tmp_path / "there.json")) == 0
    capsys.readouterr()
    back = export(empty_url, tmp_path / "back.json", capsys)
    for document in (first, there, back):
        document.pop("exported_at")
    assert there == first and back == first
    with open_saver(other_engine_url) as saver:
        [exact, _] = saver.sessions.list_messages("typed", user_id="alice")
        assert exact.created_at == datetime(2024, 2, 29, 12, 0, 0, 123457, tzinfo=timezone.utc)
        assert saver.attachments.get("chat-1", user_id="alice").tables == ["sales"]
        assert saver.threads.get("empty", user_id="alice").title == "Nothing said yet"


def test_importing_again_skips_existing_threads_unless_replace(alice_and_bob, tmp_path, capsys):
    url = alice_and_bob
    export(url, tmp_path / "alice.json", capsys)
    assert cli(url, "import", str(tmp_path / "alice.json")) == 0
    out = capsys.readouterr().out.splitlines()
    assert "thread chat-0: skipped, it already exists (use --replace)" in out
    assert out[-1] == "imported 0 threads (0 messages, 0 attachments) for 'alice', skipped 5, failed 0"
    with open_saver(url) as saver:
        saver.sessions.put_message("typed", HumanMessage("added after the export"), user_id="alice")
    assert cli(url, "import", str(tmp_path / "alice.json"), "--replace") == 0
    assert capsys.readouterr().out.strip().endswith("for 'alice', skipped 0, failed 0")
    with open_saver(url) as saver:
        assert [m.message.content for m in saver.sessions.list_messages("typed", user_id="alice")] == ["exact time", "d'accord"]
    # Another user's thread of the same id is never replaced.
    assert cli(url, "import", str(tmp_path / "alice.json"), "--user", "bob", "--replace") == 0
    assert "thread chat-0: skipped, it already exists for another user" in capsys.readouterr().out


def test_import_for_another_user_on_a_fresh_store(alice_and_bob, empty_url, tmp_path, capsys):
    export(alice_and_bob, tmp_path / "alice.json", capsys)
    assert cli(empty_url, "import", str(tmp_path / "alice.json"), "--user", "carol") == 0
    with open_saver(empty_url) as saver:
        assert saver.threads.count("carol") == 5 and saver.threads.count("alice") == 0


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda text: text[: len(text) // 2], "it is truncated: its JSON ends early"),
        (lambda text: "<html>", "it is not valid JSON (Expecting value at line 1, column 1)"),
        (lambda text: json.dumps({"threads": []}), 'it is not a threadkeeper export (no "format": "threadkeeper-export")'),
        (lambda text: text.replace('"version": 1', '"version": 7'), "it is format version 7, newer than this threadkeeper reads (1); upgrade to import it"),
        (lambda text: text.replace('"type": "human"', '"type": "martian"', 1), "a message is not valid"),
        (lambda text: text.replace('"created_at": "', '"created_at": "yesterday', 1), "created_at 'yesterday"),
        (lambda text: text.replace('"base64": "', '"base64": "!!', 1), "is not base64"),
    ],
)
def test_a_damaged_document_is_refused_in_one_line_and_nothing_is_written(
    alice_and_bob, empty_url, tmp_path, capsys, damage, problem
):
    export(alice_and_bob, tmp_path / "alice.json", capsys)
    damaged = tmp_path / "damaged.json"
    damaged.write_text(damage((tmp_path / "alice.json").read_text()))
    assert cli(empty_url, "import", str(damaged)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("threadkeeper: damaged.json cannot be imported: ") and problem in err, err
    assert "\n" not in err
    with open_saver(empty_url) as saver:
        assert saver.threads.list(ANY_USER).threads == []


def test_export_to_standard_output_and_help(alice_and_bob, capsys):
    assert cli(alice_and_bob, "export", "--user", "bob") == 0
    captured = capsys.readouterr()
    assert [t["thread_id"] for t in json.loads(captured.out)["threads"]] == ["bobs"]
    assert captured.err.strip() == "exported 1 threads of 'bob' (2 messages, 0 attachments) to standard output"
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "example: threadkeeper export --user alice --output alice.json" in capsys.readouterr().out


def test_a_round_trip_into_an_encrypted_store(alice_and_bob, empty_url, tmp_path, capsys, monkeypatch):
    """With a key, titles and attachments are stored encrypted, on either engine; the
    document holds them in clear."""
    first = export(alice_and_bob, tmp_path / "plain.json", capsys)  # the plain store's export...
    monkeypatch.setenv("THREADKEEPER_ENCRYPTION_KEY", "correct horse battery staple, twice over")
    vault = empty_url
    assert cli(vault, "import", str(tmp_path / "plain.json")) == 0  # ...into an encrypted one
    capsys.readouterr()
    second = export(vault, tmp_path / "vault.json", capsys)
    first.pop("exported_at"), second.pop("exported_at")
    assert second == first
    with open_saver(vault) as saver:  # the key comes from the environment
        assert saver.sessions.get_session("chat-1", user_id="alice").title == "Renamed by hand"
        assert b"SQLite format 3" not in saver.attachments.get("chat-0").path.read_bytes()
        if isinstance(saver, ThreadSaver):
            stored_title = saver.conn.execute("SELECT title FROM threads WHERE thread_id = 'chat-1'").fetchone()[0]
            assert "Renamed" not in stored_title
    if not vault.startswith("sqlite:"):
        from tests.postgres import tables_holding

        assert tables_holding(alice_and_bob, "Renamed by hand")  # the check below can fail
        assert tables_holding(vault, "Renamed by hand") == set()
