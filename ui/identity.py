"""Who is calling the web chat: a signed-in name, or a signed anonymous id.

Anonymous visitors get a random id kept in their browser (`gr.BrowserState`).
The browser's copy is encrypted with a key Gradio sends to the page, so it is
not proof of anything; the server therefore signs each id with a secret that
never leaves the data directory, and accepts only ids it signed. A crafted
request can replay its own id, never invent someone else's.

With `THREADKEEPER_USERS` (or `THREADKEEPER_USERS_FILE`) set, everyone signs in
and the user id is the login name, the same on every device.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

SECRET_FILE = ".threadkeeper-web-secret"
MAX_TOKEN_CHARS = 200
"""A token this server issues is 62 characters; anything much longer is not one."""


class IdentityError(Exception):
    """The caller's identity is missing or was not issued by this server."""


def load_secret(data_dir: Path) -> bytes:
    """The server's secret: `THREADKEEPER_WEB_SECRET`, or a file made once in the data directory.

    Keeping it across restarts is what lets anonymous visitors find their
    threads again after the server restarts.
    """
    configured = os.environ.get("THREADKEEPER_WEB_SECRET")
    if configured:
        return configured.encode()
    path = data_dir / SECRET_FILE
    if path.is_file():
        return path.read_bytes().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    # Replicas sharing a data directory may start at the same moment. The secret is
    # written whole under a name of this process's own, then linked into place, which
    # only one of them can do; the others read the winner's. (Creating the file itself
    # with O_EXCL let a second process fail, or read it empty before it was written.)
    draft = data_dir / f"{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_hex(32).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(draft, path)
    except FileExistsError:
        pass
    finally:
        draft.unlink()
    return path.read_bytes().strip()


def load_users(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Sign-in accounts from `THREADKEEPER_USERS` ("name:password,...") and/or
    `THREADKEEPER_USERS_FILE` (one `name:password` per line, `#` comments)."""
    env = os.environ if environ is None else environ
    entries: list[tuple[str, str]] = []
    for item in (env.get("THREADKEEPER_USERS") or "").split(","):
        if item.strip():
            entries.append(("THREADKEEPER_USERS", item.strip()))
    if env.get("THREADKEEPER_USERS_FILE"):
        path = Path(env["THREADKEEPER_USERS_FILE"])
        if not path.is_file():
            raise ValueError(f"THREADKEEPER_USERS_FILE {path} does not exist")
        for line in path.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                entries.append((str(path), line.strip()))
    users: dict[str, str] = {}
    for source, entry in entries:
        name, sep, password = entry.partition(":")
        if not sep or not name.strip() or not password:
            raise ValueError(f"{source}: expected name:password, got {entry.split(':')[0]!r}...")
        users[name.strip()] = password
    return users


class Identity:
    def __init__(self, secret: bytes, users: dict[str, str] | None = None) -> None:
        self._key = hmac.new(secret, b"threadkeeper identity v1", hashlib.sha256).digest()
        self.browser_secret = hmac.new(secret, b"threadkeeper browser state v1", hashlib.sha256).hexdigest()
        self.users = users or {}

    @property
    def sign_in(self) -> bool:
        return bool(self.users)

    def check_password(self, name: str, password: str) -> bool:
        if not isinstance(name, str) or not isinstance(password, str):
            return False
        expected = self.users.get(name)
        # "surrogatepass": a crafted login form may hold text that is not valid Unicode.
        return expected is not None and hmac.compare_digest(
            expected.encode(), password.encode("utf-8", "surrogatepass")
        )

    def _sign(self, user_id: str) -> str:
        return hmac.new(self._key, user_id.encode(), hashlib.sha256).hexdigest()[:32]

    def new_token(self) -> str:
        user_id = "anon-" + secrets.token_hex(12)
        return f"{user_id}.{self._sign(user_id)}"

    def user_of(self, token: str | None, username: str | None) -> str:
        """The user id for this request; IdentityError if there is none we trust."""
        if self.sign_in:
            if not username or username not in self.users:
                raise IdentityError("Please sign in again.")
            return username
        # The token arrives from the browser (or a crafted request) as any JSON value.
        if not isinstance(token, str) or not token.isascii() or len(token) > MAX_TOKEN_CHARS:
            token = ""
        user_id, _, signature = token.rpartition(".")
        if not user_id or not hmac.compare_digest(signature, self._sign(user_id)):
            raise IdentityError("This browser's identity was not issued by this server; reload the page.")
        return user_id
