"""Attaching a database to a thread: accepted files, refused files, and their lifetime, on
both engines (`store`: a SQLite store keeps the file beside it; a PostgreSQL store keeps
its bytes in the database and a copy in this machine's cache)."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from checkpointers import AttachmentError, ThreadNotFoundError, open_saver
from tests.hostile import HOSTILE, Refused, attempt, hostile_text


def sqlite_file(path: Path, item: str = "apple") -> Path:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE items (name TEXT, qty INTEGER)")
    conn.execute("INSERT INTO items VALUES (?, 3)", (item,))
    conn.commit()  # the row may still be only in the -wal file: the copy must include it
    return path


def test_a_sqlite_file_is_copied_whole_and_the_original_is_left_alone(store, tmp_path: Path):
    saver = store
    source = sqlite_file(tmp_path / "shop.db")
    attached = saver.attachments.attach("t1", source, user_id="alice")
    assert attached.tables == ["items"] and saver.attachments.root in attached.path.parents
    conn = sqlite3.connect(f"file:{attached.path}?mode=ro", uri=True)
    assert conn.execute("SELECT * FROM items").fetchall() == [("apple", 3)]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()
    assert saver.threads.get("t1", user_id="alice").user_id == "alice"


def test_a_csv_file_is_imported_into_a_typed_table(store, tmp_path: Path):
    saver = store
    source = tmp_path / "Monthly Sales.csv"
    source.write_text("month,revenue,region\nJan,1200.5,north\nFeb,980,south\nMar,,north\n", encoding="utf-8")
    attached = saver.attachments.attach("t1", source)
    assert attached.name == "Monthly Sales.csv" and attached.tables == ["monthly_sales"]
    conn = sqlite3.connect(attached.path)
    assert conn.execute("SELECT typeof(revenue), sum(revenue) FROM monthly_sales").fetchone() == ("real", 2180.5)
    conn.close()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("notes.txt", b"hello", "notes.txt cannot be attached: upload a SQLite database (.db, .sqlite, .sqlite3) or a .csv file"),
        ("fake.db", b"this is not a database at all, just text", "fake.db is not a SQLite database"),
        ("cut.db", None, "cut.db is a damaged SQLite database"),
        ("empty.csv", b"", "empty.csv is empty"),
        ("ragged.csv", b"a,b\n1,2\n3,4,5\n", "ragged.csv is not a well-formed CSV file: row 3 has 3 fields, the header has 2"),
        ("latin.csv", "name\nJos\xe9\n".encode("latin-1"), "latin.csv is not a UTF-8 CSV file"),
        ("big.db", b"SQLite format 3\x00" + b"\x00" * 3_000_000, "big.db is 3.0 MB, over the 2 MB limit for attachments"),
    ],
)
def test_a_bad_file_gets_one_sentence_and_changes_nothing(store, tmp_path: Path, monkeypatch, name, content, message):
    saver = store
    monkeypatch.setenv("THREADKEEPER_MAX_ATTACHMENT_MB", "2")
    good = saver.attachments.attach("t1", sqlite_file(tmp_path / "good.db"))
    source = tmp_path / name
    if content is None:  # a real database with its second half cut off
        whole = sqlite_file(tmp_path / "whole.db")
        conn = sqlite3.connect(whole)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.executemany("INSERT INTO items VALUES (?, ?)", [("x" * 500, i) for i in range(2000)])
        conn.commit()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        data = whole.read_bytes()
        content = data[: len(data) // 2]
    source.write_bytes(content)
    with pytest.raises(AttachmentError) as refused:
        saver.attachments.attach("t1", source)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)
    assert saver.attachments.get("t1") == good
    assert sorted(p.name for p in good.path.parent.iterdir()) == [good.path.name]


def test_another_users_thread_cannot_be_attached_to_read_or_detached(store, tmp_path: Path):
    saver = store
    saver.attachments.attach("t1", sqlite_file(tmp_path / "a.db"), user_id="alice")
    with pytest.raises(ThreadNotFoundError):
        saver.attachments.attach("t1", tmp_path / "a.db", user_id="bob")
    with pytest.raises(ThreadNotFoundError):
        saver.attachments.get("t1", user_id="bob")
    with pytest.raises(ThreadNotFoundError):
        saver.attachments.remove("t1", user_id="bob")
    assert saver.attachments.get("t1", user_id="alice") is not None


def test_replacing_and_removing_an_attachment_deletes_the_old_file(store, tmp_path: Path):
    saver = store
    first = saver.attachments.attach("t1", sqlite_file(tmp_path / "a.db"))
    second = saver.attachments.attach("t1", sqlite_file(tmp_path / "b.db", item="pear"))
    assert not first.path.exists() and second.path.exists()
    assert saver.attachments.remove("t1") is True
    assert not second.path.exists() and saver.attachments.get("t1") is None
    assert saver.attachments.remove("t1") is False


def test_deleting_threads_deletes_their_files(store, tmp_path: Path):
    saver = store
    paths = [saver.attachments.attach(f"t{i}", sqlite_file(tmp_path / f"s{i}.db", item=f"item {i}")).path for i in range(3)]
    assert saver.delete_threads(["t0", "t1"]) == 2
    assert [p.exists() for p in paths] == [False, False, True]
    root = saver.attachments.root
    assert [p for p in root.rglob("*") if p.is_file()] == [paths[2]]
    assert all(any(d.iterdir()) for d in root.rglob("*") if d.is_dir())  # no empty folder left behind


@pytest.mark.parametrize(
    "hostile",
    [
        "..%2F..%2F..%2Fthreadkeeper.db",
        "a?mode=rwc#x.db",
        "%2e%2e%2fthreadkeeper.db",
        "b#.db",
        "c%00d.db",
    ],
)
def test_an_upload_is_opened_by_its_own_name_however_it_is_spelled(store, tmp_path: Path, hostile: str):
    saver = store
    # The store's own database (beside tmp_path/uploads) is what a decoded name once reached.
    uploads = tmp_path / "uploads" / "deep" / "deeper"
    uploads.mkdir(parents=True)
    source = sqlite_file(uploads / hostile)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    attached = saver.attachments.attach("t1", source, user_id="mallory", name=hostile)
    assert attached.tables == ["items"]  # the upload's own table, not the store's `threads`, `messages`...
    with sqlite3.connect(attached.path) as conn:
        assert conn.execute("SELECT * FROM items").fetchall() == [("apple", 3)]
    stray = sorted(p.name for p in tmp_path.rglob("*"))
    new = {p for p in set(stray) - set(before) if not p.startswith(hostile)}  # the source's own -wal, -shm
    # Only the stored copy (and its folders) appeared: no file named after part of the upload's name.
    stored = {p.name for p in [attached.path, *attached.path.parents] if tmp_path in p.parents}
    assert new <= stored, new - stored


def test_the_attachment_folder_is_never_named_after_the_thread_id(store, tmp_path: Path):
    saver = store
    source = sqlite_file(tmp_path / "shop.db")
    for thread_id in ("..", "plain-id", "../../etc"):
        attached = saver.attachments.attach(thread_id, source, user_id="alice")
        assert saver.attachments.root.resolve() in attached.path.resolve().parents
        assert thread_id not in attached.path.parent.name


def test_the_database_tools_list_describe_and_query_an_attached_table(store, tmp_path: Path):
    saver = store
    from graph.tools import database_tools

    source = sqlite_file(tmp_path / "shop.db")
    saver.attachments.attach("t1", source)
    tools = {t.name: t for t in database_tools(lambda config: saver.attachment_database("t1"), row_limit=10, timeout_s=5)}
    config = {"configurable": {"thread_id": "t1"}}
    assert tools["list_tables"].invoke({}, config) == '["items"]'
    assert tools["describe_table"].invoke({"table": "items"}, config) == "Table items (1 rows): name TEXT, qty INTEGER"
    assert tools["describe_table"].invoke({"table": "nope"}, config).startswith("There is no table named 'nope'")
    assert "apple | 3" in tools["query_database"].invoke({"sql": "SELECT * FROM items"}, config)
    assert tools["query_database"].invoke({"sql": "DELETE FROM items"}, config).startswith("Refused")


def test_every_process_reaches_the_attached_database(store_url, tmp_path: Path, monkeypatch):
    """Another app process (here: another saver with a cache of its own, as on another
    machine) opens the thread's database without having seen the upload."""
    with open_saver(store_url) as first:
        first.attachments.attach("t1", sqlite_file(tmp_path / "shop.db"), user_id="alice")
    monkeypatch.setenv("THREADKEEPER_ATTACHMENT_CACHE", str(tmp_path / "another-machine"))
    with open_saver(store_url) as second:
        database = second.attachment_database("t1")
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
            assert conn.execute("SELECT * FROM items").fetchall() == [("apple", 3)]
        assert second.attachments.get("t1", user_id="alice").tables == ["items"]


def test_a_copied_thread_keeps_its_own_attachment(store, tmp_path: Path):
    store.attachments.attach("t1", sqlite_file(tmp_path / "shop.db"), user_id="alice")
    store.copy_thread("t1", "t2")
    assert store.attachments.remove("t1") is True
    copied = store.attachments.get("t2", user_id="alice")
    assert copied.tables == ["items"] and copied.path.exists()


@pytest.mark.parametrize("name", ["a\x00b.db", "\ud800.db"])
def test_a_name_that_cannot_be_stored_is_one_sentence(store, tmp_path: Path, name: str):
    with pytest.raises(AttachmentError, match="rename the file and try again"):
        store.attachments.attach("t1", sqlite_file(tmp_path / "shop.db"), name=name)
    with pytest.raises(ThreadNotFoundError):
        store.threads.get("t1")


@HOSTILE
@given(name=hostile_text(), suffix=st.sampled_from([".db", ".csv", ".sqlite", ".txt", ""]))
def test_any_name_is_shown_as_given_or_refused_in_one_sentence(store, tmp_path: Path, name: str, suffix: str):
    stem = tmp_path / uuid.uuid4().hex  # a new upload for each example
    source = sqlite_file(stem.with_suffix(".db")) if suffix != ".csv" else stem.with_suffix(".csv")
    if suffix == ".csv":
        source.write_text("month,revenue\nJan,3\n", encoding="utf-8")
    attached = attempt("attachments.attach name", store.attachments.attach, "t-named", source, user_id="alice",
                       name=name + suffix, echoed=(name + suffix,))
    if not isinstance(attached, Refused):
        assert store.attachments.get("t-named", user_id="alice").name == (name + suffix or source.name)
        assert store.attachment_database("t-named") == attached.path
