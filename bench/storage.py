"""Storage benchmark: threadkeeper's saver beside LangGraph's stock savers, one run.

    make bench                        # the full run (about two minutes)
    python -m bench.storage --turns 200 --threads 2000   # a quicker look

Every figure is measured in this process, in this run, on the same workload:
a one-node chat graph (`MessagesState`) whose model answers instantly, turns of
a 100-character human message and a 200-character reply built from common
English words. Machines here are noisy, so what matters is the ratios printed
against `SqliteSaver` (langgraph-checkpoint-sqlite) and `InMemorySaver`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, MessagesState, StateGraph

from checkpointers import ThreadSaver

WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had "
    "by word but not what all were we when your can said there use an each which she do how their if will "
    "up other about out many then them these so some her would make like him into time has look two more "
    "write go see number no way could people my than first water been call who its now find long down day "
    "did get come made may part thread memory saver storage question answer model token budget user"
).split()


def sentence(rng: random.Random, length: int) -> str:
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < length:
        words.append(rng.choice(WORDS))
    return " ".join(words)[:length]


def chat_graph(checkpointer: Any, rng: random.Random):
    def model(state: MessagesState) -> dict:
        return {"messages": [AIMessage(sentence(rng, 200))]}

    builder = StateGraph(MessagesState)
    builder.add_node("model", model)
    builder.add_edge(START, "model")
    builder.add_edge("model", END)
    return builder.compile(checkpointer=checkpointer)


def file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def run_turns(graph, thread_id: str, turns: int, rng: random.Random) -> list[float]:
    config = {"configurable": {"thread_id": thread_id, "user_id": "bench"}}
    costs = []
    for _ in range(turns):
        message = HumanMessage(sentence(rng, 100))
        start = time.perf_counter()
        graph.invoke({"messages": [message]}, config)
        costs.append(time.perf_counter() - start)
    return costs


def around(costs: list[float], turn: int, width: int = 5) -> float:
    """Median cost of the turns numbered turn-width .. turn+width (1-based)."""
    lo, hi = max(0, turn - 1 - width), min(len(costs), turn + width)
    return statistics.median(costs[lo:hi])


def timed(fn: Callable[[], Any], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def print_machine() -> None:
    print(f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, {os.cpu_count()} cpus")


class Report:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []
        self.figures: dict[str, float] = {}

    def figure(self, key: str, value: float) -> float:
        self.figures[key] = value
        return value

    def finish(self, json_path: Path | None = None, what: str = "checks") -> None:
        """Print how many checks met their targets; write the figures to `json_path` if given."""
        met = sum(1 for r in self.rows if r[3] == "ok")
        print(f"\n{met} of {len(self.rows)} {what} met their targets")
        if json_path:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(self.figures, indent=2))

    def check(self, what: str, value: float, target: str, ok: bool, unit: str = "") -> None:
        self.rows.append((what, f"{value:,.3f}{unit}" if isinstance(value, float) else str(value), target, "ok" if ok else "MISSED"))
        print(f"  {what:<64} {self.rows[-1][1]:>14}   target {target:<12} {self.rows[-1][3]}", flush=True)


TURN10_ROUNDS = 20
TURN10_THREADS_PER_ROUND = 2
"""Turn 10 is the median of turns 9-11 on 40 fresh threads per saver, 2 per round."""


def bench_turns(report: Report, tmp: Path, turns: int) -> None:
    print(f"\n== one thread, {turns} turns ==", flush=True)
    checkpoints = {}
    with ExitStack() as stack:
        ours_path = tmp / "ours.db"
        ours = stack.enter_context(ThreadSaver.from_conn_string(f"sqlite:///{ours_path}"))
        stock_path = tmp / "stock.db"
        stock = stack.enter_context(SqliteSaver.from_conn_string(str(stock_path)))
        memory = InMemorySaver()
        # Short threads go to a second saver of each kind, in a file of its own,
        # so the long thread's file holds that thread alone.
        short_savers = {
            "threadkeeper": stack.enter_context(ThreadSaver.from_conn_string(f"sqlite:///{tmp / 'ours-short.db'}")),
            "SqliteSaver": stack.enter_context(SqliteSaver.from_conn_string(str(tmp / "stock-short.db"))),
            "InMemorySaver": InMemorySaver(),
        }
        # Turn 10 is sampled on fresh threads (turns 9-11 of each), in rounds that
        # take each saver in turn, so a noisy stretch of the machine falls on all
        # three alike; each saver first gets the same warm-up.
        short_graphs = {name: chat_graph(saver, random.Random(7)) for name, saver in short_savers.items()}
        for name, graph in short_graphs.items():
            run_turns(graph, "warm-up", 15, random.Random(3))
        early: dict[str, list[float]] = {name: [] for name in short_graphs}
        for round_no in range(TURN10_ROUNDS):
            for name, graph in short_graphs.items():
                for n in range(TURN10_THREADS_PER_ROUND):
                    seed = round_no * TURN10_THREADS_PER_ROUND + n
                    early[name] += run_turns(graph, f"short-{seed}", 11, random.Random(seed))[8:11]
        for name, saver in (("threadkeeper", ours), ("SqliteSaver", stock), ("InMemorySaver", memory)):
            gc.collect()
            start = time.perf_counter()
            turn10 = statistics.median(early[name])
            costs = run_turns(chat_graph(saver, random.Random(7)), "bench-thread", turns, random.Random(11))
            checkpoints[name] = costs
            report.figure(f"{name}.turn10_ms", turn10 * 1000)
            report.figure(f"{name}.turn{turns}_ms", around(costs, turns - 5) * 1000)
            print(
                f"  {name:<14} turn 10: {turn10 * 1000:7.2f} ms   turn {turns}: "
                f"{around(costs, turns - 5) * 1000:7.2f} ms   ({time.perf_counter() - start:.1f} s for the long thread)",
                flush=True,
            )
        ours.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        stock.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        ours_bytes = file_bytes(ours_path) / turns
        stock_bytes = file_bytes(stock_path) / turns
        report.figure("threadkeeper.bytes_per_turn", ours_bytes)
        report.figure("SqliteSaver.bytes_per_turn", stock_bytes)

        # Reading the thread back cold: a new saver (new connection, empty caches).
        config = {"configurable": {"thread_id": "bench-thread"}}

        def read_ours() -> None:
            with ThreadSaver.from_conn_string(f"sqlite:///{ours_path}") as fresh:
                state = chat_graph(fresh, random.Random(0)).get_state(config)
                assert len(state.values["messages"]) == 2 * turns

        def read_stock() -> None:
            with SqliteSaver.from_conn_string(str(stock_path)) as fresh:
                state = chat_graph(fresh, random.Random(0)).get_state(config)
                assert len(state.values["messages"]) == 2 * turns

        read_ours()
        read_stock()
        ours_read = report.figure("threadkeeper.cold_read_ms", timed(read_ours, 7) * 1000)
        stock_read = report.figure("SqliteSaver.cold_read_ms", timed(read_stock, 7) * 1000)
        warm_graph = chat_graph(ours, random.Random(0))
        ours_warm = report.figure("threadkeeper.warm_read_ms", timed(lambda: warm_graph.get_state(config), 21) * 1000)

    t = report.figures
    print()
    report.check(
        f"threadkeeper: cost of turn {turns} / cost of turn 10",
        t[f"threadkeeper.turn{turns}_ms"] / t["threadkeeper.turn10_ms"],
        "<= 2.0",
        t[f"threadkeeper.turn{turns}_ms"] / t["threadkeeper.turn10_ms"] <= 2.0,
    )
    report.check(
        f"  (stock SqliteSaver: turn {turns} / turn 10)",
        t[f"SqliteSaver.turn{turns}_ms"] / t["SqliteSaver.turn10_ms"],
        "reference",
        True,
    )
    report.check(
        f"  (InMemorySaver: turn {turns} / turn 10)",
        t[f"InMemorySaver.turn{turns}_ms"] / t["InMemorySaver.turn10_ms"],
        "reference",
        True,
    )
    ratio = t["threadkeeper.turn10_ms"] / t["InMemorySaver.turn10_ms"]
    report.check("cost of turn 10: threadkeeper / InMemorySaver (target retired by issue 19)", ratio, "reference", True)
    stock_ratio = t["SqliteSaver.turn10_ms"] / t["InMemorySaver.turn10_ms"]
    report.check("  (stock SqliteSaver / InMemorySaver at turn 10)", stock_ratio, "reference", True)
    report.check(f"bytes on disk per turn after {turns} turns, threadkeeper", ours_bytes, "<= 2048", ours_bytes <= 2048, " B")
    report.check(f"  (stock SqliteSaver per turn after {turns} turns)", stock_bytes, "reference", True, " B")
    report.check(
        f"cold read of the {turns}-turn state: threadkeeper / SqliteSaver",
        ours_read / stock_read,
        "<= 1.0",
        ours_read <= stock_read,
    )
    print(f"  (cold read: threadkeeper {ours_read:.2f} ms, SqliteSaver {stock_read:.2f} ms; warm: {ours_warm:.3f} ms)")


PER_USER = 50
"""Threads per user: the listed user has the same 50 threads in both files."""


def fill_threads(saver: Any, count: int, start: int, turns: int = 2) -> None:
    """`count` threads of `turns` turns, PER_USER threads to each user, through the graph."""
    rng = random.Random(start)
    graph = chat_graph(saver, rng)
    for i in range(start, start + count):
        config = {"configurable": {"thread_id": f"t{i:06d}", "user_id": f"user{i // PER_USER}"}}
        for _ in range(turns):
            graph.invoke({"messages": [HumanMessage(sentence(rng, 100))]}, config)


def bench_threads(report: Report, tmp: Path, small: int, large: int) -> None:
    print(f"\n== thread index: {small:,} and {large:,} threads, {PER_USER} per user ==", flush=True)
    path = tmp / "threads.db"
    with ThreadSaver.from_conn_string(f"sqlite:///{path}") as saver:
        start = time.perf_counter()
        fill_threads(saver, small, 0)
        at_small = report.figure("list20_small_ms", timed(lambda: saver.threads.list("user1", limit=20), 301) * 1000)
        fill_threads(saver, large - small, small)
        print(f"  wrote {large:,} threads in {time.perf_counter() - start:.1f} s", flush=True)
        at_large = report.figure("list20_large_ms", timed(lambda: saver.threads.list("user1", limit=20), 301) * 1000)
        page = saver.threads.list("user1", limit=20)
        assert len(page.threads) == 20 and page.threads[0].updated_at >= page.threads[-1].updated_at

        report.check(f"a user's 20 newest threads, {large:,} threads in the file", at_large, "<= 2 ms", at_large <= 2.0, " ms")
        report.check(f"  the same / the same at {small:,} threads", at_large / at_small, "<= 1.2", at_large / at_small <= 1.2)

        saver.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        # What retention does: delete the threads least recently updated.
        victims = [
            thread_id
            for (thread_id,) in saver.conn.execute(
                "SELECT thread_id FROM threads ORDER BY updated_at LIMIT ?", (min(1000, large // 2),)
            )
        ]
        pages_before = saver.conn.execute("PRAGMA page_count").fetchone()[0]
        start = time.perf_counter()
        deleted = saver.delete_threads(victims)
        took = report.figure("delete_1000_s", time.perf_counter() - start)
        assert deleted == len(victims)
        free_after_delete = saver.conn.execute("PRAGMA freelist_count").fetchone()[0]
        fill_threads(saver, len(victims), large)
        saver.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages_after = saver.conn.execute("PRAGMA page_count").fetchone()[0]
        free_after_refill = saver.conn.execute("PRAGMA freelist_count").fetchone()[0]
        report.check(f"delete {len(victims):,} threads in one call", took, "<= 0.3 s", took <= 0.3, " s")
        grown = pages_after - pages_before
        report.check(
            f"pages the file grew by when {len(victims):,} new threads replaced them",
            float(grown),
            f"< {free_after_delete // 2} pg",
            grown < free_after_delete // 2,
        )
        print(
            f"  ({free_after_delete:,} pages freed by the delete, {free_after_refill:,} still free after the "
            f"refill; file {pages_before:,} -> {pages_after:,} pages, no VACUUM)"
        )

    stock_path = tmp / "stock-threads.db"
    with SqliteSaver.from_conn_string(str(stock_path)) as stock:
        fill_threads(stock, large, 0, turns=1)
        stock_list = timed(lambda: list(stock.list(None, filter={"user_id": "user1"}, limit=20)), 5) * 1000
    report.check(
        f"  (stock SqliteSaver: list(None, filter=user, limit=20), {large:,} threads)", stock_list, "reference", True, " ms"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=1000, help="turns in the long thread (default 1000)")
    parser.add_argument("--threads", type=int, default=10_000, help="threads in the large index (default 10000)")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    report = Report()
    print_machine()
    with tempfile.TemporaryDirectory(prefix="tk-bench-") as tmp:
        bench_turns(report, Path(tmp), args.turns)
        bench_threads(report, Path(tmp), args.threads // 10, args.threads)
    report.finish(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
