"""The chat graph on the real store, with only the model scripted."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from checkpointers import ThreadSaver, open_saver
from graph import Settings, build_graph
from graph.model import OfflineChatModel
from tests.scripted import ScriptedChatModel, echo

OFFLINE = Settings()


def config(thread_id: str, user_id: str = "alice") -> dict:
    return {"configurable": {"thread_id": thread_id, "user_id": user_id}}


def test_offline_mode_says_no_model_is_connected_and_keeps_the_thread(saver: ThreadSaver):
    app = build_graph(checkpointer=saver, settings=OFFLINE)
    app.invoke({"messages": [HumanMessage("remember the word pelican")]}, config("t1"))
    state = app.invoke({"messages": [HumanMessage("what was the word?")]}, config("t1"))
    replies = [m for m in state["messages"] if isinstance(m, AIMessage)]
    assert len(state["messages"]) == 4
    for reply in replies:
        assert "No language model is connected" in reply.content
        assert "OPENAI_API_KEY" in reply.content and "OPENAI_BASE_URL" in reply.content
    info = saver.threads.get("t1", user_id="alice")
    assert (info.title, info.message_count) == ("remember the word pelican", 4)


def test_offline_model_streams_its_reply_token_by_token(saver: ThreadSaver):
    app = build_graph(checkpointer=saver, model=OfflineChatModel(), settings=OFFLINE)
    chunks = [
        chunk.content
        for chunk, meta in app.stream({"messages": [HumanMessage("hi")]}, config("t1"), stream_mode="messages")
        if meta["langgraph_node"] == "model" and chunk.content
    ]
    assert len(chunks) > 10
    assert "".join(chunks) == app.get_state(config("t1")).values["messages"][-1].content


def test_a_thread_resumes_with_its_history_from_a_new_saver(db_path: Path):
    first = ThreadSaver(db_path)
    app = build_graph(checkpointer=first, model=ScriptedChatModel(script=echo), settings=OFFLINE)
    app.invoke({"messages": [HumanMessage("one")]}, config("t1"))
    app.invoke({"messages": [HumanMessage("two")]}, config("t1"))
    first.close()
    model = ScriptedChatModel(script=echo)
    second = ThreadSaver(db_path)
    state = build_graph(checkpointer=second, model=model, settings=OFFLINE).invoke(
        {"messages": [HumanMessage("three")]}, config("t1")
    )
    second.close()
    assert [m.content for m in model.inputs[0][1:]] == ["one", "reply 1: one", "two", "reply 2: two", "three"]
    assert state["messages"][-1].content == "reply 3: three"


def wal_commits(db_path: Path, since: int = 32) -> tuple[int, int]:
    """Commits in the -wal file from byte `since` (its header ends at 32) on, and where it ends."""
    wal = Path(f"{db_path}-wal").read_bytes()
    page_size = int.from_bytes(wal[8:12], "big")
    commits, at = 0, since
    while at + 24 + page_size <= len(wal):
        commits += int.from_bytes(wal[at + 4 : at + 8], "big") != 0  # a commit frame gives the file's size
        at += 24 + page_size
    return commits, at


def test_a_turn_commits_once_although_every_step_looks_for_an_attachment(db_path: Path, monkeypatch):
    # The flusher would write a slow turn's deferred checkpoints after 10 ms; give it no reason to.
    monkeypatch.setattr("checkpointers.engines.sqlite.saver.DEFERRED_WRITES_FLUSH_AFTER", 60.0)
    with ThreadSaver.from_conn_string(f"sqlite:///{db_path}") as saver:
        looked = []
        find = saver.attachment_database
        monkeypatch.setattr(saver, "attachment_database", lambda thread_id: looked.append(thread_id) or find(thread_id))
        app = build_graph(checkpointer=saver, model=ScriptedChatModel(script=echo), settings=OFFLINE)
        app.invoke({"messages": [HumanMessage("one")]}, config("t1"), durability="sync")
        _, end = wal_commits(db_path)
        app.invoke({"messages": [HumanMessage("two")]}, config("t1"), durability="sync")
        commits, _ = wal_commits(db_path, end)
        assert len(looked) == 4  # trim and model, on each of the two turns
        assert commits == 1
        messages = saver.get_tuple(config("t1")).checkpoint["channel_values"]["messages"]
        assert [m.content for m in messages] == ["one", "reply 1: one", "two", "reply 2: two"]


def make_sales_db(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, total REAL)")
    conn.executemany("INSERT INTO orders VALUES (?, ?, ?)", [(1, "Ada", 120.5), (2, "Grace", 80.0), (3, "Ada", 42.25)])
    conn.commit()
    conn.close()
    return path


def tool_then_answer(sql: str):
    """First call: ask the database tool; second call: answer with the tool's result."""

    def script(messages):
        last = messages[-1]
        if isinstance(last, ToolMessage):
            return AIMessage(f"From the database: {last.content}")
        return AIMessage("", tool_calls=[{"name": "query_database", "args": {"sql": sql}, "id": f"call-{len(messages)}"}])

    return script


def test_the_model_answers_from_the_attached_database(store, tmp_path: Path):
    saver = store
    saver.attachments.attach("t1", make_sales_db(tmp_path / "sales.db"), user_id="alice")
    model = ScriptedChatModel(script=tool_then_answer("SELECT sum(total) FROM orders WHERE customer = 'Ada'"))
    app = build_graph(checkpointer=saver, model=model, settings=OFFLINE)
    state = app.invoke({"messages": [HumanMessage("How much did Ada spend?")]}, config("t1"))
    answer = state["messages"][-1]
    assert "162.75" in answer.content
    assert [type(m).__name__ for m in state["messages"]] == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    assert "orders" in model.inputs[0][0].content  # the system prompt names the tables


def test_without_an_attachment_the_model_gets_no_database_tools(saver: ThreadSaver):
    seen = []

    def script(messages):
        seen.append(messages[0].content)
        return AIMessage("fine")

    app = build_graph(checkpointer=saver, model=ScriptedChatModel(script=script), settings=OFFLINE)
    app.invoke({"messages": [HumanMessage("hi")]}, config("t1"))
    assert "database" not in seen[0]


def test_the_attachment_comes_back_when_the_thread_resumes_and_goes_with_copy_and_delete(store_url: str, tmp_path: Path):
    source = make_sales_db(tmp_path / "sales.db")
    model = ScriptedChatModel(script=tool_then_answer("SELECT count(*) FROM orders"))
    with open_saver(store_url) as with_store:
        with_store.attachments.attach("t1", source, user_id="alice")
    with open_saver(store_url) as reopened:
        app = build_graph(checkpointer=reopened, model=model, settings=OFFLINE)
        state = app.invoke({"messages": [HumanMessage("how many orders?")]}, config("t1"))
        assert "3" in state["messages"][-1].content.split("count(*)")[-1]
        reopened.copy_thread("t1", "t2")
        original, copy = reopened.attachments.get("t1"), reopened.attachments.get("t2")
        assert copy is not None and copy.name == original.name and copy.tables == original.tables
        reopened.delete_thread("t1")
        assert reopened.attachments.get("t1") is None
        if isinstance(reopened, ThreadSaver):  # a SQLite store keeps each thread's own copy beside the file
            assert copy.path != original.path and not original.path.exists() and copy.path.exists()
        state = app.invoke({"messages": [HumanMessage("and now?")]}, config("t2"))
        assert "3" in state["messages"][-1].content.split("count(*)")[-1]


def test_the_database_sandbox_refuses_writes_attach_and_runaway_queries(saver: ThreadSaver, tmp_path: Path):
    from graph.tools import run_query

    stored = saver.attachments.attach("t1", make_sales_db(tmp_path / "sales.db")).path
    before = hashlib.sha256(stored.read_bytes()).hexdigest()
    refusals = {
        "INSERT INTO orders VALUES (9, 'Eve', 1)": "read-only",
        "DELETE FROM orders": "read-only",
        "DROP TABLE orders": "read-only",
        "UPDATE orders SET total = 0": "read-only",
        f"ATTACH DATABASE '{tmp_path / 'other.db'}' AS other": "read-only",
        "PRAGMA journal_mode = WAL": "read-only",
        "PRAGMA user_version = 7": "read-only",
        "CREATE TABLE x (a)": "read-only",
        "SELECT 1; DROP TABLE orders": "one SQL statement",
        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT count(*) FROM r": "longer than",
    }
    for sql, expected in refusals.items():
        answer = run_query(stored, sql, row_limit=10, timeout_s=0.3)
        assert expected in answer, (sql, answer)
        assert "\n" not in answer
    assert "3 row(s)" in run_query(stored, "SELECT * FROM orders", row_limit=10, timeout_s=1)
    assert "stopped at the 2-row limit" in run_query(stored, "SELECT * FROM orders", row_limit=2, timeout_s=1)
    assert "customer | TEXT" in run_query(stored, "PRAGMA table_info(orders)", row_limit=10, timeout_s=1)
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == before
    assert not (tmp_path / "other.db").exists()


def test_a_model_that_calls_the_tool_without_an_attachment_is_told_so(saver: ThreadSaver):
    model = ScriptedChatModel(script=tool_then_answer("SELECT 1"))
    app = build_graph(checkpointer=saver, model=model, settings=OFFLINE)
    state = app.invoke({"messages": [HumanMessage("query something")]}, config("t1"))
    assert "No database is attached" in state["messages"][-1].content
