"""One person never reaches another's threads, through any door.

Mallory (the attacker) knows Alice's thread ids and, over HTTP, Alice's Gradio
session hash; she has her own identity (an anonymous token the server signed
for her, or her own sign-in). She tries every action of the web chat on
Alice's threads, first by calling the handlers directly, then by raw HTTP to
the real Gradio server (every event, public or private, by `fn_index`, on
Alice's session and on her own), then through the CLI, and looks at what the
LangGraph server does with the user named in a thread's metadata. After every
attempt Alice's threads are exactly as they were and nothing of Alice's text
has come back to Mallory; and Alice can still carry on.

The handlers' `gr.State` inputs (the open thread, the pending message) are
what Gradio keeps for a session hash: in the direct tests they are Alice's, as
they are when Mallory joins the queue with Alice's session hash.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from gradio.utils import get_upload_folder
from langchain_core.messages import AIMessage, BaseMessage

from checkpointers import ThreadNotFoundError, ThreadSaver
from checkpointers.threads import message_text
from graph import ModelError, Settings
from tests.gradio_api import Event, GradioAPI, Outcome, new_session, serving
from tests.hostile import COUNTS, TIMEOUT_S, run_cli, within
from ui.identity import Identity
from ui.web import WebChat

SECRET = "ZEBRAPAPAYA"
"""A word in everything of Alice's, which Mallory uses as bait (she searches for it, types it)."""
TELL = "KIWIQUARTZ"
"""Another word in everything of Alice's (messages, titles, attachment name, table, rows) that
Mallory never sends: if it reaches her, something of Alice's did."""
VICTIM, ATTACKER = "alice", "mallory"
PASSWORDS = {VICTIM: "alice-pw", ATTACKER: "mallory-pw"}
MODES = ["anonymous", "sign-in"]

# Gradio's queue calls pandas in ways pandas 3 warns about, hundreds of times a run.
pytestmark = [
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
]


class Recall:
    """The scripted model: it repeats every human message it was shown, so any
    history that reached a turn comes back in the reply; it fails while `failing`."""

    def __init__(self) -> None:
        self.failing = False

    def __call__(self, messages: list[BaseMessage]) -> AIMessage:
        if self.failing:
            raise ModelError("The model is not answering right now.", reason="unavailable")
        return AIMessage("I remember: " + " | ".join(message_text(m) for m in messages if m.type == "human"))


def model(recall: Recall):
    from tests.scripted import ScriptedChatModel

    return ScriptedChatModel(script=recall)


def secret_db(folder: Path) -> Path:
    path = folder / f"{SECRET}-{TELL}-ledger.db"
    conn = sqlite3.connect(path)
    conn.execute(f"CREATE TABLE ledger_{TELL.lower()} (entry TEXT)")
    conn.execute(f"INSERT INTO ledger_{TELL.lower()} VALUES (?)", (f"{SECRET} {TELL} owes nothing",))
    conn.commit()
    conn.close()
    return path


def plain_db(folder: Path, name: str = "mallory.db") -> Path:
    path = folder / name
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE mine (x)")
    conn.commit()
    conn.close()
    return path


def snapshot(saver: ThreadSaver, thread_id: str) -> Any:
    """Everything of a thread another person could change (times aside)."""
    try:
        info = saver.threads.get(thread_id)
    except ThreadNotFoundError:
        return None
    messages = [(m.type, message_text(m)) for m in saver.read_messages(thread_id, limit=1000).messages]
    attached = saver.attachments.get(thread_id)
    return (
        info.user_id, info.title, info.pinned, info.message_count, info.metadata, messages,
        attached and (attached.name, tuple(attached.tables), attached.bytes),
    )


def leaked(value: Any) -> bool:
    """Whether anything in `value` (what a handler returned, a file it offers) shows something of Alice's."""
    return TELL.lower() in visible_text(value).lower()


def visible_text(value: Any) -> str:
    if isinstance(value, gr.blocks.Block):
        config = value.get_config()
        text = json.dumps(config, default=str, ensure_ascii=False)
        file = config.get("value")
        path = file.get("path") if isinstance(file, dict) else None
        if isinstance(path, str) and Path(path).is_file():
            text += Path(path).read_text(errors="replace")
        return text
    if isinstance(value, (list, tuple)):
        return " ".join(visible_text(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, default=str, ensure_ascii=False)
    if isinstance(value, str) and value.startswith("/") and Path(value).is_file():
        return value + Path(value).read_text(errors="replace")
    return str(value)


# -- two people and a web chat --------------------------------------------------------


@dataclass
class Person:
    name: str
    token: str | None
    request: gr.Request | None


class TwoPeople:
    """A WebChat on a real store; Alice with two threads (one answered, one waiting
    for a retry after a model error) and an attachment; Mallory with her own thread."""

    def __init__(self, root: Path, mode: str) -> None:
        self.root = root
        uploads = Path(get_upload_folder()) / uuid.uuid4().hex  # where Gradio puts what a page uploads
        uploads.mkdir(parents=True)
        self.saver = ThreadSaver(root / "data" / "threadkeeper.db", encryption_key=None)
        self.recall = Recall()
        users = PASSWORDS if mode == "sign-in" else None
        self.web = WebChat(self.saver, settings=Settings(), model=model(self.recall), identity=Identity(b"k" * 32, users))
        self.alice = self.person(VICTIM, mode)
        self.mallory = self.person(ATTACKER, mode)
        self.answered, self.alice_pending = self.say(self.alice, f"my launch code is {SECRET} {TELL}")
        self.web.upload(str(secret_db(uploads)), self.answered, self.alice.token, 30, self.alice.request)
        self.recall.failing = True
        self.waiting, _ = self.say(self.alice, f"remember {SECRET} {TELL} for later")
        self.recall.failing = False
        self.alice_retry = self.web.retry(self.waiting, [], self.alice.token, self.alice.request)[1]
        self.mallorys, _ = self.say(self.mallory, "my own little thread")
        self.upload = str(plain_db(uploads))

    def person(self, name: str, mode: str) -> Person:
        if mode == "sign-in":
            return Person(name, None, gr.Request(username=name))
        token = self.web.identity.new_token()
        return Person(self.web.user(token, None), token, None)

    def say(self, who: Person, text: str, thread: str | None = None) -> tuple[str, dict]:
        _, thread, chat, pending, *_ = self.web.accept(text, thread, [], False, who.token, who.request)
        list(self.web.respond(pending, thread, chat, who.token, who.request))
        return thread, pending

    def alices(self) -> dict[str, Any]:
        return {t: snapshot(self.saver, t) for t in (self.answered, self.waiting)}

    def close(self) -> None:
        self.saver.close()


@pytest.fixture(params=MODES)
def people(request, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    monkeypatch.setattr(gr, "Info", lambda *a, **k: None)
    monkeypatch.setattr(gr, "Warning", lambda *a, **k: None)
    p = TwoPeople(tmp_path, request.param)
    yield p
    p.close()


@pytest.fixture(scope="module", autouse=True)
def _save_counts():
    yield
    COUNTS.save()


@pytest.fixture(autouse=True)
def _scratch_in_tmp_path(monkeypatch, tmp_path: Path):
    """Web exports and Gradio's uploads go to tmp_path, not the machine's /tmp."""
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))


# -- 1. the handlers, called directly -----------------------------------------------------


def handler_attacks(p: TwoPeople) -> dict[str, Any]:
    """Every handler, as Mallory, on Alice's thread `t` (with Alice's session state where Gradio would give it)."""
    w, m = p.web, p.mallory
    return {
        "open": lambda t: w.open_thread(t, m.token, m.request),
        "load earlier": lambda t: w.load_earlier(t, 0, [], m.token, m.request),
        "load earlier from 1": lambda t: w.load_earlier(t, 1, [], m.token, m.request),
        "rename": lambda t: w.rename("mallory was here", t, m.token, 30, m.request),
        "pin": lambda t: w.toggle_pin(t, m.token, 30, m.request),
        "delete": lambda t: w.delete(t, m.token, 30, m.request),
        "export markdown": lambda t: w.export_markdown(t, m.token, m.request),
        "export json": lambda t: w.export_json(t, m.token, m.request),
        "attach": lambda t: w.upload(p.upload, t, m.token, 30, m.request),
        "detach": lambda t: w.detach(t, m.token, m.request),
        "regenerate": lambda t: w.regenerate(t, m.token, m.request),
        "retry": lambda t: w.retry(t, [], m.token, m.request),
        "edit last": lambda t: w.edit_last(t, m.token, m.request),
        "send": lambda t: w.accept("mallory says hi", t, [], False, m.token, m.request),
        "send as an edit": lambda t: w.accept("mallory says hi", t, [], True, m.token, m.request),
        "stream Alice's pending message": lambda t: w.respond(p.alice_pending, t, [], m.token, m.request),
        "stream Alice's pending retry": lambda t: w.respond(p.alice_retry, t, [], m.token, m.request),
        "stream her own message": lambda t: w.respond({"text": "what did I say?"}, t, [], m.token, m.request),
        "refresh": lambda t: w.refresh(t, m.token, 30, "", m.request),
        "search": lambda t: w.search(SECRET, m.token, 30, t, m.request),
        "more": lambda t: w.more_threads(m.token, 30, t, SECRET, m.request),
        "new chat": lambda t: w.new_chat(m.token, 30, m.request),
        "load the page": lambda t: w.on_load(m.token, m.request),
        "delete all her data": lambda t: w.delete_everything(m.token, m.request),
    }


def attempt_across(door: str, p: TwoPeople, action: str, call) -> Any:
    """One attempt by Mallory: it may fail with one sentence; Alice's threads must not change,
    and nothing of Alice's may come back."""
    COUNTS.cross_user_attempts[door] += 1
    before = p.alices()

    def run() -> Any:
        value = call()
        return list(value) if hasattr(value, "__next__") else value

    try:
        value = within(TIMEOUT_S, run)
    except gr.Error as exc:
        value = exc.message
    except AssertionError:
        raise
    except BaseException as exc:
        COUNTS.broke(door, f"{action}: {type(exc).__name__}: {exc}")
        raise AssertionError(f"{action}: {type(exc).__name__} reached Mallory: {exc}") from exc
    if leaked(value):
        COUNTS.cross_user_reads[door] += 1
    if p.alices() != before:
        COUNTS.cross_user_writes[door] += 1
    assert not leaked(value), f"{action}: Mallory saw Alice's text: {visible_text(value)[:300]}"
    assert p.alices() == before, f"{action}: Alice's thread changed"
    return value


ACTIONS = [
    "open", "load earlier", "load earlier from 1", "rename", "pin", "delete", "export markdown", "export json",
    "attach", "detach", "regenerate", "retry", "edit last", "send", "send as an edit",
    "stream Alice's pending message", "stream Alice's pending retry", "stream her own message", "refresh",
    "search", "more", "new chat", "load the page", "delete all her data",
]


@pytest.mark.parametrize("action", ACTIONS)
def test_a_handler_called_with_another_persons_thread_changes_and_shows_nothing(people: TwoPeople, action: str):
    attacks = handler_attacks(people)
    assert sorted(attacks) == sorted(ACTIONS)
    call = attacks[action]
    for thread in (people.answered, people.waiting):
        attempt_across("web handlers", people, action, lambda: call(thread))
    # Alice carries on: she reads both threads, retries the waiting one and continues the other.
    alice = people.alice
    shown = people.web.open_thread(people.answered, alice.token, alice.request)
    assert TELL in visible_text(shown)
    _, pending = people.web.retry(people.waiting, [], alice.token, alice.request)
    list(people.web.respond(pending, people.waiting, [], alice.token, alice.request))
    people.say(alice, "and one more thing", people.answered)
    assert people.saver.threads.get(people.answered, user_id=alice.name).message_count == 4
    assert people.saver.threads.get(people.waiting).message_count == 2


def test_the_listings_never_hold_another_persons_threads(people: TwoPeople):
    m = people.mallory
    for listing in (
        people.web.on_load(m.token, m.request),
        people.web.new_chat(m.token, 30, m.request),
        people.web.search(SECRET, m.token, 30, None, m.request),
        people.web.search("launch code", m.token, 30, None, m.request),
        people.web.more_threads(m.token, 30, None, "", m.request),
    ):
        COUNTS.cross_user_attempts["web handlers"] += 1
        assert not leaked(listing) and people.answered not in visible_text(listing)
    assert people.mallorys in visible_text(people.web.new_chat(m.token, 30, m.request))


# -- 2. the real Gradio server, over raw HTTP ------------------------------------------------


class Browser:
    """One person's HTTP client and Gradio session, as the page would hold them."""

    def __init__(self, url: str, name: str, mode: str) -> None:
        self.api = GradioAPI(url)
        if mode == "sign-in":
            assert self.api.login(name, PASSWORDS[name])
        self.session = new_session()
        loaded = self.api.call("on_load", [None], session_hash=self.session)
        assert loaded.success, loaded.error
        self.token = loaded.output[0]

    def call(self, event: str | Event, session: str | None = None, **by_type: Any) -> Outcome:
        event = event if isinstance(event, Event) else self.api.event(event)
        data = event.inputs_with(browserstate=self.token, **by_type)
        return self.api.call(event, data, session_hash=session or self.session)

    def send(self, text: str) -> Outcome:
        sent = self.call("send", textbox=text, chatbot=[])
        assert sent.success, sent.error
        replied = self.call("respond", chatbot=sent.output[2])
        assert replied.success, replied.error
        refreshed = self.call("refresh", textbox="")  # the page's next step: the list now holds the thread
        assert refreshed.success, refreshed.error
        return replied

    def open(self, thread: str) -> None:
        """Pick the thread in the list, after the list is refreshed (a call on this session by
        someone else may have left other choices in the session's copy of the list)."""
        refreshed = self.call("refresh", textbox="")
        assert refreshed.success, refreshed.error
        opened = self.call("open_thread", radio=thread)
        assert opened.success, opened.error


@pytest.fixture(params=MODES)
def served(request, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    saver = ThreadSaver(tmp_path / "data" / "threadkeeper.db", encryption_key=None)
    users = PASSWORDS if request.param == "sign-in" else None
    web = WebChat(saver, settings=Settings(), model=model(Recall()), identity=Identity(b"k" * 32, users))
    with serving(web) as server:
        yield server, saver, request.param
    saver.close()


def alices_thread(saver: ThreadSaver, alice: Browser, mode: str) -> str:
    owner = VICTIM if mode == "sign-in" else alice.token.rpartition(".")[0]
    (thread,) = saver.threads.list(owner).threads
    return thread.thread_id


def test_no_event_of_the_real_server_reaches_another_persons_thread_by_fn_index(served, tmp_path: Path):
    server, saver, mode = served
    alice = Browser(server.url, VICTIM, mode)
    alice.send(f"my launch code is {SECRET} {TELL}")
    thread = alices_thread(saver, alice, mode)
    secret = alice.api.upload(f"{SECRET}-{TELL}-ledger.db", secret_db(tmp_path).read_bytes())
    assert alice.call("upload", uploadbutton=secret).success
    alice.send(f"and {SECRET} {TELL} again")  # her session now holds a pending message and the open thread

    mallory = Browser(server.url, ATTACKER, mode)
    mallory.send("my own little thread")
    mine = mallory.api.upload("mallory.db", plain_db(tmp_path).read_bytes())
    events = [e for e in mallory.api.events() if e.backend]
    assert {"respond", "respond_1", "respond_2", "refresh"} <= {e.api_name for e in events}

    before = snapshot(saver, thread)
    assert before[3] == 4
    tried = 0
    for event in events:
        for session in (alice.session, mallory.session):
            # Alice's session state points at her thread again, as it does in her open tab.
            alice.open(thread)
            seen = mallory.call(event, session=session, textbox=SECRET, radio=thread, chatbot=[], uploadbutton=mine)
            tried += 1
            COUNTS.cross_user_attempts[f"gradio http ({mode})"] += 1
            if TELL.lower() in seen.text.lower():
                COUNTS.cross_user_reads[f"gradio http ({mode})"] += 1
            if snapshot(saver, thread) != before:
                COUNTS.cross_user_writes[f"gradio http ({mode})"] += 1
            where = "Alice's session" if session == alice.session else "her own session"
            assert TELL.lower() not in seen.text.lower(), f"{event.api_name} (fn_index {event.fn_index}) on {where} showed Mallory Alice's text"
            assert snapshot(saver, thread) == before, f"{event.api_name} (fn_index {event.fn_index}) on {where} changed Alice's thread"
            assert "Traceback" not in seen.text
    assert tried == 2 * len(events)

    # Alice carries on in the same tab.
    alice.open(thread)
    alice.send("still mine?")
    assert snapshot(saver, thread)[3] == 6


def test_the_queue_refuses_a_caller_who_has_not_signed_in(tmp_path: Path):
    saver = ThreadSaver(tmp_path / "threadkeeper.db", encryption_key=None)
    web = WebChat(saver, settings=Settings(), model=model(Recall()), identity=Identity(b"k" * 32, PASSWORDS))
    with serving(web) as server, GradioAPI(server.url) as stranger:
        config = stranger.http.get("/config")
        assert config.status_code == 401 or not config.json().get("dependencies")
        respond = Event(8, "respond", "private", True, ("state", "state", "chatbot", "browserstate"), ("chatbot",))
        _, joined = stranger.join(respond, [None, None, [], None], session_hash=new_session())
        COUNTS.cross_user_attempts["gradio http (sign-in)"] += 1
        assert joined.status_code == 401
    saver.close()


# -- 3. the command line -------------------------------------------------------------------


def cli(argv: list[str], stdin: str = "") -> tuple[int, str, str]:
    return within(TIMEOUT_S, run_cli, argv, stdin)


def test_the_cli_treats_another_users_thread_as_not_found(tmp_path: Path, monkeypatch):
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "THREADKEEPER_ENCRYPTION_KEY", "THREADKEEPER_USER"):
        monkeypatch.delenv(name, raising=False)
    db_path = tmp_path / "threadkeeper.db"
    db = f"sqlite:///{db_path}"
    code, out, err = cli(["--db", db, "chat", "--user", VICTIM], f"my launch code is {SECRET} {TELL}\n/attach {secret_db(tmp_path)}\n/quit\n")
    assert code == 0, err
    saver = ThreadSaver(db_path, encryption_key=None)
    (thread,) = saver.threads.list(VICTIM).threads
    thread = thread.thread_id
    before = snapshot(saver, thread)
    assert before[6] is not None  # the attachment is there
    export = tmp_path / "alice.json"
    assert cli(["--db", db, "export", "--user", VICTIM, "--output", str(export)])[0] == 0
    sessions = tmp_path / "sessions"
    sessions.mkdir()
    (sessions / f"{thread}.json").write_text(json.dumps([{"type": "human", "data": {"content": "mallory's words"}}]))
    mine = plain_db(tmp_path)

    attempts = {
        "show": (["show", thread, "--user", ATTACKER], "", True),
        "chat": (["chat", "--thread", thread, "--user", ATTACKER], "what did I say?\n/quit\n", True),
        "attach": (["attach", thread, str(mine), "--user", ATTACKER], "", True),
        "threads": (["threads", "--user", ATTACKER], "", False),
        "export": (["export", "--user", ATTACKER], "", False),
        "delete-user": (["delete-user", ATTACKER, "--yes"], "", False),
        "import --replace": (["import", str(export), "--user", ATTACKER, "--replace"], "", False),
        "import-json": (["import-json", str(sessions), "--user", ATTACKER], "", False),
    }
    for action, (argv, stdin, not_found) in attempts.items():
        COUNTS.cross_user_attempts["cli"] += 1
        code, out, err = cli(["--db", db, *argv], stdin)
        if TELL in out + err:
            COUNTS.cross_user_reads["cli"] += 1
        assert TELL not in out + err, f"threadkeeper {action} --user {ATTACKER} printed Alice's text"
        assert "Traceback" not in err
        if not_found:
            assert code == 2 and err.count("\n") == 1 and f"no thread with id '{thread}'" in err, (action, code, err)
        assert snapshot(saver, thread) == before, f"threadkeeper {action} --user {ATTACKER} changed Alice's thread"
    code, out, _ = cli(["--db", db, "show", thread, "--user", VICTIM])
    assert code == 0 and TELL in out
    saver.close()


# -- 4. the LangGraph server ---------------------------------------------------------------------

API_TOKENS = {VICTIM: "alice-api-token-0123456789", ATTACKER: "mallory-api-token-0123456789"}


@pytest.fixture(scope="module")
def langgraph(tmp_path_factory):
    from tests.test_langgraph_server import LangGraphDev

    workdir = tmp_path_factory.mktemp("langgraph")
    server = LangGraphDev(workdir, workdir / "threadkeeper.db")
    server.env["THREADKEEPER_API_TOKENS"] = ",".join(f"{user}:{token}" for user, token in API_TOKENS.items())
    server.start()
    yield server, workdir / "threadkeeper.db"
    server.stop()


def api(server, who: str):
    """A LangGraph SDK client that signs in as `who` with their API token."""
    from langgraph_sdk import get_client

    return get_client(url=server.url, headers={"Authorization": f"Bearer {API_TOKENS[who]}"})


def test_a_langgraph_server_thread_belongs_to_the_caller_and_no_one_else(langgraph, tmp_path: Path):
    """The promise at this door (README): the API token names the user; a thread Alice
    creates through the server is hers in the web chat too, and no one else's."""
    server, db = langgraph

    async def create() -> str:
        client = api(server, VICTIM)
        made = await client.threads.create(metadata={"user_id": ATTACKER})  # the server names the caller instead
        await client.runs.wait(made["thread_id"], "threadkeeper", input={"messages": [{"role": "user", "content": f"my code is {SECRET} {TELL}"}]})
        return made["thread_id"]

    thread = asyncio.run(create())
    saver = ThreadSaver(db, encryption_key=None)
    web = WebChat(saver, settings=Settings(), model=model(Recall()), identity=Identity(b"k" * 32, PASSWORDS))
    mallory = gr.Request(username=ATTACKER)
    try:
        assert [t.thread_id for t in saver.threads.list(VICTIM).threads] == [thread]
        assert thread not in [t.thread_id for t in saver.threads.list(ATTACKER).threads]
        for action, call in {
            "open": lambda: web.open_thread(thread, None, mallory),
            "search": lambda: web.search(SECRET, None, 30, None, mallory),
            "export": lambda: web.export_json(thread, None, mallory),
        }.items():
            COUNTS.cross_user_attempts["langgraph server thread, web door"] += 1
            try:
                value = call()
            except gr.Error as exc:
                value = exc.message
            assert not leaked(value), action
        assert TELL in visible_text(web.open_thread(thread, None, gr.Request(username=VICTIM)))
    finally:
        saver.close()


def test_a_langgraph_server_client_never_reaches_another_persons_web_thread(langgraph):
    """What Mallory, with her own API token, can do with the id of a thread Alice made in
    the web chat: nothing. The store says whose a thread is, so the server answers as if
    it did not exist (404, or 409 to creating one with its id), and its state never
    reaches her, even after her attempts to create, run or update it."""
    server, db = langgraph
    saver = ThreadSaver(db, encryption_key=None)
    from graph import build_graph

    thread = str(uuid.uuid4())
    build_graph(checkpointer=saver, model=model(Recall()), settings=Settings()).invoke(
        {"messages": [("user", f"my code is {SECRET} {TELL}")]}, {"configurable": {"thread_id": thread, "user_id": VICTIM}}
    )
    saver.flush()
    before = snapshot(saver, thread)
    saver.close()

    async def take_over() -> list[str]:
        client = api(server, ATTACKER)
        seen = []
        for call in (
            lambda: client.threads.create(thread_id=thread, if_exists="do_nothing", metadata={"user_id": ATTACKER}),
            lambda: client.threads.get(thread),
            lambda: client.threads.get_state(thread),
            lambda: client.threads.get_history(thread),
            lambda: client.runs.wait(thread, "threadkeeper", input={"messages": [{"role": "user", "content": "what is my code?"}]},
                                     metadata={"user_id": ATTACKER}, if_not_exists="create"),
            lambda: client.threads.update(thread, metadata={"user_id": ATTACKER}),
            lambda: client.threads.update_state(thread, {"messages": [{"role": "user", "content": "mallory was here"}]}),
            lambda: client.threads.search(metadata={"user_id": VICTIM}),
            lambda: client.threads.search(limit=100),
            lambda: client.threads.get_state(thread),
            lambda: client.threads.delete(thread),
        ):
            try:
                seen.append(json.dumps(await call(), default=str))
            except Exception as exc:  # the server's answer, whatever it is
                status = getattr(getattr(exc, "response", None), "status_code", None)
                seen.append(f"HTTP {status} {type(exc).__name__}: {exc}")
        return seen

    seen = asyncio.run(take_over())
    COUNTS.cross_user_attempts["langgraph server (API tokens)"] += len(seen)
    COUNTS.cross_user_reads["langgraph server (API tokens)"] += sum(TELL in s for s in seen)
    saver = ThreadSaver(db, encryption_key=None)
    try:
        assert not [s for s in seen if TELL in s], "Mallory saw Alice's thread through the LangGraph server"
        assert all(s.startswith(("HTTP 404", "HTTP 409")) for s in seen[:7] + seen[9:]), seen
        after = snapshot(saver, thread)
        if after != before:
            COUNTS.cross_user_writes["langgraph server (API tokens)"] += 1
        assert after == before, "Alice's thread changed"
        assert thread not in [t.thread_id for t in saver.threads.list(ATTACKER).threads]
    finally:
        saver.close()

    async def alice_reads() -> dict:
        return await api(server, VICTIM).threads.get_state(thread)

    assert TELL in json.dumps(asyncio.run(alice_reads()))  # and she reads it through the server herself
