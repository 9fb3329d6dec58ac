"""Operating it: health checks, metrics, the usage figures, logs and SIGTERM, on a real
`threadkeeper serve` process on 127.0.0.1 (the model is a fake OpenAI server)."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from prometheus_client.parser import text_string_to_metric_families

from tests.fake_openai import FakeOpenAI
from tests.gradio_api import GradioAPI, new_session
from tests.test_isolation import Browser
from tests.serve import Server

TOKEN = "admin-token-0123456789abcdef"
API_KEY = "sk-test-openai-key-5f1e2d3c4b5a"
ENCRYPTION_KEY = "encryption-key-9a8b7c6d5e4f3a2b"
PASSWORD = "alice-password-77c1"
MARKER = "zebra-marker-7731"
TITLE_WORD = "Quokkaville"


@pytest.fixture(scope="module")
def model_server():
    with FakeOpenAI() as s:
        yield s


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory, model_server: FakeOpenAI):
    data = tmp_path_factory.mktemp("ops")
    s = Server(data, OPENAI_BASE_URL=model_server.base_url, OPENAI_API_KEY=API_KEY, THREADKEEPER_MODEL="fake-model",
               THREADKEEPER_MODEL_RETRIES="0", THREADKEEPER_ADMIN_TOKEN=TOKEN, THREADKEEPER_ENCRYPTION_KEY=ENCRYPTION_KEY,
               THREADKEEPER_LOG_FORMAT="json").start()
    yield s
    s.stop()


def get(server: Server, path: str, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.get(server.url.rstrip("/") + path, headers=headers, timeout=30, follow_redirects=False)


def test_health_and_readiness_answer_for_load_balancers(admin_server: Server):
    assert get(admin_server, "/healthz").json() == {"status": "ok"}
    ready = get(admin_server, "/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready" and ready.json()["store"] == "ok" and "fake-model" in ready.json()["model"]


def test_stats_and_metrics_want_the_token_and_metrics_parse(admin_server: Server):
    assert get(admin_server, "/admin/stats").status_code == 401
    assert get(admin_server, "/admin/stats", "wrong-token-0123456789").status_code == 401
    assert get(admin_server, "/metrics").status_code == 401
    stats = get(admin_server, "/admin/stats?days=7", TOKEN)
    assert stats.status_code == 200 and stats.json()["period"]["days"] == 7
    assert get(admin_server, "/admin/stats?days=0", TOKEN).status_code == 400
    metrics = get(admin_server, "/metrics", TOKEN)
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert not metrics.is_redirect
    families = {f.name: f for f in text_string_to_metric_families(metrics.text)}
    for name in ("threadkeeper_turns", "threadkeeper_turn_duration_seconds", "threadkeeper_model_errors",
                 "threadkeeper_tokens", "threadkeeper_active_streams", "threadkeeper_threads",
                 "threadkeeper_database_bytes", "threadkeeper_sweeps", "threadkeeper_store_errors"):
        assert name in families, name
    assert families["threadkeeper_turns"].type == "counter"
    labels = {key for f in families.values() for sample in f.samples for key in sample.labels}
    assert labels <= {"outcome", "part", "le", "kind", "direction", "source"}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(min_size=0, max_size=60).filter(lambda t: t != TOKEN and t.isprintable()))
def test_any_other_token_is_refused(admin_server: Server, given_token: str):
    headers = {"Authorization": f"Bearer {given_token}"}
    try:
        response = httpx.get(admin_server.url + "admin/stats", headers=headers, timeout=30)
    except (httpx.LocalProtocolError, UnicodeEncodeError):
        return  # not a header a client can send
    assert response.status_code == 401
    assert MARKER not in response.text


def test_without_a_token_the_stats_route_and_admin_page_do_not_exist(tmp_path: Path, model_server: FakeOpenAI):
    s = Server(tmp_path, OPENAI_BASE_URL=model_server.base_url, OPENAI_API_KEY=API_KEY,
               THREADKEEPER_MODEL="fake-model").start()
    try:
        assert get(s, "/admin/stats", TOKEN).status_code == 404
        assert get(s, "/admin/").status_code == 404
        assert get(s, "/metrics").status_code == 200  # no token set: open, as documented
        assert get(s, "/healthz").status_code == 200
    finally:
        s.stop()


def test_nothing_an_operator_sees_holds_chat_text_titles_keys_or_tokens(admin_server: Server, model_server: FakeOpenAI):
    model_server.plan.extend([("reply", f"about {MARKER} indeed"), ("reply", "again")])
    person = Browser(admin_server.url, "visitor", "anonymous")
    person.send(f"{TITLE_WORD} trip: tell me about {MARKER}")
    person.send(f"more on {MARKER} please")
    seen = [get(admin_server, path, TOKEN).text for path in ("/admin/stats", "/admin/stats?days=1", "/metrics")]
    seen += [get(admin_server, path).text for path in ("/healthz", "/readyz")]
    figures = json.loads(seen[0])
    assert figures["totals"]["human_messages"] >= 2 and figures["store"]["threads"] >= 1
    # The admin page's every event, called as the page would, with the token.
    admin = GradioAPI(admin_server.url + "admin")
    for event in [e for e in admin.events() if e.backend]:
        outcome = admin.call(event, [TOKEN, "All"], session_hash=new_session())
        assert outcome.success, outcome.error
        seen.append(json.dumps(outcome.output))
    assert "threads stored" in seen[-1]
    admin_server.stop()  # every line of the session's log, shutdown included
    admin_server.start()
    seen += [p.read_text() for p in admin_server.data.glob("server-*.log")]
    for text in seen:
        for secret in (MARKER, TITLE_WORD, TOKEN, API_KEY, ENCRYPTION_KEY):
            assert secret not in text
    log_lines = [line for p in admin_server.data.glob("server-*.log") for line in p.read_text().splitlines()]
    events = [json.loads(line) for line in log_lines if line.startswith("{")]
    assert any(e["message"].startswith("started:") and "THREADKEEPER_ADMIN_TOKEN=set" in e["message"] for e in events)


def test_a_non_admin_gets_nothing_from_any_admin_event_by_fn_index(admin_server: Server):
    admin = GradioAPI(admin_server.url + "admin")
    events = [e for e in admin.events() if e.backend]
    assert events
    for event in events:
        for token in (None, "", "wrong-token-0123456789", TOKEN[:-1], TOKEN + " "):
            outcome = admin.call(event, [token, "All"], session_hash=new_session())
            assert outcome.success
            message, panel, headline, *plots = outcome.output
            assert "administrators" in message or "admin token" in message
            assert panel.get("visible") is False and not headline
            assert "threads stored" not in json.dumps(outcome.output)


def test_sign_in_admins_see_the_page_and_other_people_do_not(tmp_path: Path, model_server: FakeOpenAI):
    s = Server(tmp_path, OPENAI_BASE_URL=model_server.base_url, OPENAI_API_KEY=API_KEY, THREADKEEPER_MODEL="fake-model",
               THREADKEEPER_USERS=f"alice:{PASSWORD},bob:bob-password-0001", THREADKEEPER_ADMINS="alice").start()
    try:
        for name, password, allowed in (("alice", PASSWORD, True), ("bob", "bob-password-0001", False)):
            admin = GradioAPI(s.url + "admin")
            assert admin.login(name, password)
            for event in [e for e in admin.events() if e.backend]:
                outcome = admin.call(event, [None, "7 d"], session_hash=new_session())
                assert ("threads stored" in json.dumps(outcome.output)) is allowed
        assert get(s, "/admin/stats").status_code == 404  # no token: the JSON route is off
        assert PASSWORD not in "".join(p.read_text() for p in tmp_path.glob("server-*.log"))
    finally:
        s.stop()


def streaming(tmp_path: Path, model_server: FakeOpenAI, *, grace_s: float, words: int) -> Server:
    """A server whose one visitor's reply is streaming (slowly: `words` words) when this returns."""
    s = Server(tmp_path, OPENAI_BASE_URL=model_server.base_url, OPENAI_API_KEY=API_KEY, THREADKEEPER_MODEL="fake-model",
               THREADKEEPER_MODEL_RETRIES="0", THREADKEEPER_SHUTDOWN_GRACE_S=str(grace_s)).start()
    model_server.slow_streams.clear()
    model_server.plan.append(("slow", (" ".join(f"word{i}" for i in range(words)), 0.05)))
    person = Browser(s.url, "visitor", "anonymous")
    sent = person.call("send", textbox=f"an answer please {MARKER}", chatbot=[])
    assert sent.success
    respond = person.api.event("respond")
    person.api.join(respond, respond.inputs_with(browserstate=person.token, chatbot=sent.output[2]),
                    session_hash=person.session)  # the page would read the stream; nobody does here
    for _ in range(600):
        if model_server.slow_streams and model_server.slow_streams[-1].words_sent > 2:
            break
        time.sleep(0.05)
    assert model_server.slow_streams and model_server.slow_streams[-1].words_sent > 2
    return s


def test_sigterm_cuts_a_streaming_reply_past_the_grace_period_and_keeps_the_message(tmp_path: Path, model_server: FakeOpenAI):
    s = streaming(tmp_path, model_server, grace_s=1, words=400)
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(60) == 0
    log = "".join(p.read_text() for p in tmp_path.glob("server-*.log"))
    assert "cut 1 streaming replies" in log
    assert model_server.slow_streams[-1].words_sent < 400  # the reply was cut, not waited for
    with sqlite3.connect(tmp_path / "threadkeeper.db") as conn:
        assert conn.execute("SELECT value FROM store_meta WHERE key = 'sweep_lease'").fetchone() is None
        (count,) = conn.execute("SELECT message_count FROM threads").fetchone()
    s.start()
    try:
        (thread,) = [t for t in person_threads(s)]
        assert count == 2  # the person's message and the stopped reply, marked as stopped
        assert thread
    finally:
        s.stop()


def person_threads(server: Server) -> list[str]:
    from checkpointers import ANY_USER, open_saver

    with open_saver(server.env["THREADKEEPER_DATABASE_URL"]) as saver:
        threads = saver.threads.list(ANY_USER).threads
        for t in threads:
            messages = saver.read_messages(t.thread_id, limit=10).messages
            assert [m.type for m in messages] == ["human", "ai"]
            assert MARKER in messages[0].content
            assert messages[1].response_metadata.get("stopped") and messages[1].content.startswith("word0 ")
        return [t.thread_id for t in threads]


def test_sigterm_lets_a_streaming_reply_finish_within_the_grace_period(tmp_path: Path, model_server: FakeOpenAI):
    s = streaming(tmp_path, model_server, grace_s=60, words=30)
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(90) == 0
    assert model_server.slow_streams[-1].words_sent == 30
    from checkpointers import ANY_USER, open_saver

    with open_saver(s.env["THREADKEEPER_DATABASE_URL"]) as saver:
        (thread,) = saver.threads.list(ANY_USER).threads
        messages = saver.read_messages(thread.thread_id, limit=10).messages
    assert [m.type for m in messages] == ["human", "ai"]
    assert messages[1].content.endswith("word29") and not messages[1].response_metadata.get("stopped")
