"""What the model is sent: under budget, starting on a human, no orphaned tool results."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

from langchain_core.messages import AIMessage, HumanMessage, RemoveMessage, SystemMessage, ToolMessage

from checkpointers import ThreadSaver
from graph import Settings, build_graph
from graph.tokens import TokenCounter, make_counter
from graph.trimming import choose_window, model_input
from tests.chat import sentence
from tests.scripted import ScriptedChatModel

BUDGET = 600


def check_input(sent, counter: TokenCounter, budget: int) -> None:
    assert isinstance(sent[0], SystemMessage)
    assert isinstance(sent[1], HumanMessage), [type(m).__name__ for m in sent[:3]]
    assert sum(counter.count(m) for m in sent) <= budget
    calls = set()
    for message in sent[1:]:
        if isinstance(message, AIMessage):
            calls.update(c["id"] for c in message.tool_calls)
        if isinstance(message, ToolMessage):
            assert message.tool_call_id in calls, "orphaned tool result"
    answered = {m.tool_call_id for m in sent if isinstance(m, ToolMessage)}
    assert calls <= answered, "tool call without its result"


def test_over_a_1000_turn_thread_the_input_stays_under_budget_and_whole(tmp_path: Path):
    db = tmp_path / "facts.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE facts (n INTEGER)")
    conn.executemany("INSERT INTO facts VALUES (?)", [(i,) for i in range(50)])
    conn.commit()
    conn.close()
    rng = random.Random(7)

    def script(messages):
        last = messages[-1]
        if isinstance(last, HumanMessage) and "lookup" in str(last.content):
            return AIMessage("", tool_calls=[{"name": "query_database", "args": {"sql": "SELECT n FROM facts LIMIT 3"}, "id": f"c{rng.random()}"}])
        return AIMessage(sentence(rng, rng.choice([50, 200, 900])))

    counter = make_counter("approximate")
    settings = Settings(max_input_tokens=BUDGET)
    model = ScriptedChatModel(script=script)
    saver = ThreadSaver(tmp_path / "store.db")
    saver.attachments.attach("long", db)
    app = build_graph(checkpointer=saver, model=model, settings=settings, counter=counter)
    cfg = {"configurable": {"thread_id": "long"}}
    for turn in range(1000):
        text = sentence(rng, rng.choice([20, 100, 400]))
        if turn % 9 == 0:
            text = "lookup " + text
        app.invoke({"messages": [HumanMessage(text)]}, cfg)
    assert len(model.inputs) > 1100  # every turn, plus a second call after each lookup
    for sent in model.inputs:
        check_input(sent, counter, BUDGET)
    assert len(app.get_state(cfg).values["messages"]) > 2000  # the history is kept whole
    saver.close()
    windows = [len(sent) for sent in model.inputs[-50:]]
    assert min(windows) >= 3  # not trimmed down to nothing


def test_counting_does_not_grow_with_the_history():
    counter = make_counter("approximate")
    calls = []
    original = counter._count_uncached
    counter._count_uncached = lambda m: calls.append(m) or original(m)
    history = []
    per_turn = []
    for turn in range(600):
        history += [HumanMessage(f"question {turn} " * 20, id=f"h{turn}"), AIMessage(f"answer {turn} " * 30, id=f"a{turn}")]
        before = len(calls)
        choose_window(history, counter, 500, 40)
        per_turn.append(len(calls) - before)
    assert max(per_turn[10:]) <= 2  # only the two new messages are counted
    assert sum(per_turn) <= len(history) + 2


def test_choosing_the_window_touches_only_the_window():
    counter = make_counter("approximate")
    touched = []
    original = counter.count
    counter.count = lambda m: touched.append(m.id) or original(m)
    history = []
    for turn in range(3000):
        history += [HumanMessage("q " * 50, id=f"h{turn}"), AIMessage("a " * 50, id=f"a{turn}")]
    window = choose_window(history, counter, 1000, 40)
    assert len(history) - window.start <= len(touched) <= len(history) - window.start + 2


def test_a_newest_message_over_budget_is_cut_with_a_note_and_kept_whole(saver: ThreadSaver):
    seen = []
    model = ScriptedChatModel(script=lambda messages: seen.append(messages) or AIMessage("ok"))
    app = build_graph(checkpointer=saver, model=model, settings=Settings(max_input_tokens=300))
    cfg = {"configurable": {"thread_id": "t"}}
    app.invoke({"messages": [HumanMessage("short question")]}, cfg)
    huge = "word " * 3000
    state = app.invoke({"messages": [HumanMessage(huge)]}, cfg)
    sent = seen[-1]
    assert [type(m).__name__ for m in sent] == ["SystemMessage", "HumanMessage"]
    assert len(sent[1].content) < len(huge) and "cut here" in sent[1].content
    assert sum(make_counter("approximate").count(m) for m in sent) <= 300
    note = state["messages"][-1].response_metadata["input_note"]
    assert "over the 300-token input budget" in note
    assert state["messages"][-2].content == huge  # the checkpoint keeps the whole message


def test_orphaned_tool_results_and_unanswered_calls_are_repaired():
    history = [
        HumanMessage("q1", id="h1"),
        AIMessage("", tool_calls=[{"name": "list_tables", "args": {}, "id": "call-gone"}], id="a1"),
        HumanMessage("q2", id="h2"),
        ToolMessage("stale result", tool_call_id="call-removed", id="t1"),
        AIMessage("", tool_calls=[{"name": "list_tables", "args": {}, "id": "call-open"}], id="a2"),
        HumanMessage("q3", id="h3"),
    ]
    counter = make_counter("approximate")
    window = choose_window(history, counter, 2000, 10)
    sent = model_input("system", history, window)
    check_input(sent, counter, 2000)
    assert all(m.content != "stale result" for m in sent)


def test_edits_and_removals_change_what_the_model_sees(saver: ThreadSaver):
    model = ScriptedChatModel(script=lambda messages: AIMessage(f"seen {len(messages)}"))
    app = build_graph(checkpointer=saver, model=model, settings=Settings())
    cfg = {"configurable": {"thread_id": "t"}}
    app.invoke({"messages": [HumanMessage("first", id="h1")]}, cfg)
    app.invoke({"messages": [HumanMessage("second", id="h2")]}, cfg)
    first_reply = app.get_state(cfg).values["messages"][1]
    app.update_state(cfg, {"messages": [RemoveMessage(id=first_reply.id), HumanMessage("first, edited", id="h1")]})
    app.invoke({"messages": [HumanMessage("third", id="h3")]}, cfg)
    assert [m.content for m in model.inputs[-1][1:]] == ["first, edited", "second", "seen 4", "third"]


def test_an_exact_tokenizer_is_used_from_a_local_rank_file(tmp_path: Path):
    import base64

    ranks = [bytes([b]) for b in range(256)] + [b"he", b"ll", b"hell", b"hello"]
    rank_file = tmp_path / "tiny.tiktoken"
    rank_file.write_text("".join(f"{base64.b64encode(tok).decode()} {i}\n" for i, tok in enumerate(ranks)))
    exact = make_counter(str(rank_file))
    assert exact.exact and exact.count_text("hello") == 1 and exact.count_text("hello hello") == 3


def test_auto_counts_approximately_when_no_encoding_is_on_disk(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    counter = make_counter("auto", "gpt-4o-mini")
    assert not counter.exact
    assert counter.count(HumanMessage("hello world", id="x")) > 0


def test_each_step_counts_only_what_is_new_and_agrees_with_a_full_count():
    counter = make_counter("approximate")
    touched = []
    original = counter.count
    counter.count = lambda m: touched.append(m.id) or original(m)
    rng = random.Random(3)
    history, previous, per_step = [], None, []
    for turn in range(1500):
        history += [HumanMessage(sentence(rng, rng.choice([30, 300])), id=f"h{turn}"), AIMessage(sentence(rng, rng.choice([60, 900])), id=f"a{turn}")]
        before = len(touched)
        window = choose_window(history, counter, 2000, 40, previous)
        per_step.append(len(touched) - before)
        full = choose_window(history, make_counter("approximate"), 2000, 40)
        assert (window.start, window.tokens) == (full.start, full.tokens), turn
        previous = window
    steady = sorted(per_step[100:])
    assert steady[len(steady) // 2] <= 6  # a typical step: the new messages and a dropped turn
