"""The thread index: written with each checkpoint, listed per user, edited by users (on both engines)."""

from __future__ import annotations

import pytest

from checkpointers import InvalidCursorError, ThreadNotFoundError
from tests.chat import chat_graph, human


def _chat(saver, thread_id, user_id, turns=1, start=0):
    graph = chat_graph(saver)
    for n in range(start, start + turns):
        graph.invoke({"messages": [human(n)]}, {"configurable": {"thread_id": thread_id, "user_id": user_id}})


def test_each_turn_updates_the_row_in_the_same_write(store):
    _chat(store, "t1", "alice", turns=2)
    info = store.threads.get("t1")
    assert info.user_id == "alice"
    assert info.message_count == 4
    assert info.title and human(0).content.startswith(info.title.rstrip("…"))
    assert info.created_at <= info.updated_at
    before = info.updated_at
    _chat(store, "t1", "alice", start=2)
    assert store.threads.get("t1").updated_at > before
    assert store.threads.get("t1").message_count == 6


def test_list_is_newest_first_with_a_cursor_and_only_the_users_threads(store):
    for i in range(7):
        _chat(store, f"a{i}", "alice", start=i)
    _chat(store, "b0", "bob")
    _chat(store, "anon", None)
    page = store.threads.list("alice", limit=3)
    assert [t.thread_id for t in page.threads] == ["a6", "a5", "a4"]
    seen = [t.thread_id for t in page.threads]
    while page.next_cursor:
        page = store.threads.list("alice", limit=3, cursor=page.next_cursor)
        seen += [t.thread_id for t in page.threads]
    assert seen == [f"a{i}" for i in range(6, -1, -1)]
    assert [t.thread_id for t in store.threads.list("bob").threads] == ["b0"]
    assert [t.thread_id for t in store.threads.list(None).threads] == ["anon"]
    assert store.threads.count("alice") == 7 and store.threads.count("carol") == 0


def test_a_thread_of_another_user_behaves_as_missing(store):
    _chat(store, "secret", "bob")
    with pytest.raises(ThreadNotFoundError):
        store.threads.get("secret", user_id="alice")
    with pytest.raises(ThreadNotFoundError):
        store.threads.rename("secret", "mine now", user_id="alice")
    assert store.threads.get("secret", user_id="bob").title != "mine now"


def test_rename_pin_and_metadata_with_filters(store):
    _chat(store, "t1", "alice")
    _chat(store, "t2", "alice", start=1)
    assert store.threads.rename("t1", "  Trip\n plans ").title == "Trip plans"
    assert store.threads.pin("t1").pinned
    store.threads.update_metadata("t1", {"project": "x", "stars": 3})
    store.threads.update_metadata("t2", {"project": "y"})
    store.threads.update_metadata("t1", {"stars": None})
    assert store.threads.get("t1").metadata == {"project": "x"}
    assert [t.thread_id for t in store.threads.list("alice", metadata={"project": "y"}).threads] == ["t2"]
    assert [t.thread_id for t in store.threads.list("alice", pinned=True).threads] == ["t1"]
    # a renamed title is kept by later turns
    _chat(store, "t1", "alice", start=5)
    assert store.threads.get("t1").title == "Trip plans"


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda s: s.threads.get("nope"), ThreadNotFoundError),
        (lambda s: s.threads.rename("nope", "x"), ThreadNotFoundError),
        (lambda s: s.threads.pin("nope"), ThreadNotFoundError),
        (lambda s: s.threads.update_metadata("nope", {}), ThreadNotFoundError),
        (lambda s: s.threads.list("u", cursor="not-a-cursor"), InvalidCursorError),
        (lambda s: s.threads.list("u", limit=0), ValueError),
        (lambda s: s.threads.list("u", metadata={"k": {"nested": 1}}), ValueError),
        (lambda s: s.threads.rename("t1", "   "), ValueError),
        (lambda s: s.threads.rename("t1", "x" * 201), ValueError),
        (lambda s: s.threads.update_metadata("t1", {"k": object()}), ValueError),
    ],
)
def test_bad_requests_get_one_clear_error_and_change_nothing(store, call, error):
    _chat(store, "t1", "alice")
    before = store.threads.get("t1")
    with pytest.raises(error) as raised:
        call(store)
    assert "\n" not in str(raised.value) and str(raised.value)
    assert store.threads.get("t1") == before


async def test_async_twins(store_url):
    from checkpointers import open_async_saver

    async with open_async_saver(store_url) as saver:
        graph = chat_graph(saver)
        await graph.ainvoke({"messages": [human(1)]}, {"configurable": {"thread_id": "t", "user_id": "u"}})
        page = await saver.threads.alist("u")
        assert [t.thread_id for t in page.threads] == ["t"]
        assert (await saver.threads.arename("t", "hello")).title == "hello"
        assert await saver.threads.acount("u") == 1
        await saver.adelete_thread("t")
        assert await saver.threads.acount("u") == 0
