"""Retention benchmark: sweep 10,000 expired threads out of 100,000 while chats go on.

    make bench                                  # runs this after the web benchmark
    python -m bench.retention --threads 20000   # a quicker look

The store is filled by writing one two-turn thread through the graph and
cloning its rows (every table keyed by thread, and its full-text entries) in
SQL, so 100,000 threads take seconds to make yet look exactly like threads the
graph wrote. The oldest tenth were last updated 40 days ago. The sweeper runs
as `threadkeeper serve` runs it: in a background thread sharing the app's
saver, while the main thread holds chat turns on live threads through the
graph. The p99 latency of those turns is compared with
the same turns when no sweep runs, in the same process and run.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from langchain_core.messages import HumanMessage

from bench.storage import PER_USER, Report, chat_graph, print_machine, sentence
from checkpointers import ThreadSaver
from checkpointers.retention import RetentionPolicy, Sweeper

TEMPLATE = "template"


def thread_tables(conn: sqlite3.Connection) -> dict[str, list[str]]:
    """Every table keyed by thread (besides `threads`), with its other columns."""
    tables = {}
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'threads'"):
        columns = [row[1] for row in conn.execute(f"PRAGMA table_info({name})")]
        if "thread_key" in columns:
            tables[name] = [c for c in columns if c != "thread_key"]
    return tables


def clone_threads(saver: ThreadSaver, count: int, expired: int) -> int:
    """`count` copies of the template thread; the first `expired` were last updated 40 days ago."""
    now = datetime.now(timezone.utc)
    old = now - timedelta(days=40)
    conn = saver.conn
    (template_key,) = conn.execute("SELECT thread_key FROM threads WHERE thread_id = ?", (TEMPLATE,)).fetchone()
    words = saver._thread_search_rows(template_key)
    shift = 32
    with saver._write():
        conn.execute("CREATE TEMP TABLE clones (thread_id TEXT, user_id TEXT, updated_at TEXT)")
        rows = []
        for i in range(count):
            stale = i < expired
            stamp = (old if stale else now) - timedelta(seconds=count - i)
            rows.append((f"t{i:06d}", f"user{i // PER_USER}", stamp.isoformat(timespec="microseconds")))
        conn.executemany("INSERT INTO clones VALUES (?, ?, ?)", rows)
        conn.execute(
            "INSERT INTO threads (thread_id, user_id, title, created_at, updated_at, message_count, pinned, metadata, "
            "next_value_no, next_message_no) SELECT c.thread_id, c.user_id, t.title, c.updated_at, c.updated_at, "
            "t.message_count, 0, t.metadata, t.next_value_no, t.next_message_no FROM clones AS c, threads AS t "
            "WHERE t.thread_key = ? ORDER BY c.rowid",
            (template_key,),
        )
        for table, columns in thread_tables(conn).items():
            cols = ", ".join(columns)
            picked = ", ".join(f"x.{c}" for c in columns)
            conn.execute(
                f"INSERT OR REPLACE INTO {table} (thread_key, {cols}) SELECT n.thread_key, {picked} FROM {table} AS x, "
                "threads AS n JOIN clones AS c ON c.thread_id = n.thread_id WHERE x.thread_key = ?",
                (template_key,),
            )
        keys = [k for (k,) in conn.execute("SELECT n.thread_key FROM threads AS n JOIN clones USING (thread_id)")]
        conn.executemany(
            "INSERT INTO message_search (rowid, body) VALUES (?, ?)",
            (((key << shift) | (rowid & ((1 << shift) - 1)), body) for key in keys for rowid, body in words),
        )
        conn.execute("DROP TABLE clones")
    return expired


def turn_latencies(saver: ThreadSaver, turns: int, phase: str, start: int = 0) -> list[float]:
    """Chat turns taking 20 live threads in turn, through the graph; seconds each.

    Turn `start + n` of a phase always goes to the same thread with the same
    text, however the turns are split into calls.
    """
    costs = []
    rng = random.Random(f"{phase}-{start}")
    graph = chat_graph(saver, rng)
    for n in range(start, start + turns):
        config = {"configurable": {"thread_id": f"live-{phase}-{n % 20}", "user_id": "live"}}
        start = time.perf_counter()
        graph.invoke({"messages": [HumanMessage(sentence(rng, 100))]}, config)
        costs.append(time.perf_counter() - start)
    return costs


def p99(costs: list[float]) -> float:
    ordered = sorted(costs)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def bench_sweep(report: Report, tmp: Path, threads: int, policy: RetentionPolicy) -> None:
    print(f"\n== sweeping {threads // 10:,} expired threads out of {threads:,} while chats go on ==", flush=True)
    path = tmp / "retention.db"
    with ThreadSaver.from_conn_string(f"sqlite:///{path}") as saver:
        graph = chat_graph(saver, random.Random(1))
        config = {"configurable": {"thread_id": TEMPLATE, "user_id": "template"}}
        for _ in range(2):
            graph.invoke({"messages": [HumanMessage(sentence(random.Random(2), 100))]}, config)
        start = time.perf_counter()
        expired = clone_threads(saver, threads, threads // 10)
        saver.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        print(f"  made {threads:,} threads ({expired:,} expired) in {time.perf_counter() - start:.1f} s; "
              f"file {path.stat().st_size / 1e6:,.1f} MB", flush=True)

        chat = ThreadSaver(path)  # the web chat's connection
        try:
            turn_latencies(chat, 500, "warm-up")  # the page cache
            quiet = turn_latencies(chat, 1000, "quiet")
            done = threading.Event()
            result: dict = {}

            def sweep() -> None:
                sweeper = Sweeper(chat, policy)  # as SweepLoop runs it in serve
                sweeper.wait_for_wal = False
                try:
                    began = time.perf_counter()
                    result["report"] = sweeper.sweep()
                    result["seconds"] = time.perf_counter() - began
                finally:
                    done.set()

            worker = threading.Thread(target=sweep)
            worker.start()
            busy: list[float] = []
            while not done.is_set():
                busy += turn_latencies(chat, 10, "busy", len(busy))
            worker.join()
        finally:
            chat.close()
        swept = result["report"]
        assert swept.threads == expired, (swept.threads, expired)
        assert saver.conn.execute("SELECT count(*) FROM threads WHERE thread_id LIKE 'live-%'").fetchone()[0] > 0
        (left,) = saver.conn.execute("SELECT count(*) FROM threads WHERE thread_id LIKE 't0%'").fetchone()
        assert left == threads - expired, (left, threads - expired)
    rate = swept.threads / result["seconds"]
    report.figure("sweep_threads_per_s", rate)
    ratio = p99(busy) / p99(quiet)
    report.figure("sweep_p99_ratio", ratio)
    print(f"  swept {swept.threads:,} threads in {result['seconds']:.2f} s, freeing about {swept.bytes / 1e6:,.1f} MB")
    print(f"  chat turns: p99 {p99(quiet) * 1000:.2f} ms with no sweep ({len(quiet)} turns), "
          f"{p99(busy) * 1000:.2f} ms during the sweep ({len(busy)} turns); medians "
          f"{statistics.median(quiet) * 1000:.2f} and {statistics.median(busy) * 1000:.2f} ms")
    report.check("sweep rate", rate, "reference", True, " threads/s")
    report.check("p99 chat turn during a sweep / with no sweep", ratio, "<= 1.5", ratio <= 1.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=100_000, help="threads in the file (default 100000)")
    parser.add_argument("--batch", type=int, default=RetentionPolicy().batch_size, help="threads per sweep transaction")
    args = parser.parse_args(argv)
    report = Report()
    print_machine()
    with tempfile.TemporaryDirectory(prefix="tk-bench-retention-") as tmp:
        bench_sweep(report, Path(tmp), args.threads, RetentionPolicy(days=30, batch_size=args.batch))
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
