"""Bounds that do not depend on machine speed: bytes per turn, query plans."""

from __future__ import annotations

import random

from checkpointers import ThreadSaver, open_saver
from tests.chat import chat_graph, human


def _file_bytes(saver: ThreadSaver) -> int:
    saver.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return saver.path.stat().st_size


def test_bytes_per_turn_stay_under_2kb_and_grow_linearly_from_100_to_1000_turns(db_path):
    with ThreadSaver.from_conn_string(f"sqlite:///{db_path}") as saver:
        graph = chat_graph(saver)
        config = {"configurable": {"thread_id": "long", "user_id": "u"}}
        rng = random.Random(5)
        sizes = {}
        for turn in range(1, 1001):
            graph.invoke({"messages": [human(turn, rng)]}, config)
            if turn in (100, 500, 1000):
                sizes[turn] = _file_bytes(saver)
        assert len(graph.get_state(config).values["messages"]) == 2000
    per_turn = {t: size / t for t, size in sizes.items()}
    assert per_turn[1000] <= 2048, per_turn
    # Linear: the last 500 turns cost no more room than the 400 before them, per turn.
    late = (sizes[1000] - sizes[500]) / 500
    early = (sizes[500] - sizes[100]) / 400
    assert late <= early * 1.15, (early, late)


def test_stock_layout_would_be_quadratic_so_the_bound_can_fail(db_path):
    """The same check applied to a saver that re-stores the whole list proves it bites."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    with SqliteSaver.from_conn_string(str(db_path)) as stock:
        graph = chat_graph(stock)
        config = {"configurable": {"thread_id": "long"}}
        sizes = {}
        for turn in range(1, 201):
            graph.invoke({"messages": [human(turn)]}, config)
            if turn in (50, 100, 200):
                stock.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                sizes[turn] = db_path.stat().st_size
    late = (sizes[200] - sizes[100]) / 100
    early = (sizes[100] - sizes[50]) / 50
    assert late > early * 1.15


def test_listing_a_users_threads_reads_only_that_users_index_range(saver):
    graph = chat_graph(saver)
    for i in range(30):
        graph.invoke({"messages": [human(i)]}, {"configurable": {"thread_id": f"t{i}", "user_id": f"u{i % 3}"}})
    saver.conn.execute("ANALYZE")
    for user in ("u1", None):
        plan = " | ".join(saver.threads.explain_list(user))
        assert "USING INDEX threads_by_user_updated (user_id=?)" in plan, plan
        assert "SCAN" not in plan and "TEMP B-TREE" not in plan, plan


def test_message_lists_are_stored_as_deltas_not_copies(saver):
    graph = chat_graph(saver)
    config = {"configurable": {"thread_id": "t", "user_id": "u"}}
    for turn in range(1, 201):
        graph.invoke({"messages": [human(turn)]}, config)
    (messages,) = saver.conn.execute(
        "SELECT count(*) FROM messages"
    ).fetchone()
    (sealed,) = saver.conn.execute("SELECT coalesce(sum(length(nos)), 0) FROM message_segments").fetchone()
    segments = saver.conn.execute("SELECT nos FROM message_segments").fetchall()
    from checkpointers import codec

    stored_numbers = sum(len(codec.unpack_numbers(n)) for (n,) in segments) + messages
    # 400 messages in the state; each human message is stored at most twice
    # (as sent, without an id, and in the channel with its id).
    assert 400 <= stored_numbers <= 600
    (longest,) = saver.conn.execute("SELECT max(depth) FROM channel_values").fetchone()
    assert longest < 64


def test_on_postgresql_a_turn_writes_what_is_new_and_storage_grows_linearly(postgres_url):
    """Stock `PostgresSaver` writes the whole message list at every step, so its thread
    grows with the square of its turns; here each message is one row, written once."""
    with open_saver(postgres_url) as saver:
        graph = chat_graph(saver)
        config = {"configurable": {"thread_id": "long", "user_id": "u"}}
        rng = random.Random(5)
        sizes = {}
        for turn in range(1, 601):
            graph.invoke({"messages": [human(turn, rng)]}, config)
            if turn in (100, 300, 600):
                sizes[turn] = saver.maintenance.bytes_in_use()
        with saver.maintenance.reading() as query:
            ((messages,),) = query("SELECT count(*) FROM messages")
        assert messages == 1200  # each message stored once, not once per checkpoint
    late = (sizes[600] - sizes[300]) / 300
    early = (sizes[300] - sizes[100]) / 200
    assert late <= early * 1.25, (early, late)


def test_through_the_agent_graph_a_turn_stores_at_most_2kb_after_1000_turns(db_path):
    """Issue 19's bound, as `python -m bench.agent` measures it: trim -> model, an instant model."""
    from bench.agent import run_thread
    from bench.storage import file_bytes

    saver = ThreadSaver(db_path)
    try:
        run_thread(saver, 1000)
    finally:
        saver.close()
    per_turn = file_bytes(db_path) / 1000
    assert per_turn <= 2048, per_turn


def test_on_postgresql_through_the_agent_graph_a_turn_stores_at_most_4_75kb_after_1000_turns(postgres_url):
    """Issue 19's measure on PostgreSQL, as `python -m bench.postgres --bytes` takes it (tables,
    indexes and TOAST after VACUUM): about 4,600 B a turn here, its five task writes packed into
    their checkpoints' rows; the previous release stored 5,218 (a row of `writes` each), the
    one before 5,988 (its messages serialised again in task writes, its metadata as `jsonb`)."""
    from bench.agent import run_thread
    from bench.postgres import schema_bytes

    with open_saver(postgres_url) as saver:
        run_thread(saver, 1000)
        with saver.maintenance.reading() as query:
            ((rows,),) = query("SELECT count(*) FROM writes")
    # A write whose checkpoint's put has not run yet gets a row (see `_after_put`): a stall
    # of the machine may leave a few, not one a turn.
    assert rows <= 50, rows
    per_turn = schema_bytes(postgres_url) / 1000
    assert per_turn <= 4864, per_turn
