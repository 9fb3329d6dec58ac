"""The SQLite store's key record: where `checkpointers.encryption`'s key lives in the file.

The record (salt, scrypt cost, check value; never the key) is a row of `store_meta`;
an unfinished `rotate-key` leaves a second row. What a record means, and what a key
opens, is `checkpointers.encryption`; this module only reads and writes the rows.
PostgreSQL's twin is `engines/postgres/keys.py`.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from checkpointers.encryption import META_KEY, ROTATION_META_KEY, Cipher, key_of_store, unencrypted_store


def read_records(conn: sqlite3.Connection) -> tuple[str | None, str | None]:
    """The `store_meta` values of the key record and of an unfinished rotation."""
    rows = dict(
        conn.execute(
            "SELECT key, value FROM store_meta WHERE key IN (?, ?)", (META_KEY, ROTATION_META_KEY)
        ).fetchall()
    )
    return rows.get(META_KEY), rows.get(ROTATION_META_KEY)


def unlock(conn: sqlite3.Connection, path: Path | str, key: str | None) -> tuple[Cipher | None, str | None]:
    """Check `key` against the SQLite store; returns its cipher (None: not encrypted) and key record.

    Refuses, changing nothing, what `key_of_store` refuses, and a key on a store
    that already holds unencrypted conversations. A key on a store with no
    threads yet makes it encrypted from now on. The caller upgrades a store
    whose cipher `reads_unbound` (`reseal.upgrade`) before using it.
    """
    opened = key_of_store(*read_records(conn), key, path)
    if opened is not None:
        return opened
    if _holds_threads(conn):
        raise unencrypted_store(path)
    cipher = Cipher.new(key)
    conn.execute("BEGIN IMMEDIATE")
    try:
        opened = key_of_store(*read_records(conn), key, path)  # another process may have got here first
        if opened is None:
            if _holds_threads(conn):
                raise unencrypted_store(path)
            record = cipher.record().to_json()
            conn.execute("INSERT INTO store_meta (key, value) VALUES (?, ?)", (META_KEY, record))
            opened = cipher, record
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return opened


def _holds_threads(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT EXISTS (SELECT 1 FROM threads)").fetchone()[0] == 1
