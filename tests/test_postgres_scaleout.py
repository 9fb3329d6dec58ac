"""Several processes, one PostgreSQL database (issue 19): two `threadkeeper serve`
processes and one `langgraph dev`, all real, on one schema of the test server
(tests/postgres.py), with the offline model.

A thread started through one door is listed, searched and continued through
the others, and twenty people writing at once through all three lose nothing
and see nothing of each other's (slow: three servers start first). Replicas
that share a data directory and start together make one cookie secret.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage
from langgraph_sdk import get_client

from checkpointers import ANY_USER, ThreadNotFoundError, open_saver
from checkpointers.threads import message_text
from tests.chat import echo_graph
from tests.serve import Server
from tests.test_isolation import Browser
from tests.test_langgraph_server import LangGraphDev
from ui.identity import SECRET_FILE, load_secret

PEOPLE = 20
TURNS = 3
OFFLINE = "No language model is connected"
"""The start of the offline model's every reply."""


def anonymous_id(person: Browser) -> str:
    """The user id a browser's signed token names (what the store keeps)."""
    return person.token.rpartition(".")[0]


def same_person_at(url: str, person: Browser) -> Browser:
    """`person`'s browser, its stored token in hand, opening the page of another process."""
    other = Browser.__new__(Browser)
    other.api, other.session = type(person.api)(url), person.session
    loaded = other.api.call("on_load", [person.token], session_hash=other.session)
    assert loaded.success, loaded.error
    other.token = loaded.output[0]
    return other


def listed(outcome) -> list[str]:
    """The thread ids of the list an event gave back (its first output, a Radio's choices)."""
    return [value for _, value in outcome.output[0]["choices"]]


def expired_thread(url: str) -> None:
    """A thread of user `gone`, older than langgraph dev's retention in `doors` by the time it starts."""
    with open_saver(url) as saver:
        config = {"configurable": {"thread_id": "expired", "user_id": "gone"}}
        echo_graph(saver, "noted: ").invoke({"messages": [HumanMessage("from long ago")]}, config)


def swept(url: str, thread_id: str) -> bool:
    with open_saver(url) as saver:
        try:
            saver.threads.get(thread_id)
        except ThreadNotFoundError:
            return True
    return False


@pytest.fixture
def doors(postgres_url: str, tmp_path: Path):
    """Serve A, serve B and langgraph dev on one schema. langgraph dev starts first, with a
    retention of a second or two, and its sweeper deletes a thread written before it
    started; then the serve processes start together, sharing a data directory (so the
    cookie secret: one of them makes it, both use it)."""
    shared = tmp_path / "data"
    shared.mkdir()
    env = {"THREADKEEPER_DATABASE_URL": postgres_url, "THREADKEEPER_DATA_DIR": str(shared)}
    serves = [Server(shared, **env), Server(shared, **env)]
    workdir = tmp_path / "langgraph"
    workdir.mkdir()
    dev = LangGraphDev(workdir, tmp_path / "unused.db")
    dev.env.update(THREADKEEPER_DATABASE_URL=postgres_url, THREADKEEPER_RETENTION_DAYS=str(2 / 86400))
    expired_thread(postgres_url)
    try:
        time.sleep(2.5)
        dev.start()
        deadline = time.monotonic() + 30
        while not swept(postgres_url, "expired"):
            assert time.monotonic() < deadline, "langgraph dev's sweeper did not delete the expired thread"
            time.sleep(0.3)
        with ThreadPoolExecutor(2) as pool:  # together, as replicas start
            for done in [pool.submit(s.start) for s in serves]:
                done.result()
        yield serves[0], serves[1], dev
    finally:
        for server in [*serves, dev]:
            server.stop()


@pytest.mark.slow
def test_a_thread_goes_from_door_to_door_and_twenty_writers_at_once_lose_nothing(doors, postgres_url: str):
    a, b, dev = doors

    # Started through serve A ...
    alice = Browser(a.url, "visitor", "anonymous")
    alice.send("plan a weekend in Quokkaville")
    user = anonymous_id(alice)
    with open_saver(postgres_url) as saver:
        (thread,) = [t.thread_id for t in saver.threads.list(user).threads]

    # ... listed, searched and continued through serve B, the same person there ...
    at_b = same_person_at(b.url, alice)
    assert at_b.token == alice.token  # one cookie secret: the same anonymous person
    assert thread in listed(at_b.call("refresh", textbox=""))
    assert listed(at_b.call("search", textbox="quokkaville")) == [thread]
    assert listed(at_b.call("search", textbox="zanzibar")) == []
    at_b.open(thread)
    at_b.send("and what about trains")

    # ... and through langgraph dev, which trusts the user_id a client names without tokens.
    async def through_the_server() -> tuple[list, dict, dict]:
        client = get_client(url=dev.url)
        found = await client.threads.search(metadata={"user_id": user}, limit=100)
        state = await client.threads.get_state(thread)
        ran = await client.runs.wait(thread, "threadkeeper", input={"messages": [{"role": "user", "content": "and a ferry too"}]})
        return found, state, ran

    found, state, ran = asyncio.run(through_the_server())
    assert [t["thread_id"] for t in found] == [thread]
    assert [message_text_of(m) for m in state["values"]["messages"]][::2] == ["plan a weekend in Quokkaville", "and what about trains"]
    assert [m["type"] for m in ran["messages"]] == ["human", "ai"] * 3

    # The web chat (serve A) shows the server's turn.
    opened = alice.call("open_thread", radio=thread)
    assert opened.success, opened.error
    shown = json.dumps(opened.output)
    assert "and a ferry too" in shown and shown.count(OFFLINE) == 3

    # Twenty people at once, each on a door of three, several messages each.
    def person(n: int) -> tuple[str, list[str]]:
        said = [f"person {n} message {k} {secrets.token_hex(3)}" for k in range(TURNS)]
        if n % 3 == 2:
            who = f"api-person-{n}"

            async def through_api() -> None:
                client = get_client(url=dev.url)
                made = await client.threads.create(metadata={"user_id": who})
                for text in said:
                    await client.runs.wait(made["thread_id"], "threadkeeper", input={"messages": [{"role": "user", "content": text}]})

            asyncio.run(through_api())
            return who, said
        browser = Browser((a, b)[n % 3].url, "visitor", "anonymous")
        for text in said:
            browser.send(text)
        return anonymous_id(browser), said

    with ThreadPoolExecutor(PEOPLE) as pool:
        everyone = list(pool.map(person, range(PEOPLE)))

    with open_saver(postgres_url) as saver:
        for who, said in everyone:
            (info,) = saver.threads.list(who).threads  # one thread each: no one else's
            messages = saver.read_messages(info.thread_id, user_id=who, limit=100).messages
            assert [m.type for m in messages] == ["human", "ai"] * TURNS, who
            assert [message_text(m) for m in messages[::2]] == said, who
            assert all(message_text(m).startswith(OFFLINE) for m in messages[1::2]), who
            assert info.message_count == 2 * TURNS
        owners = [t.user_id for t in saver.threads.list(ANY_USER, limit=100).threads]
    assert sorted(owners) == sorted([user] + [who for who, _ in everyone])


def message_text_of(message: dict) -> str:
    """A message's text as the server's JSON gives it (a string, or a list of text blocks)."""
    content = message["content"]
    return content if isinstance(content, str) else "".join(b.get("text", "") for b in content if isinstance(b, dict))


def test_replicas_starting_together_on_one_data_directory_make_one_secret(tmp_path: Path, monkeypatch):
    """Eight at once, thirty times: each gets the same whole secret, and no draft stays behind."""
    monkeypatch.delenv("THREADKEEPER_WEB_SECRET", raising=False)
    for attempt in range(30):
        data = tmp_path / str(attempt) / "data"
        start = threading.Barrier(8)

        def replica(_: int) -> bytes | Exception:
            start.wait()
            try:
                return load_secret(data)
            except Exception as exc:  # noqa: BLE001 - what a replica would die of
                return exc

        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(replica, range(8)))
        assert len(set(got)) == 1 and len(got[0]) == 64, got
        assert [p.name for p in data.iterdir()] == [SECRET_FILE]
