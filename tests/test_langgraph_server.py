"""`langgraph dev` serves the graph on this project's store (langgraph.json).

A real server on a free 127.0.0.1 port, driven with langgraph-sdk; the store
it writes is the same file the web chat and Python open.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from langgraph_sdk import get_client

from checkpointers import ThreadNotFoundError, ThreadSaver

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LangGraphDev:
    """`langgraph dev` run from a directory holding the project's langgraph.json.

    Paths in langgraph.json are relative to the working directory, and the
    server keeps its own thread registry in ./.langgraph_api there, so the
    test gives it a directory of its own that links to the project's code.
    """

    def __init__(self, workdir: Path, db: Path) -> None:
        self.workdir, self.port, self.proc = workdir, free_port(), None
        for name in ("graph", "checkpointers", "ui", "langgraph.json"):
            target = workdir / name
            if not target.exists():
                target.symlink_to(ROOT / name)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "THREADKEEPER_"))}
        self.env.update(
            LANGGRAPH_CLI_NO_ANALYTICS="1",
            LANGGRAPH_NO_VERSION_CHECK="true",
            LANGSMITH_TRACING="false",
            PYTHONDONTWRITEBYTECODE="1",
            THREADKEEPER_DATABASE_URL=f"sqlite:///{db}",
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LangGraphDev:
        cli = shutil.which("langgraph", path=str(Path(sys.executable).parent))
        assert cli, "langgraph-cli is not installed in this environment"
        log = open(self.workdir / f"server-{time.time_ns()}.log", "w")
        self.proc = subprocess.Popen(
            [cli, "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            text = Path(log.name).read_text()
            if self.proc.poll() is not None or "Application startup failed" in text:
                raise RuntimeError(f"langgraph dev did not start:\n{text[-3000:]}")
            if "already in use" in text:
                raise RuntimeError(f"port {self.port} was taken; langgraph dev moved elsewhere")
            try:
                urllib.request.urlopen(f"{self.url}/ok", timeout=2)
                return self
            except Exception:
                time.sleep(0.3)
        raise RuntimeError("langgraph dev did not answer /ok within 120 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def dev_server(tmp_path: Path):
    server = LangGraphDev(tmp_path, tmp_path / "threadkeeper.db")
    yield server
    server.stop()


def test_langgraph_dev_persists_threads_into_the_shared_store(dev_server: LangGraphDev, tmp_path: Path):
    async def first_session() -> str:
        client = get_client(url=dev_server.url)
        thread = await client.threads.create(metadata={"user_id": "alice"})
        for text in ("hello from the API", "and a second turn"):
            await client.runs.wait(thread["thread_id"], "threadkeeper", input={"messages": [{"role": "user", "content": text}]})
        return thread["thread_id"]

    async def second_session(thread_id: str) -> list[dict]:
        client = get_client(url=dev_server.url)
        state = await client.threads.get_state(thread_id)
        return state["values"]["messages"]

    async def delete(thread_id: str) -> None:
        await get_client(url=dev_server.url).threads.delete(thread_id)

    dev_server.start()
    thread_id = asyncio.run(first_session())
    dev_server.stop()
    dev_server.start()
    messages = asyncio.run(second_session(thread_id))
    assert [m["type"] for m in messages] == ["human", "ai", "human", "ai"]
    assert messages[0]["content"] == "hello from the API"
    assert "No language model is connected" in messages[1]["content"]

    saver = ThreadSaver(tmp_path / "threadkeeper.db")
    found = saver.threads.list("alice").threads
    assert [(t.thread_id, t.title, t.message_count) for t in found] == [(thread_id, "hello from the API", 4)]
    assert saver.read_messages(thread_id, user_id="alice").total == 4
    saver.close()

    asyncio.run(delete(thread_id))
    saver = ThreadSaver(tmp_path / "threadkeeper.db")
    assert saver.threads.list("alice").threads == []
    with pytest.raises(ThreadNotFoundError):
        saver.threads.get(thread_id)
    saver.close()
