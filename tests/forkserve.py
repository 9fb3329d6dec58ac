"""`threadkeeper serve` processes forked from one interpreter that imported the web app once.

Starting `python -m ui.cli serve` spends about 6 s of this machine's time importing
Gradio, LangChain and the app before it serves anything; the suite starts some twenty
servers. The fork server (`python -m tests.forkserve`, one per test session, started
on first use) imports what `serve` imports, then forks a child per start, which takes
the test's environment, working directory and log file and runs `ui.cli.main(["serve",
...])` to the end as `python -m ui.cli` would: uncaught exceptions and SystemExit as
the interpreter handles them, then non-daemon threads joined and atexit functions run.
Each server is still a process of its own, killed, signalled and reaped for real; its
exit status is reported back (`ForkedProcess.wait` returns it as `Popen.wait` does, -9
for SIGKILL). The fork server's own imports, like `tests.crash.serve_writers`' fork
server, start no thread, so forking it is safe.

That a fresh interpreter can import and start the app is left to the tests that run
it so: test_docker (the image's CMD in a fresh venv) and test_cli's subprocesses.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import threading
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# -- the fork server (its own process) --------------------------------------------------


def _run_child(request: dict) -> None:
    """In the forked child: become the requested `python -m ui.cli ARGS` and never return."""
    code = 1
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = [str(ROOT / "ui" / "cli.py"), *request["args"]]
        from ui.cli import main

        try:
            code = main(request["args"])
        except SystemExit as exc:  # as the interpreter treats it
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
        code = 0 if code is None else code
        threading._shutdown()  # what the interpreter does at exit: join non-daemon threads,
        atexit._run_exitfuncs()  # then run atexit functions
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code & 0xFF if code >= 0 else 1)


def _say(line: str) -> None:
    os.write(1, f"{line}\n".encode())


def fork_server() -> int:
    """Import what `serve` imports, then on each `go {json}` line fork a child; report
    `pid N` for each start and `exit N STATUS` for each child that ended."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # as ui.cli._serve sets them before its imports
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import langchain_openai  # noqa: F401  (imported lazily by the graph on the first start)
    import uvicorn  # noqa: F401

    import graph  # noqa: F401
    import ui.admin  # noqa: F401
    import ui.app  # noqa: F401
    import ui.cli  # noqa: F401
    import ui.logs  # noqa: F401
    import ui.web  # noqa: F401

    assert threading.active_count() == 1, threading.enumerate()  # forking is safe only without threads
    children: set[int] = set()
    buffer = b""
    _say("ready")
    while True:
        readable, _, _ = select.select([0], [], [], 0.02)
        if readable:
            chunk = os.read(0, 65536)
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                pid = os.fork()
                if pid == 0:
                    _run_child(json.loads(line))
                children.add(pid)
                _say(f"pid {pid}")
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            children.discard(pid)
            _say(f"exit {pid} {os.waitstatus_to_exitcode(status)}")
    for pid in children:  # the test session went away: leave no server behind
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except OSError:
            pass
    return 0


# -- the test side ----------------------------------------------------------------------


PER_START = ("THREADKEEPER_", "OPENAI_API_KEY", "OPENAI_BASE_URL")
"""Variables a forked server may take from its test: read when the app runs, not when a module
is imported (nothing under checkpointers/, graph/ or ui/ reads the environment at import time)."""


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "THREADKEEPER_"))}
    env["GRADIO_ANALYTICS_ENABLED"] = "False"
    return env


def _forkable(env: dict[str, str]) -> bool:
    """Whether `env` differs from the fork server's only in variables read after import (a
    different TMPDIR, say, is read by tempfile and Gradio at import: such a start gets an
    interpreter of its own)."""
    return {k: v for k, v in env.items() if not k.startswith(PER_START)} == _base_env()


class _ForkServer:
    def __init__(self) -> None:
        env = _base_env()
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.forkserve"], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.lock = threading.Lock()
        self.changed = threading.Condition()
        self.started: list[int] = []
        self.exits: dict[int, int] = {}
        self.ready = False
        threading.Thread(target=self._read, daemon=True).start()
        with self.changed:
            if not self.changed.wait_for(lambda: self.ready or self.proc.poll() is not None, 120) or not self.ready:
                raise RuntimeError("the fork server did not start")

    def _read(self) -> None:
        for raw in self.proc.stdout:
            words = raw.decode().split()
            with self.changed:
                if words == ["ready"]:
                    self.ready = True
                elif words[0] == "pid":
                    self.started.append(int(words[1]))
                elif words[0] == "exit":
                    self.exits[int(words[1])] = int(words[2])
                self.changed.notify_all()
        with self.changed:
            self.ready = False
            self.changed.notify_all()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def start(self, args: list[str], *, env: dict[str, str], cwd: Path, log: Path) -> ForkedProcess:
        request = json.dumps({"args": args, "env": env, "cwd": str(cwd), "log": str(log)})
        with self.lock:
            with self.changed:
                self.started.clear()
            self.proc.stdin.write(request.encode() + b"\n")
            self.proc.stdin.flush()
            with self.changed:
                if not self.changed.wait_for(lambda: self.started or not self.ready, 60) or not self.started:
                    raise RuntimeError("the fork server did not start the process")
                return ForkedProcess(self.started.pop(), self)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ForkedProcess:
    """A forked server, with the part of `subprocess.Popen` the tests use."""

    def __init__(self, pid: int, server: _ForkServer) -> None:
        self.pid, self._server = pid, server
        self.returncode: int | None = None

    def poll(self) -> int | None:
        with self._server.changed:
            self.returncode = self._server.exits.get(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        with self._server.changed:
            if not self._server.changed.wait_for(lambda: self.pid in self._server.exits or not self._server.ready, timeout):
                raise subprocess.TimeoutExpired(f"threadkeeper serve (pid {self.pid})", timeout)
            if self.pid not in self._server.exits:
                raise RuntimeError("the fork server ended")
            self.returncode = self._server.exits[self.pid]
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # not reaped yet, so the pid is still this process's
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


_server: _ForkServer | None = None
_server_lock = threading.Lock()


def start_serve(args: list[str], *, env: dict[str, str], cwd: Path, log: Path) -> ForkedProcess | subprocess.Popen:
    """`python -m ui.cli ARGS` with `env` in `cwd`, its output appended to `log`: forked from the
    fork server, or where `env` changes what imports read, started as a fresh interpreter."""
    global _server
    if not _forkable(env):
        with open(log, "a") as out:
            return subprocess.Popen([sys.executable, "-m", "ui.cli", *args], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    with _server_lock:
        if _server is None or not _server.alive():
            _server = _ForkServer()
            atexit.register(_server.close)
        server = _server
    return server.start(args, env=env, cwd=cwd, log=log)


if __name__ == "__main__":
    raise SystemExit(fork_server())
