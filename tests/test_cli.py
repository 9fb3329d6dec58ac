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
    assert main(["--db", f"sqlite:///{tmp_path / 'ok.db'}", "show", "nope"]) == 2
    assert capsys.readouterr().err.strip() == "threadkeeper: no thread with id 'nope'"
