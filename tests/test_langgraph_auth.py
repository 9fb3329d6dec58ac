"""The LangGraph server door: API tokens name the caller, and every thread is its owner's.

A real `langgraph dev` on a free 127.0.0.1 port, started with
`THREADKEEPER_API_TOKENS` for alice and bob and driven with langgraph-sdk, on
the same SQLite file the web chat and Python write. Threads started in the web
chat (its own code path) or by `graph.invoke` are found, read and continued
through the server by their owner (issue 17), and by no one else.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, BaseMessage
from langgraph_sdk import get_client

from checkpointers import ThreadNotFoundError, ThreadSaver
from checkpointers.server import ServerSaver, version_number, version_text
from checkpointers.threads import message_text
from graph import Settings, build_graph
from tests.scripted import ScriptedChatModel
from tests.test_langgraph_server import LangGraphDev
from ui.server_auth import ApiTokens, is_local, load_api_tokens

TOKENS = {"alice": "alice-0123456789abcdef", "bob": "bob-0123456789abcdefgh"}
SECRET = "KIWIQUARTZ"
"""A word in everything of Alice's; if it reaches Bob, something of hers did."""
BOBS = "PAPAYAZEBRA"
"""The same for Bob's."""


def echo(messages: list[BaseMessage]) -> AIMessage:
    return AIMessage("you said: " + " | ".join(message_text(m) for m in messages if m.type == "human"))


def scripted_graph(saver: ThreadSaver):
    return build_graph(checkpointer=saver, model=ScriptedChatModel(script=echo), settings=Settings())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("langgraph-auth")
    dev = LangGraphDev(workdir, workdir / "threadkeeper.db")
    dev.env["THREADKEEPER_API_TOKENS"] = ",".join(f"{user}:{token}" for user, token in TOKENS.items())
    dev.start()
    yield dev
    dev.stop()


@pytest.fixture
def saver(server: LangGraphDev):
    opened = ThreadSaver(server.workdir / "threadkeeper.db", encryption_key=None)
    yield opened
    opened.close()


def client(server: LangGraphDev, user: str):
    return get_client(url=server.url, headers={"Authorization": f"Bearer {TOKENS[user]}"})


async def answer(call) -> Any:
    """What the server gave back: the result, or the HTTP status of the refusal."""
    try:
        return await call
    except httpx.HTTPStatusError as exc:
        return exc.response.status_code


def run(coro) -> Any:
    return asyncio.run(coro)


def snapshot(saver: ThreadSaver, thread_id: str) -> tuple:
    info = saver.threads.get(thread_id)
    messages = [(m.type, message_text(m)) for m in saver.read_messages(thread_id, limit=1000).messages]
    return info.user_id, info.title, info.message_count, info.metadata, messages


class WebChatDoor:
    """The web chat's own code path (accept, then respond), for one signed-in user."""

    def __init__(self, saver: ThreadSaver, user: str) -> None:
        import gradio as gr

        from ui.identity import Identity
        from ui.web import WebChat

        self.saver = saver
        self.web = WebChat(saver, settings=Settings(), model=ScriptedChatModel(script=echo), identity=Identity(b"k" * 32, {user: "pw"}))
        self.request = gr.Request(username=user)

    def say(self, text: str, thread: str | None = None) -> str:
        _, thread, chat, pending, *_ = self.web.accept(text, thread, [], False, None, self.request)
        list(self.web.respond(pending, thread, chat, None, self.request))
        self.saver.flush()
        return thread


def web_thread(saver: ThreadSaver, user: str, text: str) -> str:
    """A thread started in the web chat by a signed-in user."""
    return WebChatDoor(saver, user).say(text)


# -- who is calling ---------------------------------------------------------------------------


def test_a_request_without_a_configured_token_is_refused(server: LangGraphDev):
    attempts = {
        "no header": {},
        "wrong token": {"Authorization": "Bearer not-a-token-of-anyone"},
        "another scheme": {"Authorization": f"Basic {TOKENS['alice']}"},
        "token without scheme": {"Authorization": TOKENS["alice"]},
        "a Studio session": {"x-auth-scheme": "langsmith"},
        "a token with its last character changed": {"Authorization": f"Bearer {TOKENS['alice'][:-1]}X"},
    }
    with httpx.Client(base_url=server.url) as http:
        for what, headers in attempts.items():
            for method, path, body in (
                ("POST", "/threads/search", {}),
                ("POST", "/threads", {"metadata": {"user_id": "alice"}}),
                ("POST", "/assistants/search", {}),
                ("GET", f"/threads/{uuid.uuid4()}/state", None),
            ):
                reply = http.request(method, path, json=body, headers=headers)
                assert reply.status_code == 401, (what, path, reply.status_code, reply.text)
        assert http.post("/threads/search", json={}, headers={"Authorization": f"Bearer {TOKENS['alice']}"}).status_code == 200


def test_api_tokens_come_from_the_settings_and_are_checked_whole(tmp_path: Path):
    listed = tmp_path / "tokens"
    listed.write_text("# one user:token a line\ncarol:carol-0123456789abcdef\n\nalice:alice-second-token-456\n")
    tokens = load_api_tokens({"THREADKEEPER_API_TOKENS": "alice:alice-0123456789abcdef", "THREADKEEPER_API_TOKENS_FILE": str(listed)})
    assert tokens.user_of("alice-0123456789abcdef") == "alice"
    assert tokens.user_of("alice-second-token-456") == "alice"
    assert tokens.user_of("carol-0123456789abcdef") == "carol"
    for wrong in ("", "alice", "alice-0123456789abcde", "alice-0123456789abcdefX", "carol:carol-0123456789abcdef"):
        assert tokens.user_of(wrong) is None
    assert not load_api_tokens({})
    for bad, says in (
        ({"THREADKEEPER_API_TOKENS": "alice"}, "expected user:token"),
        ({"THREADKEEPER_API_TOKENS": "alice:short"}, "shorter than 16"),
        ({"THREADKEEPER_API_TOKENS": "alice:same-token-0123456789,bob:same-token-0123456789"}, "both 'alice' and 'bob'"),
        ({"THREADKEEPER_API_TOKENS_FILE": str(tmp_path / "missing")}, "does not exist"),
    ):
        with pytest.raises(ValueError, match=says) as raised:
            load_api_tokens(bad)
        assert "0123456789" not in str(raised.value)  # the message never shows a token
    assert isinstance(tokens, ApiTokens)


def test_without_tokens_only_callers_on_this_machine_are_answered(monkeypatch):
    from langgraph_sdk import Auth

    from ui import server_auth

    monkeypatch.setattr(server_auth, "TOKENS", ApiTokens({}))
    assert is_local("127.0.0.1") and is_local("::1") and is_local("127.8.9.10")
    for remote in ("10.0.0.5", "192.168.1.20", "2001:db8::1", "", None, "testclient"):
        assert not is_local(remote)
        with pytest.raises(Auth.exceptions.HTTPException) as refused:
            run(server_auth.authenticate(None, {"client": (remote, 40000)}))
        assert refused.value.status_code == 403
    assert run(server_auth.authenticate(None, {"client": ("127.0.0.1", 40000)}))["identity"] == ""


# -- one person's threads are theirs alone ---------------------------------------------------


def test_alice_cannot_reach_bobs_threads_through_any_call(server: LangGraphDev, saver: ThreadSaver):
    async def bobs_thread() -> str:
        bob = client(server, "bob")
        made = await bob.threads.create(metadata={"topic": f"bob's {BOBS}"})
        await bob.runs.wait(made["thread_id"], "threadkeeper", input={"messages": [{"role": "user", "content": f"bob's {BOBS}"}]})
        return made["thread_id"]

    thread = run(bobs_thread())
    saver.flush()
    before = snapshot(saver, thread)
    assert before[0] == "bob" and before[2] == 2

    async def as_alice() -> dict[str, Any]:
        alice = client(server, "alice")
        hi = {"messages": [{"role": "user", "content": "what did bob say?"}]}
        calls = {
            "get": alice.threads.get(thread),
            "get_state": alice.threads.get_state(thread),
            "get_history": alice.threads.get_history(thread),
            "search everything": alice.threads.search(limit=100),
            "search bob's": alice.threads.search(metadata={"user_id": "bob"}, limit=100),
            "search by id": alice.threads.search(ids=[thread]),
            "count": alice.threads.count(metadata={"user_id": "bob"}),
            "update metadata": alice.threads.update(thread, metadata={"user_id": "alice", "topic": "mine now"}),
            "update_state": alice.threads.update_state(thread, {"messages": [{"role": "user", "content": "alice was here"}]}),
            "copy": alice.threads.copy(thread),
            "create with its id": alice.threads.create(thread_id=thread, if_exists="do_nothing"),
            "create with its id, as bob": alice.threads.create(thread_id=thread, if_exists="do_nothing", metadata={"user_id": "bob"}),
            "runs.wait": alice.runs.wait(thread, "threadkeeper", input=hi),
            "runs.wait, creating": alice.runs.wait(thread, "threadkeeper", input=hi, if_not_exists="create"),
            "runs.create": alice.runs.create(thread, "threadkeeper", input=hi),
            "runs.stream": collect(alice.runs.stream(thread, "threadkeeper", input=hi)),
            "runs.list": alice.runs.list(thread),
            "join the thread's stream": collect(alice.threads.join_stream(thread)),
            "delete": alice.threads.delete(thread),
        }
        return {what: await answer(call) for what, call in calls.items()}

    seen = run(as_alice())
    shown = {what: json.dumps(value, default=str) for what, value in seen.items()}
    assert not [what for what, text in shown.items() if BOBS in text], shown
    for what in ("get", "get_state", "get_history", "update metadata", "update_state", "copy", "runs.wait", "runs.create", "runs.list", "delete"):
        assert seen[what] == 404, (what, seen[what])
    for what in ("create with its id", "create with its id, as bob", "runs.wait, creating"):
        assert seen[what] in (404, 409), (what, seen[what])
    assert seen["search everything"] == [] or all(t["metadata"]["user_id"] == "alice" for t in seen["search everything"])
    assert seen["search bob's"] == [] and seen["search by id"] == [] and seen["count"] == 0
    saver.flush()
    assert snapshot(saver, thread) == before

    async def bob_carries_on() -> list[dict]:
        bob = client(server, "bob")
        await bob.runs.wait(thread, "threadkeeper", input={"messages": [{"role": "user", "content": "still mine"}]})
        return (await bob.threads.get_state(thread))["values"]["messages"]

    assert [m["type"] for m in run(bob_carries_on())] == ["human", "ai", "human", "ai"]


async def collect(stream) -> list:
    """The parts of a stream (some SDK calls return it from a coroutine), within 20 s."""

    async def read() -> list:
        parts = await stream if asyncio.iscoroutine(stream) else stream
        return [part async for part in parts]

    return await asyncio.wait_for(read(), 20)


def test_a_thread_alice_creates_is_hers_whatever_user_she_names(server: LangGraphDev, saver: ThreadSaver):
    async def as_alice() -> tuple[dict, dict]:
        alice = client(server, "alice")
        made = await alice.threads.create(metadata={"user_id": "bob"})
        await alice.runs.wait(
            made["thread_id"], "threadkeeper",
            input={"messages": [{"role": "user", "content": "hello"}]},
            metadata={"user_id": "bob"}, config={"configurable": {"user_id": "bob"}},
        )
        stateless = await alice.runs.wait(None, "threadkeeper", input={"messages": [{"role": "user", "content": "once"}]},
                                          metadata={"user_id": "bob"})
        return made, await alice.threads.get(made["thread_id"])

    made, again = run(as_alice())
    assert made["metadata"]["user_id"] == "alice" and again["metadata"]["user_id"] == "alice"
    saver.flush()
    assert saver.threads.get(made["thread_id"]).user_id == "alice"
    assert made["thread_id"] not in [t.thread_id for t in saver.threads.list("bob", limit=100).threads]

    async def as_bob() -> list:
        bob = client(server, "bob")
        return [t["thread_id"] for t in await bob.threads.search(limit=100)] + [await answer(bob.threads.get(made["thread_id"]))]

    found = run(as_bob())
    assert made["thread_id"] not in found and found[-1] == 404


# -- threads started at other doors (issue 17) -------------------------------------------------


def test_a_web_chat_thread_is_found_read_and_continued_by_its_owner_through_the_server(server: LangGraphDev, saver: ThreadSaver):
    thread = web_thread(saver, "alice", f"my code is {SECRET}")
    assert snapshot(saver, thread)[2] == 2

    async def as_alice() -> tuple[list, dict, list, dict, dict]:
        alice = client(server, "alice")
        found = await alice.threads.search(metadata={"user_id": "alice"}, limit=100)
        state = await alice.threads.get_state(thread)
        history = await alice.threads.get_history(thread, limit=20)
        ran = await alice.runs.wait(thread, "threadkeeper", input={"messages": [{"role": "user", "content": "and through the API"}]})
        return found, state, history, ran, await alice.threads.get(thread)

    found, state, history, ran, registered = run(as_alice())
    assert thread in [t["thread_id"] for t in found]
    assert [m["type"] for m in state["values"]["messages"]] == ["human", "ai"]
    assert SECRET in state["values"]["messages"][0]["content"]
    assert history and history[0]["values"]["messages"][0]["content"] == f"my code is {SECRET}"
    assert [m["type"] for m in ran["messages"]] == ["human", "ai", "human", "ai"]
    assert registered["metadata"]["user_id"] == "alice"

    saver.flush()
    stored = saver.read_messages(thread, user_id="alice")
    assert [message_text(m) for m in stored.messages][2] == "and through the API" and stored.total == 4
    assert saver.threads.get(thread).user_id == "alice"

    # And back in the web chat: it goes on, and the versions are still the store's own numbers.
    WebChatDoor(saver, "alice").say("back in the web chat", thread)
    versions = saver.get_tuple({"configurable": {"thread_id": thread}}).checkpoint["channel_versions"]
    assert versions and all(type(v) is float for v in versions.values()), versions
    assert [message_text(m).strip() for m in saver.read_messages(thread, user_id="alice").messages][4:] == [
        "back in the web chat", "you said: " + " | ".join([f"my code is {SECRET}", "and through the API", "back in the web chat"])
    ]


def python_thread(saver: ThreadSaver, user: str, text: str) -> str:
    """A thread started by `graph.invoke` in Python (as the CLI does) for `user`."""
    thread = str(uuid.uuid4())
    scripted_graph(saver).invoke({"messages": [("user", text)]}, {"configurable": {"thread_id": thread, "user_id": user}})
    saver.flush()
    return thread


def test_a_thread_started_elsewhere_is_nobody_elses_through_the_server(server: LangGraphDev, saver: ThreadSaver):
    hi = {"messages": [{"role": "user", "content": "what is the code?"}]}
    attempts = {
        "get": lambda bob, t: bob.threads.get(t),
        "get_state": lambda bob, t: bob.threads.get_state(t),
        "get_history": lambda bob, t: bob.threads.get_history(t),
        "create with its id": lambda bob, t: bob.threads.create(thread_id=t, if_exists="do_nothing"),
        "create with its id, naming alice": lambda bob, t: bob.threads.create(thread_id=t, metadata={"user_id": "alice"}),
        "runs.wait, creating": lambda bob, t: bob.runs.wait(t, "threadkeeper", input=hi, if_not_exists="create"),
        "runs.stream, creating": lambda bob, t: collect(bob.runs.stream(t, "threadkeeper", input=hi, if_not_exists="create")),
        "runs.wait": lambda bob, t: bob.runs.wait(t, "threadkeeper", input=hi),
        "update_state": lambda bob, t: bob.threads.update_state(t, {"messages": [{"role": "user", "content": "bob was here"}]}),
        "update": lambda bob, t: bob.threads.update(t, metadata={"user_id": "bob"}),
        "copy": lambda bob, t: bob.threads.copy(t),
        "delete": lambda bob, t: bob.threads.delete(t),
    }

    async def as_bob(first: str, thread: str) -> dict[str, Any]:
        """Bob's attempt is the server's first sight of the thread; then he looks at what it did."""
        bob = client(server, "bob")
        return {
            first: await answer(attempts[first](bob, thread)),
            "then get_state": await answer(bob.threads.get_state(thread)),
            "then runs.wait": await answer(bob.runs.wait(thread, "threadkeeper", input=hi, if_not_exists="create")),
            "then search": await answer(bob.threads.search(limit=100)),
            "then search alice's": await answer(bob.threads.search(metadata={"user_id": "alice"}, limit=100)),
        }

    for n, first in enumerate(attempts):
        thread = web_thread(saver, "alice", f"web {SECRET}") if n % 2 == 0 else python_thread(saver, "alice", f"python {SECRET}")
        before = snapshot(saver, thread)
        seen = run(as_bob(first, thread))
        shown = {what: json.dumps(value, default=str) for what, value in seen.items()}
        assert not [what for what, text in shown.items() if SECRET in text], (first, shown)
        assert seen[first] in (404, 409) and seen["then get_state"] == 404 and seen["then runs.wait"] in (404, 409), (first, seen)
        assert thread not in shown["then search"] + shown["then search alice's"]
        saver.flush()
        assert snapshot(saver, thread) == before, first

        async def alice_reads() -> list:
            return (await client(server, "alice").threads.get_state(thread))["values"]["messages"]

        assert SECRET in run(alice_reads())[0]["content"]


def test_without_tokens_a_cli_thread_is_found_read_and_continued_by_naming_its_user(tmp_path: Path, monkeypatch):
    from tests.hostile import run_cli

    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "THREADKEEPER_ENCRYPTION_KEY", "THREADKEEPER_USER"):
        monkeypatch.delenv(name, raising=False)
    db = tmp_path / "threadkeeper.db"
    code, _, err = run_cli(["--db", f"sqlite:///{db}", "chat", "--user", "carol"], "hello from the terminal\n/quit\n")
    assert code == 0, err
    saver = ThreadSaver(db, encryption_key=None)
    (started,) = saver.threads.list("carol").threads
    thread = started.thread_id
    dev = LangGraphDev(tmp_path, db).start()  # no THREADKEEPER_API_TOKENS: a local development server

    async def session() -> tuple:
        local = get_client(url=dev.url)
        found = await local.threads.search(metadata={"user_id": "carol"})
        state = await local.threads.get_state(thread)
        history = await local.threads.get_history(thread)
        ran = await local.runs.wait(thread, "threadkeeper", input={"messages": [{"role": "user", "content": "and from the API"}]})
        streamed = await collect(local.runs.stream(thread, "threadkeeper", input={"messages": [{"role": "user", "content": "streamed"}]},
                                                   stream_mode="values"))
        return found, state, history, ran, streamed

    try:
        found, state, history, ran, streamed = run(session())
    finally:
        dev.stop()
    assert [t["thread_id"] for t in found] == [thread] and found[0]["metadata"]["user_id"] == "carol"
    assert [m["content"] for m in state["values"]["messages"]][0] == "hello from the terminal"
    assert len(history) >= 2
    assert [m["type"] for m in ran["messages"]] == ["human", "ai"] * 2
    assert [m["type"] for m in streamed[-1].data["messages"]] == ["human", "ai"] * 3
    saver.flush()
    stored = saver.read_messages(thread, user_id="carol")
    assert stored.total == 6 and [message_text(m) for m in stored.messages][2::2] == ["and from the API", "streamed"]
    code, out, err = run_cli(["--db", f"sqlite:///{db}", "chat", "--thread", thread, "--user", "carol"], "back in the terminal\n/quit\n")
    assert code == 0, err
    assert saver.read_messages(thread, user_id="carol").total == 8
    saver.close()


# -- the saver the server is handed ------------------------------------------------------------


def test_the_store_keeps_a_threads_owner_and_the_servers_saver_refuses_another_users_run(tmp_path: Path):
    plain = ThreadSaver(tmp_path / "threadkeeper.db", encryption_key=None)
    thread = str(uuid.uuid4())
    graph = scripted_graph(plain)
    graph.invoke({"messages": [("user", f"mine {SECRET}")]}, {"configurable": {"thread_id": thread, "user_id": "alice"}})
    # A write that names someone else adds to the thread but never changes whose it is.
    graph.invoke({"messages": [("user", "bob writes")]}, {"configurable": {"thread_id": thread, "user_id": "bob"}})
    assert plain.threads.get(thread).user_id == "alice"

    served = ServerSaver(plain)
    as_bob = {"configurable": {"thread_id": thread, "checkpoint_ns": "", "langgraph_auth_user_id": "bob"}}
    as_alice = {"configurable": {"thread_id": thread, "checkpoint_ns": "", "langgraph_auth_user_id": "alice"}}

    async def attempts() -> None:
        with pytest.raises(ThreadNotFoundError):
            await served.aget_tuple(as_bob)
        with pytest.raises(ThreadNotFoundError):
            await served.aput_writes(as_bob, [("messages", [])], "task")
        found = await served.aget_tuple(as_alice)
        with pytest.raises(ThreadNotFoundError):
            await served.aput(as_bob, found.checkpoint, {}, {})
        assert found.checkpoint["channel_versions"] and all(
            isinstance(v, str) for v in found.checkpoint["channel_versions"].values()
        )

    asyncio.run(attempts())
    assert plain.read_messages(thread).total == 4
    plain.close()


@given(st.lists(st.floats(min_value=1, max_value=1e9, allow_nan=False), min_size=2, max_size=20))
def test_number_versions_are_shown_to_the_server_as_text_in_the_same_order_and_come_back_exactly(versions):
    shown = [version_text(v) for v in versions]
    assert [version_number(s) for s in shown] == versions
    assert sorted(shown) == [version_text(v) for v in sorted(versions)]
    # The server's adapter counts up from the integer part.
    assert [int(s.split(".")[0]) for s in shown] == [int(v) for v in versions]


def test_a_version_the_server_makes_becomes_a_number_in_the_stores_range():
    for whole in (1, 7, 12345):
        made = f"{whole:032}.{0.9999999999999999:.16f}"
        assert whole <= version_number(made) < whole + 1
        assert version_number(f"{whole:032}.{0.25:.16f}") < version_number(f"{whole:032}.{0.5:.16f}")
