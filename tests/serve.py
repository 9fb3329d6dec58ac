"""`threadkeeper serve` as a person runs it: a real process on a free 127.0.0.1 port,
its log in its data directory (forked from tests/forkserve.py's fork server, which
imported the app once for the whole session)."""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

from tests.forkserve import start_serve
from tests.gradio_api import free_port

ROOT = Path(__file__).resolve().parent.parent


class Server:
    """`threadkeeper serve` in a subprocess; `restart()` keeps its port and data."""

    def __init__(self, data: Path, **env: str) -> None:
        self.data, self.port, self.proc = data, free_port(), None
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "THREADKEEPER_"))}
        self.env.update({"GRADIO_ANALYTICS_ENABLED": "False", "THREADKEEPER_DATABASE_URL": f"sqlite:///{data / 'threadkeeper.db'}", **env})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> Server:
        log = open(self.data / f"server-{time.time_ns()}.log", "w")
        log.close()
        self.proc = start_serve(["serve", "--port", str(self.port)], env=self.env, cwd=ROOT, log=Path(log.name))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {Path(log.name).read_text()[-2000:]}")
            try:
                urllib.request.urlopen(self.url, timeout=2)
                return self
            except Exception:
                time.sleep(0.3)
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)

    def restart(self) -> None:
        self.stop()
        self.start()
