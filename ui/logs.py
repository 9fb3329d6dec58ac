"""The server's log: one line per event an operator cares about, plain or JSON.

    logs.configure()                              # THREADKEEPER_LOG_FORMAT=plain (default) or json
    log.info(logs.settings_line(settings, ...))   # the start-up settings, secrets masked

Lines come from the modules that see the events: start-up settings (here),
migrations (`threadkeeper.schema`), sweeps (`threadkeeper.retention`), store
errors and model errors by kind (`threadkeeper.web`, `graph.model`), slow turns
(`threadkeeper.metrics`). None of them holds message text or titles; every line
also passes through `MaskSecrets`, which replaces the values of the secret
settings (API key, encryption keys, admin token, API tokens, sign-in
passwords) wherever they would appear, a traceback included.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

FORMAT_VARIABLE = "THREADKEEPER_LOG_FORMAT"
FORMATS = ("plain", "json")
MASK = "***"

SECRET_VARIABLES = (
    "OPENAI_API_KEY",
    "THREADKEEPER_ENCRYPTION_KEY",
    "THREADKEEPER_NEW_ENCRYPTION_KEY",
    "THREADKEEPER_ADMIN_TOKEN",
)
"""Variables whose whole value is a secret."""
PAIR_VARIABLES = ("THREADKEEPER_USERS", "THREADKEEPER_API_TOKENS")
"""Variables of `name:secret,name:secret` pairs: the secrets are masked, the names are not."""


def secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """Every secret value the settings hold, longest first (so no part of one is left showing)."""
    environ = os.environ if environ is None else environ
    found = {environ.get(name, "").strip() for name in SECRET_VARIABLES}
    for name in PAIR_VARIABLES:
        for pair in environ.get(name, "").split(","):
            _, _, secret = pair.partition(":")
            found.add(secret.strip())
    # Very short values would mask ordinary words; such settings are refused elsewhere anyway.
    return sorted((s for s in found if len(s) >= 4), key=len, reverse=True)


class MaskSecrets(logging.Filter):
    """Replaces secret values in a record's message and traceback with `***`."""

    def __init__(self, values: Iterable[str]) -> None:
        super().__init__()
        self.values = list(values)

    def mask(self, text: str) -> str:
        for value in self.values:
            if value in text:
                text = text.replace(value, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.values:
            record.msg = self.mask(record.getMessage())
            record.args = None
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = self.mask(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC), level, logger, message, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False)


PLAIN = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_format(environ: Mapping[str, str] | None = None) -> str:
    raw = (os.environ if environ is None else environ).get(FORMAT_VARIABLE, "plain").strip().lower() or "plain"
    if raw not in FORMATS:
        raise ValueError(f"{FORMAT_VARIABLE} must be 'plain' or 'json', not {raw!r}")
    return raw


def configure(environ: Mapping[str, str] | None = None, stream: Any = None) -> logging.Handler:
    """Send every logger's lines (uvicorn's and Gradio's too) to one handler on stderr,
    in the configured format, secrets masked; returns the handler."""
    environ = os.environ if environ is None else environ
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format(environ) == "json" else logging.Formatter(PLAIN))
    handler.addFilter(MaskSecrets(secrets(environ)))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "threadkeeper", False)]:
        root.removeHandler(old)
    handler.threadkeeper = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    for name in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.WARNING)  # a line per request is not an operator's event
    return handler


def settings_line(facts: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> str:
    """`started: key=value ...` of `facts`, then which secret settings are set (never their values)."""
    environ = os.environ if environ is None else environ
    parts = [f"{key}={value}" for key, value in facts.items()]
    for name in SECRET_VARIABLES + PAIR_VARIABLES:
        if environ.get(name):
            count = len([p for p in environ[name].split(",") if p.strip()]) if name in PAIR_VARIABLES else None
            parts.append(f"{name}=set" + (f" ({count})" if count is not None else ""))
    return "started: " + " ".join(parts)
