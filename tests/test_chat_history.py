"""`ThreadChatHistory`: an existing LangChain chain keeps its context in threads, on both
engines (`store`, `store_url`: a SQLite file, a PostgreSQL schema)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import ConfigurableFieldSpec
from langchain_core.runnables.history import RunnableWithMessageHistory

from checkpointers import ThreadChatHistory, ThreadNotFoundError, ThreadSaver, close_shared_savers, open_saver
from checkpointers.history import shared_saver
from graph import build_graph
from tests.scripted import ScriptedChatModel, echo

ROOT = Path(__file__).resolve().parent.parent

# The issue asks for exactly this (deprecated but widely used) LangChain API.
pytestmark = pytest.mark.filterwarnings("ignore:RunnableWithMessageHistory is deprecated")


def remember_names(messages: list[BaseMessage]) -> AIMessage:
    """Answers "what is my name?" from what the human said earlier in the input."""
    question = messages[-1].content
    if "what is my name" not in question:
        return AIMessage(f"noted: {question}")
    for message in messages[:-1]:
        found = re.search(r"my name is (\w+)", str(message.content)) if message.type == "human" else None
        if found:
            return AIMessage(f"Your name is {found.group(1)}.")
    return AIMessage("I don't know your name.")


def the_chain(model: ScriptedChatModel):
    """The chain from the issue: a system message, the history, the question."""
    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "You are a helpful assistant."),
            MessagesPlaceholder("chat_history"),
            ("human", "{question}"),
        ]
    )
    return prompt | model


def chain_with_history(saver: ThreadSaver, model: ScriptedChatModel, user_id: str = "alice"):
    return RunnableWithMessageHistory(
        the_chain(model),
        lambda session_id: ThreadChatHistory(session_id, user_id=user_id, saver=saver),
        input_messages_key="question",
        history_messages_key="chat_history",
    )


def ask(chain, session_id: str, question: str) -> str:
    return chain.invoke({"question": question}, config={"configurable": {"session_id": session_id}}).content


@pytest.fixture
def model() -> ScriptedChatModel:
    return ScriptedChatModel(script=remember_names)


def test_a_chain_keeps_its_context_across_calls(store, model):
    saver = store
    chain = chain_with_history(saver, model)
    ask(chain, "s-1", "my name is Ada")
    assert ask(chain, "s-1", "what is my name?") == "Your name is Ada."
    seen = model.inputs[-1]
    assert [m.type for m in seen] == ["system", "human", "ai", "human"]
    assert seen[1].content == "my name is Ada" and seen[2].content == "noted: my name is Ada"


def test_two_sessions_stay_separate(store, model):
    saver = store
    chain = chain_with_history(saver, model)
    ask(chain, "s-ada", "my name is Ada")
    ask(chain, "s-bob", "my name is Bob")
    assert ask(chain, "s-ada", "what is my name?") == "Your name is Ada."
    assert ask(chain, "s-bob", "what is my name?") == "Your name is Bob."
    assert ask(chain, "s-new", "what is my name?") == "I don't know your name."
    assert len(ThreadChatHistory("s-ada", user_id="alice", saver=saver).messages) == 4


def test_context_survives_a_restart(store_url, model):
    with open_saver(store_url) as first:
        ask(chain_with_history(first, model), "s-1", "my name is Ada")
    with open_saver(store_url) as second:
        assert ask(chain_with_history(second, model), "s-1", "what is my name?") == "Your name is Ada."


def test_context_written_by_another_process_is_there(store_url, model):
    url = store_url
    script = textwrap.dedent(
        f"""
        from langchain_core.runnables.history import RunnableWithMessageHistory
        from checkpointers import ThreadChatHistory
        from tests.scripted import ScriptedChatModel
        from tests.test_chat_history import remember_names, the_chain

        chain = RunnableWithMessageHistory(
            the_chain(ScriptedChatModel(script=remember_names)),
            lambda session_id: ThreadChatHistory(session_id, user_id="alice", url={url!r}),
            input_messages_key="question",
            history_messages_key="chat_history",
        )
        chain.invoke({{"question": "my name is Grace"}}, config={{"configurable": {{"session_id": "s-proc"}}}})
        print("done")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    with open_saver(url) as saver:
        assert ask(chain_with_history(saver, model), "s-proc", "what is my name?") == "Your name is Grace."


def test_clear_empties_only_its_session(store, model):
    saver = store
    chain = chain_with_history(saver, model)
    ask(chain, "s-ada", "my name is Ada")
    ask(chain, "s-bob", "my name is Bob")
    ThreadChatHistory("s-ada", user_id="alice", saver=saver).clear()
    assert ThreadChatHistory("s-ada", user_id="alice", saver=saver).messages == []
    assert ask(chain, "s-ada", "what is my name?") == "I don't know your name."
    assert ask(chain, "s-bob", "what is my name?") == "Your name is Bob."


def test_history_factory_config_with_user_and_conversation(store, model):
    saver = store
    chain = RunnableWithMessageHistory(
        the_chain(model),
        lambda user_id, conversation_id: ThreadChatHistory(conversation_id, user_id=user_id, saver=saver),
        input_messages_key="question",
        history_messages_key="chat_history",
        history_factory_config=[
            ConfigurableFieldSpec(id="user_id", annotation=str, name="User ID", default="", is_shared=True),
            ConfigurableFieldSpec(
                id="conversation_id", annotation=str, name="Conversation ID", default="", is_shared=True
            ),
        ],
    )

    def ask_as(user: str, conversation: str, question: str) -> str:
        config = {"configurable": {"user_id": user, "conversation_id": conversation}}
        return chain.invoke({"question": question}, config=config).content

    ask_as("alice", "c-alice", "my name is Ada")
    ask_as("bob", "c-bob", "my name is Bob")
    assert ask_as("alice", "c-alice", "what is my name?") == "Your name is Ada."
    assert ask_as("bob", "c-bob", "what is my name?") == "Your name is Bob."
    # Bob naming Alice's conversation sees nothing of it and cannot write to it
    # (RunnableWithMessageHistory logs the refused write rather than raising it).
    assert ask_as("bob", "c-alice", "what is my name?") == "I don't know your name."
    assert "Ada" not in str(model.inputs[-1])
    assert len(ThreadChatHistory("c-alice", user_id="alice", saver=saver).messages) == 4
    with pytest.raises(ThreadNotFoundError):
        ThreadChatHistory("c-alice", user_id="bob", saver=saver).add_user_message("mine now")


def test_threads_made_by_a_history_are_in_the_users_thread_list(store, model):
    saver = store
    ask(chain_with_history(saver, model), "s-1", "my name is Ada and I like tea")
    ask(chain_with_history(saver, model, user_id="bob"), "s-2", "hello")
    [thread] = saver.threads.list("alice").threads
    assert thread.thread_id == "s-1"
    assert thread.title == "my name is Ada and I like tea"
    assert thread.message_count == 2
    assert [t.thread_id for t in saver.threads.list("bob").threads] == ["s-2"]


def test_the_agent_graph_and_a_history_share_one_conversation(store):
    saver = store
    history = ThreadChatHistory("t-1", user_id="alice", saver=saver)
    history.add_user_message("my name is Ada")
    history.add_ai_message("Hello Ada!")
    model = ScriptedChatModel(script=echo)
    agent = build_graph(checkpointer=saver, model=model)
    config = {"configurable": {"thread_id": "t-1", "user_id": "alice"}}
    agent.invoke({"messages": [HumanMessage("what is my name?")]}, config)
    assert [m.content for m in model.inputs[-1][1:]] == ["my name is Ada", "Hello Ada!", "what is my name?"]
    assert [m.content for m in history.messages] == ["my name is Ada", "Hello Ada!", "what is my name?", "reply 2: what is my name?"]
    history.add_user_message("and now?")
    agent.invoke({"messages": [HumanMessage("one more")]}, config)
    assert [m.content for m in agent.get_state(config).values["messages"]][-3:] == ["and now?", "one more", "reply 4: one more"]
    assert saver.threads.get("t-1").message_count == 7


def test_another_users_thread_reads_as_empty_and_is_left_alone(store):
    saver = store
    ThreadChatHistory("t-1", user_id="alice", saver=saver).add_user_message("secret")
    intruder = ThreadChatHistory("t-1", user_id="bob", saver=saver)
    assert intruder.messages == []
    intruder.clear()
    with pytest.raises(ThreadNotFoundError):
        intruder.add_user_message("mine now")
    assert [m.content for m in ThreadChatHistory("t-1", user_id="alice", saver=saver).messages] == ["secret"]


def test_a_message_with_a_known_id_replaces_it(store):
    saver = store
    history = ThreadChatHistory("t-1", user_id="alice", saver=saver)
    history.add_messages([HumanMessage("draft", id="m-1"), AIMessage("ok", id="m-2")])
    history.add_messages([HumanMessage("final", id="m-1")])
    assert [(m.id, m.content) for m in history.messages] == [("m-1", "final"), ("m-2", "ok")]


async def test_the_async_chain_uses_the_async_twins(async_store, model):
    saver = async_store
    chain = chain_with_history(saver, model)
    config = {"configurable": {"session_id": "s-async"}}
    await chain.ainvoke({"question": "my name is Ada"}, config=config)
    reply = await chain.ainvoke({"question": "what is my name?"}, config=config)
    assert reply.content == "Your name is Ada."
    history = ThreadChatHistory("s-async", user_id="alice", saver=saver)
    assert len(await history.aget_messages()) == 4
    await history.aclear()
    assert await history.aget_messages() == []


def test_histories_from_a_url_share_one_saver_per_store_until_closed(store_url):
    url = store_url
    try:
        first = ThreadChatHistory("s-1", user_id="alice", url=url)
        second = ThreadChatHistory("s-2", user_id="alice", url=url)
        first.add_user_message("hello")
        assert first.saver is second.saver is shared_saver(url)
        close_shared_savers()
        assert [m.content for m in first.messages] == ["hello"]  # opens the file again
        assert first.saver is not None
    finally:
        close_shared_savers()
    with pytest.raises(ValueError, match="either url or saver"):
        ThreadChatHistory("s-1", url=url, saver=object())


def test_a_history_opens_the_store_named_by_the_environment(store_url, monkeypatch):
    monkeypatch.setenv("THREADKEEPER_DATABASE_URL", store_url)
    try:
        history = ThreadChatHistory("s-env", user_id="alice")
        history.add_user_message("hello from the environment")
        with open_saver(store_url) as saver:
            assert saver.threads.get("s-env", user_id="alice").title == "hello from the environment"
        history.clear()
        assert history.messages == []
    finally:
        close_shared_savers()
