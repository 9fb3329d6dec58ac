"""Attaching a database to a thread: accepted files, refused files, and their lifetime."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from checkpointers import AttachmentError, ThreadNotFoundError, ThreadSaver


def sqlite_file(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE items (name TEXT, qty INTEGER)")
    conn.execute("INSERT INTO items VALUES ('apple', 3)")
    conn.commit()  # the row may still be only in the -wal file: the copy must include it
    return path


def test_a_sqlite_file_is_copied_whole_and_the_original_is_left_alone(saver: ThreadSaver, tmp_path: Path):
    source = sqlite_file(tmp_path / "shop.db")
    attached = saver.attachments.attach("t1", source, user_id="alice")
    assert attached.tables == ["items"] and attached.path.parent.name == "t1"
    conn = sqlite3.connect(f"file:{attached.path}?mode=ro", uri=True)
    assert conn.execute("SELECT * FROM items").fetchall() == [("apple", 3)]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()
    assert saver.threads.get("t1", user_id="alice").user_id == "alice"


def test_a_csv_file_is_imported_into_a_typed_table(saver: ThreadSaver, tmp_path: Path):
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
def test_a_bad_file_gets_one_sentence_and_changes_nothing(saver: ThreadSaver, tmp_path: Path, monkeypatch, name, content, message):
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


def test_another_users_thread_cannot_be_attached_to_read_or_detached(saver: ThreadSaver, tmp_path: Path):
    saver.attachments.attach("t1", sqlite_file(tmp_path / "a.db"), user_id="alice")
    with pytest.raises(ThreadNotFoundError):
        saver.attachments.attach("t1", tmp_path / "a.db", user_id="bob")
    with pytest.raises(ThreadNotFoundError):
        saver.attachments.get("t1", user_id="bob")
    with pytest.raises(ThreadNotFoundError):
        saver.attachments.remove("t1", user_id="bob")
    assert saver.attachments.get("t1", user_id="alice") is not None


def test_replacing_and_removing_an_attachment_deletes_the_old_file(saver: ThreadSaver, tmp_path: Path):
    first = saver.attachments.attach("t1", sqlite_file(tmp_path / "a.db"))
    second = saver.attachments.attach("t1", sqlite_file(tmp_path / "b.db"))
    assert not first.path.exists() and second.path.exists()
    assert saver.attachments.remove("t1") is True
    assert not second.path.exists() and saver.attachments.get("t1") is None
    assert saver.attachments.remove("t1") is False


def test_deleting_threads_deletes_their_files(saver: ThreadSaver, tmp_path: Path):
    paths = [saver.attachments.attach(f"t{i}", sqlite_file(tmp_path / f"s{i}.db")).path for i in range(3)]
    assert saver.delete_threads(["t0", "t1"]) == 2
    assert [p.exists() for p in paths] == [False, False, True]
    assert sorted(d.name for d in saver.attachments.root.iterdir()) == ["t2"]
