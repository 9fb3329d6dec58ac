"""Searching a user's threads by title and by message text (FTS5 on SQLite, tsvector on PostgreSQL)."""

from __future__ import annotations

import sqlite3
import time

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from checkpointers import ThreadSaver
from checkpointers.engines.sqlite.schema import MIGRATIONS
from tests.chat import echo_graph


def _say(saver, thread_id: str, user_id: str | None, text: str) -> None:
    echo_graph(saver).invoke(
        {"messages": [HumanMessage(text)]}, {"configurable": {"thread_id": thread_id, "user_id": user_id}}
    )


def _found(saver, user_id, query, **kwargs) -> list[str]:
    return [t.thread_id for t in saver.threads.search(user_id, query, **kwargs).threads]


def _file_bytes(path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def test_message_text_is_found_by_whole_words_ignoring_case_and_accents(store):
    _say(store, "trip", "alice", "Hello there")
    _say(store, "trip", "alice", "We fly to Zürich on the Café Express")
    _say(store, "food", "alice", "Recipe for pancakes")
    assert _found(store, "alice", "zurich") == ["trip"]
    assert _found(store, "alice", "CAFÉ express") == ["trip"]
    assert _found(store, "alice", "pancakes") == ["food"]
    assert _found(store, "alice", "you said") == ["food", "trip"]  # the AI's replies are indexed too
    assert _found(store, "alice", "expres") == []  # whole words only
    assert _found(store, "alice", "pancakes zurich") == []  # every word, in one message


def test_titles_match_as_text_and_results_are_newest_first(store):
    _say(store, "a", "alice", "Quarterly numbers")
    _say(store, "b", "alice", "Weekend plans")
    store.threads.rename("a", "Budget review")
    assert _found(store, "alice", "get rev") == ["a"]  # title substring
    _say(store, "a", "alice", "weekend too")
    assert _found(store, "alice", "weekend") == ["a", "b"]
    assert _found(store, "alice", "") == ["a", "b"]


def test_search_pages_with_a_cursor(store):
    for i in range(7):
        _say(store, f"t{i}", "alice", f"common word {i}")
    page = store.threads.search("alice", "common", limit=3)
    seen = [t.thread_id for t in page.threads]
    while page.next_cursor:
        page = store.threads.search("alice", "common", limit=3, cursor=page.next_cursor)
        seen += [t.thread_id for t in page.threads]
    assert seen == [f"t{i}" for i in range(6, -1, -1)]


def test_other_users_threads_are_never_found(store):
    _say(store, "mine", "alice", "the password is swordfish")
    _say(store, "theirs", "bob", "my password is swordfish too")
    _say(store, "nobodys", None, "swordfish")
    assert _found(store, "alice", "swordfish") == ["mine"]
    assert _found(store, "bob", "swordfish") == ["theirs"]
    assert _found(store, None, "swordfish") == ["nobodys"]
    assert _found(store, "carol", "swordfish") == []


def test_fts_syntax_in_a_query_is_just_text(store):
    _say(store, "t", "alice", 'He said "NEAR" (AND) OR not* -x ^y col:z')
    for query in ['"', "AND", "NEAR(", "not*", "col:z", "-x", "^y", "%", "_", "\\", "' OR 1=1 --", "😀"]:
        store.threads.search("alice", query)  # no exception
    assert _found(store, "alice", "near and") == ["t"]
    assert _found(store, "alice", "col:z") == ["t"]


def test_tool_output_and_system_prompts_are_not_indexed(store):
    graph = echo_graph(store)
    config = {"configurable": {"thread_id": "t", "user_id": "alice"}}
    graph.update_state(config, {"messages": [
        HumanMessage("look it up"),
        AIMessage("", tool_calls=[{"name": "lookup", "args": {}, "id": "c1"}]),
        ToolMessage("secretinternalvalue", tool_call_id="c1"),
    ]})
    assert _found(store, "alice", "look") == ["t"]
    assert _found(store, "alice", "secretinternalvalue") == []


def test_deleted_threads_leave_no_words_in_the_index_or_the_file(saver, db_path):
    _say(saver, "keep", "alice", "ordinary words")
    _say(saver, "gone", "alice", "the marker is zqxjvmarker")
    assert _found(saver, "alice", "zqxjvmarker") == ["gone"]
    saver.delete_thread("gone")
    assert _found(saver, "alice", "zqxjvmarker") == []
    assert _found(saver, "alice", "ordinary") == ["keep"]
    saver.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert b"zqxjvmarker" not in _file_bytes(db_path)
    saver.conn.execute("INSERT INTO message_search (message_search, rank) VALUES ('integrity-check', 0)")


def test_copies_are_searchable_on_their_own_and_pruned_threads_are_not(saver):
    _say(saver, "src", "alice", "Fruit")
    _say(saver, "src", "alice", "a unique kumquat")
    saver.copy_thread("src", "dst")
    saver.delete_thread("src")
    assert _found(saver, "alice", "kumquat") == ["dst"]
    saver.prune(["dst"], strategy="delete")
    assert _found(saver, "alice", "kumquat") == []
    saver.conn.execute("INSERT INTO message_search (message_search, rank) VALUES ('integrity-check', 0)")


def test_a_store_from_before_the_index_is_indexed_when_opened(db_path):
    saver = ThreadSaver(db_path)
    _say(saver, "old", "alice", "written before search existed: aardvark")
    saver.close()
    # Take the file back to schema version 2: drop whatever later migrations made.
    reference = sqlite3.connect(":memory:")
    for step in MIGRATIONS[:2]:
        step(reference)
    version_2 = {name for (name,) in reference.execute("SELECT name FROM sqlite_master")}
    conn = sqlite3.connect(db_path, isolation_level=None)
    later = conn.execute(
        "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' AND name != 'schema_migrations' "
        "AND tbl_name NOT LIKE 'message_search_%' AND type IN ('table', 'trigger', 'index') ORDER BY type = 'table'"
    ).fetchall()
    for kind, name in later:
        if name not in version_2:
            conn.execute(f"DROP {kind.upper()} IF EXISTS {name}")
    conn.execute("DELETE FROM schema_migrations WHERE version >= 3")
    conn.close()
    saver = ThreadSaver(db_path)
    try:
        assert _found(saver, "alice", "aardvark") == ["old"]
        _say(saver, "new", "alice", "aardvark again")
        assert _found(saver, "alice", "aardvark") == ["new", "old"]
    finally:
        saver.close()


def test_every_script_folds_the_same_on_both_engines(tmp_path, postgres_url):
    """PostgreSQL's index finds exactly what SQLite's FTS5 finds, query by query, in every script."""
    from checkpointers import open_saver

    found = []
    for url in (f"sqlite:///{tmp_path / 'search.db'}", postgres_url):
        with open_saver(url) as saver:
            for thread_id, text in FOLDING_TEXTS.items():
                _say(saver, thread_id, "alice", text)
            found.append(_search_everything(saver))
    assert found[0] == found[1]
    assert found[1]["cafe"] == ["latin"] and found[1]["strasse"] == ["german"] and found[1]["nothing"] == []


def test_search_walks_the_users_index_and_probes_by_rowid(saver):
    _say(saver, "t", "alice", "hello")
    sql_plan = saver.threads.explain_search("alice", "hello")
    assert any("threads_by_user_updated" in step for step in sql_plan), sql_plan
    assert not any(step.startswith("SCAN threads") for step in sql_plan), sql_plan
    assert any("search_backlog USING INTEGER PRIMARY KEY" in step for step in sql_plan), sql_plan
    assert not any(step.startswith("SCAN search_backlog") for step in sql_plan), sql_plan


# -- the backlog: words of new messages before they move into the index --------------

FOLDING_TEXTS = {
    "latin": "Café au LAIT in Zürich, Ærøskøbing and Łódź",
    "german": "Die Straße ist groß",
    "greek": "Άλφα και Ώμέγα",
    "cyrillic": "Ёлка и Йога",
    "rare": "ǡble ǯam",
}
FOLDING_QUERIES = [
    "cafe", "CAFÉ lait", "zurich", "aeroskobing", "ærøskøbing", "lodz", "łódź", "strasse", "STRASSE", "gross",
    "άλφα", "αλφα", "ώμέγα", "ωμεγα", "ёлка", "елка", "йога", "иога", "ǡble", "able", "ǯam", "ʒam", "nothing",
]


def _backlog_rows(saver) -> int:
    # Under the saver's lock: the flusher writes on the same connection, and a
    # read between its statements would see its transaction half done.
    with saver._lock:
        return saver.conn.execute("SELECT count(*) FROM search_backlog").fetchone()[0]


def _search_everything(saver) -> dict[str, list[str]]:
    return {query: sorted(_found(saver, "alice", query)) for query in FOLDING_QUERIES}


def test_a_word_is_found_the_same_in_the_backlog_and_after_it_moved_into_the_index(saver):
    """Search must not depend on whether the words were merged yet, in any script."""
    for thread_id, text in FOLDING_TEXTS.items():
        _say(saver, thread_id, "alice", text)
    waiting = _backlog_rows(saver)
    assert waiting >= 2 * len(FOLDING_TEXTS)  # each human message and its echo
    from_backlog = _search_everything(saver)
    assert saver.merge_search_backlog() == waiting
    assert _backlog_rows(saver) == 0
    assert _search_everything(saver) == from_backlog
    assert from_backlog["cafe"] == ["latin"] and from_backlog["strasse"] == ["german"]
    assert from_backlog["ёлка"] == ["cyrillic"] and from_backlog["nothing"] == []
    saver.conn.execute("INSERT INTO message_search (message_search, rank) VALUES ('integrity-check', 0)")


def test_deleting_a_thread_removes_its_words_whether_merged_or_waiting(saver, db_path):
    _say(saver, "gone", "alice", "the first marker is zqxjvmerged")
    saver.merge_search_backlog()
    _say(saver, "gone", "alice", "the second marker is zqxjvwaiting")
    _say(saver, "kept", "alice", "zqxjvwaiting here too")
    assert _found(saver, "alice", "zqxjvmerged") == ["gone"]
    assert _found(saver, "alice", "zqxjvwaiting") == ["kept", "gone"]
    saver.delete_thread("gone")
    assert _found(saver, "alice", "zqxjvmerged") == []
    assert _found(saver, "alice", "zqxjvwaiting") == ["kept"]
    saver.conn.execute("INSERT INTO message_search (message_search, rank) VALUES ('integrity-check', 0)")
    saver.merge_search_backlog()
    assert _found(saver, "alice", "zqxjvwaiting") == ["kept"]
    saver.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert b"zqxjvmerged" not in _file_bytes(db_path)


def test_the_flusher_merges_the_backlog_once_it_is_long_and_close_merges_the_rest(db_path, monkeypatch):
    monkeypatch.setattr("checkpointers.engines.sqlite.fts.BACKLOG_MERGE_AT", 6)
    saver = ThreadSaver(db_path)

    def indexed() -> int:
        with saver._lock:
            return saver.conn.execute("SELECT count(*) FROM message_search_docsize").fetchone()[0]

    try:
        for n in range(3):
            _say(saver, f"t{n}", "alice", f"word{n}")
        # At least six rows written: the flusher thread moves them (nothing here asks it to).
        deadline = time.monotonic() + 5
        while not indexed() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert indexed() >= 6 and _backlog_rows(saver) < 6
        _say(saver, "t9", "alice", "word9")
        assert _backlog_rows(saver) >= 2
    finally:
        saver.close()
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT count(*) FROM search_backlog").fetchone()[0] == 0
    conn.close()
    with ThreadSaver.from_conn_string(f"sqlite:///{db_path}") as reopened:
        assert [t.thread_id for t in reopened.threads.search("alice", "word9").threads] == ["t9"]
