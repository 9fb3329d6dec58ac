"""Encryption at rest: what `THREADKEEPER_ENCRYPTION_KEY` turns on.

With a key set, everything that holds conversation content is stored
encrypted: checkpoint blobs, serialised channel values and pending writes,
messages (loose and sealed in segments), thread titles, attachment files and
the attachment's name and table list. The full-text index holds keyed hashes
of words instead of words (see `checkpointers.search`).

What stays in clear, on purpose: thread ids, user ids, times, counts, pins,
message types and sizes, the packed lists of message numbers, and metadata
(checkpoint metadata and thread metadata JSON), because those are filtered in
SQL. LangGraph's own `EncryptedSerializer` leaves checkpoint metadata in clear
for the same reason. Do not put secrets in metadata.

Keys. The key string is stretched with scrypt (n=2**14, r=8, p=1) and a random
16-byte salt kept in `store_meta` (key `encryption`, a JSON record with the
KDF parameters and a check value). Separate subkeys are derived from it with
HMAC-SHA256 and a label each: one for values (AES-256-GCM), one for the check
value that tells a wrong key on open, one for hashing search words, and a
4-byte key id.

Format of an encrypted value: `b"\\xe1"` (magic and format version), the
4-byte key id, a random 12-byte nonce, then the AES-GCM ciphertext and tag
(33 bytes over the plaintext). The first five bytes are authenticated as
associated data. Texts (titles, attachment names) are stored as
`enc1:` + base64 of the same bytes, so the columns stay TEXT.
Each value's integrity is checked, not its position: whoever can write the
file can swap two encrypted values, but cannot read or forge one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from checkpointers.errors import EncryptionKeyError

KEY_VARIABLE = "THREADKEEPER_ENCRYPTION_KEY"
NEW_KEY_VARIABLE = "THREADKEEPER_NEW_ENCRYPTION_KEY"
MIN_KEY_LENGTH = 16

MAGIC = b"\xe1"
KEY_ID_BYTES = 4
NONCE_BYTES = 12
HEADER_BYTES = len(MAGIC) + KEY_ID_BYTES
OVERHEAD = HEADER_BYTES + NONCE_BYTES + 16
TEXT_PREFIX = "enc1:"
SEARCH_TOKEN_CHARS = 10

META_KEY = "encryption"
"""`store_meta` row describing the store's key (absent: the store is not encrypted)."""
ROTATION_META_KEY = "encryption_rotation"
"""`store_meta` row of an unfinished `threadkeeper rotate-key`."""

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_CHECK_MESSAGE = b"threadkeeper key check"
_TOKEN_CACHE = 65_536


def check_key(key: str, variable: str = KEY_VARIABLE) -> str:
    """The key, or EncryptionKeyError if it is too short to be a key."""
    if len(key) < MIN_KEY_LENGTH:
        raise EncryptionKeyError(
            f"{variable} is {len(key)} characters long; use at least {MIN_KEY_LENGTH}, for example the output of "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    return key


@dataclass(frozen=True)
class KeyRecord:
    """What the store remembers about a key: salt, KDF parameters, check value."""

    salt: bytes
    check: bytes
    n: int = _SCRYPT["n"]
    r: int = _SCRYPT["r"]
    p: int = _SCRYPT["p"]

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": 1,
                "kdf": "scrypt",
                "n": self.n,
                "r": self.r,
                "p": self.p,
                "salt": base64.b64encode(self.salt).decode(),
                "check": base64.b64encode(self.check).decode(),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> KeyRecord:
        raw = json.loads(text)
        if raw.get("version") != 1 or raw.get("kdf") != "scrypt":
            raise EncryptionKeyError("the store's key record is of a newer format; upgrade threadkeeper to open it")
        return cls(
            base64.b64decode(raw["salt"]), base64.b64decode(raw["check"]), int(raw["n"]), int(raw["r"]), int(raw["p"])
        )


class Cipher:
    """Encrypts and decrypts a store's values under one key (see the module docstring)."""

    def __init__(self, key: str, salt: bytes, *, n: int = _SCRYPT["n"], r: int = _SCRYPT["r"], p: int = _SCRYPT["p"]):
        master = Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(key.encode("utf-8"))
        self.salt = salt
        self._params = (n, r, p)
        self._aead = AESGCM(_subkey(master, b"values"))
        self._check_key = _subkey(master, b"key check")
        self._search_key = _subkey(master, b"search words")
        self._tokens: dict[str, str] = {}
        self.key_id = _subkey(master, b"key id")[:KEY_ID_BYTES]
        self._header = MAGIC + self.key_id

    @classmethod
    def new(cls, key: str) -> Cipher:
        """A cipher for `key` with a fresh random salt (a new store, or a new key)."""
        return cls(key, os.urandom(16))

    @classmethod
    def for_record(cls, key: str, record: KeyRecord) -> Cipher:
        return cls(key, record.salt, n=record.n, r=record.r, p=record.p)

    def record(self) -> KeyRecord:
        n, r, p = self._params
        return KeyRecord(self.salt, hmac.new(self._check_key, _CHECK_MESSAGE, hashlib.sha256).digest(), n, r, p)

    def matches(self, record: KeyRecord) -> bool:
        """Whether this is the key `record` was made with."""
        return hmac.compare_digest(self.record().check, record.check)

    # -- values -------------------------------------------------------------

    def seal(self, data: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return self._header + nonce + self._aead.encrypt(nonce, data, self._header)

    def open(self, data: bytes) -> bytes:
        header = data[:HEADER_BYTES]
        if header != self._header:
            if header[:1] != MAGIC:
                raise EncryptionKeyError("stored data is not encrypted although the store is: it was written without the key")
            raise EncryptionKeyError(
                f"stored data was encrypted with another key than this process's {KEY_VARIABLE}: "
                "if `threadkeeper rotate-key` ran since it started, restart it with the new key"
            )
        try:
            return self._aead.decrypt(data[HEADER_BYTES : HEADER_BYTES + NONCE_BYTES], data[HEADER_BYTES + NONCE_BYTES :], header)
        except InvalidTag:
            raise EncryptionKeyError("stored data failed its integrity check: it was changed outside threadkeeper") from None

    def seal_text(self, text: str) -> str:
        return TEXT_PREFIX + base64.b64encode(self.seal(text.encode("utf-8"))).decode("ascii")

    def open_text(self, text: str) -> str:
        """The text; a text without the prefix is returned as it is (written by code that did not encrypt it)."""
        if not text.startswith(TEXT_PREFIX):
            return text
        return self.open(base64.b64decode(text[len(TEXT_PREFIX) :])).decode("utf-8")

    # -- search ---------------------------------------------------------------

    def search_token(self, word: str) -> str:
        """The opaque token indexed in place of `word`: 10 base32 characters of HMAC-SHA256."""
        token = self._tokens.get(word)
        if token is None:
            # A turn hashes about a hundred words, mostly common ones: remembering
            # them keeps indexing as cheap as without a key (memory only).
            if len(self._tokens) >= _TOKEN_CACHE:
                self._tokens.clear()
            digest = hmac.digest(self._search_key, word.encode("utf-8"), "sha256")
            token = self._tokens[word] = base64.b32encode(digest[:7]).decode("ascii")[:SEARCH_TOKEN_CHARS].lower()
        return token


def _subkey(master: bytes, label: bytes) -> bytes:
    return hmac.new(master, b"threadkeeper v1 " + label, hashlib.sha256).digest()


# -- the store's key ------------------------------------------------------------


def read_records(conn: sqlite3.Connection) -> tuple[str | None, str | None]:
    """The `store_meta` values of the key record and of an unfinished rotation."""
    rows = dict(
        conn.execute(
            "SELECT key, value FROM store_meta WHERE key IN (?, ?)", (META_KEY, ROTATION_META_KEY)
        ).fetchall()
    )
    return rows.get(META_KEY), rows.get(ROTATION_META_KEY)


def rotation_unfinished(path: Path | str) -> EncryptionKeyError:
    return EncryptionKeyError(
        f"{path} is in the middle of `threadkeeper rotate-key`: run it again with the same keys to finish it"
    )


def unlock(conn: sqlite3.Connection, path: Path | str, key: str | None) -> tuple[Cipher | None, str | None]:
    """Check `key` against the store; returns its cipher (None: not encrypted) and key record.

    Refuses, changing nothing, an encrypted store without the key or with
    another key, a store in the middle of a key rotation, and a key on a
    store that already holds unencrypted conversations. A key on a store with
    no threads yet makes it encrypted from now on.
    """
    record, rotation = read_records(conn)
    if rotation is not None:
        raise rotation_unfinished(path)
    if record is not None:
        if key is None:
            raise EncryptionKeyError(f"{path} is encrypted: set {KEY_VARIABLE} to its key")
        return _cipher_for(key, record, path), record
    if key is None:
        return None, None
    if _holds_threads(conn):
        raise _unencrypted_store(path)
    cipher = Cipher.new(key)
    conn.execute("BEGIN IMMEDIATE")
    try:
        record, rotation = read_records(conn)  # another process may have got here first
        if rotation is not None:
            raise rotation_unfinished(path)
        if record is None:
            if _holds_threads(conn):
                raise _unencrypted_store(path)
            record = cipher.record().to_json()
            conn.execute("INSERT INTO store_meta (key, value) VALUES (?, ?)", (META_KEY, record))
        else:
            cipher = _cipher_for(key, record, path)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return cipher, record


def _cipher_for(key: str, record_json: str, path: Path | str) -> Cipher:
    record = KeyRecord.from_json(record_json)
    cipher = Cipher.for_record(key, record)
    if not cipher.matches(record):
        raise EncryptionKeyError(f"{KEY_VARIABLE} is not the key {path} was encrypted with")
    return cipher


def _holds_threads(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT EXISTS (SELECT 1 FROM threads)").fetchone()[0] == 1


def _unencrypted_store(path: Path | str) -> EncryptionKeyError:
    return EncryptionKeyError(
        f"{path} holds conversations that are not encrypted: to encrypt them, run `threadkeeper rotate-key` "
        f"with the key in {NEW_KEY_VARIABLE} and {KEY_VARIABLE} unset"
    )
