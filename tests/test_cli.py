"""The `threadkeeper` command against a real database file."""

from __future__ import annotations

from checkpointers import ThreadSaver
from tests.chat import chat_graph, human
from ui.cli import main


def test_status_threads_and_show(db_path, capsys):
    saver = ThreadSaver(db_path)
    chat_graph(saver).invoke({"messages": [human(1)]}, {"configurable": {"thread_id": "t-1", "user_id": "alice"}})
    saver.close()
    url = f"sqlite:///{db_path}"
    assert main(["--db", url, "status"]) == 0
    assert "threads        1 of 1 users" in capsys.readouterr().out
    assert main(["--db", url, "threads", "--user", "alice"]) == 0
    out = capsys.readouterr().out
    assert "t-1" in out and "    2  " in out
    assert main(["--db", url, "show", "t-1"]) == 0
    out = capsys.readouterr().out
    assert "[human] " + human(1).content in out and "[ai] " in out


def test_errors_are_one_line_with_a_nonzero_exit(tmp_path, capsys):
    bad = tmp_path / "bad.db"
    bad.write_text("not sqlite")
    assert main(["--db", f"sqlite:///{bad}", "status"]) == 2
    assert capsys.readouterr().err.strip() == f"threadkeeper: {bad} is not a SQLite database"
    ThreadSaver(tmp_path / "ok.db").close()
    assert main(["--db", f"sqlite:///{tmp_path / 'ok.db'}", "show", "nope"]) == 2
    assert capsys.readouterr().err.strip() == "threadkeeper: no thread with id 'nope'"


import os
import re
import subprocess
import sys

from tests.fake_openai import FakeOpenAI


def run_cli(args: list[str], stdin: str, db_path, **env_extra) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "THREADKEEPER_"))}
    env.update({"THREADKEEPER_DATABASE_URL": f"sqlite:///{db_path}", **env_extra})
    return subprocess.run(
        [sys.executable, "-m", "ui.cli", *args], input=stdin, capture_output=True, text=True, env=env, timeout=120
    )


def test_chat_in_the_terminal_then_resume_the_thread(db_path):
    first = run_cli(["chat", "--user", "alice"], "my name is Ada\n/quit\n", db_path)
    assert first.returncode == 0, first.stderr
    assert "No language model is connected (offline mode)" in first.stdout
    assert 'Your message "my name is Ada" is saved' in first.stdout
    thread_id = re.search(r"new thread (\S+)", first.stdout).group(1)
    second = run_cli(["chat", "--thread", thread_id, "--user", "alice"], "what is my name?\n", db_path)
    assert f"resuming thread {thread_id} (2 messages)" in second.stdout
    assert "you> my name is Ada" in second.stdout
    assert "with 2 of your messages in view" in second.stdout
    listing = run_cli(["threads", "--user", "alice"], "", db_path)
    assert thread_id in listing.stdout and "my name is Ada" in listing.stdout and "    4  " in listing.stdout


def test_chat_refuses_another_users_thread(db_path):
    first = run_cli(["chat", "--user", "alice"], "secret plans\n", db_path)
    thread_id = re.search(r"new thread (\S+)", first.stdout).group(1)
    other = run_cli(["chat", "--thread", thread_id, "--user", "bob"], "show me\n", db_path)
    assert other.returncode == 2
    assert other.stderr.strip() == f"threadkeeper: no thread with id {thread_id!r}"
    assert "secret plans" not in other.stdout


def test_chat_reports_a_model_error_in_one_line_and_retries(db_path):
    with FakeOpenAI() as server:
        server.plan.extend([("status", 500), ("reply", "back again")])
        result = run_cli(
            ["chat", "--user", "alice"], "hello\n/retry\n", db_path,
            OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="k", THREADKEEPER_MODEL_RETRIES="0",
        )
    assert "error: The model server failed with HTTP 500. Your message is saved; retry to send it again. (type /retry)" in result.stdout
    assert "assistant> back again" in result.stdout
    thread_id = re.search(r"new thread (\S+)", result.stdout).group(1)
    shown = run_cli(["show", thread_id], "", db_path)
    assert shown.stdout.count("[human] hello") == 1 and "[ai] back again" in shown.stdout


def test_attach_a_database_from_the_command_line(db_path, tmp_path, capsys):
    import sqlite3

    source = tmp_path / "pets.db"
    conn = sqlite3.connect(source)
    conn.execute("CREATE TABLE pets (name TEXT)")
    conn.commit()
    conn.close()
    saver = ThreadSaver(db_path)
    chat_graph(saver).invoke({"messages": [human(1)]}, {"configurable": {"thread_id": "t-9", "user_id": "alice"}})
    saver.close()
    assert main(["--db", f"sqlite:///{db_path}", "attach", "t-9", str(source), "--user", "alice"]) == 0
    assert "attached pets.db to thread t-9" in capsys.readouterr().out
    saver = ThreadSaver(db_path)
    assert saver.attachments.get("t-9", user_id="alice").tables == ["pets"]
    saver.close()
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    assert main(["--db", f"sqlite:///{db_path}", "attach", "t-9", str(notes), "--user", "alice"]) == 2
    assert capsys.readouterr().err.strip().startswith("threadkeeper: notes.txt cannot be attached: upload a SQLite database")
    assert main(["--db", f"sqlite:///{db_path}", "attach", "t-9", str(source), "--user", "bob"]) == 2
    assert capsys.readouterr().err.strip() == "threadkeeper: no thread with id 't-9'"


# -- papercuts (issue 17): typos, the store that was opened, one view of the threads -----


def chat_here(monkeypatch, capsys, db_path, args: list[str], stdin: str = "/quit\n") -> tuple[int, str, str]:
    """`threadkeeper chat ...` in this process, offline, reading `stdin`."""
    import io

    for name in [n for n in os.environ if n.startswith(("OPENAI_", "THREADKEEPER_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    status = main(["--db", f"sqlite:///{db_path}", "chat", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_a_mistyped_thread_id_is_an_error_and_new_threads_are_asked_for(db_path, tmp_path, monkeypatch, capsys):
    status, out, _ = chat_here(monkeypatch, capsys, db_path, ["--user", "alice"], "plan a trip\n/quit\n")
    assert status == 0
    thread_id = re.search(r"new thread (\S+)", out).group(1)
    for args in (["chat", "--thread", thread_id[:-1], "--user", "alice"], ["attach", thread_id[:-1], str(tmp_path / "x.db")]):
        assert main(["--db", f"sqlite:///{db_path}", *args]) == 2
        assert capsys.readouterr().err.strip() == f"threadkeeper: no thread with id {thread_id[:-1]!r}"
    status, out, _ = chat_here(monkeypatch, capsys, db_path, ["--new", "--thread", "my-trip", "--user", "alice"], "hello\n")
    assert status == 0 and "new thread my-trip" in out
    status, out, _ = chat_here(monkeypatch, capsys, db_path, ["--thread", "my-trip", "--user", "alice"])
    assert status == 0 and "resuming thread my-trip (2 messages)" in out
    status, _, err = chat_here(monkeypatch, capsys, db_path, ["--new", "--thread", "my-trip", "--user", "alice"])
    assert status == 2
    assert err.strip() == "threadkeeper: a thread with id 'my-trip' exists already: leave out --new to resume it"
    status, out, _ = chat_here(monkeypatch, capsys, db_path, ["--new", "--user", "alice"])
    assert status == 0 and re.search(r"new thread [0-9a-f-]{36}", out)
    saver = ThreadSaver(db_path)
    try:
        assert sorted(t.thread_id for t in saver.threads.list("alice").threads) == sorted([thread_id, "my-trip"])
    finally:
        saver.close()


def test_commands_that_read_the_store_never_create_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("THREADKEEPER_DATABASE_URL", raising=False)
    missing = tmp_path / "data" / "threadkeeper.db"
    for args in (
        ["threads"], ["threads", "--user", "alice"], ["show", "t-1"], ["status"], ["export", "--user", "alice"],
        ["attach", "t-1", "sales.db"], ["sweep", "--dry-run"], ["delete-user", "alice", "--yes"],
        ["chat", "--thread", "t-1"],
    ):
        assert main(args) == 2, args
        assert capsys.readouterr().err.strip() == (
            f"threadkeeper: no store at {missing} (set THREADKEEPER_DATABASE_URL or --db)"
        ), args
        assert not missing.parent.exists(), args


def test_the_listing_names_the_store_it_read(db_path, capsys):
    ThreadSaver(db_path).close()
    assert main(["--db", f"sqlite:///{db_path}", "threads", "--user", "alice"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"store: {db_path.resolve()}", "no threads for user 'alice'"]


def test_threads_without_a_user_lists_every_users_threads_with_the_owner(db_path, capsys):
    saver = ThreadSaver(db_path)
    graph = chat_graph(saver)
    for thread_id, user in (("t-alice", "alice"), ("t-bob", "bob"), ("t-nobody", None)):
        configurable = {"thread_id": thread_id} | ({"user_id": user} if user else {})
        graph.invoke({"messages": [human(1)]}, {"configurable": configurable})
    saver.close()
    assert main(["--db", f"sqlite:///{db_path}", "threads"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["THREAD", "OWNER", "UPDATED", "(UTC)", "MSGS", "TITLE"]
    owners = {line.split()[0]: line.split()[1] for line in lines[2:]}
    assert owners == {"t-alice": "alice", "t-bob": "bob", "t-nobody": "-"}
    assert main(["--db", f"sqlite:///{db_path}", "threads", "--user", "bob"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "OWNER" not in lines[1] and [line.split()[0] for line in lines[2:]] == ["t-bob"]
