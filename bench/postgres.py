"""PostgreSQL benchmark: threadkeeper's PostgreSQL engine beside LangGraph's stock `PostgresSaver`.

    make bench                                   # runs this after the SQLite benchmarks
    python -m bench.postgres --turns 300 --threads 3000
    python -m bench.postgres --bytes             # only threadkeeper's bytes per turn, table by table

Everything goes through the product's agent graph (trim -> model) with an
instant model, so what is measured is the store's own work. Each saver gets
a schema of its own in a database this run creates on
`$THREADKEEPER_BENCH_POSTGRES_URL` (default `postgresql://postgres@127.0.0.1:5432/test`)
and drops afterwards. Printed: bytes per turn after the long thread (tables,
indexes and TOAST, `pg_total_relation_size`), turn N / turn 10, a user's 20
newest threads at two index sizes, and turns per second with 1 and 2 processes.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import sys
import time
import uuid
from contextlib import contextmanager
from typing import Any, Iterator
from urllib.parse import quote

import psycopg
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.postgres import PostgresSaver
from psycopg import sql

from bench.agent import InstantModel, run_thread
from bench.storage import Report, around, sentence, timed
from checkpointers import open_saver
from graph import Settings, build_graph

ADMIN_URL = os.environ.get("THREADKEEPER_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@contextmanager
def bench_database() -> Iterator[str]:
    name = f"tk_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    head, _, rest = ADMIN_URL.partition("://")
    try:
        yield f"{head}://{rest.split('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def schema_url(database_url: str, schema: str) -> str:
    """A URL whose connections use `schema` (created here)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    return f"{database_url}?options={quote(f'-csearch_path={schema}')}"


def schema_bytes(url: str) -> int:
    """Tables with their indexes and TOAST in the URL's schema, after a VACUUM brings the visibility maps up to date."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM")
        (total,) = conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relkind = 'r'"
        ).fetchone()
    return int(total)


def print_tables(url: str, turns: int) -> None:
    """Bytes per turn of each table (after `schema_bytes`' VACUUM): heap, indexes and TOAST, and rows."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT c.relname, pg_relation_size(c.oid), pg_indexes_size(c.oid), "
            "pg_total_relation_size(c.oid) - pg_relation_size(c.oid) - pg_indexes_size(c.oid), c.reltuples "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind = 'r' ORDER BY pg_total_relation_size(c.oid) DESC"
        ).fetchall()
    print(f"  {'table':20} {'all B/turn':>10} {'heap':>8} {'indexes':>8} {'toast':>8} {'rows/turn':>10}")
    for name, heap, indexes, toast, tuples in rows:
        total = heap + indexes + toast
        if total / turns >= 10:
            print(
                f"  {name:20} {total / turns:10.1f} {heap / turns:8.1f} {indexes / turns:8.1f} {toast / turns:8.1f} "
                f"{max(tuples, 0) / turns:10.2f}"
            )


def bench_bytes(report: Report, database_url: str, turns: int) -> None:
    print(f"\n== the agent graph, one thread, {turns} turns, on PostgreSQL: bytes only ==", flush=True)
    url = schema_url(database_url, "ours_bytes")
    with open_saver(url) as saver:
        run_thread(saver, turns)
    per_turn = schema_bytes(url) / turns
    print_tables(url, turns)
    report.check(f"bytes per turn after {turns} turns, threadkeeper", per_turn, "<= 3072 B", per_turn <= 3072, " B")


def bench_long_thread(report: Report, database_url: str, turns: int) -> None:
    print(f"\n== the agent graph, one thread, {turns} turns, on PostgreSQL ==", flush=True)
    ours_url = schema_url(database_url, "ours_long")
    with open_saver(ours_url) as saver:
        ours = run_thread(saver, turns)
    stock_url = schema_url(database_url, "stock_long")
    with PostgresSaver.from_conn_string(stock_url) as stock_saver:
        stock_saver.setup()
        stock = run_thread(stock_saver, turns)
    ours_bytes, stock_bytes = schema_bytes(ours_url) / turns, schema_bytes(stock_url) / turns
    report.check(f"bytes per turn after {turns} turns, threadkeeper", ours_bytes, "<= 3072 B", ours_bytes <= 3072, " B")
    report.check("  (stock PostgresSaver, same graph and turns)", stock_bytes, "reference", True, " B")
    ratio_ours, ratio_stock = around(ours, turns) / around(ours, 10), around(stock, turns) / around(stock, 10)
    report.check(f"whole turn {turns} / turn 10, threadkeeper", ratio_ours, "<= 1.5", ratio_ours <= 1.5)
    report.check(f"  (whole turn {turns} / turn 10, stock PostgresSaver)", ratio_stock, "reference", True)
    for turn in (10, turns):
        a, b = around(ours, turn), around(stock, turn)
        report.check(f"  (turn {turn}: threadkeeper {a * 1000:.2f} ms, PostgresSaver {b * 1000:.2f} ms)", a / b, "reference", True)


def fill_threads(saver: Any, start: int, count: int, per_user: int = 50) -> None:
    """`count` two-turn threads through the agent graph, `per_user` threads to each user."""
    app = build_graph(checkpointer=saver, model=InstantModel(), settings=Settings())
    rng = random.Random(start)
    for i in range(start, start + count):
        config = {"configurable": {"thread_id": f"t{i:06d}", "user_id": f"user{i // per_user}"}}
        for _ in range(2):
            app.invoke({"messages": [HumanMessage(sentence(rng, 100))]}, config)


def bench_index(report: Report, database_url: str, small: int, large: int) -> None:
    print(f"\n== thread index on PostgreSQL: {small:,} and {large:,} threads ==", flush=True)
    with open_saver(schema_url(database_url, "ours_index")) as saver:
        fill_threads(saver, 0, small)
        at_small = timed(lambda: saver.threads.list("user1", limit=20), 201) * 1000
        fill_threads(saver, small, large - small)
        at_large = timed(lambda: saver.threads.list("user1", limit=20), 201) * 1000
    report.check(f"a user's 20 newest threads among {large:,}", at_large, "<= 5 ms", at_large <= 5.0, " ms")
    report.check(f"  the same / the same among {small:,}", at_large / at_small, "<= 1.2", at_large / at_small <= 1.2)


def _worker(url: str, worker: int, seconds: float, results: Any, start: Any) -> None:
    with open_saver(url) as saver:
        app = build_graph(checkpointer=saver, model=InstantModel(), settings=Settings())
        rng = random.Random(worker)
        warm_up = {"configurable": {"thread_id": f"w{worker}-warm-up", "user_id": f"w{worker}"}}
        app.invoke({"messages": [HumanMessage(sentence(rng, 100))]}, warm_up)
        start.wait()  # every worker has imported and connected: they turn for the same seconds
        turns, thread, deadline = 0, 0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            if turns % 10 == 0:
                thread += 1
            config = {"configurable": {"thread_id": f"w{worker}-{thread}", "user_id": f"w{worker}"}}
            app.invoke({"messages": [HumanMessage(sentence(rng, 100))]}, config)
            turns += 1
        results.put(turns)


def turns_per_second(url: str, processes: int, seconds: float) -> float:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    start = context.Barrier(processes)
    workers = [context.Process(target=_worker, args=(url, i, seconds, results, start)) for i in range(processes)]
    for w in workers:
        w.start()
    total = sum(results.get() for _ in workers)
    for w in workers:
        w.join()
    return total / seconds


def bench_processes(report: Report, database_url: str, seconds: float) -> None:
    print(f"\n== turns per second, 1 and 2 processes, {seconds:.0f} s each, {os.cpu_count()} cores ==", flush=True)
    url = schema_url(database_url, "ours_processes")
    with open_saver(url):
        pass  # migrate once before the workers start
    one = turns_per_second(url, 1, seconds)
    two = turns_per_second(url, 2, seconds)
    report.check("turns per second, 1 process", one, "reference", True)
    report.check("turns per second, 2 processes / 1 process", two / one, ">= 1.6", two / one >= 1.6)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=1000, help="turns in the long thread (default 1000)")
    parser.add_argument("--threads", type=int, default=10_000, help="threads in the large index (default 10000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of each throughput run (default 10)")
    parser.add_argument(
        "--bytes", action="store_true", help="only threadkeeper's bytes per turn after --turns turns, table by table"
    )
    args = parser.parse_args(argv)
    report = Report()
    with bench_database() as database_url:
        if args.bytes:
            bench_bytes(report, database_url, args.turns)
            report.finish(what="PostgreSQL checks")
            return 0
        bench_long_thread(report, database_url, args.turns)
        bench_index(report, database_url, max(1, args.threads // 10), args.threads)
        bench_processes(report, database_url, args.seconds)
    report.finish(what="PostgreSQL checks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
