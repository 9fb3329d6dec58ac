"""Usage statistics: the store's counters, kept as it writes, equal a full recount.

Chats go through every door that writes (the web chat's turn, the terminal chat,
Python with a model that reports token usage, the sessions API with tool
results), then deletions by users, a retention sweep and an import; the
counters are compared with a recount of everything the store holds or held:
each message counted once by its id across the whole checkpoint history of
its thread, read before the thread was deleted.
"""

from __future__ import annotations

import io
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

from hypothesis import given, settings, strategies as st
from langchain_core.messages import AIMessage, ToolMessage

from checkpointers import ANY_USER, ThreadSaver, open_saver, stats
from checkpointers.retention import RetentionPolicy, Sweeper, delete_user
from checkpointers.transfer import export_user, import_document, read_document
from graph import build_graph
from ui import cli
from ui.admin import parse_days
from ui.web import WebChat

from tests.scripted import ScriptedChatModel

KINDS = {"human": "human_messages", "ai": "ai_messages", "tool": "tool_messages"}


def recount(saver: ThreadSaver, thread_ids: list[str]) -> Counter:
    """Every message of these threads, once by id over all their checkpoints; with tokens."""
    found = Counter()
    for thread_id in thread_ids:
        seen: dict[str, object] = {}
        for tup in saver.list({"configurable": {"thread_id": thread_id}}):
            for message in tup.checkpoint["channel_values"].get("messages") or []:
                seen.setdefault(message.id, message)
        for message in seen.values():
            found[KINDS.get(message.type, "other_messages")] += 1
            _, tin, tout, ein, eout = stats.figures(message)
            found["tokens_in"] += tin
            found["tokens_out"] += tout
            found["estimated_tokens_in"] += ein
            found["estimated_tokens_out"] += eout
    return found


def all_threads(saver: ThreadSaver) -> list[str]:
    return [t.thread_id for t in saver.threads.list(ANY_USER, limit=500).threads]


def counters(saver: ThreadSaver) -> dict:
    return stats.usage(saver, None)["totals"]


def test_counters_equal_a_full_recount_after_chats_at_every_door_deletions_a_sweep_and_an_import(
    store_url: str, tmp_path: Path, monkeypatch
):
    """On both engines, every door included: the sessions API, export and import."""
    monkeypatch.setenv("THREADKEEPER_DATA_DIR", str(tmp_path))  # the web chat's secret, on PostgreSQL
    url = store_url
    created = 0
    users = {"alice", "dora", "carol"}
    with open_saver(url) as saver:
        # The web chat's turn (offline model), twice on one thread, then a regenerate.
        web = WebChat(saver)
        token = web.identity.new_token()
        anon = web.identity.user_of(token, None)
        users.add(anon)
        for text in ("plan a weekend in Lyon", "and trains?"):
            list(web.respond({"text": text, "user": anon}, "web-1", [], token, None))
        _, pending = web.regenerate("web-1", token, None)
        list(web.respond(pending, "web-1", [], token, None))
        created += 1
        # Python, with a model that reports its token usage.
        replies = iter([
            AIMessage("Lyon: two days", usage_metadata={"input_tokens": 120, "output_tokens": 7, "total_tokens": 127}),
            AIMessage("Trains from Paris", usage_metadata={"input_tokens": 150, "output_tokens": 9, "total_tokens": 159}),
        ])
        reporting = ScriptedChatModel(script=lambda messages: next(replies))
        agent = build_graph(checkpointer=saver, model=reporting)
        for text in ("weekend?", "trains?"):
            agent.invoke({"messages": [("user", text)]}, {"configurable": {"thread_id": "py-1", "user_id": "alice"}})
        created += 1
        # The sessions API, with a tool result; and a thread made by attaching nothing but a session.
        session = saver.sessions.put_session("bob", session_id="sess-1")
        saver.sessions.put_message(session.session_id, ("human", "look it up"), user_id="bob")
        saver.sessions.put_message(session.session_id, ToolMessage("42 rows", tool_call_id="c1"), user_id="bob")
        saver.sessions.put_message(session.session_id, ("ai", "there are 42"), user_id="bob")
        saver.threads.pin("sess-1")
        created += 1
        users.add("bob")
        for i in range(3):
            agent_offline = build_graph(checkpointer=saver)
            agent_offline.invoke({"messages": [("user", f"old {i}")]}, {"configurable": {"thread_id": f"old-{i}", "user_id": "dora"}})
            created += 1
        saver.threads.pin("py-1")
        saver.threads.pin("web-1")
    # The terminal chat, in its own process's way: `threadkeeper chat` with typed lines.
    monkeypatch.setattr("sys.stdin", io.StringIO("hello from the terminal\n/quit\n"))
    monkeypatch.setattr("builtins.input", lambda prompt="": _read_line())
    assert cli.main(["--db", url, "chat", "--user", "carol", "--new", "--thread", "cli-1"]) == 0
    created += 1

    with open_saver(url) as saver:
        before = recount(saver, all_threads(saver))
        document = read_document(_dump(export_user(saver, "dora")))
        # Deletions by users: one thread, then everything of dora's; and a sweep of carol's.
        saver.delete_thread("web-1")
        deleted = 1 + delete_user(saver, "dora")
        later = datetime.now(timezone.utc) + timedelta(days=40)
        report = Sweeper(saver, RetentionPolicy(days=30), clock=lambda: later).sweep()
        assert report.threads == 1  # cli-1: the others are pinned or gone
        # An import brings dora's threads back: new threads, their messages stored again.
        import_document(saver, document, report=lambda line: None)
        created += len(document.threads)
        imported = recount(saver, [t.thread_id for t in document.threads])
        figures = counters(saver)
        remaining = len(all_threads(saver))

    expected = before + imported
    for name in ("human_messages", "ai_messages", "tool_messages", "other_messages", "tokens_in", "tokens_out",
                 "estimated_tokens_in", "estimated_tokens_out"):
        assert figures[name] == expected[name], name
    assert figures["tokens_in"] == 270 and figures["tokens_out"] == 16
    assert figures["tool_messages"] == 1
    assert figures["threads_created"] == created
    assert figures["threads_deleted"] == deleted == 4
    assert figures["threads_swept"] == 1 and figures["sweeps"] == 1
    assert remaining == created - deleted - 1
    assert figures["active_users"] == len(users)  # the web visitor, alice, bob, dora, carol
    assert figures["messages"] == sum(expected[k] for k in ("human_messages", "ai_messages", "tool_messages", "other_messages"))


def test_delete_user_takes_their_id_out_of_the_statistics_and_keeps_the_day_totals(store_url: str):
    with open_saver(store_url) as saver:
        agent = build_graph(checkpointer=saver)
        for user in ("alice", "bob"):
            agent.invoke({"messages": [("user", "hello")]}, {"configurable": {"thread_id": f"{user}-1", "user_id": user}})
        saver.delete_thread("bob-1")  # bob keeps no thread, only his counters
        before = counters(saver)
        assert delete_user(saver, "alice") == 1
        assert delete_user(saver, "bob") == 0
        with saver.maintenance.reading() as query:
            kept = query("SELECT user_id FROM usage_user_days UNION ALL SELECT user_id FROM usage_users")
        after = counters(saver)
    assert kept == []
    assert after["human_messages"] == before["human_messages"] == 2
    assert after["threads_created"] == before["threads_created"] == 2
    assert after["active_users"] == 0 and before["active_users"] == 2


def _read_line() -> str:
    import sys

    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\n")


def _dump(document: dict) -> str:
    import json

    return json.dumps(document)


class _saver:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> ThreadSaver:
        self.saver = ThreadSaver(self.path)
        return self.saver

    def __exit__(self, *exc: object) -> None:
        self.saver.close()


def test_a_year_of_history_is_a_few_hundred_rows(tmp_path: Path):
    with _saver(tmp_path / "t.db") as saver:
        start = datetime(2025, 1, 1).date()
        with saver._write():
            for n in range(365):
                day = (start + timedelta(days=n)).isoformat()
                stats.record(saver.conn, day, human_messages=10, ai_messages=10, threads_created=2)
                stats.record_user(saver.conn, day, f"user-{n % 7}", messages=20)
        rows = saver.conn.execute("SELECT count(*) FROM usage_days").fetchone()[0]
        figures = stats.usage(saver, None)
    assert rows == 365
    assert figures["totals"]["messages"] == 7300 and figures["totals"]["active_users"] == 7
    assert len(figures["days"]) == 365


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=12), st.integers(-10**9, 10**9).map(str), st.none(), st.just("all")))
def test_days_is_a_whole_number_from_1_to_36600_or_all_and_nothing_else(raw):
    try:
        days = parse_days(raw)
    except ValueError as exc:
        assert "days must be" in str(exc)
        return
    assert days is None or (isinstance(days, int) and 1 <= days <= 36_600)
    if days is not None:
        assert str(days) == raw.strip().lstrip("0") or raw.strip().isdigit()
