"""`saver.sessions`: sessions and messages with typed metadata, filtered in SQL, on
both engines (`store`: a SQLite file, a PostgreSQL schema).

The filter tests run thousands of random filters over random data and compare
every answer with `matches`, a plain-Python statement of what a filter means
(checkpointers/metadata.py's docstring in code). Each engine compiles filters to
its own SQL, so the same reference checks both.
"""

from __future__ import annotations

import operator
from contextlib import nullcontext
import random
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from checkpointers import ANY_USER, MessageNotFoundError, ThreadNotFoundError, open_saver, stats
from checkpointers.errors import UnstorableInputError
from checkpointers.conversation import iso
from graph import build_graph
from tests.chat import chat_graph, human
from tests.scripted import ScriptedChatModel, echo

# -- the reference: what a filter means, in Python ---------------------------

_ORDER = {"$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le}


def kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return "bytes" if isinstance(value, bytes) else "str"


def _equal(metadata: dict, key: str, value: Any) -> bool:
    return key in metadata and kind(metadata[key]) == kind(value) and metadata[key] == value


def _compare(metadata: dict, key: str, op: str, value: Any) -> bool:
    if op == "$eq":
        return _equal(metadata, key, value)
    if op == "$ne":
        return key in metadata and not _equal(metadata, key, value)
    if op == "$in":
        return any(_equal(metadata, key, v) for v in value)
    return key in metadata and kind(metadata[key]) == kind(value) and _ORDER[op](metadata[key], value)


def matches(metadata: dict, expr: dict) -> bool:
    for key, value in expr.items():
        if key == "$and":
            ok = all(matches(metadata, e) for e in value)
        elif key == "$or":
            ok = any(matches(metadata, e) for e in value)
        elif key == "$not":
            ok = not matches(metadata, value)
        elif isinstance(value, dict):
            ok = all(_compare(metadata, key, op, operand) for op, operand in value.items())
        else:
            ok = _equal(metadata, key, value)
        if not ok:
            return False
    return True


# -- random data and random filters -------------------------------------------

KEYS = ["topic", "priority", "score", "open", "blob", "any"]
STRINGS = ["billing", "bugs", "café", "Zebra", "", "ünï", 'say "hi"', "billing "]
NUMBERS = [-5, -1, 0, 1, 2, 3, 7, 10, -1.5, 0.0, 0.5, 2.0, 3.25, 1e9 + 0.5]
BLOBS = [b"", b"\x00", b"\x00\x01", b"\xff", b"ab", b"abc", b"\x7f\x80"]


def random_value(rng: random.Random, key: str) -> Any:
    wanted = {
        "topic": "str", "priority": "int", "score": "number", "open": "bool", "blob": "bytes",
    }.get(key) or rng.choice(["str", "int", "number", "bool", "bytes"])
    if wanted == "str":
        return rng.choice(STRINGS)
    if wanted == "int":
        return rng.choice([n for n in NUMBERS if isinstance(n, int)])
    if wanted == "number":
        return rng.choice(NUMBERS)
    if wanted == "bool":
        return rng.random() < 0.5
    return rng.choice(BLOBS)


def random_metadata(rng: random.Random) -> dict:
    return {key: random_value(rng, key) for key in KEYS if rng.random() < 0.7}


def random_filter(rng: random.Random, depth: int = 0) -> dict:
    roll = rng.random()
    if depth < 3 and roll < 0.15:
        return {"$and": [random_filter(rng, depth + 1) for _ in range(rng.randint(0, 3))]}
    if depth < 3 and roll < 0.3:
        return {"$or": [random_filter(rng, depth + 1) for _ in range(rng.randint(0, 3))]}
    if depth < 3 and roll < 0.4:
        return {"$not": random_filter(rng, depth + 1)}
    if roll < 0.45:
        return {"$and": [random_filter(rng, 3), random_filter(rng, 3)]} if depth < 3 else {}
    key = rng.choice(KEYS)
    # Operands mostly of the key's usual kind, sometimes of another (never matches).
    operand_key = key if rng.random() < 0.8 else rng.choice(KEYS)
    op = rng.choice(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "short", "two"])
    if op == "short":
        return {key: random_value(rng, operand_key)}
    if op == "two":
        return {key: {"$gte": random_value(rng, operand_key), "$lt": random_value(rng, operand_key)}}
    if op == "$in":
        return {key: {"$in": [random_value(rng, rng.choice([operand_key, key])) for _ in range(rng.randint(0, 4))]}}
    return {key: {op: random_value(rng, operand_key)}}


YEAR_START = datetime(2025, 1, 1, tzinfo=timezone.utc)


def store_of_this_module(request, tmp_path_factory):
    """An open saver on an empty store of this module's own, on `request.param`'s engine."""
    from tests.postgres import fresh_schema

    if request.param == "sqlite":
        place = nullcontext(f"sqlite:///{tmp_path_factory.mktemp('sessions') / 'threadkeeper.db'}")
    else:
        place = fresh_schema(request.getfixturevalue("postgres_database"))
    with place as url, open_saver(url) as saver:
        yield saver


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def populated_store(request, tmp_path_factory):
    """A store of this module's own, once per engine: the tests that use `populated` only read
    it (or try writes that must be refused), so it is filled once."""
    yield from store_of_this_module(request, tmp_path_factory)


@pytest.fixture(scope="module")
def populated(populated_store):
    """2,000 sessions of alice and 300 of bob, updated at random times over a year."""
    saver = populated_store
    rng = random.Random(20240611)
    sessions = saver.sessions
    expected: dict[str, tuple[str, str, dict]] = {}
    rows, created_at = [], []
    for n in range(2_300):
        user = "alice" if n < 2_000 else "bob"
        metadata = random_metadata(rng)
        session = sessions.put_session(user, f"s-{n:04d}", metadata=metadata)
        updated = iso(YEAR_START + timedelta(microseconds=rng.randrange(365 * 86_400 * 10**6)))
        rows.append((updated, session.session_id))
        created_at.append(session.created_at.isoformat(timespec="microseconds"))
        expected[session.session_id] = (user, updated, metadata)
    # Spread the update times over a year (put_session stamps them all "now").
    for (updated, session_id), created in zip(rows, created_at):
        saver.threads.set_origin(session_id, user_id=expected[session_id][0], created_at=created, updated_at=updated)
    return saver, expected


def reference_sessions(expected, user, expr=None, before=None):
    found = [
        (updated, sid)
        for sid, (owner, updated, metadata) in expected.items()
        if owner == user and (before is None or updated < before) and (expr is None or matches(metadata, expr))
    ]
    return [sid for _, sid in sorted(found, reverse=True)]


# -- sessions -------------------------------------------------------------------


def test_every_filter_operator_agrees_with_the_reference(populated):
    saver, expected = populated
    rng = random.Random(7)
    nonempty = 0
    for _ in range(400):
        expr = random_filter(rng)
        got = [s.session_id for s in saver.sessions.list_recent_sessions("alice", max_count=10_000, metadata_filter=expr)]
        want = reference_sessions(expected, "alice", expr)
        assert got == want, expr
        nonempty += bool(want)
    assert nonempty > 200  # the random filters do select things


def test_each_operator_on_each_kind(populated):
    saver, expected = populated
    for key in KEYS:
        for op in ["$eq", "$ne", "$gt", "$gte", "$lt", "$lte"]:
            for operand in [STRINGS[0], STRINGS[2], 2, 0.5, True, False, b"ab", b""]:
                expr = {key: {op: operand}}
                got = [s.session_id for s in saver.sessions.list_recent_sessions("alice", max_count=10_000, metadata_filter=expr)]
                assert got == reference_sessions(expected, "alice", expr), expr
        expr = {key: {"$in": [STRINGS[1], 3, True, b"\xff"]}}
        got = [s.session_id for s in saver.sessions.list_recent_sessions("alice", max_count=10_000, metadata_filter=expr)]
        assert got == reference_sessions(expected, "alice", expr), expr


def test_newest_first_with_max_count_and_an_update_bound(populated):
    saver, expected = populated
    rng = random.Random(3)
    for _ in range(40):
        before = iso(YEAR_START + timedelta(days=rng.uniform(0, 400)))
        expr = random_filter(rng) if rng.random() < 0.5 else None
        count = rng.choice([1, 5, 20, 500])
        got = saver.sessions.list_recent_sessions("alice", max_count=count, updated_before=before, metadata_filter=expr)
        assert [s.session_id for s in got] == reference_sessions(expected, "alice", expr, before)[:count]
        assert all(s.updated_at < datetime.fromisoformat(before) for s in got)
    # A datetime works as a bound too, naive ones taken as UTC.
    naive = datetime(2025, 7, 1)
    got = saver.sessions.list_recent_sessions("alice", max_count=10_000, updated_before=naive)
    assert [s.session_id for s in got] == reference_sessions(expected, "alice", None, iso(naive.replace(tzinfo=timezone.utc)))


def test_iterating_pages_through_every_match(populated):
    saver, expected = populated
    expr = {"$or": [{"open": True}, {"priority": {"$gte": 3}}]}
    want = reference_sessions(expected, "alice", expr)
    assert len(want) > 1_000
    got = [s.session_id for s in saver.sessions.iter_recent_sessions("alice", metadata_filter=expr, page_size=37)]
    assert got == want
    assert [s.session_id for s in saver.sessions.iter_recent_sessions("alice")] == reference_sessions(expected, "alice")


def test_listing_walks_the_users_index_newest_first(populated):
    saver, _ = populated
    plan = " | ".join(
        saver.sessions.explain_recent_sessions(
            "alice", max_count=20, updated_before=datetime(2025, 6, 1), metadata_filter={"topic": "billing"}
        )
    )
    assert "threads_by_user_updated" in plan, plan
    # SQLite: rows come out of the index in order, no sort. (PostgreSQL's planner may sort
    # the few rows it expects of a table not yet analysed; its plan never says TEMP B-TREE.)
    assert "TEMP B-TREE" not in plan, plan


def test_another_users_session_is_not_found(populated):
    saver, expected = populated
    sessions = saver.sessions
    assert sessions.get_session("s-0001", user_id="bob") is None
    assert sessions.get_session("s-0001", user_id="alice").session_id == "s-0001"
    with pytest.raises(ThreadNotFoundError):
        sessions.update_session("s-0001", user_id="bob", metadata={"topic": "stolen"})
    with pytest.raises(ThreadNotFoundError):
        sessions.put_session("bob", "s-0001", metadata={"topic": "stolen"})
    with pytest.raises(ThreadNotFoundError):
        sessions.put_message("s-0001", HumanMessage("hi"), user_id="bob")
    with pytest.raises(ThreadNotFoundError):
        sessions.list_messages("s-0001", user_id="bob")
    assert sessions.delete_session("s-0001", user_id="bob") is False
    assert sessions.get_session("s-0001", user_id="alice").metadata == expected["s-0001"][2]
    listed = {s.session_id for s in sessions.iter_recent_sessions("bob")}
    assert listed == {sid for sid, (owner, _, _) in expected.items() if owner == "bob"}


def test_metadata_round_trips_with_its_types(store):
    saver = store
    metadata = {"b": b"\x00\xffraw\n", "empty": b"", "i": 2**62, "f": 0.1, "t": True, "s": "ünïcode \"q\""}
    session = saver.sessions.put_session("alice", metadata=metadata)
    again = saver.sessions.get_session(session.session_id, user_id="alice")
    assert again.metadata == metadata
    assert {k: type(v) for k, v in again.metadata.items()} == {k: type(v) for k, v in metadata.items()}
    assert saver.sessions.list_recent_sessions("alice", metadata_filter={"b": b"\x00\xffraw\n"})[0].metadata == metadata


def test_put_update_and_delete_a_session(store):
    saver = store
    sessions = saver.sessions
    created = sessions.put_session("alice", "s-1", metadata={"topic": "billing", "n": 1}, title="Invoices")
    assert (created.title, created.metadata, created.message_count) == ("Invoices", {"topic": "billing", "n": 1}, 0)
    updated = sessions.update_session("s-1", user_id="alice", metadata={"n": 2, "topic": None, "flag": True})
    assert updated.metadata == {"n": 2, "flag": True}
    assert updated.updated_at >= created.updated_at and updated.created_at == created.created_at
    replaced = sessions.put_session("alice", "s-1", metadata={"only": "this"})
    assert replaced.metadata == {"only": "this"} and replaced.title == "Invoices"
    assert saver.threads.get("s-1", user_id="alice").title == "Invoices"  # a session is a thread
    assert sessions.delete_session("s-1", user_id="alice") is True
    assert sessions.get_session("s-1", user_id="alice") is None
    assert sessions.delete_session("s-1", user_id="alice") is False


def test_bad_metadata_and_filters_are_one_sentence(store):
    saver = store
    sessions = saver.sessions
    with pytest.raises(ValueError, match="list is not a metadata type"):
        sessions.put_session("alice", metadata={"tags": ["a"]})
    with pytest.raises(ValueError, match="cannot start with '\\$'"):
        sessions.put_session("alice", metadata={"$x": 1})
    with pytest.raises(ValueError, match="unknown operator '\\$like' on 'topic'"):
        sessions.list_recent_sessions("alice", metadata_filter={"topic": {"$like": "b%"}})
    with pytest.raises(ValueError, match="unknown filter operator '\\$nor'"):
        sessions.list_recent_sessions("alice", metadata_filter={"$nor": []})
    with pytest.raises(ValueError, match="max_count must be between 1 and"):
        sessions.list_recent_sessions("alice", max_count=0)
    with pytest.raises(ValueError, match="not a finite number"):
        sessions.list_recent_sessions("alice", metadata_filter={"score": float("nan")})


# -- messages -------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def conversation(request, tmp_path_factory):
    """One session, "chat", of 600 messages with random metadata and creation times (with ties),
    in a store of this module's own, once per engine. Filled once (600 writes take 3-4 s on SQLite,
    8-12 s on PostgreSQL here): the tests that use it only read it, and a test that edits takes
    `own_conversation`."""
    for saver in store_of_this_module(request, tmp_path_factory):
        rng = random.Random(99)
        saver.sessions.put_session("alice", "chat")
        moments = [YEAR_START + timedelta(seconds=rng.randrange(10**7), microseconds=rng.randrange(10**6)) for _ in range(200)]
        expected = []
        for n in range(600):
            message = (HumanMessage if n % 2 == 0 else AIMessage)(f"message {n}", id=f"m-{n:03d}")
            metadata = random_metadata(rng)
            created = rng.choice(moments)
            saver.sessions.put_message("chat", message, user_id="alice", metadata=metadata, created_at=created)
            expected.append((created, n, f"m-{n:03d}", metadata))
        yield saver, expected, moments


@pytest.fixture
def own_conversation(conversation):
    """`conversation`'s session copied, its whole history with it, to a session of this test's own."""
    saver, expected, moments = conversation
    session_id = f"chat-{uuid.uuid4().hex[:8]}"
    saver.copy_thread("chat", session_id)
    return saver, session_id, expected


def reference_messages(expected, *, order="asc", after=None, before=None, expr=None):
    found = [
        (created, position, mid)
        for created, position, mid, metadata in expected
        if (after is None or created > after) and (before is None or created < before)
        and (expr is None or matches(metadata, expr))
    ]
    found.sort(reverse=order == "desc")
    return [mid for _, _, mid in found]


def test_messages_filter_order_and_time_bounds_agree_with_the_reference(conversation):
    saver, expected, moments = conversation
    rng = random.Random(5)
    for _ in range(150):
        order = rng.choice(["asc", "desc"])
        after = rng.choice([None, rng.choice(moments)])
        before = rng.choice([None, rng.choice(moments)])
        expr = rng.choice([None, random_filter(rng)])
        count = rng.choice([None, 1, 10, 1000])
        got = saver.sessions.list_messages(
            "chat", user_id="alice", order=order, created_after=after, created_before=before,
            metadata_filter=expr, max_count=count,
        )
        want = reference_messages(expected, order=order, after=after, before=before, expr=expr)
        assert [m.message_id for m in got] == (want if count is None else want[:count]), (order, after, before, expr)


def test_a_message_comes_back_with_its_time_metadata_and_position(conversation):
    saver, expected, _ = conversation
    created, position, mid, metadata = expected[123]
    found = saver.sessions.get_message("chat", mid, user_id="alice")
    assert (found.created_at, found.position, found.metadata, found.message.content) == (created, 123, metadata, "message 123")
    assert saver.sessions.get_message("chat", "no-such-id", user_id="alice") is None


def test_iterating_messages_pages_in_both_orders(conversation):
    saver, expected, moments = conversation
    expr = {"$not": {"open": True}}
    for order in ("asc", "desc"):
        got = [m.message_id for m in saver.sessions.iter_messages("chat", user_id="alice", order=order, metadata_filter=expr, page_size=7)]
        assert got == reference_messages(expected, order=order, expr=expr)


def test_update_keeps_position_and_time_and_delete_erases(own_conversation):
    saver, chat, expected = own_conversation
    sessions = saver.sessions
    created, _, mid, metadata = expected[10]
    updated = sessions.update_message(chat, mid, user_id="alice", message="edited", metadata={"topic": "new", "blob": None})
    assert (updated.position, updated.created_at, updated.message.content) == (10, created, "edited")
    assert updated.metadata == {**{k: v for k, v in metadata.items() if k != "blob"}, "topic": "new"}
    with pytest.raises(MessageNotFoundError, match=f"no message with id 'nope' in session '{chat}'"):
        sessions.update_message(chat, "nope", user_id="alice", message="x")
    assert sessions.delete_message(chat, "m-011", user_id="alice") is True
    assert sessions.delete_message(chat, "m-011", user_id="alice") is False
    assert sessions.get_message(chat, "m-012", user_id="alice").position == 11
    # Erased: no checkpoint of the thread holds it any more.
    for checkpoint in saver.list({"configurable": {"thread_id": chat}}):
        assert "m-011" not in {m.id for m in checkpoint.checkpoint["channel_values"].get("messages", [])}
    assert len(sessions.list_messages(chat, user_id="alice")) == 599
    # ...of this session only: the one it was copied from is as it was.
    assert sessions.get_message("chat", mid, user_id="alice").message.content == "message 10"
    assert len(sessions.list_messages("chat", user_id="alice")) == 600


def test_delete_all_messages_keeps_the_session(store):
    saver = store
    sessions = saver.sessions
    sessions.put_session("alice", "s-1", metadata={"topic": "billing"})
    sessions.put_message("s-1", ("human", "hello there"), user_id="alice", metadata={"lang": "en"})
    sessions.put_message("s-1", {"role": "assistant", "content": "hi"}, user_id="alice")
    assert sessions.get_session("s-1", user_id="alice").title == "hello there"
    assert sessions.delete_messages("s-1", user_id="alice") == 2
    assert sessions.list_messages("s-1", user_id="alice") == []
    after = sessions.get_session("s-1", user_id="alice")
    assert (after.metadata, after.message_count, after.title) == ({"topic": "billing"}, 0, None)
    assert list(saver.list({"configurable": {"thread_id": "s-1"}})) == []
    sessions.put_message("s-1", HumanMessage("again"), user_id="alice")
    assert [m.message.content for m in sessions.list_messages("s-1", user_id="alice")] == ["again"]


def test_a_sessions_messages_are_the_threads_messages(store):
    saver = store
    """Turns chatted through the graph are the session's messages, dated when stored."""
    saver.sessions.put_session("alice", "t-1", metadata={"channel": "web"})
    before = datetime.now(timezone.utc) - timedelta(milliseconds=1)
    graph = chat_graph(saver)
    config = {"configurable": {"thread_id": "t-1", "user_id": "alice"}}
    graph.invoke({"messages": [human(1)]}, config)
    after = datetime.now(timezone.utc) + timedelta(milliseconds=1)
    listed = saver.sessions.list_messages("t-1", user_id="alice")
    assert [m.message_id for m in listed] == ["human-1", "ai-1"]
    assert all(before <= m.created_at <= after for m in listed)
    assert saver.sessions.list_messages("t-1", user_id="alice", created_after=after) == []
    # ...and a message put through the sessions API is in the agent's next input.
    saver.sessions.put_message("t-1", HumanMessage("remember: the code is 42"), user_id="alice", metadata={"pinned": True})
    model = ScriptedChatModel(script=echo)
    build_graph(checkpointer=saver, model=model).invoke({"messages": [HumanMessage("what is the code?")]}, config)
    assert "remember: the code is 42" in [m.content for m in model.inputs[-1]]
    assert [m.message.content for m in saver.sessions.list_messages("t-1", user_id="alice", metadata_filter={"pinned": True})] == [
        "remember: the code is 42"
    ]
    assert saver.sessions.get_session("t-1", user_id="alice").message_count == 5


def test_put_message_with_a_known_id_replaces_it_in_place(store):
    saver = store
    sessions = saver.sessions
    sessions.put_session("alice", "s-1")
    first = sessions.put_message("s-1", HumanMessage("draft", id="q"), user_id="alice", metadata={"v": 1})
    sessions.put_message("s-1", AIMessage("answer", id="a"), user_id="alice")
    again = sessions.put_message("s-1", HumanMessage("final", id="q"), user_id="alice", metadata={"v": 2})
    assert (again.position, again.created_at, again.metadata) == (0, first.created_at, {"v": 2})
    assert [m.message.content for m in sessions.list_messages("s-1", user_id="alice")] == ["final", "answer"]
    with pytest.raises(ThreadNotFoundError):
        sessions.put_message("no-such-session", HumanMessage("x"), user_id="alice")


def test_operators_see_every_user_with_any_user(store):
    saver = store
    saver.sessions.put_session("alice", "s-a")
    assert saver.sessions.get_session("s-a", user_id=ANY_USER).user_id == "alice"
    with pytest.raises(ValueError, match="one user at a time"):
        saver.sessions.list_recent_sessions(ANY_USER)


async def test_async_twins(async_store):
    saver = async_store
    sessions = saver.sessions
    await sessions.aput_session("alice", "s-1", metadata={"n": 1})
    await sessions.aput_message("s-1", HumanMessage("hi"), user_id="alice", metadata={"n": 1})
    assert [s.session_id for s in await sessions.alist_recent_sessions("alice", metadata_filter={"n": 1})] == ["s-1"]
    assert [s.session_id async for s in sessions.aiter_recent_sessions("alice", page_size=1)] == ["s-1"]
    assert [m.message.content async for m in sessions.aiter_messages("s-1", user_id="alice")] == ["hi"]
    assert (await sessions.aget_message("s-1", (await sessions.alist_messages("s-1", user_id="alice"))[0].message_id, user_id="alice")).metadata == {"n": 1}
    assert await sessions.adelete_messages("s-1", user_id="alice") == 1
    assert await sessions.adelete_session("s-1", user_id="alice") is True


def test_a_copied_session_keeps_its_messages_times_and_metadata(store):
    sessions = store.sessions
    sessions.put_session("alice", "s-1")
    sessions.put_message("s-1", HumanMessage("given", id="a"), user_id="alice", metadata={"k": 1}, created_at=YEAR_START)
    sessions.put_message("s-1", AIMessage("stored", id="b"), user_id="alice")
    store.copy_thread("s-1", "s-2")
    original, copy = (sessions.list_messages(s, user_id="alice") for s in ("s-1", "s-2"))
    assert [(m.message_id, m.created_at, m.metadata) for m in copy] == [
        (m.message_id, m.created_at, m.metadata) for m in original
    ]
    assert copy[0].created_at == YEAR_START


def test_a_replacement_that_cannot_be_written_leaves_the_message_as_it_was(store):
    sessions = store.sessions
    sessions.put_session("alice", "s-1")
    before = sessions.put_message("s-1", HumanMessage("fine", id="m"), user_id="alice", metadata={"k": 1})
    with pytest.raises(UnstorableInputError):
        sessions.put_message("s-1", HumanMessage("lone \ud800", id="m"), user_id="alice", metadata={"k": 2})
    assert sessions.get_message("s-1", "m", user_id="alice") == before


def test_two_processes_putting_one_new_session_at_once_make_it_once(postgres_url: str):
    """Two savers (each with its own pool, as two app processes have) put the same new
    session at the same moment: both find no row, one inserts it, and the other, whose
    insert finds the row made meanwhile, updates it as its owner or is told it does not
    exist, never a duplicate-key error."""
    import threading

    rounds = 40
    with open_saver(postgres_url) as one, open_saver(postgres_url) as two:
        for owners in (("alice", "alice"), ("alice", "bob")):
            outcomes: list[str] = []
            for n in range(rounds):
                barrier = threading.Barrier(2)
                session_id = f"{owners[1]}-race-{n}"

                def put(saver, user: str) -> None:
                    barrier.wait()
                    try:
                        saver.sessions.put_session(user, session_id=session_id, metadata={"by": user})
                        outcomes.append("put")
                    except ThreadNotFoundError:
                        outcomes.append("not found")

                workers = [threading.Thread(target=put, args=pair) for pair in zip((one, two), owners)]
                for w in workers:
                    w.start()
                for w in workers:
                    w.join()
            if owners[0] == owners[1]:
                assert outcomes == ["put"] * 2 * rounds
            else:
                assert sorted(outcomes) == ["not found"] * rounds + ["put"] * rounds
            prefix = f"{owners[1]}-race-"
            made = [s.session_id for user in set(owners) for s in one.sessions.iter_recent_sessions(user)
                    if s.session_id.startswith(prefix)]
            assert sorted(made) == sorted(f"{prefix}{n}" for n in range(rounds))
        figures = stats.usage(one, None)["totals"]
    assert figures["threads_created"] == 2 * rounds


def test_adding_a_message_does_not_copy_the_conversation(store, monkeypatch):
    """`put_message` goes through LangGraph's `update_state`, whose read hands its objects to
    no caller: it gets the kept objects, not a copy of every message (which made each write
    grow with the session: 18 ms of CPU at 600 messages on PostgreSQL, 7 ms after)."""
    from checkpointers.messages import StoredList

    saver = store
    session = saver.sessions.put_session("alice")
    for n in range(40):
        saver.sessions.put_message(session.session_id, ("human" if n % 2 == 0 else "ai", f"message {n}"), user_id="alice")
    copied: list[int] = []
    original = StoredList.copies
    monkeypatch.setattr(StoredList, "copies", lambda self: copied.append(len(self.objs)) or original(self))
    saver.sessions.put_message(session.session_id, ("human", "one more"), user_id="alice")
    assert copied == []
    listed = saver.sessions.list_messages(session.session_id, user_id="alice")
    assert [m.message.content for m in listed] == [f"message {n}" for n in range(40)] + ["one more"]
