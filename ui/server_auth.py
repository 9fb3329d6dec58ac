"""Who is calling the LangGraph server, and which threads are theirs (langgraph.json `auth`).

    THREADKEEPER_API_TOKENS="alice:a-long-random-token,bob:another-long-token" langgraph dev

With tokens set, every request needs `Authorization: Bearer <token>` (401
without one, or with one that is not configured), and the caller is the user
the token names. Everything a caller does is scoped to that user, the way the
web chat scopes it:

* a thread, a stateless run or an assistant the caller creates is the caller's
  (`metadata.user_id`; a `user_id` the client sends in metadata, config or
  context is overwritten);
* reading, searching, updating, deleting and running a thread see only the
  caller's threads; anyone else's answers 404 (409 to `threads.create` with its id);
* the store, not the server's own registry, says whose a thread is: a thread
  started in the web chat or the CLI belongs to its owner there, and a run
  that reaches a thread of someone else's anyway reads and writes nothing
  (`checkpointers.server.ServerSaver`);
* assistants: the graph's own (made by the server) serve everyone, others only
  their creator; crons are refused; the server's key-value store is kept
  under a namespace per user.

Without tokens the server is the local development tool `langgraph dev` is
meant to be: it answers callers on this machine only (anything else gets 403),
trusts the `user_id` a client names, and says so in its log at start.

Threads started at other doors (issue 17). The server keeps its own registry
of threads and answers 404 for any id it does not hold. The handlers here are
the server's supported hook that runs before every lookup, so they bring the
caller's store threads into the registry first: a search registers the user's
threads (the ids the store lists for them), and a read or a run of one id
registers it, each through the server's in-process API
(`langgraph_sdk.get_client(url=None)`), with the owner from the store and the
served graph's id, so `get_state`, history and runs find its checkpoints.
Deleting or updating an id the server has not seen yet answers 404 (the
runtime looks the id up before it asks); a read or a search first makes it seen.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import threading
import uuid
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from langgraph_sdk import Auth, get_client
from langgraph_sdk.auth import is_studio_user

from checkpointers import StoreError, ThreadNotFoundError, ThreadSaver, open_saver
from checkpointers.threads import MAX_LIST_LIMIT

log = logging.getLogger("threadkeeper.server_auth")

MIN_TOKEN_CHARS = 16
"""A shorter token could be guessed by trying, over HTTP, faster than anyone would notice."""
DEFAULT_GRAPH_ID = "threadkeeper"


class ApiTokens:
    """Bearer tokens and the users they stand for, compared in constant time."""

    def __init__(self, users_by_token: Mapping[str, str]) -> None:
        self._digests = [(_digest(token), user) for token, user in users_by_token.items()]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def user_of(self, token: str) -> str | None:
        """The user `token` stands for, or None. Every configured token is compared (a
        fixed-length digest of each), so the time taken tells nothing about which matched."""
        presented = _digest(token)
        found = None
        for digest, user in self._digests:
            if hmac.compare_digest(digest, presented):
                found = user
        return found


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def load_api_tokens(environ: Mapping[str, str] | None = None) -> ApiTokens:
    """Tokens from `THREADKEEPER_API_TOKENS` ("user:token,...") and/or
    `THREADKEEPER_API_TOKENS_FILE` (one `user:token` per line, `#` comments).

    A user may have several tokens; a token may not stand for two users, and
    must be at least `MIN_TOKEN_CHARS` characters. Raises ValueError naming the
    setting and the user (never the token)."""
    env = os.environ if environ is None else environ
    entries: list[tuple[str, str]] = []
    for item in (env.get("THREADKEEPER_API_TOKENS") or "").split(","):
        if item.strip():
            entries.append(("THREADKEEPER_API_TOKENS", item.strip()))
    if env.get("THREADKEEPER_API_TOKENS_FILE"):
        path = Path(env["THREADKEEPER_API_TOKENS_FILE"])
        if not path.is_file():
            raise ValueError(f"THREADKEEPER_API_TOKENS_FILE {path} does not exist")
        for line in path.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                entries.append((str(path), line.strip()))
    users: dict[str, str] = {}
    for source, entry in entries:
        user, sep, token = entry.partition(":")
        user, token = user.strip(), token.strip()
        if not sep or not user or not token:
            raise ValueError(f"{source}: expected user:token, got {user!r} without a token")
        if len(token) < MIN_TOKEN_CHARS:
            raise ValueError(f"{source}: the token for {user!r} is shorter than {MIN_TOKEN_CHARS} characters")
        if users.get(token, user) != user:
            raise ValueError(f"{source}: one token stands for both {users[token]!r} and {user!r}")
        users[token] = user
    return ApiTokens(users)


def served_graph_id(environ: Mapping[str, str] | None = None) -> str:
    """The id of the graph `langgraph.json` serves (the first one), which a store
    thread gets in the server's registry so that its state can be read there."""
    env = os.environ if environ is None else environ
    path = Path(env.get("THREADKEEPER_LANGGRAPH_JSON") or "langgraph.json")
    try:
        graphs = json.loads(path.read_text()).get("graphs") or {}
    except (OSError, ValueError, AttributeError):
        return DEFAULT_GRAPH_ID
    return next(iter(graphs), DEFAULT_GRAPH_ID)


def is_local(client_host: str | None) -> bool:
    """Whether a connection came from this machine (a loopback address)."""
    try:
        return ipaddress.ip_address(client_host or "").is_loopback
    except ValueError:
        return False


TOKENS = load_api_tokens()
GRAPH_ID = served_graph_id()
if not TOKENS:
    log.warning(
        "threadkeeper: no THREADKEEPER_API_TOKENS are set, so this LangGraph server trusts the "
        "user_id a client names and answers callers on this machine only. Set tokens before "
        "anyone else can reach it (README: The LangGraph server)."
    )

auth = Auth()


@auth.authenticate
async def authenticate(authorization: str | None, scope: dict) -> Auth.types.MinimalUserDict:
    if not TOKENS:
        client = scope.get("client") or (None, None)
        if not is_local(client[0]):
            raise Auth.exceptions.HTTPException(
                status_code=403,
                detail="This server has no API tokens (THREADKEEPER_API_TOKENS) and answers this machine only.",
            )
        return {"identity": "", "display_name": ""}
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Auth.exceptions.HTTPException(
            status_code=401, detail="Send your API token as 'Authorization: Bearer <token>'.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    user = TOKENS.user_of(token.strip())
    if user is None:
        raise Auth.exceptions.HTTPException(
            status_code=401, detail="That API token is not valid.", headers={"WWW-Authenticate": "Bearer"}
        )
    return {"identity": user, "display_name": user}


# -- whose is it ------------------------------------------------------------------------


def _caller(ctx: Auth.types.AuthContext) -> str | None:
    """The signed-in caller's user id; None when the server has no tokens (everyone local is trusted)."""
    if not TOKENS:
        return None
    if is_studio_user(ctx.user):
        raise Auth.exceptions.HTTPException(status_code=403, detail="Studio sessions need an API token here.")
    return ctx.user.identity


def _only(caller: str | None) -> dict[str, str] | None:
    """The filter the runtime applies to its registry: the caller's threads, or anyone's."""
    return None if caller is None else {"user_id": caller}


def _not_found(thread_id: Any) -> Auth.exceptions.HTTPException:
    return Auth.exceptions.HTTPException(status_code=404, detail=f"Thread with ID {thread_id} not found")


class _Store:
    """The store, opened once for this server process, for the thread index only."""

    def __init__(self) -> None:
        self._saver: ThreadSaver | None = None
        self._opening = threading.Lock()
        self._stack = ExitStack()

    async def saver(self) -> ThreadSaver:
        if self._saver is None:
            await asyncio.to_thread(self._open)
        return self._saver

    def _open(self) -> None:
        with self._opening:
            if self._saver is None:
                self._saver = self._stack.enter_context(open_saver())

    async def owner(self, thread_id: Any) -> tuple[bool, str | None]:
        """Whether the store holds the thread, and whose it is."""
        try:
            saver = await self.saver()
            return True, (await saver.threads.aget(str(thread_id))).user_id
        except ThreadNotFoundError:
            return False, None
        except StoreError as exc:
            raise _unavailable(exc) from exc

    async def thread_ids(self, user_id: str) -> list[str]:
        """The user's thread ids, least recently updated first."""
        ids: list[str] = []
        cursor = None
        try:
            saver = await self.saver()
            while True:
                page = await saver.threads.alist(user_id, limit=MAX_LIST_LIMIT, cursor=cursor)
                ids.extend(t.thread_id for t in page.threads)
                if page.next_cursor is None:
                    return ids[::-1]
                cursor = page.next_cursor
        except StoreError as exc:
            raise _unavailable(exc) from exc


def _unavailable(exc: StoreError) -> Auth.exceptions.HTTPException:
    """Refuse rather than guess whose a thread is: one sentence for the caller, the detail in the log."""
    log.error("threadkeeper: the store cannot say whose threads are: %s", exc)
    return Auth.exceptions.HTTPException(status_code=503, detail="The thread store is not available right now.")


STORE = _Store()


class _Registry:
    """The server's own thread registry, reached through its in-process API."""

    def __init__(self) -> None:
        self.known: set[str] = set()
        """Ids this process has registered (or found registered) with their store owner."""
        self._client = None

    async def register(self, thread_id: str, owner: str | None) -> None:
        if thread_id in self.known:
            return
        # A fresh context: the in-process call then runs as the server itself, not
        # as the caller (whose handlers would run again, and filter it out).
        await asyncio.create_task(self._register(thread_id, owner), context=contextvars.Context())
        self.known.add(thread_id)

    async def _register(self, thread_id: str, owner: str | None) -> None:
        if self._client is None:
            self._client = get_client(url=None)
        metadata = {"graph_id": GRAPH_ID} | ({} if owner is None else {"user_id": owner})
        thread = await self._client.threads.create(thread_id=thread_id, if_exists="do_nothing", metadata=metadata)
        held = thread.get("metadata") or {}
        if any(held.get(k) != v for k, v in metadata.items()):
            # Registered earlier without the graph, or for another user: the store says whose it is.
            await self._client.threads.update(thread_id, metadata=metadata)


REGISTRY = _Registry()


def _store_id(thread_id: Any) -> str | None:
    """The store's id for a thread the server may hold: a UUID in its usual spelling."""
    text = str(thread_id)
    try:
        return text if str(uuid.UUID(text)) == text else None
    except ValueError:
        return None


async def _bring_in(thread_id: Any, caller: str | None, *, register: bool) -> None:
    """404 if the store holds the thread for someone other than the caller; else, with
    `register`, make sure the server's registry holds it for its owner."""
    if thread_id is None:
        return
    held, owner = await STORE.owner(thread_id)
    if not held:
        return
    if caller is not None and owner != caller:
        raise _not_found(thread_id)
    if register and _store_id(thread_id) is not None:
        await REGISTRY.register(str(thread_id), owner)


async def _register_users_threads(user_id: str) -> None:
    for thread_id in await STORE.thread_ids(user_id):
        if _store_id(thread_id) is not None and thread_id not in REGISTRY.known:
            await REGISTRY.register(thread_id, user_id)


def _claim(container: Any, caller: str | None) -> None:
    """Name the caller as `user_id` in a dict the client sent (metadata, config, context)."""
    if caller is not None and isinstance(container, dict):
        container["user_id"] = caller


# -- threads and runs -------------------------------------------------------------------


@auth.on.threads.create
async def create_thread(ctx: Auth.types.AuthContext, value: Auth.types.on.threads.create.value):
    caller = _caller(ctx)
    metadata = value.get("metadata")
    if metadata is None:
        metadata = value["metadata"] = {}
    held, owner = await STORE.owner(value.get("thread_id")) if value.get("thread_id") else (False, None)
    if held:
        if caller is not None and owner != caller:
            raise Auth.exceptions.HTTPException(status_code=409, detail=f"Thread with ID {value['thread_id']} already exists")
        # The store's thread, now in the registry too: its state is readable at once.
        metadata.setdefault("graph_id", GRAPH_ID)
        if owner is not None:
            metadata["user_id"] = owner
    _claim(metadata, caller)
    return _only(caller)


@auth.on.threads.read
async def read_thread(ctx: Auth.types.AuthContext, value: Auth.types.on.threads.read.value):
    caller = _caller(ctx)
    await _bring_in(value.get("thread_id"), caller, register=True)
    return _only(caller)


@auth.on.threads.search
async def search_threads(ctx: Auth.types.AuthContext, value: Auth.types.on.threads.search.value):
    caller = _caller(ctx)
    user = caller if caller is not None else (value.get("metadata") or {}).get("user_id")
    if isinstance(user, str) and user:
        await _register_users_threads(user)
    return _only(caller)


@auth.on.threads.update
async def update_thread(ctx: Auth.types.AuthContext, value: Auth.types.on.threads.update.value):
    caller = _caller(ctx)
    await _bring_in(value.get("thread_id"), caller, register=False)
    if "user_id" in (value.get("metadata") or {}):
        _claim(value["metadata"], caller)
    return _only(caller)


@auth.on.threads.delete
async def delete_thread(ctx: Auth.types.AuthContext, value: Any):
    caller = _caller(ctx)
    for thread_id in value.get("thread_ids") or [value.get("thread_id")]:
        await _bring_in(thread_id, caller, register=False)
    return _only(caller)


@auth.on.threads.create_run
async def create_run(ctx: Auth.types.AuthContext, value: Auth.types.on.threads.create_run.value):
    caller = _caller(ctx)
    await _bring_in(value.get("thread_id"), caller, register=True)
    if caller is not None:
        _claim(value.get("metadata"), caller)
        config = (value.get("kwargs") or {}).get("config")
        if isinstance(config, dict):
            _claim(config.setdefault("configurable", {}), caller)
            _claim(config.setdefault("metadata", {}), caller)
        context = (value.get("kwargs") or {}).get("context")
        if isinstance(context, dict) and "user_id" in context:
            _claim(context, caller)
    return _only(caller)


# -- assistants, crons, the key-value store, anything else -----------------------------------


@auth.on.assistants
async def assistants(ctx: Auth.types.AuthContext, value: Any):
    caller = _caller(ctx)
    if caller is None:
        return None
    if ctx.action in ("create", "update"):
        _claim(value.get("metadata"), caller)
    if ctx.action in ("read", "search"):
        return {"$or": [{"created_by": "system"}, {"user_id": caller}]}
    return {"user_id": caller}


@auth.on.crons
async def crons(ctx: Auth.types.AuthContext, value: Any):
    if _caller(ctx) is None:
        return None
    raise Auth.exceptions.HTTPException(status_code=403, detail="Crons are not offered by this server.")


@auth.on.store
async def key_value_store(ctx: Auth.types.AuthContext, value: Any):
    caller = _caller(ctx)
    if caller is None:
        return None
    namespace = tuple(value.get("namespace") or ())
    if namespace[:1] != (caller,):
        value["namespace"] = (caller, *namespace)
    return None


@auth.on
async def anything_else(ctx: Auth.types.AuthContext, value: Any):
    """Whatever has no handler above (a resource a newer server adds): refused when signed in."""
    return _caller(ctx) is None
