"""Where the database lives: `sqlite:///path` or `postgresql://` URLs, and the default location."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_URL = "sqlite:///data/threadkeeper.db"
ENV_VAR = "THREADKEEPER_DATABASE_URL"


def resolve_url(url: str | None = None) -> str:
    """The URL to open: the argument, else `$THREADKEEPER_DATABASE_URL`, else the default."""
    return url or os.environ.get(ENV_VAR) or DEFAULT_URL


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(url: str) -> bool:
    """Whether `url` names a PostgreSQL database (`postgresql://` or `postgres://`)."""
    return url.startswith(POSTGRES_SCHEMES)


def sqlite_path(url: str) -> Path:
    """The file a `sqlite:///relative/or//absolute` URL names.

    `sqlite:///data/x.db` is relative to the working directory and
    `sqlite:////srv/x.db` is absolute, as in SQLAlchemy. A bare path is accepted too.
    """
    if url.startswith("sqlite:///"):
        rest = url[len("sqlite:///") :]
    elif url.startswith("sqlite://"):
        raise ValueError(f"unsupported database URL {url!r}: use sqlite:///path/to/file.db")
    elif "://" in url:
        scheme = url.split("://", 1)[0]
        raise ValueError(
            f"unsupported database URL scheme {scheme!r} in {url!r}: use sqlite:///path/to/file.db "
            "or postgresql://user@host:5432/database"
        )
    else:
        rest = url
    if not rest or rest == ":memory:":
        raise ValueError(f"database URL {url!r} names no file; use sqlite:///path/to/file.db")
    return Path(rest)
