"""`threadkeeper import-json`: a folder of <session-uuid>.json files becomes threads, on
either engine (each test that touches a store runs once per engine: `store_url`)."""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage, messages_to_dict

from checkpointers import open_saver
from graph import build_graph
from tests.scripted import ScriptedChatModel, echo
from ui.cli import main

WHEN = datetime(2025, 3, 14, 15, 9, 26, 535000, tzinfo=timezone.utc)


def session_file(folder: Path, messages, *, name: str | None = None, wrapped: bool = False, when: datetime = WHEN) -> Path:
    data = messages_to_dict(messages)
    path = folder / (name or f"{uuid.uuid4()}.json")
    path.write_text(json.dumps({"messages": data} if wrapped else data))
    os.utime(path, (when.timestamp(), when.timestamp()))
    return path


def sqlite_file(path: Path, rows: int = 3) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE orders (id INTEGER, total REAL)")
    conn.executemany("INSERT INTO orders VALUES (?, ?)", [(i, i * 1.5) for i in range(rows)])
    conn.commit()
    conn.close()
    return path


def conversation(n: int) -> list:
    return [
        SystemMessage("You are terse."),
        HumanMessage(f"question number {n}: what is in my orders table?"),
        AIMessage("", tool_calls=[{"name": "run_sql", "args": {"sql": "select 1"}, "id": f"call-{n}"}]),
        ToolMessage("[[1]]", tool_call_id=f"call-{n}"),
        AIMessage(f"answer {n}"),
    ]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Four good sessions (two with a database, one wrapped in {"messages": ...}) and every kind of bad file."""
    folder = tmp_path / "sessions"
    folder.mkdir()
    for n in range(4):
        path = session_file(folder, conversation(n), wrapped=n == 3)
        if n < 2:
            sqlite_file(path.with_suffix(".db"))
    good = json.dumps(messages_to_dict(conversation(9)))
    (folder / f"{uuid.uuid4()}.json").write_text("")
    (folder / f"{uuid.uuid4()}.json").write_text(good[: len(good) // 2])
    (folder / f"{uuid.uuid4()}.json").write_text("{this is not json}")
    (folder / f"{uuid.uuid4()}.json").write_text(json.dumps({"session": "x"}))
    (folder / f"{uuid.uuid4()}.json").write_text(json.dumps([{"role": "user"}]))
    (folder / f"{uuid.uuid4()}.json").write_text("[]")
    (folder / "notes.json").write_text(good)
    (folder / "readme.txt").write_text("not a session")
    return folder


def run(url: str, *args: str) -> int:
    return main(["--db", url, "import-json", *args])


def checkpoint_count(saver) -> int:
    with saver.maintenance.reading() as query:
        ((n,),) = query("SELECT count(*) FROM checkpoints")
    return n


def test_each_good_file_becomes_a_thread_and_each_bad_one_is_reported(folder, store_url, capsys):
    assert run(store_url, str(folder), "--user", "alice") == 1
    out = capsys.readouterr().out.splitlines()
    problems = {line.split(":")[0]: line for line in out[:-1]}
    assert len(problems) == 7 and len(out) == 8, out
    reasons = sorted(line.split(": ", 1)[1] for line in problems.values())
    assert reasons == sorted(
        [
            "the file is empty",
            "the file is truncated: its JSON ends early",
            "the file is not valid JSON (Expecting property name enclosed in double quotes at line 1, column 2)",
            "the file does not hold a list of LangChain messages (messages_to_dict format)",
            "message 1 is not a LangChain message dict (needs 'type' and 'data')",
            "the file holds no messages",
            "the name is not a session uuid (expected <uuid>.json)",
        ]
    )
    assert "notes.json" in problems
    assert out[-1].startswith("imported 4 sessions (20 messages), skipped 0 already there, failed 7, in ")
    assert out[-1].endswith("sessions/s)")


def test_an_imported_session_is_a_thread_like_any_other(folder, store_url, capsys):
    run(store_url, str(folder), "--user", "alice")
    capsys.readouterr()
    good = sorted(p for p in folder.glob("*.json") if p.with_suffix(".db").exists())
    with open_saver(store_url) as saver:
        threads = saver.threads.list("alice").threads
        assert len(threads) == 4
        session_id = good[0].stem
        info = saver.threads.get(session_id, user_id="alice")
        first_human = next(m["data"]["content"] for m in json.loads(good[0].read_text()) if m["type"] == "human")
        assert info.title == first_human
        assert info.message_count == 5
        assert datetime.fromisoformat(info.created_at) == WHEN == datetime.fromisoformat(info.updated_at)
        assert saver.attachments.get(session_id, user_id="alice").tables == ["orders"]
        listed = saver.sessions.list_messages(session_id, user_id="alice")
        assert [m.message.type for m in listed] == ["system", "human", "ai", "tool", "ai"]
        assert all(m.created_at == WHEN for m in listed)
        # The agent picks the conversation up where the file left it.
        model = ScriptedChatModel(script=echo)
        agent = build_graph(checkpointer=saver, model=model)
        agent.invoke({"messages": [HumanMessage("and now?")]}, {"configurable": {"thread_id": session_id, "user_id": "alice"}})
        assert [m.type for m in model.inputs[-1]][1:] == ["human", "ai", "tool", "ai", "human"]
        assert model.inputs[-1][1].content == first_human


def test_a_second_run_adds_nothing_and_says_so(tmp_path, store_url, capsys):
    folder = tmp_path / "sessions"
    folder.mkdir()
    for n in range(3):
        session_file(folder, conversation(n))
    assert run(store_url, str(folder)) == 0
    capsys.readouterr()
    with open_saver(store_url) as saver:
        before = checkpoint_count(saver)
    assert run(store_url, str(folder)) == 0
    out = capsys.readouterr().out
    assert out.startswith("nothing new: all 3 sessions were imported before. imported 0 sessions (0 messages), skipped 3")
    with open_saver(store_url) as saver:
        assert checkpoint_count(saver) == before
        assert saver.threads.count(None) == 3


def test_a_session_whose_database_is_damaged_waits_for_a_fixed_file(tmp_path, store_url, capsys):
    folder = tmp_path / "sessions"
    folder.mkdir()
    path = session_file(folder, conversation(1))
    path.with_suffix(".db").write_text("not a database")
    assert run(store_url, str(folder), "--user", "bob") == 1
    line = capsys.readouterr().out.splitlines()[0]
    assert line == f"{path.name}: not imported, its database cannot be attached: {path.stem}.db is not a SQLite database"
    with open_saver(store_url) as saver:
        assert saver.threads.count("bob") == 0
    sqlite_file(path.with_suffix(".db").with_name("fixed.db"))
    path.with_suffix(".db").unlink()
    (path.parent / "fixed.db").rename(path.with_suffix(".db"))
    assert run(store_url, str(folder), "--user", "bob") == 0
    with open_saver(store_url) as saver:
        assert saver.attachments.get(path.stem, user_id="bob").tables == ["orders"]


def test_a_thread_of_another_user_with_the_same_id_is_left_alone(tmp_path, store_url, capsys):
    folder = tmp_path / "sessions"
    folder.mkdir()
    path = session_file(folder, conversation(1))
    assert run(store_url, str(folder), "--user", "alice") == 0
    assert run(store_url, str(folder), "--user", "bob") == 0
    out = capsys.readouterr().out
    assert f"{path.name}: skipped: a thread with this id already exists for another user" in out
    with open_saver(store_url) as saver:
        assert saver.threads.get(path.stem).user_id == "alice"


def test_a_missing_folder_is_one_line(tmp_path, store_url, capsys):
    assert run(store_url, str(tmp_path / "nope")) == 2
    assert capsys.readouterr().err.strip() == f"threadkeeper: {tmp_path / 'nope'} is not a folder"


def test_help_shows_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["import-json", "--help"])
    assert "example: threadkeeper import-json ./exported-sessions --user alice" in capsys.readouterr().out
