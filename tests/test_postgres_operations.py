"""The operator's side on PostgreSQL: erasure, sweeps from several processes, the
command line and the web chat's server, against a real server (tests/postgres.py)."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import psycopg
from langchain_core.messages import HumanMessage, messages_to_dict

from checkpointers import ANY_USER, open_saver, stats
from checkpointers.engines.postgres.maintenance import THREAD_TABLES
from checkpointers.engines.postgres.schema import MIGRATIONS
from checkpointers.retention import RetentionPolicy, Sweeper, delete_user, recent_sweeps
from checkpointers.transfer import export_user
from tests.chat import echo_graph
from tests.postgres import tables_holding
from tests.serve import ROOT, Server
from tests.test_isolation import Browser
from ui.identity import SECRET_FILE
from ui.cli import main as cli

MARKER = "zqxerasuremarker7731"
"""One search word: the thread's title and its message's search words hold it as text."""


def _say(saver, thread_id: str, text: str, user: str) -> None:
    config = {"configurable": {"thread_id": thread_id, "user_id": user}}
    echo_graph(saver, "noted: ").invoke({"messages": [HumanMessage(text)]}, config)


def test_delete_user_leaves_their_text_in_no_table_and_vacuums_the_thread_tables(postgres_url):
    with open_saver(postgres_url) as saver:
        _say(saver, "alices-1", f"my secret is {MARKER}", "alice")
        _say(saver, "alices-2", f"{MARKER} again, in another thread", "alice")
        _say(saver, "bobs", "nothing to see", "bob")
        assert {"threads", "messages"} <= tables_holding(postgres_url, MARKER)  # the check below can fail
        assert delete_user(saver, "alice") == 2
        assert [t.thread_id for t in saver.threads.list(ANY_USER).threads] == ["bobs"]
    assert tables_holding(postgres_url, MARKER) == set()
    with psycopg.connect(postgres_url) as conn:
        vacuumed = conn.execute(
            "SELECT relname FROM pg_stat_user_tables WHERE schemaname = current_schema() AND last_vacuum IS NOT NULL"
        ).fetchall()
    assert set(THREAD_TABLES) <= {name for (name,) in vacuumed}


def test_the_stores_figures_and_readiness_come_from_the_schema(postgres_url):
    with open_saver(postgres_url) as saver:
        assert stats.readiness(saver) is None
        _say(saver, "t", "hello", "alice")
        later = datetime.now(timezone.utc) + timedelta(days=31)
        assert Sweeper(saver, RetentionPolicy(days=30), clock=lambda: later).sweep().threads == 1
        figures = stats.store_figures(saver)
        usage = stats.usage(saver, 7)
    assert figures["threads"] == 0 and figures["sweeps"] == 1 and figures["threads_swept"] == 1
    assert figures["database_bytes"] > 0
    assert usage["store"]["last_sweep"]["threads"] == 1 and usage["days"][-1]["database_bytes"] > 0
    assert usage["totals"]["human_messages"] == 1 and usage["totals"]["active_users"] == 1
    with open_saver(postgres_url) as saver:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (99, 'from the future')")
        assert stats.readiness(saver) == f"the store's schema is version 99, not {len(MIGRATIONS)}"


def _cli_chat(monkeypatch, url: str, lines: str, *args: str) -> int:
    typed = io.StringIO(lines)

    def read_line(prompt: str = "") -> str:
        line = typed.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    monkeypatch.setattr("builtins.input", read_line)
    return cli(["--db", url, "chat", *args])


def _exported(tmp_path) -> str:
    """A document `threadkeeper export` wrote, of a SQLite store."""
    with open_saver(f"sqlite:///{tmp_path / 'elsewhere.db'}") as saver:
        _say(saver, "e-1", "from elsewhere", "alice")
        (tmp_path / "alice.json").write_text(json.dumps(export_user(saver, "alice")))
    return tmp_path / "alice.json"


def test_every_command_works_on_a_postgresql_store_or_says_in_one_sentence_why_not(
    postgres_url, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # no langgraph.json here: the retention policy's defaults
    url = postgres_url
    assert cli(["--db", url, "status"]) == 2
    assert capsys.readouterr().err.startswith("threadkeeper: no threadkeeper store in the PostgreSQL database ")
    with psycopg.connect(url) as conn:  # ... and nothing was created to find out
        assert conn.execute("SELECT to_regclass('threads')").fetchone() == (None,)

    assert _cli_chat(monkeypatch, url, "plan a trip to Lyon\n/quit\n", "--user", "alice", "--new", "--thread", "t-1") == 0
    with sqlite3.connect(tmp_path / "sales.db") as db:
        db.execute("CREATE TABLE sales (region TEXT, amount REAL)")
    assert _cli_chat(monkeypatch, url, "and trains?\n/attach sales.db\n/quit\n", "--user", "alice", "--thread", "t-1") == 0
    out = capsys.readouterr().out
    assert "resuming thread t-1 (2 messages)" in out and "attached sales.db (tables: sales)" in out
    assert cli(["--db", url, "threads"]) == 0
    out = capsys.readouterr().out
    assert "store: postgresql://postgres@127.0.0.1:5432/" in out and "t-1" in out and "alice" in out
    assert cli(["--db", url, "show", "t-1"]) == 0
    assert "[human] and trains?" in capsys.readouterr().out
    assert cli(["--db", url, "status"]) == 0
    out = capsys.readouterr().out
    assert "threads        1 of 1 users" in out and f"schema version {len(MIGRATIONS)}" in out
    assert cli(["--db", url, "stats", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["totals"]["human_messages"] == 2 and figures["store"]["threads"] == 1
    assert cli(["--db", url, "stats", "--days", "7"]) == 0
    assert "messages       4 (2 human, 2 AI" in capsys.readouterr().out

    monkeypatch.delenv("THREADKEEPER_ENCRYPTION_KEY", raising=False)
    monkeypatch.delenv("THREADKEEPER_NEW_ENCRYPTION_KEY", raising=False)
    for args, sentence in (
        (["rotate-key", "--decrypt"], "threadkeeper: postgresql://postgres@127.0.0.1:5432/"),
        (["attach", "t-9", "sales.db"], "threadkeeper: no thread with id 't-9'"),
        (["attach", "t-1", "missing.db"], "threadkeeper: "),
    ):
        assert cli(["--db", url, *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith(sentence) and err.count("\n") == 1, err
        assert args[0] != "rotate-key" or "is not encrypted: set THREADKEEPER_NEW_ENCRYPTION_KEY to the key" in err

    assert cli(["--db", url, "export", "--user", "alice", "--output", str(tmp_path / "t-1.json")]) == 0
    assert "exported 1 threads of 'alice' (4 messages, 1 attachments) to " in capsys.readouterr().out
    assert [t["thread_id"] for t in json.loads((tmp_path / "t-1.json").read_text())["threads"]] == ["t-1"]
    assert cli(["--db", url, "import", str(_exported(tmp_path))]) == 0
    assert "imported 1 threads (2 messages, 0 attachments) for 'alice'" in capsys.readouterr().out
    sessions = tmp_path / "sessions"
    sessions.mkdir()
    (sessions / f"{uuid.uuid4()}.json").write_text(json.dumps(messages_to_dict([HumanMessage("from a file")])))
    assert cli(["--db", url, "import-json", str(sessions), "--user", "alice"]) == 0
    assert capsys.readouterr().out.startswith("imported 1 sessions (1 messages)")

    assert cli(["--db", url, "sweep", "--dry-run"]) == 0
    assert "dry run: 0 threads" in capsys.readouterr().out
    _cli_chat(monkeypatch, url, "bob was here\n/quit\n", "--user", "bob", "--new", "--thread", "b-1")
    assert cli(["--db", url, "delete-user", "bob", "--yes"]) == 0
    assert "deleted 1 threads of 'bob'; their rows are deleted and the tables vacuumed" in capsys.readouterr().out
    assert cli(["--db", url, "sweep", "--days", "0.000000001"]) == 0
    assert "sweep deleted 3 threads" in capsys.readouterr().out  # t-1 and the two imported
    assert cli(["--db", url, "status"]) == 0
    assert "last sweep" in capsys.readouterr().out


def test_the_web_chat_serves_from_postgresql(postgres_url, tmp_path):
    server = Server(tmp_path, THREADKEEPER_DATABASE_URL=postgres_url, THREADKEEPER_DATA_DIR=str(tmp_path / "secret"))
    server.start()
    try:
        ready = httpx.get(server.url + "readyz", timeout=30)
        assert ready.status_code == 200 and ready.json()["store"] == "ok"
        person = Browser(server.url, "visitor", "anonymous")
        person.send("plan a weekend in Quokkaville")
        listed = person.call("refresh", textbox="")
        assert listed.success and "Quokkaville" in json.dumps(listed.messages)
        with open_saver(postgres_url) as saver:
            (thread,) = saver.threads.list(ANY_USER).threads
            assert [m.type for m in saver.read_messages(thread.thread_id).messages] == ["human", "ai"]
        assert (tmp_path / "secret" / SECRET_FILE).is_file()  # the cookie secret, where the docs say
    finally:
        server.stop()
    log = "".join(p.read_text() for p in tmp_path.glob("server-*.log"))
    assert "(database postgresql://postgres@127.0.0.1:5432/" in log


def test_two_processes_sweeping_at_once_delete_each_expired_thread_once(postgres_url, tmp_path):
    expired = 20
    with open_saver(postgres_url) as saver:
        for n in range(expired):
            _say(saver, f"old-{n}", "hello", "alice")
        _say(saver, "old-pinned", "hello", "alice")
        saver.threads.pin("old-pinned")
        newest_expired = datetime.fromisoformat(saver.threads.get("old-pinned").updated_at)
        for n in range(3):
            _say(saver, f"young-{n}", "hello", "bob")
    now = newest_expired + timedelta(days=30, microseconds=1)  # the young threads are inside the window
    start = tmp_path / "start"
    start.mkdir()
    sweepers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.sweeper", postgres_url, now.isoformat(), str(start), "2"],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )
        for _ in range(2)
    ]
    reports = [json.loads(p.communicate(timeout=120)[0]) for p in sweepers]
    assert all(p.returncode == 0 for p in sweepers)
    assert sum(r["threads"] for r in reports) == expired
    assert sorted(bool(r["skipped"]) for r in reports) == [False, True]  # they met: one worked, one skipped
    with open_saver(postgres_url) as saver:
        remaining = {t.thread_id for t in saver.threads.list(ANY_USER, limit=100).threads}
        swept = stats.usage(saver, None)["totals"]["threads_swept"]
        recorded = [s["threads"] for s in recent_sweeps(saver) if not s["dry_run"]]
    assert remaining == {"old-pinned", "young-0", "young-1", "young-2"}
    assert swept == expired and recorded == [expired]
