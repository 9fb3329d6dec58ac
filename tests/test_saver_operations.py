"""Deleting, copying, pruning and run deletion: on both engines (`store`), and what is
SQLite's own (its file's pages, its segments) on a real file (`saver`)."""

from __future__ import annotations

import gc
import time
import weakref
from datetime import datetime, timezone

import pytest
from langchain_core.messages import HumanMessage

from checkpointers import ThreadExistsError, ThreadNotFoundError, ThreadSaver, open_saver
from tests.chat import chat_graph, human

TABLES = {
    "sqlite": ("checkpoints", "channel_values", "messages", "message_segments", "writes"),
    "postgres": ("checkpoints", "channel_values", "messages", "writes"),
}
"""The tables a thread's history lives in, by engine."""


def _chat(saver, thread_id, turns, user="u", start=0):
    graph = chat_graph(saver)
    config = {"configurable": {"thread_id": thread_id, "user_id": user}}
    for n in range(start, start + turns):
        graph.invoke({"messages": [human(n)]}, config)
    return graph, config


def _rows(saver, thread_id):
    """Rows of the thread's history in every table it has, read through the engine."""
    tables = TABLES["sqlite" if isinstance(saver, ThreadSaver) else "postgres"]
    with saver.maintenance.reading() as query:
        keys = query("SELECT thread_key FROM threads WHERE thread_id = ?", (thread_id,))
        if not keys:
            return 0
        return sum(query(f"SELECT count(*) FROM {t} WHERE thread_key = ?", keys[0])[0][0] for t in tables)


def test_delete_thread_removes_every_row_and_the_index_entry(store):
    saver = store
    _chat(saver, "gone", 70)  # enough to seal a message segment on SQLite
    _chat(saver, "kept", 2)
    assert _rows(saver, "gone") > 0
    saver.delete_thread("gone")
    assert _rows(saver, "gone") == 0
    assert saver.threads.count("u") == 1
    assert saver.get_tuple({"configurable": {"thread_id": "gone"}}) is None
    assert len(chat_graph(saver).get_state({"configurable": {"thread_id": "kept"}}).values["messages"]) == 4


def test_delete_threads_in_one_call_counts_what_existed(store):
    saver = store
    for i in range(5):
        _chat(saver, f"t{i}", 1)
    assert saver.delete_threads(["t0", "t1", "missing"]) == 2
    assert sorted(t.thread_id for t in saver.threads.list("u").threads) == ["t2", "t3", "t4"]


def test_copy_thread_carries_the_whole_history_and_stays_independent(store):
    saver = store
    graph, config = _chat(saver, "src", 70)
    saver.threads.rename("src", "original")
    saver.copy_thread("src", "dst")
    dst = {"configurable": {"thread_id": "dst"}}
    assert graph.get_state(dst).values == graph.get_state(config).values
    assert len(list(graph.get_state_history(dst))) == len(list(graph.get_state_history(config)))
    assert saver.threads.get("dst").title == "original"
    graph.invoke({"messages": [human(500)]}, {"configurable": {"thread_id": "dst", "user_id": "u"}})
    assert len(graph.get_state(config).values["messages"]) == 140
    assert len(graph.get_state(dst).values["messages"]) == 142
    with pytest.raises(ThreadExistsError):
        saver.copy_thread("src", "dst")
    with pytest.raises(ThreadNotFoundError):
        saver.copy_thread("nope", "other")


def test_prune_keep_latest_keeps_the_full_state_and_frees_the_rest(store, store_url):
    saver = store
    graph, config = _chat(saver, "t", 80)
    before_state = graph.get_state(config).values
    before_rows = _rows(saver, "t")
    saver.prune(["t"], strategy="keep_latest")
    assert len(list(saver.list(config))) == 1
    assert _rows(saver, "t") < before_rows / 3
    with open_saver(store_url) as fresh:
        assert chat_graph(fresh).get_state(config).values == before_state
    graph.invoke({"messages": [human(900)]}, config)
    assert len(graph.get_state(config).values["messages"]) == 162


def test_prune_keep_latest_keeps_what_a_delta_channel_replays(store, store_url):
    graph = chat_graph(store, delta=True)
    config = {"configurable": {"thread_id": "d", "user_id": "u"}}
    for n in range(10):
        graph.invoke({"messages": [human(n)]}, config)
    expected = graph.get_state(config).values
    store.prune(["d"], strategy="keep_latest")
    with open_saver(store_url) as fresh:
        assert chat_graph(fresh, delta=True).get_state(config).values == expected


def test_prune_delete_empties_the_thread_but_keeps_its_index_row(store):
    saver = store
    _chat(saver, "t", 3)
    saver.prune(["t"], strategy="delete")
    assert _rows(saver, "t") == 0
    assert saver.threads.get("t").message_count == 0
    with pytest.raises(ValueError, match="unknown prune strategy"):
        saver.prune(["t"], strategy="everything")


def test_delete_for_runs_drops_that_runs_checkpoints_only(store):
    import uuid

    saver = store

    graph = chat_graph(saver)
    config = {"configurable": {"thread_id": "t", "user_id": "u"}}
    runs = [str(uuid.uuid4()) for _ in range(3)]
    for n, run_id in enumerate(runs):
        graph.invoke({"messages": [human(n)]}, {**config, "metadata": {"run_id": run_id}})
    assert {t.metadata.get("run_id") for t in saver.list(config)} == set(runs)
    saver.delete_for_runs([runs[-1]])
    remaining = list(saver.list(config))
    assert {t.metadata["run_id"] for t in remaining} == set(runs[:2])
    assert len(graph.get_state(config).values["messages"]) == 4
    if isinstance(saver, ThreadSaver):
        assert saver.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_compact_hands_freed_pages_back_without_vacuum(saver):
    for i in range(40):
        _chat(saver, f"t{i}", 3)
    saver.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    saver.delete_threads([f"t{i}" for i in range(30)])
    saver.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = saver.path.stat().st_size
    assert saver.compact() > 0
    saver.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert saver.path.stat().st_size < size
    assert saver.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_deleted_text_is_overwritten_in_the_file(saver):
    graph = chat_graph(saver)
    secret = "my card number is 4111 1111 1111 1111"
    from langchain_core.messages import HumanMessage

    graph.invoke({"messages": [HumanMessage(secret)]}, {"configurable": {"thread_id": "s", "user_id": "u"}})
    saver.delete_thread("s")
    saver.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert secret.encode() not in saver.path.read_bytes()


def test_two_savers_taking_turns_on_one_thread_with_pruning_in_between(db_path):
    """Each saver caches the thread's counters and lists; the other's writes and
    garbage collection must make it start over, never write dangling numbers."""
    from langchain_core.messages import RemoveMessage
    from langgraph.checkpoint.memory import InMemorySaver

    a, b = ThreadSaver(db_path), ThreadSaver(db_path)
    reference = chat_graph(InMemorySaver())
    graphs = [chat_graph(a), chat_graph(b)]
    config = {"configurable": {"thread_id": "shared", "user_id": "u"}}
    try:
        for n in range(60):
            for graph in (graphs[n % 2], reference):
                graph.invoke({"messages": [human(n)]}, config)
            if n % 7 == 3:
                for graph in (graphs[(n + 1) % 2], reference):
                    graph.update_state(config, {"messages": [RemoveMessage(id=f"ai-{n - 1}")]}, as_node="model")
                (b if n % 2 else a).prune(["shared"], strategy="keep_latest")
            expected = reference.get_state(config).values
            assert graphs[0].get_state(config).values == expected
            assert graphs[1].get_state(config).values == expected
        cold = ThreadSaver(db_path)
        try:
            assert chat_graph(cold).get_state(config).values == expected
            assert cold.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            cold.close()
    finally:
        a.close()
        b.close()


def test_a_closed_saver_lets_go_of_the_messages_it_cached_at_once(db_path):
    """A saver and its `threads` refer to each other, so only a garbage collection
    frees the saver itself; the messages it cached must not wait for that."""
    with ThreadSaver.from_conn_string(f"sqlite:///{db_path}") as writer:
        graph = chat_graph(writer)
        for n in range(300):
            graph.invoke({"messages": [human(n)]}, {"configurable": {"thread_id": "t"}})
    reader = ThreadSaver(db_path)
    # A run reads the thread into the cache (a `get_state` gets copies and caches nothing).
    chat_graph(reader).invoke({"messages": [human(300)]}, {"configurable": {"thread_id": "t"}})
    gc.collect()  # the finished run's own cycles
    gc.disable()
    try:
        cached = max(reader._lists._entries.values(), key=lambda entry: len(entry.objs))
        assert len(cached.objs) == 602
        first = weakref.ref(cached.objs[0])
        del cached
        assert first() is not None  # the reader's cache holds the thread
        reader.close()
        assert first() is None
    finally:
        gc.enable()


def test_reading_a_long_thread_runs_no_garbage_collection_and_leaves_the_collector_as_it_was(db_path):
    with ThreadSaver.from_conn_string(f"sqlite:///{db_path}") as writer:
        graph = chat_graph(writer)
        for n in range(300):
            graph.invoke({"messages": [human(n)]}, {"configurable": {"thread_id": "t"}})
    collections = []

    def count(phase, info):
        if phase == "start":
            collections.append(info["generation"])

    for enabled in (True, False):
        (gc.enable if enabled else gc.disable)()
        gc.callbacks.append(count)
        try:
            with ThreadSaver.from_conn_string(f"sqlite:///{db_path}") as reader:
                load, nos = reader._load_messages, list(range(1, 601))
                if enabled:
                    gc.collect()  # start counting allocations from zero
                collections.clear()
                loaded = load(reader.conn, 1, nos)
                during = len(collections)  # an int: allocates nothing that could start a collection
            assert len(loaded) == 600
            # 600 messages are thousands of objects: seven collections otherwise; paused,
            # one looks at them all as the collector comes back (none if it was off).
            assert during == (1 if enabled else 0)
            assert gc.isenabled() is enabled
        finally:
            gc.callbacks.remove(count)
            gc.enable()


def test_a_copied_thread_keeps_its_messages_times_and_metadata(store):
    saver = store
    saver.sessions.put_session("u", "src")
    given = datetime(2025, 3, 4, 5, 6, 7, 891011, tzinfo=timezone.utc)
    saver.sessions.put_message("src", HumanMessage("dated and tagged", id="m-1"), user_id="u",
                               metadata={"lang": "en", "n": 3}, created_at=given)
    _chat(saver, "src", 70)  # enough to seal a segment, each turn dated when it was stored
    time.sleep(0.01)
    saver.copy_thread("src", "dst")
    original = saver.sessions.list_messages("src", user_id="u")
    copied = saver.sessions.list_messages("dst", user_id="u")
    assert len(copied) == 141
    assert [(m.message_id, m.created_at, m.metadata) for m in copied] == [
        (m.message_id, m.created_at, m.metadata) for m in original
    ]
    assert copied[0].created_at == given and copied[0].metadata == {"lang": "en", "n": 3}


@pytest.mark.parametrize("checkpoint_id", ["not-a-uuid", "exactly16chars!!", "1EF4F797-8335-6428-8001-8A1503F9B875"])
def test_a_checkpoint_id_that_is_not_a_lowercase_uuid_reads_back_as_given(store, checkpoint_id):
    """LangGraph's ids are lowercase UUIDs, kept as 16 bytes; any other id a caller gives stays
    its text (one of 16 bytes too: it must not read back as a UUID)."""
    from langgraph.checkpoint.base import empty_checkpoint

    checkpoint = {**empty_checkpoint(), "id": checkpoint_id}
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    saved = store.put(config, checkpoint, {"source": "input", "step": -1}, {})
    store.put_writes(saved, [("messages", "hello")], task_id="task-of-a-caller")
    found = store.get_tuple(saved)
    assert found.checkpoint["id"] == checkpoint_id
    assert found.pending_writes == [("task-of-a-caller", "messages", "hello")]
    assert [t.checkpoint["id"] for t in store.list({"configurable": {"thread_id": "t"}})] == [checkpoint_id]
