"""Encryption at rest: THREADKEEPER_ENCRYPTION_KEY, the key checks on open, and rotate-key.

Real SQLite files in tmp dirs, the real agent graph and saver; only the model is scripted.
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import tempfile
from contextlib import closing
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.checkpoint.conformance import checkpointer_test, validate

from checkpointers import EncryptionKeyError, ThreadSaver, open_async_saver
from checkpointers import key_rotation
from checkpointers.key_rotation import rotate_key
from graph import Settings, build_graph
from tests.chat import chat_graph, echo_graph, human
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


# -- reading an encrypted store back -------------------------------------------------


def test_an_encrypted_store_reads_back_threads_titles_state_search_and_attachments(tmp_path: Path):
    db = tmp_path / "threadkeeper.db"
    with open_store(db, KEY) as saver:
        written = chat_with_marker(saver, tmp_path)["messages"]
        long_chat = chat_graph(saver)
        for n in range(1, 41):  # 80 messages: sealed into encrypted segments
            long_chat.invoke({"messages": [human(n)]}, config("long"))
        echo_graph(saver).invoke({"messages": [HumanMessage("Weekend in Zürich")]}, config("trip"))
        echo_graph(saver).invoke({"messages": [HumanMessage("bob's secret")]}, config("bobs", "bob"))
        saver.threads.rename("trip", "Budget review")
        long_state = long_chat.get_state(config("long")).values["messages"]

    with open_store(db, KEY) as saver:  # cold: a new connection, empty caches
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


def test_search_pages_through_an_encrypted_store_with_a_cursor(tmp_path: Path):
    with open_store(tmp_path / "threadkeeper.db", KEY) as saver:
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


def test_copy_delete_and_prune_keep_the_hashed_index_exact(tmp_path: Path):
    db = tmp_path / "threadkeeper.db"
    with open_store(db, KEY) as saver:
        echo_graph(saver).invoke({"messages": [HumanMessage("Fruit")]}, config("src"))
        echo_graph(saver).invoke({"messages": [HumanMessage("a unique kumquat")]}, config("src"))
        saver.copy_thread("src", "dst")
        saver.delete_thread("src")
        assert searched(saver, "kumquat") == ["dst"]
        assert saver.threads.get("dst").title == "Fruit"
        saver.prune(["dst"], strategy="delete")
        assert searched(saver, "kumquat") == []
        saver.conn.execute("INSERT INTO message_search (message_search, rank) VALUES ('integrity-check', 0)")


# -- refusing the wrong key, changing nothing ---------------------------------------


def test_a_missing_or_wrong_key_is_refused_with_one_sentence_and_the_files_are_unchanged(tmp_path: Path):
    db = tmp_path / "threadkeeper.db"
    with open_store(db, KEY) as saver:
        echo_graph(saver).invoke({"messages": [HumanMessage("hello")]}, config("t1"))
    before = file_hashes(tmp_path)
    with pytest.raises(EncryptionKeyError) as missing:
        ThreadSaver(db, encryption_key=None)
    assert str(missing.value) == f"{db} is encrypted: set THREADKEEPER_ENCRYPTION_KEY to its key"
    with pytest.raises(EncryptionKeyError) as wrong:
        ThreadSaver(db, encryption_key=NEW_KEY)
    assert str(wrong.value) == f"THREADKEEPER_ENCRYPTION_KEY is not the key {db} was encrypted with"
    assert file_hashes(tmp_path) == before


def test_a_key_on_a_store_with_unencrypted_conversations_is_refused_and_says_how_to_encrypt(tmp_path: Path):
    db = tmp_path / "threadkeeper.db"
    with open_store(db, None) as saver:
        echo_graph(saver).invoke({"messages": [HumanMessage("hello")]}, config("t1"))
    before = file_hashes(tmp_path)
    with pytest.raises(EncryptionKeyError, match="holds conversations that are not encrypted: to encrypt them, run `threadkeeper rotate-key`"):
        ThreadSaver(db, encryption_key=KEY)
    assert file_hashes(tmp_path) == before


def test_the_key_comes_from_the_environment_and_a_short_one_is_refused(tmp_path: Path, monkeypatch):
    db = tmp_path / "threadkeeper.db"
    monkeypatch.setenv("THREADKEEPER_ENCRYPTION_KEY", KEY)
    with closing(ThreadSaver(db)) as saver:  # an empty store: encrypted from now on
        echo_graph(saver).invoke({"messages": [HumanMessage("hello")]}, config("t1"))
    monkeypatch.delenv("THREADKEEPER_ENCRYPTION_KEY")
    with pytest.raises(EncryptionKeyError, match="is encrypted"):
        ThreadSaver(db)
    with pytest.raises(EncryptionKeyError, match="THREADKEEPER_ENCRYPTION_KEY is 5 characters long; use at least 16"):
        ThreadSaver(db, encryption_key="short")


def test_the_cli_prints_the_refusal_as_one_line(tmp_path: Path, monkeypatch, capsys):
    db = tmp_path / "threadkeeper.db"
    with open_store(db, KEY) as saver:
        echo_graph(saver).invoke({"messages": [HumanMessage("hello")]}, config("t1"))
    monkeypatch.setenv("THREADKEEPER_ENCRYPTION_KEY", NEW_KEY)
    assert main(["--db", f"sqlite:///{db}", "threads", "--user", "alice"]) == 2
    assert capsys.readouterr().err == f"threadkeeper: THREADKEEPER_ENCRYPTION_KEY is not the key {db} was encrypted with\n"


# -- rotate-key ----------------------------------------------------------------------


def fill(db: Path, tmp_path: Path, key: str | None, threads: int = 6) -> dict[str, list]:
    """Threads of a few turns (one with an attachment, one long enough for segments); their messages."""
    with open_store(db, key) as saver:
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


def test_an_interrupted_rotation_blocks_the_store_and_resumes_to_the_end(tmp_path: Path):
    db = tmp_path / "data" / "threadkeeper.db"
    written = fill(db, tmp_path, KEY, threads=12)
    batches = []

    def stop_after_three(done: int, total: int) -> None:
        batches.append(done)
        if len(batches) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rotate_key(db, KEY, NEW_KEY, batch_rows=10, progress=stop_after_three)
    for key in (KEY, NEW_KEY):
        with pytest.raises(EncryptionKeyError, match="is in the middle of `threadkeeper rotate-key`: run it again"):
            ThreadSaver(db, encryption_key=key)
    with pytest.raises(EncryptionKeyError, match="rotation to another target"):
        rotate_key(db, KEY, None)
    with pytest.raises(EncryptionKeyError, match="not the key the unfinished rotation"):
        rotate_key(db, KEY, "a third key entirely, long enough")

    summary = rotate_key(db, KEY, NEW_KEY, batch_rows=10)
    assert summary.resumed and summary.threads == 13
    with open_store(db, NEW_KEY) as saver:
        assert snapshot(saver) == written
    with pytest.raises(EncryptionKeyError, match="is not the key"):
        ThreadSaver(db, encryption_key=KEY)


def test_a_rotation_killed_between_writing_an_attachment_and_committing_resumes_cleanly(tmp_path: Path, monkeypatch):
    data = tmp_path / "data"
    db = data / "threadkeeper.db"
    with open_store(db, KEY) as saver:
        for thread_id in ("a1", "a2", "a3"):
            chat_with_marker(saver, tmp_path, thread_id)
        written = snapshot(saver)
    real_write = key_rotation.write_file
    calls = []

    def write_then_die(target, payload):
        real_write(target, payload)
        calls.append(target)
        if len(calls) == 2:
            raise SystemExit("killed")

    monkeypatch.setattr(key_rotation, "write_file", write_then_die)
    with pytest.raises(SystemExit):
        rotate_key(db, KEY, NEW_KEY, batch_rows=1)
    monkeypatch.setattr(key_rotation, "write_file", real_write)
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
        "from checkpointers.key_rotation import rotate_key\n"
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


def test_rotate_key_on_the_command_line_takes_keys_from_the_environment(tmp_path: Path, monkeypatch, capsys):
    db = tmp_path / "threadkeeper.db"
    with open_store(db, None) as saver:
        echo_graph(saver).invoke({"messages": [HumanMessage("hello")]}, config("t1"))
    url = f"sqlite:///{db}"
    monkeypatch.delenv("THREADKEEPER_ENCRYPTION_KEY", raising=False)
    monkeypatch.delenv("THREADKEEPER_NEW_ENCRYPTION_KEY", raising=False)
    assert main(["--db", url, "rotate-key"]) == 2
    assert capsys.readouterr().err == (
        "threadkeeper: set THREADKEEPER_NEW_ENCRYPTION_KEY to the new key (or pass --decrypt to remove encryption)\n"
    )
    monkeypatch.setenv("THREADKEEPER_NEW_ENCRYPTION_KEY", KEY)
    assert main(["--db", url, "rotate-key"]) == 0
    out = capsys.readouterr().out
    assert "unencrypted -> encrypted with the new key" in out and "  1 of 1 threads" in out
    assert "done: 1 threads, " in out and "set to the new key" in out
    monkeypatch.delenv("THREADKEEPER_NEW_ENCRYPTION_KEY")
    monkeypatch.setenv("THREADKEEPER_ENCRYPTION_KEY", KEY)
    assert main(["--db", url, "threads", "--user", "alice"]) == 0
    assert "hello" in capsys.readouterr().out
    assert main(["--db", url, "rotate-key", "--decrypt"]) == 0
    assert "no longer encrypted" in capsys.readouterr().out
    with open_store(db, None) as saver:
        assert saver.threads.get("t1").title == "hello"


# -- LangGraph's conformance suite, encrypted -----------------------------------------


@checkpointer_test(name="threadkeeper ThreadSaver, encrypted")
async def encrypted_saver():
    with tempfile.TemporaryDirectory() as tmp:
        async with open_async_saver(f"sqlite:///{Path(tmp) / 'conformance.db'}", encryption_key=KEY) as saver:
            yield saver


async def test_the_conformance_suite_passes_with_encryption_on():
    report = await validate(encrypted_saver)
    for name, result in report.results.items():
        assert result.detected, f"{name} not detected"
        assert result.passed, f"{name} failed: {result.failures}"
