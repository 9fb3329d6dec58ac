"""The web chat under load: hundreds of people chatting at once in one `threadkeeper serve`.

    make bench                          # 200 people, 3 messages each
    python -m bench.load --users 50     # a quicker look (the size `make test` runs)

Each person is driven over HTTP exactly as the page drives the server, through
Gradio's queue protocol (`tests.gradio_api`): load the page (`on_load`: their
identity), then for each message `send` (the message and the title are shown),
`respond` (the reply streams) and `refresh` (the thread list, the header and the
page's address), in their own session: the events the page runs for a turn.
Everyone starts at once. The model is the loopback OpenAI-compatible server
streaming 20 tokens evenly over 2 s (its first token after 0.1 s), so the real
`ChatOpenAI` client streams every reply.

Checked, for every run: every reply complete; every thread holding exactly its
person's messages and replies in order, both as the page opens it and in the
store; each person's list holding their own thread and nobody else's; no
failed event. Printed: time to the first and to the last token of each reply
(p50, p99, worst) next to the model's own, and the server's memory (resident
before the load, peak, and the peak's growth per reply streaming at once).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from checkpointers import ANY_USER, ThreadSaver
from tests.fake_openai import FakeOpenAI
from tests.gradio_api import API_PREFIX, Event, GradioAPI, _apply_diff
from tests.serve import Server

TOKENS = int(os.environ.get("BENCH_LOAD_TOKENS", "20"))
"""Tokens of each reply (20; `BENCH_LOAD_TOKENS` to see what one token costs the server)."""
MODEL_SECONDS = 2.0


@dataclass
class Person:
    number: int
    sent: list[str] = field(default_factory=list)
    first_token_s: list[float] = field(default_factory=list)
    last_token_s: list[float] = field(default_factory=list)
    thread_id: str | None = None
    errors: list[str] = field(default_factory=list)


def expected_reply(text: str, tokens: int = TOKENS) -> str:
    """What the loopback model answers to `text` (its "paced" reply of `tokens` tokens)."""
    return f"Re: {text}" + "".join(f" w{i}" for i in range(1, tokens))


class Page:
    """One person's page: a session of the app's queue, over a shared HTTP client."""

    def __init__(self, http: httpx.AsyncClient, events: dict[str, Event]) -> None:
        self.http = http
        self.events = events
        self.session = secrets.token_hex(6)
        self.said: list[str] = []
        """What the page was told (Gradio's info and warning messages), in order."""

    async def call(self, name: str, on_output: Any = None, **by_type: Any) -> list:
        """Run event `name` and return its outputs as the page ends up with them;
        `on_output(outputs)` is called with each streamed update."""
        event = self.events[name]
        body = {"data": event.inputs_with(**by_type), "event_data": None, "fn_index": event.fn_index,
                "trigger_id": None, "session_hash": self.session}
        joined = await self.http.post(f"{API_PREFIX}/queue/join", json=body)
        if joined.status_code != 200:
            raise RuntimeError(f"{name}: HTTP {joined.status_code} {joined.text[:200]}")
        event_id = joined.json()["event_id"]
        outputs: list | None = None
        async with self.http.stream("GET", f"{API_PREFIX}/queue/data", params={"session_hash": self.session}) as stream:
            async for line in stream.aiter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("event_id") not in (None, event_id):
                    continue
                kind = message.get("msg")
                if kind == "log":
                    self.said.append(str(message.get("log")))
                data = (message.get("output") or {}).get("data")
                if data is not None:
                    if kind == "process_generating" and outputs is not None:
                        outputs = [_apply_diff(outputs[i] if i < len(outputs) else None, d) for i, d in enumerate(data)]
                    else:
                        outputs = list(data)
                    if on_output is not None:
                        on_output(outputs)
                if kind == "process_completed":
                    if not message.get("success"):
                        raise RuntimeError(f"{name} failed: {(message.get('output') or {}).get('error')}")
                    return outputs or []
                if kind in ("unexpected_error", "server_stopped", "close_stream"):
                    raise RuntimeError(f"{name}: {kind} {message.get('message', '')}")
        raise RuntimeError(f"{name}: the stream ended before the event completed")


def reply_text(chat: list) -> str:
    last = chat[-1] if chat else {}
    content = last.get("content") if isinstance(last, dict) else None
    if isinstance(content, list):  # Gradio's message blocks
        content = "".join(block.get("text", "") for block in content if isinstance(block, dict))
    return content or "" if last.get("role") == "assistant" else ""


def bubbles(chat: list) -> list[tuple[str, str]]:
    shown = []
    for bubble in chat:
        content = bubble.get("content")
        if isinstance(content, list):
            content = "".join(block.get("text", "") for block in content if isinstance(block, dict))
        shown.append((bubble.get("role"), content))
    return shown


async def chat_as(person: Person, http: httpx.AsyncClient, events: dict[str, Event], messages: int) -> None:
    page = Page(http, events)
    try:
        (token, *_) = await page.call("on_load")
        chat: list = []
        for k in range(messages):
            text = f"person {person.number} message {k} {secrets.token_hex(4)}"
            person.sent.append(text)
            started = time.monotonic()
            first: list[float] = []

            def seen(outputs: list) -> None:
                if not first and reply_text(outputs[0] or []):
                    first.append(time.monotonic() - started)

            chat = (await page.call("send", textbox=text, chatbot=chat, browserstate=token))[2]
            chat = (await page.call("respond", seen, chatbot=chat, browserstate=token))[0]
            person.last_token_s.append(time.monotonic() - started)
            person.first_token_s.extend(first)
            if reply_text(chat) != expected_reply(text):
                person.errors.append(f"reply {k} incomplete: {reply_text(chat)[-60:]!r}")
            listed = (await page.call("refresh", browserstate=token, textbox="", chatbot=chat))[0]
            ids = [value for _, value in listed.get("choices", [])]
            if len(ids) != 1 or (person.thread_id and ids != [person.thread_id]):
                person.errors.append(f"the list after message {k} holds {len(ids)} threads")
            person.thread_id = person.thread_id or (ids[0] if ids else None)
        opened = (await page.call("open_thread", radio=person.thread_id, browserstate=token))[1]
        wanted = [pair for text in person.sent for pair in (("user", text), ("assistant", expected_reply(text)))]
        if bubbles(opened) != wanted:
            person.errors.append("the reopened thread does not hold exactly the messages sent and their replies")
    except Exception as exc:  # every failure is counted and reported, never raised past the others
        person.errors.append(f"{type(exc).__name__}: {exc}")


def memory_kb(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def cpu_seconds(pid: int) -> float:
    """CPU time the process has used so far (user + system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def checked_store(path: Path, people: list[Person], messages: int, others: set[str]) -> list[str]:
    """What the store holds, read directly: one thread per person, with 2 × `messages` messages in order
    (and the `others`, threads of no one measured)."""
    problems = []
    with ThreadSaver.from_conn_string(f"sqlite:///{path}") as saver:
        threads, cursor = [], None
        while True:
            page = saver.threads.list(ANY_USER, limit=500, cursor=cursor)
            threads += [t for t in page.threads if t.thread_id not in others]
            if (cursor := page.next_cursor) is None:
                break
        if len(threads) != len(people):
            problems.append(f"the store holds {len(threads)} threads for {len(people)} people")
        owners = {t.thread_id: t.user_id for t in threads}
        if len(set(owners.values())) != len(threads):
            problems.append("some person owns more than one thread")
        for person in people:
            if person.thread_id not in owners:
                continue
            stored = saver.read_messages(person.thread_id, limit=1000).messages
            texts = [m.content for m in stored]
            wanted = [t for text in person.sent for t in (text, expected_reply(text))]
            if texts != wanted or len(texts) != 2 * messages:
                problems.append(f"thread of person {person.number} holds {len(texts)} messages, not its {2 * messages} in order")
    return problems


@dataclass
class LoadReport:
    users: int
    messages: int
    first_token_s: list[float]
    last_token_s: list[float]
    errors: list[str]
    rss_before_kb: int
    peak_kb: int
    cpu_s: float
    """The server's CPU time for the whole load."""

    def percentile(self, values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    def lines(self) -> list[str]:
        first, last = self.first_token_s, self.last_token_s
        per_stream = (self.peak_kb - self.rss_before_kb) / self.users
        return [
            f"{self.users} people × {self.messages} messages at once; the model streams {TOKENS} tokens over {MODEL_SECONDS:g} s "
            f"(first after {MODEL_SECONDS / TOKENS:g} s)",
            f"  replies complete and stored in order: {len(last) - len([e for e in self.errors if 'reply' in e])} of {self.users * self.messages}; "
            f"errors: {len(self.errors)}",
            f"  time to first token  p50 {statistics.median(first):.2f} s  p99 {self.percentile(first, 0.99):.2f} s  "
            f"worst {max(first):.2f} s   (model's own {MODEL_SECONDS / TOKENS:.2f} s: p99 over it {self.percentile(first, 0.99) - MODEL_SECONDS / TOKENS:+.2f} s)",
            f"  time to last token   p50 {statistics.median(last):.2f} s  p99 {self.percentile(last, 0.99):.2f} s  "
            f"worst {max(last):.2f} s   (model's own {MODEL_SECONDS:.2f} s: p99 over it {self.percentile(last, 0.99) - MODEL_SECONDS:+.2f} s)",
            f"  server CPU: {self.cpu_s * 1000 / max(1, len(last)):.0f} ms per reply "
            f"(on this machine's {os.cpu_count()} cores: at most {os.cpu_count() / (self.cpu_s / max(1, len(last))) * MODEL_SECONDS:.0f} replies streaming at once)",
            f"  server memory: {self.rss_before_kb / 1024:.0f} MiB before, peak {self.peak_kb / 1024:.0f} MiB, "
            f"{per_stream:.0f} KiB per reply streaming at once",
            self.verdict("errors (incomplete replies, misplaced messages, failed events)", len(self.errors), 0),
            self.verdict("time to first token p99 over the model's own (s)", self.percentile(first, 0.99) - MODEL_SECONDS / TOKENS, 0.5),
            self.verdict("time to last token p99 over the model's own (s)", self.percentile(last, 0.99) - MODEL_SECONDS, 1.0),
        ]

    @staticmethod
    def verdict(what: str, value: float, target: float) -> str:
        return f"  {what:<66} {value:8.2f}   target <= {target:g}   {'ok' if value <= target else 'MISSED'}"


def profiling(pid: int, path: Path) -> subprocess.Popen:
    """py-spy sampling the server into `path` (its raw format) until it is sent SIGINT."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    return subprocess.Popen([spy, "record", "-p", str(pid), "-r", "200", "-f", "raw", "-o", str(path), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_load(users: int, messages: int = 3, data: Path | None = None, profile: Path | None = None, **env: str) -> LoadReport:
    """Start a server and the loopback model, chat as `users` people at once, and check the outcome."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8 * users + 256)), hard))
    with tempfile.TemporaryDirectory(prefix="threadkeeper-load-") as temp, FakeOpenAI(default=("paced", (TOKENS, MODEL_SECONDS))) as model:
        data = data or Path(temp)
        server = Server(
            data, OPENAI_BASE_URL=model.base_url, OPENAI_API_KEY="k", THREADKEEPER_MODEL="fake-model",
            THREADKEEPER_MODEL_RETRIES="0", **env,
        ).start()
        try:
            with GradioAPI(server.url) as api:
                events = {e.api_name: e for e in api.events() if e.api_name}
            people = [Person(n) for n in range(users)]

            async def everyone() -> None:
                limits = httpx.Limits(max_connections=4 * users + 16, max_keepalive_connections=4 * users + 16)
                async with httpx.AsyncClient(base_url=server.url.rstrip("/"), timeout=120, limits=limits) as http:
                    warm = Person(-1)  # the first turn pays for imports and connections: not part of the figures
                    await chat_as(warm, http, events, 1)
                    if warm.errors:
                        raise RuntimeError(f"the server could not answer one person: {warm.errors}")
                    others.add(warm.thread_id)
                    before[0] = memory_kb(server.proc.pid)["VmRSS"]
                    cpu[0] = cpu_seconds(server.proc.pid)
                    spy = profiling(server.proc.pid, profile) if profile else None
                    await asyncio.gather(*(chat_as(p, http, events, messages) for p in people))
                    cpu[0] = cpu_seconds(server.proc.pid) - cpu[0]
                    if spy is not None:
                        spy.send_signal(signal.SIGINT)
                        spy.wait(60)

            before, cpu = [0], [0.0]
            others: set[str] = set()
            asyncio.run(everyone())
            peak = memory_kb(server.proc.pid)["VmHWM"]
        finally:
            server.stop()
        errors = [f"person {p.number}: {e}" for p in people for e in p.errors]
        errors += checked_store(data / "threadkeeper.db", people, messages, others)
        return LoadReport(
            users, messages,
            [s for p in people for s in p.first_token_s], [s for p in people for s in p.last_token_s],
            errors, before[0], peak, cpu[0],
        )


def _graph_alone(model_url: str, users: int, messages: int, results: Any) -> None:
    """In a process of its own: `users` people chatting at once through the agent graph
    itself (`graph.astream` on the async SQLite saver, `ChatOpenAI` streaming), no web
    server. Puts (first-token times, last-token times, CPU seconds) on `results`."""
    import uuid

    from langchain_core.messages import AIMessageChunk

    from checkpointers import open_async_saver
    from graph import build_graph
    from graph.settings import Settings

    env = {**os.environ, "OPENAI_BASE_URL": model_url, "OPENAI_API_KEY": "k", "THREADKEEPER_MODEL": "fake-model",
           "THREADKEEPER_MODEL_RETRIES": "0"}
    first: list[float] = []
    last: list[float] = []

    async def person(graph: Any, n: int, count: int, record: bool) -> None:
        config = {"configurable": {"thread_id": str(uuid.uuid4()), "user_id": f"p{n}"}}
        for k in range(count):
            started, seen = time.monotonic(), None
            async for chunk, meta in graph.astream({"messages": [("user", f"person {n} message {k}")]}, config, stream_mode="messages"):
                if seen is None and isinstance(chunk, AIMessageChunk) and chunk.content:
                    seen = time.monotonic() - started
            if record:
                first.append(seen if seen is not None else float("nan"))
                last.append(time.monotonic() - started)

    async def everyone() -> float:
        with tempfile.TemporaryDirectory(prefix="threadkeeper-graph-") as temp:
            async with open_async_saver(f"sqlite:///{temp}/threadkeeper.db") as saver:
                graph = build_graph(checkpointer=saver, settings=Settings.from_env(env))
                await person(graph, -1, 1, False)  # imports and connections: not part of the figures
                cpu = time.process_time()
                await asyncio.gather(*(person(graph, n, messages, True) for n in range(users)))
                return time.process_time() - cpu

    cpu_s = asyncio.run(everyone())
    results.put((first, last, cpu_s))


def graph_alone(users: int, messages: int) -> LoadReport:
    """The floor under any door: the same load through the agent graph alone, in one process."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    with FakeOpenAI(default=("paced", (TOKENS, MODEL_SECONDS))) as model:
        worker = context.Process(target=_graph_alone, args=(model.base_url, users, messages, results))
        worker.start()
        first, last, cpu_s = results.get(timeout=900)
        worker.join(60)
    return LoadReport(users, messages, first, last, [], 0, 0, cpu_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--messages", type=int, default=3)
    parser.add_argument("--profile", type=Path, help="sample the server with py-spy during the load, into this file")
    args = parser.parse_args()
    report = run_load(args.users, args.messages, profile=args.profile)
    print("== the web chat (threadkeeper serve, Gradio's queue protocol) ==")
    print("\n".join(report.lines()))
    for error in report.errors[:20]:
        print("  error:", error)
    floor = graph_alone(args.users, args.messages)
    first, last = floor.first_token_s, floor.last_token_s
    print("== for reference: the same people through the agent graph alone, no web server, one process ==")
    print(f"  time to first token  p50 {statistics.median(first):.2f} s  p99 {floor.percentile(first, 0.99):.2f} s")
    print(f"  time to last token   p50 {statistics.median(last):.2f} s  p99 {floor.percentile(last, 0.99):.2f} s")
    print(f"  CPU: {floor.cpu_s * 1000 / max(1, len(last)):.0f} ms per reply (the web chat's: {report.cpu_s * 1000 / max(1, len(report.last_token_s)):.0f} ms)")


if __name__ == "__main__":
    main()
