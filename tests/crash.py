"""Writers killed with SIGKILL at random moments, and a disk that fills up.

The harness behind tests/test_crash.py (a quick run in `make test`) and
bench/crash.py (a long run that prints a table). Three scenarios:

* `kill_library_writers`: chat turns through the product's own agent graph
  (`build_graph`, offline model, LangGraph's default durability, as every door
  uses it) on a store opened with `open_saver`, in a process that is killed
  with SIGKILL after a random delay and started again, over and over. The
  writers are forked from one process that has already imported the agent
  (`python -m tests.crash writers DB_URL`), so a kill costs a fork rather than
  a Python start-up. A writer prints `acked ...` only after `invoke` returned.
* `kill_web_server`: `threadkeeper serve` on a fixed data directory, chatted
  with over Gradio's own queue protocol (what the page does), killed with
  SIGKILL while a reply is streaming, restarted, and its threads reopened. A
  web turn is acknowledged when its reply event completed.
* `full_disk_cycle` / `web_full_disk_cycle`: a store on a small disk (a tmpfs
  with a filler file, or a file-size limit where mounting is not allowed) is
  filled while turns are written, read while full, then given space back.

After every kill the file must pass `PRAGMA integrity_check`; at the end every
acknowledged turn must be in the store, read through the public API.
"""

from __future__ import annotations

import http.client
import itertools
import json
import logging
import os
import queue
import random
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
import uuid
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
WRITER_USER = "writer"
WRITER_THREADS = 3
WORDS = "the of and to in is you that it was for on are as with they at be this have from or one had by".split()
WEB_SECRET = "crash-harness-web-secret"
WEB_REPLY = " ".join(f"word{i}" for i in range(40))
"""What the fake model streams for every web turn, one chunk a word."""


# -- what was acknowledged, and whether the store still has it ---------------------


@dataclass(frozen=True)
class AckedTurn:
    """A turn its writer was told is done: the human message starts with `prefix`
    and has checksum `crc`; the reply after it contains `reply`."""

    prefix: str
    crc: int
    reply: str


def turn_text(prefix: str, rng: random.Random) -> str:
    """`prefix: ` and some words; some are long enough to take overflow pages."""
    length = rng.choice((40, 200, 1000, 6000))
    return f"{prefix}: " + " ".join(rng.choice(WORDS) for _ in range(length // 4))


def crc(text: str) -> int:
    return zlib.crc32(text.encode())


def offline_settings():
    from graph import Settings

    return Settings.from_env({})


def integrity(db_path: Path) -> str:
    """`PRAGMA integrity_check` through a plain sqlite3 connection (nothing of ours)."""
    conn = sqlite3.connect(str(db_path), timeout=30)
    try:
        return "; ".join(row[0] for row in conn.execute("PRAGMA integrity_check").fetchall())
    finally:
        conn.close()


def lost_turns(db_path: Path, acked: dict[str, list[AckedTurn]], in_flight: set[str] | None = None) -> list[str]:
    """Every acknowledged turn that is not in the store as acknowledged, one line each.

    Each thread is read the way the Python door reads it (the agent graph's
    `get_state`) and the way the web chat does (`read_messages`, page by page);
    the thread index must count what `read_messages` holds. `in_flight` gets the
    turns that were never acknowledged but whose message is stored (a kill
    landed after their first commit).
    """
    in_flight = set() if in_flight is None else in_flight
    from checkpointers import open_saver
    from graph import build_graph

    lost: list[str] = []
    with open_saver(f"sqlite:///{db_path}") as saver:
        graph = build_graph(saver, settings=offline_settings())
        for thread_id, turns in acked.items():
            state = graph.get_state({"configurable": {"thread_id": thread_id}}).values.get("messages", [])
            pages, before = [], None
            while before != 0:
                page = saver.read_messages(thread_id, limit=1000, before=before)
                pages[:0] = page.messages
                before = page.start
            acked_prefixes = {turn.prefix for turn in turns}
            in_flight.update(
                m.content.split(":", 1)[0] for m in pages
                if m.type == "human" and isinstance(m.content, str) and m.content.split(":", 1)[0] not in acked_prefixes
            )
            lost += [f"{thread_id} (get_state): {x}" for x in _missing(state, turns)]
            lost += [f"{thread_id} (read_messages): {x}" for x in _missing(pages, turns)]
            count = saver.threads.get(thread_id).message_count
            if count != len(pages):
                lost.append(f"{thread_id}: the thread index counts {count} messages, read_messages has {len(pages)}")
    return lost


def _missing(messages: list, turns: list[AckedTurn]) -> list[str]:
    from langchain_core.messages import AIMessage, HumanMessage

    where = {}
    for i, m in enumerate(messages):
        if isinstance(m, HumanMessage) and isinstance(m.content, str):
            where.setdefault(m.content.split(":", 1)[0], i)
    missing, previous = [], -1
    for turn in turns:
        i = where.get(turn.prefix)
        if i is None:
            missing.append(f"{turn.prefix!r} is missing")
            continue
        reply = messages[i + 1] if i + 1 < len(messages) else None
        if crc(messages[i].content) != turn.crc:
            missing.append(f"{turn.prefix!r} was stored with other text")
        elif not isinstance(reply, AIMessage) or turn.reply not in str(reply.content):
            missing.append(f"the reply to {turn.prefix!r} is missing")
        elif i < previous:
            missing.append(f"{turn.prefix!r} is out of order")
        previous = i
    return missing


# -- library writers -----------------------------------------------------------------


def _say(line: str) -> None:
    """One line to the harness in one write(2): a pipe write that short is atomic, so a
    writer killed mid-line cannot leave half a line for the fork server's next one to
    join. (`print` makes two writes, text then newline, when stdout is unbuffered, as
    PYTHONUNBUFFERED=1 makes it.)"""
    os.write(sys.stdout.fileno(), f"{line}\n".encode())


def _write_until_killed(url: str, label: str, settings: Any) -> None:
    """A writer's life: chat turns on a few threads, `acked` printed after each."""
    from langchain_core.messages import HumanMessage

    from checkpointers import open_saver
    from graph import build_graph

    rng = random.Random(label)
    try:
        with open_saver(url) as saver:
            graph = build_graph(saver, settings=settings)
            for n in itertools.count(1):
                thread_id = f"thread-{rng.randrange(WRITER_THREADS)}"
                prefix = f"{label} turn {n}"
                text = turn_text(prefix, rng)
                config = {"configurable": {"thread_id": thread_id, "user_id": WRITER_USER}}
                graph.invoke({"messages": [HumanMessage(text)]}, config)
                _say(f"acked {thread_id} {crc(text)} {prefix}")
    except BaseException as exc:  # opening the store included; the parent fails the run on any
        traceback.print_exc()
        _say(f"error {label} {type(exc).__name__}: {exc}".replace("\n", " ")[:1000])


def serve_writers(url: str) -> int:
    """The fork server: `go LABEL` forks a writer, `reap` waits for it and prints how it ended."""
    from graph import build_graph

    settings = offline_settings()
    build_graph(None, settings=settings)  # lazy imports happen here, once, not in each writer
    child, label = 0, ""
    _say("ready")
    for line in sys.stdin:
        command, _, arg = line.strip().partition(" ")
        if command == "go":
            pid = os.fork()
            if pid == 0:
                try:
                    _write_until_killed(url, arg, settings)
                finally:
                    os._exit(1)
            child, label = pid, arg
            _say(f"pid {label} {pid}")
        elif command == "reap":
            _, status = os.waitpid(child, 0)
            child = 0
            _say(f"exit {label} {os.waitstatus_to_exitcode(status)}")
    if child:  # the parent went away mid-run: leave no writer behind
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
    return 0


@dataclass
class KillRun:
    """What a run of kills found; `lost`, `errors` and `integrity_failures` should be empty."""

    door: str
    kills: int = 0
    mid_stream: int = 0
    acked: dict[str, list[AckedTurn]] = field(default_factory=lambda: defaultdict(list))
    integrity_checks: int = 0
    integrity_failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    reopened: int = 0
    reopen_failures: list[str] = field(default_factory=list)
    acks_awaited: int = 0
    """Acknowledgements the harness waited for before a kill's random delay began."""
    in_flight_kept: set[str] = field(default_factory=set)
    """Turns never acknowledged whose message is stored anyway: kills that landed inside a turn."""

    @property
    def acked_turns(self) -> int:
        return sum(len(turns) for turns in self.acked.values())

    def check_integrity(self, db_path: Path, when: str) -> None:
        self.integrity_checks += 1
        result = integrity(db_path)
        if result != "ok":
            self.integrity_failures.append(f"{when}: {result}")


class _Lines:
    """A process's stdout, line by line, from a reader thread."""

    def __init__(self, stream) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next(self, timeout: float = 120) -> str:
        line = self.lines.get(timeout=timeout)
        if line is None:
            raise RuntimeError("the writer process ended")
        return line


def kill_library_writers(db_path: Path, kills: int, *, rng: random.Random, max_delay: float = 0.25, log: Path | None = None) -> KillRun:
    """Start a writer, let it acknowledge 0 to 3 turns, SIGKILL it after a further random
    delay (0 to `max_delay` s), check the file, start the next one; `kills` times.
    Then check every acknowledged turn. (Counting turns first keeps each life doing
    work however slow the machine is; the delay makes the moment random.)"""
    run = KillRun("library")
    stderr = open(log or os.devnull, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.crash", "writers", f"sqlite:///{db_path}"],
        cwd=ROOT, env=_offline_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
    )
    out = _Lines(proc.stdout)

    def take() -> str:
        line = out.next()
        if line.startswith("acked "):
            _, thread_id, checksum, turn = line.split(" ", 3)
            run.acked[thread_id].append(AckedTurn(turn, int(checksum), turn))
        elif line.startswith("error "):
            run.errors.append(line)
        return line

    def until(prefix: str) -> str:
        while not (line := take()).startswith(prefix):
            pass
        return line

    def send(command: str) -> None:
        proc.stdin.write(command + "\n")
        proc.stdin.flush()

    try:
        until("ready")
        for k in range(kills):
            label = f"w{k}"
            send(f"go {label}")
            pid = int(until(f"pid {label} ").split()[2])
            wait_for = rng.choice((0, 1, 1, 2, 3))
            run.acks_awaited += wait_for
            target = run.acked_turns + wait_for
            while run.acked_turns < target and not run.errors:
                take()
            time.sleep(rng.uniform(0, max_delay))
            os.kill(pid, signal.SIGKILL)
            send("reap")
            status = int(until(f"exit {label} ").split()[2])
            if status == -signal.SIGKILL:
                run.kills += 1
            else:
                run.errors.append(f"writer {label} ended by itself (exit status {status})")
            run.check_integrity(db_path, f"after kill {k + 1}")
    finally:
        proc.stdin.close()
        proc.wait(30)
        stderr.close()
    run.lost = lost_turns(db_path, run.acked, run.in_flight_kept)
    return run


def _offline_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "THREADKEEPER_"))}
    env.update(GRADIO_ANALYTICS_ENABLED="False", **extra)
    return env


# -- threadkeeper serve ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """`threadkeeper serve` on one data directory and port; started again after a kill."""

    def __init__(self, data: Path, logs: Path, **env: str) -> None:
        self.data, self.logs, self.port = data, logs, free_port()
        self.env = _offline_env(
            THREADKEEPER_DATABASE_URL=f"sqlite:///{data / 'threadkeeper.db'}", THREADKEEPER_WEB_SECRET=WEB_SECRET, **env
        )
        self.proc = None  # a tests.forkserve.ForkedProcess
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.data / "threadkeeper.db"

    def start(self) -> ServeProcess:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        from tests.forkserve import start_serve

        log = self.logs / f"serve-{self.starts}.log"
        log.write_text("")
        self.proc = start_serve(["serve", "--port", str(self.port)], env=self.env, cwd=ROOT, log=log)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"threadkeeper serve exited: {self.log_text()[-2000:]}")
            try:
                urllib.request.urlopen(self.url, timeout=5).close()
                return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("threadkeeper serve did not start")

    def log_text(self) -> str:
        return (self.logs / f"serve-{self.starts}.log").read_text(errors="replace")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc:
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


class ServerGone(Exception):
    """The connection to the server broke (it was killed)."""


class EventFailed(Exception):
    """The server answered an event with an error."""


class WebVisitor:
    """One browser tab, speaking Gradio's queue protocol as the page does: join the
    queue with an event's index, then read the session's event stream."""

    def __init__(self, root: str, token: str) -> None:
        self.root, self.token = root, token
        self.session = uuid.uuid4().hex
        with urllib.request.urlopen(f"{root}/config", timeout=30) as r:
            config = json.load(r)
        self.fn = {d["api_name"]: d["id"] for d in config["dependencies"] if d.get("api_name")}

    def call(self, event: str, data: list, on_chunk: Callable[[], None] | None = None) -> list:
        """Run one event; its outputs once it completed. `on_chunk` runs for each streamed update."""
        body = json.dumps({"data": data, "fn_index": self.fn[event], "session_hash": self.session, "event_data": None, "trigger_id": None})
        try:
            request = urllib.request.Request(f"{self.root}/gradio_api/queue/join", body.encode(), {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as r:
                event_id = json.load(r)["event_id"]
            with urllib.request.urlopen(f"{self.root}/gradio_api/queue/data?session_hash={self.session}", timeout=60) as stream:
                for raw in stream:
                    line = raw.decode()
                    if not line.startswith("data:"):
                        continue
                    message = json.loads(line[5:])
                    if message.get("event_id") != event_id:
                        continue
                    if message["msg"] == "process_generating" and on_chunk:
                        on_chunk()
                    elif message["msg"] == "process_completed":
                        if not message.get("success"):
                            raise EventFailed(str(message.get("output", {}).get("error")))
                        return message["output"]["data"]
        except urllib.error.HTTPError as exc:  # the server is up and refused the request
            raise EventFailed(f"HTTP {exc.code} for {event}") from None
        except (OSError, http.client.HTTPException, json.JSONDecodeError) as exc:
            raise ServerGone(repr(exc)) from None
        raise ServerGone("the event stream ended before the event completed")

    def thread_ids(self) -> list[str]:
        radio = self.call("search", ["", self.token, None, None])[0]
        return [value for _, value in radio.get("choices", [])]


def chat_text(bubble: dict) -> str:
    content = bubble.get("content")
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content or "")


class _MidStreamKiller:
    """Kills the server at the first streamed chunk once `after` turns of this life were acknowledged."""

    def __init__(self, server: ServeProcess, after: int) -> None:
        self.server, self.after = server, after
        self.acked = 0
        self.killed = threading.Event()
        self._lock = threading.Lock()

    def chunk(self) -> None:
        with self._lock:
            if self.acked >= self.after and not self.killed.is_set():
                os.kill(self.server.proc.pid, signal.SIGKILL)
                self.killed.set()

    def ack(self) -> None:
        with self._lock:
            self.acked += 1


def kill_web_server(data: Path, kills: int, *, model_url: str, rng: random.Random, visitors: int = 3, logs: Path | None = None) -> KillRun:
    """`threadkeeper serve` with `visitors` tabs chatting at once, killed mid-stream `kills`
    times and restarted; after each start every tab loads the page and opens its
    thread, whose newest acknowledged turn must be shown. Then every acknowledged
    turn must be in the store."""
    from ui.identity import Identity

    run = KillRun("serve")
    server = ServeProcess(
        data, logs or data.parent / "serve-logs",
        OPENAI_BASE_URL=model_url, OPENAI_API_KEY="k", THREADKEEPER_MODEL="fake-model", THREADKEEPER_MODEL_RETRIES="0",
    )
    identity = Identity(WEB_SECRET.encode())
    tabs = [_Tab(identity.new_token()) for _ in range(visitors)]
    turn_numbers = itertools.count(1)
    try:
        for life in range(kills + 1):
            server.start()
            for tab in tabs:
                tab.reopen(WebVisitor(server.url, tab.token), run)
            if life == kills:
                break
            killer = _MidStreamKiller(server, rng.randint(1, 2 * visitors))

            def chat(tab: _Tab) -> None:
                while not killer.killed.is_set():
                    prefix = f"{tab.token[5:13]} life{life} turn {next(turn_numbers)}"
                    text = turn_text(prefix, random.Random(prefix))
                    try:
                        tab.history = tab.web.call("send", [text, None, tab.history, None, tab.token])[2]
                        tab.history = tab.web.call("respond", [None, None, tab.history, tab.token], on_chunk=killer.chunk)[0]
                        if tab.thread_id is None:
                            tab.thread_id = tab.new_thread_id()
                    except ServerGone:
                        return
                    except (AssertionError, EventFailed) as exc:
                        run.errors.append(f"{prefix}: {type(exc).__name__}: {exc}")
                        return
                    if chat_text(tab.history[-1]) != WEB_REPLY:
                        run.errors.append(f"{prefix}: the reply was {chat_text(tab.history[-1])[:200]!r}")
                        return
                    run.acked[tab.thread_id].append(AckedTurn(prefix, crc(text), WEB_REPLY))
                    tab.last_acked = prefix
                    killer.ack()

            workers = [threading.Thread(target=chat, args=(tab,)) for tab in tabs]
            for w in workers:
                w.start()
            for w in workers:
                w.join(300)
            if killer.killed.is_set():
                run.mid_stream += 1  # sent from inside a streamed reply
            else:
                run.errors.append(f"life {life}: no reply streamed after {killer.after} acknowledged turns")
                server.kill()
            server.proc.wait(30)
            run.kills += 1
            run.check_integrity(server.db_path, f"after kill {life + 1}")
            if "Traceback" in server.log_text():
                run.errors.append(f"life {life}: the server logged a traceback: {server.log_text()[-3000:]}")
    finally:
        server.stop()
        if server.starts and "Traceback" in server.log_text():
            run.errors.append(f"the last start logged a traceback: {server.log_text()[-3000:]}")
    run.check_integrity(server.db_path, "after the last stop")
    run.lost = lost_turns(server.db_path, run.acked, run.in_flight_kept)
    return run


class _Tab:
    """A visitor across restarts: their identity, their thread, and what the page shows."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.thread_id: str | None = None
        self.last_acked: str | None = None
        self.seen: set[str] = set()
        self.history: list = []
        self.web: WebVisitor

    def reopen(self, web: WebVisitor, run: KillRun) -> None:
        """A new page: load it, and open this visitor's thread, whose newest acknowledged turn must show."""
        self.web, self.history = web, []
        listed = [value for _, value in web.call("on_load", [self.token])[1].get("choices", [])]
        self.seen.update(listed)
        if self.thread_id is None:
            return
        if self.thread_id not in listed:
            run.reopen_failures.append(f"thread {self.thread_id} is not listed after a restart")
            return
        self.history = web.call("open_thread", [self.thread_id, self.token])[1]
        if self.last_acked and not any(chat_text(b).startswith(self.last_acked) for b in self.history):
            run.reopen_failures.append(f"{self.last_acked!r} is not shown after a restart")
        else:
            run.reopened += 1

    def new_thread_id(self) -> str:
        """The thread the first acknowledged turn made: the one listed now that was not before."""
        new = [t for t in self.web.thread_ids() if t not in self.seen]
        self.seen.update(new)
        if len(new) != 1:
            raise AssertionError(f"expected one new thread, found {new}")
        return new[0]


# -- a small disk ------------------------------------------------------------------


class SmallDisk:
    """A tmpfs of `size` bytes at `path` (needs root), or where mounting is not
    allowed, a limit on the size of any file this process writes (RLIMIT_FSIZE,
    with SIGXFSZ ignored so a write fails instead of killing the process).

    `fill(leave)` takes all but `leave` bytes (a filler file on the tmpfs);
    `free()` gives the space back (deletes the filler)."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        try:
            mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True).returncode == 0
        except OSError:  # no mount(8) here
            mounted = False
        self.kind = "tmpfs" if mounted else "file-size limit"
        self.size = size
        self._limit = resource.getrlimit(resource.RLIMIT_FSIZE)
        self._xfsz = None

    def __enter__(self) -> SmallDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int = 0) -> None:
        """Take all the free space but `leave` bytes (again, after a first fill: all of what is left)."""
        if self.kind == "tmpfs":
            with open(self.path / f"filler-{len(list(self.path.glob('filler-*')))}", "wb") as f:
                f.write(b"\0" * max(0, self.free_bytes() - leave))
            return
        biggest = max((p.stat().st_size for p in self.path.iterdir() if p.is_file()), default=0)
        if self._xfsz is None:
            self._xfsz = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (biggest + leave, self._limit[1]))

    def free(self) -> None:
        if self.kind == "tmpfs":
            for filler in self.path.glob("filler-*"):
                filler.unlink()
            return
        resource.setrlimit(resource.RLIMIT_FSIZE, self._limit)
        if self._xfsz is not None:
            signal.signal(signal.SIGXFSZ, self._xfsz)
            self._xfsz = None

    def close(self) -> None:
        self.free()
        if self.kind == "tmpfs":
            if subprocess.run(["umount", str(self.path)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


class _Records(logging.Handler):
    """Log records of WARNING and above from any logger, while attached to the root."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> _Records:
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeHandler(self)


@dataclass
class FullDiskReport:
    disk: str
    acked_before_full: int = 0
    error: BaseException | None = None
    errors_while_full: list[BaseException] = field(default_factory=list)
    log_records_while_full: list[logging.LogRecord] = field(default_factory=list)
    read_failures_while_full: list[str] = field(default_factory=list)
    resume_failures: list[str] = field(default_factory=list)
    failed_turns: list[str] = field(default_factory=list)
    """Turns whose `invoke` raised (the disk was full)."""
    failed_turns_kept: list[str] = field(default_factory=list)
    """Of those, the ones whose message is in the thread once the space is back."""
    lost: list[str] = field(default_factory=list)
    integrity: str = ""

    def log_lines(self) -> int:
        """Lines the store logged while the disk was full, tracebacks included."""
        formatter = logging.Formatter()
        return sum(formatter.format(r).count("\n") + 1 for r in self.log_records_while_full)


def full_disk_cycle(disk: SmallDisk, *, wait_while_full: float = 1.0) -> FullDiskReport:
    """Turns until the disk is full, the error the caller gets, reads while it is full
    (for `wait_while_full` seconds, time for a retrying flusher to show itself), then
    turns again once the space is back, all on one open store."""
    from langchain_core.messages import HumanMessage

    from checkpointers import open_saver
    from graph import build_graph

    report = FullDiskReport(disk.kind)
    acked: dict[str, list[AckedTurn]] = defaultdict(list)
    db_path = disk.path / "threadkeeper.db"
    rng = random.Random(7)
    numbers = itertools.count(1)

    def turn(thread_id: str) -> None:
        prefix = f"{thread_id} turn {next(numbers)}"
        text = turn_text(prefix, rng)
        try:
            graph.invoke({"messages": [HumanMessage(text)]}, {"configurable": {"thread_id": thread_id, "user_id": "u"}})
        except Exception:
            report.failed_turns.append(prefix)
            raise
        acked[thread_id].append(AckedTurn(prefix, crc(text), prefix))

    with open_saver(f"sqlite:///{db_path}") as saver:
        graph = build_graph(saver, settings=offline_settings())
        for _ in range(4):
            turn("other")
            turn("victim")
        other_messages = len(graph.get_state({"configurable": {"thread_id": "other"}}).values["messages"])
        with _Records() as records:
            disk.fill(leave=64 * 1024)
            try:
                for _ in range(10_000):
                    turn("victim")
                    report.acked_before_full += 1
            except Exception as exc:
                report.error = exc
            disk.fill()  # what room is left goes too: now no write can fit
            for thread_id in ("victim", "victim", "other", "new-thread"):
                try:
                    turn(thread_id)
                    report.errors_while_full.append(AssertionError(f"a turn on {thread_id} was written on a full disk"))
                except Exception as exc:
                    report.errors_while_full.append(exc)
            time.sleep(wait_while_full)
            reads: list[tuple[str, Callable[[], Any]]] = [
                ("get_state of another thread", lambda: len(graph.get_state({"configurable": {"thread_id": "other"}}).values["messages"]) == other_messages),
                ("read_messages of another thread", lambda: len(saver.read_messages("other", user_id="u").messages) == other_messages),
                ("the thread list", lambda: {"other", "victim"} <= {t.thread_id for t in saver.threads.list("u").threads}),
                ("search", lambda: saver.threads.search("u", "other").threads is not None),
            ]
            for what, read in reads:
                try:
                    if not read():
                        report.read_failures_while_full.append(f"{what}: wrong answer")
                except Exception as exc:
                    report.read_failures_while_full.append(f"{what}: {type(exc).__name__}: {exc}")
            report.log_records_while_full = list(records.records)
        disk.free()
        for thread_id in ("victim", "other", "new-thread"):
            try:
                turn(thread_id)
            except Exception as exc:
                report.resume_failures.append(f"{thread_id}: {type(exc).__name__}: {exc}")
        for thread_id in ("victim", "other", "new-thread"):
            for m in graph.get_state({"configurable": {"thread_id": thread_id}}).values.get("messages", []):
                if isinstance(m, HumanMessage) and m.content.split(":", 1)[0] in report.failed_turns:
                    report.failed_turns_kept.append(m.content.split(":", 1)[0])
    report.integrity = integrity(db_path)
    report.lost = lost_turns(db_path, acked)
    return report


@dataclass
class WebFullDiskReport:
    disk: str
    bubble: dict | None = None
    raised: BaseException | None = None
    load_failure: str | None = None
    open_failure: str | None = None
    log_records_while_full: list[logging.LogRecord] = field(default_factory=list)
    resume_failure: str | None = None
    retry: str | None = None
    """What pressing Retry after the space came back showed."""
    integrity: str = ""


def web_full_disk_cycle(disk: SmallDisk, *, wait_while_full: float = 1.0) -> WebFullDiskReport:
    """The web chat's handlers (as `threadkeeper serve` wires them) on a store that fills up:
    messages until one is refused, a page load and a thread opened while full, and a
    message once the space is back."""
    from checkpointers import ThreadSaver
    from ui.identity import Identity
    from ui.web import WebChat

    report = WebFullDiskReport(disk.kind)
    db_path = disk.path / "threadkeeper.db"
    saver = ThreadSaver(db_path)
    try:
        web = WebChat(saver, settings=offline_settings(), identity=Identity(WEB_SECRET.encode()))
        token = web.on_load(None, None)[0]
        rng = random.Random(3)

        def send(thread_id: str | None, text: str) -> tuple[str, list]:
            _, thread_id, chat, pending, *_ = web.accept(text, thread_id, [], False, token, None)
            for chat in web.respond(pending, thread_id, chat, token, None):
                pass
            return thread_id, chat

        thread_id, _ = send(None, "a thread started before the disk filled up")
        with _Records() as records:
            disk.fill(leave=64 * 1024)
            try:
                for n in range(10_000):
                    _, chat = send(thread_id, turn_text(f"web turn {n}", rng))
                    if (chat[-1].get("metadata") or {}).get("title"):
                        report.bubble = chat[-1]
                        break
            except Exception as exc:
                report.raised = exc
            disk.fill()
            time.sleep(wait_while_full)
            try:
                loaded = web.on_load(token, None)
                if thread_id not in [value for _, value in loaded[1].choices]:
                    report.load_failure = "the thread is not listed"
            except Exception as exc:
                report.load_failure = f"{type(exc).__name__}: {exc}"
            try:
                opened = web.open_thread(thread_id, token, None)
                if "before the disk filled up" not in json.dumps(opened[1]):
                    report.open_failure = "the thread's first message is not shown"
            except Exception as exc:
                report.open_failure = f"{type(exc).__name__}: {exc}"
            report.log_records_while_full = list(records.records)
        disk.free()
        if report.bubble is not None:  # the bubble says to press Retry: do
            try:
                chat, pending = web.retry(thread_id, [report.bubble], token, None)
                for chat in web.respond(pending, thread_id, chat, token, None):
                    pass
                report.retry = chat_text(chat[-1])
            except Exception as exc:
                report.retry = f"{type(exc).__name__}: {exc}"
        try:
            _, chat = send(thread_id, "space is back")
            if "space is back" not in chat_text(chat[-1]):
                report.resume_failure = f"the reply was {chat_text(chat[-1])[:200]!r}"
        except Exception as exc:
            report.resume_failure = f"{type(exc).__name__}: {exc}"
    finally:
        saver.close()
    report.integrity = integrity(db_path)
    return report


if __name__ == "__main__":
    if sys.argv[1:2] == ["writers"]:
        raise SystemExit(serve_writers(sys.argv[2]))
    raise SystemExit("usage: python -m tests.crash writers DB_URL")
