"""The store's cost per turn of the agent graph, in CPU instructions (callgrind) and turns per second.

    python -m bench.store_cost                     # instructions per turn: this saver, the floor, the store's part
    python -m bench.store_cost --rate --threads 4  # turns per second, several threads in one process (wall clock)
    python -m bench.store_cost --rate --against ../other-checkout   # the same, A/B/A/B against another saver

Instruction counts are repeatable on a busy machine, so two versions of the
saver can be compared by running this once with each on `PYTHONPATH`. The
graph is `graph.build_graph` with an instant model (`bench.agent.InstantModel`);
the store's part of a turn is the instructions of a turn with this project's
saver minus those of the same turn with `KeepingSaver`, which keeps the newest
checkpoint's objects and does nothing else (LangGraph's `InMemorySaver` is no
floor: it serialises every channel value it is given, the whole message list
each step). Three
scenarios, each counted on its own (`callgrind_control` turns counting on and off):

* turn 10: turns 6-15 of a new thread;
* turn 1000: turns 996-1000 of a thread of 995 turns (built once, natively);
* many threads: one turn on each of 20 threads, round robin, their third turn.
"""

from __future__ import annotations

import argparse
import os
import pickle
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

from langchain_core.messages import HumanMessage
from langgraph.checkpoint.base import BaseCheckpointSaver, CheckpointTuple

from bench.agent import InstantModel
from bench.storage import sentence
from checkpointers import ThreadSaver
from graph import Settings, build_graph

LONG_THREAD = 995
MANY = 20
def _callgrind(*command: str) -> None:
    subprocess.run(["callgrind_control", *command, str(os.getpid())], check=True, stdout=subprocess.DEVNULL)


def counted(work: Callable[[], None]) -> None:
    """Run `work` with callgrind counting every thread's instructions, then dump the count.

    (`--toggle-collect` counts only the thread that entered the marked function,
    and LangGraph saves checkpoints on a worker thread.)"""
    _callgrind("--zero")
    _callgrind("--instr=on")
    try:
        work()
    finally:
        _callgrind("--instr=off")
        _callgrind("--dump")


def chat(saver: Any):
    return build_graph(checkpointer=saver, model=InstantModel(), settings=Settings())


def turn(app: Any, thread_id: str, rng: random.Random) -> None:
    config = {"configurable": {"thread_id": thread_id, "user_id": "bench"}}
    app.invoke({"messages": [HumanMessage(sentence(rng, 100))]}, config)


class KeepingSaver(BaseCheckpointSaver):
    """The floor the store's part is measured from: keeps each thread's newest checkpoint
    as the very objects it was handed (no serialisation, no database, no history)."""

    def __init__(self) -> None:
        super().__init__()
        self.newest: dict[tuple[str, str], tuple] = {}

    def get_tuple(self, config: dict) -> CheckpointTuple | None:
        c = config["configurable"]
        found = self.newest.get((c["thread_id"], c.get("checkpoint_ns", "")))
        if found is None or c.get("checkpoint_id") not in (None, found[0]["configurable"]["checkpoint_id"]):
            return None
        return CheckpointTuple(*found, [])

    def put(self, config: dict, checkpoint: Any, metadata: Any, new_versions: Any) -> dict:
        c = config["configurable"]
        saved = {"configurable": {"thread_id": c["thread_id"], "checkpoint_ns": c.get("checkpoint_ns", ""),
                                  "checkpoint_id": checkpoint["id"]}}
        parent = {"configurable": {**saved["configurable"], "checkpoint_id": c["checkpoint_id"]}} if c.get("checkpoint_id") else None
        self.newest[(c["thread_id"], c.get("checkpoint_ns", ""))] = (saved, checkpoint, dict(metadata), parent)
        return saved

    def put_writes(self, config: dict, writes: Any, task_id: str, task_path: str = "") -> None:
        pass

    def list(self, config: Any, **kwargs: Any) -> Iterator[CheckpointTuple]:
        return iter(())

    def get_next_version(self, current: Any, channel: None) -> int:
        return (current or 0) + 1 if not isinstance(current, str) else int(current.split(".")[0]) + 1


def prepare(folder: Path) -> None:
    """The thread of `LONG_THREAD` turns, on this saver (a file) and on `KeepingSaver` (pickled)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "long.db").exists():
        saver = ThreadSaver(folder / "long.tmp.db")
        app, rng = chat(saver), random.Random(1)
        for _ in range(LONG_THREAD):
            turn(app, "long", rng)
        saver.close()
        for suffix in ("", "-wal", "-shm"):
            if (folder / f"long.tmp.db{suffix}").exists():
                (folder / f"long.tmp.db{suffix}").rename(folder / f"long.db{suffix}")
    if not (folder / "long.floor").exists():
        saver = KeepingSaver()
        app, rng = chat(saver), random.Random(1)
        for _ in range(LONG_THREAD):
            turn(app, "long", rng)
        (folder / "long.floor").write_bytes(pickle.dumps(saver.newest))


def count(folder: Path, which: str) -> None:
    """The scenarios, each inside `counted` (run under callgrind by `main`)."""
    with tempfile.TemporaryDirectory(prefix="tk-store-cost-") as tmp:
        def open_saver(copy_of: str | None = None) -> Any:
            if which == "floor":
                saver = KeepingSaver()
                if copy_of is not None:
                    saver.newest = pickle.loads((folder / "long.floor").read_bytes())
                return saver
            name = Path(tmp) / f"{len(os.listdir(tmp))}.db"
            if copy_of is not None:
                for suffix in ("", "-wal", "-shm"):
                    if (folder / f"{copy_of}{suffix}").exists():
                        shutil.copy(folder / f"{copy_of}{suffix}", f"{name}{suffix}")
            return ThreadSaver(name)

        rng = random.Random(2)
        saver = open_saver()
        app = chat(saver)
        for _ in range(5):
            turn(app, "ten", rng)
        counted(lambda: [turn(app, "ten", rng) for _ in range(10)])

        saver = open_saver("long.db")
        app = chat(saver)
        for _ in range(2):
            turn(app, "long", rng)
        counted(lambda: [turn(app, "long", rng) for _ in range(5)])

        saver = open_saver()
        app = chat(saver)
        for _ in range(2):
            for n in range(MANY):
                turn(app, f"t{n}", rng)
        counted(lambda: [turn(app, f"t{n}", rng) for n in range(MANY)])
        if hasattr(saver, "close"):
            saver.close()


SCENARIOS = (("turn 10", 10), ("turn 1000", 5), (f"{MANY} threads", MANY))


def instructions(folder: Path, which: str) -> list[float]:
    """Instructions per turn of each scenario, running `count` under callgrind."""
    out = Path(tempfile.mkdtemp(prefix="tk-callgrind-"))
    try:
        subprocess.run(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no",
             f"--callgrind-out-file={out}/cg.out", sys.executable, "-m", "bench.store_cost",
             "--count", which, "--folder", str(folder)],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        totals = []
        for dump in sorted(out.glob("cg.out.*"), key=lambda p: int(p.name.rsplit(".", 1)[1])):
            for line in dump.read_text(errors="replace").splitlines():
                if line.startswith("totals:"):
                    totals.append(int(line.split()[1]))
                    break
        if len(totals) != len(SCENARIOS):
            raise RuntimeError(f"expected {len(SCENARIOS)} callgrind dumps, found {len(totals)} in {out}")
        return [t / n for t, (_, n) in zip(totals, SCENARIOS)]
    finally:
        shutil.rmtree(out, ignore_errors=True)


def other_saver_class(checkout: Path) -> type:
    """`ThreadSaver` of another checkout's `checkpointers`, loaded beside this one in this
    process: the package's modules are set aside under other names, and imported again."""
    ours = {name: sys.modules.pop(name) for name in list(sys.modules) if name.split(".")[0] == "checkpointers"}
    sys.path.insert(0, str(checkout))
    try:
        import checkpointers as theirs

        if Path(theirs.__file__).resolve().parent != (checkout / "checkpointers").resolve():
            raise RuntimeError(f"{checkout} has no checkpointers package")
        return theirs.ThreadSaver
    finally:
        sys.path.remove(str(checkout))
        for name in [n for n in sys.modules if n.split(".")[0] == "checkpointers"]:
            sys.modules[f"_other_{name}"] = sys.modules.pop(name)
        sys.modules.update(ours)


def rate(threads: int, seconds: float, rounds: int, against: Path | None = None) -> None:
    """Turns per second with `threads` Python threads, each on its own chat thread, one saver.

    With `against`, windows of this checkout's saver and that one's alternate (A/B/A/B)
    in one process, so the load of the machine falls on both alike."""
    savers = {"this": ThreadSaver}
    if against is not None:
        savers[str(against)] = other_saver_class(against)
    results: dict[str, list[float]] = {label: [] for label in savers}
    with tempfile.TemporaryDirectory(prefix="tk-store-rate-") as tmp:
        for r in range(rounds):
            for label, saver_class in savers.items():
                saver = saver_class(Path(tmp) / f"{len(os.listdir(tmp))}.db")
                app = chat(saver)
                done = [0] * threads
                for n in range(threads):  # the threads' first turns (creating them) are not counted
                    turn(app, f"u{n}", random.Random(n))
                stop = time.monotonic() + seconds

                def user(n: int) -> None:
                    rng = random.Random(n)
                    while time.monotonic() < stop:
                        turn(app, f"u{n}", rng)
                        done[n] += 1

                workers = [threading.Thread(target=user, args=(n,)) for n in range(threads)]
                for w in workers:
                    w.start()
                for w in workers:
                    w.join()
                saver.close()
                results[label].append(sum(done) / seconds)
    for label, figures in results.items():
        print(f"{label}: turns/s, {threads} threads, {seconds:g} s x {rounds}: median {statistics.median(figures):.1f} "
              f"({', '.join(f'{x:.1f}' for x in figures)})")
    if against is not None:
        pairs = [a / b for a, b in zip(*results.values())]
        print(f"this / {against}: median of the pairs {statistics.median(pairs):.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "tk-store-cost",
                        help="where the 1,000-turn thread is kept between runs")
    parser.add_argument("--count", choices=("ours", "floor"), help=argparse.SUPPRESS)
    parser.add_argument("--saver-only", action="store_true", help="count this saver only (the floor does not change)")
    parser.add_argument("--rate", action="store_true", help="turns per second instead of instructions")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--against", type=Path, help="with --rate: another checkout whose saver alternates with this one")
    args = parser.parse_args(argv)
    if args.count:
        count(args.folder, args.count)
        return 0
    if args.rate:
        rate(args.threads, args.seconds, args.rounds, args.against)
        return 0
    prepare(args.folder)
    ours = instructions(args.folder, "ours")
    if args.saver_only:
        for (name, _), a in zip(SCENARIOS, ours):
            print(f"{name:<14}{a:>14,.0f} instructions per turn")
        return 0
    floor = instructions(args.folder, "floor")
    print(f"{'scenario':<14}{'saver/turn':>14}{'floor/turn':>14}{'store/turn':>14}")
    for (name, _), a, b in zip(SCENARIOS, ours, floor):
        print(f"{name:<14}{a:>14,.0f}{b:>16,.0f}{a - b:>14,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
