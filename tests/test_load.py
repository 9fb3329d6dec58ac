"""Many people at once in one `threadkeeper serve`, driven over HTTP as the page drives
it (`bench.load`), against the loopback model streaming every reply; and the limits
that keep one person, or a flood, from taking the server.

Timings are `make bench`'s business (machines differ); these check what must hold
on any machine: every reply complete, every thread exactly its person's, in
order, nobody's list holding another's thread, no failed event; a person over
their limit is told so in one sentence; no more replies stream at once than the
cap allows.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import httpx
import pytest

from bench.load import Page, expected_reply, reply_text, run_load
from tests.fake_openai import FakeOpenAI
from tests.gradio_api import GradioAPI
from tests.serve import Server
from ui.turns import Limits, TurnRefused, Turns


def test_fifty_people_chatting_at_once_each_get_their_own_complete_thread(tmp_path: Path):
    report = run_load(50, messages=3, data=tmp_path)
    assert report.errors == []
    assert len(report.last_token_s) == 150  # every reply ended, each complete (checked against the model's text)
    assert len(report.first_token_s) == 150  # and each streamed: the page saw words before the end


@pytest.mark.parametrize("raw", ["0", "-3", "many", "2.5"])
def test_limits_refuse_settings_that_are_not_positive_whole_numbers(raw: str):
    for name in ("THREADKEEPER_TURNS_PER_USER", "THREADKEEPER_MAX_STREAMS"):
        with pytest.raises(ValueError, match=name):
            Limits.from_env({name: raw})
    assert Limits.from_env({}) == Limits()
    assert Limits.from_env({"THREADKEEPER_TURNS_PER_USER": "1", "THREADKEEPER_MAX_STREAMS": "40"}) == Limits(1, 40)


def test_a_persons_turns_in_flight_are_limited_and_others_are_not(tmp_path: Path):
    turns = Turns(saver=None, graph=None, limits=Limits(per_user=2, streams=10))  # type: ignore[arg-type]
    with turns.slot("alice"), turns.slot("alice"):
        assert turns.busy("alice") and turns.streaming == 2
        with pytest.raises(TurnRefused, match="2 replies on the way already"):
            with turns.slot("alice"):
                pass
        with turns.slot("bob"):  # someone else is not held up by alice's
            assert turns.streaming == 3
    assert not turns.busy("alice") and turns.streaming == 0


def slow_server(tmp_path: Path, model: FakeOpenAI, **env: str) -> Server:
    return Server(
        tmp_path, OPENAI_BASE_URL=model.base_url, OPENAI_API_KEY="k", THREADKEEPER_MODEL="fake-model",
        THREADKEEPER_MODEL_RETRIES="0", **env,
    ).start()


async def send_and_stream(http: httpx.AsyncClient, events: dict, token: str | None, text: str) -> tuple[str | None, list]:
    """One tab of a person (its own session) sending `text`: (what the page was told, chat at the end)."""
    page = Page(http, events)
    if token is None:
        (token, *_) = await page.call("on_load")
    sent = await page.call("send", textbox=text, chatbot=[], browserstate=token)
    if page.said:  # the turn was refused, in a sentence
        return page.said, sent
    chat = (await page.call("respond", chatbot=sent[2], browserstate=token))[0]
    return page.said or None, chat


def test_a_person_over_their_limit_is_told_so_and_the_reply_in_flight_goes_on(tmp_path: Path):
    with FakeOpenAI(default=("paced", (10, 3.0))) as model:
        server = slow_server(tmp_path, model, THREADKEEPER_TURNS_PER_USER="1")
        try:
            with GradioAPI(server.url) as api:
                events = {e.api_name: e for e in api.events() if e.api_name}
                token = api.call("on_load", [None], session_hash="first-tab").output[0]
                other = api.call("on_load", [None], session_hash="other-person").output[0]

                async def scenario() -> tuple:
                    async with httpx.AsyncClient(base_url=server.url.rstrip("/"), timeout=60) as http:
                        first = asyncio.create_task(send_and_stream(http, events, token, "a long question"))
                        for _ in range(600):  # until the first reply is on its way (or its turn failed)
                            if model.requests or first.done():
                                break
                            await asyncio.sleep(0.05)
                        if first.done() or not model.requests:
                            raise AssertionError(f"the first reply never reached the model: {await first}")
                        refused = await send_and_stream(http, events, token, "and another")  # a second tab
                        someone_else = await send_and_stream(http, events, other, "my own question")
                        return await first, refused, someone_else

                first, refused, someone_else = asyncio.run(scenario())
            assert refused[0] == ["You have 1 reply on the way already; wait for one to finish."]
            assert len(model.requests) == 2  # the refused message never reached the model
            assert first[0] is None and reply_text(first[1]) == expected_reply("a long question", 10)
            assert someone_else[0] is None and reply_text(someone_else[1]) == expected_reply("my own question", 10)
            log = "".join(p.read_text() for p in tmp_path.glob("server-*.log"))
            assert log.count("turn refused: user has 1 replies in flight") == 1
            assert "You have 1 reply on the way already; wait for one to finish." in log
        finally:
            server.stop()


def test_no_more_replies_stream_at_once_than_the_cap(tmp_path: Path):
    in_flight = {"now": 0, "most": 0}
    lock = threading.Lock()

    class Counting(FakeOpenAI):
        def count(self, step: int) -> None:
            with lock:
                in_flight["now"] += step
                in_flight["most"] = max(in_flight["most"], in_flight["now"])

    with Counting(default=("paced", (5, 1.0))) as model:
        model.on_stream = model.count
        server = slow_server(tmp_path, model, THREADKEEPER_MAX_STREAMS="2")
        try:
            with GradioAPI(server.url) as api:
                events = {e.api_name: e for e in api.events() if e.api_name}

            async def five_people() -> list:
                async with httpx.AsyncClient(base_url=server.url.rstrip("/"), timeout=60) as http:
                    return await asyncio.gather(*(send_and_stream(http, events, None, f"question {n}") for n in range(5)))

            outcomes = asyncio.run(five_people())
        finally:
            server.stop()
    assert [reply_text(chat) for _, chat in outcomes] == [expected_reply(f"question {n}", 5) for n in range(5)]
    assert in_flight["most"] == 2  # the others waited in the queue, and were answered in full
