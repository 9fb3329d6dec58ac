"""Encryption at rest: THREADKEEPER_ENCRYPTION_KEY, the key checks on open, values bound to
their place, the upgrade of stores written before they were, and rotate-key.

What both engines promise alike runs on both (`store_url`: a SQLite file in a tmp dir, a
PostgreSQL schema of the test's own), rotate-key included; attachment files on disk, the
format-1 upgrade and the search backlog are the SQLite engine's. The real agent graph and saver; only the model is scripted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from collections import Counter
from contextlib import closing
from pathlib import Path

import psycopg
import pytest
from psycopg import sql as pg_sql
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.checkpoint.conformance import checkpointer_test, validate

from checkpointers import EncryptionKeyError, ThreadChatHistory, ThreadSaver, open_async_saver, open_saver
from checkpointers.engines.sqlite import reseal
from checkpointers.engines.postgres.connection import qmark, redacted
from checkpointers.url import is_postgres, sqlite_path
from checkpointers.encryption import Cipher, KeyRecord
from checkpointers.engines.sqlite.key_rotation import rotate_key
from checkpointers.engines.postgres import key_rotation as postgres_rotation
from checkpointers.engines.sqlite import key_rotation as sqlite_rotation
from graph import Settings, build_graph
from tests.chat import chat_graph, echo_graph, human
from tests.test_conformance import postgres_saver
from tests.scripted import ScriptedChatModel
from ui.cli import main

KEY = "first key: pale-turquoise-otter-42"
NEW_KEY = "second key: brass-lantern-harbor-17"
MARKER = "quetzalmarker"
OFFLINE = Settings()


def config(thread_id: str, user_id: str = "alice") -> dict:
    return {"configurable": {"thread_id": thread_id, "user_id": user_id}}


def notes_db(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, note TEXT)")
    conn.executemany("INSERT INTO notes (note) VALUES (?)", [(f"the code word is {MARKER}",), ("nothing here",)])
    conn.commit()
    conn.close()
    return path


def ask_the_database(messages):
    """First call: query the attached database; then answer with what the tool returned."""
    last = messages[-1]
    if isinstance(last, ToolMessage):
        return AIMessage(f"The database says: {last.content}")
    return AIMessage("", tool_calls=[{"name": "query_database", "args": {"sql": "SELECT note FROM notes"}, "id": "q1"}])


def chat_with_marker(saver: ThreadSaver, tmp_path: Path, thread_id: str = "t1") -> dict:
    """A thread whose title, human message, tool result, AI reply and attachment all hold MARKER."""
    source = notes_db(tmp_path / f"source-{thread_id}.db")
    saver.attachments.attach(thread_id, source, user_id="alice", name=f"{MARKER}.db")
    source.unlink()  # the upload is the user's file, not the store's
    app = build_graph(checkpointer=saver, model=ScriptedChatModel(script=ask_the_database), settings=OFFLINE)
    return app.invoke({"messages": [HumanMessage(f"Plans for {MARKER} week")]}, config(thread_id))


def everything_on_disk(directory: Path) -> bytes:
    """Every byte of every file under `directory`, and every file name."""
    found = []
    for path in sorted(directory.rglob("*")):
        found.append(str(path.relative_to(directory)).encode())
        if path.is_file():
            found.append(path.read_bytes())
    return b"\n".join(found)


def file_hashes(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def searched(saver: ThreadSaver, query: str, user_id: str = "alice") -> list[str]:
    return [t.thread_id for t in saver.threads.search(user_id, query).threads]


def open_store(db: Path, key: str | None):
    return closing(ThreadSaver(db, encryption_key=key))


def open_url(url: str, key: str | None):
    """The store at `url` (either engine) opened with `key`."""
    return open_saver(url, encryption_key=key)


def store_name(url: str) -> str:
    """How the store's sentences name it: the file's path, or the URL without its password."""
    return redacted(url) if is_postgres(url) else str(sqlite_path(url))


def stored_rows(url: str) -> list[tuple[str, str, str | bytes]]:
    """Every value the store's tables hold that could hold text, as (table, column, value):
    on PostgreSQL every text, bytea, jsonb and tsvector column (cast to text, bytea as is),
    found in the catalogue rather than in a list the code under test keeps; on SQLite every
    column of every table."""
    found: list[tuple[str, str, str | bytes]] = []
    if not is_postgres(url):
        with closing(sqlite3.connect(sqlite_path(url))) as conn:
            for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                cursor = conn.execute(f'SELECT * FROM "{table}"')
                columns = [d[0] for d in cursor.description]
                for row in cursor:
                    found += [(table, c, v) for c, v in zip(columns, row) if isinstance(v, (str, bytes))]
        return found
    with psycopg.connect(url) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND data_type IN ('text', 'bytea', 'jsonb', 'tsvector', "
            "'character varying', 'json')"
        ).fetchall()
        for table, column, kind in columns:
            value = pg_sql.Identifier(column) if kind == "bytea" else pg_sql.SQL("{}::text").format(pg_sql.Identifier(column))
            query = pg_sql.SQL("SELECT {} FROM {} WHERE {} IS NOT NULL").format(
                value, pg_sql.Identifier(table), pg_sql.Identifier(column)
            )
            found += [(table, column, bytes(v) if kind == "bytea" else v) for (v,) in conn.execute(query)]
    return found


def holding(url: str, text: str) -> set[str]:
    """The `table.column`s of the store where `text` is stored as plain text."""
    return {
        f"{table}.{column}"
        for table, column, value in stored_rows(url)
        if (text.encode() in value if isinstance(value, bytes) else text in value)
    }


def tamper_url(url: str, sql: str, params: tuple = ()) -> None:
    """Change the store by hand, with plain SQL, as someone without the key could (`?` marks)."""
    if not is_postgres(url):
        return tamper(sqlite_path(url), sql, params)
    with psycopg.connect(url) as conn:
        assert conn.execute(qmark(sql), params).rowcount >= 1


def value_at(url: str, sql: str, params: tuple = ()):
    if not is_postgres(url):
        return value_of(sqlite_path(url), sql, params)
    with psycopg.connect(url) as conn:
        return conn.execute(qmark(sql), params).fetchone()[0]


def store_files(url: str, tmp_path: Path) -> dict[str, str]:
    """What a refused open must leave as it was: the SQLite file (and its WAL), or the
    PostgreSQL store's key record and rows."""
    if not is_postgres(url):
        return file_hashes(tmp_path)
    return {f"{t}.{c}": repr(v) for t, c, v in sorted(stored_rows(url), key=repr)}


# -- what reaches the disk ---------------------------------------------------------


@pytest.mark.parametrize("key", [KEY, None], ids=["with-key", "without-key"])
def test_with_a_key_no_conversation_text_reaches_the_disk_and_without_one_it_does(tmp_path: Path, key):
    data = tmp_path / "data"
    with open_store(data / "threadkeeper.db", key) as saver:
        state = chat_with_marker(saver, tmp_path)
        assert MARKER in state["messages"][-1].content  # the tool read the attachment
        assert saver.threads.get("t1").title == f"Plans for {MARKER} week"
        assert saver.attachments.get("t1").name == f"{MARKER}.db"
        before_checkpoint = everything_on_disk(data)  # the WAL still holds every page written
        saver.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        on_disk = everything_on_disk(data)
    if key is None:
        assert MARKER.encode() in on_disk  # so the check below can fail
        return
    assert MARKER.encode() not in on_disk and MARKER.encode() not in before_checkpoint
    for text in (b"Plans", b"database says", b"code word", b"notes"):
        assert text not in on_disk, text
    assert on_disk.count(b"SQLite format 3") == 1  # the store is a SQLite file; the attachment is not readable as one


@pytest.mark.parametrize("key", [KEY, None], ids=["with-key", "without-key"])
def test_with_a_key_no_conversation_text_is_in_any_column_and_without_one_it_is(store_url, tmp_path: Path, key):
    cache = tmp_path / "attachment-cache"  # PostgreSQL's local copies of attached files (see conftest)
    with open_url(store_url, key) as saver:
        state = chat_with_marker(saver, tmp_path)
        assert MARKER in state["messages"][-1].content  # the tool read the attachment
        assert saver.threads.get("t1").title == f"Plans for {MARKER} week"
        assert saver.attachments.get("t1").name == f"{MARKER}.db"
        assert saver.sessions.get_session("t1", user_id="alice").title == f"Plans for {MARKER} week"
        assert searched(saver, MARKER) == ["t1"]
        saver.copy_thread("t1", "t2")
    found = holding(store_url, MARKER)
    cached = everything_on_disk(cache) if cache.exists() else b""
    if key is None:
        assert {"threads.title", "attachments.name"} <= found  # so the check below can fail
        assert MARKER.encode() in cached or not is_postgres(store_url)
        return
    assert found == set() and MARKER.encode() not in cached
    for text in ("Plans", "database says", "code word", "notes"):
        assert holding(store_url, text) == set(), text


# -- reading an encrypted store back -------------------------------------------------


def test_an_encrypted_store_reads_back_threads_titles_state_search_and_attachments(store_url, tmp_path: Path):
    with open_url(store_url, KEY) as saver:
        written = chat_with_marker(saver, tmp_path)["messages"]
        long_chat = chat_graph(saver)
        for n in range(1, 41):  # 80 messages: on SQLite, sealed into encrypted segments
            long_chat.invoke({"messages": [human(n)]}, config("long"))
        echo_graph(saver).invoke({"messages": [HumanMessage("Weekend in Zürich")]}, config("trip"))
        echo_graph(saver).invoke({"messages": [HumanMessage("bob's secret")]}, config("bobs", "bob"))
        saver.threads.rename("trip", "Budget review")
        long_state = long_chat.get_state(config("long")).values["messages"]

    with open_url(store_url, KEY) as saver:  # cold: a new connection, empty caches
        listed = saver.threads.list("alice").threads
        assert [(t.thread_id, t.title) for t in listed] == [
            ("trip", "Budget review"),
            ("long", human(1).content[:59].rstrip() + "…"),
            ("t1", f"Plans for {MARKER} week"),
        ]
        app = build_graph(checkpointer=saver, model=ScriptedChatModel(script=ask_the_database), settings=OFFLINE)
        assert app.get_state(config("t1")).values["messages"] == written
        assert chat_graph(saver).get_state(config("long")).values["messages"] == long_state
        page = saver.read_messages("long", limit=3)
        assert (page.total, page.start, page.messages) == (80, 77, long_state[77:])
        assert searched(saver, "DATABASE says") == ["t1"]  # words of the AI reply, through hashed tokens
        assert searched(saver, "zurich") == ["trip"]  # case and accents ignored as before
        assert searched(saver, "get rev") == ["trip"]  # title substring, matched after decryption
        assert searched(saver, "budget REVIEW") == ["trip"]
        assert searched(saver, "secret") == [] and searched(saver, "secret", "bob") == ["bobs"]
        assert searched(saver, "databas") == []  # whole words only
        assert saver.attachments.get("t1").tables == ["notes"]
        state = app.invoke({"messages": [HumanMessage("and again?")]}, config("t1"))
        assert f"the code word is {MARKER}" in state["messages"][-1].content


def test_the_sessions_api_and_chat_history_work_on_an_encrypted_store(store_url):
    with open_url(store_url, KEY) as saver:
        session = saver.sessions.put_session("alice", "s1", title=f"About {MARKER}", metadata={"topic": "birds"})
        saver.sessions.put_message("s1", ("human", f"Where does the {MARKER} live?"), user_id="alice")
        history = ThreadChatHistory("s1", user_id="alice", saver=saver)
        history.add_messages([AIMessage(f"The {MARKER} lives in cloud forests.")])
        assert [m.content for m in history.messages][-1] == f"The {MARKER} lives in cloud forests."
        listed = saver.sessions.list_messages("s1", user_id="alice")
        assert [m.message.content for m in listed] == [m.content for m in history.messages]
        assert saver.sessions.get_session("s1", user_id="alice").title == session.title == f"About {MARKER}"
        assert searched(saver, "cloud forests") == ["s1"]
    assert holding(store_url, MARKER) == set()
    with open_url(store_url, KEY) as saver:
        assert len(ThreadChatHistory("s1", user_id="alice", saver=saver).messages) == 2


def test_search_pages_through_an_encrypted_store_with_a_cursor(store_url):
    with open_url(store_url, KEY) as saver:
        for i in range(7):
            echo_graph(saver).invoke({"messages": [HumanMessage(f"common word {i}")]}, config(f"t{i}"))
        page = saver.threads.search("alice", "common", limit=3)
        seen = [t.thread_id for t in page.threads]
        while page.next_cursor:
            page = saver.threads.search("alice", "common", limit=3, cursor=page.next_cursor)
            seen += [t.thread_id for t in page.threads]
        assert seen == [f"t{i}" for i in range(6, -1, -1)]


def test_hashed_words_are_found_the_same_in_the_search_backlog_and_after_the_merge(tmp_path: Path):
    from tests.test_search import FOLDING_QUERIES, FOLDING_TEXTS

    with open_store(tmp_path / "threadkeeper.db", KEY) as saver:
        for thread_id, text in FOLDING_TEXTS.items():
            echo_graph(saver).invoke({"messages": [HumanMessage(text)]}, config(thread_id))
        bodies = [b for (b,) in saver.conn.execute("SELECT body FROM search_backlog")]
        assert bodies and not any("zurich" in b or "café" in b for b in bodies)  # tokens, not words
        waiting = {q: sorted(searched(saver, q)) for q in FOLDING_QUERIES}
        assert saver.merge_search_backlog() == len(bodies)
        assert {q: sorted(searched(saver, q)) for q in FOLDING_QUERIES} == waiting
        assert waiting["cafe"] == ["latin"] and waiting["zurich"] == ["latin"] and waiting["nothing"] == []


def test_copy_delete_and_prune_keep_the_hashed_index_exact(store_url):
    with open_url(store_url, KEY) as saver:
        echo_graph(saver).invoke({"messages": [HumanMessage("Fruit")]}, config("src"))
        echo_graph(saver).invoke({"messages": [HumanMessage("a unique kumquat")]}, config("src"))
        saver.copy_thread("src", "dst")
        saver.delete_thread("src")
        assert searched(saver, "kumquat") == ["dst"]
        assert saver.threads.get("dst").title == "Fruit"
        saver.prune(["dst"], strategy="delete")
        assert searched(saver, "kumquat") == []
        if not is_postgres(store_url):
            saver.conn.execute("INSERT INTO message_search (message_search, rank) VALUES ('integrity-check', 0)")


# -- refusing the wrong key, changing nothing ---------------------------------------


def test_a_missing_or_wrong_key_is_refused_with_one_sentence_and_the_store_is_unchanged(store_url, tmp_path: Path):
    with open_url(store_url, KEY) as saver:
        echo_graph(saver).invoke({"messages": [HumanMessage("hello")]}, config("t1"))
    before = store_files(store_url, tmp_path)
    with pytest.raises(EncryptionKeyError) as missing:
        with open_url(store_url, None):
            pass
    assert str(missing.value) == f"{store_name(store_url)} is encrypted: set THREADKEEPER_ENCRYPTION_KEY to its key"
    with pytest.raises(EncryptionKeyError) as wrong:
        with open_url(store_url, NEW_KEY):
            pass
    assert str(wrong.value) == f"THREADKEEPER_ENCRYPTION_KEY is not the key {store_name(store_url)} was encrypted with"
    assert store_files(store_url, tmp_path) == before


def test_a_key_on_a_store_with_unencrypted_conversations_is_refused_and_says_how_to_encrypt(store_url, tmp_path: Path):
    with open_url(store_url, None) as saver:
        echo_graph(saver).invoke({"messages": [HumanMessage("hello")]}, config("t1"))
    before = store_files(store_url, tmp_path)
    with pytest.raises(EncryptionKeyError) as refused:
        with open_url(store_url, KEY):
            pass
    assert str(refused.value) == (
        f"{store_name(store_url)} holds conversations that are not encrypted: to encrypt them, run "
        "`threadkeeper rotate-key` with the key in THREADKEEPER_NEW_ENCRYPTION_KEY and THREADKEEPER_ENCRYPTION_KEY unset"
    )
    assert store_files(store_url, tmp_path) == before


def test_the_key_comes_from_the_environment_and_a_short_one_is_refused(store_url, monkeypatch):
    monkeypatch.setenv("THREADKEEPER_ENCRYPTION_KEY", KEY)
    with open_saver(store_url) as saver:  # an empty store: encrypted from now on
        echo_graph(saver).invoke({"messages": [HumanMessage("hello")]}, config("t1"))
    monkeypatch.delenv("THREADKEEPER_ENCRYPTION_KEY")
    with pytest.raises(EncryptionKeyError, match="is encrypted"):
        with open_saver(store_url):
            pass
    with pytest.raises(EncryptionKeyError, match="THREADKEEPER_ENCRYPTION_KEY is 5 characters long; use at least 16"):
        with open_url(store_url, "short"):
            pass


def test_a_saver_opened_without_a_key_cannot_write_once_another_encrypted_the_store(store_url):
    with open_url(store_url, None) as plain:
        with open_url(store_url, KEY) as encrypted:  # the store is empty: this makes it encrypted
            echo_graph(encrypted).invoke({"messages": [HumanMessage("sealed")]}, config("t1"))
        with pytest.raises(EncryptionKeyError, match="after this process opened it: restart it"):
            echo_graph(plain).invoke({"messages": [HumanMessage("in clear")]}, config("t2"))
    assert holding(store_url, "in clear") == set()


def test_the_cli_prints_the_refusal_as_one_line(store_url, monkeypatch, capsys):
    with open_url(store_url, KEY) as saver:
        echo_graph(saver).invoke({"messages": [HumanMessage("hello")]}, config("t1"))
    monkeypatch.setenv("THREADKEEPER_ENCRYPTION_KEY", NEW_KEY)
    assert main(["--db", store_url, "threads", "--user", "alice"]) == 2
    assert capsys.readouterr().err == (
        f"threadkeeper: THREADKEEPER_ENCRYPTION_KEY is not the key {store_name(store_url)} was encrypted with\n"
    )


# -- rotate-key ----------------------------------------------------------------------


def fill(db: Path, tmp_path: Path, key: str | None, threads: int = 6) -> dict[str, list]:
    """Threads of a few turns (one with an attachment, one long enough for segments); their messages."""
    return fill_url(f"sqlite:///{db}", tmp_path, key, threads)


def fill_url(url: str, tmp_path: Path, key: str | None, threads: int = 6) -> dict[str, list]:
    """`fill` on the store at `url`, of either engine."""
    with open_url(url, key) as saver:
        chat_with_marker(saver, tmp_path, "t-attached")
        for n in range(threads):
            graph = chat_graph(saver, seed=n)
            for turn in range(1, 40 if n == 0 else 3):
                graph.invoke({"messages": [human(turn)]}, config(f"t{n}"))
        return snapshot(saver)


def snapshot(saver: ThreadSaver) -> dict[str, list]:
    """Every thread of alice: title, messages, attachment tables, and what a word search finds."""
    found: dict[str, list] = {}
    for t in saver.threads.list("alice", limit=500).threads:
        attachment = saver.attachments.get(t.thread_id)
        messages = chat_graph(saver).get_state(config(t.thread_id)).values.get("messages")
        found[t.thread_id] = [t.title, messages, attachment and (attachment.name, attachment.tables)]
    found["search"] = [searched(saver, "code"), searched(saver, human(2).content.split()[-1])]
    return found


def test_rotate_key_encrypts_moves_to_a_new_key_and_decrypts_losing_nothing(tmp_path: Path):
    data = tmp_path / "data"
    db = data / "threadkeeper.db"
    written = fill(db, tmp_path, None)

    summary = rotate_key(db, None, KEY)  # encrypt a store that was not
    assert (summary.threads, summary.attachments, summary.encrypted) == (7, 1, True)
    assert MARKER.encode() not in everything_on_disk(data)
    with open_store(db, KEY) as saver:
        assert snapshot(saver) == written
        app = build_graph(checkpointer=saver, model=ScriptedChatModel(script=ask_the_database), settings=OFFLINE)
        state = app.invoke({"messages": [HumanMessage("once more")]}, config("t-attached"))
        assert f"the code word is {MARKER}" in state["messages"][-1].content
        written = snapshot(saver)

    rotate_key(db, KEY, NEW_KEY)
    with pytest.raises(EncryptionKeyError, match="is not the key"):
        ThreadSaver(db, encryption_key=KEY)
    with open_store(db, NEW_KEY) as saver:
        assert snapshot(saver) == written

    rotate_key(db, NEW_KEY, None)  # --decrypt
    with open_store(db, None) as saver:
        assert snapshot(saver) == written
        saver.conn.execute("INSERT INTO message_search (message_search, rank) VALUES ('integrity-check', 0)")
    assert sorted(p.name for p in (data / "attachments").rglob("*") if p.is_file())[0].endswith(f"{MARKER}.db")


def test_a_rotation_killed_between_writing_an_attachment_and_committing_resumes_cleanly(tmp_path: Path, monkeypatch):
    data = tmp_path / "data"
    db = data / "threadkeeper.db"
    with open_store(db, KEY) as saver:
        for thread_id in ("a1", "a2", "a3"):
            chat_with_marker(saver, tmp_path, thread_id)
        written = snapshot(saver)
    real_write = reseal.write_file
    calls = []

    def write_then_die(target, payload):
        real_write(target, payload)
        calls.append(target)
        if len(calls) == 2:
            raise SystemExit("killed")

    monkeypatch.setattr(reseal, "write_file", write_then_die)
    with pytest.raises(SystemExit):
        rotate_key(db, KEY, NEW_KEY, batch_rows=1)
    monkeypatch.setattr(reseal, "write_file", real_write)
    rotate_key(db, KEY, NEW_KEY, batch_rows=1)
    with open_store(db, NEW_KEY) as saver:
        assert snapshot(saver) == written
        stored = {a.path for t in ("a1", "a2", "a3") if (a := saver.attachments.get(t))}
    assert {p for p in (data / "attachments").rglob("*") if p.is_file()} == stored  # no old or half-written files


def test_a_hard_kill_of_a_rotation_in_another_process_loses_nothing(tmp_path: Path):
    db = tmp_path / "data" / "threadkeeper.db"
    written = fill(db, tmp_path, None, threads=10)
    script = (
        "import os, sys\n"
        "from checkpointers.engines.sqlite.key_rotation import rotate_key\n"
        "def die(done, total):\n"
        "    if done >= 4: os._exit(9)\n"
        f"rotate_key(sys.argv[1], None, {KEY!r}, batch_rows=5, progress=die)\n"
    )
    killed = subprocess.run([sys.executable, "-c", script, str(db)], cwd=Path(__file__).parent.parent, timeout=120)
    assert killed.returncode == 9
    assert rotate_key(db, None, KEY).resumed
    with open_store(db, KEY) as saver:
        assert snapshot(saver) == written


def test_a_process_that_opened_the_store_before_a_rotation_cannot_write_after_it(tmp_path: Path):
    db = tmp_path / "threadkeeper.db"
    with open_store(db, KEY) as early:
        echo_graph(early).invoke({"messages": [HumanMessage("first")]}, config("t1"))
        latest = early.get_tuple(config("t1"))
        rotate_key(db, KEY, NEW_KEY)
        with pytest.raises(EncryptionKeyError, match="was changed .* after this process opened it: restart it"):
            early.threads.rename("t1", "a write that reads nothing first")
        # A save on a thread this process wrote before skips the transaction; it is refused all the same.
        with pytest.raises(EncryptionKeyError, match="was changed .* after this process opened it: restart it"):
            early.put(latest.config, latest.checkpoint, {"source": "loop", "step": 9}, {})
        with pytest.raises(EncryptionKeyError, match="another key .* rotate-key` ran since it started, restart it"):
            echo_graph(early).invoke({"messages": [HumanMessage("second")]}, config("t1"))
    with open_store(db, NEW_KEY) as saver:
        assert [m.content for m in saver.read_messages("t1").messages] == ["first", "you said: first"]


def rotate_url(url: str, current_key: str | None, new_key: str | None, **kwargs):
    """`threadkeeper rotate-key`'s rotation of the store at `url`, on its engine."""
    if is_postgres(url):
        return postgres_rotation.rotate_key(url, current_key, new_key, **kwargs)
    return sqlite_rotation.rotate_key(sqlite_path(url), current_key, new_key, **kwargs)


def test_rotate_key_encrypts_a_plain_store_then_changes_its_key_then_decrypts_it_on_either_engine(
    store_url, tmp_path: Path
):
    written = fill_url(store_url, tmp_path, None)
    with open_url(store_url, None) as saver:
        saver.sessions.put_session("alice", "s1", title="Field notes", metadata={"topic": "birds"})
        saver.sessions.put_message("s1", ("human", "Where do herons nest?"), user_id="alice")
    assert holding(store_url, MARKER)  # findable in clear before

    summary = rotate_url(store_url, None, KEY)
    assert (summary.threads, summary.attachments, summary.encrypted, summary.resumed) == (8, 1, True, False)
    assert holding(store_url, MARKER) == set()
    with pytest.raises(EncryptionKeyError, match="is encrypted: set THREADKEEPER_ENCRYPTION_KEY"):
        open_url(store_url, None).__enter__()
    with open_url(store_url, KEY) as saver:
        assert {k: v for k, v in snapshot(saver).items() if k != "s1"} == written
        assert searched(saver, "herons") == ["s1"]

    rotate_url(store_url, KEY, NEW_KEY)
    with pytest.raises(EncryptionKeyError, match=f"THREADKEEPER_ENCRYPTION_KEY is not the key {store_name(store_url)}"):
        open_url(store_url, KEY).__enter__()
    assert holding(store_url, MARKER) == set()
    with open_url(store_url, NEW_KEY) as saver:
        assert {k: v for k, v in snapshot(saver).items() if k != "s1"} == written
        assert saver.sessions.get_session("s1", user_id="alice").title == "Field notes"
        assert [m.message.content for m in saver.sessions.list_messages("s1", user_id="alice")] == ["Where do herons nest?"]
        assert searched(saver, "herons") == ["s1"]
        app = build_graph(checkpointer=saver, model=ScriptedChatModel(script=ask_the_database), settings=OFFLINE)
        state = app.invoke({"messages": [HumanMessage("once more")]}, config("t-attached"))
        assert f"the code word is {MARKER}" in state["messages"][-1].content
        written = snapshot(saver)

    summary = rotate_url(store_url, NEW_KEY, None)  # --decrypt
    assert not summary.encrypted
    with pytest.raises(EncryptionKeyError, match="is not encrypted: unset THREADKEEPER_ENCRYPTION_KEY"):
        rotate_url(store_url, NEW_KEY, KEY)
    with open_url(store_url, None) as saver:
        assert snapshot(saver) == written
    assert holding(store_url, MARKER)


def test_an_interrupted_rotation_refuses_the_store_and_resumes_to_the_end_on_either_engine(store_url, tmp_path: Path):
    written = fill_url(store_url, tmp_path, KEY, threads=12)

    batches = []

    def stop_after_three(done: int, total: int) -> None:
        batches.append(done)
        if len(batches) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rotate_url(store_url, KEY, NEW_KEY, batch_rows=10, progress=stop_after_three)
    for key in (KEY, NEW_KEY):
        with pytest.raises(EncryptionKeyError, match="is in the middle of `threadkeeper rotate-key`: run it again"):
            open_url(store_url, key).__enter__()
    with pytest.raises(EncryptionKeyError, match="rotation to another target"):
        rotate_url(store_url, KEY, None)
    with pytest.raises(EncryptionKeyError, match="not the key the unfinished rotation"):
        rotate_url(store_url, KEY, "a third key entirely, long enough")

    summary = rotate_url(store_url, KEY, NEW_KEY, batch_rows=10)
    assert summary.resumed and summary.threads == 13
    with open_url(store_url, NEW_KEY) as saver:
        assert snapshot(saver) == written
    with pytest.raises(EncryptionKeyError, match="is not the key"):
        open_url(store_url, KEY).__enter__()


def test_a_postgresql_process_cannot_write_while_the_key_is_rotated_nor_with_the_old_key_after(
    postgres_url, tmp_path: Path
):
    with open_url(postgres_url, KEY) as early:
        echo_graph(early).invoke({"messages": [HumanMessage("first")]}, config("t1"))
        latest = early.get_tuple(config("t1"))

        def stop(done: int, total: int) -> None:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            postgres_rotation.rotate_key(postgres_url, KEY, NEW_KEY, progress=stop)
        # Reads of re-sealed rows fail on their seal; writes are refused before they seal anything.
        with pytest.raises(EncryptionKeyError, match="is being changed by `threadkeeper rotate-key`: this process cannot"):
            early.put(latest.config, latest.checkpoint, {"source": "loop", "step": 9}, {})
        with pytest.raises(EncryptionKeyError, match="is being changed by `threadkeeper rotate-key`"):
            early.put_writes(latest.config, [("messages", HumanMessage("a pending write"))], "task-1")
        with pytest.raises(EncryptionKeyError, match="is being changed by `threadkeeper rotate-key`"):
            echo_graph(early).invoke({"messages": [HumanMessage("in a new thread")]}, config("t2"))
        with pytest.raises(EncryptionKeyError, match="is being changed by `threadkeeper rotate-key`"):
            early.threads.rename("t1", "a sealed title")
        with pytest.raises(EncryptionKeyError, match="is being changed by `threadkeeper rotate-key`"):
            early.sessions.put_session("alice", "s1", title="a sealed title")
        with pytest.raises(EncryptionKeyError, match="is being changed by `threadkeeper rotate-key`"):
            early.attachments.attach("t1", notes_db(tmp_path / "notes.db"), user_id="alice")
        with pytest.raises(EncryptionKeyError, match="is being changed by `threadkeeper rotate-key`"):
            early.copy_thread("t1", "t1-copy")
        postgres_rotation.rotate_key(postgres_url, KEY, NEW_KEY)
        with pytest.raises(EncryptionKeyError, match="was changed after this process opened it: restart it"):
            early.put(latest.config, latest.checkpoint, {"source": "loop", "step": 9}, {})
        with pytest.raises(EncryptionKeyError, match="was changed after this process opened it: restart it"):
            early.threads.rename("t1", "a sealed title")
        with pytest.raises(EncryptionKeyError, match="another key .* rotate-key` ran since it started, restart it"):
            echo_graph(early).invoke({"messages": [HumanMessage("after")]}, config("t1"))
    with open_url(postgres_url, NEW_KEY) as saver:
        assert [m.content for m in saver.read_messages("t1").messages] == ["first", "you said: first"]
        assert [(t.thread_id, t.title) for t in saver.threads.list("alice").threads] == [("t1", "first")]
        assert saver.attachments.get("t1") is None


def test_a_second_rotation_of_a_postgresql_store_is_refused_while_one_runs(postgres_url):
    with open_url(postgres_url, KEY) as saver:
        echo_graph(saver).invoke({"messages": [HumanMessage("first")]}, config("t1"))
    with psycopg.connect(postgres_url, autocommit=True) as holder:
        holder.execute(postgres_rotation.LOCK_SQL)
        with pytest.raises(EncryptionKeyError, match="another `threadkeeper rotate-key` is running on"):
            postgres_rotation.rotate_key(postgres_url, KEY, NEW_KEY)
    postgres_rotation.rotate_key(postgres_url, KEY, NEW_KEY)


def test_rotate_key_on_the_command_line_of_either_engine_takes_keys_from_the_environment(
    store_url, monkeypatch, capsys
):
    with open_url(store_url, None) as saver:
        echo_graph(saver).invoke({"messages": [HumanMessage(f"hello {MARKER}")]}, config("t1"))
    monkeypatch.delenv("THREADKEEPER_ENCRYPTION_KEY", raising=False)
    monkeypatch.delenv("THREADKEEPER_NEW_ENCRYPTION_KEY", raising=False)
    assert main(["--db", store_url, "rotate-key"]) == 2
    assert capsys.readouterr().err == (
        "threadkeeper: set THREADKEEPER_NEW_ENCRYPTION_KEY to the new key (or pass --decrypt to remove encryption)\n"
    )
    monkeypatch.setenv("THREADKEEPER_NEW_ENCRYPTION_KEY", KEY)
    assert main(["--db", store_url, "rotate-key", "--batch-rows", "5"]) == 0
    out = capsys.readouterr().out
    assert f"rotating the key of {store_name(store_url)}: unencrypted -> encrypted with the new key" in out
    assert "  1 of 1 threads" in out and "done: 1 threads, " in out and "set to the new key" in out
    assert holding(store_url, MARKER) == set()
    monkeypatch.setenv("THREADKEEPER_ENCRYPTION_KEY", KEY)
    monkeypatch.setenv("THREADKEEPER_NEW_ENCRYPTION_KEY", NEW_KEY)
    assert main(["--db", store_url, "rotate-key"]) == 0
    assert "encrypted -> encrypted with the new key" in capsys.readouterr().out
    assert main(["--db", store_url, "threads", "--user", "alice"]) == 2
    assert "is not the key" in capsys.readouterr().err
    monkeypatch.setenv("THREADKEEPER_ENCRYPTION_KEY", NEW_KEY)
    monkeypatch.delenv("THREADKEEPER_NEW_ENCRYPTION_KEY")
    assert main(["--db", store_url, "rotate-key", "--decrypt"]) == 0
    assert "no longer encrypted" in capsys.readouterr().out
    with open_url(store_url, None) as saver:
        assert saver.threads.get("t1").title == f"hello {MARKER}"


# -- values are bound to their place ----------------------------------------------------
#
# Someone who can write the file but has no key moves sealed values around with
# plain SQL. Each read must refuse with one sentence instead of returning
# another thread's (or another row's) content.


def tamper(db: Path, sql: str, params: tuple = ()) -> None:
    """Change the store's file by hand, as someone without the key could."""
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute(sql, params).rowcount >= 1
        conn.commit()


def value_of(db: Path, sql: str, params: tuple = ()):
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql, params).fetchone()[0]


def thread_key(url: str, thread_id: str) -> int:
    return value_at(url, "SELECT thread_key FROM threads WHERE thread_id = ?", (thread_id,))


def two_threads(url: str, turns: int = 2) -> None:
    """Threads "a" and "b" of alice, the same shape (same message numbers), different words."""
    with open_url(url, KEY) as saver:
        for thread_id in ("a", "b"):
            for turn in range(1, turns + 1):
                echo_graph(saver).invoke({"messages": [HumanMessage(f"{thread_id} says {turn}")]}, config(thread_id))


def test_an_encrypted_title_moved_to_another_thread_is_refused(store_url):
    two_threads(store_url)
    tamper_url(store_url, "UPDATE threads SET title = (SELECT title FROM threads WHERE thread_id = 'a') WHERE thread_id = 'b'")
    with open_url(store_url, KEY) as saver:
        assert saver.threads.get("a").title == "a says 1"
        with pytest.raises(EncryptionKeyError) as refused:
            saver.threads.get("b")
        assert str(refused.value) == (
            "stored data (threads.title of 'b') failed its integrity check: it was changed, or moved there "
            "from another place, outside threadkeeper"
        )
        with pytest.raises(EncryptionKeyError, match="integrity check"):
            saver.threads.list("alice")


def test_a_sealed_title_replaced_by_plain_text_is_refused(store_url):
    two_threads(store_url)
    tamper_url(store_url, "UPDATE threads SET title = 'Wire the money today' WHERE thread_id = 'a'")
    with open_url(store_url, KEY) as saver:
        with pytest.raises(EncryptionKeyError) as refused:
            saver.threads.get("a")
        assert str(refused.value) == (
            "stored text (threads.title of 'a') is in clear although the store is encrypted: "
            "it was written outside threadkeeper"
        )
        with pytest.raises(EncryptionKeyError, match="in clear"):
            saver.sessions.get_session("a", user_id="alice")


def test_two_messages_of_a_thread_swapped_are_refused(store_url):
    two_threads(store_url)
    key = thread_key(store_url, "a")
    # The thread's first two human messages, blobs swapped.
    n1, n2 = (
        value_at(
            store_url,
            "SELECT message_no FROM messages WHERE thread_key = ? AND type LIKE 'lc.human%' "
            f"ORDER BY message_no LIMIT 1 OFFSET {offset}",
            (key,),
        )
        for offset in (0, 1)
    )
    v1, v2 = (value_at(store_url, "SELECT value FROM messages WHERE thread_key = ? AND message_no = ?", (key, n)) for n in (n1, n2))
    for value, no in ((v2, n1), (v1, n2)):
        tamper_url(store_url, "UPDATE messages SET value = ? WHERE thread_key = ? AND message_no = ?", (value, key, no))
    with open_url(store_url, KEY) as saver:
        with pytest.raises(EncryptionKeyError, match=rf"^stored data \(messages of thread_key {key} at ({n1}|{n2})\) failed"):
            saver.read_messages("a")
        with pytest.raises(EncryptionKeyError, match="failed its integrity check"):
            echo_graph(saver).get_state(config("a"))
        assert [m.content for m in saver.read_messages("b").messages][::2] == ["b says 1", "b says 2"]


def moved_message_blob_is_refused(url: str, table: str) -> None:
    """The first message row (or segment) of thread "a" given the blob of the same row of "b"."""
    key_a, key_b = thread_key(url, "a"), thread_key(url, "b")
    column = "message_no" if table == "messages" else "first_no"
    tamper_url(
        url,
        f"UPDATE {table} SET value = (SELECT value FROM {table} b WHERE b.thread_key = ? AND b.{column} = {table}.{column}) "
        f"WHERE thread_key = ? AND {column} = (SELECT min({column}) FROM {table} WHERE thread_key = ?)",
        (key_b, key_a, key_a),
    )
    with open_url(url, KEY) as saver:
        with pytest.raises(EncryptionKeyError, match=rf"\({table} of thread_key {key_a} at .*\) failed its integrity check"):
            echo_graph(saver).get_state(config("a"))
        assert saver.read_messages("b", limit=1).messages[0].content.startswith("you said: b says")


def test_a_message_blob_moved_to_another_thread_is_refused(store_url):
    two_threads(store_url)
    moved_message_blob_is_refused(store_url, "messages")


def test_a_message_segment_moved_to_another_thread_is_refused(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'threadkeeper.db'}"
    two_threads(url, turns=40)  # 80 messages: the first 64 sealed in a segment (SQLite's)
    moved_message_blob_is_refused(url, "message_segments")


def test_a_checkpoint_blob_moved_to_another_checkpoint_is_refused(store_url):
    two_threads(store_url)
    key = thread_key(store_url, "a")
    # The newest checkpoint of "a" given the blob of its first: the thread "rolled back" two turns.
    tamper_url(
        store_url,
        "UPDATE checkpoints SET checkpoint = (SELECT checkpoint FROM checkpoints WHERE thread_key = ? "
        "ORDER BY checkpoint_id LIMIT 1) WHERE thread_key = ? AND checkpoint_id = "
        "(SELECT checkpoint_id FROM checkpoints WHERE thread_key = ? ORDER BY checkpoint_id DESC LIMIT 1)",
        (key, key, key),
    )
    with open_url(store_url, KEY) as saver:
        with pytest.raises(EncryptionKeyError, match=rf"^stored data \(checkpoints of thread_key {key} at '', "):
            echo_graph(saver).get_state(config("a"))
        with pytest.raises(EncryptionKeyError, match="failed its integrity check"):
            saver.read_messages("a")
        assert len(echo_graph(saver).get_state(config("b")).values["messages"]) == 4


def test_a_serialised_value_moved_to_another_thread_is_refused(store_url):
    two_threads(store_url)
    key_a, key_b = thread_key(store_url, "a"), thread_key(store_url, "b")
    # Values the serializer wrote (the input dicts; not lists of message numbers): same value_no in both threads.
    tamper_url(
        store_url,
        "UPDATE channel_values SET value = (SELECT b.value FROM channel_values b WHERE b.thread_key = ? "
        "AND b.value_no = channel_values.value_no) WHERE thread_key = ? AND kind IN (0, 5) AND value IS NOT NULL "
        "AND EXISTS (SELECT 1 FROM channel_values b WHERE b.thread_key = ? AND b.value_no = channel_values.value_no "
        "AND b.kind = channel_values.kind)",
        (key_b, key_a, key_b),
    )
    with open_url(store_url, KEY) as saver:
        with pytest.raises(EncryptionKeyError, match=rf"\(channel_values of thread_key {key_a} at \d+\) failed"):
            list(saver.list(config("a")))


def test_copy_thread_seals_the_copy_to_its_own_thread_attachment_included(store_url, tmp_path: Path):
    with open_url(store_url, KEY) as saver:
        written = chat_with_marker(saver, tmp_path, "src")["messages"]
        saver.copy_thread("src", "dst")
        saver.delete_thread("src")
    with open_url(store_url, KEY) as saver:
        app = build_graph(checkpointer=saver, model=ScriptedChatModel(script=ask_the_database), settings=OFFLINE)
        assert app.get_state(config("dst")).values["messages"] == written
        assert saver.threads.get("dst").title == f"Plans for {MARKER} week"
        copied = saver.attachments.get("dst")
        assert (copied.name, copied.tables) == (f"{MARKER}.db", ["notes"])
        assert MARKER.encode() in saver.attachments.database("dst")
        assert searched(saver, "database says") == ["dst"]
    assert MARKER.encode() not in everything_on_disk(tmp_path) and holding(store_url, MARKER) == set()


_MOVE_ATTACHMENT = {
    False: "UPDATE attachments SET file = (SELECT file FROM attachments WHERE thread_key = ?) WHERE thread_key = ?",
    True: "UPDATE attachments SET data = s.data, sha256 = s.sha256, bytes = s.bytes FROM attachments s "
    "WHERE s.thread_key = ? AND attachments.thread_key = ?",
}
"""Thread b's attachment made a's file (SQLite: the file the row names; PostgreSQL: the bytes, with their hash)."""


def test_an_attachment_file_moved_to_another_thread_is_refused(store_url, tmp_path: Path):
    with open_url(store_url, KEY) as saver:
        chat_with_marker(saver, tmp_path, "a")
        chat_with_marker(saver, tmp_path, "b")
    tamper_url(store_url, _MOVE_ATTACHMENT[is_postgres(store_url)], (thread_key(store_url, "a"), thread_key(store_url, "b")))
    with open_url(store_url, KEY) as saver:
        with pytest.raises(EncryptionKeyError, match=r"\(attachments.file of 'b'\) failed its integrity check"):
            saver.attachments.database("b")
        assert MARKER.encode() in saver.attachments.database("a")


# -- stores written before values were bound (format 1) are upgraded ----------------------


class FormatOneSealer:
    """Seals values as threadkeeper did before they were bound to their place (format 1):
    `\\xe1`, the 4-byte key id, a 12-byte nonce, AES-256-GCM authenticating those 5
    header bytes only; texts as `enc1:` + base64. Written here from that format's
    description (and its key derivation), not with the code under test."""

    def __init__(self, key: str, record: dict) -> None:
        master = Scrypt(
            salt=base64.b64decode(record["salt"]), length=32, n=record["n"], r=record["r"], p=record["p"]
        ).derive(key.encode("utf-8"))

        def subkey(label: bytes) -> bytes:
            return hmac.new(master, b"threadkeeper v1 " + label, hashlib.sha256).digest()

        self._aead = AESGCM(subkey(b"values"))
        self.key_id = subkey(b"key id")[:4]

    def seal(self, data: bytes, place: bytes) -> bytes:  # the place is ignored: format 1 had none
        header, nonce = b"\xe1" + self.key_id, os.urandom(12)
        return header + nonce + self._aead.encrypt(nonce, data, header)

    def seal_text(self, text: str, place: bytes) -> str:
        return "enc1:" + base64.b64encode(self.seal(text.encode("utf-8"), place)).decode("ascii")


def make_format_one(db: Path, key: str) -> None:
    """Turn an encrypted store into what the release before bound values wrote: every
    sealed value (and the attachment files) in format 1, and a key record of version 1."""
    with open_store(db, key) as saver:
        cipher = saver._cipher
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        record = json.loads(conn.execute("SELECT value FROM store_meta WHERE key = 'encryption'").fetchone()[0])
        assert record["version"] == 2
        resealer = reseal.Resealer(conn, db.parent / "attachments", cipher, FormatOneSealer(key, record))
        unlink: list[str] = []
        conn.execute("BEGIN IMMEDIATE")
        for (key_no,) in conn.execute("SELECT thread_key FROM threads").fetchall():
            resealer.thread(key_no)
            resealer.attachment(key_no, unlink)
        record["version"] = 1
        conn.execute("UPDATE store_meta SET value = ? WHERE key = 'encryption'", (json.dumps(record),))
        conn.execute("COMMIT")
        resealer.unlink(unlink)


def sealed_formats(directory: Path, db: Path, key: str = KEY) -> Counter:
    """How many sealed values of each format the store holds: every column of every
    table (whatever the code thinks is sealed), and every attachment file."""
    found: Counter = Counter()
    with closing(sqlite3.connect(db)) as conn:
        record = json.loads(conn.execute("SELECT value FROM store_meta WHERE key = 'encryption'").fetchone()[0])
        key_id = FormatOneSealer(key, record).key_id
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    if isinstance(value, str) and value[:5] in ("enc1:", "enc2:"):
                        found[value[:5]] += 1
                    elif isinstance(value, bytes) and value[:1] in (b"\xe1", b"\xe2") and value[1:5] == key_id:
                        found[value[:1]] += 1
    for path in (directory / "attachments").rglob("*"):
        if path.is_file():
            found["file " + repr(path.read_bytes()[:1])] += 1
    return found


def test_a_store_from_before_bound_values_is_upgraded_when_opened_losing_no_thread(tmp_path: Path):
    data = tmp_path / "data"
    db = data / "threadkeeper.db"
    written = fill(db, tmp_path, KEY)
    bound = sealed_formats(data, db)
    make_format_one(db, KEY)
    old = sealed_formats(data, db)
    assert old[b"\xe1"] == bound[b"\xe2"] > 100 and old["enc1:"] == bound["enc2:"] >= 9 and old["file b'\\xe1'"] == 1
    assert not old[b"\xe2"] and not old["enc2:"]
    old_title = value_of(db, "SELECT title FROM threads WHERE thread_id = 't1'")

    with open_store(db, KEY) as saver:  # the upgrade runs here, once
        assert snapshot(saver) == written
        assert MARKER.encode() in saver.attachments.database("t-attached")
        chat_graph(saver, seed=1).invoke({"messages": [human(9)]}, config("t1"))  # and it goes on as usual
    upgraded = sealed_formats(data, db)
    assert upgraded[b"\xe2"] >= bound[b"\xe2"] and upgraded["enc2:"] == bound["enc2:"]
    assert not upgraded[b"\xe1"] and not upgraded["enc1:"] and upgraded["file b'\\xe2'"] == 1
    assert json.loads(value_of(db, "SELECT value FROM store_meta WHERE key = 'encryption'"))["version"] == 2
    assert value_of(db, "SELECT count(*) FROM store_meta WHERE key = 'encryption_rotation'") == 0

    # A format-1 value put back where it was (from an older copy of the file) is refused now.
    tamper(db, "UPDATE threads SET title = ? WHERE thread_id = 't1'", (old_title,))
    with open_store(db, KEY) as saver:
        with pytest.raises(EncryptionKeyError) as refused:
            saver.threads.get("t1")
    assert str(refused.value) == (
        "stored data (threads.title of 't1') is in the old format, not bound to its place, in a store that "
        "was upgraded: it was put back from an older copy of the file"
    )


@pytest.mark.parametrize("finisher", ["the next saver", "rotate-key"])
def test_an_interrupted_upgrade_is_finished_by_the_next_saver_or_rotate_key(tmp_path: Path, monkeypatch, finisher):
    data = tmp_path / "data"
    db = data / "threadkeeper.db"
    written = fill(db, tmp_path, KEY, threads=8)
    make_format_one(db, KEY)
    real_batch = reseal.Resealer.batch
    batches = []

    def two_batches_then_die(self, batch_rows):
        if len(batches) == 2:
            raise KeyboardInterrupt
        batches.append(real_batch(self, batch_rows))
        return batches[-1]

    monkeypatch.setattr(reseal.Resealer, "batch", two_batches_then_die)
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        record = value_of(db, "SELECT value FROM store_meta WHERE key = 'encryption'")
        cipher = Cipher.for_record(KEY, KeyRecord.from_json(record))
        with pytest.raises(KeyboardInterrupt):
            reseal.upgrade(conn, db, cipher, batch_rows=10)
    monkeypatch.setattr(reseal.Resealer, "batch", real_batch)
    half = sealed_formats(data, db)
    assert half[b"\xe1"] and half[b"\xe2"]  # some threads done, some not
    with pytest.raises(EncryptionKeyError, match="is encrypted: set THREADKEEPER_ENCRYPTION_KEY"):
        ThreadSaver(db, encryption_key=None)

    key = KEY
    if finisher == "rotate-key":  # finishes the upgrade, then rotates
        rotate_key(db, KEY, NEW_KEY, batch_rows=10)
        key = NEW_KEY
    with open_store(db, key) as saver:
        assert snapshot(saver) == written
    done = sealed_formats(data, db, key)
    assert done[b"\xe2"] > 100 and not done[b"\xe1"] and not done["enc1:"] and done["file b'\\xe2'"] == 1


def test_rotate_key_moves_a_store_from_before_bound_values_to_the_new_format(tmp_path: Path):
    data = tmp_path / "data"
    db = data / "threadkeeper.db"
    written = fill(db, tmp_path, KEY, threads=3)
    make_format_one(db, KEY)
    rotate_key(db, KEY, NEW_KEY)
    with open_store(db, NEW_KEY) as saver:
        assert snapshot(saver) == written
    after = sealed_formats(data, db, NEW_KEY)
    assert after[b"\xe2"] > 100 and not after[b"\xe1"] and not after["enc1:"] and after["file b'\\xe2'"] == 1


# -- LangGraph's conformance suite, encrypted -----------------------------------------


@checkpointer_test(name="threadkeeper ThreadSaver, encrypted")
async def encrypted_saver():
    with tempfile.TemporaryDirectory() as tmp:
        async with open_async_saver(f"sqlite:///{Path(tmp) / 'conformance.db'}", encryption_key=KEY) as saver:
            yield saver


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
async def test_the_conformance_suite_passes_with_encryption_on(engine: str, request):
    factory = encrypted_saver
    if engine == "postgres":
        name = "threadkeeper PostgresThreadSaver, encrypted"
        factory = postgres_saver(request.getfixturevalue("postgres_database"), name, encryption_key=KEY)
    report = await validate(factory)
    for name, result in report.results.items():
        assert result.detected, f"{name} not detected"
        assert result.passed, f"{name} failed: {result.failures}"
