"""Hostile-input and isolation benchmark: the same property tests as `make test`, many more inputs.

    make bench                          # runs this after the crash benchmark
    python -m bench.hostile --examples 100   # a quicker look

Runs tests/test_hostile_input.py and tests/test_isolation.py under the
`bench` Hypothesis profile (fresh random inputs every run, `--examples` per
property, ten times that for the slow surfaces: uploads, the CLI, the web
handlers), then prints what they tried: inputs per surface, how many were
refused with one sentence, cross-user attempts per door, and the two figures
that must stay 0: cross-user reads (something of another user's came back)
and tracebacks (an exception of another kind, or a raw library message,
reached the caller). Any failing property fails the benchmark, with pytest's
report above the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.storage import Report, print_machine

ROOT = Path(__file__).resolve().parent.parent
TESTS = ["tests/test_hostile_input.py", "tests/test_isolation.py"]


def run_properties(examples: int, counts: Path) -> tuple[int, float]:
    env = dict(os.environ, THREADKEEPER_HOSTILE_PROFILE="bench", THREADKEEPER_HOSTILE_EXAMPLES=str(examples),
               THREADKEEPER_HOSTILE_COUNTS=str(counts))
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=short", *TESTS], cwd=ROOT, env=env)
    return run.returncode, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=300, help="Hypothesis examples per property (default 300)")
    parser.add_argument("--json", type=Path, help="also write the counts here")
    args = parser.parse_args(argv)

    print("hostile input and isolation: every door, any input, another user's threads")
    print_machine()
    with tempfile.TemporaryDirectory() as scratch:
        counts_file = Path(scratch) / "counts.json"
        status, seconds = run_properties(args.examples, counts_file)
        counts = json.loads(counts_file.read_text()) if counts_file.exists() else {}
    tried, refused, tracebacks = counts.get("tried", {}), counts.get("refused", {}), counts.get("tracebacks", {})
    attempts, reads, writes = (counts.get(k, {}) for k in ("cross_user_attempts", "cross_user_reads", "cross_user_writes"))

    print(f"\n{'surface':<52} {'inputs':>8} {'refused':>8} {'tracebacks':>10}")
    groups: dict[str, list[int]] = {}
    for surface in tried:
        group = surface.split(":")[0]
        row = groups.setdefault(group, [0, 0, 0])
        row[0] += tried[surface]
        row[1] += refused.get(surface, 0)
        row[2] += tracebacks.get(surface, 0)
    for group, (n, r, t) in sorted(groups.items(), key=lambda kv: -kv[1][0]):
        print(f"  {group:<50} {n:>8,} {r:>8,} {t:>10,}")
    print(f"\n{'door':<52} {'attempts':>8} {'reads':>8} {'writes':>10}")
    for door in sorted(attempts, key=lambda d: -attempts[d]):
        print(f"  {door:<50} {attempts[door]:>8,} {reads.get(door, 0):>8,} {writes.get(door, 0):>10,}")

    problems = counts.get("problems", {})
    if problems:
        print(f"\n{len(problems)} distinct ways the rule was broken (calls, Hypothesis' replays included):")
        for what, n in sorted(problems.items(), key=lambda kv: -kv[1]):
            print(f"  {n:>5}  {what}")

    promised = {d: n for d, n in reads.items() if "not promised" not in d}
    report = Report()
    print()
    report.check("inputs tried, every surface", sum(tried.values()), "-", True)
    report.check("cross-user attempts, every door", sum(attempts.values()), "-", True)
    report.check("cross-user reads (every door)", sum(promised.values()), "0", sum(promised.values()) == 0)
    report.check("cross-user writes", sum(writes.values()), "0", sum(writes.values()) == 0)
    report.check("distinct tracebacks or raw errors reaching the caller", len(problems), "0", not problems)
    report.check("hangs (no answer within 60 s)", counts.get("hangs", 0), "0", counts.get("hangs", 0) == 0)
    report.check("property tests passed", "all" if status == 0 else f"exit {status}", "all", status == 0)
    report.check("time for the whole run", seconds, "-", True, " s")
    report.figures.update(counts=counts, seconds=seconds, examples=args.examples)
    report.finish(args.json)
    return 0 if status == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
