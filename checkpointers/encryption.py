"""Encryption at rest: what `THREADKEEPER_ENCRYPTION_KEY` turns on.

With a key set, everything that holds conversation content is stored
encrypted: checkpoint blobs, serialised channel values and pending writes,
messages (loose and sealed in segments), thread titles, attachment files and
the attachment's name and table list. The full-text index holds keyed hashes
of words instead of words (see `checkpointers.search`).

What it protects against, for someone who gets the file (a stolen disk, a
backup, a copy) but not the key: reading any of that content; forging a
value; and, for someone who can also write the file, changing a sealed
value, moving it to another thread or another row (a title to another
thread, one message's blob over another's, a checkpoint blob to another
checkpoint), putting a value from another store there, or replacing a sealed
title with plain text. Each of those is refused with an `EncryptionKeyError`
when the value is read, instead of the wrong content being returned.

What it does not protect against:

* What stays in clear, on purpose: thread ids, user ids, times, counts, pins,
  message types and sizes, which rows exist, the packed lists of message
  numbers (which messages a checkpoint holds, in what order), and metadata
  (thread metadata JSON, and on PostgreSQL and in SQLite checkpoint rows older
  than `tk.cp2` checkpoint metadata), because those are filtered in SQL.
  LangGraph's own `EncryptedSerializer` leaves checkpoint metadata in clear for
  the same reason. SQLite's `tk.cp2` rows hold it inside the sealed checkpoint
  (`checkpointers/checkpoint_codec.py`). Do not put secrets in metadata. Someone who can
  write the file can change any of these (reassign a thread to another user,
  drop or repeat message numbers in a list) without breaking a seal.
* Removal and rollback: deleting whole rows (a message, a checkpoint, a
  thread), or putting back an older copy of the whole file, or an older
  sealed value in the same place, opens without complaint: a seal says where
  a value belongs, not that it is the newest.
* Anyone holding the key, or able to read the memory of a running
  threadkeeper process (which holds the key and decrypted conversations).

Keys. The key string is stretched with scrypt (n=2**14, r=8, p=1) and a random
16-byte salt kept in `store_meta` (key `encryption`, a JSON record with the
KDF parameters, a check value and the value format version). Separate subkeys
are derived from it with HMAC-SHA256 and a label each: one for values
(AES-256-GCM), one for the check value that tells a wrong key on open, one
for hashing search words, and a 4-byte key id.

Format of an encrypted value: `b"\\xe2"` (magic and format version 2), the
4-byte key id, a random 12-byte nonce, then the AES-GCM ciphertext and tag
(33 bytes over the plaintext). Texts (titles, attachment names) are stored as
`enc2:` + base64 of the same bytes, so the columns stay TEXT.

Every value is sealed to its place. The associated data AES-GCM
authenticates is the 5-byte header followed by the msgpack array
`[table, thread, row key...]` built by the `*_place` functions below:

    checkpoints          ["checkpoints", thread_key, checkpoint_ns, checkpoint_id]
    channel_values       ["channel_values", thread_key, value_no]
    writes               ["writes", thread_key, checkpoint_ns, checkpoint_id, task_id, idx]
    messages             ["messages", thread_key, message_no]
    message_segments     ["message_segments", thread_key, nos]    (the row's packed message numbers)
    threads.title        ["threads.title", thread_id]
    attachments (name, tables, the file)
                         ["attachments.name" | "attachments.tables" | "attachments.file", thread_id]

Ids are as stored (on SQLite `codec.db_id`: 16 bytes for a UUID; on
PostgreSQL the text). Both engines seal the same values to the same places
(`checkpointers.engines.postgres.keys` has that engine's SQL). Rows of the
per-thread tables are bound to the thread's `thread_key`, the number they are
found by, which is never reused; the title and the attachment are found by
thread id, and the attachment file is sealed before a new thread has a row,
so they are bound to the id. `copy_thread` re-seals what it copies under the
new thread. The store is bound by the key itself: each store has its own
salt, so its own subkeys and key id, and the key id is in the authenticated
header.

Format 1 (`b"\\xe1"`, `enc1:`, key record version 1), written before values
were bound, authenticated the header only. A store in format 1 is upgraded
when a saver first opens it with its key (`checkpointers.engines.sqlite.reseal.upgrade`), or
by `threadkeeper rotate-key`: every value is re-sealed in place, resumably,
and the key record then says version 2. From then on a format-1 value is
refused like any other value that does not belong where it is found.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path

import ormsgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from checkpointers.errors import EncryptionKeyError

KEY_VARIABLE = "THREADKEEPER_ENCRYPTION_KEY"
NEW_KEY_VARIABLE = "THREADKEEPER_NEW_ENCRYPTION_KEY"
MIN_KEY_LENGTH = 16

MAGIC = b"\xe2"
"""First byte of a sealed value: format 2, bound to its place."""
UNBOUND_MAGIC = b"\xe1"
"""First byte of a format-1 value (not bound to its place), read only while its store is upgraded."""
KEY_ID_BYTES = 4
NONCE_BYTES = 12
HEADER_BYTES = len(MAGIC) + KEY_ID_BYTES
OVERHEAD = HEADER_BYTES + NONCE_BYTES + 16
TEXT_PREFIX = "enc2:"
UNBOUND_TEXT_PREFIX = "enc1:"
RECORD_VERSION = 2
"""Version of the key record, which is also the format of the store's values."""
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
    version: int = RECORD_VERSION
    """1: the store's values are in format 1, not yet bound to their place (see the module docstring)."""

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": self.version,
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
        if raw.get("version") not in (1, RECORD_VERSION) or raw.get("kdf") != "scrypt":
            raise EncryptionKeyError("the store's key record is of a newer format; upgrade threadkeeper to open it")
        return cls(
            base64.b64decode(raw["salt"]),
            base64.b64decode(raw["check"]),
            int(raw["n"]),
            int(raw["r"]),
            int(raw["p"]),
            raw["version"],
        )


class Cipher:
    """Encrypts and decrypts a store's values under one key (see the module docstring).

    Values are always sealed in the current format, bound to the place given.
    `reads_unbound`: format-1 values open too (without a place); only while a
    store in format 1 is upgraded, or re-encrypted by `threadkeeper rotate-key`.
    """

    def __init__(
        self,
        key: str,
        salt: bytes,
        *,
        n: int = _SCRYPT["n"],
        r: int = _SCRYPT["r"],
        p: int = _SCRYPT["p"],
        reads_unbound: bool = False,
    ):
        master = Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(key.encode("utf-8"))
        self.salt = salt
        self._params = (n, r, p)
        self._aead = AESGCM(_subkey(master, b"values"))
        self._check_key = _subkey(master, b"key check")
        self._search_key = _subkey(master, b"search words")
        self._tokens: dict[str, str] = {}
        self.key_id = _subkey(master, b"key id")[:KEY_ID_BYTES]
        self._header = MAGIC + self.key_id
        self._unbound_header = UNBOUND_MAGIC + self.key_id
        self.reads_unbound = reads_unbound

    @classmethod
    def new(cls, key: str) -> Cipher:
        """A cipher for `key` with a fresh random salt (a new store, or a new key)."""
        return cls(key, os.urandom(16))

    @classmethod
    def for_record(cls, key: str, record: KeyRecord) -> Cipher:
        return cls(key, record.salt, n=record.n, r=record.r, p=record.p, reads_unbound=record.version == 1)

    def record(self) -> KeyRecord:
        """The key record of this key, for a store whose values are all in the current format."""
        n, r, p = self._params
        return KeyRecord(self.salt, hmac.new(self._check_key, _CHECK_MESSAGE, hashlib.sha256).digest(), n, r, p)

    def matches(self, record: KeyRecord) -> bool:
        """Whether this is the key `record` was made with."""
        return hmac.compare_digest(self.record().check, record.check)

    # -- values -------------------------------------------------------------

    def seal(self, data: bytes, place: bytes) -> bytes:
        """`data` encrypted and bound to `place` (one of the `*_place` functions)."""
        nonce = os.urandom(NONCE_BYTES)
        header = self._header
        return header + nonce + self._aead.encrypt(nonce, data, header + place)

    def open(self, data: bytes, place: bytes) -> bytes:
        """What `seal(..., place)` sealed; EncryptionKeyError, in one sentence, for
        anything else: changed, sealed for another place or store, plain, or (once
        the store is upgraded) in format 1."""
        header = data[:HEADER_BYTES]
        if header == self._header:
            associated = header + place
        elif header == self._unbound_header and self.reads_unbound:
            associated = header
        else:
            raise self._refusal(header, place)
        try:
            return self._aead.decrypt(data[HEADER_BYTES : HEADER_BYTES + NONCE_BYTES], data[HEADER_BYTES + NONCE_BYTES :], associated)
        except InvalidTag:
            raise EncryptionKeyError(
                f"stored data ({describe(place)}) failed its integrity check: it was changed, or moved there "
                "from another place, outside threadkeeper"
            ) from None

    def _refusal(self, header: bytes, place: bytes) -> EncryptionKeyError:
        if header[:1] not in (MAGIC, UNBOUND_MAGIC):
            return EncryptionKeyError(
                f"stored data ({describe(place)}) is not encrypted although the store is: it was written without the key"
            )
        if header == self._unbound_header:
            return EncryptionKeyError(
                f"stored data ({describe(place)}) is in the old format, not bound to its place, in a store that "
                "was upgraded: it was put back from an older copy of the file"
            )
        return EncryptionKeyError(
            f"stored data ({describe(place)}) was encrypted with another key than this process's {KEY_VARIABLE}: "
            "if `threadkeeper rotate-key` ran since it started, restart it with the new key"
        )

    def seal_text(self, text: str, place: bytes) -> str:
        return TEXT_PREFIX + base64.b64encode(self.seal(text.encode("utf-8"), place)).decode("ascii")

    def open_text(self, text: str, place: bytes) -> str:
        """What `seal_text(..., place)` sealed. A text stored in clear is refused
        like any other value that does not belong there: in an encrypted store
        every title and attachment name is sealed, so a plain one was put there
        from outside."""
        if not text.startswith((TEXT_PREFIX, UNBOUND_TEXT_PREFIX)):
            raise EncryptionKeyError(
                f"stored text ({describe(place)}) is in clear although the store is encrypted: "
                "it was written outside threadkeeper"
            )
        try:
            data = base64.b64decode(text[len(TEXT_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            data = b""
        return self.open(data, place).decode("utf-8")

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


# -- places: what each value is bound to (see the module docstring) -------------

_pack = ormsgpack.packb


def checkpoint_place(thread_key: int, ns: str, checkpoint_id: str | bytes) -> bytes:
    return _pack(("checkpoints", thread_key, ns, checkpoint_id))


def value_place(thread_key: int, value_no: int) -> bytes:
    return _pack(("channel_values", thread_key, value_no))


def write_place(thread_key: int, ns: str, checkpoint_id: str | bytes, task_id: str | bytes, idx: int) -> bytes:
    return _pack(("writes", thread_key, ns, checkpoint_id, task_id, idx))


def message_place(thread_key: int, message_no: int) -> bytes:
    return _pack(("messages", thread_key, message_no))


def segment_place(thread_key: int, nos: bytes) -> bytes:
    """A segment is bound to its packed message numbers: which messages it holds, in which order."""
    return _pack(("message_segments", thread_key, nos))


def title_place(thread_id: str) -> bytes:
    return _pack(("threads.title", thread_id))


def attachment_place(thread_id: str, part: str) -> bytes:
    """`part`: "name", "tables" or "file"."""
    return _pack((f"attachments.{part}", thread_id))


def seal_title(cipher: Cipher | None, title: str | None, thread_id: str) -> str | None:
    """A thread's title as stored: sealed to the thread when the store is encrypted (`cipher`)."""
    if title is None or cipher is None:
        return title
    return cipher.seal_text(title, title_place(thread_id))


def open_title(cipher: Cipher | None, stored: str | None, thread_id: str) -> str | None:
    """A title as `seal_title` stored it, in clear."""
    if stored is None or cipher is None:
        return stored
    return cipher.open_text(stored, title_place(thread_id))


def describe(place: bytes) -> str:
    """A place for an error message: `messages of thread_key 12 at 5`, `threads.title of 't1'`."""
    table, thread, *key = ormsgpack.unpackb(place)
    where = f"{table} of thread_key {thread}" if isinstance(thread, int) else f"{table} of {thread!r}"
    shown = [k.hex() if isinstance(k, bytes) else repr(k) if isinstance(k, str) else str(k) for k in key]
    return where + (f" at {', '.join(shown)}" if shown else "")


# -- the store's key ------------------------------------------------------------


def rotation_unfinished(path: Path | str) -> EncryptionKeyError:
    return EncryptionKeyError(
        f"{path} is in the middle of `threadkeeper rotate-key`: run it again with the same keys to finish it"
    )


def is_upgrade(rotation: str | None) -> bool:
    """Whether an unfinished rotation record is the upgrade to bound values (same key, see `reseal.upgrade`)."""
    return rotation is not None and bool(json.loads(rotation).get("upgrade"))


def key_of_store(record: str | None, rotation: str | None, key: str | None, where: Path | str) -> tuple[Cipher | None, str | None] | None:
    """What opening a store with `key` gives, from its key record and rotation record
    (as each engine's `keys.read_records` returns them): its cipher (None: not
    encrypted) and key record; or None when a key is given for a store that has no
    key yet, which the caller makes encrypted if it holds no conversations (each engine's `keys.unlock`).

    Refuses an encrypted store without the key or with another key, and a store
    in the middle of a key rotation. The cipher of a store in format 1, or in the
    middle of its upgrade, `reads_unbound`. `where` names the store in the sentences.
    """
    if rotation is not None:
        if record is not None and is_upgrade(rotation):
            if key is None:
                raise EncryptionKeyError(f"{where} is encrypted: set {KEY_VARIABLE} to its key")
            return _cipher_for(key, record, where), record
        raise rotation_unfinished(where)
    if record is not None:
        if key is None:
            raise EncryptionKeyError(f"{where} is encrypted: set {KEY_VARIABLE} to its key")
        return _cipher_for(key, record, where), record
    if key is None:
        return None, None
    return None


def _cipher_for(key: str, record_json: str, path: Path | str) -> Cipher:
    record = KeyRecord.from_json(record_json)
    cipher = Cipher.for_record(key, record)
    if not cipher.matches(record):
        raise EncryptionKeyError(f"{KEY_VARIABLE} is not the key {path} was encrypted with")
    return cipher


def unencrypted_store(path: Path | str) -> EncryptionKeyError:
    """The refusal of a key for a store that already holds conversations in clear."""
    return EncryptionKeyError(
        f"{path} holds conversations that are not encrypted: to encrypt them, run `threadkeeper rotate-key` "
        f"with the key in {NEW_KEY_VARIABLE} and {KEY_VARIABLE} unset"
    )
