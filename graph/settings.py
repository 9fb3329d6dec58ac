"""The agent's configuration: one dataclass, read once from the environment.

Every field has a default, so a fresh machine with nothing set starts in the
offline mode: the memory features all work and each reply says how to connect
a language model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant. You remember this whole conversation; "
    "when it grows long, only its most recent turns are shown to you."
)


@dataclass(frozen=True)
class Settings:
    model: str = "gpt-4o-mini"
    """`THREADKEEPER_MODEL`: the model name the OpenAI-compatible server knows."""

    api_key: str | None = None
    """`OPENAI_API_KEY`. With neither this nor `base_url`, the agent runs offline."""

    base_url: str | None = None
    """`OPENAI_BASE_URL`: any OpenAI-compatible server (Ollama, vLLM, LM Studio...)."""

    temperature: float = 0.7
    """`THREADKEEPER_TEMPERATURE`."""

    timeout_s: float = 60.0
    """`THREADKEEPER_MODEL_TIMEOUT`: seconds to wait for the model per attempt."""

    max_retries: int = 2
    """`THREADKEEPER_MODEL_RETRIES`: retries, with backoff, on 429, 5xx and lost connections."""

    max_input_tokens: int = 4000
    """`THREADKEEPER_MAX_INPUT_TOKENS`: the budget for what is sent to the model."""

    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    """`THREADKEEPER_SYSTEM_PROMPT`: always sent, never trimmed."""

    tokenizer: str = "auto"
    """`THREADKEEPER_TOKENIZER`: `auto` (exact if tiktoken's encoding is cached on
    this machine, else approximate), `approximate`, or a path to a `.tiktoken` file."""

    query_row_limit: int = 200
    """`THREADKEEPER_QUERY_ROW_LIMIT`: most rows a database-tool query returns."""

    query_timeout_s: float = 5.0
    """`THREADKEEPER_QUERY_TIMEOUT`: seconds a database-tool query may run."""

    summary: bool = True
    """`THREADKEEPER_SUMMARY`: `on` (default) or `off`. On, what trimming leaves out of
    the model's input is folded into a running summary kept in the thread's state
    (`graph/summary.py`), and "remember that ..." facts are kept verbatim beside it."""

    summary_max_tokens: int = 600
    """`THREADKEEPER_SUMMARY_MAX_TOKENS`: the most the summary and kept facts take of the
    model's input; never more than a quarter of `max_input_tokens` (see `summary_budget`)."""

    summary_model: str | None = None
    """`THREADKEEPER_SUMMARY_MODEL`: a cheaper model for summaries on the same server;
    by default `model`. With no model connected, summaries are extractive."""

    @property
    def summary_budget(self) -> int:
        """Tokens the summary and kept facts may take: the window keeps at least a quarter."""
        return min(self.summary_max_tokens, self.max_input_tokens // 4)

    @property
    def model_connected(self) -> bool:
        return bool(self.api_key or self.base_url)

    def describe_model(self) -> str:
        """One line for banners and `threadkeeper chat`: which model answers."""
        if not self.model_connected:
            return "No language model is connected (offline mode). " + CONNECT_HINT
        where = self.base_url or "api.openai.com"
        return f"Model {self.model} at {where}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the settings; a malformed value raises ValueError naming the variable."""
        env = os.environ if environ is None else environ
        names = {
            "model": "THREADKEEPER_MODEL",
            "api_key": "OPENAI_API_KEY",
            "base_url": "OPENAI_BASE_URL",
            "temperature": "THREADKEEPER_TEMPERATURE",
            "timeout_s": "THREADKEEPER_MODEL_TIMEOUT",
            "max_retries": "THREADKEEPER_MODEL_RETRIES",
            "max_input_tokens": "THREADKEEPER_MAX_INPUT_TOKENS",
            "system_prompt": "THREADKEEPER_SYSTEM_PROMPT",
            "tokenizer": "THREADKEEPER_TOKENIZER",
            "query_row_limit": "THREADKEEPER_QUERY_ROW_LIMIT",
            "query_timeout_s": "THREADKEEPER_QUERY_TIMEOUT",
            "summary": "THREADKEEPER_SUMMARY",
            "summary_max_tokens": "THREADKEEPER_SUMMARY_MAX_TOKENS",
            "summary_model": "THREADKEEPER_SUMMARY_MODEL",
        }
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(names[f.name], "").strip()
            if not raw:
                continue
            kind = {"float": float, "int": int, "bool": _on_off}.get(str(f.type).split(" ")[0], str)
            try:
                value = kind(raw)
            except ValueError:
                noun = {"int": "a whole number", "float": "a number", "_on_off": "on or off"}[kind.__name__]
                raise ValueError(f"{names[f.name]} must be {noun}, not {raw!r}") from None
            if kind in (int, float) and value <= 0 and f.name not in ("temperature", "max_retries"):
                raise ValueError(f"{names[f.name]} must be positive, not {raw!r}")
            if f.name == "max_retries" and value < 0:
                raise ValueError(f"{names[f.name]} must be 0 or more, not {raw!r}")
            values[f.name] = value
        if values.get("max_input_tokens", 4000) < 100:  # type: ignore[operator]
            raise ValueError("THREADKEEPER_MAX_INPUT_TOKENS must be at least 100")
        return cls(**values)  # type: ignore[arg-type]


def _on_off(raw: str) -> bool:
    word = raw.lower()
    if word in ("on", "true", "yes", "1"):
        return True
    if word in ("off", "false", "no", "0"):
        return False
    raise ValueError(raw)


CONNECT_HINT = (
    "To connect one, set OPENAI_API_KEY (OpenAI) or OPENAI_BASE_URL (Ollama, vLLM or any "
    "OpenAI-compatible server) and THREADKEEPER_MODEL, then restart threadkeeper."
)
