"""Opening a long thread reads its newest messages, not its whole history: pages and
ownership on both engines (`store_url`), SQLite's statement counts on a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from checkpointers import ThreadNotFoundError, ThreadSaver, open_saver
from tests.chat import chat_graph, human, long_thread


def test_pages_of_the_newest_messages_match_the_state(store_url: str):
    everything = long_thread(store_url, 130)
    with open_saver(store_url) as saver:  # cold: nothing cached
        page = saver.read_messages("long", user_id="alice", limit=50)
        assert (page.total, page.start) == (260, 210)
        assert page.messages == everything[210:]
        earlier = saver.read_messages("long", user_id="alice", limit=50, before=page.start)
        assert earlier.start == 160 and earlier.messages == everything[160:210]
        first = saver.read_messages("long", user_id="alice", limit=50, before=10)
        assert first.start == 0 and first.messages == everything[:10]


def segment_steps(saver: ThreadSaver, thread_id: str) -> int:
    """SQLite VM steps the statement reading sealed segments takes in `read_messages`."""
    steps = {"current": "", "segments": 0}

    def step() -> int:
        steps["segments"] += "FROM message_segments" in steps["current"]
        return 0

    saver.conn.set_trace_callback(lambda sql: steps.__setitem__("current", sql))
    saver.conn.set_progress_handler(step, 1)
    try:
        saver.read_messages(thread_id, user_id="alice", limit=50)
    finally:
        saver.conn.set_progress_handler(None, 1)
        saver.conn.set_trace_callback(None)
    return steps["segments"]


def test_a_page_of_a_1000_turn_thread_loads_only_that_page(thousand_turn_thread: Path):
    db_path = thousand_turn_thread
    saver = ThreadSaver(db_path)
    loaded = []
    original = saver._load_message
    saver._load_message = lambda t, b: loaded.append(1) or original(t, b)
    page = saver.read_messages("long", user_id="alice", limit=50)
    assert len(page.messages) == 50 and page.total == 2000
    assert len(loaded) <= 50 + 2 * 64  # the page, plus the rest of the segments it starts and ends in
    graph = chat_graph(saver)
    for n in range(130):
        graph.invoke({"messages": [human(n)]}, {"configurable": {"thread_id": "shorter", "user_id": "alice"}})
    saver.close()
    # The newest page reads the segments it needs, not every earlier one: the same
    # work with 31 sealed segments as with 4 (in a cold store each row is a page read).
    with ThreadSaver.from_conn_string(f"sqlite:///{db_path}") as cold:
        long_steps, shorter_steps = segment_steps(cold, "long"), segment_steps(cold, "shorter")
    assert 0 < long_steps <= shorter_steps + 10, (long_steps, shorter_steps)


def test_a_cold_page_of_a_long_thread_costs_a_handful_of_statements(db_path: Path):
    """The stored list is a chain of deltas (up to MAX_CHAIN_DEPTH links); it is
    read in one statement, not one per link."""
    everything = long_thread(db_path, 300)
    saver = ThreadSaver(db_path)
    with saver._read() as conn:
        key = saver._thread_key(conn, "long")
        links = conn.execute(
            "WITH RECURSIVE c(no, base) AS (SELECT value_no, base_no FROM channel_values WHERE thread_key = ?1 "
            "AND value_no = (SELECT max(value_no) FROM channel_values WHERE thread_key = ?1 AND channel = 'messages') "
            "UNION ALL SELECT v.value_no, v.base_no FROM c JOIN channel_values v ON v.thread_key = ?1 AND v.value_no = c.base) "
            "SELECT count(*) FROM c",
            (key,),
        ).fetchone()[0]
    statements: list[str] = []
    saver.conn.set_trace_callback(statements.append)
    page = saver.read_messages("long", user_id="alice", limit=50)
    saver.conn.set_trace_callback(None)
    assert page.messages == everything[-50:]
    assert links > 5 and len(statements) <= 9, (links, statements)
    saver.close()


def test_another_users_thread_is_not_found(store_url: str):
    long_thread(store_url, 2)
    with open_saver(store_url) as saver:
        with pytest.raises(ThreadNotFoundError):
            saver.read_messages("long", user_id="bob")
        with pytest.raises(ThreadNotFoundError):
            saver.read_messages("nope", user_id="alice")
