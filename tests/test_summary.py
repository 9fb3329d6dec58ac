"""Memory beyond the window: the running summary and kept facts (graph/summary.py).

The real agent graph on a real SQLite store; only the chat model and the
summary model are scripted.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings as hypothesis_settings, strategies as st
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from checkpointers import ThreadSaver, open_saver
from checkpointers.retention import delete_user
from graph import Settings, build_graph
from graph.summary import (
    SUMMARY_HEADING,
    RunningSummary,
    clear_summary,
    extract_fact,
    fold_end,
    set_facts,
    set_summary,
    summary_of,
)
from graph.tokens import make_counter
from graph.trimming import choose_window
from tests.chat import sentence
from tests.scripted import ScriptedChatModel
from tests.test_trimming import check_input

BUDGET = 500
VIKTOR = "My name is Viktor and I'm allergic to peanuts."
counter = make_counter("approximate")


def config(thread_id: str = "t", user_id: str = "alice") -> dict:
    return {"configurable": {"thread_id": thread_id, "user_id": user_id}}


def chatty(seed: int = 0) -> ScriptedChatModel:
    rng = random.Random(seed)
    return ScriptedChatModel(script=lambda messages: AIMessage(sentence(rng, 200)))


def new_messages(summary_input: list) -> str:
    """The part of a summary call that holds the messages to fold (not the previous summary)."""
    return summary_input[-1].content.split("\nNew messages:\n", 1)[1]


def note_taker(messages) -> AIMessage:
    """A summary model that keeps the previous notes and adds what the user said about themselves."""
    previous = messages[-1].content.split("\n\nNew messages:\n", 1)[0].removeprefix("Previous summary:\n")
    notes = [] if previous == "(none yet)" else previous.splitlines()
    notes += [line for line in new_messages(messages).splitlines() if re.search(r"my name|allergic", line, re.I)]
    return AIMessage("\n".join(notes) or "Small talk.")


def chat_app(saver, model=None, summary_model=None, budget: int = BUDGET, **settings):
    return build_graph(
        checkpointer=saver,
        model=model or chatty(),
        summary_model=summary_model,
        settings=Settings(max_input_tokens=budget, **settings),
        counter=counter,
    )


def talk(app, turns: int, *, start: int = 0, thread: str = "t", rng: random.Random | None = None, wait: bool = True) -> None:
    rng = rng or random.Random(start)
    for n in range(start, start + turns):
        app.invoke({"messages": [HumanMessage(f"m{n} " + sentence(rng, 100))]}, config(thread))
        if wait:
            app.summarizer.wait_idle(10)


def sent_block(sent) -> str:
    """The memory block of one model input: the system message after the prompt."""
    return sent[0].content.split("\n\n", 1)[1] if "\n\n" in sent[0].content else ""


# -- the fact from turn 1 ---------------------------------------------------------


@pytest.mark.parametrize("writer", ["extractive", "model"])
@pytest.mark.parametrize("summary", [True, False], ids=["summary-on", "summary-off"])
def test_a_fact_from_turn_1_reaches_the_model_at_turn_300_with_a_500_token_budget(saver, writer, summary):
    model = chatty()
    summariser = ScriptedChatModel(script=note_taker) if writer == "model" else None
    app = chat_app(saver, model, summariser, summary=summary)
    app.invoke({"messages": [HumanMessage(VIKTOR)]}, config())
    talk(app, 299, start=1)
    assert len(model.inputs) == 300
    last = model.inputs[-1]
    in_window = [m for m in last[1:] if "Viktor" in str(m.content)]
    assert in_window == []  # long out of the window
    assert ("Viktor" in last[0].content) is summary
    assert ("peanuts" in last[0].content) is summary
    if not summary:
        assert "summary" not in app.get_state(config()).values
    check_input(last, counter, BUDGET)


# -- budget and incremental folding over 1,000 turns ------------------------------------


def test_over_1000_turns_the_summary_stays_in_budget_and_each_message_is_summarised_once(saver):
    def grows(messages):  # a summary model that never shortens anything: the budget must hold it
        previous = messages[-1].content.split("\n\nNew messages:\n", 1)[0].removeprefix("Previous summary:\n")
        return AIMessage(previous + "\n" + new_messages(messages))

    model, summariser = chatty(), ScriptedChatModel(script=grows)
    app = chat_app(saver, model, summariser)
    rng = random.Random(5)
    for n in range(1000):
        text = f"m{n}x " + sentence(rng, rng.choice([20, 100, 400]))
        app.invoke({"messages": [HumanMessage(text)]}, config())
        app.summarizer.wait_idle(10)
    budget = Settings(max_input_tokens=BUDGET).summary_budget
    for sent in model.inputs:
        check_input(sent, counter, BUDGET)
        assert counter.count_text(sent_block(sent)) <= budget
    state = app.get_state(config()).values
    assert counter.count_text(state["summary"]["text"]) <= budget
    folded = [re.findall(r"User: (m\d+)x ", new_messages(call)) for call in summariser.inputs]
    every = [turn for call in folded for turn in call]
    assert len(every) == len(set(every))  # at most once
    covered_humans = sum(isinstance(m, HumanMessage) for m in state["messages"][: state["summary"]["count"]])
    assert every == [f"m{n}" for n in range(len(every))]  # oldest first, none skipped
    assert 900 < covered_humans <= len(every)  # (the last job's work is folded in at the next turn)
    # The window holds two to four of these turns; each call folds about half of it, not one turn.
    assert len(summariser.inputs) < 1000 * 0.6
    assert len(state["messages"]) == 2000  # the history is whole


# -- the reply never waits ---------------------------------------------------------


def test_a_turn_ends_while_its_summary_is_still_being_written(saver):
    release = threading.Event()

    def slow(messages):
        release.wait(30)
        return note_taker(messages)

    app = chat_app(saver, summary_model=ScriptedChatModel(script=slow))
    app.invoke({"messages": [HumanMessage(VIKTOR)]}, config())
    talk(app, 8, start=1, wait=False)
    assert app.summarizer.pending(config())
    started = time.perf_counter()
    for chunk in app.stream({"messages": [HumanMessage("one more")]}, config(), stream_mode="messages"):
        pass
    assert time.perf_counter() - started < 2  # the stream ended; the summary model is still blocked
    assert summary_of(app, config()).summary == "" and summary_of(app, config()).pending
    release.set()
    assert app.summarizer.wait_idle(10)
    talk(app, 1, start=20)
    assert "Viktor" in summary_of(app, config()).summary


# -- failure ------------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["raises", "times out", "answers nothing"])
def test_a_failed_summary_keeps_the_previous_one_and_the_history_and_is_retried(saver, failure, caplog):
    mode = {"failing": False}

    def flaky(messages):
        if mode["failing"]:
            if failure == "raises":
                raise RuntimeError(f"provider said: {new_messages(messages)[:80]}")  # text must not reach the log
            if failure == "times out":
                time.sleep(0.5)
            else:
                return AIMessage("   ")
        return note_taker(messages)

    model = chatty()
    app = chat_app(saver, model, ScriptedChatModel(script=flaky), timeout_s=0.1, max_retries=0)
    app.invoke({"messages": [HumanMessage(VIKTOR)]}, config())
    talk(app, 20, start=1)
    before = app.get_state(config()).values["summary"]
    assert "Viktor" in before["text"]

    mode["failing"] = True
    caplog.set_level(logging.INFO, logger="graph.summary")
    for n in range(21, 41):
        app.invoke({"messages": [HumanMessage(f"m{n} " + sentence(random.Random(n), 100))]}, config())
        time.sleep(0.12 if failure == "times out" else 0)  # past the deadline, so the next turn gives up on it
        app.summarizer.wait_idle(0 if failure == "times out" else 10)
        state = app.get_state(config()).values
        assert state["summary"] == before
        assert len(state["messages"]) == 2 * (n + 1)
        assert isinstance(state["messages"][-1], AIMessage) and state["messages"][-1].content  # a reply as usual
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert failures and all(r.getMessage().count("\n") == 0 for r in failures)
    assert all("m2" not in r.getMessage() and "Viktor" not in r.getMessage() for r in caplog.records)
    assert all("Viktor" in sent[0].content for sent in model.inputs[-20:])  # the old summary still served

    mode["failing"] = False
    app.summarizer.wait_idle(10)
    talk(app, 3, start=41)
    after = app.get_state(config()).values["summary"]
    assert after["count"] > before["count"] and "Viktor" in after["text"]


# -- tool calls and the newest human message ---------------------------------------------


turns = st.lists(
    st.tuples(st.sampled_from([5, 60, 300, 1500]), st.integers(min_value=0, max_value=2)), min_size=15, max_size=60
)


@hypothesis_settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=turns)
@example(script=[(60, 2)] * 30)
def test_no_model_input_holds_an_orphaned_tool_message_or_lacks_the_newest_human_message(tmp_path_factory, script):
    """Turns of varied sizes, some with one or two tool calls; a summary model that
    records what it folds."""
    rng = random.Random(len(script))

    def model_script(messages):
        last_human = [m for m in messages if isinstance(m, HumanMessage)][-1]
        wanted = int(str(last_human.content).split(":", 1)[0][-1])
        asked = sum(isinstance(m, ToolMessage) for m in messages[messages.index(last_human) :])
        if asked < wanted:
            return AIMessage("", tool_calls=[{"name": "list_tables", "args": {}, "id": f"c{rng.random()}"}])
        return AIMessage(sentence(rng, rng.choice([20, 400])))

    model, summariser = ScriptedChatModel(script=model_script), ScriptedChatModel(script=note_taker)
    with closing(ThreadSaver(tmp_path_factory.mktemp("orphans") / "t.db")) as saver:
        app = chat_app(saver, model, summariser)
        for n, (size, tools) in enumerate(script):
            text = f"turn {n} tools {tools}: " + sentence(rng, size)
            before = len(model.inputs)
            app.invoke({"messages": [HumanMessage(text)]}, config())
            app.summarizer.wait_idle(10)
            for sent in model.inputs[before:]:
                check_input(sent, counter, BUDGET)
                newest = [m for m in sent if isinstance(m, HumanMessage)][-1]
                assert str(newest.content).startswith(text[:20])
    for call in summariser.inputs:
        folded = new_messages(call)
        assert folded.count("Assistant used the tool") == folded.count("Tool result:")  # together or not at all
        assert folded.startswith("User: ")
    if len(script) >= 30 and all(tools for _, tools in script):
        assert any("Assistant used the tool" in new_messages(call) for call in summariser.inputs)  # the check above bit


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(1, 2000), st.integers(0, 3), st.integers(1, 2000)), min_size=1, max_size=40),
    covered_turns=st.integers(0, 40),
    budget=st.integers(200, 4000),
)
def test_the_summary_ends_on_a_turn_after_what_it_covers_and_before_the_newest_message(sizes, covered_turns, budget):
    history, starts = [], []
    for n, (asked, tools, answered) in enumerate(sizes):
        starts.append(len(history))
        history.append(HumanMessage("q" * asked, id=f"h{n}"))
        for t in range(tools):
            history.append(AIMessage("", tool_calls=[{"name": "list_tables", "args": {}, "id": f"c{n}-{t}"}], id=f"a{n}-{t}"))
            history.append(ToolMessage("r" * answered, tool_call_id=f"c{n}-{t}", id=f"r{n}-{t}"))
        history.append(AIMessage("a" * answered, id=f"a{n}"))
    history.pop()  # the model is answering the newest message
    covered = starts[min(covered_turns, len(starts) - 1)]
    window = choose_window(history, counter, budget, 40)
    end = fold_end(history, counter, window, covered, counter.count(AIMessage("a" * 300)))
    if end is None:
        return
    assert covered < end <= starts[-1]
    assert isinstance(history[end], HumanMessage)


# -- kept facts ---------------------------------------------------------------------


def test_remembered_facts_are_kept_verbatim_and_no_summary_drops_them(saver):
    forgetful = ScriptedChatModel(script=lambda messages: AIMessage("Nothing worth keeping."))
    model = chatty()
    app = chat_app(saver, model, forgetful)
    app.invoke({"messages": [HumanMessage("Remember that my daughter's name is Ana, not Anna. Thanks!")]}, config())
    talk(app, 100, start=1)
    app.invoke({"messages": [HumanMessage("please remember: the door code is 4417")]}, config())
    talk(app, 100, start=200)
    assert len(forgetful.inputs) > 5
    system = model.inputs[-1][0].content
    assert "- my daughter's name is Ana, not Anna.\n- the door code is 4417" in system
    assert summary_of(app, config()).facts == ["my daughter's name is Ana, not Anna.", "the door code is 4417"]


@pytest.mark.parametrize(
    ("text", "fact"),
    [
        ("Remember that I'm vegetarian.", "I'm vegetarian."),
        ("ok, remember: flights leave at 7.30 from gate B", "flights leave at 7.30 from gate B"),
        ("Hi! Please remember that my cat is called Mochi. What should I feed her?", "my cat is called Mochi."),
        ("Do you remember what I said?", None),
        ("remember that?", None),
        ("I can't remember that film's name", None),
    ],
)
def test_what_counts_as_a_fact_to_keep(text, fact):
    assert extract_fact(text) == fact


# -- off, offline ---------------------------------------------------------------------


def test_offline_the_summary_is_extractive_and_the_reply_says_it_has_one(saver):
    app = build_graph(checkpointer=saver, settings=Settings(max_input_tokens=300))
    app.invoke({"messages": [HumanMessage("my name is Viktor")]}, config())
    talk(app, 15, start=1)
    assert "The user said: my name is Viktor" in summary_of(app, config()).summary
    assert app.get_state(config()).values["messages"][-1].content.count("a summary of the earlier ones") == 1


def test_the_settings_read_the_summary_variables():
    env = {"THREADKEEPER_SUMMARY": "off", "THREADKEEPER_SUMMARY_MAX_TOKENS": "300", "THREADKEEPER_SUMMARY_MODEL": "gpt-4.1-nano"}
    read = Settings.from_env(env)
    assert (read.summary, read.summary_max_tokens, read.summary_model, read.summary_budget) == (False, 300, "gpt-4.1-nano", 300)
    assert Settings.from_env({"THREADKEEPER_MAX_INPUT_TOKENS": "800"}).summary_budget == 200  # a quarter at most
    with pytest.raises(ValueError, match="THREADKEEPER_SUMMARY must be on or off"):
        Settings.from_env({"THREADKEEPER_SUMMARY": "sometimes"})


# -- the store: copy, delete, encryption ----------------------------------------------------

MARKER = "zqx-summary-marker-5519"


def marked_summary(messages) -> AIMessage:
    return AIMessage(f"The user chatted; {MARKER}.")


def disk_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def summarised_thread(saver, thread: str = "t", user: str = "alice"):
    app = chat_app(saver, summary_model=ScriptedChatModel(script=marked_summary))
    for n in range(12):
        app.invoke({"messages": [HumanMessage(f"m{n} " + sentence(random.Random(n), 100))]}, config(thread, user))
        app.summarizer.wait_idle(10)
    assert MARKER in summary_of(app, config(thread, user)).summary
    return app


def test_copy_thread_copies_the_summary_and_the_facts(store):
    app = summarised_thread(store)
    set_facts(app, config(), ["I live in Oslo."])
    store.copy_thread("t", "t2")
    assert summary_of(app, config("t2")) == summary_of(app, config("t"))


@pytest.mark.parametrize("erase", ["thread", "user"])
def test_deleting_the_thread_or_the_user_leaves_no_trace_of_its_summary(saver, db_path, erase):
    summarised_thread(saver)
    summarised_thread(saver, "other", "bob")
    set_facts(build_graph(checkpointer=saver, settings=Settings()), config("t"), [f"fact {MARKER}-f"])
    saver.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert f"{MARKER}-f".encode() in disk_bytes(db_path.parent)  # the check below can fail
    saver.delete_thread("other")
    if erase == "thread":
        saver.delete_thread("t")
    else:
        delete_user(saver, "alice")
    saver.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert MARKER.encode() not in disk_bytes(db_path.parent)


@pytest.mark.parametrize("erase", ["thread", "user"])
def test_on_postgresql_deleting_the_thread_or_the_user_leaves_its_summary_in_no_table(postgres_url, erase):
    from tests.postgres import tables_holding

    with open_saver(postgres_url) as saver:
        summarised_thread(saver)
        summarised_thread(saver, "other", "bob")
        set_facts(build_graph(checkpointer=saver, settings=Settings()), config("t"), [f"fact {MARKER}-f"])
        assert tables_holding(postgres_url, MARKER)  # the check below can fail
        saver.delete_thread("other")
        if erase == "thread":
            saver.delete_thread("t")
        else:
            delete_user(saver, "alice")
    assert tables_holding(postgres_url, MARKER) == set()


def test_with_encryption_the_summary_is_not_in_the_file_in_clear(tmp_path):
    data = tmp_path / "data"
    with closing(ThreadSaver(data / "threadkeeper.db", encryption_key="pale-turquoise-otter-42")) as saver:
        app = summarised_thread(saver)
        set_facts(app, config(), [f"fact {MARKER}"])
        assert MARKER in summary_of(app, config()).summary
    assert MARKER.encode() not in disk_bytes(data)
    plain = tmp_path / "plain"
    with closing(ThreadSaver(plain / "threadkeeper.db", encryption_key=None)) as saver:
        set_facts(summarised_thread(saver), config(), [f"fact {MARKER}"])
    assert MARKER.encode() in disk_bytes(plain)  # the same check finds it in a store without a key


def test_with_encryption_on_postgresql_the_summary_is_in_no_table_in_clear(postgres_url, monkeypatch):
    from tests.postgres import fresh_schema, tables_holding

    with open_saver(postgres_url) as saver:  # the same check finds it in a store without a key
        set_facts(summarised_thread(saver), config(), [f"fact {MARKER}"])
    assert tables_holding(postgres_url, MARKER)
    with fresh_schema(postgres_url.split("?")[0]) as sealed:
        with open_saver(sealed, encryption_key="pale-turquoise-otter-42") as saver:
            app = summarised_thread(saver)
            set_facts(app, config(), [f"fact {MARKER}"])
            assert MARKER in summary_of(app, config()).summary
        assert tables_holding(sealed, MARKER) == set()


def test_after_rotate_key_the_summary_and_facts_read_back_with_the_new_key_on_either_engine(store_url):
    from tests.test_encryption import holding, rotate_url

    old, new = "pale-turquoise-otter-42", "brass-lantern-harbor-17"
    with open_saver(store_url, encryption_key=old) as saver:
        set_facts(summarised_thread(saver), config(), [f"fact {MARKER}"])
    rotate_url(store_url, old, new)
    assert holding(store_url, MARKER) == set()
    with open_saver(store_url, encryption_key=new) as saver:
        kept = summary_of(chat_app(saver), config())
        assert MARKER in kept.summary and kept.facts == [f"fact {MARKER}"]


# -- the summary panel's interface ------------------------------------------------------


def test_a_summary_set_by_hand_is_what_the_model_reads_and_is_folded_into_later(saver):
    model = chatty()
    app = chat_app(saver, model, ScriptedChatModel(script=note_taker))
    app.invoke({"messages": [HumanMessage(VIKTOR)]}, config())
    talk(app, 20, start=1)
    covered = summary_of(app, config()).covered
    shown = set_summary(app, config(), "The user is called Vik and likes chess.")
    assert shown.summary == "The user is called Vik and likes chess." and shown.covered == covered
    talk(app, 1, start=30)
    assert "likes chess" in model.inputs[-1][0].content and "peanuts" not in model.inputs[-1][0].content
    talk(app, 20, start=31)
    assert summary_of(app, config()).summary.startswith("The user is called Vik and likes chess.")
    with pytest.raises(ValueError, match="fit beside the kept facts"):
        set_summary(app, config(), "word " * 2000)


def test_clearing_forgets_summary_and_facts_without_summarising_those_messages_again(saver):
    model, summariser = chatty(), ScriptedChatModel(script=note_taker)
    app = chat_app(saver, model, summariser)
    app.invoke({"messages": [HumanMessage(VIKTOR + " Remember that I live in Oslo.")]}, config())
    talk(app, 20, start=1)
    calls = len(summariser.inputs)
    cleared = clear_summary(app, config())
    assert (cleared.summary, cleared.facts) == ("", []) and cleared.covered > 0
    talk(app, 2, start=40)
    assert SUMMARY_HEADING not in model.inputs[-1][0].content and "Oslo" not in model.inputs[-1][0].content
    talk(app, 20, start=50)
    assert all("Viktor" not in new_messages(call) for call in summariser.inputs[calls:])
    assert len(app.get_state(config()).values["messages"]) == 2 * 43  # the history is untouched


def test_an_edit_before_the_end_of_the_summary_starts_it_again(saver):
    from langchain_core.messages import RemoveMessage

    app = chat_app(saver, summary_model=ScriptedChatModel(script=note_taker))
    app.invoke({"messages": [HumanMessage(VIKTOR)]}, config())
    talk(app, 20, start=1)
    messages = app.get_state(config()).values["messages"]
    assert RunningSummary.from_state(app.get_state(config()).values["summary"]).count > 4
    app.update_state(config(), {"messages": [RemoveMessage(id=m.id) for m in messages[2:]]}, as_node="model")
    talk(app, 1, start=99)
    assert summary_of(app, config()).covered == 0  # it covered messages that are gone
    talk(app, 20, start=100)
    assert "Viktor" in summary_of(app, config()).summary  # and is written again from what is there


# -- the LangGraph server door ------------------------------------------------------------


def test_through_langgraph_dev_the_summary_and_facts_are_in_the_threads_state(tmp_path):
    import asyncio

    from langgraph_sdk import get_client

    from tests.test_langgraph_server import LangGraphDev

    server = LangGraphDev(tmp_path, tmp_path / "threadkeeper.db")
    server.env["THREADKEEPER_MAX_INPUT_TOKENS"] = "300"

    async def chat() -> tuple[dict, int]:
        client = get_client(url=server.url)
        thread = await client.threads.create(metadata={"user_id": "alice"})
        say = [VIKTOR + " Remember that I live in Oslo."] + [f"m{n} " + sentence(random.Random(n), 100) for n in range(40)]
        for turns, text in enumerate(say, 1):
            await client.runs.wait(thread["thread_id"], "threadkeeper", input={"messages": [{"role": "user", "content": text}]})
            values = (await client.threads.get_state(thread["thread_id"]))["values"]
            if "Viktor" in values.get("summary", {}).get("text", ""):
                return values, turns
        return values, turns

    server.start()
    try:
        values, turns = asyncio.run(chat())
    finally:
        server.stop()
    assert "The user said: My name is Viktor" in values["summary"]["text"], turns
    assert [f["text"] for f in values["facts"]] == ["I live in Oslo."]
    assert "a summary of the earlier ones" in values["messages"][-1]["content"]
    assert len(values["messages"]) == 2 * turns
