"""Writers killed with SIGKILL at random moments, and a disk that fills up (harness: tests/crash.py).

The promise under test (README, "How a turn is written"): `invoke` returns only
after the whole turn is on disk, with LangGraph's default durability, and WAL
with `synchronous=NORMAL` loses nothing when a process is killed. So every turn
a writer was told is done must survive any number of kills, and the file must
pass `PRAGMA integrity_check` after each. A full disk is one clear sentence for
the caller, not a flood of tracebacks; reads go on, and writing resumes as soon
as there is space again. `bench/crash.py` runs the same with more kills.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from checkpointers import StoreError
from tests.crash import WEB_REPLY, SmallDisk, chat_text, full_disk_cycle, kill_library_writers, kill_web_server, web_full_disk_cycle
from tests.fake_openai import FakeOpenAI

pytestmark = pytest.mark.slow

MAX_LOG_RECORDS_WHILE_FULL = 5
"""A full disk is worth a log line or two (the issue saw ~190 tracebacks in a few seconds)."""


def test_a_library_writer_killed_50_times_at_random_moments_keeps_every_acknowledged_turn(tmp_path: Path):
    seed = random.randrange(2**32)
    run = kill_library_writers(tmp_path / "threadkeeper.db", 50, rng=random.Random(seed), log=tmp_path / "writers.log")
    context = f"seed {seed}; writers' stderr: {(tmp_path / 'writers.log').read_text()[-2000:]}"
    assert run.errors == [], context
    assert run.kills == 50
    assert run.integrity_checks == 50 and run.integrity_failures == [], context
    assert run.acked_turns >= run.acks_awaited > 0  # the writers got work done between kills
    assert run.lost == [], context


def test_threadkeeper_serve_killed_mid_stream_keeps_every_acknowledged_turn_and_reopens_threads(tmp_path: Path):
    seed = random.randrange(2**32)
    data = tmp_path / "data"
    with FakeOpenAI() as model:
        model.plan.extend([("reply", WEB_REPLY)] * 10_000)
        run = kill_web_server(data, 3, model_url=model.base_url, rng=random.Random(seed), logs=tmp_path / "logs")
    logs = "\n".join(p.read_text()[-1500:] for p in sorted((tmp_path / "logs").glob("*.log")))
    context = f"seed {seed}; server logs: {logs}"
    assert run.errors == [], context
    assert run.kills == 3 and run.mid_stream == 3
    assert run.integrity_failures == [], context
    assert run.acked_turns >= 3
    assert run.reopen_failures == [] and run.reopened >= 3, context
    assert run.lost == [], context


@pytest.fixture
def small_disk(tmp_path: Path):
    with SmallDisk(tmp_path / "disk", 4 * 1024 * 1024) as disk:
        yield disk


def one_clear_sentence(text: str) -> bool:
    return "\n" not in text and len(text) < 300 and not any(w in text for w in ("sqlite3", "OperationalError", "Traceback"))


def test_a_full_disk_is_one_clear_error_reads_go_on_and_writing_resumes_when_space_returns(small_disk: SmallDisk):
    report = full_disk_cycle(small_disk)
    assert isinstance(report.error, StoreError), repr(report.error)
    message = str(report.error)
    assert one_clear_sentence(message) and (small_disk.kind != "tmpfs" or "full" in message), message
    # Every later write fails the same way, at once, on any thread.
    assert all(isinstance(e, StoreError) and one_clear_sentence(str(e)) for e in report.errors_while_full), report.errors_while_full
    tracebacks = [r for r in report.log_records_while_full if r.exc_info]
    assert len(report.log_records_while_full) <= MAX_LOG_RECORDS_WHILE_FULL and not tracebacks, [
        logging.Formatter().format(r)[:300] for r in report.log_records_while_full
    ]
    assert report.read_failures_while_full == []
    assert report.resume_failures == []
    assert report.integrity == "ok"
    assert report.lost == []


def test_the_web_chat_on_a_full_disk_shows_one_sentence_and_pages_still_load(small_disk: SmallDisk):
    report = web_full_disk_cycle(small_disk)
    assert report.raised is None, repr(report.raised)
    assert report.bubble is not None, "no message was refused on a full disk"
    text = chat_text(report.bubble)
    assert report.bubble["metadata"]["title"] == "⚠ Not answered"
    assert one_clear_sentence(text) and (small_disk.kind != "tmpfs" or "full" in text), text
    assert report.load_failure is None  # the page loads and lists the thread
    assert report.open_failure is None  # and the thread opens
    tracebacks = [r for r in report.log_records_while_full if r.exc_info]
    assert len(report.log_records_while_full) <= MAX_LOG_RECORDS_WHILE_FULL and not tracebacks, [
        logging.Formatter().format(r)[:300] for r in report.log_records_while_full
    ]
    assert report.resume_failure is None
    assert report.integrity == "ok"
