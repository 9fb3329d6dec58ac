"""Web chat benchmark: the server's work to open a thread and to list or search threads.

    make bench                           # runs this after the agent benchmark
    python -m bench.web --threads 2000   # a quicker look

Opening a thread is what the web chat does when a thread is clicked: read the
newest 50 messages from the store and turn them into chat bubbles
(`WebChat.open_view`). It is timed on a freshly opened store, so no cache from
writing the thread helps, for a 10-turn and a 1,000-turn thread. Listing and
searching is `WebChat.thread_choices` (the sidebar's query) for one user among
10,000 threads: the plain list, a title match, a word in many of the user's
threads, and a word in few of them (every one of the user's threads is probed).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from langchain_core.messages import HumanMessage

from bench.storage import PER_USER, Report, chat_graph, print_machine, sentence, timed
from checkpointers import ThreadSaver
from graph import Settings
from ui.identity import Identity
from ui.web import WebChat

RARE_WORD = "kumquat"


def offline_chat(saver: ThreadSaver) -> WebChat:
    return WebChat(saver, settings=Settings.from_env({}), identity=Identity(b"bench-secret" * 3, {}))


def write_thread(saver: ThreadSaver, thread_id: str, turns: int, seed: int) -> None:
    rng = random.Random(seed)
    graph = chat_graph(saver, rng)
    config = {"configurable": {"thread_id": thread_id, "user_id": "reader"}}
    for _ in range(turns):
        graph.invoke({"messages": [HumanMessage(sentence(rng, 100))]}, config)


def cold_opens(path: Path, shown: dict[str, int], repeat: int) -> dict[str, float]:
    """Median time of `open_view` as the first read of a freshly opened store, per thread.

    The threads take turns (in alternating order), so a slow stretch of the
    machine falls on each alike and their ratio stays fair.
    """
    samples: dict[str, list[float]] = {thread_id: [] for thread_id in shown}
    order = list(shown)
    for _ in range(repeat):
        for thread_id in order:
            with ThreadSaver.from_conn_string(f"sqlite:///{path}") as saver:
                chat = offline_chat(saver)
                start = time.perf_counter()
                view = chat.open_view(thread_id, "reader")
                samples[thread_id].append(time.perf_counter() - start)
                assert len(view[1]) == shown[thread_id], len(view[1])
        order.reverse()
    return {thread_id: statistics.median(times) for thread_id, times in samples.items()}


def bench_open(report: Report, tmp: Path, turns: int) -> None:
    print(f"\n== opening a thread: 10 turns and {turns:,} turns ==", flush=True)
    path = tmp / "open.db"
    with ThreadSaver.from_conn_string(f"sqlite:///{path}") as saver:
        start = time.perf_counter()
        write_thread(saver, "short", 10, 1)
        write_thread(saver, "long", turns, 2)
        print(f"  wrote the threads in {time.perf_counter() - start:.1f} s", flush=True)
    opened = cold_opens(path, {"short": 20, "long": 50}, 41)
    short = report.figure("open_short_ms", opened["short"] * 1000)
    long = report.figure("open_long_ms", opened["long"] * 1000)
    with ThreadSaver.from_conn_string(f"sqlite:///{path}") as saver:
        chat = offline_chat(saver)
        warm = timed(lambda: chat.open_view("long", "reader"), 101) * 1000
    print(f"  open and render the newest 50: 10-turn {short:.2f} ms, {turns:,}-turn {long:.2f} ms (warm {warm:.2f} ms)")
    report.check(f"open a {turns:,}-turn thread / a 10-turn thread (newest 50)", long / short, "<= 1.5", long / short <= 1.5)


def fill_users(saver: ThreadSaver, count: int) -> None:
    """`count` one-turn threads, PER_USER to a user; every 7th mentions RARE_WORD."""
    rng = random.Random(5)
    graph = chat_graph(saver, rng)
    for i in range(count):
        text = sentence(rng, 100)
        if i % 7 == 0:
            text = text[:90] + " " + RARE_WORD
        config = {"configurable": {"thread_id": f"t{i:06d}", "user_id": f"user{i // PER_USER}"}}
        graph.invoke({"messages": [HumanMessage(text)]}, config)


def bench_search(report: Report, tmp: Path, threads: int) -> None:
    print(f"\n== listing and searching: one user's 20 threads among {threads:,} ==", flush=True)
    path = tmp / "search.db"
    with ThreadSaver.from_conn_string(f"sqlite:///{path}") as saver:
        start = time.perf_counter()
        fill_users(saver, threads)
        print(f"  wrote {threads:,} threads in {time.perf_counter() - start:.1f} s", flush=True)
        chat = offline_chat(saver)
        user = "user3"
        common = saver.threads.list(user, limit=1).threads[0].title.split()[0]
        cases = {
            "list": "",
            "title text": saver.threads.list(user, limit=1).threads[0].title[5:15],
            f"common word {common!r}": common,
            f"rare word {RARE_WORD!r}": RARE_WORD,
            "no match": "xylophone",
        }
        worst = 0.0
        for label, query in cases.items():
            choices, _ = chat.thread_choices(user, 20, query)
            took = timed(lambda q=query: chat.thread_choices(user, 20, q), 201) * 1000
            worst = max(worst, took)
            print(f"  {label:<28} {len(choices):>3} threads  {took:7.3f} ms")
        rare = saver.threads.search(user, RARE_WORD, limit=50).threads
        expected = sum(1 for i in range(3 * PER_USER, 4 * PER_USER) if i % 7 == 0)
        assert len(rare) == expected, (len(rare), expected)
    report.figure("search_worst_ms", worst)
    report.check(f"list or search a user's 20 threads among {threads:,} (slowest)", worst, "<= 20 ms", worst <= 20, " ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=1000, help="turns in the long thread (default 1000)")
    parser.add_argument("--threads", type=int, default=10_000, help="threads in the file (default 10000)")
    args = parser.parse_args(argv)
    report = Report()
    print_machine()
    with tempfile.TemporaryDirectory(prefix="tk-bench-web-") as tmp:
        bench_open(report, Path(tmp), args.turns)
        bench_search(report, Path(tmp), args.threads)
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
