"""import-checkpoints benchmark: a stock SqliteSaver database of 1,000 threads moves in.

    make bench                                          # 1,000 threads x 50 turns
    python -m bench.import_stock --threads 100 --turns 20   # a quicker look
    python -m bench.import_stock --keep /tmp/stock.sqlite   # keep the source (and reuse it next time)

The source is what LangGraph's stock `SqliteSaver` (langgraph-checkpoint-sqlite)
writes through the real one-node chat graph (`MessagesState`, turns of a
100-character human message and a 200-character reply, metadata `user_id`):
no checkpoint is made by hand. To make it in minutes, `--workers` processes
(default: one per CPU) run graphs on threads of their own into the same file,
as the processes of a busy app would, with `synchronous=OFF` (the file's bytes
are the same; only its safety against a power cut during the benchmark is not).

Then `import_checkpoints` (what `threadkeeper import-checkpoints` runs) copies
it into a new store, and again (it must add nothing). Printed: threads and
checkpoints per second, the source's bytes and the store's growth, the
process's peak memory, and a check that a sample of threads reads back equal.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import resource
import sqlite3
import tempfile
import time
from pathlib import Path

from langchain_core.messages import HumanMessage
from langgraph.checkpoint.sqlite import SqliteSaver

from bench.storage import Report, chat_graph, file_bytes, print_machine, sentence
from checkpointers import ThreadSaver
from checkpointers.stock_import import CACHE_MESSAGES, import_checkpoints, open_stock_source

USERS = 50


def thread_id(n: int) -> str:
    return f"thread-{n:05d}"


def _write_threads(path: Path, numbers: list[int], turns: int) -> None:
    """One worker: the threads `numbers`, turn after turn, through the graph and the stock saver."""
    conn = sqlite3.connect(path, check_same_thread=False, timeout=600)
    conn.execute("PRAGMA synchronous = OFF")
    try:
        saver = SqliteSaver(conn)
        for n in numbers:
            rng = random.Random(n)
            graph = chat_graph(saver, rng)
            config = {"configurable": {"thread_id": thread_id(n)}, "metadata": {"user_id": f"user-{n % USERS}"}}
            for _ in range(turns):
                graph.invoke({"messages": [HumanMessage(sentence(rng, 100))]}, config)
    finally:
        conn.close()


def write_stock_database(path: Path, threads: int, turns: int, workers: int) -> float:
    """Seconds taken to write `threads` threads of `turns` turns with the stock SqliteSaver."""
    conn = sqlite3.connect(path)
    SqliteSaver(conn).setup()  # once, before the workers share the file
    conn.close()
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_write_threads, args=(path, list(range(w, threads, workers)), turns))
        for w in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise SystemExit(f"a worker writing the stock database failed (exit {process.exitcode})")
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - started


def count_rows(path: Path, *tables: str) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
    finally:
        conn.close()


def same_threads(source_url: str, store: Path, sample: list[str]) -> bool:
    """Whether each sampled thread lists the same checkpoints, with the same values, in both."""
    from bench.storage import chat_graph as graph_of

    with open_stock_source(source_url) as source, ThreadSaver.from_conn_string(f"sqlite:///{store}") as saver:
        theirs_graph, ours_graph = graph_of(source.saver, random.Random(0)), graph_of(saver, random.Random(0))
        for tid in sample:
            config = {"configurable": {"thread_id": tid}}
            theirs = [(t.config, t.checkpoint, t.metadata, t.parent_config) for t in source.saver.list(config)]
            ours = [(t.config, t.checkpoint, t.metadata, t.parent_config) for t in saver.list(config)]
            if theirs != ours or theirs_graph.get_state(config) != ours_graph.get_state(config):
                return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1_000, help="threads in the stock database (default 1000)")
    parser.add_argument("--turns", type=int, default=50, help="turns per thread (default 50)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes writing the source")
    parser.add_argument("--keep", type=Path, metavar="FILE", help="write the source here and keep it; reuse it if it is there")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    report = Report()
    print_machine()
    with tempfile.TemporaryDirectory(prefix="tk-bench-import-") as tmp:
        source = args.keep or Path(tmp) / "stock.sqlite"
        print(f"\n== a stock SqliteSaver database: {args.threads:,} threads x {args.turns} turns ==", flush=True)
        if args.keep and args.keep.exists():
            print(f"  reusing {args.keep}", flush=True)
        else:
            seconds = write_stock_database(source, args.threads, args.turns, args.workers)
            print(f"  written through the chat graph by {args.workers} processes in {seconds:.0f} s", flush=True)
        rows = count_rows(source, "checkpoints", "writes")
        source_bytes = report.figure("import_source_bytes", file_bytes(source))
        print(f"  {rows['checkpoints']:,} checkpoints, {rows['writes']:,} writes, {source_bytes / 1e6:,.1f} MB", flush=True)

        print("\n== import-checkpoints into a new store ==", flush=True)
        store = Path(tmp) / "threadkeeper.db"
        ThreadSaver(store).close()
        empty_bytes = file_bytes(store)
        url = f"sqlite:///{source}"
        store_url = f"sqlite:///{store}"
        with open_stock_source(url) as stock, ThreadSaver.from_conn_string(store_url, cache_messages=CACHE_MESSAGES) as saver:
            first = import_checkpoints(saver, stock, report=print)  # as `threadkeeper import-checkpoints` opens it
        print(f"  {first.describe()}", flush=True)
        store_bytes = file_bytes(store) - empty_bytes
        counts = count_rows(store, "threads", "checkpoints", "writes", "channel_values", "messages")
        with open_stock_source(url) as stock, ThreadSaver.from_conn_string(store_url, cache_messages=CACHE_MESSAGES) as saver:
            again = import_checkpoints(saver, stock, report=print)
        print(f"  again: {again.describe()}", flush=True)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

        rate = report.figure("import_threads_per_s", first.imported / first.seconds)
        report.check("threads imported per second", rate, "reference", True, " /s")
        report.check("  checkpoints per second", first.checkpoints / first.seconds, "reference", True, " /s")
        report.check(
            "every thread, checkpoint and write imported",
            f"{first.imported:,} / {first.checkpoints:,} / {first.writes:,}",
            "all",
            (first.imported, first.checkpoints, first.writes) == (args.threads, rows["checkpoints"], rows["writes"]),
        )
        report.check("source: stock SqliteSaver file", source_bytes / 1e6, "reference", True, " MB")
        report.figure("import_store_bytes", store_bytes)
        report.check("store: growth of the threadkeeper file", store_bytes / 1e6, "reference", True, " MB")
        report.check("  store bytes / source bytes", store_bytes / source_bytes, "< 1", store_bytes < source_bytes)
        report.check("peak memory of the importing process", peak / 1e6, "< 500", peak < 5e8, " MB")
        report.check(
            "a second run adds nothing (threads already there)",
            again.unchanged,
            f"{args.threads:,}",
            again.unchanged == args.threads and count_rows(store, *counts) == counts,
        )
        report.check("  seconds of the second run", again.seconds, "reference", True, " s")
        sample = [thread_id(n) for n in random.Random(5).sample(range(args.threads), min(5, args.threads))]
        equal = same_threads(url, store, sample)
        report.check(f"{len(sample)} threads read back equal (checkpoints, values, state)", "yes" if equal else "no", "yes", equal)
        if args.keep:
            print(f"\nthe source is kept at {args.keep}")
    report.finish(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
