"""The compact checkpoint encoding: exact round trips, and the generic way for what it cannot hold."""

import random
import sqlite3

import pytest
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver

from checkpointers import checkpoint_codec, open_saver
from tests.chat import echo_graph as graph


def chat_checkpoint(**changes):
    checkpoint = {
        "v": 4,
        "ts": "2026-11-21T06:34:39.526328+00:00",
        "channel_versions": {"__start__": 32.61, "messages": 33.84, "branch:to:model": 33.84},
        "versions_seen": {"__input__": {}, "__start__": {"__start__": 31.09}, "model": {"branch:to:model": 32.61}},
        "updated_channels": ["messages"],
    }
    checkpoint.update(changes)
    return checkpoint


def round_trip(checkpoint):
    blob = checkpoint_codec.encode(checkpoint)
    assert blob is not None
    decoded = checkpoint_codec.decode(blob)
    assert decoded == checkpoint
    assert [type(v) for v in decoded["channel_versions"].values()] == [float] * len(checkpoint["channel_versions"])
    return blob


def test_a_chat_checkpoint_comes_back_equal_and_smaller_than_deflated_msgpack():
    blob = round_trip(chat_checkpoint())
    # msgpack alone is about 240 bytes here, deflated with the preset dictionary about 85.
    assert len(blob) <= 64


@pytest.mark.parametrize(
    "changes",
    [
        {"updated_channels": None},
        {"updated_channels": []},
        {"versions_seen": {}},
        {"channel_versions": {}, "versions_seen": {}},
        {"channel_versions": {"branch:to:": 1.5, "branch:to:branch:to:x": 2.5, "branch:to:tools": 3.5}},
        {"channel_versions": {f"channel {n}": n + 0.25 for n in range(300)}},
        {"versions_seen": {"node": {"messages": 1.5, "élan": 2.5}, "__interrupt__": {"messages": 1.5}}},
        {"ts": "2026-11-21T06:34:39+00:00"},
        {"ts": "2026-11-21T06:34:39.000000+00:00"},
        {"ts": "2026-11-21 06:34:39.526328+00:00"},
        {"ts": "1969-12-31T23:59:59.999999+00:00"},
        {"ts": "2026-11-21T06:34:39.526328+01:00"},
        {"ts": "2026-11-21T06:34:39.٥26328+00:00"},
        {"ts": "not a time at all, 32 chars long"},
        {"channel_versions": {"a": float("inf"), "b": 1e-300, "c": 7.0}},
    ],
)
def test_unusual_checkpoints_come_back_exactly(changes):
    round_trip(chat_checkpoint(**changes))


def test_a_checkpoint_without_updated_channels_comes_back_without_the_key():
    checkpoint = chat_checkpoint()
    del checkpoint["updated_channels"]
    assert "updated_channels" not in checkpoint_codec.decode(checkpoint_codec.encode(checkpoint))


@pytest.mark.parametrize(
    "changes",
    [
        {"channel_versions": {"messages": 3}},
        {"channel_versions": {"messages": "00000000000000000000000000000003.0.1"}},
        {"channel_versions": {"messages": 0.0, "other": -0.0}},
        {"versions_seen": {"model": {"messages": 2}}},
        {"versions_seen": {"model": [("messages", 2.5)]}},
        {"channel_versions": {1: 2.5}},
        {"updated_channels": ("messages",)},
        {"pending_sends": []},
        {"v": True},
        {"ts": None},
    ],
)
def test_what_the_encoding_cannot_hold_exactly_is_left_to_the_generic_way(changes):
    assert checkpoint_codec.encode(chat_checkpoint(**changes)) is None


def test_a_missing_key_is_left_to_the_generic_way():
    checkpoint = chat_checkpoint()
    del checkpoint["ts"]
    assert checkpoint_codec.encode(checkpoint) is None


def test_random_checkpoints_come_back_exactly():
    rng = random.Random(5)
    names = ["__start__", "messages", "branch:to:model", "model", "x", "branch:to:x", "tools", "über"]
    for _ in range(500):
        versions = [rng.random() * 10 + 1 for _ in range(4)]
        checkpoint = chat_checkpoint(
            channel_versions={n: rng.choice(versions) for n in rng.sample(names, rng.randint(0, len(names)))},
            versions_seen={
                n: {c: rng.choice(versions) for c in rng.sample(names, rng.randint(0, 3))}
                for n in rng.sample(names, rng.randint(0, 4))
            },
            updated_channels=rng.sample(names, rng.randint(0, 3)),
        )
        round_trip(checkpoint)


def history(app, config):
    return [
        (s.values, s.next, s.metadata["step"], s.config["configurable"]["checkpoint_id"])
        for s in app.get_state_history(config)
    ]


def test_the_chat_graph_stores_every_checkpoint_compactly(tmp_path):
    config = {"configurable": {"thread_id": "t"}}
    with open_saver(f"sqlite:///{tmp_path / 'c.db'}") as saver:
        app = graph(saver)
        for n in range(3):
            app.invoke({"messages": [HumanMessage(f"hello {n}")]}, config)
        types = {t for (t,) in saver.conn.execute("SELECT DISTINCT type FROM checkpoints")}
    assert types == {checkpoint_codec.TYPE}


def test_checkpoints_stored_the_generic_way_still_read_back(tmp_path, monkeypatch):
    """Rows written before this encoding existed (msgpack, deflated) sit beside new ones."""
    config = {"configurable": {"thread_id": "t"}}
    memory = graph(InMemorySaver())
    path = tmp_path / "c.db"
    monkeypatch.setattr(checkpoint_codec, "encode", lambda *args: None)
    with open_saver(f"sqlite:///{path}") as saver:
        app = graph(saver)
        for n in range(2):
            app.invoke({"messages": [HumanMessage(f"hello {n}", id=f"h{n}")]}, config)
    monkeypatch.undo()
    with open_saver(f"sqlite:///{path}") as saver:
        app = graph(saver)
        app.invoke({"messages": [HumanMessage("hello 2", id="h2")]}, config)
        types = sorted(t for (t,) in saver.conn.execute("SELECT type FROM checkpoints"))
        assert types.count(checkpoint_codec.TYPE) == 3 and len(types) == 9
        for n in range(3):
            memory.invoke({"messages": [HumanMessage(f"hello {n}", id=f"h{n}")]}, config)
        ours = [(v["messages"], nxt, step) for v, nxt, step, _ in history(app, config)]
        stock = [(v["messages"], nxt, step) for v, nxt, step, _ in history(memory, config)]
    assert [(len(m), n, s) for m, n, s in ours] == [(len(m), n, s) for m, n, s in stock]
    assert [[x.content for x in m] for m, _, _ in ours] == [[x.content for x in m] for m, _, _ in stock]


def test_a_turns_nullable_columns_are_stored_as_null(tmp_path):
    """A first checkpoint has no parent, serialised values no type; the thread row is filled in."""
    config = {"configurable": {"thread_id": "t", "user_id": "u"}}
    with open_saver(f"sqlite:///{tmp_path / 'c.db'}") as saver:
        app = graph(saver)
        for n in range(3):
            app.invoke({"messages": [HumanMessage(f"hello {n}")]}, config)
        saver.flush()
        conn: sqlite3.Connection = saver.conn
        (first_parents,) = conn.execute(
            "SELECT count(*) FROM checkpoints WHERE parent_checkpoint_id IS NULL"
        ).fetchone()
        assert first_parents == 1
        (null_types,) = conn.execute("SELECT count(*) FROM channel_values WHERE type IS NULL").fetchone()
        assert null_types > 0
        title, count = conn.execute("SELECT title, message_count FROM threads").fetchone()
        assert title == "hello 0" and count == 6


@pytest.mark.parametrize(
    "metadata",
    [
        {"source": "loop", "step": 118, "parents": {}, "user_id": "bench"},
        {"source": "input", "step": -1, "parents": {"": "1f0a"}, "run_id": "r", "thread_id": "t", "graph_id": "g"},
        {},
        {"source": "elsewhere", "step": "3", "parents": None, "writes": {"model": {"messages": [1, 2.5, None, True]}}},
        {"step": 1.0, "source": None, "user_id": {"nested": ["x"]}, "über": "ñ", "0": 0},
        {"user_id": "u", "source": "update"},
    ],
)
def test_metadata_comes_back_exactly_with_the_checkpoint(metadata):
    blob = checkpoint_codec.encode(chat_checkpoint(), metadata)
    checkpoint, decoded = checkpoint_codec.decode_row(blob)
    assert checkpoint == chat_checkpoint() and decoded == metadata
    assert [type(v) for v in decoded.values()] == [type(v) for v in metadata.values()]


def test_the_usual_metadata_takes_a_fifth_of_its_json():
    metadata = {"source": "loop", "step": 118, "parents": {}, "user_id": "bench"}
    without = checkpoint_codec.encode(chat_checkpoint())
    assert len(checkpoint_codec.encode(chat_checkpoint(), metadata)) - len(without) <= 13  # the JSON is 59


def test_metadata_msgpack_cannot_hold_is_left_to_the_generic_way():
    assert checkpoint_codec.encode(chat_checkpoint(), {"source": "loop", "n": 2**70}) is None


def test_channels_holding_none_come_back_as_values_of_the_checkpoint():
    checkpoint = chat_checkpoint()
    decoded = checkpoint_codec.decode(checkpoint_codec.encode(checkpoint, {}, ["branch:to:model"]))
    assert decoded.pop("channel_values") == {"branch:to:model": None}
    assert decoded == checkpoint


def test_a_row_written_before_metadata_moved_in_still_decodes():
    """`tk.cp1`: `[v, ts, versions, indexes, shape]`, `updated` inside the shape, no metadata."""
    import struct

    import ormsgpack

    shape = ormsgpack.packb([[], [0, 5, -7], [1, 0, 0, 1, 0, 6, 1, -7], [5]])
    blob = ormsgpack.packb(
        [4, 1_795_242_879_526_328, struct.pack("<3d", 32.61, 33.84, 31.09), [0, 1, 1, 2, 0], shape]
    )
    assert checkpoint_codec.decode_row(blob) == (chat_checkpoint(), None)


def test_the_agent_graphs_usual_shape_is_one_byte():
    import ormsgpack

    channels, seen = checkpoint_codec.KNOWN_SHAPES[0]
    checkpoint = chat_checkpoint(
        channel_versions={channel: 2.5 for channel in channels},
        versions_seen={node: {channel: 1.5 for channel in node_seen} for node, node_seen in seen.items()},
    )
    assert ormsgpack.unpackb(round_trip(checkpoint))[4] == 0  # its place in KNOWN_SHAPES


def test_a_channel_set_to_none_reads_back_as_the_stock_saver_has_it(tmp_path):
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    class State(TypedDict, total=False):
        note: str | None
        count: int

    def step(state: State) -> dict:
        count = state.get("count", 0) + 1
        return {"note": None if count % 2 else f"note {count}", "count": count}

    def build(saver):
        builder = StateGraph(State)
        builder.add_node("step", step)
        builder.add_edge(START, "step")
        builder.add_edge("step", END)
        return builder.compile(checkpointer=saver)

    def states(app, config):
        return [(s.values, s.next, s.metadata, [w[1:] for w in s.tasks]) for s in app.get_state_history(config)]

    config = {"configurable": {"thread_id": "t"}}
    memory = build(InMemorySaver())
    with open_saver(f"sqlite:///{tmp_path / 'c.db'}") as saver:
        ours = build(saver)
        for n in range(4):
            ours.invoke({"count": n * 10}, config)
            memory.invoke({"count": n * 10}, config)
        assert states(ours, config) == states(memory, config)
        assert ours.get_state(config).values == {"note": None, "count": 31}


def test_the_time_stamp_is_stored_as_its_distance_from_the_ids_time():
    from langgraph.checkpoint.base.id import uuid6

    from checkpointers.codec import db_id

    checkpoint_id = str(uuid6(clock_seq=3))
    checkpoint = chat_checkpoint(ts=checkpoint_codec._ts_text(checkpoint_codec._id_micros(checkpoint_id) - 7))
    blob = checkpoint_codec.encode(checkpoint, {}, (), checkpoint_id)
    assert len(blob) <= len(checkpoint_codec.encode(checkpoint, {})) - 7
    assert checkpoint_codec.decode(blob, checkpoint_id) == checkpoint
    assert checkpoint_codec.decode(blob, db_id(checkpoint_id)) == checkpoint  # the id as stored
    for other_id in ("not-a-uuid", "1f0a2b3c-4d5e-1f60-8a9b-0c1d2e3f4a5b"):  # the second a version-1 UUID
        assert checkpoint_codec.decode(checkpoint_codec.encode(checkpoint, {}, (), other_id), other_id) == checkpoint
