"""get_tuple answers a thread's newest checkpoint from what its put kept, only while nothing can have changed it."""

import random

from langchain_core.messages import HumanMessage

from checkpointers import open_saver
from graph import Settings, build_graph
from tests.chat import echo_graph as chat
from tests.scripted import ScriptedChatModel, echo


def as_plain(found):
    """A CheckpointTuple as comparable data (messages by their fields)."""
    checkpoint = dict(found.checkpoint)
    checkpoint["channel_values"] = {
        channel: [m.model_dump() for m in value] if isinstance(value, list) else value
        for channel, value in checkpoint["channel_values"].items()
    }
    return (found.config, checkpoint, found.metadata, found.parent_config, found.pending_writes)


def statements(saver, action):
    seen = []
    saver.conn.set_trace_callback(seen.append)
    try:
        result = action()
    finally:
        saver.conn.set_trace_callback(None)
    return result, seen


def test_the_kept_newest_checkpoint_equals_what_a_read_of_the_file_returns(db_path):
    config = {"configurable": {"thread_id": "t", "user_id": "u"}}
    rng = random.Random(3)
    served = 0
    with open_saver(f"sqlite:///{db_path}") as saver:
        app = chat(saver)
        for n in range(6):
            # "sync": a task's writes are saved before the checkpoint after them. Even so, a
            # write may land after the run's last checkpoint now and then (2 runs in 90 here,
            # on this release and the one before), and then the next get_tuple reads the
            # file (rightly: this connection wrote since).
            app.invoke({"messages": [HumanMessage(f"hello {rng.random()}")]}, config, durability="sync")
            with saver._lock:
                kept_entry = saver._kept.get(("t", ""))
                untouched = kept_entry is not None and kept_entry.total_changes == saver.conn.total_changes
            kept, seen = statements(saver, lambda: saver.get_tuple(config))
            if untouched:
                assert seen == ["PRAGMA data_version"]
                served += 1
            with open_saver(f"sqlite:///{db_path}") as other:
                read = other.get_tuple(config)
            assert as_plain(kept) == as_plain(read)
            assert kept.checkpoint["channel_values"]["messages"] is not read.checkpoint["channel_values"]["messages"]
    assert served >= 4


def test_the_agents_checkpoint_with_its_window_is_kept_and_each_read_gets_its_own_copy(db_path):
    """The agent's state holds more than messages (the trimming node's `window`):
    it is kept serialised, and every get_tuple decodes a new object, as a read would."""
    config = {"configurable": {"thread_id": "t", "user_id": "u"}}
    served = 0
    with open_saver(f"sqlite:///{db_path}") as saver:
        app = build_graph(checkpointer=saver, model=ScriptedChatModel(script=echo), settings=Settings())
        for n in range(6):
            app.invoke({"messages": [HumanMessage(f"question {n}")]}, config, durability="sync")
            # LangGraph's executor may land a task's writes after the run's last checkpoint
            # (on another of its threads); then what was kept is stale and a read is right.
            with saver._lock:
                kept_entry = saver._kept.get(("t", ""))
                untouched = kept_entry is not None and kept_entry.total_changes == saver.conn.total_changes
            kept, seen = statements(saver, lambda: saver.get_tuple(config))
            if untouched:
                assert seen == ["PRAGMA data_version"]
                served += 1
            assert set(kept.checkpoint["channel_values"]) >= {"messages", "window"}
            with open_saver(f"sqlite:///{db_path}") as other:
                read = other.get_tuple(config)
            assert as_plain(kept) == as_plain(read)
            kept.checkpoint["channel_values"]["window"]["start"] = -1  # a caller may change what it got
            again = saver.get_tuple(config)
            assert again.checkpoint["channel_values"]["window"] == read.checkpoint["channel_values"]["window"]
    assert served >= 2  # most runs end with nothing written after their last checkpoint


def test_a_checkpoint_another_connection_wrote_is_read_not_the_kept_one(db_path):
    config = {"configurable": {"thread_id": "t"}}
    with open_saver(f"sqlite:///{db_path}") as saver, open_saver(f"sqlite:///{db_path}") as other:
        chat(saver).invoke({"messages": [HumanMessage("from the first process")]}, config)
        chat(other).invoke({"messages": [HumanMessage("from the second process")]}, config)
        found = saver.get_tuple(config)
        assert [m.content for m in found.checkpoint["channel_values"]["messages"]][-2:] == [
            "from the second process",
            "you said: from the second process",
        ]
        assert found.checkpoint["id"] == other.get_tuple(config).checkpoint["id"]


def test_changes_made_through_the_same_saver_are_seen(db_path):
    config = {"configurable": {"thread_id": "t"}}
    with open_saver(f"sqlite:///{db_path}") as saver:
        app = chat(saver)
        app.invoke({"messages": [HumanMessage("hello")]}, config)
        app.update_state(config, {"messages": [HumanMessage("edited in")]})
        assert saver.get_tuple(config).checkpoint["channel_values"]["messages"][-1].content == "edited in"
        app.invoke({"messages": [HumanMessage("again")]}, config)
        saver.delete_thread("t")
        assert saver.get_tuple(config) is None
        app.invoke({"messages": [HumanMessage("new start")]}, config)
        assert [m.content for m in saver.get_tuple(config).checkpoint["channel_values"]["messages"]] == [
            "new start",
            "you said: new start",
        ]


def test_an_older_checkpoint_asked_by_id_is_read(db_path):
    config = {"configurable": {"thread_id": "t"}}
    with open_saver(f"sqlite:///{db_path}") as saver:
        app = chat(saver)
        app.invoke({"messages": [HumanMessage("one")]}, config)
        first = saver.get_tuple(config).config
        app.invoke({"messages": [HumanMessage("two")]}, config)
        older, seen = statements(saver, lambda: saver.get_tuple(first))
        assert len(older.checkpoint["channel_values"]["messages"]) == 2
        assert any(sql.startswith("SELECT checkpoint_id") for sql in seen)


def test_a_checkpoint_id_shaped_almost_like_a_uuid_finds_nothing(db_path):
    with open_saver(f"sqlite:///{db_path}") as saver:
        chat(saver).invoke({"messages": [HumanMessage("hello")]}, {"configurable": {"thread_id": "t"}})
        odd = {"configurable": {"thread_id": "t", "checkpoint_id": "12345678-1234-1234-1234-12345678-abc"}}
        assert saver.get_tuple(odd) is None
