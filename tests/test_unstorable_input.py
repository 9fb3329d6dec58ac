"""Ids and text the store cannot keep exactly: refused at the door with one sentence,
and a write that fails anyway never stops the store for anyone else."""

from __future__ import annotations

import logging
import time

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from checkpointers import ThreadSaver
from checkpointers.errors import UnstorableInputError
from graph import Settings, build_graph
from tests.chat import chat_graph, human

OFFLINE = Settings(model="", base_url="", api_key="", max_input_tokens=4000)


def config(thread_id: str, user_id: str = "alice") -> dict:
    return {"configurable": {"thread_id": thread_id, "user_id": user_id}}


def one_sentence(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text
    return text


@pytest.mark.parametrize(
    "turn_input",
    [
        {"messages": [("user", "bad \ud800 text")]},
        {"messages": [HumanMessage("bad \udfff")]},
        {"messages": [HumanMessage([{"type": "text", "text": "x\ud83d"}])]},
        {"messages": [HumanMessage("fine", additional_kwargs={"note": "\ud800"})]},
    ],
)
def test_a_lone_surrogate_is_refused_and_every_other_thread_goes_on(store, turn_input, caplog):
    saver = store
    app = build_graph(checkpointer=saver, settings=OFFLINE)
    app.invoke({"messages": [("user", "hello")]}, config("bob-thread", "bob"))
    with pytest.raises(UnstorableInputError) as raised:
        app.invoke(turn_input, config("mallory-thread", "mallory"))
    assert "not valid Unicode" in one_sentence(raised.value)
    time.sleep(0.2)  # the flusher's chance to find anything left queued
    app.invoke({"messages": [("user", "still here?")]}, config("bob-thread", "bob"))
    assert len(app.get_state(config("bob-thread", "bob")).values["messages"]) == 4
    assert saver.threads.list("bob").threads[0].message_count == 4
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("bad", ["x\x00y", "\ud800", "a" * 1001])
def test_an_id_the_store_cannot_keep_is_refused_everywhere(store, bad: str):
    saver = store
    chat_graph(saver).invoke({"messages": [human(1)]}, config("good"))
    calls = [
        lambda: chat_graph(saver).invoke({"messages": [human(1)]}, config(bad)),
        lambda: chat_graph(saver).invoke({"messages": [human(1)]}, config("good2", bad)),
        lambda: saver.get_tuple(config(bad)),
        lambda: list(saver.list(config(bad))),
        lambda: saver.delete_thread(bad),
        lambda: saver.copy_thread("good", bad),
        lambda: saver.read_messages(bad),
        lambda: saver.threads.get(bad),
        lambda: saver.threads.list(bad),
        lambda: saver.threads.rename(bad, "t"),
        lambda: saver.threads.pin(bad),
    ]
    for call in calls:
        with pytest.raises(UnstorableInputError) as raised:
            call()
        one_sentence(raised.value)
    assert [t.thread_id for t in saver.threads.list("alice").threads] == ["good"]
    assert saver.maintenance.schema_problem() is None
    if isinstance(saver, ThreadSaver):
        assert saver.conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_titles_and_searches_with_a_lone_surrogate_get_one_sentence(store):
    saver = store
    chat_graph(saver).invoke({"messages": [human(1)]}, config("good"))
    for call in (lambda: saver.threads.rename("good", "a\ud800"), lambda: saver.threads.search("alice", "x\ud800")):
        with pytest.raises(UnstorableInputError) as raised:
            call()
        one_sentence(raised.value)


def test_a_deferred_write_that_can_never_be_written_is_dropped_with_one_log_line(saver: ThreadSaver, monkeypatch, caplog):
    # The doors refuse such text now; this stands in for any value SQLite cannot take,
    # to show the store's own last line of defence: it is not retried forever and
    # does not fail the writes of other threads.
    monkeypatch.setattr("checkpointers.engines.sqlite.values.check_value", lambda value, what="message": None)
    good = chat_graph(saver)
    good.invoke({"messages": [human(1)]}, config("bob-thread", "bob"))
    with caplog.at_level(logging.WARNING, logger="checkpointers.engines.sqlite.deferred"):
        try:
            # The title, taken from the first message, is text SQLite cannot bind.
            good.invoke({"messages": [HumanMessage("poison \ud800")]}, config("mallory-thread", "mallory"))
        except UnicodeEncodeError:
            pass  # written at once, it fails in the caller's hands; deferred, the flusher meets it
        time.sleep(0.5)
        good.invoke({"messages": [human(2)]}, config("bob-thread", "bob"))
        time.sleep(0.5)
    assert len(saver.read_messages("bob-thread").messages) == 4
    dropped = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 1 and len(caplog.records) == 1 and not saver._deferred
    assert saver.conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
