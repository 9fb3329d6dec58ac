"""A separate process that chats on one thread and reports each acknowledged turn.

    python -m tests.writer DB_URL THREAD_ID TURNS [DURABILITY]

Prints `acked N` once `invoke` has returned for turn N (durability "sync" unless
given; LangGraph's default is "async"), and `error ...` for any exception, so a
parent process can count both.
"""

from __future__ import annotations

import sys

from checkpointers import open_saver
from tests.chat import chat_graph, human


def main() -> int:
    url, thread_id, turns = sys.argv[1], sys.argv[2], int(sys.argv[3])
    durability = sys.argv[4] if len(sys.argv) > 4 else "sync"
    errors = 0
    with open_saver(url) as saver:
        graph = chat_graph(saver)
        config = {"configurable": {"thread_id": thread_id, "user_id": thread_id}}
        for n in range(1, turns + 1):
            try:
                graph.invoke({"messages": [human(n)]}, config, durability=durability)
            except Exception as exc:  # counted by the parent, which fails the test
                errors += 1
                print(f"error {type(exc).__name__}: {exc}", flush=True)
                continue
            print(f"acked {n}", flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
