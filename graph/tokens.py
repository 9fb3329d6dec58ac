"""Counting tokens offline, once per message.

`tiktoken` downloads its encodings on first use, which fails on a machine
without internet. The default counter is therefore LangChain's approximate
one; an exact tiktoken counter is used when the encoding is already on disk
(tiktoken's own cache, or a `.tiktoken` file named by THREADKEEPER_TOKENIZER).

Counts are cached per message (by id and content), so trimming a long thread
counts only the messages it has not seen before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.messages.utils import count_tokens_approximately

log = logging.getLogger(__name__)

ENCODING_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
# The split pattern of OpenAI's cl100k_base encoding (a published constant),
# used with a `.tiktoken` rank file given by path.
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
PER_MESSAGE_OVERHEAD = 4  # role and separators, as OpenAI's chat format adds them


class TokenCounter:
    """Counts the tokens of messages; `exact` says whether a real encoding is used."""

    def __init__(self, encode: Callable[[str], int] | None = None, *, name: str = "approximate", cache_size: int = 100_000):
        self._encode = encode
        self.name = name
        self._cache: OrderedDict[tuple, int] = OrderedDict()
        self._cache_size = cache_size

    @property
    def exact(self) -> bool:
        return self._encode is not None

    def count_text(self, text: str) -> int:
        if self._encode is None:
            return count_tokens_approximately([text]) - 3  # without the message overhead
        return self._encode(text)

    def _count_uncached(self, message: BaseMessage) -> int:
        if self._encode is None:
            return count_tokens_approximately([message])
        content = message.content if isinstance(message.content, str) else json.dumps(message.content)
        total = PER_MESSAGE_OVERHEAD + self._encode(content)
        if isinstance(message, AIMessage) and message.tool_calls:
            total += self._encode(json.dumps(message.tool_calls, default=str))
        return total

    def count(self, message: BaseMessage) -> int:
        """Tokens of one message, from the cache when this message was counted before."""
        key = _cache_key(message)
        if key is None:
            return self._count_uncached(message)
        found = self._cache.get(key)
        if found is not None:
            return found
        counted = self._count_uncached(message)
        self._cache[key] = counted
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return counted

    @property
    def cached(self) -> int:
        return len(self._cache)


def _cache_key(message: BaseMessage) -> tuple | None:
    if message.id is None:
        return None
    content = message.content
    # str hashes are cached by Python, so a message seen before costs O(1) here.
    digest = hash(content) if isinstance(content, str) else hash(json.dumps(content, sort_keys=True, default=str))
    calls = len(message.tool_calls) if isinstance(message, AIMessage) else 0
    return (message.id, message.type, digest, calls)


def _tiktoken_cache_file(encoding_name: str) -> Path | None:
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get("DATA_GYM_CACHE_DIR"))
    if cache_dir is None:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if not cache_dir:
        return None
    key = hashlib.sha1(ENCODING_URL.format(name=encoding_name).encode()).hexdigest()
    path = Path(cache_dir) / key
    return path if path.is_file() else None


def _encoding_for(model: str) -> str:
    try:
        import tiktoken

        return tiktoken.encoding_name_for_model(model)
    except (ImportError, KeyError):
        return "o200k_base"


def make_counter(spec: str = "auto", model: str = "gpt-4o-mini") -> TokenCounter:
    """The counter THREADKEEPER_TOKENIZER asks for; never touches the network.

    `approximate`: LangChain's character-based estimate. `auto`: tiktoken's
    encoding for `model` if it is in tiktoken's cache, otherwise approximate.
    A path to a `.tiktoken` rank file: that encoding (cl100k's split pattern).
    """
    spec = (spec or "auto").strip()
    if spec == "approximate":
        return TokenCounter()
    if spec == "auto":
        name = _encoding_for(model)
        if _tiktoken_cache_file(name) is None:
            return TokenCounter()
        try:
            import tiktoken

            encoding = tiktoken.get_encoding(name)
        except Exception as exc:  # a damaged cache file: fall back rather than refuse to start
            log.warning("tiktoken encoding %s is cached but unusable (%s); counting approximately", name, exc)
            return TokenCounter()
        return TokenCounter(lambda text: len(encoding.encode(text, disallowed_special=())), name=name)
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"THREADKEEPER_TOKENIZER is {spec!r}: use 'auto', 'approximate' or the path of a .tiktoken file")
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    try:
        ranks = load_tiktoken_bpe(str(path))
    except Exception as exc:
        raise ValueError(f"THREADKEEPER_TOKENIZER file {path} is not a .tiktoken rank file ({exc})") from None
    encoding = tiktoken.Encoding(path.stem, pat_str=CL100K_PATTERN, mergeable_ranks=ranks, special_tokens={})
    return TokenCounter(lambda text: len(encoding.encode(text, disallowed_special=())), name=path.name)
