"""`threadkeeper import-checkpoints`: threads written by LangGraph's stock savers move in whole.

The sources are real databases written by the stock libraries through a real
graph: `SqliteSaver` on a file, `PostgresSaver` on a fresh database of the
server on 127.0.0.1:5432 (dropped after each test; a missing server fails).
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.types import Command, interrupt

from checkpointers import ThreadSaver
from checkpointers.conversation import iso
from checkpointers.stock_import import import_checkpoints, open_stock_source
from checkpointers.threads import title_from_messages
from ui.cli import main

POSTGRES = "postgresql://postgres@127.0.0.1:5432"


def stock_graph(checkpointer: Any):
    """A chat graph whose model answers at once, and asks first when told to approve something."""

    def model(state: MessagesState) -> dict:
        last = state["messages"][-1]
        reply_id = f"ai-{len(state['messages'])}-{last.id}"
        if last.content.startswith("approve"):
            answer = interrupt(f"may I {last.content}?")
            return {"messages": [AIMessage(f"{answer}: {last.content} done", id=reply_id)]}
        return {"messages": [AIMessage(f"about {last.content!r}: noted", id=reply_id)]}

    builder = StateGraph(MessagesState)
    builder.add_node("model", model)
    builder.add_edge(START, "model")
    builder.add_edge("model", END)
    return builder.compile(checkpointer=checkpointer)


def research_graph(checkpointer: Any):
    """A graph whose one node is a graph: its checkpoints go to a namespace of their own."""

    def search(state: MessagesState) -> dict:
        return {"messages": [AIMessage(f"found 3 papers on {state['messages'][-1].content}", id=f"found-{len(state['messages'])}")]}

    inner = StateGraph(MessagesState)
    inner.add_node("search", search)
    inner.add_edge(START, "search")
    inner.add_edge("search", END)
    builder = StateGraph(MessagesState)
    builder.add_node("research", inner.compile())
    builder.add_edge(START, "research")
    builder.add_edge("research", END)
    return builder.compile(checkpointer=checkpointer)


def said(text: str) -> dict:
    return {"messages": [HumanMessage(text, id=f"h-{text}")]}


def run_config(thread_id: str, **metadata: Any) -> dict:
    return {"configurable": {"thread_id": thread_id}, "metadata": metadata}


def write_threads(saver: Any, *, user_key: str = "user_id") -> None:
    """Alice's thread with three turns and a fork from turn one, and one run by a graph
    with a subgraph; Bob's, stopped at an interrupt with its write pending; and a
    thread nobody owns."""
    graph = stock_graph(saver)
    alice = run_config("trip", **{user_key: "alice"})
    for text in ("plan a weekend in Lyon", "trains from Paris", "a hotel near the station"):
        graph.invoke(said(text), alice)
    after_turn_one = next(s for s in graph.get_state_history(alice) if len(s.values["messages"]) == 2)
    forked = graph.update_state(after_turn_one.config, said("actually, Rome instead"))
    graph.invoke(said("and the trains to Rome"), {**alice, "configurable": forked["configurable"]})
    bob = run_config("refund", **{user_key: "bob"})
    graph.invoke(said("order 42 arrived broken"), bob)
    graph.invoke(said("approve a refund of 30 euros"), bob)
    nobody = run_config("anon")
    graph.invoke(said("hello"), nobody)
    graph.invoke(said("what can you do"), nobody)
    research_graph(saver).invoke(said("checkpoint storage"), run_config("research", **{user_key: "alice"}))


GRAPHS = {"anon": stock_graph, "refund": stock_graph, "research": research_graph, "trip": stock_graph}
THREADS = tuple(GRAPHS)
OWNERS = {"anon": None, "refund": "bob", "research": "alice", "trip": "alice"}


@dataclass
class StockDatabase:
    """A stock checkpoint database: where it is, a writer on it, and a fingerprint of its contents."""

    url: str
    saver: Callable[[], Any]
    fingerprint: Callable[[], Any]


@contextmanager
def sqlite_stock(path: Path) -> Iterator[StockDatabase]:
    @contextmanager
    def saver() -> Iterator[SqliteSaver]:
        conn = sqlite3.connect(path, check_same_thread=False)
        try:
            yield SqliteSaver(conn)
        finally:
            conn.close()

    def fingerprint() -> tuple[str, int]:
        return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns

    yield StockDatabase(f"sqlite:///{path}", saver, fingerprint)


@contextmanager
def postgres_stock() -> Iterator[StockDatabase]:
    import psycopg
    from langgraph.checkpoint.postgres import PostgresSaver

    name = f"threadkeeper_import_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{POSTGRES}/test", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{POSTGRES}/{name}"

    @contextmanager
    def saver() -> Iterator[PostgresSaver]:
        with PostgresSaver.from_conn_string(url) as stock:
            stock.setup()
            yield stock

    def fingerprint() -> list:
        with psycopg.connect(url) as conn:
            return [
                conn.execute(f"SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM {table} t").fetchone()
                for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes", "checkpoint_migrations")
            ]

    try:
        yield StockDatabase(url, saver, fingerprint)
    finally:
        with psycopg.connect(f"{POSTGRES}/test", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def stock(request, tmp_path: Path) -> Iterator[StockDatabase]:
    if request.param == "sqlite":
        with sqlite_stock(tmp_path / "old checkpoints #1?.sqlite") as database:  # read by path, not as URI syntax
            yield database
    else:
        with postgres_stock() as database:
            yield database


@pytest.fixture
def written(stock: StockDatabase) -> StockDatabase:
    with stock.saver() as saver:
        write_threads(saver)
    return stock


def cli(db_path: Path, *args: str) -> int:
    return main(["--db", f"sqlite:///{db_path}", *args])


def thread(thread_id: str) -> dict:
    return {"configurable": {"thread_id": thread_id}}


def comparable(item) -> tuple:
    """A checkpoint tuple as both savers must give it: writes in one order (the stock
    API does not hand out `task_path`, so writes of several tasks sort by task id)."""
    return (
        item.config["configurable"],
        item.checkpoint,
        item.metadata,
        item.parent_config and item.parent_config["configurable"],
        sorted(item.pending_writes, key=lambda w: (w[0], w[1], repr(w[2]))),
    )


def to_millisecond(ts: str) -> datetime:
    moment = datetime.fromisoformat(ts)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def table_counts(db_path: Path) -> dict[str, int]:
    conn = sqlite3.connect(db_path)
    try:
        return {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("threads", "checkpoints", "channel_values", "writes", "messages")
        }
    finally:
        conn.close()


def test_every_checkpoint_write_and_state_arrives_and_the_thread_index_is_built(written, db_path, capsys):
    before = written.fingerprint()
    assert cli(db_path, "import-checkpoints", written.url) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("importing 4 threads from the ")
    assert "imported 4 threads" in out and "failed 0" in out
    assert written.fingerprint() == before  # not a byte changed (and the file's time neither)

    saver = ThreadSaver(db_path)
    try:
        with written.saver() as stock:
            for thread_id in THREADS:
                theirs = list(stock.list(thread(thread_id)))
                ours = list(saver.list(thread(thread_id)))
                assert [t.config["configurable"]["checkpoint_id"] for t in ours] == [
                    t.config["configurable"]["checkpoint_id"] for t in theirs
                ]
                assert [comparable(t) for t in ours] == [comparable(t) for t in theirs]
                stock_app, our_app = GRAPHS[thread_id](stock), GRAPHS[thread_id](saver)
                assert our_app.get_state(thread(thread_id)) == stock_app.get_state(thread(thread_id))
                assert list(our_app.get_state_history(thread(thread_id))) == list(
                    stock_app.get_state_history(thread(thread_id))
                )
                info = saver.threads.get(thread_id)
                assert info.user_id == OWNERS[thread_id]
                first_messages = next(t for t in reversed(theirs) if t.checkpoint["channel_values"].get("messages"))
                assert info.title == title_from_messages(first_messages.checkpoint["channel_values"]["messages"])
                assert info.created_at == iso(theirs[-1].checkpoint["ts"])
                assert info.updated_at == iso(theirs[0].checkpoint["ts"])
                assert info.message_count == len(theirs[0].checkpoint["channel_values"]["messages"])
                said_at = {}  # each message dated by the first checkpoint that held it, to the millisecond
                for t in reversed(theirs):
                    for message in t.checkpoint["channel_values"].get("messages", []):
                        said_at.setdefault(message.id, to_millisecond(t.checkpoint["ts"]))
                listed = saver.sessions.list_messages(thread_id, user_id=info.user_id)
                assert [(m.message_id, m.created_at) for m in listed] == [
                    (m.id, said_at[m.id]) for m in theirs[0].checkpoint["channel_values"]["messages"]
                ]
            assert len(list(saver.list(thread("trip")))) > 12  # the fork came along: 3 turns of 3 and 4 more
            assert {t.config["configurable"]["checkpoint_ns"].split(":")[0] for t in saver.list(thread("research"))} == {
                "", "research"
            }

            # Each thread carries on here as it would have there.
            stock_app, our_app = stock_graph(stock), stock_graph(saver)
            mine = our_app.invoke(said("and a museum"), thread("trip"))
            expected = stock_app.invoke(said("and a museum"), thread("trip"))
            assert mine["messages"] == expected["messages"]
            assert our_app.get_state(thread("refund")).interrupts[0].value == "may I approve a refund of 30 euros?"
            mine = our_app.invoke(Command(resume="yes"), thread("refund"))
            expected = stock_app.invoke(Command(resume="yes"), thread("refund"))
            assert mine["messages"] == expected["messages"]
            assert mine["messages"][-1].content == "yes: approve a refund of 30 euros done"
        assert [t.thread_id for t in saver.threads.list("alice").threads] == ["trip", "research"]  # trip went on here
    finally:
        saver.close()


def test_a_second_run_adds_nothing(written, db_path, capsys):
    assert cli(db_path, "import-checkpoints", written.url) == 0
    counts = table_counts(db_path)
    capsys.readouterr()
    assert cli(db_path, "import-checkpoints", written.url) == 0
    out = capsys.readouterr().out
    assert "imported 0 threads (0 checkpoints, 0 writes), completed 0 begun before, 4 already there" in out
    assert table_counts(db_path) == counts


@pytest.mark.parametrize("stop_in", ["put", "put_writes"])
def test_an_interrupted_run_is_finished_by_the_next_without_duplicates(written, tmp_path, db_path, stop_in):
    clean = tmp_path / "clean.db"
    assert cli(clean, "import-checkpoints", written.url) == 0

    saver = ThreadSaver(db_path)
    calls = [0]
    original = getattr(saver, stop_in)

    def failing(config: dict, *args: Any, **kwargs: Any) -> Any:
        if config["configurable"]["thread_id"] == "refund":  # the second thread, after two calls
            calls[0] += 1
            if calls[0] == 3:
                raise RuntimeError("power cut")
        return original(config, *args, **kwargs)

    setattr(saver, stop_in, failing)
    with open_stock_source(written.url) as source, pytest.raises(RuntimeError, match="power cut"):
        import_checkpoints(saver, source, report=lambda line: None)
    saver.close()
    partial = table_counts(db_path)
    assert partial["threads"] == 2 and partial["checkpoints"] < table_counts(clean)["checkpoints"]

    saver = ThreadSaver(db_path)
    try:
        with open_stock_source(written.url) as source:
            summary = import_checkpoints(saver, source, report=lambda line: None)
        assert (summary.imported, summary.completed, summary.unchanged, summary.failed) == (2, 1, 1, 0)
        with written.saver() as stock:
            for thread_id in THREADS:
                assert [comparable(t) for t in saver.list(thread(thread_id))] == [
                    comparable(t) for t in stock.list(thread(thread_id))
                ]
                clean_saver = ThreadSaver(clean)
                try:
                    a, b = saver.threads.get(thread_id), clean_saver.threads.get(thread_id)
                finally:
                    clean_saver.close()
                assert (a.user_id, a.title, a.created_at, a.updated_at, a.message_count) == (
                    b.user_id, b.title, b.created_at, b.updated_at, b.message_count
                )
    finally:
        saver.close()
    assert table_counts(db_path)["checkpoints"] == table_counts(clean)["checkpoints"]
    assert table_counts(db_path)["writes"] == table_counts(clean)["writes"]


def test_since_keeps_threads_last_updated_after_the_date(stock, db_path, capsys):
    with stock.saver() as saver:
        graph = stock_graph(saver)
        graph.invoke(said("old news"), run_config("old", user_id="alice"))
        time.sleep(0.01)
        cut = datetime.now(timezone.utc)
        time.sleep(0.01)
        graph.invoke(said("fresh news"), run_config("new", user_id="alice"))
    assert cli(db_path, "import-checkpoints", stock.url, "--since", cut.isoformat()) == 0
    out = capsys.readouterr().out
    assert "imported 1 threads" in out and "1 last updated before --since" in out
    saver = ThreadSaver(db_path)
    try:
        assert [t.thread_id for t in saver.threads.list("alice").threads] == ["new"]
    finally:
        saver.close()


def test_the_owner_comes_from_the_chosen_metadata_key(stock, db_path):
    with stock.saver() as saver:
        write_threads(saver, user_key="owner")
    assert cli(db_path, "import-checkpoints", stock.url, "--user-key", "metadata.owner") == 0
    saver = ThreadSaver(db_path)
    try:
        assert {thread_id: saver.threads.get(thread_id).user_id for thread_id in THREADS} == OWNERS
    finally:
        saver.close()


def test_a_thread_id_the_store_uses_already_is_reported_not_merged(written, db_path, capsys):
    saver = ThreadSaver(db_path)
    stock_graph(saver).invoke(said("my own trip"), {"configurable": {"thread_id": "trip", "user_id": "carol"}})
    saver.close()
    assert cli(db_path, "import-checkpoints", written.url) == 1
    out = capsys.readouterr().out
    assert "thread trip: not imported: the store has a different thread with this id" in out
    assert "imported 3 threads" in out and "failed 1" in out
    saver = ThreadSaver(db_path)
    try:
        assert saver.threads.get("trip").user_id == "carol" and saver.threads.get("trip").message_count == 2
    finally:
        saver.close()


def test_what_is_not_a_langgraph_checkpoint_database_is_one_sentence(tmp_path, db_path, capsys):
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE pets (name TEXT)")
    conn.commit()
    conn.close()
    text = tmp_path / "notes.txt"
    text.write_text("not a database, just notes\n" * 100)
    store = tmp_path / "store.db"
    ThreadSaver(store).close()
    expected = {
        other: "other.db is not a LangGraph checkpoint database: it has no checkpoints and writes tables as SqliteSaver makes them",
        text: "notes.txt is not a LangGraph checkpoint database: it is not a SQLite database",
        store: "store.db is a threadkeeper store, not a LangGraph checkpoint database (move threads between stores with threadkeeper export and import)",
        tmp_path / "missing.sqlite": f"there is no file at {tmp_path / 'missing.sqlite'}",
    }
    for source, sentence in expected.items():
        before = source.read_bytes() if source.exists() else None
        assert cli(db_path, "import-checkpoints", str(source)) == 2
        assert capsys.readouterr().err.strip() == f"threadkeeper: {sentence}"
        assert (source.read_bytes() if source.exists() else None) == before


def test_a_postgres_database_without_langgraph_tables_is_one_sentence(db_path, capsys):
    with postgres_stock() as database:  # a fresh database: PostgresSaver.setup() never ran on it
        assert cli(db_path, "import-checkpoints", database.url) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("threadkeeper: the PostgresSaver database 'threadkeeper_import_")
        assert err.endswith(
            "on 127.0.0.1:5432 is not a LangGraph checkpoint database: it has no checkpoints, checkpoint_blobs, "
            "checkpoint_writes and checkpoint_migrations tables as PostgresSaver makes them"
        )


def test_import_checkpoints_help_shows_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["import-checkpoints", "--help"])
    assert "example: threadkeeper import-checkpoints sqlite:///" in capsys.readouterr().out
