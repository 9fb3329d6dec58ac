"""One FastAPI app on one port: the web chat, the admin page, and the routes operators use.

    GET /healthz        200 while the process runs
    GET /readyz         200 when the store answers with this release's schema and the
                        model is configured (or offline mode is stated); 503 otherwise,
                        and while the server shuts down
    GET /metrics        Prometheus text (`ui/metrics.py`); with THREADKEEPER_ADMIN_TOKEN
                        set it wants that token as a bearer header, like /admin/stats
    GET /admin/stats    the usage figures as JSON (`?days=N`, default all); 404 without
                        THREADKEEPER_ADMIN_TOKEN, 401 without the right bearer token
    /admin/             the admin page (`ui/admin.py`), mounted when anyone can be an admin
    /                   the web chat (`ui/web.py`), through `gr.mount_gradio_app`

`threadkeeper serve` runs it with uvicorn (`serve`). On SIGTERM it stops
taking connections and waits up to the grace period for streaming replies to
finish, their connections still open; then it cuts any still running (each
keeps the person's message and what the reply had shown, as Stop does),
uvicorn closes the connections left (pages' heartbeats), the sweeper ends
after its current batch and lets go of its lease, and the caller closes the
store, which commits what waits to be written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable

import gradio as gr
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from checkpointers import stats
from ui import metrics
from ui.admin import AdminAccess, AdminPage, parse_days
from ui.web import WebChat
from ui.web.handlers import SIGN_IN_MESSAGE
from ui.web.layout import CSS, ON_PAGE_LOAD

log = logging.getLogger("threadkeeper.app")

GRACE_VARIABLE = "THREADKEEPER_SHUTDOWN_GRACE_S"
GRACE_S = 20.0
"""Seconds a shutdown waits for streaming replies before it cuts them."""
CONNECTIONS_GRACE_S = 2
"""Seconds uvicorn then gives the connections still open (pages' heartbeat streams)."""


def grace_s(environ: dict[str, str] | None = None) -> float:
    raw = (os.environ if environ is None else environ).get(GRACE_VARIABLE, str(GRACE_S))
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise ValueError(f"{GRACE_VARIABLE} must be a number of seconds from 0 to 3600, not {raw!r}")
    return value


def max_file_size() -> str:
    return f"{int(os.environ.get('THREADKEEPER_MAX_ATTACHMENT_MB', '50'))}mb"


class Lifecycle:
    """Whether the app takes work, and what a shutdown does before the store closes."""

    def __init__(self, grace_s: float, on_stop: list[Callable[[], None]]) -> None:
        self.grace_s = grace_s
        self.on_stop = on_stop
        self.draining = False
        self.stopped = threading.Event()

    async def drain_turns(self) -> None:
        """Wait up to the grace period for streaming turns, then cut the rest (as Stop does)."""
        self.draining = True
        deadline = time.monotonic() + self.grace_s
        while metrics.active_turns() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        cut = metrics.cut_turns()
        if cut:
            log.warning("shutting down: cut %d streaming replies after %g s (their messages are kept)", cut, self.grace_s)
            for _ in range(100):  # each keeps what was shown, then ends
                if not metrics.active_turns():
                    break
                await asyncio.sleep(0.05)

    async def drain(self) -> None:
        """At the app's shutdown: no turn left streaming, the sweeper stopped."""
        await self.drain_turns()
        self.stopped.set()
        for stop in self.on_stop:
            await asyncio.to_thread(stop)
        log.info("shutdown: streams ended, sweeper stopped")


def _prune_exports(web: WebChat, lifecycle: Lifecycle) -> None:
    while not lifecycle.stopped.wait(web.exports.check_s):
        try:
            web.exports.prune()
        except OSError:
            log.exception("could not remove old exports")


def build_app(
    web: WebChat,
    *,
    access: AdminAccess | None = None,
    on_stop: list[Callable[[], None]] | None = None,
    shutdown_grace_s: float | None = None,
) -> FastAPI:
    """The app `threadkeeper serve` runs; `on_stop` run at shutdown (stop the sweeper)."""
    access = access or AdminAccess.from_env(web.identity.sign_in)
    lifecycle = Lifecycle(grace_s() if shutdown_grace_s is None else shutdown_grace_s, list(on_stop or []))
    metrics.time_store_calls(web.saver)
    metrics.watch_store(lambda: stats.store_figures(web.saver))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Exports leave the server after THREADKEEPER_EXPORT_KEEP_S, as with `WebChat.launch`.
        pruner = threading.Thread(target=_prune_exports, args=(web, lifecycle), name="threadkeeper-exports", daemon=True)
        pruner.start()
        yield
        await lifecycle.drain()

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.lifecycle = lifecycle

    def refused(status: int) -> Response:
        if status == 404:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        return JSONResponse({"detail": "a valid admin token is needed (Authorization: Bearer ...)"}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> Response:
        model = web.settings.describe_model() if web.settings.model_connected else "offline mode: no model configured"
        if lifecycle.draining:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        problem = stats.readiness(web.saver)
        if problem:
            return JSONResponse({"status": "not ready", "store": problem, "model": model}, status_code=503)
        return JSONResponse({"status": "ready", "store": "ok", "model": model})

    @app.get("/metrics", include_in_schema=False)
    def prometheus(request: Request) -> Response:
        if access.has_token and not access.bearer_ok(request.headers.get("authorization")):
            return refused(401)
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)

    @app.get("/admin/stats", include_in_schema=False)
    def admin_stats(request: Request) -> Response:
        if not access.has_token:
            return refused(404)
        if not access.bearer_ok(request.headers.get("authorization")):
            return refused(401)
        try:
            days = parse_days(request.query_params.get("days"))
        except ValueError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=400)
        return JSONResponse(stats.usage(web.saver, days))

    auth = web.identity.check_password if web.identity.sign_in else None
    if access.enabled:
        admin = AdminPage(web.saver, access).blocks()
        gr.mount_gradio_app(app, admin.queue(default_concurrency_limit=2), path="/admin", auth=auth,
                            footer_links=[], run_history=False)
    else:
        @app.api_route("/admin", methods=["GET", "POST"], include_in_schema=False)
        @app.api_route("/admin/{rest:path}", methods=["GET", "POST"], include_in_schema=False)
        def no_admin(rest: str = "") -> Response:
            return refused(404)

    chat = web.blocks().queue(default_concurrency_limit=8)
    gr.mount_gradio_app(
        app, chat, path="", auth=auth, auth_message=SIGN_IN_MESSAGE, css=CSS, js=ON_PAGE_LOAD, max_file_size=max_file_size(),
        footer_links=[], run_history=False,
    )
    return app


def serve(app: FastAPI, host: str, port: int, *, grace: float | None = None) -> None:
    """Run `app` with uvicorn on one port until SIGTERM or SIGINT, then shut down gracefully."""
    import uvicorn

    lifecycle: Lifecycle = app.state.lifecycle
    if grace is not None:
        lifecycle.grace_s = grace

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list | None = None) -> None:
            # Streams end (or are cut) while their connections are still open, so
            # their pages get the end; then uvicorn closes what is left (a page's
            # heartbeat stream never ends by itself) after CONNECTIONS_GRACE_S.
            for server in self.servers:
                server.close()
            await lifecycle.drain_turns()
            await super().shutdown(sockets=sockets)

    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, access_log=False, timeout_graceful_shutdown=CONNECTIONS_GRACE_S,
        lifespan="on",
    )
    # uvicorn hands a SIGTERM it handled back to the handler it found, once it has shut
    # down; the default one would end the process before the caller closes the store
    # (committing what waits to be written). This one lets the caller finish.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        Server(config).run()
    finally:
        signal.signal(signal.SIGTERM, previous)
