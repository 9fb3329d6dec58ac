"""A separate process that runs one retention sweep as of a given moment, started
together with others.

    python -m tests.sweeper DB_URL NOW_ISO START_DIR COUNT

Marks itself ready in START_DIR, waits until COUNT processes are ready, sweeps
(30 days, a thread a transaction, resting 50 ms between batches so the sweep
lasts long enough to meet the others), and prints its report as one JSON line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

from checkpointers import open_saver
from checkpointers.retention import RetentionPolicy, Sweeper


def main() -> int:
    url, now, start, count = sys.argv[1], datetime.fromisoformat(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    with open_saver(url) as saver:
        (start / f"ready-{os.getpid()}").touch()
        deadline = time.monotonic() + 60
        while len(list(start.glob("ready-*"))) < count and time.monotonic() < deadline:
            time.sleep(0.005)
        report = Sweeper(saver, RetentionPolicy(days=30, batch_size=1), clock=lambda: now, pause_s=0.05).sweep()
    print(json.dumps(dataclasses.asdict(report)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
