"""Task writes and a graph's input hold their messages by number, on both engines.

A chat turn's input and the model's answer are each one row of `messages`: the
task writes that carry them and the `__start__` value refer to that row, as the
conversation that follows does. Whatever a caller writes reads back as the
stock `InMemorySaver` gives it back, in LangGraph's order of writes.
"""

from __future__ import annotations

import itertools
import random
import threading
import uuid
from unittest.mock import patch

import psycopg
from hypothesis import given, strategies as st
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.checkpoint.base import empty_checkpoint, writes_sort_key
from langgraph.checkpoint.memory import InMemorySaver

from checkpointers.codec import KIND_MESSAGE_LIST, KIND_SERDE
from checkpointers.engines.postgres import packed_writes
from graph import Settings, build_graph
from tests.hostile import scaled
from tests.scripted import ScriptedChatModel, echo

_threads = itertools.count()

_words = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)
_ids = st.none() | st.uuids().map(str)
_message = st.one_of(
    st.builds(HumanMessage, content=_words, id=_ids),
    st.builds(AIMessage, content=_words, id=_ids),
    st.builds(ToolMessage, content=_words, tool_call_id=st.just("call-1"), id=_ids),
)
_value = st.one_of(
    st.lists(_message, min_size=1, max_size=3),
    _message,
    st.builds(lambda messages, n: {"messages": messages, "n": n}, st.lists(_message, min_size=1, max_size=2), st.integers(-(2**63), 2**63 - 1)),
    st.integers(-(2**63), 2**63 - 1),
    _words,
    st.none(),
)
_task_path = st.one_of(st.just("~__pregel_pull, model"), st.just("~__pregel_pull, __start__"), st.just(""), _words)
_task = st.tuples(
    _task_path,
    st.lists(st.tuples(st.sampled_from(["messages", "window", "branch:to:model"]), _value), min_size=1, max_size=3),
)


@given(tasks=st.lists(_task, min_size=1, max_size=4), resume=st.none() | _value)
@scaled(25)
def test_task_writes_of_any_kind_read_back_as_the_stock_saver_gives_them(store, tasks, resume):
    thread_id = f"t{next(_threads)}"
    config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    stock = InMemorySaver()
    calls = [(str(uuid.uuid4()), path, writes) for path, writes in tasks]
    if resume is not None:
        calls.append((str(uuid.uuid4()), "", [("__resume__", resume)]))
    found = []
    for saver in (stock, store):
        at = saver.put(config, empty_checkpoint(), {"source": "loop", "step": 0}, {})
        for task_id, path, writes in calls:
            saver.put_writes(at, writes, task_id, path)
        found.append(saver.get_tuple(at).pending_writes)
    expected, got = found
    paths = {task_id: path for task_id, path, _ in calls}
    assert sorted(got, key=repr) == sorted(expected, key=repr)
    # In LangGraph's order of a step's writes: by task path, then task id (then index).
    order = [(paths[task_id], task_id) for task_id, _, _ in got]
    assert order == sorted(order, key=lambda key: writes_sort_key(*key))


_repeated_call = st.tuples(
    st.sampled_from(["task-a", "task-b"]),
    st.one_of(
        st.lists(st.tuples(st.sampled_from(["messages", "window"]), _value), min_size=1, max_size=2),
        st.lists(st.tuples(st.sampled_from(["__interrupt__", "__error__"]), _words), min_size=1, max_size=1),
    ),
)


@given(
    calls=st.lists(_repeated_call, min_size=1, max_size=6),
    before=st.integers(0, 6),
    max_bytes=st.sampled_from([packed_writes.MAX_BYTES, 60, 150]),
)
@scaled(25)
def test_writes_sent_before_and_after_their_checkpoint_keep_first_write_wins(store, calls, before, max_bytes):
    """A task's write at an index already written is ignored, an error or interrupt replaces
    the one before, whether the writes came before their checkpoint was stored (on
    PostgreSQL: rows of `writes`), after (packed into the checkpoint's row), or once the
    checkpoint's row had no room for more (rows of `writes` again), as with the stock saver."""
    thread_id = f"t{next(_threads)}"
    config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    checkpoint = empty_checkpoint()
    at = {"configurable": {**config["configurable"], "checkpoint_id": checkpoint["id"]}}
    task_ids = {"task-a": str(uuid.uuid4()), "task-b": str(uuid.uuid4())}
    found = []
    for saver in (InMemorySaver(), store):
        with patch.object(packed_writes, "MAX_BYTES", max_bytes):
            for n, (task, writes) in enumerate(calls):
                if n == before:
                    saver.put(config, checkpoint, {"source": "loop", "step": 0}, {})
                saver.put_writes(at, writes, task_ids[task], "~__pregel_pull, model")
        if before >= len(calls):
            saver.put(config, checkpoint, {"source": "loop", "step": 0}, {})
        found.append(saver.get_tuple(at).pending_writes)
    expected, got = found
    assert sorted(got, key=repr) == sorted(expected, key=repr)


def test_on_postgresql_many_writes_to_one_checkpoint_fill_its_row_only_so_far(postgres_url):
    """An append rewrites the checkpoint's packed writes whole: a fan-out of many large writes
    to one checkpoint goes to rows of `writes` once the column would pass `MAX_BYTES`, so
    writing them costs what they hold, not its square. All of them read back."""
    from checkpointers import open_saver

    with open_saver(postgres_url) as saver:
        config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        at = saver.put(config, empty_checkpoint(), {"source": "loop", "step": 0}, {})
        written = [(f"task-{n}", "results", random.Random(n).randbytes(1000).hex()) for n in range(60)]
        for task_id, channel, value in written:
            saver.put_writes(at, [(channel, value)], task_id, "~__pregel_pull, worker")
        assert sorted(saver.get_tuple(at).pending_writes) == sorted(written)
    with psycopg.connect(postgres_url) as conn:
        column, rows = conn.execute("SELECT octet_length(writes), (SELECT count(*) FROM writes) FROM checkpoints").fetchone()
    assert column <= packed_writes.MAX_BYTES + 1 and rows >= 40, (column, rows)


def test_thread_ids_that_are_not_text_are_taken_as_their_text_by_put_and_put_writes(store):
    """`check_id` takes any id as its text; the bookkeeping that lets task writes find their
    checkpoint's row keys threads the same way, so an id a dict cannot key is no error."""
    for thread_id in (5, [1, 2], {"a": 1}):
        config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
        at = store.put(config, empty_checkpoint(), {"source": "loop", "step": 0}, {})
        store.put_writes(at, [("window", thread_id)], "task-1")
        found = store.get_tuple({"configurable": {"thread_id": str(thread_id), "checkpoint_ns": ""}})
        assert found.pending_writes == [("task-1", "window", thread_id)]


def test_pending_writes_holding_messages_outlive_a_prune_of_older_checkpoints(store):
    saver = store
    agent = build_graph(checkpointer=saver, model=ScriptedChatModel(script=echo), settings=Settings())
    config = {"configurable": {"thread_id": "t", "user_id": "alice"}}
    for n in range(3):
        agent.invoke({"messages": [HumanMessage(f"turn {n}")]}, config)
    latest = saver.get_tuple(config).config
    pending = [AIMessage("an answer not yet applied", id="a-1"), HumanMessage("and a question")]
    saver.put_writes(latest, [("messages", pending), ("__start__", {"messages": pending[1:]})], "task-1")
    saver.prune(["t"], strategy="keep_latest")
    assert saver.get_tuple(config).pending_writes == [
        ("task-1", "messages", pending), ("task-1", "__start__", {"messages": pending[1:]})
    ]
    assert len(list(saver.list(config))) == 1


async def _chat(app, thread_id: str, turns: int, *, asynchronous: bool) -> None:
    config = {"configurable": {"thread_id": thread_id, "user_id": "alice"}}
    for n in range(turns):
        message = {"messages": [HumanMessage(f"question {n} of {thread_id}")]}
        if asynchronous:
            await app.ainvoke(message, config)
        else:
            app.invoke(message, config)


async def test_on_postgresql_a_turn_stores_its_two_messages_once_and_writes_them_by_number(postgres_url):
    """The input has no id when its task write and the `__start__` value are stored (from
    other threads, while LangGraph's reducer gives it one): it is still one row, holding
    the id. Counted through the product's graph, sync and async."""
    from checkpointers import open_async_saver

    async with open_async_saver(postgres_url) as saver:
        app = build_graph(checkpointer=saver, model=ScriptedChatModel(script=echo), settings=Settings())
        await _chat(app, "sync", 15, asynchronous=False)
        await _chat(app, "async", 15, asynchronous=True)
        for thread_id in ("sync", "async"):
            messages = (await app.aget_state({"configurable": {"thread_id": thread_id}})).values["messages"]
            assert len(messages) == 30 and all(m.id for m in messages)
    with psycopg.connect(postgres_url) as conn:
        per_thread = conn.execute(
            "SELECT t.thread_id, count(*) FROM messages m JOIN threads t USING (thread_key) GROUP BY 1 ORDER BY 1"
        ).fetchall()
        assert per_thread == [("async", 30), ("sync", 30)]
        serialised = conn.execute(
            "SELECT (SELECT count(*) FROM writes WHERE channel = 'messages' AND kind = 0), "
            "(SELECT count(*) FROM channel_values WHERE channel = '__start__' AND kind = 0)"
        ).fetchone()
        assert serialised == (0, 0)
        packed = [
            (channel, kind)
            for (blob,) in conn.execute("SELECT writes FROM checkpoints WHERE writes IS NOT NULL")
            for _task, _path, _replace, rows in packed_writes.records(bytes(blob))
            for _idx, channel, kind, _type, _value in rows
        ]
        assert ("messages", KIND_MESSAGE_LIST) in packed and ("messages", KIND_SERDE) not in packed
        # Task writes, sync and async, wait for their checkpoint's put and are packed into its
        # row: 150 of them here; one sent while the machine stalled for 50 ms gets a row.
        (rows,) = conn.execute("SELECT count(*) FROM writes").fetchone()
        assert rows <= 5, rows


def test_on_postgresql_a_write_that_fails_at_commit_leaves_no_number_behind_for_another_message(postgres_url):
    """The digests of a write's new messages are cached before its COMMIT is sent (so the
    thread's next write, which may run first, never stores them twice). A write that then
    fails must not leave them cached: its numbers go to the next write's messages."""
    from checkpointers import open_saver

    with open_saver(postgres_url) as saver:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(  # the write's channel name, packed into its checkpoint's row
                "ALTER TABLE checkpoints ADD CONSTRAINT no_poison CHECK (position('poison'::bytea IN writes) = 0)"
            )
        config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        at = saver.put(config, empty_checkpoint(), {"source": "loop", "step": 0}, {})
        lost = HumanMessage("the write that failed", id="m-1")
        try:
            saver.put_writes(at, [("messages", [lost]), ("poison", 1)], "task-1")
        except psycopg.errors.CheckViolation:
            pass
        else:
            raise AssertionError("the poisoned write was stored")
        other = HumanMessage("the next message", id="m-2")
        saver.put_writes(at, [("messages", [other])], "task-2")
        saver.put_writes(at, [("messages", [lost])], "task-3")
        assert saver.get_tuple(at).pending_writes == [("task-2", "messages", [other]), ("task-3", "messages", [lost])]


def test_on_postgresql_an_interrupt_and_an_answer_written_at_once_to_one_checkpoint_both_land(postgres_url):
    """A step's task writes come from several worker threads: one holding the model's answer
    (it numbers messages, so it locks the thread's row first) and an interrupt (it replaces,
    and moves the thread's `updated_at`). Both lock the thread's row before the checkpoint's
    row their writes are packed into, so neither waits for the other in a cycle."""
    from checkpointers import open_saver

    with open_saver(postgres_url) as saver:
        config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        for n in range(25):
            at = saver.put(config, empty_checkpoint(), {"source": "loop", "step": n}, {})
            answer = AIMessage(f"answer {n}", id=f"a-{n}")
            start = threading.Barrier(2)
            failures = []

            def write(writes, task_id):
                start.wait()
                try:
                    saver.put_writes(at, writes, task_id, "~__pregel_pull, model")
                except Exception as exc:  # noqa: BLE001 (reported below)
                    failures.append(exc)

            workers = [
                threading.Thread(target=write, args=([("messages", [answer])], "task-a")),
                threading.Thread(target=write, args=([("__interrupt__", f"approve {n}?")], "task-b")),
            ]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            assert failures == []
            assert sorted(saver.get_tuple(at).pending_writes, key=repr) == sorted(
                [("task-a", "messages", [answer]), ("task-b", "__interrupt__", f"approve {n}?")], key=repr
            )


def test_on_postgresql_a_connection_whose_transaction_failed_on_the_server_serves_the_next_ones(postgres_url, monkeypatch):
    """A statement the server refuses in a pipelined transaction makes it skip what followed,
    statements psycopg was preparing among them (the usage counters after a checkpoint's
    write): that connection is not used again, and every later checkpoint is stored."""
    from checkpointers import open_saver

    monkeypatch.setenv("THREADKEEPER_PG_POOL_SIZE", "1")
    with open_saver(postgres_url) as saver:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute("ALTER TABLE messages ADD CONSTRAINT no_poison CHECK (position('poison' IN words) = 0)")
        config = {"configurable": {"thread_id": "t", "checkpoint_ns": "", "user_id": "alice"}}
        history: list = []
        stored_version = None
        for n in range(12):
            for text in (f"fine {n}", f"poison {n}"):
                checkpoint = empty_checkpoint()
                version = saver.get_next_version(stored_version)
                checkpoint["channel_values"] = {"messages": [*history, HumanMessage(text, id=text)]}
                checkpoint["channel_versions"] = {"messages": version}
                try:
                    saver.put(config, checkpoint, {"source": "loop", "step": n}, {"messages": version})
                except psycopg.errors.CheckViolation:
                    assert text.startswith("poison")
                    continue
                history, stored_version = checkpoint["channel_values"]["messages"], version
        assert [m.content for m in saver.get_tuple(config).checkpoint["channel_values"]["messages"]] == [
            f"fine {n}" for n in range(12)
        ]


def test_equal_messages_without_ids_stay_two_messages(store):
    """Messages without an id are stored once per object, never merged by content: two equal
    "yes" answers are two messages, as with the stock saver."""
    from langgraph.graph.message import add_messages

    saver = store
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    at = saver.put(config, empty_checkpoint(), {"source": "loop", "step": 0}, {})
    yes, again = HumanMessage("yes"), HumanMessage("yes")
    saver.put_writes(at, [("messages", [yes, again])], "task-1")
    [(_, _, pair)] = saver.get_tuple(at).pending_writes
    assert pair == [yes, again] and pair[0] is not pair[1]
    assert len(add_messages([], pair)) == 2


def test_a_dict_holding_messages_keeps_any_key_it_has_in_order(store):
    saver = store
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    at = saver.put(config, empty_checkpoint(), {"source": "loop", "step": 0}, {})
    keyed = {(1, 2): [HumanMessage("c", id="3")], 7: "seven", "messages": [HumanMessage("yes")]}
    saver.put_writes(at, [("__start__", keyed)], "task-1")
    [(_, _, back)] = saver.get_tuple(at).pending_writes
    assert list(back) == [(1, 2), 7, "messages"] and back == keyed


def test_a_graph_replayed_from_its_input_keeps_two_equal_messages_without_ids(store):
    """Replaying a run from its input checkpoint reads the `__start__` value back: two equal
    messages without ids in it must stay two (they were stored as one and merged)."""
    from langgraph.graph import START, MessagesState, StateGraph

    builder = StateGraph(MessagesState)
    builder.add_node("noop", lambda state: {})
    builder.add_edge(START, "noop")
    app = builder.compile(checkpointer=store)
    for n in range(10):  # the input's write and value are stored from different threads: try a few times
        config = {"configurable": {"thread_id": f"replayed-{n}"}}
        app.invoke({"messages": [HumanMessage("yes"), HumanMessage("yes")]}, config)
        first = [h for h in app.get_state_history(config) if h.metadata["source"] == "input"][0]
        app.invoke(None, first.config)
        assert [m.content for m in app.get_state(config).values["messages"]] == ["yes", "yes"], n


def test_list_with_a_filter_pages_past_the_first_rows_and_stops_at_its_limit(store):
    """`list(filter=)` matches metadata in Python on both engines (the compact checkpoint row
    holds it): rows are read until `limit` match, however far back the matches lie."""
    saver = store
    for thread_id, user in (("old", "alice"), ("new", "bob")):
        config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
        for step in range(260 if user == "bob" else 3):
            config = saver.put(config, empty_checkpoint(), {"source": "loop", "step": step, "who": user}, {})
    found = list(saver.list(None, filter={"who": "alice"}, limit=2))
    assert [(t.config["configurable"]["thread_id"], t.metadata["step"]) for t in found] == [("old", 2), ("old", 1)]
    assert len(list(saver.list(None, filter={"who": "bob", "absent": None}))) == 260
    assert list(saver.list(None, filter={"who": "carol"})) == []
