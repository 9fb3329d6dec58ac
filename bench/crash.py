"""Crash and full-disk benchmark: writers killed with SIGKILL, and a disk that fills up.

    make bench                                          # runs this last
    python -m bench.crash --library-kills 50 --serve-kills 3   # a quicker look

The same harness as tests/test_crash.py (tests/crash.py), with more kills:

* a library writer (the agent graph from `build_graph`, offline model, a store
  from `open_saver`, LangGraph's default durability) is killed with SIGKILL at
  a random moment up to 0.25 s after it starts, and started again;
* `threadkeeper serve` with three visitors chatting at once over Gradio's
  queue protocol is killed while a reply streams, and started again on the
  same data directory; every visitor reloads the page and reopens their thread;
* a store on a 4 MiB tmpfs is filled up (a filler file) while turns are
  written, read while full, and written again once the filler is deleted;
  the same through the web chat's handlers.

After every kill the file must pass `PRAGMA integrity_check`; at the end every
acknowledged turn (one whose `invoke`, or whose streamed reply, completed) must
be in the store, read through `get_state` and through `read_messages`. Needs
root for the tmpfs; elsewhere the disk is a file-size limit (RLIMIT_FSIZE).
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
import time
from pathlib import Path

from bench.storage import Report, print_machine
from tests.crash import (
    WEB_REPLY,
    SmallDisk,
    chat_text,
    full_disk_cycle,
    kill_library_writers,
    kill_web_server,
    web_full_disk_cycle,
)
from tests.fake_openai import FakeOpenAI

DISK_BYTES = 4 * 1024 * 1024
MAX_LOG_LINES_WHILE_FULL = 5


def bench_library(report: Report, tmp: Path, kills: int, seed: int) -> None:
    print(f"\n== a library writer killed {kills} times at random moments ==", flush=True)
    start = time.perf_counter()
    run = kill_library_writers(tmp / "library.db", kills, rng=random.Random(seed), log=tmp / "writers.log")
    print(f"  {time.perf_counter() - start:.0f} s; writer errors: {run.errors or 'none'}")
    report.check("SIGKILLs survived (library writer)", run.kills, f">= {kills}", run.kills >= kills and not run.errors)
    report.check("  turns acknowledged (invoke returned)", run.acked_turns, "reference", True)
    report.check("  turns cut by a kill after their first commit", len(run.in_flight_kept), "reference", True)
    report.check("  acknowledged turns lost", len(run.lost), "0", not run.lost)
    report.check(
        "  integrity_check ok after each kill", f"{run.integrity_checks - len(run.integrity_failures)} of {run.integrity_checks}",
        "all", not run.integrity_failures,
    )
    for line in (run.lost + run.integrity_failures)[:10]:
        print(f"    {line}")


def bench_serve(report: Report, tmp: Path, kills: int, seed: int) -> None:
    print(f"\n== threadkeeper serve killed {kills} times while a reply streams ==", flush=True)
    start = time.perf_counter()
    with FakeOpenAI() as model:
        model.plan.extend([("reply", WEB_REPLY)] * 100_000)
        run = kill_web_server(tmp / "serve", kills, model_url=model.base_url, rng=random.Random(seed), logs=tmp / "serve-logs")
    print(f"  {time.perf_counter() - start:.0f} s; errors: {run.errors or 'none'}")
    report.check("SIGKILLs mid-stream survived (threadkeeper serve)", run.mid_stream, f">= {kills}", run.mid_stream >= kills and not run.errors)
    report.check("  turns acknowledged (reply event completed)", run.acked_turns, "reference", True)
    report.check("  turns cut by a kill after their first commit", len(run.in_flight_kept), "reference", True)
    report.check("  acknowledged turns lost", len(run.lost), "0", not run.lost)
    report.check(
        "  integrity_check ok after each kill and at the end",
        f"{run.integrity_checks - len(run.integrity_failures)} of {run.integrity_checks}", "all", not run.integrity_failures,
    )
    reopens = run.reopened + len(run.reopen_failures)
    report.check("  threads reopened after a restart, newest turn shown", f"{run.reopened} of {reopens}", "all", not run.reopen_failures)
    for line in (run.lost + run.integrity_failures + run.reopen_failures)[:10]:
        print(f"    {line}")


def bench_full_disk(report: Report, tmp: Path) -> None:
    with SmallDisk(tmp / "disk", DISK_BYTES) as disk:
        print(f"\n== a full disk ({disk.kind}, {DISK_BYTES // 1024 // 1024} MiB): the library ==", flush=True)
        r = full_disk_cycle(disk)
    print(f"  the caller's error: {type(r.error).__name__}: {r.error}")
    report.check("  turns acknowledged before the disk filled", r.acked_before_full, "reference", True)
    same = sum(1 for e in r.errors_while_full if type(e) is type(r.error) and str(e) == str(r.error))
    report.check("  later writes on any thread refused with that error", f"{same} of {len(r.errors_while_full)}", "all", same == len(r.errors_while_full))
    log_lines = r.log_lines()
    report.check("  lines logged while full (the issue saw ~190 tracebacks)", log_lines, f"<= {MAX_LOG_LINES_WHILE_FULL}", log_lines <= MAX_LOG_LINES_WHILE_FULL)
    report.check("  reads of other threads while full that failed", len(r.read_failures_while_full), "0", not r.read_failures_while_full)
    report.check("  threads whose writing did not resume with space", len(r.resume_failures), "0", not r.resume_failures)
    report.check("  acknowledged turns lost", len(r.lost), "0", not r.lost)
    report.check("  integrity_check", r.integrity, "ok", r.integrity == "ok")
    report.check(
        "  failed turns whose message is in the thread once space is back", f"{len(r.failed_turns_kept)} of {len(r.failed_turns)}",
        "reference", True,
    )
    for line in r.read_failures_while_full + r.resume_failures + r.lost:
        print(f"    {line}")

    with SmallDisk(tmp / "web-disk", DISK_BYTES) as disk:
        print(f"\n== a full disk ({disk.kind}): the web chat's handlers ==", flush=True)
        w = web_full_disk_cycle(disk)
    shown = chat_text(w.bubble) if w.bubble else f"(no bubble; raised {w.raised!r})"
    print(f"  the chat shows: {shown}")
    report.check("  a refused message is one bubble, nothing raised", "yes" if w.bubble and w.raised is None else "no", "yes", bool(w.bubble) and w.raised is None)
    report.check("  page load while full", w.load_failure or "ok", "ok", w.load_failure is None)
    report.check("  a thread opened while full", w.open_failure or "ok", "ok", w.open_failure is None)
    lines = sum(logging.Formatter().format(x).count("\n") + 1 for x in w.log_records_while_full)
    report.check("  lines logged while full", lines, f"<= {MAX_LOG_LINES_WHILE_FULL}", lines <= MAX_LOG_LINES_WHILE_FULL)
    print(f"  Retry once space is back: {w.retry}")
    report.check("  a new message once space is back", w.resume_failure or "answered", "answered", w.resume_failure is None)
    report.check("  integrity_check", w.integrity, "ok", w.integrity == "ok")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--library-kills", type=int, default=200, help="SIGKILLs of the library writer (default 200)")
    parser.add_argument("--serve-kills", type=int, default=10, help="SIGKILLs of threadkeeper serve (default 10)")
    parser.add_argument("--seed", type=int, default=None, help="seed for the kill delays and texts (default: random)")
    args = parser.parse_args(argv)
    seed = random.randrange(2**32) if args.seed is None else args.seed
    report = Report()
    print_machine()
    print(f"seed {seed}")
    with tempfile.TemporaryDirectory(prefix="tk-bench-crash-") as tmp:
        bench_library(report, Path(tmp), args.library_kills, seed)
        bench_serve(report, Path(tmp), args.serve_kills, seed)
        bench_full_disk(report, Path(tmp))
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
