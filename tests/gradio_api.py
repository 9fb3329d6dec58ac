"""A raw client of a Gradio 6 app's queue API: what a page sends, and what an attacker can.

The page calls every event, public or private, by POSTing to
`/gradio_api/queue/join` with the event's `fn_index` (its `id` in the
`dependencies` of `GET /config`) and a `session_hash` the page made up; the
results come back as server-sent events on
`/gradio_api/queue/data?session_hash=...`. Gradio fills `gr.State` inputs from
the server's copy for that session hash, and nothing ties a session hash to
the person who made it: `api_visibility="private"` only hides an event from the
API page and from gradio_client. So whoever knows a victim's session hash can
run any event on the victim's `gr.State` values (the open thread, the pending
message), under their own identity. This client does exactly that, with
nothing but HTTP.

    api = GradioAPI("http://127.0.0.1:7860")
    mine = new_session()
    token = api.call("on_load", [None], session_hash=mine).output[0]
    respond = api.event("respond")                  # private, found by its name in /config
    seen = api.call(respond, respond.inputs_with(browserstate=token), session_hash=victim_hash)
    assert "secret" not in seen.text

`WebServer` runs a `ui.web.WebChat` on a free 127.0.0.1 port in this process.
"""

from __future__ import annotations

import copy
import json
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

API_PREFIX = "/gradio_api"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_session() -> str:
    """A session hash as the page makes one (any string does)."""
    return secrets.token_hex(6)


@dataclass(frozen=True)
class Event:
    """One dependency of the app: what `fn_index` runs, and what it reads and writes."""

    fn_index: int
    api_name: str | None
    visibility: str
    backend: bool
    inputs: tuple[str, ...]
    """The component type of each input, in order (`state`, `browserstate`, `textbox`, ...)."""
    outputs: tuple[str, ...]

    def inputs_with(self, **by_type: Any) -> list[Any]:
        """The `data` list for this event: the given value for each input of that
        component type, None for the rest (Gradio ignores what is sent for a `state`)."""
        return [copy.deepcopy(by_type.get(kind)) for kind in self.inputs]


@dataclass
class Outcome:
    """Everything the caller got back for one event."""

    event: Event
    session_hash: str
    status: int
    """HTTP status of the join (200 when the event was queued)."""
    join_body: Any = None
    messages: list[dict] = field(default_factory=list)

    @property
    def completed(self) -> dict | None:
        return next((m for m in reversed(self.messages) if m.get("msg") == "process_completed"), None)

    @property
    def success(self) -> bool:
        done = self.completed
        return bool(done and done.get("success"))

    @property
    def error(self) -> str | None:
        """The error text Gradio showed (a `gr.Error` message, or its generic one), if the event failed."""
        if self.status != 200:
            return f"HTTP {self.status}: {self.join_body}"
        done = self.completed
        if done is None:
            unexpected = next((m for m in self.messages if m.get("msg") == "unexpected_error"), None)
            return unexpected.get("message") if unexpected else "no process_completed message"
        if done.get("success"):
            return None
        output = done.get("output") or {}
        return str(output.get("error") or output.get("title") or "error")

    @property
    def output(self) -> list | None:
        """The event's outputs as the page would end up showing them (streamed diffs applied)."""
        current: list | None = None
        for message in self.messages:
            data = (message.get("output") or {}).get("data")
            if data is None:
                continue
            if message.get("msg") == "process_generating" and current is not None:
                current = [_apply_diff(current[i] if i < len(current) else None, d) for i, d in enumerate(data)]
            else:
                current = list(data)
        return current

    @property
    def text(self) -> str:
        """Every byte the caller received for this event, as text: for checks that something never came back."""
        return json.dumps([self.join_body, self.messages, self.output], ensure_ascii=False, default=str)


def _apply_diff(value: Any, diff: Any) -> Any:
    """Apply one output's diff as Gradio streams them (`[[action, path, value], ...]`)."""
    if not (isinstance(diff, list) and all(isinstance(d, list) and len(d) == 3 for d in diff)):
        return diff
    from gradio_client.utils import apply_diff

    try:
        return apply_diff(value, diff)
    except (KeyError, IndexError, TypeError, ValueError):
        return diff


class GradioAPI:
    """HTTP to one Gradio app, with its own cookie jar (one signed-in person, or none)."""

    def __init__(self, url: str, *, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.http = httpx.Client(base_url=self.url, timeout=timeout)
        self._config: dict | None = None

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> GradioAPI:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- who ----------------------------------------------------------------

    def login(self, username: str, password: str) -> bool:
        """Sign in through Gradio's own form; the cookie stays in this client."""
        response = self.http.post("/login", data={"username": username, "password": password})
        self._config = None
        return response.status_code == 200

    # -- what the app offers ---------------------------------------------------

    def config(self) -> dict:
        if self._config is None:
            response = self.http.get("/config")
            response.raise_for_status()
            self._config = response.json()
        return self._config

    def events(self) -> list[Event]:
        """Every dependency of the app, public and private, as /config lists them."""
        config = self.config()
        kinds = {c["id"]: c["type"] for c in config["components"]}
        return [
            Event(
                fn_index=d["id"],
                api_name=d.get("api_name"),
                visibility=d.get("api_visibility", "public"),
                backend=bool(d.get("backend_fn")),
                inputs=tuple(kinds.get(i, "?") for i in d["inputs"]),
                outputs=tuple(kinds.get(i, "?") for i in d["outputs"]),
            )
            for d in config["dependencies"]
        ]

    def event(self, name_or_index: str | int) -> Event:
        """An event by `fn_index` or by its name in /config (private ones have one too: `respond`, `respond_1`)."""
        for event in self.events():
            if event.fn_index == name_or_index or event.api_name == name_or_index:
                return event
        raise KeyError(f"no event {name_or_index!r} in {self.url}/config")

    # -- calling ------------------------------------------------------------

    def join(
        self,
        event: Event | str | int,
        data: list[Any],
        *,
        session_hash: str,
        trigger_id: int | None = None,
        event_data: Any = None,
    ) -> tuple[Event, httpx.Response]:
        """Queue one event, exactly as the page's POST does; the response carries the event id."""
        event = event if isinstance(event, Event) else self.event(event)
        body = {
            "data": data,
            "event_data": event_data,
            "fn_index": event.fn_index,
            "trigger_id": trigger_id,
            "session_hash": session_hash,
        }
        return event, self.http.post(f"{API_PREFIX}/queue/join", json=body)

    def call(
        self,
        event: Event | str | int,
        data: list[Any],
        *,
        session_hash: str,
        trigger_id: int | None = None,
        event_data: Any = None,
        timeout: float | None = None,
    ) -> Outcome:
        """Queue one event and read that session's stream until the event completes."""
        event, response = self.join(event, data, session_hash=session_hash, trigger_id=trigger_id, event_data=event_data)
        try:
            body = response.json()
        except ValueError:
            body = response.text
        outcome = Outcome(event, session_hash, response.status_code, body)
        if response.status_code != 200:
            return outcome
        event_id = body.get("event_id")
        deadline = time.monotonic() + (timeout or self.timeout)
        with self.http.stream(
            "GET", f"{API_PREFIX}/queue/data", params={"session_hash": session_hash}, timeout=timeout or self.timeout
        ) as stream:
            for line in stream.iter_lines():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"event {event.api_name or event.fn_index} did not complete in time")
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[len("data:") :])
                if message.get("event_id") not in (None, event_id):
                    continue  # another event of the same session
                outcome.messages.append(message)
                kind = message.get("msg")
                if kind == "process_completed" and message.get("event_id") == event_id:
                    break
                if kind in ("close_stream", "unexpected_error", "server_stopped"):
                    break
        return outcome

    def upload(self, name: str, content: bytes) -> dict:
        """Upload a file as the page does before an UploadButton's event; returns the FileData to send."""
        response = self.http.post(f"{API_PREFIX}/upload", files=[("files", (name, content))])
        response.raise_for_status()
        (path,) = response.json()
        return {"path": path, "orig_name": name, "size": len(content), "meta": {"_type": "gradio.FileData"}}


class WebServer:
    """A `WebChat` served on a free 127.0.0.1 port in this process (`prevent_thread_lock`)."""

    def __init__(self, web: Any) -> None:
        self.web = web
        self.port = free_port()
        self.app: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> WebServer:
        app, _, _ = self.web.launch("127.0.0.1", self.port, prevent_thread_lock=True, quiet=True)
        self.app = app
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/config", timeout=2).status_code in (200, 401):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the web chat did not answer on {self.url}")

    def stop(self) -> None:
        if self.app is not None:
            self.app.get_blocks().close()
            self.app = None


@contextmanager
def serving(web: Any) -> Iterator[WebServer]:
    server = WebServer(web).start()
    try:
        yield server
    finally:
        server.stop()
