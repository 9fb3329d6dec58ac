"""What `threadkeeper rotate-key` decides and returns, the same on both engines.

Each engine rewrites its own tables (`checkpointers.engines.sqlite.key_rotation`,
`checkpointers.engines.postgres.key_rotation`); what they share is written here
once, so a store refuses and answers in the same sentences whichever engine
holds it:

* which cipher opens the store now (`current_cipher`), and which one the
  rotation writes with: a new key for a new rotation (`new_rotation`), or the
  target an unfinished one recorded (`target_cipher`);
* the rotation record kept in `store_meta` (`encryption_rotation`) while it
  runs: the target's key record and the last thread done (`done_upto`);
* the key record the store ends with (`final_record`), and the summary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from checkpointers import encryption
from checkpointers.encryption import Cipher, KeyRecord
from checkpointers.errors import EncryptionKeyError

DEFAULT_BATCH_ROWS = 2_000


@dataclass(frozen=True)
class RotationSummary:
    """What a finished `rotate_key` did."""

    threads: int
    values: int
    """Encrypted values rewritten (checkpoints, values, writes, messages, segments, titles)."""
    attachments: int
    resumed: bool
    """Whether this run finished a rotation an earlier run had started."""
    encrypted: bool
    """Whether the store is encrypted now."""
    seconds: float


Progress = Callable[[int, int], None]
"""Called after each committed batch with (threads done, threads in all)."""


def check_keys(current_key: str | None, new_key: str | None) -> None:
    """Refuse, before anything is read, a key too short to be one (naming its variable)."""
    if current_key is not None:
        encryption.check_key(current_key)
    if new_key is not None:
        encryption.check_key(new_key, encryption.NEW_KEY_VARIABLE)


def run_batches(batch: Callable[[], int | None], done: int, total: int, progress: Progress | None, resumed: bool) -> int:
    """Run `batch` (threads it committed; None when none are left) until the end, telling
    `progress` after each one (and where a resumed run starts); returns threads done."""
    if progress is not None and resumed:
        progress(done, total)
    while (threads := batch()) is not None:
        done += threads
        if progress is not None:
            progress(done, total)
    return done


def current_cipher(where: Path | str, record: str | None, key: str | None) -> Cipher | None:
    """The cipher that opens the store now (None: it is not encrypted), from its key record;
    refuses a key for a plain store, no key for an encrypted one, and a wrong key."""
    if record is None:
        if key is not None:
            raise EncryptionKeyError(
                f"{where} is not encrypted: unset {encryption.KEY_VARIABLE} "
                f"({encryption.NEW_KEY_VARIABLE} is the key to encrypt it with)"
            )
        return None
    if key is None:
        raise EncryptionKeyError(f"{where} is encrypted: set {encryption.KEY_VARIABLE} to its current key")
    stored = KeyRecord.from_json(record)
    cipher = Cipher.for_record(key, stored)
    if not cipher.matches(stored):
        raise EncryptionKeyError(f"{encryption.KEY_VARIABLE} is not the key {where} was encrypted with")
    return cipher


def new_rotation(where: Path | str, old: Cipher | None, new_key: str | None) -> tuple[Cipher | None, dict]:
    """The cipher a rotation starting now writes with (a fresh salt) and its rotation record;
    refuses to "rotate" a plain store to plain."""
    if old is None and new_key is None:
        raise EncryptionKeyError(
            f"{where} is not encrypted: set {encryption.NEW_KEY_VARIABLE} to the key to encrypt it with"
        )
    new = None if new_key is None else Cipher.new(new_key)
    state = {"version": 1, "key": None if new is None else new.record().to_json(), "done_upto": 0, "unlink": []}
    return new, state


def target_cipher(where: Path | str, state: dict, new_key: str | None) -> Cipher | None:
    """The cipher of the unfinished rotation's target, if `new_key` is that target."""
    target = state["key"]
    if target is None or new_key is None:
        if target is None and new_key is None:
            return None
        started_with = "--decrypt" if target is None else f"the {encryption.NEW_KEY_VARIABLE} it was started with"
        raise EncryptionKeyError(
            f"{where} is in the middle of a key rotation to another target: run `threadkeeper rotate-key` "
            f"again with {started_with}"
        )
    record = KeyRecord.from_json(target)
    cipher = Cipher.for_record(new_key, record)
    if not cipher.matches(record):
        raise EncryptionKeyError(
            f"{encryption.NEW_KEY_VARIABLE} is not the key the unfinished rotation of {where} was started with"
        )
    return cipher


def final_record(new: Cipher | None, state: dict) -> str | None:
    """The key record the store ends with (None: not encrypted). A rotation that a release
    before bound values started wrote format 1 under the new key: the record says so, and
    the next saver to open the store upgrades it."""
    if new is None:
        return None
    version = KeyRecord.from_json(state["key"]).version if state["key"] else encryption.RECORD_VERSION
    return dataclasses.replace(new.record(), version=version).to_json()

