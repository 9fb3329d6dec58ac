"""Several processes on one file, and a process killed in the middle of a write."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from checkpointers import ThreadSaver
from tests.chat import chat_graph

ROOT = Path(__file__).resolve().parent.parent


def _writer(url: str, thread_id: str, turns: int, durability: str = "sync") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.writer", url, thread_id, str(turns), durability],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _messages(saver: ThreadSaver, thread_id: str) -> int:
    state = chat_graph(saver).get_state({"configurable": {"thread_id": thread_id}})
    return len(state.values.get("messages", []))


def test_two_processes_write_300_turns_each_without_a_single_error(db_path):
    url = f"sqlite:///{db_path}"
    procs = [_writer(url, f"proc-{i}", 300) for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, (out[-1000:], err[-2000:])
        assert "error" not in out and "locked" not in err
        assert out.count("acked") == 300
    saver = ThreadSaver(db_path)
    try:
        for i in range(2):
            assert _messages(saver, f"proc-{i}") == 600
            assert saver.threads.get(f"proc-{i}").message_count == 600
        assert saver.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        saver.close()


@pytest.mark.parametrize("durability", ["sync", "async"])
def test_sigkill_mid_write_leaves_a_sound_file_with_every_acknowledged_turn(db_path, durability):
    # "async" is LangGraph's default: the saver defers the input checkpoint and
    # task writes to the step's checkpoint, and invoke must still not return
    # before all of a turn is committed.
    url = f"sqlite:///{db_path}"
    proc = _writer(url, "victim", 100_000, durability)
    acked = 0
    try:
        for line in proc.stdout:
            if line.startswith("acked"):
                acked = int(line.split()[1])
            if acked >= 150:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    # Anything printed after the last line we read was acknowledged too.
    acked = max([acked] + [int(x.split()[1]) for x in proc.stdout.read().splitlines() if x.startswith("acked")])
    assert proc.returncode == -signal.SIGKILL
    saver = ThreadSaver(db_path)
    try:
        assert saver.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = _messages(saver, "victim")
        assert stored >= 2 * acked
        assert stored <= 2 * (acked + 1) + 1
        # the thread takes new turns after the crash
        from tests.chat import human

        graph = chat_graph(saver)
        config = {"configurable": {"thread_id": "victim", "user_id": "victim"}}
        graph.invoke({"messages": [human(10**6)]}, config)
        assert _messages(saver, "victim") == stored + 2
    finally:
        saver.close()
