"""Retention: threads nobody has written to for N days are swept away, in batches.

    policy = RetentionPolicy.from_env()          # THREADKEEPER_RETENTION_DAYS=30 ...
    report = Sweeper(saver, policy).sweep()      # what `threadkeeper sweep` runs
    SweepLoop(saver, policy).start()             # what `serve` and `langgraph dev` run

The settings are the ones LangGraph's server documents under `checkpointer.ttl`
in `langgraph.json` (`strategy`, `default_ttl` in minutes,
`sweep_interval_minutes`, `sweep_limit`); they are read from there, and
`THREADKEEPER_RETENTION_*` / `THREADKEEPER_SWEEP_*` variables override them,
so one configuration serves the web chat, the CLI and `langgraph dev`.

A sweep deletes (`delete`) or compacts to the latest checkpoint (`keep_latest`)
every thread whose `updated_at` is older than the window, pinned threads
excepted. It works through the threads least recently updated first, one
batch per transaction, so chats in progress get the database between batches
(a batch is sized to hold the database a few milliseconds at most);
each delete re-checks `updated_at` inside its transaction, so a thread that
receives a message during the sweep survives it. One sweeper runs at a time
per database, so any number of processes can start sweeps and only one works
(SQLite: a lease row taken in a write transaction; PostgreSQL: an advisory
lock held by the sweep's own session). Every sweep is logged and recorded in
the `sweeps` table.

The policy, the batches and the report are here, for both engines; what is SQL
is the engine's `saver.maintenance` (`checkpointers.engines.base.Maintenance`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from checkpointers.threads import checked_user

if TYPE_CHECKING:
    from checkpointers.engines.postgres.saver import PostgresThreadSaver
    from checkpointers.engines.sqlite.saver import ThreadSaver

    Saver = ThreadSaver | PostgresThreadSaver

log = logging.getLogger("threadkeeper.retention")

STRATEGIES = ("delete", "keep_latest")
MAX_DAYS = 36_500
"""The longest retention, 100 years: a longer one reaches before year 1 (`OverflowError`)."""
RENEW_SECONDS = 60
"""A long sweep renews its lease this often (a SQLite lease lasts ten times as long)."""


class RetentionSettingError(ValueError):
    """A retention setting has a value that cannot be used."""


@dataclass(frozen=True)
class RetentionPolicy:
    days: float = 30.0
    """Threads not updated for this many days expire; 0 keeps every thread forever."""
    strategy: str = "delete"
    """`delete`: the whole thread goes. `keep_latest`: only its latest checkpoint stays."""
    interval_minutes: float = 60.0
    """How often `serve` and `langgraph dev` sweep."""
    sweep_limit: int = 10_000
    """At most this many threads per sweep; the next sweep goes on where it stopped."""
    batch_size: int = 50
    """At most this many threads per transaction; fewer when that many would hold
    the database longer than `Sweeper.hold_s` (a chat turn waits for a transaction)."""

    def __post_init__(self) -> None:
        if not 0 <= self.days <= MAX_DAYS:  # NaN fails both comparisons
            raise RetentionSettingError(
                f"retention days must be 0 (keep forever) or a number up to {MAX_DAYS:,}, not {self.days}"
            )
        if self.strategy not in STRATEGIES:
            raise RetentionSettingError(f"retention strategy must be 'delete' or 'keep_latest', not {self.strategy!r}")
        if not 0 < self.interval_minutes <= MAX_DAYS * 1440:  # NaN and infinity fail it too
            raise RetentionSettingError(
                f"the sweep interval must be a number of minutes, more than 0 and up to {MAX_DAYS * 1440:,}, "
                f"not {self.interval_minutes}"
            )
        if not 1 <= self.batch_size <= 10_000:
            raise RetentionSettingError(f"the sweep batch size must be between 1 and 10000, not {self.batch_size}")
        if self.sweep_limit < 1:
            raise RetentionSettingError(f"the sweep limit must be at least 1 thread, not {self.sweep_limit}")

    @property
    def enabled(self) -> bool:
        return self.days > 0

    def describe(self) -> str:
        if not self.enabled:
            return "retention: threads are kept forever (THREADKEEPER_RETENTION_DAYS=0)"
        return (
            f"retention: {self.strategy} threads not updated for {self.days:g} days, "
            f"sweeping every {self.interval_minutes:g} minutes (up to {self.sweep_limit:,} threads, "
            f"at most {self.batch_size} a transaction)"
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, config_file: str | Path | None = None) -> RetentionPolicy:
        """The policy from `langgraph.json`'s `checkpointer.ttl`, then the environment.

        `config_file` defaults to `$THREADKEEPER_LANGGRAPH_JSON`, else
        `./langgraph.json` if there is one.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        path = config_file or env.get("THREADKEEPER_LANGGRAPH_JSON") or "langgraph.json"
        values.update(_ttl_settings(Path(path), required=bool(config_file or env.get("THREADKEEPER_LANGGRAPH_JSON"))))
        for name, field, kind in (
            ("THREADKEEPER_RETENTION_DAYS", "days", float),
            ("THREADKEEPER_RETENTION_STRATEGY", "strategy", str),
            ("THREADKEEPER_SWEEP_INTERVAL_MINUTES", "interval_minutes", float),
            ("THREADKEEPER_SWEEP_LIMIT", "sweep_limit", int),
            ("THREADKEEPER_SWEEP_BATCH", "batch_size", int),
        ):
            raw = env.get(name)
            if raw not in (None, ""):
                try:
                    values[field] = kind(raw.strip())
                except ValueError:
                    raise RetentionSettingError(f"{name} must be a {kind.__name__}, not {raw!r}") from None
        return cls(**values)


def _ttl_settings(path: Path, *, required: bool) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise RetentionSettingError(f"{path} does not exist (THREADKEEPER_LANGGRAPH_JSON)")
        return {}
    try:
        ttl = (json.loads(path.read_text()).get("checkpointer") or {}).get("ttl") or {}
    except (OSError, ValueError, AttributeError) as exc:
        raise RetentionSettingError(f"cannot read checkpointer.ttl from {path}: {exc}") from None
    if not isinstance(ttl, dict):
        raise RetentionSettingError(f"checkpointer.ttl in {path} must be an object")
    values: dict[str, Any] = {}
    try:
        if "default_ttl" in ttl:
            values["days"] = float(ttl["default_ttl"] or 0) / (24 * 60)
        if "strategy" in ttl:
            values["strategy"] = str(ttl["strategy"])
        if "sweep_interval_minutes" in ttl:
            values["interval_minutes"] = float(ttl["sweep_interval_minutes"])
        if "sweep_limit" in ttl:
            values["sweep_limit"] = int(ttl["sweep_limit"])
    except (TypeError, ValueError) as exc:
        raise RetentionSettingError(f"checkpointer.ttl in {path} has a value that is not a number: {exc}") from None
    return values


@dataclass(frozen=True)
class SweepReport:
    started_at: str
    finished_at: str
    strategy: str
    cutoff: str
    threads: int
    """Threads deleted (or compacted); for a dry run, the threads that would be."""
    bytes: int
    """About how many bytes of database pages and attachment files were freed."""
    dry_run: bool
    skipped: str | None = None
    """Why nothing was done (another sweep holds the lease, retention is off)."""
    sample: tuple[str, ...] = ()
    """For a dry run, the first expired thread ids."""

    def describe(self) -> str:
        if self.skipped:
            return f"sweep skipped: {self.skipped}"
        verb = {"delete": "deleted", "keep_latest": "compacted"}[self.strategy]
        cutoff = self.cutoff[:19].replace("T", " ")
        if self.dry_run:
            return f"dry run: {self.threads:,} threads last updated before {cutoff} UTC would be {verb}"
        return f"sweep {verb} {self.threads:,} threads last updated before {cutoff} UTC, freeing about {self.bytes:,} bytes"


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


class Sweeper:
    """Sweeps one store by one policy. `clock` returns the current time (tests inject one).

    After each batch the sweeper rests `yield_factor` times as long as the
    batch took (at least `pause_s`), so by default it holds the database at
    most a quarter of the time and chat turns keep their pace. Each batch is
    sized from the time the last one took per thread, so it holds the database
    about `hold_s` (a chat turn that arrives meanwhile waits that long at most),
    and never more than the policy's `batch_size` threads.
    """

    wait_for_wal = True
    """Truncate the WAL at the end even if that means waiting for readers (the loop says no)."""
    hold_s = 0.003
    """How long one sweep transaction (a batch, a step of compaction) should hold the database."""
    first_batch = 4
    """Threads in the first batch, before there is a time per thread to size batches by."""

    def __init__(
        self,
        saver: Saver,
        policy: RetentionPolicy,
        *,
        clock: Callable[[], datetime] | None = None,
        pause_s: float = 0.001,
        yield_factor: float = 3.0,
        stop: threading.Event | None = None,
    ) -> None:
        """`stop`: once set, the sweep ends after its current batch (a server shutting down)."""
        self.saver = saver
        self.stop = stop
        self.policy = policy
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.pause_s = pause_s
        self.yield_factor = yield_factor
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.store = saver.maintenance

    def cutoff(self) -> str:
        """Threads last updated before this instant have expired."""
        return _iso(self.clock() - timedelta(days=self.policy.days))

    # -- the steps of a sweep ---------------------------------------------------

    def expired(self, cutoff: str, limit: int, after: tuple[str, str] | None = None) -> list[tuple[str, str]]:
        """Up to `limit` expired `(updated_at, thread_id)`, oldest first, after `after`.

        For `keep_latest`, only threads that still have more than one checkpoint.
        """
        return self.store.expired(cutoff, limit, after, keep_latest=self.policy.strategy == "keep_latest")

    def expire(self, thread_ids: list[str], cutoff: str) -> tuple[int, int]:
        """Delete or compact these threads if they are still expired; (threads, attachment bytes)."""
        if self.policy.strategy == "keep_latest":
            self.saver.prune(thread_ids, strategy="keep_latest", updated_before=cutoff)
            return len(thread_ids), 0
        attached = self.store.attachment_bytes(thread_ids, cutoff)
        deleted = self.saver.delete_threads(thread_ids, updated_before=cutoff, purge=False)
        return deleted, attached if deleted else 0

    def sweep(self, *, dry_run: bool = False) -> SweepReport:
        """One sweep of every expired thread, batch by batch; recorded and logged."""
        started = _iso(datetime.now(timezone.utc))
        cutoff = self.cutoff()
        if not self.policy.enabled:
            return self._finish(SweepReport(started, started, self.policy.strategy, cutoff, 0, 0, dry_run,
                                            skipped="retention is off (days = 0)"), record=False)
        if dry_run:
            return self._dry_run(started, cutoff)
        if not self._acquire():
            return self._finish(SweepReport(started, started, self.policy.strategy, cutoff, 0, 0, dry_run,
                                            skipped="another sweep of this database is running"), record=False)
        try:
            used_before = self.store.bytes_in_use()
            threads = attached = 0
            after: tuple[str, str] | None = None
            seen = 0
            size = min(self.first_batch, self.policy.batch_size)
            renewed = time.monotonic()
            while seen < self.policy.sweep_limit and not (self.stop is not None and self.stop.is_set()) and (
                batch := self.expired(cutoff, min(size, self.policy.sweep_limit - seen), after)
            ):
                began = time.perf_counter()
                done, freed = self.expire([thread_id for _, thread_id in batch], cutoff)
                took = time.perf_counter() - began
                threads += done
                attached += freed
                seen += len(batch)
                after = tuple(batch[-1])
                size = max(1, min(self.policy.batch_size, int(self.hold_s * len(batch) / max(took, 1e-6))))
                if time.monotonic() - renewed > RENEW_SECONDS:
                    self.store.renew_lease(self.owner)
                    renewed = time.monotonic()
                self._rest(took)
            if threads:
                self.store.erase_traces(wait=self.wait_for_wal, between_steps=self._rest, hold_s=self.hold_s)
            freed = max(0, used_before - self.store.bytes_in_use())
            report = SweepReport(
                started, _iso(datetime.now(timezone.utc)), self.policy.strategy, cutoff, threads, freed + attached,
                dry_run,
            )
            return self._finish(report, record=True)
        finally:
            self._release()

    def _rest(self, busy_s: float) -> None:
        """Let waiting chat turns have the database (see the class docstring), and
        copy the WAL into the file meanwhile (see `_checkpoint_wal`)."""
        until = time.monotonic() + max(self.pause_s, busy_s * self.yield_factor)
        self._checkpoint_wal()
        time.sleep(max(0.0, until - time.monotonic()))

    def _checkpoint_wal(self) -> None:
        """The engine's housework between batches (SQLite copies the WAL into the file)."""
        self.store.between_batches()

    def _dry_run(self, started: str, cutoff: str) -> SweepReport:
        count, sample = 0, []
        after = None
        while batch := self.expired(cutoff, 1000, after):
            count += len(batch)
            sample += [t for _, t in batch[: max(0, 20 - len(sample))]]
            after = tuple(batch[-1])
        return self._finish(
            SweepReport(started, _iso(datetime.now(timezone.utc)), self.policy.strategy, cutoff, count, 0, True,
                        sample=tuple(sample)),
            record=True,
        )

    def _finish(self, report: SweepReport, *, record: bool) -> SweepReport:
        log.info(report.describe())
        if record:
            self.store.record_sweep(report, self.owner, keep_latest=self.policy.strategy == "keep_latest")
        return report

    # -- one sweeper per database ----------------------------------------------

    def _acquire(self) -> bool:
        return self.store.take_lease(self.owner)

    def _release(self) -> None:
        self.store.release_lease(self.owner)


def recent_sweeps(saver: Saver, limit: int = 10) -> list[dict[str, Any]]:
    """The latest recorded sweeps, newest first (for `threadkeeper status` and statistics)."""
    return saver.maintenance.recent_sweeps(limit)


def delete_user(saver: Saver, user_id: str | None) -> int:
    """Delete every thread of a user, with attachments, take their id out of the usage
    statistics, and erase their traces; returns how many threads.

    What "erase their traces" covers differs by engine: see docs/storage.md,
    "Erasure on PostgreSQL"."""
    user_id = checked_user(user_id)
    deleted = 0
    while page := saver.threads.list(user_id, limit=500).threads:
        deleted += saver.delete_threads([t.thread_id for t in page], purge=False)
    if user_id is not None:
        saver.maintenance.forget_user(user_id)
    saver.maintenance.erase_traces()
    return deleted


class SweepLoop:
    """Sweeps in a background thread every `policy.interval_minutes`.

    Started by `threadkeeper serve` and by the `langgraph dev` checkpointer
    factory with the saver the app itself uses: sharing its connection, a chat
    turn that waits for a sweep batch gets the database the moment the batch
    ends (two connections meet at SQLite's lock instead, whose busy wait
    sleeps in steps of milliseconds). Several loops on one database are fine:
    the lease picks one.
    """

    def __init__(self, saver: Saver, policy: RetentionPolicy) -> None:
        self.saver = saver
        self.policy = policy
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> SweepLoop:
        if self.policy.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="threadkeeper-sweeper", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """End the loop; a sweep in progress ends after its current batch and lets go of its lease."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        sweeper = Sweeper(self.saver, self.policy, stop=self._stop)
        sweeper.wait_for_wal = False
        while not self._stop.is_set():
            try:
                sweeper.sweep()
            except Exception:  # a failed sweep must not end the loop; the next one retries
                log.exception("retention sweep failed")
            self._stop.wait(self.policy.interval_minutes * 60)
