"""The README's Python example, run as written, in two processes: the thread survives."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Use it from Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_survives_a_process_restart(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "THREADKEEPER_"))}
    env["PYTHONPATH"] = str(ROOT)
    runs = [
        subprocess.run([sys.executable, "-c", readme_example()], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        for _ in range(2)
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr
    assert runs[0].stdout.splitlines()[0] == "2 messages in trip-42"
    assert runs[1].stdout.splitlines() == ["4 messages in trip-42", "trip-42 4 Plan a weekend in Lyon"]
    assert (tmp_path / "data" / "threadkeeper.db").is_file()
