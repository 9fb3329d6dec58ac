"""The real ChatOpenAI client against an OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from checkpointers import ThreadSaver
from graph import ModelError, Settings, build_graph
from tests.fake_openai import FakeOpenAI


@pytest.fixture
def server():
    with FakeOpenAI() as s:
        yield s


def settings_for(server: FakeOpenAI, **overrides) -> Settings:
    return Settings(**{"base_url": server.base_url, "api_key": "test-key", "model": "fake-model", "timeout_s": 5, "max_retries": 2, **overrides})


CFG = {"configurable": {"thread_id": "t1", "user_id": "alice"}}


def test_replies_stream_token_by_token_through_the_graph(saver: ThreadSaver, server: FakeOpenAI):
    server.plan.append(("reply", "Paris is the capital of France and has been for a long time"))
    app = build_graph(checkpointer=saver, settings=settings_for(server))
    pieces = [
        chunk.content
        for chunk, meta in app.stream({"messages": [HumanMessage("capital of France?")]}, CFG, stream_mode="messages")
        if meta["langgraph_node"] == "model" and chunk.content
    ]
    assert len(pieces) >= 10
    assert "".join(pieces) == "Paris is the capital of France and has been for a long time"
    sent = server.requests[0]
    assert sent["stream"] is True and sent["model"] == "fake-model"
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    assert app.get_state(CFG).values["messages"][-1].content.startswith("Paris")


def test_a_429_is_retried_with_backoff_and_the_turn_succeeds(saver: ThreadSaver, server: FakeOpenAI):
    server.plan.extend([("status", 429), ("reply", "after the retry")])
    app = build_graph(checkpointer=saver, settings=settings_for(server))
    state = app.invoke({"messages": [HumanMessage("hello")]}, CFG)
    assert state["messages"][-1].content == "after the retry"
    assert len(server.requests) == 2


def test_a_timeout_keeps_the_message_and_a_retry_does_not_duplicate_it(saver: ThreadSaver, server: FakeOpenAI):
    server.plan.append(("sleep", 1.5))
    app = build_graph(checkpointer=saver, settings=settings_for(server, timeout_s=0.3, max_retries=0))
    with pytest.raises(ModelError) as failed:
        app.invoke({"messages": [HumanMessage("are you there?")]}, CFG)
    assert failed.value.reason == "timeout"
    assert str(failed.value) == "The model did not answer within 0.3 s. Your message is saved; retry to send it again."
    messages = app.get_state(CFG).values["messages"]
    assert [m.content for m in messages] == ["are you there?"]
    assert app.get_state(CFG).next == ("model",)
    server.plan.append(("reply", "yes, here"))
    state = app.invoke(None, CFG)
    assert [m.content for m in state["messages"]] == ["are you there?", "yes, here"]
    assert saver.threads.get("t1").message_count == 2


def test_a_model_that_keeps_answering_429_fails_the_turn_with_one_sentence(saver: ThreadSaver, server: FakeOpenAI):
    server.plan.extend([("status", 429)] * 3)
    app = build_graph(checkpointer=saver, settings=settings_for(server, max_retries=1))
    with pytest.raises(ModelError) as failed:
        app.invoke({"messages": [HumanMessage("hello")]}, CFG)
    assert failed.value.reason == "rate_limit" and "\n" not in str(failed.value)
    assert "HTTP 429" in str(failed.value) and "retry" in str(failed.value)
    assert len(server.requests) == 2
    assert [type(m) for m in app.get_state(CFG).values["messages"]] == [HumanMessage]


def test_server_errors_and_bad_keys_are_named_plainly(saver: ThreadSaver, server: FakeOpenAI):
    app = build_graph(checkpointer=saver, settings=settings_for(server, max_retries=0))
    for status, reason, words in ((500, "server_error", "HTTP 500"), (401, "auth", "OPENAI_API_KEY"), (404, "not_found", "THREADKEEPER_MODEL")):
        server.plan.append(("status", status))
        with pytest.raises(ModelError) as failed:
            app.invoke({"messages": [HumanMessage("hello")]}, {"configurable": {"thread_id": f"t-{status}"}})
        assert failed.value.reason == reason and words in str(failed.value)


def test_an_unreachable_server_is_one_sentence(saver: ThreadSaver):
    app = build_graph(checkpointer=saver, settings=Settings(base_url="http://127.0.0.1:9/v1", api_key="k", max_retries=0, timeout_s=2))
    with pytest.raises(ModelError) as failed:
        app.invoke({"messages": [HumanMessage("hello")]}, CFG)
    assert failed.value.reason == "unreachable" and "127.0.0.1:9" in str(failed.value)
    assert isinstance(app.get_state(CFG).values["messages"][-1], HumanMessage)
