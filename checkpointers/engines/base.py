"""What the engine-neutral upkeep of a store needs of an engine: `saver.maintenance`.

Retention (`checkpointers.retention`), erasure (`delete_user`) and the usage
statistics' reads (`checkpointers.stats`) are written once; what is SQL, or
depends on how an engine keeps its files, is behind this interface, one class
per engine (`engines/sqlite/maintenance.py`, `engines/postgres/maintenance.py`),
in the way Django's backends fill in `base/`. A saver of either engine carries
its engine's as `saver.maintenance`.

Statements that both engines run alike (the statistics' reads) are written
once with `?` marks; `reading()` gives a `query(sql, params)` that runs them in
one read snapshot, the PostgreSQL engine turning each `?` into its `%s` (none of
those statements holds a `?` or a `%` of its own).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol


class Maintenance(Protocol):
    location: str
    """Where the store is, for people: the file's absolute path, or the URL without its password."""
    data_dir: str
    """A folder of the server's own beside the store (the web chat's cookie secret lives there)."""
    erasure_note: str
    """What `delete_user` leaves behind, in a few words for the person who ran it."""

    # -- the retention sweep -------------------------------------------------

    def expired(
        self, cutoff: str, limit: int, after: tuple[str, str] | None, *, keep_latest: bool
    ) -> list[tuple[str, str]]:
        """Up to `limit` `(updated_at, thread_id)` of unpinned threads last updated before
        `cutoff`, oldest first, after `after`; with `keep_latest`, only those with more
        than one checkpoint."""

    def attachment_bytes(self, thread_ids: Sequence[str], cutoff: str) -> int:
        """The bytes of the attachments of those of `thread_ids` still expired at `cutoff`."""

    def take_lease(self, owner: str) -> bool:
        """Become the one sweeper of the store (across processes); False if another is."""

    def renew_lease(self, owner: str) -> None:
        """Keep the lease through a long sweep."""

    def release_lease(self, owner: str) -> None:
        """Let another sweeper have the store; also frees what the sweep held."""

    def between_batches(self) -> None:
        """Housework while a sweep rests between batches (SQLite: copy the WAL into the file)."""

    def bytes_in_use(self) -> int:
        """Bytes the store's rows take now (before and after a sweep: what it freed)."""

    def erase_traces(
        self, *, wait: bool = True, between_steps: Callable[[float], None] | None = None, hold_s: float | None = None
    ) -> None:
        """After deletions: take deleted text out of what the engine keeps beside live rows."""

    def record_sweep(self, report: Any, host: str, *, keep_latest: bool) -> None:
        """Add a row to `sweeps` and, for a real sweep, count it in the usage statistics."""

    def recent_sweeps(self, limit: int) -> list[dict[str, Any]]:
        """The latest rows of `sweeps`, newest first."""

    # -- statistics and status -------------------------------------------------

    def reading(self) -> AbstractContextManager[Callable[..., list[tuple]]]:
        """A `query(sql, params=())` for statements written with `?`, all in one snapshot."""

    def database_bytes(self) -> int:
        """What the store takes on disk."""

    def attachment_totals(self, query: Callable[..., list[tuple]]) -> tuple[int, int]:
        """(attachments, their bytes)."""

    def schema_problem(self) -> str | None:
        """None if the store answers with this release's schema; else one sentence why not."""

    def describe(self) -> list[tuple[str, str]]:
        """(label, value) lines about the store for `threadkeeper status`."""
