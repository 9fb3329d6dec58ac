"""Errors a user of the store can cause, each with one sentence that names the problem."""

from __future__ import annotations


class StoreError(Exception):
    """Base class: something about the database or a request to it is wrong."""


class NotADatabaseError(StoreError):
    """The file exists but is not a SQLite database."""


class ForeignDatabaseError(StoreError):
    """The file is a SQLite database that threadkeeper did not create."""


class SchemaTooNewError(StoreError):
    """The database was written by a newer threadkeeper than this one."""


class StoreUnavailableError(StoreError):
    """The database path cannot be created, opened or written."""


class EncryptionKeyError(StoreError):
    """The encryption key is missing, wrong, or does not fit the store's state; or
    a sealed value does not open where it was found (changed, moved, or in clear)."""


class ThreadNotFoundError(StoreError, KeyError):
    """No thread with that id exists (or it belongs to another user)."""

    def __init__(self, thread_id: str) -> None:
        super().__init__(f"no thread with id {thread_id!r}")
        self.thread_id = thread_id

    def __str__(self) -> str:  # KeyError would add quotes around the message
        return self.args[0]


class ThreadDeletedError(ThreadNotFoundError):
    """A run went on writing a thread that was deleted meanwhile (`threads.SeenThreads`)."""

    def __init__(self, thread_id: str) -> None:
        super().__init__(thread_id)
        self.args = (
            f"the thread {thread_id!r} was deleted while this run was writing it; nothing more of the run was saved",
        )


class ThreadExistsError(StoreError):
    """A thread with that id already has checkpoints."""


class InvalidCursorError(StoreError, ValueError):
    """A listing cursor that this store did not hand out."""


class UnstorableInputError(StoreError, ValueError):
    """An id or a text the store cannot keep exactly (NUL in an id, a lone surrogate in text)."""


class StoreFullError(StoreUnavailableError):
    """The disk holding the database is full: nothing more can be written until space is freed."""
