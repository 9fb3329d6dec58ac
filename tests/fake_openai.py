"""A small OpenAI-compatible server on 127.0.0.1, so the real ChatOpenAI client
(its streaming, retries and time-outs) is exercised end to end.

`server.plan` is a queue of what to do with the next requests:
`("reply", text)`, `("status", 429)`, `("sleep", seconds)`, `("tool", (name, args))`
(a tool call), `("tool_result", prefix)` (a reply quoting the newest tool
result), `("slow", (text, seconds))` (a streamed reply, one word every
`seconds`) and `("paced", (tokens, seconds))` (a streamed reply of `tokens`
tokens spread evenly over `seconds`, the first one "Re: <the newest user
message>", as a load test wants). With the queue empty it does `default`
(by default it replies "ok"). Requests are recorded in
`server.requests`; each slow stream in `server.slow_streams` (`SlowStream`:
how many words it sent, and when it ended and whether the client had gone).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class SlowStream:
    words_sent: int = 0
    ended_at: float | None = None
    """`time.monotonic()` when the stream ended: all sent, or the client gone."""
    client_left: bool = False


class FakeOpenAI(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # a load test opens hundreds of streams at once

    def __init__(self, default: tuple[str, object] = ("reply", "ok")) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.default = default
        self.on_stream: Callable[[int], None] | None = None
        """Called with +1 as a paced reply starts and -1 as it ends (a load test counts them)."""
        self.plan: deque[tuple[str, object]] = deque()
        self.requests: list[dict] = []
        self.slow_streams: list[SlowStream] = []
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: FakeOpenAI

    def log_message(self, *args: object) -> None:
        pass

    def _json(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        self.server.requests.append(body)
        action, arg = self.server.plan.popleft() if self.server.plan else self.server.default
        if action == "sleep":
            time.sleep(float(arg))  # longer than the client's time-out
            action, arg = "reply", "too late"
        if action == "status":
            self._json(int(arg), {"error": {"message": f"fake error {arg}", "type": "fake", "code": str(arg)}},
                       {"retry-after-ms": "10"})
            return
        model = body.get("model", "fake")
        if action == "tool":
            name, args = arg
            call = {"id": f"call_{len(self.server.requests)}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
            if not body.get("stream"):
                self._json(200, {
                    "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [call]}, "finish_reason": "tool_calls"}],
                })
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            self._event({"choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [{"index": 0, **call}]}, "finish_reason": None}]}, model)
            self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}, model)
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            return
        if action == "slow":
            self._slow(*arg, model)  # type: ignore[misc]
            return
        if action == "paced":
            tokens, seconds = arg  # type: ignore[misc]
            asked = next((m.get("content") for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")
            self._paced([f"Re: {asked}", *(f" w{i}" for i in range(1, tokens))], seconds, model)
            return
        if action == "tool_result":
            results = [m for m in body.get("messages", []) if m.get("role") == "tool"]
            arg = f"{arg} {results[-1]['content'] if results else '(no tool result)'}"
        text = str(arg)
        if not body.get("stream"):
            self._json(200, {
                "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            })
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        words = text.split(" ")
        for i, word in enumerate(words):
            piece = word if i == len(words) - 1 else word + " "
            self._event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": piece}, "finish_reason": None}]}, model)
        self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}, model)
        self._event({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": len(words), "total_tokens": 1 + len(words)}}, model)
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _slow(self, text: str, seconds: float, model: str) -> None:
        stream = SlowStream()
        self.server.slow_streams.append(stream)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        words = text.split(" ")
        try:
            for i, word in enumerate(words):
                piece = word if i == len(words) - 1 else word + " "
                self._event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": piece}, "finish_reason": None}]}, model)
                stream.words_sent += 1
                time.sleep(seconds)
            self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}, model)
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except OSError:  # the client closed the connection
            stream.client_left = True
        finally:
            stream.ended_at = time.monotonic()

    def _paced(self, pieces: list[str], seconds: float, model: str) -> None:
        if self.server.on_stream is not None:
            self.server.on_stream(+1)
        try:
            self._paced_stream(pieces, seconds, model)
        finally:
            if self.server.on_stream is not None:
                self.server.on_stream(-1)

    def _paced_stream(self, pieces: list[str], seconds: float, model: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        start = time.monotonic()
        try:
            for i, piece in enumerate(pieces, 1):
                time.sleep(max(0.0, start + seconds * i / len(pieces) - time.monotonic()))
                self._event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": piece}, "finish_reason": None}]}, model)
            self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}, model)
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except OSError:  # the client closed the connection
            pass

    def _event(self, chunk: dict, model: str) -> None:
        chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()), "model": model, **chunk}
        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.flush()
