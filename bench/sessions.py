"""Sessions benchmark: filtered session listings over 100,000 sessions, and import-json speed.

    make bench                                  # runs this after the web benchmark
    python -m bench.sessions --sessions 20000   # a quicker look

Listing: `saver.sessions.list_recent_sessions(user, max_count=20,
metadata_filter=...)` on a store of 100,000 sessions, all of one user (the
worst case for the user's index range; spread over many users each query
reads only that user's rows). Each session has typed metadata like an
agent-memory store's (a topic, a priority, a score, a flag, a region, a
bytes tag), stored exactly as `put_session` stores it; the rows are inserted
in bulk, with update times spread over a year, so that building the store
takes seconds. Figures are medians of repeated queries on a warm cache.

Import: `threadkeeper import-json` on a generated folder of session files
(8 messages each, one in ten with a SQLite database beside it), then again
(every session already there).
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from langchain_core.messages import AIMessage, HumanMessage, messages_to_dict

from bench.storage import Report, print_machine, sentence, timed
from checkpointers import ThreadSaver, open_saver
from checkpointers import metadata as md
from checkpointers.conversation import iso
from checkpointers.importer import import_json_folder

TOPICS = ["billing", "bugs", "onboarding", "sales", "other"]
REGIONS = ["eu", "us", "apac"]
YEAR_START = datetime(2025, 1, 1, tzinfo=timezone.utc)


def fill_sessions(saver: ThreadSaver, count: int, user: str, rng: random.Random) -> None:
    rows = []
    for n in range(count):
        metadata = {
            "topic": rng.choice(TOPICS),
            "priority": rng.randrange(10),
            "score": round(rng.uniform(0, 1), 3),
            "open": rng.random() < 0.3,
            "region": rng.choice(REGIONS),
            "tag": bytes([rng.randrange(256)]),
        }
        if rng.random() < 0.0001:
            metadata["escalated"] = True  # the rare case: about 1 session in 10,000
        created = YEAR_START + timedelta(seconds=rng.randrange(365 * 86_400))
        rows.append((str(uuid.UUID(int=rng.getrandbits(128))), user, iso(created), iso(created), md.dumps(metadata)))
    with saver._write():
        saver.conn.executemany(
            "INSERT INTO threads (thread_id, user_id, created_at, updated_at, metadata) VALUES (?, ?, ?, ?, ?)", rows
        )
    saver.conn.execute("ANALYZE")


def bench_listing(report: Report, tmp: Path, count: int) -> None:
    print(f"\n== list_recent_sessions(max_count=20) over {count:,} sessions of one user ==", flush=True)
    with _open(tmp / "sessions.db") as saver:
        start = time.perf_counter()
        fill_sessions(saver, count, "alice", random.Random(1))
        print(f"  (store built in {time.perf_counter() - start:.1f} s)", flush=True)
        sessions = saver.sessions
        middle = YEAR_START + timedelta(days=180)
        cases = [
            ("topic = billing and priority >= 3 (about 1 in 8)", {"topic": "billing", "priority": {"$gte": 3}}, None),
            (
                "or / not / in: (open or priority > 7) and region not in (eu)",
                {"$or": [{"open": True}, {"priority": {"$gt": 7}}], "$not": {"region": {"$in": ["eu"]}}},
                None,
            ),
            ("score < 0.5 and tag (bytes) < 0x40, updated before mid-year", {"score": {"$lt": 0.5}, "tag": {"$lt": b"\x40"}}, middle),
        ]
        worst = 0.0
        for label, expr, before in cases:
            found = sessions.list_recent_sessions("alice", max_count=20, metadata_filter=expr, updated_before=before)
            assert len(found) == 20, label
            ms = timed(lambda: sessions.list_recent_sessions("alice", max_count=20, metadata_filter=expr, updated_before=before), 25) * 1000
            worst = max(worst, ms)
            report.check(f"  {label}", ms, "reference", True, " ms")
        report.figure("list_recent_sessions_ms", worst)
        report.check(f"list_recent_sessions(max_count=20) with a filter, {count:,} sessions (slowest above)", worst, "<= 10 ms", worst <= 10, " ms")
        rare = {"escalated": True}
        ms = timed(lambda: sessions.list_recent_sessions("alice", max_count=20, metadata_filter=rare), 5) * 1000
        report.check(f"  (a filter matching 1 in 10,000: fewer than 20 hits, so all {count:,} rows are read)", ms, "reference", True, " ms")
        plan = " | ".join(sessions.explain_recent_sessions("alice", metadata_filter=cases[0][1]))
        print(f"  plan: {plan}")


def _open(path: Path):
    return open_saver(f"sqlite:///{path}")


def write_folder(folder: Path, count: int, rng: random.Random) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    databases = 0
    for n in range(count):
        messages = []
        for turn in range(4):
            messages.append(HumanMessage(sentence(rng, 100)))
            messages.append(AIMessage(sentence(rng, 200)))
        path = folder / f"{uuid.UUID(int=rng.getrandbits(128))}.json"
        path.write_text(json.dumps(messages_to_dict(messages)))
        if n % 10 == 0:
            conn = sqlite3.connect(path.with_suffix(".db"))
            conn.execute("CREATE TABLE orders (id INTEGER, total REAL)")
            conn.executemany("INSERT INTO orders VALUES (?, ?)", [(i, i * 1.5) for i in range(50)])
            conn.commit()
            conn.close()
            databases += 1
    return databases


def bench_import(report: Report, tmp: Path, count: int) -> None:
    folder = tmp / "json-sessions"
    databases = write_folder(folder, count, random.Random(2))
    print(f"\n== import-json: {count:,} session files of 8 messages, {databases:,} with a database ==", flush=True)
    with _open(tmp / "imported.db") as saver:
        first = import_json_folder(saver, folder, user_id="alice", report=print)
        assert first.imported == count and first.failed == 0, first.describe()
        again = import_json_folder(saver, folder, user_id="alice", report=print)
        assert again.imported == 0 and again.skipped == count
    rate = report.figure("import_sessions_per_s", first.imported / first.seconds)
    report.check("import-json, sessions per second", rate, "reference", True, " /s")
    report.check("  (a second run, every session already there: files per second)", count / again.seconds, "reference", True, " /s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100_000, help="sessions in the store (default 100000)")
    parser.add_argument("--files", type=int, default=2_000, help="session files to import (default 2000)")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    report = Report()
    print_machine()
    with tempfile.TemporaryDirectory(prefix="tk-bench-") as tmp:
        bench_listing(report, Path(tmp), args.sessions)
        bench_import(report, Path(tmp), args.files)
    report.finish(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
